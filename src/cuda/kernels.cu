// EP's relaxation and learning rule on the GPU, compiled by NVRTC at start-up.
//
// The host prepends the network's shape as constants (see `header` in
// src/cuda_layout.rs): L layers after the input, BP batch columns, the layer
// sizes N[0..=L] and the offsets of every state, weight and bias.
//
// Layout (explicit, because it decides coalescing):
// - states are unit-major: layer k of a phase is an N[k] x BP row-major block
//   at SOFF[k], so the BP values a unit takes across the batch are contiguous;
// - W_k (N[k] x N[k+1]) and its transpose WT_k (N[k+1] x N[k]) are both kept,
//   row-major, so that both terms of a layer's drive read weights along
//   contiguous units j: s_{k-1} W_{k-1} reads W_{k-1}[i, j], s_{k+1} W_k^T reads
//   WT_k[m, j];
// - biases b_k (N[k]) at BOFF[k].
//
// One relaxation step of every layer is ONE launch: a block owns 32 units of
// one layer (a tile) and 1/KB of that layer's reduction; the last of a tile's
// KB blocks to finish sums the partials in a fixed order (deterministic) and
// applies the fused update s <- clip((1 - eps) s + eps (drive + offset [+ nudge])).

__device__ __forceinline__ float clip01(float v) {
    // Comparisons are false for NaN, so NaN passes through (divergence stays visible).
    return v < 0.f ? 0.f : (v > 1.f ? 1.f : v);
}

// One block's share of one step: virtual block `vb` of the tiles starting at
// `tile0`. src -> dst (synchronous: all layers read the previous state); for the
// even/odd scheme src == dst and only layers of one parity are in the tiles.
// fparams[0] is beta; `sign` is +1, -1 or 0 (free phase).
// even_odd: each layer is set to its minimiser (eps = 1; at a nudged output
// eps = 1 / (1 + beta)), else eps is the step size.
// States are read through L2 (__ldcg): in the persistent kernel another SM
// wrote them during this launch, and L1 is not coherent.
__device__ __forceinline__ void tile_step(
    int vb, int tile0, const float* src, float* dst, const float* __restrict__ P,
    const float* __restrict__ drive0, const float* __restrict__ target,
    const float* __restrict__ fparams, const int* __restrict__ iparams,
    float sign, float eps, int even_odd,
    float* __restrict__ partial, unsigned* __restrict__ counters, unsigned* change)
{
    // Virtual block = (tile, batch group bg, reduction slice kb).
    const int tile = tile0 + vb / (KB * NBG);
    const int kb = vb % KB, bg = (vb / KB) % NBG;
    const int col0 = bg * BG; // this block's first batch column
    const int k = TILE_LAYER[tile];
    const int n = N[k];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

    // The reduction runs over [bottom-up terms | top-down terms].
    const int kd = k >= 2 ? N[k - 1] : 0; // layer 1's bottom-up term is drive0
    const int ku = k < L ? N[k + 1] : 0;
    const int K = kd + ku;
    const int b0 = K * kb / KB, b1 = K * (kb + 1) / KB;
    const int w0 = b0 + (b1 - b0) * warp / KW, w1 = b0 + (b1 - b0) * (warp + 1) / KW;

    // Stage this block's rows of the reduction in shared memory first: every
    // thread issues its loads at once, so the step pays about one memory
    // round trip instead of one per row (a loop of dependent loads is
    // latency-bound at batch 20). Row r is state row b0 + r (this block's BG
    // batch columns of it) and the 32 weights it meets in this tile.
    __shared__ __align__(16) float stage[STAGE];
    __shared__ int last;
    __syncthreads(); // the previous call's readers of stage are done
    const int rows_here = b1 - b0;
    float* sS = stage;                   // rows_here x BG
    float* sW = stage + rows_here * BG;  // rows_here x 32
    const int j0 = TILE_J0[tile];
    auto row_state = [&](int i) -> const float* {
        return (i < kd ? src + SOFF[k - 1] + i * BP : src + SOFF[k + 1] + (i - kd) * BP) + col0;
    };
    auto row_weights = [&](int i) -> const float* {
        return i < kd ? P + WOFF[k - 1] + i * n : P + WTOFF[k] + (i - kd) * n;
    };
#pragma unroll 4
    for (int e = threadIdx.x; e < rows_here * (BG / 4); e += KW * 32) {
        const int r = e / (BG / 4), q = e % (BG / 4);
        reinterpret_cast<float4*>(sS)[e] =
            __ldcg(reinterpret_cast<const float4*>(row_state(b0 + r)) + q);
    }
    if (n % 4 == 0 && j0 + 32 <= n) {
#pragma unroll 4
        for (int e = threadIdx.x; e < rows_here * 8; e += KW * 32) {
            const int r = e / 8, q = e % 8;
            reinterpret_cast<float4*>(sW)[e] =
                *(reinterpret_cast<const float4*>(row_weights(b0 + r) + j0) + q);
        }
    } else {
#pragma unroll 4
        for (int e = threadIdx.x; e < rows_here * 32; e += KW * 32) {
            const int r = e / 32, c = e % 32;
            sW[e] = row_weights(b0 + r)[min(j0 + c, n - 1)];
        }
    }
    __syncthreads();

    float acc[BG];
#pragma unroll
    for (int b = 0; b < BG; ++b) acc[b] = 0.f;
    for (int r = w0 - b0; r < w1 - b0; ++r) {
        const float wi = sW[r * 32 + lane];
        const float4* si = reinterpret_cast<const float4*>(sS + r * BG);
#pragma unroll
        for (int q = 0; q < BG / 4; ++q) {
            const float4 v = si[q];
            acc[4 * q] += v.x * wi;
            acc[4 * q + 1] += v.y * wi;
            acc[4 * q + 2] += v.z * wi;
            acc[4 * q + 3] += v.w * wi;
        }
    }

    // Sum the KW warps' slices; output o = b * 32 + lane.
    float* red = stage; // reuses the staging buffer
    __syncthreads();
#pragma unroll
    for (int b = 0; b < BG; ++b) red[(warp * BG + b) * 32 + lane] = acc[b];
    __syncthreads();
    for (int o = threadIdx.x; o < BG * 32; o += KW * 32) {
        float t = 0.f;
        for (int w = 0; w < KW; ++w) t += red[w * BG * 32 + o];
        red[o] = t;
    }
    if (KB > 1) {
        // Publish this block's partial; the tile's last block finishes.
        const int group = tile * NBG + bg; // the blocks that share these outputs
        float* mine = partial + (size_t)(group * KB + kb) * BG * 32;
        for (int o = threadIdx.x; o < BG * 32; o += KW * 32) mine[o] = red[o];
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) last = atomicAdd(&counters[group], 1u) == KB - 1;
        __syncthreads();
        if (!last) return;
        __threadfence();
        for (int o = threadIdx.x; o < BG * 32; o += KW * 32) {
            float t = 0.f;
            for (int q = 0; q < KB; ++q)
                t += __ldcg(partial + (size_t)(group * KB + q) * BG * 32 + o);
            red[o] = t;
        }
        if (threadIdx.x == 0) counters[group] = 0;
    } else {
        __syncthreads();
    }

    const int rows = iparams[2 * BP];
    const float beta = sign * fparams[0];
    const bool nudged = k == L && sign != 0.f;
    const float e = even_odd ? (nudged ? 1.f / (1.f + beta) : 1.f) : eps;
    float worst = 0.f;
    for (int o = threadIdx.x; o < BG * 32; o += KW * 32) {
        const int b = col0 + o / 32, jj = TILE_J0[tile] + o % 32;
        if (jj >= n) continue;
        const int at = SOFF[k] + jj * BP + b;
        const float s = __ldcg(src + at);
        // Layer 1's offset is x W_0 + b_1 (computed once per batch), the others' b_k.
        const float offset = k == 1 ? drive0[jj * BP + b] + P[BOFF[1] + jj] : P[BOFF[k] + jj];
        float v = red[o] + offset;
        if (nudged) v += beta * (target[jj * BP + b] - s);
        const float s_new = clip01((1.f - e) * s + e * v);
        dst[at] = s_new;
        if (b < rows) {
            const float d = fabsf(s_new - s);
            worst = (d != d || d > worst) ? d : worst;
        }
    }
    if (change != nullptr) {
        // Non-negative floats order like their bits; NaN's bits beat every number.
        unsigned bits = __float_as_uint(worst);
        for (int off = 16; off > 0; off /= 2) bits = max(bits, __shfl_xor_sync(0xffffffffu, bits, off));
        if (lane == 0) atomicMax(change, bits);
    }
}

// One step, one launch: gridDim.x = tiles * KB * NBG blocks.
extern "C" __global__ void __launch_bounds__(KW * 32)
relax_step(const float* src, float* dst, const float* __restrict__ P,
           const float* __restrict__ drive0, const float* __restrict__ target,
           const float* __restrict__ fparams, const int* __restrict__ iparams,
           float sign, float eps, int even_odd, int tile0,
           float* __restrict__ partial, unsigned* __restrict__ counters,
           unsigned* change)
{
    tile_step(blockIdx.x, tile0, src, dst, P, drive0, target, fparams, iparams, sign, eps,
              even_odd, partial, counters, change);
}

// Every block of the grid waits here until all have arrived (the grid must be
// co-resident: a cooperative launch guarantees it). bar[0] counts arrivals,
// bar[1] is the generation that releases them.
__device__ __forceinline__ void grid_sync(unsigned* bar)
{
    __syncthreads();
    if (threadIdx.x == 0) {
        volatile unsigned* gen = bar + 1;
        const unsigned g = *gen;
        __threadfence();
        if (atomicAdd(bar, 1u) == gridDim.x - 1) {
            bar[0] = 0;
            __threadfence();
            atomicAdd(bar + 1, 1u);
        } else {
            while (*gen == g) {}
        }
        __threadfence();
    }
    __syncthreads();
}

// A whole phase, one launch: `steps` steps with a grid-wide barrier after each
// (persistent kernel). Synchronous steps ping-pong a -> b -> a ...; even/odd
// steps update a in place, odd layers then even layers. The largest change of
// the last step goes to `change` (if given).
extern "C" __global__ void __launch_bounds__(KW * 32)
relax_phase(float* a, float* b, const float* __restrict__ P,
            const float* __restrict__ drive0, const float* __restrict__ target,
            const float* __restrict__ fparams, const int* __restrict__ iparams,
            float sign, float eps, int even_odd, int steps,
            float* __restrict__ partial, unsigned* __restrict__ counters,
            unsigned* change, unsigned* barrier)
{
    for (int t = 0; t < steps; ++t) {
        unsigned* track = t + 1 == steps ? change : nullptr;
        if (!even_odd) {
            const float* src = t % 2 == 0 ? a : b;
            float* dst = t % 2 == 0 ? b : a;
            for (int vb = blockIdx.x; vb < TILES * KB * NBG; vb += gridDim.x)
                tile_step(vb, 0, src, dst, P, drive0, target, fparams, iparams, sign, eps, 0,
                          partial, counters, track);
            grid_sync(barrier);
        } else {
            for (int half = 0; half < 2; ++half) {
                const int tile0 = half == 0 ? 0 : ODD_TILES;
                const int tiles = half == 0 ? ODD_TILES : TILES - ODD_TILES;
                for (int vb = blockIdx.x; vb < tiles * KB * NBG; vb += gridDim.x)
                    tile_step(vb, tile0, a, a, P, drive0, target, fparams, iparams, sign, eps, 1,
                              partial, counters, track);
                grid_sync(barrier);
            }
        }
    }
}

// Loads a batch: the states from the particles of examples idx (or zeros),
// the one-hot targets from the labels. iparams = [idx[BP], labels[BP], rows].
// particles: one block per layer, `count` examples x N[k] each, example-major.
extern "C" __global__ void load_batch(float* __restrict__ S, float* __restrict__ target,
                                      const float* __restrict__ particles, long long count,
                                      const int* __restrict__ iparams)
{
    const int rows = iparams[2 * BP];
    const int u = blockIdx.x * blockDim.x + threadIdx.x; // over all units x BP
    if (u >= STATE_LEN) return;
    int k = 1;
    while (k < L && u >= SOFF[k + 1]) ++k;
    const int j = (u - SOFF[k]) / BP, b = (u - SOFF[k]) % BP;
    float v = 0.f;
    if (particles != nullptr && b < rows) {
        long long base = 0;
        for (int q = 1; q < k; ++q) base += count * N[q];
        v = particles[base + (long long)iparams[b] * N[k] + j];
    }
    S[u] = v;
    if (k == L) target[j * BP + b] = (b < rows && iparams[BP + b] == j) ? 1.f : 0.f;
}

// Stores the batch's states into the particles of examples idx.
extern "C" __global__ void store_batch(const float* __restrict__ S, float* __restrict__ particles,
                                       long long count, const int* __restrict__ iparams)
{
    const int rows = iparams[2 * BP];
    const int u = blockIdx.x * blockDim.x + threadIdx.x;
    if (u >= STATE_LEN) return;
    int k = 1;
    while (k < L && u >= SOFF[k + 1]) ++k;
    const int j = (u - SOFF[k]) / BP, b = (u - SOFF[k]) % BP;
    if (b >= rows) return;
    long long base = 0;
    for (int q = 1; q < k; ++q) base += count * N[q];
    particles[base + (long long)iparams[b] * N[k] + j] = S[u];
}

// Zeroes the batch columns past `rows` (padding), so the update ignores them.
extern "C" __global__ void mask_padding(float* __restrict__ S, const int* __restrict__ iparams)
{
    const int rows = iparams[2 * BP];
    const int u = blockIdx.x * blockDim.x + threadIdx.x;
    if (u < STATE_LEN && (u % BP) >= rows) S[u] = 0.f;
}

// Errors and cost of the batch at the output's free state:
// stats[0] = misclassified examples, stats[1] = sum of 1/2 |s - d|^2.
// One block of 32 threads; a fixed reduction order.
extern "C" __global__ void score(const float* __restrict__ S, const float* __restrict__ target,
                                 const int* __restrict__ iparams, float* __restrict__ stats)
{
    __shared__ float err[32], cost[32];
    const int rows = iparams[2 * BP];
    float e = 0.f, c = 0.f;
    for (int b = threadIdx.x; b < rows; b += 32) {
        const float* out = S + SOFF[L];
        int best = 0;
        float best_v = out[b];
        for (int j = 0; j < N[L]; ++j) {
            const float v = out[j * BP + b];
            if (v > best_v) { best_v = v; best = j; }
            const float d = v - target[j * BP + b];
            c += 0.5f * d * d;
        }
        e += best != iparams[BP + b] ? 1.f : 0.f;
    }
    err[threadIdx.x] = e;
    cost[threadIdx.x] = c;
    __syncthreads();
    if (threadIdx.x == 0) {
        float te = 0.f, tc = 0.f;
        for (int t = 0; t < 32; ++t) { te += err[t]; tc += cost[t]; }
        stats[0] = te;
        stats[1] = tc;
    }
}

// b_k += rate_{k-1} sum_b (plus_k[j, b] - minus_k[j, b]) for every unit of
// layers 1..L; the bias of layer k shares W_{k-1}'s scaled rate fparams[1 + k - 1].
extern "C" __global__ void update_biases(float* __restrict__ P, const float* __restrict__ plus,
                                         const float* __restrict__ minus,
                                         const float* __restrict__ fparams)
{
    const int u = blockIdx.x * blockDim.x + threadIdx.x; // over units of layers 1..L
    int k = 1, j = u;
    while (k <= L && j >= N[k]) { j -= N[k]; ++k; }
    if (k > L) return;
    const float* p = plus + SOFF[k] + j * BP;
    const float* m = minus + SOFF[k] + j * BP;
    float t = 0.f;
    for (int b = 0; b < BP; ++b) t += p[b] - m[b];
    P[BOFF[k] + j] += fparams[1 + (k - 1)] * t;
}

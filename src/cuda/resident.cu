// The synchronous relaxation with the weights resident in shared memory
// (appended to kernels.cu, whose header and clip01 it uses).
//
// One persistent block per "resident tile": RT_NU[t] units of layer
// RT_LAYER[t] from unit RT_J0[t], all BP batch columns. The host sizes the
// tiles so that every block does about the same work (units x inputs) and
// there is at most one block per SM (src/cuda_layout.rs, `ResidentPlan`).
// A tile's weights (its K inputs x NU units) are loaded into shared memory
// once per phase; a step then reads from L2 only the K x BP states of the
// layers below and above, and every block sums its own units' drives in full,
// so no partial sums cross blocks: one grid barrier a step is the only
// synchronisation. (The tiled kernel above restages weights each step and
// combines partial sums through global memory.)
//
// Within a block, thread (q, bq) owns batch columns 4bq..4bq+3 and the input
// rows r = q (mod RQ); it accumulates NU x 4 sums, so each state it reads from
// shared memory meets NU weights (register blocking). The RQ partial sums of
// an output are then added in a fixed order: deterministic.
//
// Shared-memory strides are padded against bank conflicts: a warp's lanes
// read about seven consecutive weight rows at once (row stride WS(NU) words
// puts them in distinct banks), and write their partial sums with a stride
// of (NU + 1) x BP per q, which spreads a warp's 16-byte stores over the banks.

#if RT > 0

#define QC (BP / 4)
#define RQ (RT_THREADS / QC)

// Row stride of a tile's weights in shared memory (the host sizes RT_WFLOATS alike).
template <int NU>
__device__ constexpr int weight_stride() { return NU % 8 == 0 ? NU + 4 : NU; }

__device__ __forceinline__ void stage16(float* smem, const float* gmem)
{
#if __CUDA_ARCH__ >= 800
    // Asynchronous copy through L2 (.cg: not L1, which other SMs' writes bypass).
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
#else
    *reinterpret_cast<float4*>(smem) = __ldcg(reinterpret_cast<const float4*>(gmem));
#endif
}

__device__ __forceinline__ void stage_commit()
{
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until this thread's copies have landed.
__device__ __forceinline__ void stage_wait()
{
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
#endif
}

// The grid barrier at the end of step `round` (1, 2, ...), on a counter that
// only grows (zeroed by the host before each launch): each block adds 1 with
// release semantics and waits, with acquire semantics, for round x gridDim.x
// arrivals. One atomic a block and no reset, against grid_sync's two atomics
// and generation: 0.7 us a step less on an H200. (Waiting only for the
// neighbour layers' tiles, which are all a block depends on, measured the same.)
__device__ __forceinline__ void grid_count_sync(unsigned* count, unsigned round)
{
    __syncthreads();
    if (threadIdx.x == 0) {
        asm volatile("red.release.gpu.global.add.u32 [%0], 1;\n" ::"l"(count) : "memory");
        unsigned v;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(count) : "memory");
        } while (v < round * gridDim.x);
    }
    __syncthreads();
}

// acc[u][c] = sum over this thread's rows r = q (mod RQ) of W[r][u] s[r][4bq + c].
template <int NU>
__device__ __forceinline__ void rt_rows(const float* __restrict__ sS, const float* __restrict__ sW,
                                        int K, int q, int bq, float (&acc)[NU][4])
{
    constexpr int WS = weight_stride<NU>();
    for (int r = q; r < K; r += RQ) {
        const float4 s4 = *reinterpret_cast<const float4*>(sS + r * BP + 4 * bq);
        const float s[4] = {s4.x, s4.y, s4.z, s4.w};
#pragma unroll
        for (int u4 = 0; u4 < NU / 4; ++u4) {
            const float4 w4 = *reinterpret_cast<const float4*>(sW + r * WS + 4 * u4);
            const float w[4] = {w4.x, w4.y, w4.z, w4.w};
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int c = 0; c < 4; ++c) acc[4 * u4 + i][c] += w[i] * s[c];
        }
    }
}

template <int NU>
__device__ void rt_phase(float* a, float* b, const float* __restrict__ P,
                         const float* __restrict__ drive0, const float* __restrict__ target,
                         const float* __restrict__ fparams, const int* __restrict__ iparams,
                         float sign, float eps, int steps, unsigned* change, unsigned* count)
{
    extern __shared__ __align__(16) float smem[];
    constexpr int WS = weight_stride<NU>();
    constexpr int RS = (NU + 1) * BP; // stride of a q's partial sums
    float* sW = smem;                 // K x WS weights: row r, unit u
    float* sS = sW + RT_WFLOATS;      // K x BP staged states, later RQ x RS partial sums
    float* sOff = sS + RT_STAGE;      // NU x BP: b_k, or x W_0 + b_1 on layer 1
    float* sOwn = sOff + 16 * BP;     // NU x BP: this tile's own states
    const int tile = blockIdx.x;
    const int k = RT_LAYER[tile], j0 = RT_J0[tile], nu = RT_NU[tile], n = N[k];
    const int kd = k >= 2 ? N[k - 1] : 0; // layer 1's bottom-up term is drive0
    const int ku = k < L ? N[k + 1] : 0;
    const int K = kd + ku;
    const int tid = threadIdx.x;

    // Once per phase: the tile's weights (zero past the layer's last unit),
    // offsets and starting states.
    for (int e = tid; e < K * WS; e += RT_THREADS) {
        const int r = e / WS, u = e % WS;
        float w = 0.f;
        if (u < nu)
            w = r < kd ? P[WOFF[k - 1] + r * n + j0 + u] : P[WTOFF[k] + (r - kd) * n + j0 + u];
        sW[e] = w;
    }
    for (int o = tid; o < nu * BP; o += RT_THREADS) {
        const int j = j0 + o / BP, col = o % BP;
        sOff[o] = k == 1 ? drive0[j * BP + col] + P[BOFF[1] + j] : P[BOFF[k] + j];
        sOwn[o] = __ldcg(a + SOFF[k] + j * BP + col);
    }

    const int bq = tid % QC, q = tid / QC;
    const bool computes = q < RQ;
    const int rows = iparams[2 * BP];
    const float beta = sign * fparams[0];
    const bool nudged = k == L && sign != 0.f;
    const int lane = tid & 31;
    for (int t = 0; t < steps; ++t) {
        const float* src = t % 2 == 0 ? a : b;
        float* dst = t % 2 == 0 ? b : a;
        __syncthreads(); // the last step's readers of sS are done
        // Stage the K x BP input states, every copy in flight at once. (Staging
        // in 2 or 4 groups of rows, computing on each as it landed, measured
        // no faster on an H200.)
        for (int e = tid; e < K * QC; e += RT_THREADS) {
            const int r = e / QC, v = e % QC;
            const float* g = r < kd ? src + SOFF[k - 1] + r * BP : src + SOFF[k + 1] + (r - kd) * BP;
            stage16(sS + r * BP + 4 * v, g + 4 * v);
        }
        stage_commit();
        float acc[NU][4];
#pragma unroll
        for (int u = 0; u < NU; ++u)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[u][c] = 0.f;
        stage_wait();
        __syncthreads();
        if (computes) rt_rows<NU>(sS, sW, K, q, bq, acc);

        // Partial sums to shared memory (over the staged states), then each
        // output adds its RQ partials in a fixed order.
        float* red = sS;
        __syncthreads();
        if (computes) {
#pragma unroll
            for (int u = 0; u < NU; ++u)
                *reinterpret_cast<float4*>(red + q * RS + u * BP + 4 * bq) =
                    make_float4(acc[u][0], acc[u][1], acc[u][2], acc[u][3]);
        }
        __syncthreads();
        float worst = 0.f;
        for (int o = tid; o < nu * BP; o += RT_THREADS) {
            // Four running sums (q mod 4), so the adds do not wait on each other.
            float v0 = 0.f, v1 = 0.f, v2 = 0.f, v3 = 0.f;
            int p = 0;
            for (; p + 4 <= RQ; p += 4) {
                v0 += red[p * RS + o];
                v1 += red[(p + 1) * RS + o];
                v2 += red[(p + 2) * RS + o];
                v3 += red[(p + 3) * RS + o];
            }
            for (; p < RQ; ++p) v0 += red[p * RS + o];
            float v = (v0 + v1) + (v2 + v3);
            const int j = j0 + o / BP, col = o % BP;
            const float s = sOwn[o];
            v += sOff[o];
            if (nudged) v += beta * (target[j * BP + col] - s);
            const float s_new = clip01((1.f - eps) * s + eps * v);
            sOwn[o] = s_new;
            dst[SOFF[k] + j * BP + col] = s_new;
            if (col < rows) {
                const float d = fabsf(s_new - s);
                worst = (d != d || d > worst) ? d : worst;
            }
        }
        if (change != nullptr && t + 1 == steps) {
            // Non-negative floats order like their bits; NaN's bits beat every number.
            unsigned bits = __float_as_uint(worst);
            for (int off = 16; off > 0; off /= 2)
                bits = max(bits, __shfl_xor_sync(0xffffffffu, bits, off));
            if (lane == 0) atomicMax(change, bits);
        }
        grid_count_sync(count, t + 1);
    }
}

// A whole synchronous phase, one cooperative launch of RT blocks of
// RT_THREADS threads; ping-pongs a -> b -> a ... like relax_phase.
extern "C" __global__ void __launch_bounds__(RT_THREADS)
relax_resident(float* a, float* b, const float* __restrict__ P,
               const float* __restrict__ drive0, const float* __restrict__ target,
               const float* __restrict__ fparams, const int* __restrict__ iparams,
               float sign, float eps, int steps, unsigned* change, unsigned* count)
{
#define RT_ARGS a, b, P, drive0, target, fparams, iparams, sign, eps, steps, change, count
    switch (RT_NU4[blockIdx.x]) {
    case 1: rt_phase<4>(RT_ARGS); break;
    case 2: rt_phase<8>(RT_ARGS); break;
    case 3: rt_phase<12>(RT_ARGS); break;
    default: rt_phase<16>(RT_ARGS); break;
    }
#undef RT_ARGS
}

#endif

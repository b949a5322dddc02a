//! The GPU side of EP: device memory laid out as src/cuda/kernels.cu expects,
//! the kernels compiled by NVRTC for this network's shape, cuBLAS for the
//! once-per-batch GEMMs, and CUDA graphs that replay a whole batch (hundreds
//! of relaxation steps) with one launch.
//!
//! Per batch the host copies three small buffers (the images, the indices and
//! labels, beta and the scaled rates), launches the batch's graph and reads two
//! numbers back. Everything else stays on the device.

use super::device_error as err;
use crate::config::Relaxation;
use crate::error::Result;
use cudarc::cublas::{CudaBlas, sys as blas_sys};
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr, LaunchConfig,
    PushKernelArg, result as drv, sys as drv_sys,
};
use std::sync::Arc;

use crate::cuda_layout::{KW, RT_THREADS, Shape, TILE};
/// kernels.cu compiled by NVRTC for `shape` and GPU architecture `arch`
/// (e.g. "sm_90", or a virtual "compute_90").
pub fn compile(shape: &Shape, arch: &str) -> Result<cudarc::nvrtc::Ptx> {
    let src = shape.header() + include_str!("kernels.cu") + include_str!("resident.cu");
    let opts = cudarc::nvrtc::CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(src, opts)
        .map_err(|e| crate::Error::Device(format!("NVRTC could not compile the EP kernels: {e}")))
}

/// The six state sets: free, nudged (+beta), nudged (-beta), each a ping-pong pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Set {
    FreeA,
    FreeB,
    PosA,
    PosB,
    NegA,
    NegB,
}

impl Set {
    fn other(self) -> Set {
        match self {
            Set::FreeA => Set::FreeB,
            Set::FreeB => Set::FreeA,
            Set::PosA => Set::PosB,
            Set::PosB => Set::PosA,
            Set::NegA => Set::NegB,
            Set::NegB => Set::NegA,
        }
    }
}

/// How a phase relaxes: `steps` steps, `sign` 0 (free) or +1 / -1 (nudged by
/// +-fparams[0]), the scheme and its step size; `track_last` records the
/// largest change of the last step.
#[derive(Clone, Copy, Debug)]
pub struct Relax {
    pub steps: usize,
    pub sign: f32,
    pub scheme: Relaxation,
    pub eps: f32,
    pub track_last: bool,
}

impl Relax {
    pub fn of(s: &crate::eqprop::Settings, steps: usize, sign: f32, track_last: bool) -> Relax {
        Relax {
            steps,
            sign,
            scheme: s.relaxation,
            eps: s.epsilon,
            track_last,
        }
    }
}

/// Device pointers of a phase kernel's buffers (see `Engine::phase_args`).
struct PhaseArgs {
    a: CUdeviceptr,
    b: CUdeviceptr,
    p: CUdeviceptr,
    d0: CUdeviceptr,
    t: CUdeviceptr,
    fp: CUdeviceptr,
    ip: CUdeviceptr,
    change: CUdeviceptr,
}

impl PhaseArgs {
    /// The seven buffers every phase kernel takes first, in kernels.cu's order.
    fn push<'a>(&'a self, l: &mut cudarc::driver::LaunchArgs<'a>) {
        l.arg(&self.a).arg(&self.b).arg(&self.p).arg(&self.d0);
        l.arg(&self.t).arg(&self.fp).arg(&self.ip);
    }
}

/// Per-example states kept on the device: count examples x N[k] per layer.
pub struct Particles {
    pub count: usize,
    pub data: CudaSlice<f32>,
}

pub struct Engine {
    pub shape: Shape,
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    blas: CudaBlas,
    _workspace: CudaSlice<u8>,
    relax: CudaFunction,
    phase: CudaFunction,
    /// Run each phase as one persistent kernel (grid-wide barrier per step)
    /// rather than a graph of one-step kernels.
    pub persistent: bool,
    /// Blocks of the persistent kernel: as many as fit on the GPU at once.
    phase_blocks: u32,
    /// The resident kernel and its dynamic shared memory in bytes, where the
    /// network's plan fits this GPU (one block per tile, all co-resident).
    resident: Option<(CudaFunction, u32)>,
    /// Run synchronous phases with the resident kernel (where it fits);
    /// otherwise with relax_phase. Needs `persistent`.
    pub use_resident: bool,
    /// The resident kernel's barrier counter, zeroed before each launch.
    rt_count: CudaSlice<u32>,
    barrier: CudaSlice<u32>,
    load: CudaFunction,
    store: CudaFunction,
    mask: CudaFunction,
    score: CudaFunction,
    biases: CudaFunction,
    /// W_k, W_k^T (k >= 1) and b_k, at the offsets of `shape`.
    pub params: CudaSlice<f32>,
    states: Vec<CudaSlice<f32>>,
    drive0: CudaSlice<f32>,
    target: CudaSlice<f32>,
    /// The batch's images, bp x n_0 row-major (rows past the batch are zero).
    x: CudaSlice<f32>,
    /// [idx; bp], [label; bp], rows.
    iparams: CudaSlice<i32>,
    /// beta, +rate_k (L), -rate_k (L), 1.
    fparams: CudaSlice<f32>,
    stats: CudaSlice<f32>,
    change: CudaSlice<u32>,
    partial: CudaSlice<f32>,
    counters: CudaSlice<u32>,
    /// Kernel launches recorded since the last `take_launches`.
    launches: usize,
}

fn ptr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> CUdeviceptr {
    s.device_ptr(stream).0
}

impl Engine {
    pub fn new(ctx: Arc<CudaContext>, sizes: &[usize], batch: usize, tf32: bool) -> Result<Self> {
        let shape = Shape::new(sizes, batch);
        // One stream, so cudarc's cross-stream event tracking is not needed
        // (and its events must not enter graph captures).
        // SAFETY: no other stream touches these buffers.
        unsafe { ctx.disable_event_tracking() };
        // A stream of our own: the legacy default stream cannot be captured into a graph.
        let stream = ctx.new_stream().map_err(err)?;
        let (major, minor) = ctx.compute_capability().map_err(err)?;
        let ptx = compile(&shape, &format!("sm_{major}{minor}"))?;
        let module = ctx.load_module(ptx).map_err(err)?;
        let f = |name: &str| module.load_function(name).map_err(err);
        let blas = CudaBlas::new(stream.clone()).map_err(err)?;
        // alpha and beta of the update GEMMs come from fparams on the device,
        // so a captured graph serves every batch's beta and rates.
        blas.set_pointer_mode(blas_sys::cublasPointerMode_t::CUBLAS_POINTER_MODE_DEVICE)
            .map_err(err)?;
        if tf32 {
            // SAFETY: a valid handle; the mode only changes GEMM precision.
            unsafe {
                blas_sys::cublasSetMathMode(
                    *blas.handle(),
                    blas_sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
                )
            }
            .result()
            .map_err(err)?;
        }
        // cuBLAS must not allocate while a graph is being captured: give it its workspace.
        let workspace = stream.alloc_zeros::<u8>(32 << 20).map_err(err)?;
        // SAFETY: the workspace outlives the handle (both live in the Engine).
        unsafe {
            blas_sys::cublasSetWorkspace_v2(
                *blas.handle(),
                ptr(&workspace, &stream) as *mut std::ffi::c_void,
                32 << 20,
            )
        }
        .result()
        .map_err(err)?;
        let zeros = |n: usize| stream.alloc_zeros::<f32>(n.max(1)).map_err(err);
        let l = shape.depth();
        let n_last = shape.sizes[l];
        let states = (0..6)
            .map(|_| zeros(shape.state_len))
            .collect::<Result<_>>()?;
        let phase = f("relax_phase")?;
        let sms = ctx
            .attribute(drv_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(err)? as u32;
        let cooperative = ctx
            .attribute(drv_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH)
            .map_err(err)?
            == 1;
        let per_sm = phase
            .occupancy_max_active_blocks_per_multiprocessor((KW * 32) as u32, 0, None)
            .map_err(err)?;
        let virtual_blocks = (shape.tiles.len() * shape.kb * shape.nbg) as u32;
        let phase_blocks = (per_sm * sms).min(virtual_blocks);
        let resident = match &shape.resident {
            Some(plan) if cooperative => {
                let f = f("relax_resident")?;
                let smem = plan.smem_bytes(shape.bp);
                let optin = ctx
                    .attribute(
                        drv_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
                    )
                    .map_err(err)? as usize;
                if smem <= optin {
                    f.set_attribute(
                        drv_sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        smem as i32,
                    )
                    .map_err(err)?;
                    let fits = f
                        .occupancy_max_active_blocks_per_multiprocessor(
                            RT_THREADS as u32,
                            smem,
                            None,
                        )
                        .map_err(err)?;
                    ((fits * sms) as usize >= plan.tiles.len()).then_some((f, smem as u32))
                } else {
                    None
                }
            }
            _ => None,
        };
        Ok(Engine {
            resident,
            use_resident: true,
            rt_count: stream.alloc_zeros::<u32>(1).map_err(err)?,
            relax: f("relax_step")?,
            phase,
            persistent: cooperative && phase_blocks > 0,
            phase_blocks,
            barrier: stream.alloc_zeros::<u32>(2).map_err(err)?,
            load: f("load_batch")?,
            store: f("store_batch")?,
            mask: f("mask_padding")?,
            score: f("score")?,
            biases: f("update_biases")?,
            params: zeros(shape.param_len)?,
            states,
            drive0: zeros(shape.sizes[1] * shape.bp)?,
            target: zeros(n_last * shape.bp)?,
            x: zeros(shape.bp * shape.sizes[0])?,
            iparams: stream.alloc_zeros::<i32>(2 * shape.bp + 1).map_err(err)?,
            fparams: zeros(2 * l + 2)?,
            stats: zeros(2)?,
            change: stream.alloc_zeros::<u32>(1).map_err(err)?,
            partial: zeros(shape.tiles.len() * shape.kb * shape.bp * TILE)?,
            // One arrival counter per (tile, batch group).
            counters: stream
                .alloc_zeros::<u32>(shape.tiles.len() * shape.nbg)
                .map_err(err)?,
            blas,
            _workspace: workspace,
            shape,
            ctx,
            stream,
            launches: 0,
        })
    }

    fn set(&self, s: Set) -> CUdeviceptr {
        let i = match s {
            Set::FreeA => 0,
            Set::FreeB => 1,
            Set::PosA => 2,
            Set::PosB => 3,
            Set::NegA => 4,
            Set::NegB => 5,
        };
        ptr(&self.states[i], &self.stream)
    }

    /// Device particles for `count` examples, all zero (the paper's start).
    pub fn particles(&self, count: usize) -> Result<Particles> {
        let per: usize = self.shape.sizes[1..].iter().sum();
        Ok(Particles {
            count,
            data: self
                .stream
                .alloc_zeros::<f32>((count * per).max(1))
                .map_err(err)?,
        })
    }

    // ---- per-batch uploads (outside graphs) ----

    /// Copies the batch's images (`rows x n_0`, zero-padded to bp rows),
    /// indices, labels and the float parameters to the device.
    pub fn upload_batch(&mut self, x: &[f32], iparams: &[i32], fparams: &[f32]) -> Result<()> {
        self.stream.memcpy_htod(x, &mut self.x).map_err(err)?;
        self.stream
            .memcpy_htod(iparams, &mut self.iparams)
            .map_err(err)?;
        self.stream
            .memcpy_htod(fparams, &mut self.fparams)
            .map_err(err)
    }

    /// Errors and summed cost of the last scored batch (waits for the GPU).
    pub fn read_stats(&self) -> Result<[f32; 2]> {
        let mut out = [0.0f32; 2];
        self.stream
            .memcpy_dtoh(&self.stats, &mut out[..])
            .map_err(err)?;
        Ok(out)
    }

    /// Largest state change of the last tracked step.
    pub fn read_change(&self) -> Result<f32> {
        let mut out = [0u32; 1];
        self.stream
            .memcpy_dtoh(&self.change, &mut out[..])
            .map_err(err)?;
        Ok(f32::from_bits(out[0]))
    }

    pub fn take_launches(&mut self) -> usize {
        std::mem::take(&mut self.launches)
    }

    // ---- the work of one batch, enqueued on the stream (and so capturable) ----

    fn grid_over(&self, n: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (n.div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// States of `set` from `particles` (or zeros), targets from the labels.
    pub fn load(&mut self, set: Set, particles: Option<&Particles>) -> Result<()> {
        let (pp, count) =
            particles.map_or((0, 0i64), |p| (ptr(&p.data, &self.stream), p.count as i64));
        let (s, t, ip) = (
            self.set(set),
            ptr(&self.target, &self.stream),
            ptr(&self.iparams, &self.stream),
        );
        let mut b = self.stream.launch_builder(&self.load);
        b.arg(&s).arg(&t).arg(&pp).arg(&count).arg(&ip);
        // SAFETY: argument types match load_batch's signature; buffers are sized by `shape`.
        unsafe { b.launch(self.grid_over(self.shape.state_len)) }.map_err(err)?;
        self.launches += 1;
        Ok(())
    }

    pub fn store(&mut self, set: Set, particles: &Particles) -> Result<()> {
        let (s, pp, count, ip) = (
            self.set(set),
            ptr(&particles.data, &self.stream),
            particles.count as i64,
            ptr(&self.iparams, &self.stream),
        );
        let mut b = self.stream.launch_builder(&self.store);
        b.arg(&s).arg(&pp).arg(&count).arg(&ip);
        // SAFETY: as in `load`.
        unsafe { b.launch(self.grid_over(self.shape.state_len)) }.map_err(err)?;
        self.launches += 1;
        Ok(())
    }

    /// Row-major C = alpha op(A) op(B) + beta C with device-resident alpha, beta
    /// (cuBLAS is column-major: it computes C^T = op(B)^T op(A)^T).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &mut self,
        (ta, tb): (bool, bool),
        (m, n, k): (usize, usize, usize),
        alpha: CUdeviceptr,
        (a, lda): (CUdeviceptr, usize),
        (b, ldb): (CUdeviceptr, usize),
        beta: CUdeviceptr,
        (c, ldc): (CUdeviceptr, usize),
    ) -> Result<()> {
        use blas_sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        let op = |t| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
        // SAFETY: pointers are live device buffers sized by `shape`; pointer mode is DEVICE.
        unsafe {
            cudarc::cublas::result::sgemm(
                *self.blas.handle(),
                op(tb),
                op(ta),
                n as i32,
                m as i32,
                k as i32,
                alpha as *const f32,
                b as *const f32,
                ldb as i32,
                a as *const f32,
                lda as i32,
                beta as *const f32,
                c as *mut f32,
                ldc as i32,
            )
        }
        .map_err(err)?;
        self.launches += 1;
        Ok(())
    }

    fn fparam(&self, i: usize) -> CUdeviceptr {
        ptr(&self.fparams, &self.stream) + (4 * i) as u64
    }

    /// drive0 = x W_0 (unit-major: W_0^T x^T); layer 1 adds b_1 in the step kernel.
    pub fn input_drive(&mut self) -> Result<()> {
        let s = &self.shape;
        let (n0, n1, bp, l) = (s.sizes[0], s.sizes[1], s.bp, s.depth());
        let one = self.fparam(2 * l + 1);
        // Clear drive0 and accumulate into it (alpha = beta = the device's 1.0).
        let d0 = ptr(&self.drive0, &self.stream);
        // SAFETY: d0 holds n1 * bp floats.
        unsafe { drv::memset_d8_async(d0, 0, 4 * n1 * bp, self.stream.cu_stream()) }
            .map_err(err)?;
        let (w0, x) = (ptr(&self.params, &self.stream), ptr(&self.x, &self.stream));
        self.gemm(
            (true, true),
            (n1, bp, n0),
            one,
            (w0, n1),
            (x, n0),
            one,
            (d0, bp),
        )
    }

    /// Relaxes from `start` (sync: ping-pong with its pair; even/odd: in
    /// place). Returns the set holding the result.
    pub fn relax(&mut self, start: Set, r: &Relax) -> Result<Set> {
        if self.resident_active() && r.scheme == Relaxation::Synchronous {
            return self.relax_resident(start, r);
        }
        if self.persistent {
            return self.relax_persistent(start, r);
        }
        let Relax {
            steps, sign, eps, ..
        } = *r;
        let mut cur = start;
        for t in 0..steps {
            let track = r.track_last && t + 1 == steps;
            if track {
                let c = ptr(&self.change, &self.stream);
                // SAFETY: one u32.
                unsafe { drv::memset_d8_async(c, 0, 4, self.stream.cu_stream()) }.map_err(err)?;
            }
            match r.scheme {
                Relaxation::Synchronous => {
                    let n = self.shape.tiles.len();
                    self.step(cur, cur.other(), sign, eps, false, 0, n, track)?;
                    cur = cur.other();
                }
                Relaxation::EvenOdd => {
                    let (odd, n) = (self.shape.odd_tiles, self.shape.tiles.len());
                    self.step(cur, cur, sign, 1.0, true, 0, odd, track)?;
                    self.step(cur, cur, sign, 1.0, true, odd, n - odd, track)?;
                }
            }
        }
        Ok(cur)
    }

    /// The buffers a phase kernel reads and writes: the ping-pong pair from
    /// `start`, parameters, input drive, targets, float and int parameters,
    /// and the largest-change slot, zeroed if tracked (else null).
    fn phase_args(&self, start: Set, track_last: bool) -> Result<PhaseArgs> {
        let st = &self.stream;
        let change = if track_last {
            let c = ptr(&self.change, st);
            // SAFETY: one u32.
            unsafe { drv::memset_d8_async(c, 0, 4, st.cu_stream()) }.map_err(err)?;
            c
        } else {
            0
        };
        Ok(PhaseArgs {
            a: self.set(start),
            b: self.set(start.other()),
            p: ptr(&self.params, st),
            d0: ptr(&self.drive0, st),
            t: ptr(&self.target, st),
            fp: ptr(&self.fparams, st),
            ip: ptr(&self.iparams, st),
            change,
        })
    }

    /// `relax` as one cooperative launch of relax_phase.
    fn relax_persistent(&mut self, start: Set, r: &Relax) -> Result<Set> {
        let Relax {
            steps,
            sign,
            scheme,
            eps,
            track_last,
        } = *r;
        if steps == 0 {
            return Ok(start);
        }
        let args = self.phase_args(start, track_last)?;
        let st = &self.stream;
        let (part, cnt, bar) = (
            ptr(&self.partial, st),
            ptr(&self.counters, st),
            ptr(&self.barrier, st),
        );
        let even_odd = scheme == Relaxation::EvenOdd;
        let (eo, n, eps) = (
            even_odd as i32,
            steps as i32,
            if even_odd { 1.0f32 } else { eps },
        );
        let mut l = st.launch_builder(&self.phase);
        args.push(&mut l);
        l.arg(&sign).arg(&eps).arg(&eo).arg(&n);
        l.arg(&part).arg(&cnt).arg(&args.change).arg(&bar);
        let cfg = LaunchConfig {
            grid_dim: (self.phase_blocks, 1, 1),
            block_dim: ((KW * 32) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: argument types match relax_phase; the grid fits on the GPU at
        // once (occupancy-sized), as its barrier requires.
        unsafe { l.launch_cooperative(cfg) }.map_err(err)?;
        self.launches += 1;
        Ok(match (even_odd, steps % 2) {
            (true, _) | (false, 0) => start,
            _ => start.other(),
        })
    }

    /// Whether synchronous phases run on the resident kernel.
    pub fn resident_active(&self) -> bool {
        self.persistent && self.use_resident && self.resident.is_some()
    }

    /// A synchronous phase as one cooperative launch of relax_resident.
    fn relax_resident(&mut self, start: Set, r: &Relax) -> Result<Set> {
        let Some((func, smem)) = self.resident.as_ref() else {
            return Err(crate::Error::Device(
                "the resident kernel does not fit this GPU".into(),
            ));
        };
        if r.steps == 0 {
            return Ok(start);
        }
        let args = self.phase_args(start, r.track_last)?;
        let st = &self.stream;
        let count = ptr(&self.rt_count, st);
        // SAFETY: one u32.
        unsafe { drv::memset_d8_async(count, 0, 4, st.cu_stream()) }.map_err(err)?;
        let (sign, eps, n) = (r.sign, r.eps, r.steps as i32);
        let mut l = st.launch_builder(func);
        args.push(&mut l);
        l.arg(&sign).arg(&eps).arg(&n).arg(&args.change).arg(&count);
        let blocks = self.shape.resident.as_ref().map_or(0, |p| p.tiles.len()) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (RT_THREADS as u32, 1, 1),
            shared_mem_bytes: *smem,
        };
        // SAFETY: argument types match relax_resident; the engine checked that
        // every block fits on the GPU at once, as its barrier requires.
        unsafe { l.launch_cooperative(cfg) }.map_err(err)?;
        self.launches += 1;
        Ok(if r.steps.is_multiple_of(2) {
            start
        } else {
            start.other()
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        src: Set,
        dst: Set,
        sign: f32,
        eps: f32,
        even_odd: bool,
        tile0: usize,
        tiles: usize,
        track: bool,
    ) -> Result<()> {
        if tiles == 0 {
            return Ok(());
        }
        let st = &self.stream;
        let (s, d) = (self.set(src), self.set(dst));
        let (p, d0, t) = (
            ptr(&self.params, st),
            ptr(&self.drive0, st),
            ptr(&self.target, st),
        );
        let (fp, ip) = (ptr(&self.fparams, st), ptr(&self.iparams, st));
        let (part, cnt) = (ptr(&self.partial, st), ptr(&self.counters, st));
        let change = if track { ptr(&self.change, st) } else { 0 };
        let (eo, t0) = (even_odd as i32, tile0 as i32);
        let mut b = st.launch_builder(&self.relax);
        b.arg(&s).arg(&d).arg(&p).arg(&d0).arg(&t).arg(&fp).arg(&ip);
        b.arg(&sign).arg(&eps).arg(&eo).arg(&t0);
        b.arg(&part).arg(&cnt).arg(&change);
        let cfg = LaunchConfig {
            grid_dim: ((tiles * self.shape.kb * self.shape.nbg) as u32, 1, 1),
            block_dim: ((KW * 32) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: argument types match relax_step; every buffer is sized by `shape`.
        unsafe { b.launch(cfg) }.map_err(err)?;
        self.launches += 1;
        Ok(())
    }

    pub fn copy(&mut self, from: Set, to: Set) -> Result<()> {
        let bytes = 4 * self.shape.state_len;
        // SAFETY: both sets hold state_len floats.
        unsafe {
            drv::memcpy_dtod_async(self.set(to), self.set(from), bytes, self.stream.cu_stream())
        }
        .map_err(err)
    }

    pub fn score(&mut self, set: Set) -> Result<()> {
        let st = &self.stream;
        let (s, t, ip, out) = (
            self.set(set),
            ptr(&self.target, st),
            ptr(&self.iparams, st),
            ptr(&self.stats, st),
        );
        let mut b = st.launch_builder(&self.score);
        b.arg(&s).arg(&t).arg(&ip).arg(&out);
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: argument types match score.
        unsafe { b.launch(cfg) }.map_err(err)?;
        self.launches += 1;
        Ok(())
    }

    /// EP's update from the `plus` and `minus` equilibria, with the scaled
    /// rates in fparams (+rate_k at 1 + k, -rate_k at 1 + L + k):
    ///   W_k += rate_k (plus_k plus_{k+1}^T - minus_k minus_{k+1}^T)  (and W_k^T alike)
    ///   b_k += rate_{k-1} sum_batch (plus_k - minus_k).
    pub fn update(&mut self, plus: Set, minus: Set) -> Result<()> {
        for set in [plus, minus] {
            let s = self.set(set);
            let ip = ptr(&self.iparams, &self.stream);
            let mut b = self.stream.launch_builder(&self.mask);
            b.arg(&s).arg(&ip);
            // SAFETY: argument types match mask_padding.
            unsafe { b.launch(self.grid_over(self.shape.state_len)) }.map_err(err)?;
            self.launches += 1;
        }
        let sh = self.shape.clone();
        let (l, bp) = (sh.depth(), sh.bp);
        let one = self.fparam(2 * l + 1);
        let p = ptr(&self.params, &self.stream);
        let x = ptr(&self.x, &self.stream);
        for (set, sign_off) in [(plus, 1), (minus, 1 + l)] {
            let s = self.set(set);
            let layer = |k: usize| s + 4 * sh.soff[k] as u64;
            for k in 0..l {
                let rate = self.fparam(sign_off + k);
                let (nk, nk1) = (sh.sizes[k], sh.sizes[k + 1]);
                let w = p + 4 * sh.woff[k] as u64;
                if k == 0 {
                    // W_0 += rate x^T s_1^T
                    self.gemm(
                        (true, true),
                        (nk, nk1, bp),
                        rate,
                        (x, nk),
                        (layer(1), bp),
                        one,
                        (w, nk1),
                    )?;
                } else {
                    // W_k += rate s_k s_{k+1}^T; W_k^T += rate s_{k+1} s_k^T
                    self.gemm(
                        (false, true),
                        (nk, nk1, bp),
                        rate,
                        (layer(k), bp),
                        (layer(k + 1), bp),
                        one,
                        (w, nk1),
                    )?;
                    let wt = p + 4 * sh.wtoff[k] as u64;
                    self.gemm(
                        (false, true),
                        (nk1, nk, bp),
                        rate,
                        (layer(k + 1), bp),
                        (layer(k), bp),
                        one,
                        (wt, nk),
                    )?;
                }
            }
        }
        let units: usize = sh.sizes[1..].iter().sum();
        let (pl, mi, fp) = (
            self.set(plus),
            self.set(minus),
            ptr(&self.fparams, &self.stream),
        );
        let mut b = self.stream.launch_builder(&self.biases);
        b.arg(&p).arg(&pl).arg(&mi).arg(&fp);
        // SAFETY: argument types match update_biases.
        unsafe { b.launch(self.grid_over(units)) }.map_err(err)?;
        self.launches += 1;
        Ok(())
    }

    // ---- graphs ----

    /// Records what `body` enqueues into a graph, to replay with one launch.
    pub fn capture(&mut self, body: impl FnOnce(&mut Engine) -> Result<()>) -> Result<CudaGraph> {
        self.stream
            .begin_capture(drv_sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(err)?;
        let body_result = body(self);
        let graph = self
            .stream
            .end_capture(drv_sys::CUgraphInstantiate_flags(0))
            .map_err(err)?;
        body_result?;
        graph.ok_or_else(|| crate::Error::Device("CUDA graph capture recorded nothing".into()))
    }

    // ---- parameters between host and device ----

    /// Uploads W_k, W_k^T and b_k from the host network.
    pub fn upload_params(&mut self, net: &crate::eqprop::Network) -> Result<()> {
        let sh = &self.shape;
        let mut host = vec![0.0f32; sh.param_len];
        for (k, w) in net.weights.iter().enumerate() {
            host[sh.woff[k]..sh.woff[k] + w.data.len()].copy_from_slice(&w.data);
            if k > 0 {
                let t = &mut host[sh.wtoff[k]..sh.wtoff[k] + w.data.len()];
                for i in 0..w.rows {
                    for j in 0..w.cols {
                        t[j * w.rows + i] = w.data[i * w.cols + j];
                    }
                }
            }
            let b = &net.biases[k];
            host[sh.boff[k + 1]..sh.boff[k + 1] + b.len()].copy_from_slice(b);
        }
        self.stream
            .memcpy_htod(&host[..], &mut self.params)
            .map_err(err)
    }

    /// Downloads W_k and b_k into the host network (W_k^T mirrors W_k).
    pub fn download_params(&self, net: &mut crate::eqprop::Network) -> Result<()> {
        let sh = &self.shape;
        let mut host = vec![0.0f32; sh.param_len];
        self.stream
            .memcpy_dtoh(&self.params, &mut host[..])
            .map_err(err)?;
        for (k, w) in net.weights.iter_mut().enumerate() {
            let n = w.data.len();
            w.data.copy_from_slice(&host[sh.woff[k]..sh.woff[k] + n]);
            let b = &mut net.biases[k];
            let m = b.len();
            b.copy_from_slice(&host[sh.boff[k + 1]..sh.boff[k + 1] + m]);
        }
        Ok(())
    }

    /// The states of `set`, example-major per layer: out[k-1] is rows x N[k].
    pub fn download_states(&self, set: Set, rows: usize) -> Result<Vec<Vec<f32>>> {
        let sh = &self.shape;
        let mut all = vec![0.0f32; sh.state_len];
        let i = [
            Set::FreeA,
            Set::FreeB,
            Set::PosA,
            Set::PosB,
            Set::NegA,
            Set::NegB,
        ]
        .iter()
        .position(|&s| s == set)
        .expect("a set");
        self.stream
            .memcpy_dtoh(&self.states[i], &mut all[..])
            .map_err(err)?;
        Ok((1..=sh.depth())
            .map(|k| {
                let n = sh.sizes[k];
                let block = &all[sh.soff[k]..sh.soff[k] + n * sh.bp];
                let mut out = vec![0.0; rows * n];
                for b in 0..rows {
                    for j in 0..n {
                        out[b * n + j] = block[j * sh.bp + b];
                    }
                }
                out
            })
            .collect())
    }

    pub fn download_particles(&self, p: &Particles, out: &mut [f32]) -> Result<()> {
        self.stream.memcpy_dtoh(&p.data, out).map_err(err)
    }

    pub fn upload_particles(&self, p: &mut Particles, data: &[f32]) -> Result<()> {
        self.stream.memcpy_htod(data, &mut p.data).map_err(err)
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda_layout::{MAX_BATCH, STAGE_MAX};

    /// The kernels compile for every preset's shape wherever NVRTC is
    /// installed (no GPU needed); without NVRTC the test says it skipped.
    #[test]
    fn kernels_compile_for_every_preset() {
        // SAFETY: only tries to load the library.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            eprintln!("skipped: NVRTC (libnvrtc.so) not found");
            return;
        }
        for name in ["eqprop-mnist-1h", "eqprop-mnist-2h", "eqprop-mnist-3h"] {
            let cfg = crate::config::preset(name).unwrap();
            for batch in [1, 20, 32, 100, 500, MAX_BATCH] {
                let shape = Shape::new(&cfg.layers, batch);
                assert!(shape.stage_floats() <= STAGE_MAX, "{name} batch {batch}");
                assert_eq!(shape.bg * shape.nbg, shape.bp);
                assert!(shape.bg.is_multiple_of(4) && shape.bg <= TILE);
                compile(&shape, "compute_90").unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }
}

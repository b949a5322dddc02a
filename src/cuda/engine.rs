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

/// Warps per block: the slices of a tile's reduction within one block.
const KW: usize = 8;
/// Units per tile: one per lane.
const TILE: usize = 32;
/// Floats of shared memory a block may stage (48 KiB, the static limit).
const STAGE_MAX: usize = 12 * 1024 - 64;
/// Largest batch on the GPU (blocks take it in groups of at most 32 columns).
pub const MAX_BATCH: usize = 1024;
/// Threads of a block of the resident kernel (src/cuda/resident.cu).
const RT_THREADS: usize = 256;
/// Blocks the resident plan aims at: one per SM of an H100 or H200.
const RT_BLOCKS: usize = 132;
/// Most units a resident tile holds (the kernel's register block is 16 x 4).
const RT_NU_MAX: usize = 16;

/// How the resident kernel splits a synchronous step: one tile per block, each
/// `units` units of one layer and every batch column, sized so that the tiles'
/// work (units x inputs) is about equal and they fit one block per SM.
#[derive(Clone, Debug, PartialEq)]
pub struct ResidentPlan {
    /// (layer, first unit, units, units rounded up to a multiple of 4) per block.
    pub tiles: Vec<(usize, usize, usize, usize)>,
    /// Floats of the largest tile's weights (inputs x padded row, see resident.cu).
    pub w_floats: usize,
    /// Floats of the staging buffer: the inputs' states, then the partial sums.
    pub stage_floats: usize,
}

impl ResidentPlan {
    /// None where the kernel does not apply: batches over 32 columns, or a
    /// net too wide for `blocks` tiles of at most 16 units.
    pub fn new(sizes: &[usize], bp: usize, blocks: usize) -> Option<ResidentPlan> {
        if bp > 32 {
            return None;
        }
        let l = sizes.len() - 1;
        let inputs = |k: usize| {
            (if k >= 2 { sizes[k - 1] } else { 0 }) + if k < l { sizes[k + 1] } else { 0 }
        };
        let total: usize = (1..=l).map(|k| sizes[k] * inputs(k)).sum();
        // Units per tile so that units x inputs is near the per-block share.
        let mut share = total as f64 / blocks as f64;
        for _ in 0..30 {
            let units = |k: usize| {
                let u = if inputs(k) == 0 {
                    RT_NU_MAX as f64
                } else {
                    share / inputs(k) as f64
                };
                (((u / 4.0).round() as usize) * 4).clamp(4, RT_NU_MAX)
            };
            let count: usize = (1..=l).map(|k| sizes[k].div_ceil(units(k))).sum();
            if count <= blocks {
                let mut tiles = Vec::new();
                for (k, &n) in sizes.iter().enumerate().skip(1) {
                    let u = units(k);
                    tiles.extend((0..n).step_by(u).map(|j| (k, j, u.min(n - j), u)));
                }
                // Weight rows padded as resident.cu's weight_stride.
                let stride = |nu: usize| if nu.is_multiple_of(8) { nu + 4 } else { nu };
                let w_floats = tiles.iter().map(|t| inputs(t.0) * stride(t.3)).max()?;
                let widest = (1..=l).map(inputs).max()?;
                let nu_max = tiles.iter().map(|t| t.3).max()?;
                let rq = RT_THREADS / (bp / 4);
                return Some(ResidentPlan {
                    tiles,
                    w_floats,
                    stage_floats: (widest * bp).max(rq * (nu_max + 1) * bp),
                });
            }
            share *= 1.25;
        }
        None
    }

    /// Dynamic shared memory of a block: weights, staging, offsets, own states.
    pub fn smem_bytes(&self, bp: usize) -> usize {
        4 * (self.w_floats + self.stage_floats + 2 * RT_NU_MAX * bp)
    }
}

/// Where everything lives, in floats, for a network shape and batch capacity.
#[derive(Clone, Debug)]
pub struct Shape {
    pub sizes: Vec<usize>,
    /// Batch columns of every state matrix (the batch, rounded up to 4).
    pub bp: usize,
    pub soff: Vec<usize>,
    pub state_len: usize,
    pub woff: Vec<usize>,
    pub wtoff: Vec<usize>,
    pub boff: Vec<usize>,
    pub param_len: usize,
    /// (layer, first unit) of each tile: odd layers first, then even layers,
    /// so that each half of an even/odd step is one contiguous tile range.
    pub tiles: Vec<(usize, usize)>,
    /// Tiles of odd layers (the first `odd_tiles` of `tiles`).
    pub odd_tiles: usize,
    /// Blocks per tile and batch group (the reduction split across blocks, to fill the GPU).
    pub kb: usize,
    /// Batch columns per block (a multiple of 4 dividing bp, at most 32: the
    /// step kernel keeps one accumulator per column in registers).
    pub bg: usize,
    /// Batch groups: bp / bg.
    pub nbg: usize,
    /// The resident kernel's tiling, where it applies.
    pub resident: Option<ResidentPlan>,
}

impl Shape {
    pub fn new(sizes: &[usize], batch: usize) -> Shape {
        let l = sizes.len() - 1;
        let bp = batch.div_ceil(4) * 4;
        let mut soff = vec![0; l + 1];
        let mut at = 0;
        for k in 1..=l {
            soff[k] = at;
            at += sizes[k] * bp;
        }
        let state_len = at;
        let (mut woff, mut wtoff, mut boff) = (vec![0; l], vec![0; l], vec![0; l + 1]);
        let mut p = 0;
        for k in 0..l {
            woff[k] = p;
            p += sizes[k] * sizes[k + 1];
            wtoff[k] = p;
            // W_0's transpose is never read (the input drive is a cuBLAS GEMM).
            if k > 0 {
                p += sizes[k] * sizes[k + 1];
            }
        }
        for k in 1..=l {
            boff[k] = p;
            p += sizes[k];
        }
        let mut tiles = Vec::new();
        for parity in [1, 0] {
            for k in (1..=l).filter(|k| k % 2 == parity) {
                tiles.extend((0..sizes[k]).step_by(TILE).map(|j| (k, j)));
            }
        }
        let odd_tiles = tiles.iter().filter(|t| t.0 % 2 == 1).count();
        // About two blocks per SM of an H100 (132 SMs) for the widest step,
        // and few enough rows per block that they fit the staging buffer.
        let widest = (1..=l)
            .map(|k| if k >= 2 { sizes[k - 1] } else { 0 } + if k < l { sizes[k + 1] } else { 0 })
            .max()
            .unwrap_or(0);
        let bg = (4..=TILE.min(bp))
            .step_by(4)
            .filter(|g| bp.is_multiple_of(*g))
            .max()
            .expect("bp is a multiple of 4");
        let nbg = bp / bg;
        let mut kb = (264 / (tiles.len() * nbg)).clamp(1, 8);
        while (widest.div_ceil(kb) + 1) * (bg + TILE) > STAGE_MAX {
            kb += 1;
        }
        Shape {
            sizes: sizes.to_vec(),
            bp,
            soff,
            state_len,
            woff,
            wtoff,
            boff,
            param_len: p,
            tiles,
            odd_tiles,
            kb,
            bg,
            nbg,
            resident: ResidentPlan::new(sizes, bp, RT_BLOCKS),
        }
    }

    pub fn depth(&self) -> usize {
        self.sizes.len() - 1
    }

    /// Floats of a block's shared buffer: its rows of states and weights, or
    /// the per-warp partial sums, whichever is larger.
    fn stage_floats(&self) -> usize {
        let l = self.depth();
        let rows = (1..=l)
            .map(|k| {
                let kd = if k >= 2 { self.sizes[k - 1] } else { 0 };
                let ku = if k < l { self.sizes[k + 1] } else { 0 };
                (kd + ku).div_ceil(self.kb) + 1
            })
            .max()
            .unwrap_or(0);
        (rows * (self.bg + TILE)).max(KW * self.bg * TILE)
    }

    /// The constants kernels.cu is compiled with.
    fn header(&self) -> String {
        let list = |v: &[usize]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let l = self.depth();
        // Pad 1-element arrays so that no array is empty.
        let woff = list(&self.woff);
        let layers: Vec<usize> = self.tiles.iter().map(|t| t.0).collect();
        let j0: Vec<usize> = self.tiles.iter().map(|t| t.1).collect();
        let resident = match &self.resident {
            None => "#define RT 0\n".to_string(),
            Some(r) => {
                let col = |f: fn(&(usize, usize, usize, usize)) -> usize| {
                    list(&r.tiles.iter().map(f).collect::<Vec<_>>())
                };
                format!(
                    "#define RT {t}\n#define RT_THREADS {RT_THREADS}\n\
                     #define RT_WFLOATS {w}\n#define RT_STAGE {st}\n\
                     __constant__ int RT_LAYER[{t}] = {{{k}}};\n\
                     __constant__ int RT_J0[{t}] = {{{j}}};\n\
                     __constant__ int RT_NU[{t}] = {{{nu}}};\n\
                     __constant__ int RT_NU4[{t}] = {{{nu4}}};\n",
                    t = r.tiles.len(),
                    w = r.w_floats,
                    st = r.stage_floats,
                    k = col(|t| t.0),
                    j = col(|t| t.1),
                    nu = col(|t| t.2),
                    nu4 = col(|t| t.3 / 4),
                )
            }
        };
        resident
            + &format!(
                "#define L {l}\n#define BP {bp}\n#define BG {bg}\n#define NBG {nbg}\n\
             #define KW {KW}\n#define KB {kb}\n\
             #define STATE_LEN {sl}\n#define TILES {t}\n#define ODD_TILES {odd}\n\
             #define STAGE {stage}\n\
             __constant__ int N[{n1}] = {{{n}}};\n\
             __constant__ int SOFF[{n1}] = {{{soff}}};\n\
             __constant__ int WOFF[{l}] = {{{woff}}};\n\
             __constant__ int WTOFF[{l}] = {{{wtoff}}};\n\
             __constant__ int BOFF[{n1}] = {{{boff}}};\n\
             __constant__ int TILE_LAYER[{t}] = {{{tl}}};\n\
             __constant__ int TILE_J0[{t}] = {{{tj}}};\n",
                bp = self.bp,
                bg = self.bg,
                nbg = self.nbg,
                kb = self.kb,
                sl = self.state_len,
                odd = self.odd_tiles,
                stage = self.stage_floats(),
                n1 = l + 1,
                n = list(&self.sizes),
                soff = list(&self.soff),
                wtoff = list(&self.wtoff),
                boff = list(&self.boff),
                t = self.tiles.len(),
                tl = list(&layers),
                tj = list(&j0),
            )
    }
}

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
        if self.persistent
            && self.use_resident
            && self.resident.is_some()
            && r.scheme == Relaxation::Synchronous
        {
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
        let st = &self.stream;
        let change = if track_last {
            let c = ptr(&self.change, st);
            // SAFETY: one u32.
            unsafe { drv::memset_d8_async(c, 0, 4, st.cu_stream()) }.map_err(err)?;
            c
        } else {
            0
        };
        let (a, b) = (self.set(start), self.set(start.other()));
        let (p, d0, t) = (
            ptr(&self.params, st),
            ptr(&self.drive0, st),
            ptr(&self.target, st),
        );
        let (fp, ip) = (ptr(&self.fparams, st), ptr(&self.iparams, st));
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
        l.arg(&a).arg(&b).arg(&p).arg(&d0).arg(&t).arg(&fp).arg(&ip);
        l.arg(&sign).arg(&eps).arg(&eo).arg(&n);
        l.arg(&part).arg(&cnt).arg(&change).arg(&bar);
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
        let st = &self.stream;
        let change = if r.track_last {
            let c = ptr(&self.change, st);
            // SAFETY: one u32.
            unsafe { drv::memset_d8_async(c, 0, 4, st.cu_stream()) }.map_err(err)?;
            c
        } else {
            0
        };
        let (a, b) = (self.set(start), self.set(start.other()));
        let (p, d0, t) = (
            ptr(&self.params, st),
            ptr(&self.drive0, st),
            ptr(&self.target, st),
        );
        let (fp, ip) = (ptr(&self.fparams, st), ptr(&self.iparams, st));
        let count = ptr(&self.rt_count, st);
        // SAFETY: one u32.
        unsafe { drv::memset_d8_async(count, 0, 4, st.cu_stream()) }.map_err(err)?;
        let (sign, eps, n) = (r.sign, r.eps, r.steps as i32);
        let mut l = st.launch_builder(func);
        l.arg(&a).arg(&b).arg(&p).arg(&d0).arg(&t).arg(&fp).arg(&ip);
        l.arg(&sign).arg(&eps).arg(&n).arg(&change).arg(&count);
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

    /// Every unit of every layer is in exactly one resident tile, the tiles fit
    /// one block per SM of an H100, and their work (units x inputs) is balanced.
    #[test]
    fn resident_plan_covers_every_unit_once() {
        for name in ["eqprop-mnist-1h", "eqprop-mnist-2h", "eqprop-mnist-3h"] {
            let sizes = crate::config::preset(name).unwrap().layers;
            let l = sizes.len() - 1;
            let shape = Shape::new(&sizes, 20);
            let plan = shape.resident.as_ref().expect("a plan at batch 20");
            assert!(
                plan.tiles.len() <= RT_BLOCKS,
                "{name}: {} tiles",
                plan.tiles.len()
            );
            let mut seen: Vec<Vec<u32>> = sizes.iter().map(|&n| vec![0; n]).collect();
            for &(k, j0, nu, nu4) in &plan.tiles {
                assert!(nu <= nu4 && nu4 <= RT_NU_MAX && nu4.is_multiple_of(4));
                seen[k][j0..j0 + nu].iter_mut().for_each(|c| *c += 1);
            }
            for (k, counts) in seen.iter().enumerate().skip(1) {
                assert!(counts.iter().all(|&c| c == 1), "{name}: layer {k}");
            }
            let inputs = |k: usize| {
                (if k >= 2 { sizes[k - 1] } else { 0 }) + if k < l { sizes[k + 1] } else { 0 }
            };
            let work: Vec<usize> = plan.tiles.iter().map(|t| t.3 * inputs(t.0)).collect();
            let total: usize = (1..=l).map(|k| sizes[k] * inputs(k)).sum();
            let largest = *work.iter().max().unwrap();
            // No block does more than 1.3x its share of 132 (1h's work is tiny and its
            // 16-unit floor leaves SMs idle; only the largest block sets the step time).
            if name != "eqprop-mnist-1h" {
                assert!(
                    largest as f64 <= 1.3 * total as f64 / RT_BLOCKS as f64,
                    "{name}: {work:?}"
                );
            }
            // An H100 gives a block up to 227 KiB of shared memory.
            assert!(plan.smem_bytes(shape.bp) <= 227 * 1024, "{name}");
        }
        // Batches over 32 columns use the tiled kernel.
        assert!(Shape::new(&[784, 500, 10], 64).resident.is_none());
    }

    #[test]
    fn layout_offsets_do_not_overlap() {
        let shape = Shape::new(&[784, 500, 500, 10], 20);
        assert_eq!(shape.bp, 20);
        assert_eq!(shape.soff, vec![0, 0, 500 * 20, 1000 * 20]);
        assert_eq!(shape.state_len, 1010 * 20);
        // W0, then W1 and W1^T, W2 and W2^T, then the biases.
        assert_eq!(shape.woff, vec![0, 392_000, 892_000]);
        assert_eq!(&shape.wtoff[1..], &[642_000, 897_000]);
        assert_eq!(shape.boff[1], 902_000);
        assert_eq!(shape.param_len, 902_000 + 1010);
        // Odd layers' tiles first: 16 tiles of layer 1, 1 of layer 3, then 16 of layer 2.
        assert_eq!(shape.odd_tiles, 17);
        assert_eq!(shape.tiles.len(), 33);
        assert_eq!(shape.tiles[16], (3, 0));
        assert_eq!(shape.tiles[17], (2, 0));
    }
}

//! Where EP's state lives on the GPU and how the kernels split the work: the
//! offsets of every state, weight and bias in device memory, the tiles of the
//! relaxation kernels, and the constants src/cuda/kernels.cu and resident.cu
//! are compiled with. Plain arithmetic, so it builds, and its tests run,
//! without the `cuda` feature (the engine that uses it needs CUDA).

/// Warps per block: the slices of a tile's reduction within one block.
pub const KW: usize = 8;
/// Units per tile: one per lane.
pub const TILE: usize = 32;
/// Floats of shared memory a block may stage (48 KiB, the static limit).
pub const STAGE_MAX: usize = 12 * 1024 - 64;
/// Largest batch on the GPU (blocks take it in groups of at most 32 columns).
pub const MAX_BATCH: usize = 1024;
/// Threads of a block of the resident kernel (src/cuda/resident.cu).
pub const RT_THREADS: usize = 256;
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
    pub fn stage_floats(&self) -> usize {
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
    pub fn header(&self) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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

//! EP's local learning rule: a contrast of two equilibria.
//!
//!   dW_k     = (alpha_k / beta) mean_batch[ rho(s_k^b)^T rho(s_{k+1}^b) - rho(s_k^0)^T rho(s_{k+1}^0) ]
//!   db_{k+1} = (alpha_k / beta) mean_batch[ rho(s_{k+1}^b) - rho(s_{k+1}^0) ]
//!
//! i.e. -(alpha_k / beta) d/dtheta [E(s^b) - E(s^0)]. The bias of layer k+1 shares
//! W_k's rate, as in the paper's code. For symmetric nudging the two equilibria
//! are s^{+beta} and s^{-beta} and the factor is 1 / (2 beta). Since x is the
//! same in both phases, the W_0 update is one GEMM: x^T (s_1^b - s_1^0).

use super::dynamics::{Block, Phase};
use super::network::Network;
use crate::tensor::{Op, ViewMut, gemm, kernels};
use rayon::prelude::*;

impl Block {
    /// Stores s_1(plus) - s_1(minus) in `drives[0]`, ready for the W_0 update.
    pub fn prepare_update(&mut self, plus: Phase, minus: Phase) {
        let len = self.rows * self.drives[0].cols;
        let pick = |phase| match phase {
            Phase::Free => &self.free[0],
            Phase::Nudged => &self.nudged[0],
            Phase::NudgedNeg => &self.nudged_neg[0],
        };
        let (p, m) = (pick(plus), pick(minus));
        kernels::sub(
            &mut self.drives[0].data[..len],
            &p.data[..len],
            &m.data[..len],
        );
    }
}

/// Applies the update from `plus` and `minus` states of every block.
/// `coef` is 1/beta (one-sided) or 1/(2 beta) (symmetric); `batch` is the
/// number of examples. Rows of each W_k are split into `parts` pieces that run
/// in parallel: each thread owns a contiguous slab of W_k.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    net: &mut Network,
    blocks: &[Block],
    plus: Phase,
    minus: Phase,
    coef: f32,
    rates: &[f32],
    batch: usize,
    parts: usize,
) {
    for k in 0..net.weights.len() {
        let scale = rates[k] * coef / batch as f32;
        let w = &mut net.weights[k];
        let cols = w.cols;
        let chunk_rows = w.rows.div_ceil(parts.max(1)).max(1);
        w.data
            .par_chunks_mut(chunk_rows * cols)
            .enumerate()
            .for_each(|(p, slab)| {
                let r0 = p * chunk_rows;
                let r1 = r0 + slab.len() / cols;
                for b in blocks.iter().filter(|b| b.rows > 0) {
                    let n = b.rows;
                    if k == 0 {
                        let x = b.x.rows_view(0, n).cols_view(r0, r1);
                        gemm(
                            slab_view(slab, cols),
                            true,
                            scale,
                            x,
                            Op::T,
                            b.drives[0].rows_view(0, n),
                            Op::N,
                        );
                    } else {
                        let (sp, sm) = (b.states(plus), b.states(minus));
                        let a = sp[k - 1].rows_view(0, n).cols_view(r0, r1);
                        gemm(
                            slab_view(slab, cols),
                            true,
                            scale,
                            a,
                            Op::T,
                            sp[k].rows_view(0, n),
                            Op::N,
                        );
                        let a = sm[k - 1].rows_view(0, n).cols_view(r0, r1);
                        gemm(
                            slab_view(slab, cols),
                            true,
                            -scale,
                            a,
                            Op::T,
                            sm[k].rows_view(0, n),
                            Op::N,
                        );
                    }
                }
            });
        let bias = &mut net.biases[k];
        for b in blocks.iter().filter(|b| b.rows > 0) {
            let len = b.rows * bias.len();
            let (sp, sm) = (&b.states(plus)[k], &b.states(minus)[k]);
            kernels::add_row_sum_diff(bias, &sp.data[..len], &sm.data[..len], scale);
        }
    }
}

fn slab_view(slab: &mut [f32], cols: usize) -> ViewMut<'_> {
    ViewMut {
        rows: slab.len() / cols,
        cols,
        stride: cols,
        data: slab,
    }
}

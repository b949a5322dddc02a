//! Relaxation: projected gradient descent on F = E + beta C, all layers at once.
//!
//! With states kept in [0, 1] (rho(s) = s, rho'(s) = 1 on the closed interval,
//! as the paper's code differentiates clip), one step of layer k is
//!   s_k <- clip((1 - eps) s_k + eps drive_k, 0, 1),
//!   drive_k = s_{k-1} W_{k-1} + s_{k+1} W_k^T + b_k  (+ beta (d - s_k) at the output).
//! Every drive is computed from the previous state before any layer moves
//! (synchronous updates, as in the paper). The input term x W_0 + b_1 is
//! constant while x is clamped, so it is computed once per batch.

use super::network::Network;
pub use crate::config::Relaxation;
use crate::tensor::{Matrix, Op, gemm, kernels};

/// Working memory for a block of examples (one thread's share of a batch).
/// Matrices have room for `cap` rows; the first `rows` are in use.
#[derive(Clone, Debug)]
pub struct Block {
    pub cap: usize,
    pub rows: usize,
    /// Clamped input, `cap x n_0`.
    pub x: Matrix,
    /// x W_0 + b_1, `cap x n_1`.
    pub input_drive: Matrix,
    /// One-hot targets, `cap x n_{L+1}` (a bandit: the reward at the chosen action).
    pub target: Matrix,
    /// Which output units the nudge acts on, `cap x n_{L+1}`: all ones
    /// (supervised), or one-hot at the chosen action (bandit).
    pub nudge_mask: Matrix,
    pub labels: Vec<u8>,
    /// Free-phase states: `free[k - 1]` is layer k.
    pub free: Vec<Matrix>,
    /// Nudged-phase states (beta as drawn).
    pub nudged: Vec<Matrix>,
    /// Second nudged phase (-beta) for symmetric nudging.
    pub nudged_neg: Vec<Matrix>,
    /// Scratch: the drives of one step; after a phase, `drives[0]` holds the
    /// difference of layer 1 between the two phases (for the W_0 update).
    pub drives: Vec<Matrix>,
    /// Per-block results of the last free phase.
    pub errors: usize,
    pub cost: f64,
    pub last_change: f32,
    /// How the states move, and when a phase may stop early: once the largest
    /// change of a step falls under `tolerance` (0: never, run every step).
    pub scheme: Relaxation,
    pub tolerance: f32,
    /// Steps the last free phase took.
    pub free_steps_taken: usize,
}

impl Block {
    pub fn new(sizes: &[usize], cap: usize) -> Self {
        let layers = || sizes[1..].iter().map(|&n| Matrix::zeros(cap, n)).collect();
        Block {
            cap,
            rows: 0,
            x: Matrix::zeros(cap, sizes[0]),
            input_drive: Matrix::zeros(cap, sizes[1]),
            target: Matrix::zeros(cap, *sizes.last().unwrap()),
            nudge_mask: Matrix::from_vec(
                cap,
                *sizes.last().unwrap(),
                vec![1.0; cap * sizes.last().unwrap()],
            ),
            labels: vec![0; cap],
            free: layers(),
            nudged: layers(),
            nudged_neg: layers(),
            drives: layers(),
            errors: 0,
            cost: 0.0,
            last_change: 0.0,
            scheme: Relaxation::Synchronous,
            tolerance: 0.0,
            free_steps_taken: 0,
        }
    }

    /// Sets x W_0 + b_1 for the rows in use (once per batch: x is clamped).
    pub fn compute_input_drive(&mut self, net: &Network) {
        let r = self.rows;
        let n1 = net.sizes[1];
        let out = self.input_drive.view_mut().split_rows(r).0;
        gemm(
            out,
            false,
            1.0,
            self.x.rows_view(0, r),
            Op::N,
            net.weights[0].view(),
            Op::N,
        );
        kernels::add_bias_rows(&mut self.input_drive.data[..r * n1], &net.biases[0]);
    }

    /// Counts errors and the cost of the free-phase output for the rows in use.
    pub fn score_free(&mut self) {
        let out = self.free.last().unwrap();
        let n = out.cols;
        self.errors = 0;
        self.cost = 0.0;
        for i in 0..self.rows {
            let row = &out.data[i * n..(i + 1) * n];
            if kernels::argmax(row) != self.labels[i] as usize {
                self.errors += 1;
            }
            self.cost += Network::cost(row, &self.target.data[i * n..(i + 1) * n]);
        }
    }
}

/// Which set of states a phase works on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Free,
    Nudged,
    NudgedNeg,
}

impl Block {
    pub fn states(&self, phase: Phase) -> &[Matrix] {
        match phase {
            Phase::Free => &self.free,
            Phase::Nudged => &self.nudged,
            Phase::NudgedNeg => &self.nudged_neg,
        }
    }

    /// Copies the free states into `phase`'s (the nudged phase starts at s^0).
    pub fn start_from_free(&mut self, phase: Phase) {
        self.copy_states(Phase::Free, phase);
    }

    /// Copies the states of phase `from` into those of phase `to`.
    pub fn copy_states(&mut self, from: Phase, to: Phase) {
        if from == to {
            return;
        }
        let rows = self.rows;
        let (src, dst) = match (from, to) {
            (Phase::Free, Phase::Nudged) => (&self.free, &mut self.nudged),
            (Phase::Free, Phase::NudgedNeg) => (&self.free, &mut self.nudged_neg),
            (Phase::Nudged, Phase::Free) => (&self.nudged, &mut self.free),
            (Phase::Nudged, Phase::NudgedNeg) => (&self.nudged, &mut self.nudged_neg),
            (Phase::NudgedNeg, Phase::Free) => (&self.nudged_neg, &mut self.free),
            (Phase::NudgedNeg, Phase::Nudged) => (&self.nudged_neg, &mut self.nudged),
            _ => unreachable!("from != to"),
        };
        for (d, s) in dst.iter_mut().zip(src) {
            let len = rows * s.cols;
            d.data[..len].copy_from_slice(&s.data[..len]);
        }
    }

    /// Runs `steps` synchronous steps on `phase`'s states with nudging `beta`
    /// (0 for the free phase). Returns the largest state change of the last step.
    pub fn relax(&mut self, net: &Network, phase: Phase, steps: usize, eps: f32, beta: f32) -> f32 {
        let states = match phase {
            Phase::Free => &mut self.free,
            Phase::Nudged => &mut self.nudged,
            Phase::NudgedNeg => &mut self.nudged_neg,
        };
        let nudge = (beta != 0.0).then_some((beta, &self.target, &self.nudge_mask));
        let mut change = 0.0;
        // Only the free phase stops early; the nudged phase keeps its fixed length.
        let tolerance = if phase == Phase::Free {
            self.tolerance
        } else {
            0.0
        };
        let mut taken = steps;
        for t in 0..steps {
            change = match self.scheme {
                Relaxation::Synchronous => step(
                    net,
                    &self.input_drive,
                    states,
                    &mut self.drives,
                    self.rows,
                    eps,
                    nudge,
                ),
                Relaxation::EvenOdd => step_even_odd(
                    net,
                    &self.input_drive,
                    states,
                    &mut self.drives,
                    self.rows,
                    nudge,
                ),
            };
            if change < tolerance {
                taken = t + 1;
                break;
            }
        }
        if phase == Phase::Free {
            self.free_steps_taken = taken;
        }
        self.last_change = change;
        change
    }
}

/// Sets `drive` to layer i's input from its neighbours' current states:
/// s_{k-1} W_{k-1} (for k > 1; layer 1's input term is precomputed) + s_{k+1} W_k^T.
fn layer_drive(net: &Network, states: &[Matrix], drive: &mut Matrix, i: usize, rows: usize) {
    let depth = states.len();
    let mut accumulate = false;
    if i + 1 < depth {
        // s_{k+1} W_k^T, with W_k = weights[i + 1].
        let out = drive.view_mut().split_rows(rows).0;
        let up = states[i + 1].rows_view(0, rows);
        gemm(out, false, 1.0, up, Op::N, net.weights[i + 1].view(), Op::T);
        accumulate = true;
    }
    if i > 0 {
        let out = drive.view_mut().split_rows(rows).0;
        let down = states[i - 1].rows_view(0, rows);
        gemm(
            out,
            accumulate,
            1.0,
            down,
            Op::N,
            net.weights[i].view(),
            Op::N,
        );
        accumulate = true;
    }
    if !accumulate {
        drive.data[..rows * drive.cols].fill(0.0);
    }
}

/// Moves layer i given its drive: `s <- clip((1 - eps) s + eps (drive + offset [+ nudge]))`.
#[allow(clippy::too_many_arguments)]
fn move_layer(
    net: &Network,
    input_drive: &Matrix,
    states: &mut [Matrix],
    drive: &Matrix,
    i: usize,
    rows: usize,
    eps: f32,
    nudge: Option<(f32, &Matrix, &Matrix)>,
) -> f32 {
    let depth = states.len();
    let n = states[i].cols;
    let len = rows * n;
    // Layer 1 gets the precomputed x W_0 + b_1 per row; others their bias.
    let (offset, stride) = if i == 0 {
        (&input_drive.data[..len], n)
    } else {
        (&net.biases[i][..], 0)
    };
    let nudge = if i + 1 == depth {
        nudge.map(|(b, t, m)| (b, &t.data[..len], &m.data[..len]))
    } else {
        None
    };
    kernels::relax_layer(
        &mut states[i].data[..len],
        &drive.data[..len],
        offset,
        stride,
        n,
        eps,
        nudge,
    )
}

/// One synchronous step of every layer for the first `rows` rows (the paper):
/// all drives from the old states, then every layer moves by `eps`.
/// `states[k - 1]` is layer k. Returns max |s_new - s_old|.
pub fn step(
    net: &Network,
    input_drive: &Matrix,
    states: &mut [Matrix],
    drives: &mut [Matrix],
    rows: usize,
    eps: f32,
    nudge: Option<(f32, &Matrix, &Matrix)>,
) -> f32 {
    let depth = states.len();
    for (i, drive) in drives.iter_mut().enumerate().take(depth) {
        layer_drive(net, states, drive, i, rows);
    }
    let mut change = 0.0f32;
    for (i, drive) in drives.iter().enumerate().take(depth) {
        change = change.max(move_layer(
            net,
            input_drive,
            states,
            drive,
            i,
            rows,
            eps,
            nudge,
        ));
    }
    change
}

/// One asynchronous step (Scellier et al. 2023): first layers 1, 3, 5, ...,
/// then 2, 4, ..., each set to the minimiser of F given its neighbours. Layers
/// of one parity do not interact, so each half-step is an exact block
/// minimisation and F never rises. The minimiser is clip(drive + offset) for a
/// hidden layer and clip((drive + offset + beta d) / (1 + beta)) for a nudged
/// output, which is the fused step with eps = 1 / (1 + beta) (needs 1 + beta > 0).
pub fn step_even_odd(
    net: &Network,
    input_drive: &Matrix,
    states: &mut [Matrix],
    drives: &mut [Matrix],
    rows: usize,
    nudge: Option<(f32, &Matrix, &Matrix)>,
) -> f32 {
    let depth = states.len();
    let mut change = 0.0f32;
    for parity in [0, 1] {
        for i in (parity..depth).step_by(2) {
            layer_drive(net, states, &mut drives[i], i, rows);
            let eps = match nudge {
                // (A partial mask would need eps per unit: config refuses bandit + even/odd.)
                Some((beta, _, _)) if i + 1 == depth => 1.0 / (1.0 + beta),
                _ => 1.0,
            };
            change = change.max(move_layer(
                net,
                input_drive,
                states,
                &drives[i],
                i,
                rows,
                eps,
                nudge,
            ));
        }
    }
    change
}

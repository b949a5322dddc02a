//! Inference by neural dynamics: the E-step (DESIGN §7, the paper's INFERENCE).
//!
//! Starting from the feed-forward code, each hidden layer k, top first, moves
//!   h_k <- h_k + delta (f_k(h_{k-1}) - f_k(g_k(h_k)))      to explain the layer below
//!             + alpha (g_{k+1}(h_{k+1}) - h_k)             to agree with the layer above
//!             [+ noise]
//! The first term is the target-propagation estimate of d log p(h_{k-1} | h_k) / dh_k
//! (exact when f_k inverts g_k); the second is d log p(h_k | h_{k+1}) / dh_k with unit
//! variances. Together they climb log p(x, h); `log_joint` measures it.

use super::Model;
use crate::tensor::Matrix;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// The settings of one run of INFERENCE.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dynamics {
    /// Iterations N.
    pub steps: usize,
    /// delta: step along the target-propagation estimate.
    pub rate: f32,
    /// alpha: pull toward the prediction from the layer above.
    pub top_down: f32,
    /// Std of Gaussian noise added to each hidden update (0: deterministic).
    pub noise: f32,
}

/// Working memory of inference for up to `cap` rows.
pub struct Scratch {
    /// `ff[k-1]` = f_k(h_{k-1}).
    ff: Vec<Matrix>,
    /// `rec[k-1]` = g_k(h_k), shaped like h_{k-1}.
    pub rec: Vec<Matrix>,
    /// `frec[k-1]` = f_k(g_k(h_k)).
    frec: Vec<Matrix>,
}

impl Scratch {
    pub fn new(sizes: &[usize], cap: usize) -> Self {
        let mats = |s: &[usize]| s.iter().map(|&n| Matrix::zeros(cap, n)).collect();
        Scratch {
            ff: mats(&sizes[1..]),
            rec: mats(&sizes[..sizes.len() - 1]),
            frec: mats(&sizes[1..]),
        }
    }
}

/// The states of every layer for images `x`: x itself, then its feed-forward codes.
pub fn encode(model: &Model, x: &Matrix) -> Vec<Matrix> {
    let mut h: Vec<Matrix> = model
        .sizes
        .iter()
        .map(|&n| Matrix::zeros(x.rows, n))
        .collect();
    h[0].data.copy_from_slice(&x.data);
    feed_forward(model, &mut h);
    h
}

/// h_k = f_k(h_{k-1}) for every hidden layer, from `h[0]`.
pub fn feed_forward(model: &Model, h: &mut [Matrix]) {
    for k in 1..h.len() {
        let (below, above) = h.split_at_mut(k);
        model.enc[k - 1].forward(below[k - 1].view(), &mut above[0]);
    }
}

/// Runs `d.steps` iterations of INFERENCE on the states `h` (h[0] = x is
/// clamped; the hidden layers start where they are). With `trace`, pushes the
/// mean log p(x, h) before the first and after every iteration.
pub fn infer(
    model: &Model,
    h: &mut [Matrix],
    d: &Dynamics,
    s: &mut Scratch,
    mut rng: Option<&mut ChaCha8Rng>,
    mut trace: Option<&mut Vec<f64>>,
) {
    let top = model.depth();
    let rows = h[0].rows;
    if let Some(t) = trace.as_deref_mut() {
        t.push(log_joint(model, h, s));
    }
    if d.steps > 0 {
        model.enc[0].forward(h[0].view(), &mut s.ff[0]);
    }
    for _ in 0..d.steps {
        for k in (1..=top).rev() {
            if k > 1 {
                model.enc[k - 1].forward(h[k - 1].view(), &mut s.ff[k - 1]);
            }
            model.dec[k - 1].forward(h[k].view(), &mut s.rec[k - 1]);
            model.enc[k - 1].forward(s.rec[k - 1].view(), &mut s.frec[k - 1]);
            // The layer above has already moved this iteration (top first).
            let alpha = if k < top {
                model.dec[k].forward(h[k + 1].view(), &mut s.rec[k]);
                d.top_down
            } else {
                0.0
            };
            let act = model.activation(k);
            let (ff, frec) = (&s.ff[k - 1].data, &s.frec[k - 1].data);
            let above = if k < top { &s.rec[k].data[..] } else { &[][..] };
            let hk = &mut h[k].data[..rows * model.sizes[k]];
            for (i, v) in hk.iter_mut().enumerate() {
                let mut dv = d.rate * (ff[i] - frec[i]);
                if alpha != 0.0 {
                    dv += alpha * (above[i] - *v);
                }
                if d.noise > 0.0
                    && let Some(r) = rng.as_deref_mut()
                {
                    dv += d.noise * r.sample::<f32, _>(StandardNormal);
                }
                *v = act.clamp(*v + dv);
            }
        }
        if let Some(t) = trace.as_deref_mut() {
            t.push(log_joint(model, h, s));
        }
    }
}

/// Mean over the rows of log p(x, h) = sum_k log N(h_{k-1}; g_k(h_k), I)
/// + log p(h_L) (the fitted top prior; left out before one is fitted).
pub fn log_joint(model: &Model, h: &[Matrix], s: &mut Scratch) -> f64 {
    log_joint_terms(model, h, s).iter().sum()
}

/// The terms of [`log_joint`], each a mean over the rows: log p(h_{k-1} | h_k)
/// for k = 1..L, then log p(h_L) (0 before a prior is fitted).
pub fn log_joint_terms(model: &Model, h: &[Matrix], s: &mut Scratch) -> Vec<f64> {
    let rows = h[0].rows;
    let half_log_2pi = 0.5 * (2.0 * std::f64::consts::PI).ln();
    let mut terms = Vec::with_capacity(h.len());
    for k in 1..h.len() {
        model.dec[k - 1].forward(h[k].view(), &mut s.rec[k - 1]);
        let n = model.sizes[k - 1];
        let sq: f64 = h[k - 1].data[..rows * n]
            .iter()
            .zip(&s.rec[k - 1].data)
            .map(|(&a, &b)| ((a - b) as f64).powi(2))
            .sum();
        terms.push((-0.5 * sq - (rows * n) as f64 * half_log_2pi) / rows.max(1) as f64);
    }
    let mut prior = 0.0;
    if model.has_prior() {
        let top = &h[h.len() - 1];
        for row in top.data.chunks_exact(top.cols).take(rows) {
            prior += model.log_prior(row, 1.0);
        }
    }
    terms.push(prior / rows.max(1) as f64);
    terms
}

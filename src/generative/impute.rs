//! Imputation of missing pixels by the model's own dynamics (the paper's Fig. 5).
//!
//! The observed pixels stay clamped; the missing ones start at the training
//! set's mean pixel and, in each of T encode/decode steps, INFERENCE runs on
//! the current image and the missing pixels take g_1(h_1)'s values. Baselines:
//! the mean fill itself, and one feed-forward pass up through every encoder
//! and back down through every decoder.

use super::Model;
use super::inference::{self, Dynamics, Scratch};
use crate::error::{Error, Result};
use crate::tensor::Matrix;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

/// Which pixels are missing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mask {
    BottomHalf,
    LeftHalf,
    /// Each pixel missing independently with this probability.
    Random(f32),
}

impl std::str::FromStr for Mask {
    type Err = Error;
    fn from_str(s: &str) -> Result<Mask> {
        match s {
            "bottom-half" => Ok(Mask::BottomHalf),
            "left-half" => Ok(Mask::LeftHalf),
            "random-50" => Ok(Mask::Random(0.5)),
            "random-80" => Ok(Mask::Random(0.8)),
            other => Err(Error::Config(format!(
                "unknown mask `{other}`; use bottom-half, left-half, random-50 or random-80"
            ))),
        }
    }
}

impl std::fmt::Display for Mask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mask::BottomHalf => write!(f, "bottom-half"),
            Mask::LeftHalf => write!(f, "left-half"),
            Mask::Random(p) => write!(f, "random-{}", (p * 100.0).round()),
        }
    }
}

/// 1 where a pixel is observed, 0 where missing, one row per image of
/// `side x side` pixels (random masks drawn from `rng`).
pub fn observed(mask: Mask, rows: usize, side: usize, rng: &mut ChaCha8Rng) -> Matrix {
    let mut m = Matrix::zeros(rows, side * side);
    for row in m.data.chunks_exact_mut(side * side) {
        for (p, v) in row.iter_mut().enumerate() {
            let (y, x) = (p / side, p % side);
            let seen = match mask {
                Mask::BottomHalf => y < side / 2,
                Mask::LeftHalf => x >= side / 2,
                Mask::Random(missing) => rng.random::<f32>() >= missing,
            };
            *v = seen as u8 as f32;
        }
    }
    m
}

/// Mean squared error over the missing pixels only.
pub fn missing_error(truth: &Matrix, filled: &Matrix, seen: &Matrix) -> f64 {
    let (mut sum, mut count) = (0.0f64, 0usize);
    for ((&t, &f), &s) in truth.data.iter().zip(&filled.data).zip(&seen.data) {
        if s == 0.0 {
            sum += ((t - f) as f64).powi(2);
            count += 1;
        }
    }
    sum / count.max(1) as f64
}

/// Observed pixels from `truth`, missing ones from `fill` (a row, or a matrix
/// like `truth`).
pub fn merge(truth: &Matrix, seen: &Matrix, fill: &[f32]) -> Matrix {
    let n = truth.cols;
    let data = truth
        .data
        .iter()
        .zip(&seen.data)
        .enumerate()
        .map(|(i, (&t, &s))| {
            if s > 0.0 {
                t
            } else {
                fill[if fill.len() == n { i % n } else { i }]
            }
        })
        .collect();
    Matrix::from_vec(truth.rows, n, data)
}

/// The feed-forward baseline: up through every encoder, down through every decoder.
pub fn feed_forward_fill(model: &Model, x: &Matrix) -> Matrix {
    let mut h = inference::encode(model, x);
    for k in (1..=model.depth()).rev() {
        let (below, above) = h.split_at_mut(k);
        model.dec[k - 1].forward(above[0].view(), &mut below[k - 1]);
    }
    h.swap_remove(0)
}

/// Runs `steps` encode/decode steps of imputation on `start` (observed
/// pixels already in place); returns the image after each step. With noise in
/// `d` (and `rng`), INFERENCE samples like a Markov chain, as the paper proposes.
pub fn impute(
    model: &Model,
    start: &Matrix,
    seen: &Matrix,
    d: &Dynamics,
    steps: usize,
    mut rng: Option<&mut ChaCha8Rng>,
) -> Vec<Matrix> {
    let rows = start.rows;
    let mut h: Vec<Matrix> = model
        .sizes
        .iter()
        .map(|&n| Matrix::zeros(rows, n))
        .collect();
    let mut scratch = Scratch::new(&model.sizes, rows);
    let mut x = start.clone();
    let mut out = Vec::with_capacity(steps);
    for _ in 0..steps {
        h[0].data.copy_from_slice(&x.data);
        inference::feed_forward(model, &mut h);
        inference::infer(model, &mut h, d, &mut scratch, rng.as_deref_mut(), None);
        model.dec[0].forward(h[1].view(), &mut scratch.rec[0]);
        for ((v, &g), &s) in x.data.iter_mut().zip(&scratch.rec[0].data).zip(&seen.data) {
            if s == 0.0 {
                *v = g;
            }
        }
        out.push(x.clone());
    }
    out
}

/// The running means of a chain's images: entry t is the mean of steps 1..=t,
/// a Monte Carlo estimate of the posterior mean of the missing pixels (the
/// squared-error-optimal fill) once the chain mixes.
pub fn running_mean(trail: &[Matrix]) -> Vec<Matrix> {
    let mut out: Vec<Matrix> = Vec::with_capacity(trail.len());
    for (t, x) in trail.iter().enumerate() {
        let mut m = x.clone();
        if let Some(prev) = out.last() {
            let w = 1.0 / (t + 1) as f32;
            for (v, &p) in m.data.iter_mut().zip(&prev.data) {
                *v = p + w * (*v - p);
            }
        }
        out.push(m);
    }
    out
}

//! Sampling: ancestral from the top prior, then the paper's noisy refinement.
//!
//! Ancestral: h_L ~ N(mean, scale var) (the paper: scale 4), h_{k-1} = g_k(h_k).
//! Refinement, from the generative view of denoising auto-encoders (a DAE's
//! corrupt-then-reconstruct step is a Markov chain whose stationary
//! distribution estimates the data's): repeat { x <- corrupt(x); INFERENCE(x)
//! with a strong top-down pull (alpha = 0.3); x <- g_1(h_1) }. The paper runs
//! it 3 times without the explicit corruption; `corruption` adds it.

use super::inference::{self, Dynamics, Scratch};
use super::{Model, corrupt_gaussian};
use crate::tensor::Matrix;
use faer::Mat;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// Rows processed at a time (bounds the working memory).
const CHUNK: usize = 500;

/// The top prior that ancestral sampling draws h_L from.
#[derive(Clone, Debug, PartialEq)]
pub enum Prior {
    /// The paper's: the checkpoint's diagonal Gaussian (the codes' mean and variance).
    Diagonal,
    /// Ours: a full-covariance Gaussian of the inferred top codes of training
    /// images, keeping the correlations between top units that a diagonal
    /// prior throws away. `chol` is the n x n lower Cholesky factor, row-major.
    Full { mean: Vec<f32>, chol: Vec<f32> },
    /// Ours: a mixture of full-covariance Gaussians (each a `Full`) fitted to
    /// the same codes by EM, for codes that cluster (by digit, say).
    Mixture {
        weights: Vec<f64>,
        components: Vec<Prior>,
    },
}

/// Which prior a sampler uses (the full one is fitted when needed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriorKind {
    Diagonal,
    /// The paper's diagonal Gaussian, fitted after training (see [`fit_diagonal_prior`]).
    DiagonalFit,
    Full,
    /// A mixture of this many full-covariance Gaussians.
    Mixture(usize),
}

/// The top codes that `d` infers for `images`, one row each.
pub fn inferred_codes(model: &Model, images: &Matrix, d: &Dynamics) -> Matrix {
    let top = model.depth();
    let n = model.sizes[top];
    let mut codes = Matrix::zeros(images.rows, n);
    let mut h: Vec<Matrix> = model
        .sizes
        .iter()
        .map(|&m| Matrix::zeros(CHUNK, m))
        .collect();
    let mut scratch = Scratch::new(&model.sizes, CHUNK);
    for r0 in (0..images.rows).step_by(CHUNK) {
        let rows = CHUNK.min(images.rows - r0);
        h[0].set_rows(rows);
        h[0].data
            .copy_from_slice(&images.data[r0 * images.cols..(r0 + rows) * images.cols]);
        inference::feed_forward(model, &mut h);
        inference::infer(model, &mut h, d, &mut scratch, None, None);
        codes.data[r0 * n..(r0 + rows) * n].copy_from_slice(&h[top].data[..rows * n]);
    }
    codes
}

/// The lower Cholesky factor of cov + ridge I.
fn cholesky(cov: &Mat<f64>, ridge: f64) -> Mat<f64> {
    let n = cov.nrows();
    let a = Mat::<f64>::from_fn(n, n, |i, j| cov[(i, j)] + if i == j { ridge } else { 0.0 });
    let llt = a
        .llt(faer::Side::Lower)
        .expect("a covariance plus a ridge is positive definite");
    llt.L().to_owned()
}

/// The Gaussian N(mean, cov + ridge I) as a [`Prior::Full`].
fn gaussian(mean: &[f64], cov: &Mat<f64>, ridge: f64) -> Prior {
    let n = mean.len();
    let l = cholesky(cov, ridge);
    Prior::Full {
        mean: mean.iter().map(|&m| m as f32).collect(),
        chol: (0..n * n)
            .map(|p| {
                if p % n <= p / n {
                    l[(p / n, p % n)] as f32
                } else {
                    0.0
                }
            })
            .collect(),
    }
}

/// Fits [`Prior::Full`] to top codes (one row each; see [`inferred_codes`]).
pub fn fit_full_prior(codes: &Matrix) -> Prior {
    let (mean, cov) = super::evaluate::moments(codes);
    // A small ridge keeps the factor defined when a unit never moves.
    gaussian(&mean, &cov, 1e-6)
}

/// The paper's prior as it describes it, "set after training": a diagonal
/// Gaussian of the top codes inferred with the final model. The checkpoint's
/// own diagonal prior (`Prior::Diagonal`) is summed over the last epoch's
/// codes while the model still learns, which drifts from this where training
/// moves the codes fast.
pub fn fit_diagonal_prior(codes: &Matrix) -> Prior {
    let (mean, cov) = super::evaluate::moments(codes);
    let n = mean.len();
    let diagonal = Mat::<f64>::from_fn(n, n, |i, j| if i == j { cov[(i, i)] } else { 0.0 });
    gaussian(&mean, &diagonal, 1e-6)
}

/// EM for a mixture of `components` full-covariance Gaussians on the rows of `codes`.
pub fn fit_mixture(
    codes: &Matrix,
    components: usize,
    iterations: usize,
    rng: &mut ChaCha8Rng,
) -> Prior {
    let (n, dim) = (codes.rows, codes.cols);
    let x = Mat::<f64>::from_fn(n, dim, |i, j| codes.data[i * dim + j] as f64);
    let (_, cov) = super::evaluate::moments(codes);
    let ridge = 1e-3 * (0..dim).map(|j| cov[(j, j)]).sum::<f64>() / dim as f64;
    let mut means: Vec<Vec<f64>> = (0..components)
        .map(|_| {
            let r = rng.random_range(0..n);
            (0..dim).map(|j| x[(r, j)]).collect()
        })
        .collect();
    let mut covs = vec![cov.clone(); components];
    let mut weights = vec![1.0 / components as f64; components];
    // resp[(i, c)]: the posterior of component c for code i.
    let mut resp = Mat::<f64>::zeros(n, components);
    for _ in 0..iterations {
        // E-step: log w_c + log N(x_i; mu_c, Sigma_c), normalised over c.
        for c in 0..components {
            let l = cholesky(&covs[c], ridge);
            let log_det: f64 = (0..dim).map(|j| l[(j, j)].ln()).sum();
            let mut z = Mat::<f64>::from_fn(dim, n, |j, i| x[(i, j)] - means[c][j]);
            faer::linalg::triangular_solve::solve_lower_triangular_in_place(
                l.as_ref(),
                z.as_mut(),
                faer::Par::Seq,
            );
            for i in 0..n {
                let q: f64 = (0..dim).map(|j| z[(j, i)] * z[(j, i)]).sum();
                resp[(i, c)] = weights[c].ln() - log_det - 0.5 * q;
            }
        }
        for i in 0..n {
            let top = (0..components)
                .map(|c| resp[(i, c)])
                .fold(f64::MIN, f64::max);
            let total: f64 = (0..components).map(|c| (resp[(i, c)] - top).exp()).sum();
            for c in 0..components {
                resp[(i, c)] = (resp[(i, c)] - top).exp() / total;
            }
        }
        // M-step: weighted weights, means and covariances.
        for c in 0..components {
            let mass: f64 = (0..n).map(|i| resp[(i, c)]).sum::<f64>().max(1e-12);
            weights[c] = mass / n as f64;
            means[c] = (0..dim)
                .map(|j| (0..n).map(|i| resp[(i, c)] * x[(i, j)]).sum::<f64>() / mass)
                .collect();
            let centred = Mat::<f64>::from_fn(n, dim, |i, j| {
                (x[(i, j)] - means[c][j]) * resp[(i, c)].sqrt()
            });
            covs[c] = centred.transpose() * &centred * faer::Scale(1.0 / mass);
        }
    }
    Prior::Mixture {
        weights,
        components: (0..components)
            .map(|c| gaussian(&means[c], &covs[c], ridge))
            .collect(),
    }
}

/// How samples are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampler {
    /// Diagonal (the paper's) or full-covariance top prior.
    pub prior: PriorKind,
    /// The prior's variance is the codes' variance times this (the paper: 4).
    pub prior_scale: f32,
    /// Refinement rounds after the ancestral pass (the paper: 3).
    pub rounds: usize,
    /// INFERENCE of each round (the paper: N = 15, delta = 0.1, alpha = 0.3).
    pub dynamics: Dynamics,
    /// Gaussian corruption of x before each round, relative to x's RMS (0: none).
    pub corruption: f32,
}

impl Sampler {
    /// The paper's generation settings.
    pub fn paper() -> Self {
        Sampler {
            prior: PriorKind::Diagonal,
            prior_scale: 4.0,
            rounds: 3,
            dynamics: Dynamics {
                steps: 15,
                rate: 0.1,
                top_down: 0.3,
                noise: 0.0,
            },
            corruption: 0.0,
        }
    }
}

/// `count` ancestral samples (one row each, pixels in [0, 1]); the prior's
/// covariance is scaled by `prior_scale`.
pub fn ancestral(
    model: &Model,
    prior: &Prior,
    count: usize,
    prior_scale: f32,
    rng: &mut ChaCha8Rng,
) -> Matrix {
    let top = model.depth();
    let n_top = model.sizes[top];
    let mut x = Matrix::zeros(count, model.sizes[0]);
    let mut h: Vec<Matrix> = model.sizes.iter().map(|&n| Matrix::zeros(0, n)).collect();
    let act = model.activation(top);
    let mut z = vec![0.0f32; n_top];
    let root = prior_scale.sqrt();
    for r0 in (0..count).step_by(CHUNK) {
        let rows = CHUNK.min(count - r0);
        h[top].set_rows(rows);
        for row in h[top].data.chunks_exact_mut(n_top) {
            z.iter_mut().for_each(|v| *v = rng.sample(StandardNormal));
            let prior = match prior {
                Prior::Mixture {
                    weights,
                    components,
                } => {
                    let mut u = rng.random::<f64>();
                    let mut pick = components.len() - 1;
                    for (c, &w) in weights.iter().enumerate() {
                        if u < w {
                            pick = c;
                            break;
                        }
                        u -= w;
                    }
                    &components[pick]
                }
                other => other,
            };
            match prior {
                Prior::Diagonal => {
                    for (j, v) in row.iter_mut().enumerate() {
                        let std = model.prior_var[j].sqrt();
                        *v = act.clamp(model.prior_mean[j] + root * std * z[j]);
                    }
                }
                Prior::Full { mean, chol } => {
                    for (j, v) in row.iter_mut().enumerate() {
                        let lz: f32 = (0..=j).map(|i| chol[j * n_top + i] * z[i]).sum();
                        *v = act.clamp(mean[j] + root * lz);
                    }
                }
                Prior::Mixture { .. } => unreachable!("a component is a Gaussian"),
            }
        }
        for k in (1..=top).rev() {
            let (below, above) = h.split_at_mut(k);
            model.dec[k - 1].forward(above[0].view(), &mut below[k - 1]);
        }
        let n = model.sizes[0];
        x.data[r0 * n..(r0 + rows) * n].copy_from_slice(&h[0].data[..rows * n]);
    }
    x
}

/// Runs the refinement chain on the samples `x` in place. With `frames`, also
/// records `x` after every round (for a picture of the chain).
pub fn refine(
    model: &Model,
    x: &mut Matrix,
    s: &Sampler,
    rng: &mut ChaCha8Rng,
    mut frames: Option<&mut Vec<Matrix>>,
) {
    let n = model.sizes[0];
    let mut h: Vec<Matrix> = model
        .sizes
        .iter()
        .map(|&m| Matrix::zeros(CHUNK, m))
        .collect();
    let mut scratch = Scratch::new(&model.sizes, CHUNK);
    let mut clean = Matrix::zeros(CHUNK, n);
    for _ in 0..s.rounds {
        for r0 in (0..x.rows).step_by(CHUNK) {
            let rows = CHUNK.min(x.rows - r0);
            clean.set_rows(rows);
            clean.data.copy_from_slice(&x.data[r0 * n..(r0 + rows) * n]);
            if s.corruption > 0.0 {
                corrupt_gaussian(&clean, &mut h[0], s.corruption, rng);
                for v in h[0].data.iter_mut() {
                    *v = v.clamp(0.0, 1.0);
                }
            } else {
                h[0].set_rows(rows);
                h[0].data.copy_from_slice(&clean.data);
            }
            inference::feed_forward(model, &mut h);
            inference::infer(model, &mut h, &s.dynamics, &mut scratch, Some(rng), None);
            let (x_layer, hidden) = h.split_at_mut(1);
            model.dec[0].forward(hidden[0].view(), &mut x_layer[0]);
            x.data[r0 * n..(r0 + rows) * n].copy_from_slice(&h[0].data[..rows * n]);
        }
        if let Some(f) = frames.as_deref_mut() {
            f.push(x.clone());
        }
    }
}

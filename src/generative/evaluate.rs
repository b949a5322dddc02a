//! How good are the samples: the paper's Parzen-window log-likelihood, and
//! beside it (Parzen estimates mislead, Theis et al. 2016) a Frechet distance
//! on the features of plasticity's own MNIST classifier and a check that
//! samples are not copies of training images.

use crate::tensor::{Matrix, Op, par_gemm};
use faer::{Mat, Side};

/// Rows of the evaluated set handled at a time.
const CHUNK: usize = 250;

/// `out[i][j] = |a_i - b_j|^2` for rows `r0..r0 + out.rows` of `a`.
fn sq_distances(a: &Matrix, r0: usize, b: &Matrix, b_norms: &[f32], out: &mut Matrix) {
    let rows = out.rows;
    let a_part = a.rows_view(r0, r0 + rows);
    par_gemm(out, false, -2.0, a_part, Op::N, b.view(), Op::T);
    for i in 0..rows {
        let ai: f32 = a.row(r0 + i).iter().map(|v| v * v).sum();
        for (d, &bj) in out.row_mut(i).iter_mut().zip(b_norms) {
            // Rounding can leave a tiny negative for near-identical rows.
            *d = (*d + ai + bj).max(0.0);
        }
    }
}

fn row_norms(m: &Matrix) -> Vec<f32> {
    (0..m.rows)
        .map(|i| m.row(i).iter().map(|v| v * v).sum())
        .collect()
}

/// A Parzen estimate: mean log p(x) in nats over the evaluated images, and its
/// standard error.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Parzen {
    pub sigma: f32,
    pub mean: f64,
    pub stderr: f64,
}

/// Mean and standard error of [`parzen_per_image`] for every sigma in `sigmas`.
pub fn parzen(samples: &Matrix, data: &Matrix, sigmas: &[f32]) -> Vec<Parzen> {
    sigmas
        .iter()
        .zip(parzen_per_image(samples, data, sigmas))
        .map(|(&sigma, v)| Parzen::of(sigma, &v))
        .collect()
}

impl Parzen {
    /// The estimate from the per-image log-likelihoods at window `sigma`.
    pub fn of(sigma: f32, per_image: &[f64]) -> Self {
        let (mean, stderr) = mean_stderr(per_image);
        Parzen {
            sigma,
            mean,
            stderr,
        }
    }
}

/// The estimate at the window of [`sigma_grid`] that scores best on `data`
/// (the paper's choice of sigma, made on validation images).
pub fn best_parzen(samples: &Matrix, data: &Matrix) -> Parzen {
    parzen(samples, data, &sigma_grid())
        .into_iter()
        .max_by(|a, b| a.mean.total_cmp(&b.mean))
        .expect("a sigma")
}

/// log p(x) under a Gaussian Parzen window of width sigma centred on each
/// sample, for every image of `data` (inner) and every sigma in `sigmas` (outer):
///   log p(x) = logsumexp_i(-|x - s_i|^2 / (2 sigma^2)) - ln n - d/2 ln(2 pi sigma^2).
pub fn parzen_per_image(samples: &Matrix, data: &Matrix, sigmas: &[f32]) -> Vec<Vec<f64>> {
    let d = data.cols as f64;
    let n = samples.rows as f64;
    let norms = row_norms(samples);
    let mut dist = Matrix::zeros(CHUNK, samples.rows);
    let mut per_image = vec![Vec::with_capacity(data.rows); sigmas.len()];
    for r0 in (0..data.rows).step_by(CHUNK) {
        dist.set_rows(CHUNK.min(data.rows - r0));
        sq_distances(data, r0, samples, &norms, &mut dist);
        for i in 0..dist.rows {
            let row = dist.row(i);
            let nearest = row.iter().copied().fold(f32::INFINITY, f32::min) as f64;
            for (s, &sigma) in sigmas.iter().enumerate() {
                let two_var = 2.0 * (sigma as f64).powi(2);
                let sum: f64 = row
                    .iter()
                    .map(|&q| (-(q as f64 - nearest) / two_var).exp())
                    .sum();
                let lse = -nearest / two_var + sum.ln();
                per_image[s]
                    .push(lse - n.ln() - 0.5 * d * (std::f64::consts::TAU * two_var / 2.0).ln());
            }
        }
    }
    per_image
}

/// Mean and standard error of the mean.
pub fn mean_stderr(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, (var / n).sqrt())
}

/// The sigmas searched on validation: 0.05 to 0.5, about 20 per decade.
pub fn sigma_grid() -> Vec<f32> {
    (0..=20)
        .map(|i| 0.05 * 10f32.powf(i as f32 / 20.0))
        .collect()
}

/// Mean and covariance (unbiased) of the rows of `f`, in f64.
pub fn moments(f: &Matrix) -> (Vec<f64>, Mat<f64>) {
    let (n, d) = (f.rows, f.cols);
    let mut mean = vec![0.0; d];
    for row in f.data.chunks_exact(d) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let centred = Mat::<f64>::from_fn(n, d, |i, j| f.data[i * d + j] as f64 - mean[j]);
    let cov = centred.transpose() * &centred * faer::Scale(1.0 / (n as f64 - 1.0).max(1.0));
    (mean, cov)
}

/// Frechet distance between Gaussians N(m1, c1) and N(m2, c2):
/// |m1 - m2|^2 + tr(c1) + tr(c2) - 2 tr((c1^1/2 c2 c1^1/2)^1/2).
pub fn frechet(m1: &[f64], c1: &Mat<f64>, m2: &[f64], c2: &Mat<f64>) -> f64 {
    let d = m1.len();
    let mean_term: f64 = m1.iter().zip(m2).map(|(a, b)| (a - b).powi(2)).sum();
    let evd = c1
        .self_adjoint_eigen(Side::Lower)
        .expect("covariance eigendecomposition");
    let (u, s) = (evd.U(), evd.S().column_vector());
    // c1^1/2 = U S^1/2 U^T, as (U S^1/4)(U S^1/4)^T.
    let half = Mat::<f64>::from_fn(d, d, |i, k| u[(i, k)] * s[k].max(0.0).sqrt().sqrt());
    let root = &half * half.transpose();
    let inner = &root * c2 * &root;
    let inner = Mat::<f64>::from_fn(d, d, |i, j| 0.5 * (inner[(i, j)] + inner[(j, i)]));
    let cross: f64 = inner
        .self_adjoint_eigenvalues(Side::Lower)
        .expect("eigenvalues")
        .iter()
        .map(|l| l.max(0.0).sqrt())
        .sum();
    let trace = |c: &Mat<f64>| (0..d).map(|i| c[(i, i)]).sum::<f64>();
    mean_term + trace(c1) + trace(c2) - 2.0 * cross
}

/// For each row of `a`: the squared distance to its nearest row of `b`, and that row.
pub fn nearest(a: &Matrix, b: &Matrix) -> Vec<(f32, usize)> {
    let norms = row_norms(b);
    let mut dist = Matrix::zeros(CHUNK, b.rows);
    let mut out = Vec::with_capacity(a.rows);
    for r0 in (0..a.rows).step_by(CHUNK) {
        dist.set_rows(CHUNK.min(a.rows - r0));
        sq_distances(a, r0, b, &norms, &mut dist);
        for i in 0..dist.rows {
            let (j, d) = dist
                .row(i)
                .iter()
                .enumerate()
                .fold(
                    (0, f32::INFINITY),
                    |acc, (j, &d)| if d < acc.1 { (j, d) } else { acc },
                );
            out.push((d, j));
        }
    }
    out
}

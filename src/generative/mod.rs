//! The generative model of "Towards Biologically Plausible Deep Learning"
//! (Bengio, Lee, Bornschein, Mesnard & Lin, arXiv 1502.04156, sections 6 and 8;
//! DESIGN §7).
//!
//!   layers h_0 = x, h_1, ..., h_L; for each layer pair k = 1..L
//!     encoder f_k(h_{k-1}) = act_k(h_{k-1} W_k + b_k)       (recognition)
//!     decoder g_k(h_k)     = act_{k-1}(h_k V_k + c_k)       (generation)
//!   act: sigmoid for the pixels and the top layer, softplus in between.
//!   p(h_{k-1} | h_k) = N(g_k(h_k), I);  p(h_L) = N(mean, var), diagonal, the
//!   codes' statistics over each training epoch (the paper ignores the prior in
//!   training and sets it afterwards).
//!
//! Learning is variational-EM-like: `inference` moves the hidden states to
//! raise log p(x, h) (E-step), then each layer pair learns at those states as
//! a denoising auto-encoder with a loss of its own (M-step). No gradient ever
//! goes from one pair into another.

pub mod commands;
pub mod evaluate;
pub mod impute;
pub mod inference;
pub mod map;
pub mod sample;

use crate::config::{Config, GenerativeSettings, PairTraining};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::tensor::Matrix;
use crate::train::{Learner, NamedTensor, NamedTensorMut, Stats};
use inference::{Dynamics, Scratch};
use map::{Activation, Adam, Map, MapGrad};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// The maps and the top prior.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub sizes: Vec<usize>,
    /// `enc[k-1]` is f_k: h_{k-1} -> h_k.
    pub enc: Vec<Map>,
    /// `dec[k-1]` is g_k: h_k -> h_{k-1}.
    pub dec: Vec<Map>,
    /// Diagonal Gaussian prior of the top layer (all-zero variance: not fitted yet).
    pub prior_mean: Vec<f32>,
    pub prior_var: Vec<f32>,
}

impl Model {
    /// Glorot-initialised maps from a seed.
    pub fn seeded(sizes: &[usize], seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let top = sizes.len() - 1;
        let act = |l: usize| {
            if l == 0 || l == top {
                Activation::Sigmoid
            } else {
                Activation::Softplus
            }
        };
        let mut enc = Vec::new();
        let mut dec = Vec::new();
        for k in 1..=top {
            enc.push(Map::glorot(sizes[k - 1], sizes[k], act(k), &mut rng));
            dec.push(Map::glorot(sizes[k], sizes[k - 1], act(k - 1), &mut rng));
        }
        Model {
            sizes: sizes.to_vec(),
            enc,
            dec,
            prior_mean: vec![0.0; sizes[top]],
            prior_var: vec![0.0; sizes[top]],
        }
    }

    /// Number of hidden layers L.
    pub fn depth(&self) -> usize {
        self.sizes.len() - 1
    }

    /// The units of layer `l` (0 = pixels).
    pub fn activation(&self, l: usize) -> Activation {
        if l == 0 {
            self.dec[0].act
        } else {
            self.enc[l - 1].act
        }
    }

    pub fn has_prior(&self) -> bool {
        self.prior_var.iter().all(|&v| v > 0.0)
    }

    /// log N(code; mean, scale * var) of one top code.
    pub fn log_prior(&self, code: &[f32], scale: f32) -> f64 {
        let log_2pi = (2.0 * std::f64::consts::PI).ln();
        code.iter()
            .zip(self.prior_mean.iter().zip(&self.prior_var))
            .map(|(&h, (&m, &v))| {
                let var = (scale * v) as f64;
                -0.5 * (((h - m) as f64).powi(2) / var + var.ln() + log_2pi)
            })
            .sum()
    }

    fn named(&self) -> Vec<(String, &Map)> {
        let mut out = Vec::new();
        for k in 1..=self.depth() {
            out.push((format!("f{k}"), &self.enc[k - 1]));
            out.push((format!("g{k}"), &self.dec[k - 1]));
        }
        out
    }

    pub fn parameters(&self) -> Vec<NamedTensor<'_>> {
        let mut out = Vec::new();
        for (name, m) in self.named() {
            push_affine(&mut out, &name, &m.w, &m.b);
        }
        let n = self.prior_mean.len();
        out.push(NamedTensor::new(
            "prior.mean".into(),
            vec![n],
            &self.prior_mean,
        ));
        out.push(NamedTensor::new(
            "prior.var".into(),
            vec![n],
            &self.prior_var,
        ));
        out
    }

    pub fn parameters_mut(&mut self) -> Vec<NamedTensorMut<'_>> {
        let mut out = Vec::new();
        for (k, (e, d)) in self.enc.iter_mut().zip(self.dec.iter_mut()).enumerate() {
            push_affine_mut(&mut out, &format!("f{}", k + 1), &mut e.w, &mut e.b);
            push_affine_mut(&mut out, &format!("g{}", k + 1), &mut d.w, &mut d.b);
        }
        let n = self.prior_mean.len();
        out.push(NamedTensorMut::new(
            "prior.mean".into(),
            vec![n],
            &mut self.prior_mean,
        ));
        out.push(NamedTensorMut::new(
            "prior.var".into(),
            vec![n],
            &mut self.prior_var,
        ));
        out
    }

    /// The model saved in run directory `dir`'s checkpoint, with the run's config.
    pub fn load_run(dir: &std::path::Path) -> Result<(Config, Model)> {
        let cfg = crate::train::read_run_config(dir)?;
        if cfg.algorithm != crate::config::Algorithm::Generative {
            return Err(Error::Config(format!(
                "{} holds a {:?} run, not a generative model; train one with \
                 `plasticity train --preset generative-mnist-2h`",
                dir.display(),
                cfg.algorithm
            )));
        }
        let mut model = Model::seeded(&cfg.layers, cfg.seed);
        let path = dir.join(crate::train::CHECKPOINT_FILE);
        crate::train::checkpoint::Loaded::read(&path)?.restore(model.parameters_mut())?;
        Ok((cfg, model))
    }

    /// The INFERENCE of training, from a config.
    pub fn dynamics(settings: &GenerativeSettings) -> Dynamics {
        Dynamics {
            steps: settings.inference_steps,
            rate: settings.inference_rate,
            top_down: settings.top_down,
            noise: 0.0,
        }
    }
}

/// Seed of the per-epoch Parzen's samples (any fixed value).
const EPOCH_PARZEN_SEED: u64 = 0x5eed;

/// Names an affine map's weight and bias (or their gradients or moments)
/// `{name}.weight` and `{name}.bias`, for checkpoints.
fn push_affine<'a>(out: &mut Vec<NamedTensor<'a>>, name: &str, w: &'a Matrix, b: &'a [f32]) {
    out.push(NamedTensor::new(
        format!("{name}.weight"),
        vec![w.rows, w.cols],
        &w.data,
    ));
    out.push(NamedTensor::new(format!("{name}.bias"), vec![b.len()], b));
}

fn push_affine_mut<'a>(
    out: &mut Vec<NamedTensorMut<'a>>,
    name: &str,
    w: &'a mut Matrix,
    b: &'a mut [f32],
) {
    let shape = vec![w.rows, w.cols];
    out.push(NamedTensorMut::new(
        format!("{name}.weight"),
        shape,
        &mut w.data,
    ));
    out.push(NamedTensorMut::new(
        format!("{name}.bias"),
        vec![b.len()],
        b,
    ));
}

/// `out = u + noise`, Gaussian with std `level` times u's root mean square
/// over the rows in use: relative, so a larger code does not shrink the noise.
pub fn corrupt_gaussian(u: &Matrix, out: &mut Matrix, level: f32, rng: &mut ChaCha8Rng) {
    assert_eq!(out.cols, u.cols, "corruption shapes");
    out.set_rows(u.rows);
    let n = u.rows * u.cols;
    let rms = (u.data[..n].iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n.max(1) as f64)
        .sqrt() as f32;
    let std = level * rms;
    for (o, &v) in out.data.iter_mut().zip(&u.data[..n]) {
        *o = v + std * rng.sample::<f32, _>(StandardNormal);
    }
}

/// `out` = the mean of `samples` Bernoulli(u) draws per unit: "spike-like"
/// noise for a sigmoid code.
pub fn corrupt_spikes(u: &Matrix, out: &mut Matrix, samples: usize, rng: &mut ChaCha8Rng) {
    assert_eq!(out.cols, u.cols, "corruption shapes");
    out.set_rows(u.rows);
    let n = u.rows * u.cols;
    for (o, &p) in out.data.iter_mut().zip(&u.data[..n]) {
        let fired = (0..samples).filter(|_| rng.random::<f32>() < p).count();
        *o = fired as f32 / samples as f32;
    }
}

/// Added to each unit's variance across the batch before standardising, so
/// that a unit that does not move has correlation 0 instead of 0/0.
pub const CORRELATION_EPS: f64 = 1e-4;

/// Correlations of codes `c` (rows = examples) across the batch:
/// z_ni = (c_ni - mu_i) / sigma_i with sigma_i^2 = var_i + eps (f64), and
/// rho_ij = 1/B sum_n z_ni z_nj for i != j, 0 on the diagonal. The buffers are
/// kept between calls, so the top pair's M-step allocates nothing per batch.
#[derive(Default)]
pub struct Correlation {
    /// rho_ij, row-major n x n.
    pub rho: Vec<f64>,
    /// z_ni, row-major B x n.
    pub z: Vec<f64>,
    /// sigma_i.
    pub sigma: Vec<f64>,
    mu: Vec<f64>,
}

impl Correlation {
    /// Computes the correlations of `c`'s rows into the buffers.
    pub fn compute(&mut self, c: &Matrix) {
        let (b, n) = (c.rows, c.cols);
        let inv_b = 1.0 / b as f64;
        let rows = || c.data.chunks_exact(n).take(b);
        self.mu.clear();
        self.mu.resize(n, 0.0);
        for row in rows() {
            for (m, &v) in self.mu.iter_mut().zip(row) {
                *m += v as f64 * inv_b;
            }
        }
        // The variances, then their square roots in place.
        self.sigma.clear();
        self.sigma.resize(n, CORRELATION_EPS);
        for row in rows() {
            for ((s, &v), m) in self.sigma.iter_mut().zip(row).zip(&self.mu) {
                *s += (v as f64 - m).powi(2) * inv_b;
            }
        }
        self.sigma.iter_mut().for_each(|s| *s = s.sqrt());
        let (mu, sigma) = (&self.mu, &self.sigma);
        self.z.clear();
        self.z.extend(
            c.data[..b * n]
                .iter()
                .enumerate()
                .map(|(e, &v)| (v as f64 - mu[e % n]) / sigma[e % n]),
        );
        self.rho.clear();
        self.rho.resize(n * n, 0.0);
        for row in self.z.chunks_exact(n) {
            for i in 0..n {
                for j in (0..n).filter(|&j| j != i) {
                    self.rho[i * n + j] += row[i] * row[j] * inv_b;
                }
            }
        }
    }
}

/// Root mean square of the off-diagonal correlations of codes `c` across
/// examples: 0 for independent units, which the diagonal prior assumes.
pub fn rms_correlation(c: &Matrix) -> f64 {
    let n = c.cols;
    let mut corr = Correlation::default();
    corr.compute(c);
    let sum: f64 = corr.rho.iter().map(|r| r * r).sum();
    (sum / (n * n.saturating_sub(1)).max(1) as f64).sqrt()
}

/// The gradient of the decorrelation penalty R = lambda/2 sum_{i != j} rho_ij^2
/// with respect to each code:
///   dR/dc_ni = 2 lambda / (B sigma_i) sum_{j != i} rho_ij (z_nj - rho_ij z_ni).
/// Correlations, not covariances: a penalty on covariances is met by shrinking
/// every unit's spread (measured: the top code's spread fell from 0.35 to 0.22
/// in one epoch), this one only by making units independent. The term is
/// lateral (each top unit sees the others' activity, as in anti-Hebbian
/// decorrelation, Foldiak 1990) and reaches only the top encoder.
fn decorrelation_gradient(c: &Matrix, lambda: f32, corr: &mut Correlation, out: &mut Matrix) {
    let (b, n) = (c.rows, c.cols);
    corr.compute(c);
    let (rho, z, sigma) = (&corr.rho, &corr.z, &corr.sigma);
    out.set_rows(b);
    let scale = 2.0 * lambda as f64 / b as f64;
    for (o_row, z_row) in out.data.chunks_exact_mut(n).zip(z.chunks_exact(n)) {
        for i in 0..n {
            let s: f64 = (0..n)
                .map(|j| rho[i * n + j] * (z_row[j] - rho[i * n + j] * z_row[i]))
                .sum();
            o_row[i] = (scale * s / sigma[i]) as f32;
        }
    }
}

/// Working memory of one layer pair's M-step.
struct PairWork {
    noisy_in: Matrix,
    code: Matrix,
    noisy_code: Matrix,
    rec: Matrix,
    d_rec: Matrix,
    d_code: Matrix,
    enc_grad: MapGrad,
    dec_grad: MapGrad,
    /// The top pair's decorrelation term: clean codes f(u), their
    /// correlations, their gradient, and its share of the encoder's gradient.
    clean_code: Matrix,
    correlation: Correlation,
    d_clean: Matrix,
    decor_grad: MapGrad,
}

/// Working memory for `cap` rows: states, inference scratch, M-step buffers.
struct Work {
    cap: usize,
    h: Vec<Matrix>,
    scratch: Scratch,
    pairs: Vec<PairWork>,
}

impl Work {
    fn new(model: &Model, cap: usize) -> Self {
        let s = &model.sizes;
        Work {
            cap,
            h: s.iter().map(|&n| Matrix::zeros(cap, n)).collect(),
            scratch: Scratch::new(s, cap),
            pairs: (1..s.len())
                .map(|k| PairWork {
                    noisy_in: Matrix::zeros(cap, s[k - 1]),
                    code: Matrix::zeros(cap, s[k]),
                    noisy_code: Matrix::zeros(cap, s[k]),
                    rec: Matrix::zeros(cap, s[k - 1]),
                    d_rec: Matrix::zeros(cap, s[k - 1]),
                    d_code: Matrix::zeros(cap, s[k]),
                    enc_grad: model.enc[k - 1].zero_grad(),
                    dec_grad: model.dec[k - 1].zero_grad(),
                    clean_code: Matrix::zeros(cap, s[k]),
                    correlation: Correlation::default(),
                    d_clean: Matrix::zeros(cap, s[k]),
                    decor_grad: model.enc[k - 1].zero_grad(),
                })
                .collect(),
        }
    }

    /// Loads images `idx` of `data` as x and sets every layer's row count.
    fn load(&mut self, data: &Dataset, idx: impl ExactSizeIterator<Item = usize>) {
        let rows = idx.len();
        for m in self.h.iter_mut() {
            m.set_rows(rows);
        }
        for (i, e) in idx.enumerate() {
            self.h[0].row_mut(i).copy_from_slice(data.images.row(e));
        }
    }
}

/// Pixel errors (|x_hat - x| > 1/2) and the summed 1/2 |x_hat - x|^2 of a batch.
pub fn reconstruction_stats(x: &Matrix, x_hat: &Matrix) -> Stats {
    let n = x.rows * x.cols;
    let mut errors = 0;
    let mut cost = 0.0f64;
    for (&a, &b) in x.data[..n].iter().zip(&x_hat.data[..n]) {
        let d = (a - b) as f64;
        errors += (d.abs() > 0.5) as usize;
        cost += 0.5 * d * d;
    }
    Stats {
        examples: x.rows,
        errors,
        cost,
        trials: n,
    }
}

/// The generative model as a [`Learner`].
pub struct Generative {
    pub model: Model,
    settings: GenerativeSettings,
    rates: Vec<f32>,
    /// Multiplies every Adam rate (the config's `final_rate_scale` schedule).
    rate_scale: f32,
    /// Adam moments, encoder and decoder per pair, and the step count.
    adam: Vec<(Adam, Adam)>,
    steps: Vec<f32>,
    train: Work,
    eval: Work,
    /// Sum and sum of squares of the top codes seen this epoch (the prior).
    top_sums: (Vec<f64>, Vec<f64>, usize),
}

impl Generative {
    pub fn new(cfg: &Config) -> Self {
        Self::from_model(Model::seeded(&cfg.layers, cfg.seed), cfg)
    }

    pub fn from_model(model: Model, cfg: &Config) -> Self {
        let n_top = *model.sizes.last().unwrap();
        Generative {
            adam: model
                .enc
                .iter()
                .zip(&model.dec)
                .map(|(e, d)| (Adam::new(e), Adam::new(d)))
                .collect(),
            steps: vec![0.0],
            train: Work::new(&model, cfg.batch_size),
            eval: Work::new(&model, cfg.eval_block),
            settings: cfg.generative(),
            rates: cfg.learning_rates.clone(),
            rate_scale: 1.0,
            top_sums: (vec![0.0; n_top], vec![0.0; n_top], 0),
            model,
        }
    }

    /// The M-step of pair k (1-based) at the inferred states: its gradients, then Adam.
    fn learn_pair(&mut self, k: usize, rng: &mut ChaCha8Rng) {
        self.pair_gradients(k, rng);
        let p = &self.train.pairs[k - 1];
        let t = self.steps[0];
        let lr = self.rates[k - 1] * self.rate_scale;
        let (ae, ad) = &mut self.adam[k - 1];
        ae.step(&mut self.model.enc[k - 1], &p.enc_grad, lr, t);
        ad.step(&mut self.model.dec[k - 1], &p.dec_grad, lr, t);
    }

    /// Sets pair k's encoder and decoder gradients (batch means) at the states
    /// in the training work memory.
    fn pair_gradients(&mut self, k: usize, rng: &mut ChaCha8Rng) {
        let top = self.model.depth();
        let w = &mut self.train;
        let p = &mut w.pairs[k - 1];
        let (u, v) = (&w.h[k - 1], &w.h[k]);
        let rows = u.rows as f32;
        let (enc, dec) = (&self.model.enc[k - 1], &self.model.dec[k - 1]);
        corrupt_gaussian(u, &mut p.noisy_in, self.settings.corruption[k - 1], rng);
        let spikes = self.settings.spike_samples;
        let corrupt_code = |c: &Matrix, out: &mut Matrix, rng: &mut ChaCha8Rng| {
            if k == top && spikes > 0 {
                corrupt_spikes(c, out, spikes, rng);
            } else {
                out.set_rows(c.rows);
                out.data.copy_from_slice(&c.data);
            }
        };
        let residual = |out: &mut Matrix, a: &Matrix, b: &Matrix| {
            out.set_rows(a.rows);
            for ((o, &a), &b) in out.data.iter_mut().zip(&a.data).zip(&b.data) {
                *o = (a - b) / rows;
            }
        };
        // Dae: L = 1/2 |g(corrupt(f(corrupt(u)))) - u|^2, its gradient through g
        // into f (the code noise passes it straight through: additive given the
        // code). Local: the decoder fits g(corrupt(v)) to u, the encoder
        // f(corrupt(u)) to v, each loss its own.
        let dae = self.settings.pair_training == PairTraining::Dae;
        enc.forward(p.noisy_in.view(), &mut p.code);
        corrupt_code(if dae { &p.code } else { v }, &mut p.noisy_code, rng);
        dec.forward(p.noisy_code.view(), &mut p.rec);
        residual(&mut p.d_rec, &p.rec, u);
        let d_code = dae.then_some(&mut p.d_code);
        dec.backward(
            p.noisy_code.view(),
            &p.rec,
            &mut p.d_rec,
            &mut p.dec_grad,
            d_code,
        );
        if !dae {
            residual(&mut p.d_code, &p.code, v);
        }
        enc.backward(
            p.noisy_in.view(),
            &p.code,
            &mut p.d_code,
            &mut p.enc_grad,
            None,
        );
        let lambda = self.settings.top_decorrelation;
        if k == top && lambda > 0.0 {
            enc.forward(u.view(), &mut p.clean_code);
            decorrelation_gradient(&p.clean_code, lambda, &mut p.correlation, &mut p.d_clean);
            enc.backward(
                u.view(),
                &p.clean_code,
                &mut p.d_clean,
                &mut p.decor_grad,
                None,
            );
            let (g, d) = (&mut p.enc_grad, &p.decor_grad);
            for (a, &b) in
                g.w.data
                    .iter_mut()
                    .chain(g.b.iter_mut())
                    .zip(d.w.data.iter().chain(&d.b))
            {
                *a += b;
            }
        }
    }

    /// The validation Parzen log-likelihood (nats, best sigma of the grid) of
    /// `epoch_parzen_samples` samples from the paper's sampler, for picking an
    /// epoch: the sampler's quality peaks mid-training while reconstruction
    /// keeps improving. Fewer samples than `plasticity parzen`'s 10,000, so it
    /// reads tens of nats lower (35-55 measured) and ranks epochs rather than
    /// scores them. A fixed seed draws the same prior noise every
    /// epoch, so epochs differ by the model alone.
    fn epoch_parzen(&self, val: &Dataset) -> Option<f64> {
        let count = self.settings.epoch_parzen_samples;
        if count == 0 || val.is_empty() {
            return None;
        }
        let s = sample::Sampler::paper();
        let mut rng = ChaCha8Rng::seed_from_u64(EPOCH_PARZEN_SEED);
        let prior = sample::Prior::Diagonal;
        let mut x = sample::ancestral(&self.model, &prior, count, s.prior_scale, &mut rng);
        sample::refine(&self.model, &mut x, &s, &mut rng, None);
        Some(evaluate::best_parzen(&x, &val.images).mean)
    }

    /// Mean and spread (the mean over units of the std across examples) of
    /// each hidden layer in `h`: codes that grow without bound, or a top layer
    /// that is the same for every digit, show here first.
    fn layer_statistics(h: &[Matrix], out: &mut Vec<(String, f64)>) {
        for (k, layer) in h.iter().enumerate().skip(1) {
            let (rows, n) = (layer.rows, layer.cols);
            let mut mean = vec![0.0f64; n];
            let mut sq = vec![0.0f64; n];
            for row in layer.data.chunks_exact(n).take(rows) {
                for j in 0..n {
                    mean[j] += row[j] as f64;
                    sq[j] += (row[j] as f64).powi(2);
                }
            }
            let r = rows.max(1) as f64;
            let spread = (0..n)
                .map(|j| (sq[j] / r - (mean[j] / r).powi(2)).max(0.0).sqrt())
                .sum::<f64>()
                / n as f64;
            out.push((
                format!("h{k}_mean"),
                mean.iter().sum::<f64>() / (r * n as f64),
            ));
            out.push((format!("h{k}_spread"), spread));
        }
    }
}

impl Learner for Generative {
    fn set_rate_scale(&mut self, scale: f32) {
        self.rate_scale = scale;
    }

    fn train_batch(&mut self, data: &Dataset, indices: &[usize], rng: &mut ChaCha8Rng) -> Stats {
        let d = Model::dynamics(&self.settings);
        let w = &mut self.train;
        w.load(data, indices.iter().copied());
        inference::feed_forward(&self.model, &mut w.h);
        inference::infer(&self.model, &mut w.h, &d, &mut w.scratch, None, None);
        // Scored before learning, as EP scores its free phase.
        self.model.dec[0].forward(w.h[1].view(), &mut w.scratch.rec[0]);
        let stats = reconstruction_stats(&w.h[0], &w.scratch.rec[0]);
        let top = &w.h[self.model.depth()];
        for row in top.data.chunks_exact(top.cols) {
            for (j, &v) in row.iter().enumerate() {
                self.top_sums.0[j] += v as f64;
                self.top_sums.1[j] += (v as f64).powi(2);
            }
        }
        self.top_sums.2 += top.rows;
        self.steps[0] += 1.0;
        for k in 1..=self.model.depth() {
            self.learn_pair(k, rng);
        }
        stats
    }

    fn evaluate(&mut self, data: &Dataset) -> Stats {
        let d = Model::dynamics(&self.settings);
        let cap = self.eval.cap;
        let mut total = Stats::default();
        for r0 in (0..data.len()).step_by(cap.max(1)) {
            let w = &mut self.eval;
            w.load(data, r0..(r0 + cap).min(data.len()));
            inference::feed_forward(&self.model, &mut w.h);
            inference::infer(&self.model, &mut w.h, &d, &mut w.scratch, None, None);
            self.model.dec[0].forward(w.h[1].view(), &mut w.scratch.rec[0]);
            total += reconstruction_stats(&w.h[0], &w.scratch.rec[0]);
        }
        total
    }

    fn start_epoch(&mut self, _epoch: usize) {
        let n = self.top_sums.0.len();
        self.top_sums = (vec![0.0; n], vec![0.0; n], 0);
    }

    /// Fits the top prior to this epoch's codes, then measures log p(x, h)
    /// before and after inference and each layer's scale on validation images.
    fn end_epoch(&mut self, val: &Dataset) -> Vec<(String, f64)> {
        let (sum, sq, count) = &self.top_sums;
        if *count > 1 {
            let c = *count as f64;
            for j in 0..sum.len() {
                let mean = sum[j] / c;
                self.model.prior_mean[j] = mean as f32;
                // A floor keeps the density finite for a unit that never moves.
                self.model.prior_var[j] = ((sq[j] / c - mean * mean).max(0.0) as f32).max(1e-6);
            }
        }
        let d = Model::dynamics(&self.settings);
        let w = &mut self.eval;
        let cap = w.cap;
        w.load(val, 0..cap.min(val.len()));
        inference::feed_forward(&self.model, &mut w.h);
        let mut out = Vec::new();
        let mut record = |when: &str, terms: Vec<f64>| {
            out.push((format!("log_p_{when}"), terms.iter().sum()));
            let top = terms.len() - 1;
            for (k, t) in terms.iter().enumerate() {
                let name = match k {
                    _ if k == top => format!("log_p_{when}_prior"),
                    0 => format!("log_p_{when}_x"),
                    _ => format!("log_p_{when}_h{k}"),
                };
                out.push((name, *t));
            }
        };
        record(
            "feed_forward",
            inference::log_joint_terms(&self.model, &w.h, &mut w.scratch),
        );
        inference::infer(&self.model, &mut w.h, &d, &mut w.scratch, None, None);
        record(
            "inferred",
            inference::log_joint_terms(&self.model, &w.h, &mut w.scratch),
        );
        Self::layer_statistics(&w.h, &mut out);
        let top = self.model.depth();
        out.push((format!("h{top}_correlation"), rms_correlation(&w.h[top])));
        if let Some(score) = self.epoch_parzen(val) {
            out.push(("parzen_val".into(), score));
        }
        out
    }

    fn parameters(&self) -> Vec<NamedTensor<'_>> {
        self.model.parameters()
    }

    fn parameters_mut(&mut self) -> Vec<NamedTensorMut<'_>> {
        self.model.parameters_mut()
    }

    fn run_state(&self) -> Vec<NamedTensor<'_>> {
        let mut out = vec![NamedTensor::new("adam.step".into(), vec![1], &self.steps)];
        for (k, (e, d)) in self.adam.iter().enumerate() {
            for (name, a) in [(format!("f{}", k + 1), e), (format!("g{}", k + 1), d)] {
                push_affine(&mut out, &format!("adam.m.{name}"), &a.m.w, &a.m.b);
                push_affine(&mut out, &format!("adam.v.{name}"), &a.v.w, &a.v.b);
            }
        }
        out
    }

    fn run_state_mut(&mut self) -> Vec<NamedTensorMut<'_>> {
        let mut out = vec![NamedTensorMut::new(
            "adam.step".into(),
            vec![1],
            &mut self.steps,
        )];
        for (k, (e, d)) in self.adam.iter_mut().enumerate() {
            for (name, a) in [(format!("f{}", k + 1), e), (format!("g{}", k + 1), d)] {
                push_affine_mut(&mut out, &format!("adam.m.{name}"), &mut a.m.w, &mut a.m.b);
                push_affine_mut(&mut out, &format!("adam.v.{name}"), &mut a.v.w, &mut a.v.b);
            }
        }
        out
    }

    fn check_finite(&self, epoch: usize) -> Result<()> {
        for (name, m) in self.model.named() {
            if !m.is_finite() {
                return Err(Error::Diverged {
                    epoch,
                    layer: name,
                    what: "weights",
                });
            }
        }
        Ok(())
    }

    fn flops_per_example(&self) -> (f64, f64) {
        let s = &self.model.sizes;
        let top = self.model.depth();
        // One use of map k (either direction) costs 2 n_{k-1} n_k per example.
        let map = |k: usize| 2.0 * (s[k - 1] * s[k]) as f64;
        let feed_forward: f64 = (1..=top).map(map).sum();
        let per_step: f64 = (1..=top)
            .map(|k| {
                let ff = if k > 1 { map(k) } else { 0.0 };
                let above = if k < top { map(k + 1) } else { 0.0 };
                ff + 2.0 * map(k) + above
            })
            .sum::<f64>();
        let steps = self.settings.inference_steps as f64;
        let infer = feed_forward + map(1) * (steps > 0.0) as u8 as f64 + steps * per_step;
        let score = map(1);
        let learn_per_pair = match self.settings.pair_training {
            PairTraining::Dae => 5.0,
            PairTraining::Local => 4.0,
        };
        let learn: f64 = (1..=top).map(|k| learn_per_pair * map(k)).sum();
        (infer + score + learn, infer + score)
    }

    fn describe(&self) -> String {
        let g = &self.settings;
        let decorrelation = match g.top_decorrelation {
            0.0 => String::new(),
            l => format!(", top codes decorrelated (lambda {l})"),
        };
        format!(
            "generative model {:?} (pairs trained as {:?}), INFERENCE N={} delta={} alpha={}, \
             corruption {:?}, Adam {:?}{decorrelation}",
            self.model.sizes,
            g.pair_training,
            g.inference_steps,
            g.inference_rate,
            g.top_down,
            g.corruption,
            self.rates
        )
    }
}

#[cfg(test)]
mod tests;

//! The backprop baseline: a feed-forward net of the same shapes and units as
//! the EP presets, trained by SGD on the same cost through the same loop.
//!
//!   h_0 = x,  a_{k+1} = h_k W_k + b_{k+1},  h_{k+1} = rho(a_{k+1}),  rho = clip(., 0, 1)
//!   C = 1/2 |h_{L+1} - d|^2 (per example, batch mean)
//!   delta_{L+1} = (h_{L+1} - d) * rho'(a_{L+1}),  delta_k = (delta_{k+1} W_k^T) * rho'(a_k)
//!   dC/dW_k = h_k^T delta_{k+1},  dC/db_{k+1} = sum over the batch of delta_{k+1}
//! with rho'(a) = 1 on [0, 1] and 0 outside (the hard sigmoid's derivative).

use crate::config::Config;
use crate::data::Dataset;
use crate::eqprop::Network;
use crate::error::Result;
use crate::tensor::{Matrix, Op, View, gemm, kernels};
use crate::train::{Learner, NamedTensor, NamedTensorMut, Stats};
use rand_chacha::ChaCha8Rng;

/// Working memory for one batch: activations and deltas per layer.
struct Work {
    /// `acts[k]` is h_k for k >= 1 (rows x n_k); index 0 holds x.
    acts: Vec<Matrix>,
    /// `pre[k]` is a_k for k >= 1 (index 0 unused).
    pre: Vec<Matrix>,
    /// `delta[k]` is dC/da_k for k >= 1 (index 0 unused).
    delta: Vec<Matrix>,
    target: Matrix,
    /// Which outputs the cost covers: all (supervised) or the chosen action (bandit).
    mask: Matrix,
}

impl Work {
    fn new(sizes: &[usize], cap: usize) -> Self {
        let mats = || sizes.iter().map(|&n| Matrix::zeros(cap, n)).collect();
        Work {
            acts: mats(),
            pre: mats(),
            delta: mats(),
            target: Matrix::zeros(cap, *sizes.last().unwrap()),
            mask: Matrix::from_vec(
                cap,
                *sizes.last().unwrap(),
                vec![1.0; cap * sizes.last().unwrap()],
            ),
        }
    }
}

/// A feed-forward network trained by backprop and SGD.
pub struct Backprop {
    /// Weights and biases, laid out as EP's (`weights[k]` is W_k, `biases[k]` is b_{k+1}).
    pub net: Network,
    pub learning_rates: Vec<f32>,
    /// The rate schedule's factor for this epoch.
    rate_scale: f32,
    train: Work,
    eval: Work,
    /// Bandit: exploration schedule, epochs, the current epoch, rewards since last asked.
    bandit: Option<(Vec<f32>, usize)>,
    epoch: usize,
    rewards: (f64, usize),
}

fn rho_prime(a: f32) -> f32 {
    if (0.0..=1.0).contains(&a) { 1.0 } else { 0.0 }
}

/// h_{k+1} = rho(h_k W_k + b_{k+1}) for the first `rows` rows of `w.acts[0]`.
fn propagate(net: &Network, w: &mut Work, rows: usize) {
    for k in 0..net.weights.len() {
        let n = net.sizes[k + 1];
        let (lower, upper) = w.acts.split_at_mut(k + 1);
        let pre = w.pre[k + 1].view_mut().split_rows(rows).0;
        gemm(
            pre,
            false,
            1.0,
            lower[k].rows_view(0, rows),
            Op::N,
            net.weights[k].view(),
            Op::N,
        );
        let pre = &mut w.pre[k + 1].data[..rows * n];
        kernels::add_bias_rows(pre, &net.biases[k]);
        for (h, &a) in upper[0].data[..rows * n].iter_mut().zip(pre.iter()) {
            *h = kernels::clip01(a);
        }
    }
}

/// delta_k = (delta_{k+1} W_k^T) * rho'(a_k) for every hidden layer, from the
/// output's delta.
fn hidden_deltas(net: &Network, w: &mut Work, rows: usize) {
    let depth = net.weights.len();
    for k in (1..depth).rev() {
        let n = net.sizes[k];
        let (lower, upper) = w.delta.split_at_mut(k + 1);
        let dk = lower[k].view_mut().split_rows(rows).0;
        gemm(
            dk,
            false,
            1.0,
            upper[0].rows_view(0, rows),
            Op::N,
            net.weights[k].view(),
            Op::T,
        );
        for (d, &a) in lower[k].data[..rows * n]
            .iter_mut()
            .zip(&w.pre[k].data[..rows * n])
        {
            *d *= rho_prime(a);
        }
    }
}

/// Adds scale(k) * h_k^T delta_{k+1} to W_k and scale(k) * sum_rows delta_{k+1}
/// to b_{k+1} of `into` (an SGD step, or a gradient into a zeroed network).
fn add_gradients(w: &Work, rows: usize, scale: impl Fn(usize) -> f32, into: &mut Network) {
    for k in 0..into.weights.len() {
        let scale = scale(k);
        gemm(
            into.weights[k].view_mut(),
            true,
            scale,
            w.acts[k].rows_view(0, rows),
            Op::T,
            w.delta[k + 1].rows_view(0, rows),
            Op::N,
        );
        let n = into.sizes[k + 1];
        for r in 0..rows {
            for (b, &d) in into.biases[k]
                .iter_mut()
                .zip(&w.delta[k + 1].data[r * n..(r + 1) * n])
            {
                *b += scale * d;
            }
        }
    }
}

/// Backprop on inputs and output gradients that the caller supplies (the
/// reinforcement-learning twin of an EP network): a forward pass, then the
/// gradient of a loss whose derivative at the outputs the caller gives.
pub struct Passes {
    work: Work,
    rows: usize,
}

impl Passes {
    /// Room for `cap` rows at a time.
    pub fn new(sizes: &[usize], cap: usize) -> Self {
        Passes {
            work: Work::new(sizes, cap),
            rows: 0,
        }
    }

    /// The outputs of `net` for the rows of `x`.
    pub fn forward(&mut self, net: &Network, x: View) -> View<'_> {
        let rows = x.rows;
        assert!(
            rows <= self.work.target.rows,
            "more rows than the passes have room for"
        );
        for i in 0..rows {
            self.work.acts[0].row_mut(i).copy_from_slice(x.row(i));
        }
        propagate(net, &mut self.work, rows);
        self.rows = rows;
        self.work.acts.last().unwrap().rows_view(0, rows)
    }

    /// Sets `grad` to d/dtheta of the mean over the rows of the last forward
    /// pass of a loss whose derivative at the outputs is `dy` (one row each).
    pub fn gradient(&mut self, net: &Network, dy: View, grad: &mut Network) {
        let (rows, depth) = (self.rows, net.weights.len());
        let w = &mut self.work;
        let n = net.sizes[depth];
        for i in 0..rows {
            let pre = &w.pre[depth].data[i * n..(i + 1) * n];
            for ((d, &g), &a) in w.delta[depth].row_mut(i).iter_mut().zip(dy.row(i)).zip(pre) {
                *d = g * rho_prime(a);
            }
        }
        hidden_deltas(net, w, rows);
        grad.zero();
        add_gradients(w, rows, |_| 1.0 / rows as f32, grad);
    }
}

impl Backprop {
    pub fn new(cfg: &Config) -> Self {
        let net = Network::initial(cfg);
        Backprop {
            train: Work::new(&net.sizes, cfg.batch_size),
            eval: Work::new(&net.sizes, cfg.eval_block),
            net,
            learning_rates: cfg.learning_rates.clone(),
            rate_scale: 1.0,
            bandit: (cfg.task == crate::config::Task::Bandit)
                .then(|| (cfg.explore.clone(), cfg.epochs)),
            epoch: 1,
            rewards: (0.0, 0),
        }
    }

    /// Bandit: replaces the batch's targets by the reward of an epsilon-greedy
    /// action on the outputs (the cost then covers that output alone); returns
    /// (greedy errors, cost of the chosen outputs) as the environment sees them.
    fn reward_targets(
        &mut self,
        data: &Dataset,
        idx: &[usize],
        rng: &mut ChaCha8Rng,
    ) -> (usize, f64) {
        let (explore, epochs) = self.bandit.as_ref().expect("a bandit learner");
        let eps = crate::bandit::epsilon(explore, self.epoch, *epochs);
        let env = crate::bandit::Environment::new(&data.labels);
        let w = &mut self.train;
        let depth = self.net.weights.len();
        let n = self.net.sizes[depth];
        let (mut errors, mut cost) = (0, 0.0);
        for (i, &e) in idx.iter().enumerate() {
            let predicted = &w.acts[depth].data[i * n..(i + 1) * n];
            let (t, m) = (w.target.row_mut(i), w.mask.row_mut(i));
            let o = crate::bandit::act(&env, e, predicted, eps, rng, t, m);
            errors += o.greedy_wrong as usize;
            cost += o.cost;
            self.rewards.0 += o.reward as f64;
            self.rewards.1 += 1;
        }
        (errors, cost)
    }

    /// Loads examples into `w` and runs the forward pass; returns (errors, cost).
    fn forward(
        net: &Network,
        w: &mut Work,
        data: &Dataset,
        idx: impl ExactSizeIterator<Item = usize> + Clone,
    ) -> (usize, usize, f64) {
        let rows = idx.len();
        let n_out = w.target.cols;
        let mut errors = 0;
        let mut cost = 0.0;
        for (i, e) in idx.clone().enumerate() {
            w.acts[0].row_mut(i).copy_from_slice(data.images.row(e));
            let t = w.target.row_mut(i);
            t.fill(0.0);
            t[data.labels[e] as usize % n_out] = 1.0;
        }
        propagate(net, w, rows);
        let out = w.acts.last().unwrap();
        for (i, e) in idx.enumerate() {
            let row = &out.data[i * n_out..(i + 1) * n_out];
            if kernels::argmax(row) != data.labels[e] as usize {
                errors += 1;
            }
            cost += Network::cost(row, w.target.row(i));
        }
        (rows, errors, cost)
    }

    /// Gradients of the batch-mean cost: returns (dW, db) per layer (tests use this).
    pub fn gradients(&mut self, data: &Dataset, idx: &[usize]) -> (Vec<Matrix>, Vec<Vec<f32>>) {
        let rows = idx.len();
        Self::forward(&self.net, &mut self.train, data, idx.iter().copied());
        self.backward(rows);
        let mut grad = self.net.zeros_like();
        add_gradients(&self.train, rows, |_| 1.0 / rows as f32, &mut grad);
        (grad.weights, grad.biases)
    }

    /// Fills `delta` from the forward pass's activations.
    fn backward(&mut self, rows: usize) {
        let w = &mut self.train;
        let depth = self.net.weights.len();
        let n_out = self.net.sizes[depth];
        {
            let out = &w.acts[depth].data[..rows * n_out];
            let pre = &w.pre[depth].data[..rows * n_out];
            let t = &w.target.data[..rows * n_out];
            let m = &w.mask.data[..rows * n_out];
            for ((((d, &h), &a), &y), &mv) in w.delta[depth].data[..rows * n_out]
                .iter_mut()
                .zip(out)
                .zip(pre)
                .zip(t)
                .zip(m)
            {
                // (h - y) * 1.0 is exact: a full mask changes no bit.
                *d = (h - y) * mv * rho_prime(a);
            }
        }
        hidden_deltas(&self.net, w, rows);
    }
}

impl Learner for Backprop {
    fn train_batch(&mut self, data: &Dataset, indices: &[usize], rng: &mut ChaCha8Rng) -> Stats {
        let rows = indices.len();
        let (examples, mut errors, mut cost) =
            Self::forward(&self.net, &mut self.train, data, indices.iter().copied());
        if self.bandit.is_some() {
            (errors, cost) = self.reward_targets(data, indices, rng);
        }
        self.backward(rows);
        let (rates, scale) = (&self.learning_rates, self.rate_scale);
        add_gradients(
            &self.train,
            rows,
            |k| -rates[k] * scale / rows as f32,
            &mut self.net,
        );
        Stats {
            examples,
            errors,
            cost,
            ..Stats::default()
        }
    }

    fn start_epoch(&mut self, epoch: usize) {
        self.epoch = epoch;
    }

    fn set_rate_scale(&mut self, scale: f32) {
        self.rate_scale = scale;
    }

    fn take_mean_reward(&mut self) -> Option<f64> {
        let (sum, n) = std::mem::take(&mut self.rewards);
        (self.bandit.is_some() && n > 0).then(|| sum / n as f64)
    }

    fn evaluate(&mut self, data: &Dataset) -> Stats {
        let mut stats = Stats::default();
        let cap = self.eval.target.rows;
        let mut start = 0;
        while start < data.len() {
            let end = (start + cap).min(data.len());
            let (n, e, c) = Self::forward(&self.net, &mut self.eval, data, start..end);
            stats.examples += n;
            stats.errors += e;
            stats.cost += c;
            start = end;
        }
        stats
    }

    fn parameters(&self) -> Vec<NamedTensor<'_>> {
        network_tensors(&self.net)
    }

    fn parameters_mut(&mut self) -> Vec<NamedTensorMut<'_>> {
        network_tensors_mut(&mut self.net)
    }

    fn check_finite(&self, epoch: usize) -> Result<()> {
        self.net.check_finite(epoch)
    }

    fn flops_per_example(&self) -> (f64, f64) {
        let s = &self.net.sizes;
        let fwd: f64 = s.windows(2).map(|w| 2.0 * (w[0] * w[1]) as f64).sum();
        // Backward: delta through every W_k but the first, plus the weight gradients.
        let back: f64 = s[1..]
            .windows(2)
            .map(|w| 2.0 * (w[0] * w[1]) as f64)
            .sum::<f64>()
            + fwd;
        (fwd + back, fwd)
    }

    fn describe(&self) -> String {
        let sizes: Vec<String> = self.net.sizes.iter().map(|n| n.to_string()).collect();
        format!(
            "backprop {} | hard-sigmoid units, squared error, SGD | rates {:?}",
            sizes.join("-"),
            self.learning_rates
        )
    }
}

/// The checkpoint names shared by every layered model: W0.., b1...
pub fn network_tensors(net: &Network) -> Vec<NamedTensor<'_>> {
    let mut out = Vec::new();
    for (k, w) in net.weights.iter().enumerate() {
        out.push(NamedTensor::new(
            format!("W{k}"),
            vec![w.rows, w.cols],
            &w.data,
        ));
    }
    for (k, b) in net.biases.iter().enumerate() {
        out.push(NamedTensor::new(format!("b{}", k + 1), vec![b.len()], b));
    }
    out
}

pub fn network_tensors_mut(net: &mut Network) -> Vec<NamedTensorMut<'_>> {
    let mut out = Vec::new();
    for (k, w) in net.weights.iter_mut().enumerate() {
        out.push(NamedTensorMut::new(
            format!("W{k}"),
            vec![w.rows, w.cols],
            &mut w.data,
        ));
    }
    for (k, b) in net.biases.iter_mut().enumerate() {
        let n = b.len();
        out.push(NamedTensorMut::new(format!("b{}", k + 1), vec![n], b));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    /// Backprop's gradient against central differences of the batch cost.
    #[test]
    #[allow(clippy::needless_range_loop)]
    fn gradients_match_finite_differences() {
        let dir = tempfile::tempdir().unwrap();
        crate::data::write_synthetic(dir.path(), 60, 10, 3, 4);
        let data = crate::data::load(dir.path()).unwrap().train;
        let mut cfg = config::preset("eqprop-mnist-2h").unwrap();
        cfg.layers = vec![9, 7, 6, 10];
        cfg.learning_rates = vec![0.1; 3];
        let mut bp = Backprop::new(&cfg);
        // Biases that keep most pre-activations inside (0, 1), away from the kinks.
        for b in &mut bp.net.biases {
            b.fill(0.4);
        }
        let idx: Vec<usize> = (0..8).collect();
        let (dw, db) = bp.gradients(&data, &idx);
        let cost = |net: &Network| {
            let mut work = Work::new(&net.sizes, 8);
            let (n, _, c) = Backprop::forward(net, &mut work, &data, idx.iter().copied());
            c / n as f64
        };
        let h = 1e-3f32;
        let mut checked = 0;
        for k in 0..dw.len() {
            for i in 0..dw[k].data.len() {
                let (mut p, mut m) = (bp.net.clone(), bp.net.clone());
                p.weights[k].data[i] += h;
                m.weights[k].data[i] -= h;
                let fd = (cost(&p) - cost(&m)) / (2.0 * h as f64);
                let got = dw[k].data[i] as f64;
                assert!(
                    (fd - got).abs() < 2e-3 + 0.02 * fd.abs(),
                    "dW{k}[{i}]: backprop {got}, FD {fd}"
                );
                checked += 1;
            }
            for j in 0..db[k].len() {
                let (mut p, mut m) = (bp.net.clone(), bp.net.clone());
                p.biases[k][j] += h;
                m.biases[k][j] -= h;
                let fd = (cost(&p) - cost(&m)) / (2.0 * h as f64);
                let got = db[k][j] as f64;
                assert!(
                    (fd - got).abs() < 2e-3 + 0.02 * fd.abs(),
                    "db{}[{j}]: backprop {got}, FD {fd}",
                    k + 1
                );
            }
        }
        assert!(checked > 100);
        assert!(
            dw.iter().any(|g| g.data.iter().any(|v| v.abs() > 1e-3)),
            "gradients are all ~0"
        );
    }
}

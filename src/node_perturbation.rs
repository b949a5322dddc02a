//! The classic biologically plausible reinforcement rule, as a baseline for
//! reward-driven EP: a three-factor, reward-modulated Hebbian rule with
//! stochastic units (node perturbation, Williams' REINFORCE for Gaussian units).
//!
//!   a_{k+1} = h_k W_k + b_{k+1},  h_{k+1} = clip(a_{k+1} + sigma xi_{k+1}, 0, 1),  xi ~ N(0, 1)
//!   (the output layer unclipped: a_out + sigma xi, so that saturated outputs
//!   cannot tie and freeze the argmax)
//!   action = argmax of the noisy outputs (the noise explores), reward r from the bandit
//!   dW_k = alpha_k (r - r_bar) h_k^T xi_{k+1} / sigma   (presynaptic activity x
//!          postsynaptic perturbation x global reward signal), batch mean
//!   r_bar: running mean of the reward (the baseline that removes its offset).
//!
//! Evaluation is greedy and noise-free.

use crate::bandit::Environment;
use crate::config::Config;
use crate::data::Dataset;
use crate::eqprop::Network;
use crate::error::Result;
use crate::tensor::{Matrix, Op, gemm, kernels};
use crate::train::{Learner, NamedTensor, NamedTensorMut, Stats};
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

/// How fast the reward baseline follows the rewards (per example).
const BASELINE_RATE: f64 = 0.001;

pub struct NodePerturbation {
    pub net: Network,
    learning_rates: Vec<f32>,
    sigma: f32,
    /// h_k per layer (index 0: x) and the noise xi_k (index 0 unused), batch x n_k.
    acts: Vec<Matrix>,
    noise: Vec<Matrix>,
    baseline: f64,
    rewards: (f64, usize),
}

impl NodePerturbation {
    pub fn new(cfg: &Config) -> Self {
        let net = Network::initial(cfg);
        let mats = || {
            net.sizes
                .iter()
                .map(|&n| Matrix::zeros(cfg.batch_size.max(cfg.eval_block), n))
                .collect()
        };
        NodePerturbation {
            acts: mats(),
            noise: mats(),
            learning_rates: cfg.learning_rates.clone(),
            sigma: cfg.noise,
            baseline: 0.0,
            rewards: (0.0, 0),
            net,
        }
    }

    /// Forward pass of examples `idx`; with `rng`, Gaussian noise of std sigma
    /// is added to every unit before its clip (and kept for the update).
    fn forward(&mut self, data: &Dataset, idx: &[usize], mut rng: Option<&mut ChaCha8Rng>) {
        let rows = idx.len();
        for (i, &e) in idx.iter().enumerate() {
            self.acts[0].row_mut(i).copy_from_slice(data.images.row(e));
        }
        let depth = self.net.weights.len();
        for k in 0..depth {
            let n = self.net.sizes[k + 1];
            let (lower, upper) = self.acts.split_at_mut(k + 1);
            let out = upper[0].view_mut().split_rows(rows).0;
            gemm(
                out,
                false,
                1.0,
                lower[k].rows_view(0, rows),
                Op::N,
                self.net.weights[k].view(),
                Op::N,
            );
            let a = &mut upper[0].data[..rows * n];
            kernels::add_bias_rows(a, &self.net.biases[k]);
            let xi = &mut self.noise[k + 1].data[..rows * n];
            for (h, x) in a.iter_mut().zip(xi.iter_mut()) {
                *x = match rng.as_deref_mut() {
                    Some(r) => gaussian(r),
                    None => 0.0,
                };
                let v = *h + self.sigma * *x;
                *h = if k + 1 == depth {
                    v
                } else {
                    kernels::clip01(v)
                };
            }
        }
    }
}

/// A standard normal draw (Box-Muller).
fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

impl Learner for NodePerturbation {
    fn train_batch(&mut self, data: &Dataset, indices: &[usize], rng: &mut ChaCha8Rng) -> Stats {
        let rows = indices.len();
        self.forward(data, indices, Some(rng));
        let env = Environment::new(&data.labels);
        let depth = self.net.weights.len();
        let n = self.net.sizes[depth];
        let mut stats = Stats {
            examples: rows,
            ..Stats::default()
        };
        // Per example: reward of the noisy greedy action, minus the baseline.
        let mut advantage = vec![0.0f32; rows];
        for (i, &e) in indices.iter().enumerate() {
            let out = &self.acts[depth].data[i * n..(i + 1) * n];
            let action = kernels::argmax(out);
            let r = env.reward(e, action) as f64;
            stats.errors += (r == 0.0) as usize;
            stats.cost += 0.5 * (out[action] as f64 - r).powi(2);
            advantage[i] = (r - self.baseline) as f32;
            self.baseline += BASELINE_RATE * (r - self.baseline);
            self.rewards.0 += r;
            self.rewards.1 += 1;
        }
        // dW_k = alpha_k / B * h_k^T (advantage * xi_{k+1} / sigma): scale the noise rows first.
        for k in 0..depth {
            let nk1 = self.net.sizes[k + 1];
            let xi = &mut self.noise[k + 1];
            for (i, adv) in advantage.iter().enumerate() {
                xi.row_mut(i)[..nk1]
                    .iter_mut()
                    .for_each(|x| *x *= adv / self.sigma);
            }
            let scale = self.learning_rates[k] / rows as f32;
            gemm(
                self.net.weights[k].view_mut(),
                true,
                scale,
                self.acts[k].rows_view(0, rows),
                Op::T,
                self.noise[k + 1].rows_view(0, rows),
                Op::N,
            );
            for i in 0..rows {
                for (b, &x) in self.net.biases[k].iter_mut().zip(self.noise[k + 1].row(i)) {
                    *b += scale * x;
                }
            }
        }
        stats
    }

    fn evaluate(&mut self, data: &Dataset) -> Stats {
        let mut stats = Stats::default();
        let cap = self.acts[0].rows;
        let depth = self.net.weights.len();
        let n = self.net.sizes[depth];
        let all: Vec<usize> = (0..data.len()).collect();
        for chunk in all.chunks(cap) {
            self.forward(data, chunk, None);
            for (i, &e) in chunk.iter().enumerate() {
                let out = &self.acts[depth].data[i * n..(i + 1) * n];
                stats.errors += (kernels::argmax(out) != data.labels[e] as usize) as usize;
                let d = (0..n).map(|j| (j == data.labels[e] as usize) as u8 as f32);
                stats.cost += out
                    .iter()
                    .zip(d)
                    .map(|(o, t)| 0.5 * ((o - t) as f64).powi(2))
                    .sum::<f64>();
            }
            stats.examples += chunk.len();
        }
        stats
    }

    fn take_mean_reward(&mut self) -> Option<f64> {
        let (sum, n) = std::mem::take(&mut self.rewards);
        (n > 0).then(|| sum / n as f64)
    }

    fn parameters(&self) -> Vec<NamedTensor<'_>> {
        crate::backprop::network_tensors(&self.net)
    }

    fn parameters_mut(&mut self) -> Vec<NamedTensorMut<'_>> {
        crate::backprop::network_tensors_mut(&mut self.net)
    }

    fn check_finite(&self, epoch: usize) -> Result<()> {
        self.net.check_finite(epoch)
    }

    fn flops_per_example(&self) -> (f64, f64) {
        let fwd: f64 = self
            .net
            .sizes
            .windows(2)
            .map(|w| 2.0 * (w[0] * w[1]) as f64)
            .sum();
        (2.0 * fwd, fwd)
    }

    fn describe(&self) -> String {
        format!(
            "node perturbation (three-factor rule) {:?} | sigma {} | rates {:?}",
            self.net.sizes, self.sigma, self.learning_rates
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// On a two-image bandit, the three-factor rule raises the reward it earns:
    /// its noise-times-reward estimate follows the gradient in expectation.
    #[test]
    fn the_three_factor_rule_learns_a_small_bandit() {
        let cfg = Config {
            layers: vec![4, 8, 10],
            learning_rates: vec![0.03, 0.03],
            // Enough noise that every action gets tried: the rule learns only
            // from the rewards that its perturbations change.
            noise: 0.5,
            batch_size: 20,
            ..crate::config::preset("node-perturbation-mnist-bandit").unwrap()
        };
        let images = Matrix::from_vec(2, 4, vec![1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0]);
        let data = Dataset {
            images,
            labels: vec![3, 7],
        };
        let mut learner = NodePerturbation::new(&cfg);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let batch: Vec<usize> = (0..20).map(|i| i % 2).collect();
        let mut rewards = Vec::new();
        for _ in 0..3000 {
            learner.train_batch(&data, &batch, &mut rng);
            rewards.push(learner.take_mean_reward().unwrap());
        }
        let early: f64 = rewards[..20].iter().sum::<f64>() / 20.0;
        let late: f64 = rewards[2980..].iter().sum::<f64>() / 20.0;
        assert!(late > early + 0.3, "reward {early:.2} -> {late:.2}");
        assert_eq!(learner.evaluate(&data).errors, 0);
    }
}

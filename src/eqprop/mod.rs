//! Equilibrium Propagation (Scellier & Bengio, arXiv 1602.05179).
//!
//! `network` holds the parameters and the energy, `dynamics` relaxes the
//! states to a fixed point (free phase) and under a nudge (nudged phase),
//! `learning` contrasts the two equilibria into a weight update. `EqProp` ties
//! them to the training loop through the `Learner` trait.

pub mod activity;
pub mod dynamics;
pub mod exact;
pub mod gradient;
pub mod learning;
pub mod mistakes;
pub mod network;

pub use activity::Activity;
pub use dynamics::{Block, Phase};
pub use network::Network;

use crate::config::{Config, NudgedUpdate, Nudging};
use crate::data::Dataset;
use crate::error::Result;
use crate::tensor::{Matrix, row_range};
use crate::train::{Learner, NamedTensor, NamedTensorMut, Stats};
use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Validation digits whose hidden activity each epoch reports.
pub const ACTIVITY_EXAMPLES: usize = 1000;

/// The hyperparameters EP itself uses (a view of `Config`).
#[derive(Clone, Debug)]
pub struct Settings {
    pub free_steps: usize,
    pub nudged_steps: usize,
    pub epsilon: f32,
    pub beta: f32,
    pub learning_rates: Vec<f32>,
    pub nudging: Nudging,
    pub nudged_update: NudgedUpdate,
    pub gradient: crate::config::Gradient,
    pub relaxation: crate::config::Relaxation,
    pub tolerance: f32,
    pub persistent_particles: bool,
    pub task: crate::config::Task,
    pub explore: Vec<f32>,
    pub epochs: usize,
}

/// FLOPs of one relaxation step per example: each W_k (k >= 1) is used twice,
/// s_{k+1} W_k^T and s_k W_k (layer 1's input drive is computed once per batch).
pub fn flops_per_step(sizes: &[usize]) -> f64 {
    sizes[1..]
        .windows(2)
        .map(|w| 4.0 * (w[0] * w[1]) as f64)
        .sum()
}

impl Settings {
    /// Analytic FLOPs per training example and per evaluated example.
    pub fn flops_per_example(&self, sizes: &[usize]) -> (f64, f64) {
        let input = 2.0 * (sizes[0] * sizes[1]) as f64;
        let step = flops_per_step(sizes);
        let nudged_phases = if self.nudging == Nudging::Symmetric {
            2
        } else {
            1
        };
        // The exact gradient replaces the nudged phases by as many adjoint iterations
        // as free steps, plus one pass for the clip masks (each costs a step's GEMMs).
        let steps = match self.gradient {
            crate::config::Gradient::Ep => self.free_steps + nudged_phases * self.nudged_steps,
            crate::config::Gradient::RecurrentBackprop => 2 * self.free_steps + 1,
        };
        // Update: x^T (s1^b - s1^0) is one GEMM; the other W_k take two.
        let update = input + step;
        let train = input + steps as f64 * step + update;
        let eval = input + self.free_steps as f64 * step;
        (train, eval)
    }

    /// One line about the model, for the log.
    pub fn describe(&self, sizes: &[usize]) -> String {
        format!(
            "EP {} | free {} nudged {} | beta {} ({:?}) | eps {} | rates {:?}",
            sizes
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join("-"),
            self.free_steps,
            self.nudged_steps,
            self.beta,
            self.nudging,
            self.epsilon,
            self.learning_rates
        )
    }

    pub fn from_config(c: &Config) -> Self {
        Settings {
            free_steps: c.free_steps,
            nudged_steps: c.nudged_steps,
            epsilon: c.epsilon,
            beta: c.beta,
            learning_rates: c.learning_rates.clone(),
            nudging: c.nudging,
            nudged_update: c.nudged_update,
            gradient: c.gradient,
            relaxation: c.relaxation,
            tolerance: c.tolerance,
            persistent_particles: c.persistent_particles,
            task: c.task,
            explore: c.explore.clone(),
            epochs: c.epochs,
        }
    }
}

/// An EP learner: the network, its settings, per-thread working memory and
/// (optionally) the persistent particles of every training example.
pub struct EqProp {
    pub net: Network,
    pub settings: Settings,
    blocks: Vec<Block>,
    /// With the exact gradient: each block's recurrent-backprop adjoint.
    adjoints: Vec<exact::Adjoint>,
    eval_blocks: Vec<Block>,
    /// `particles[k - 1]` holds layer k's free state of every training example.
    particles: Vec<Matrix>,
    /// With `eval_warm`: the same for the validation (0) and test (1) examples,
    /// carried from one evaluation to the next (the paper's code does this).
    warm: Vec<Vec<Matrix>>,
    /// Largest state change in the last step of the last free phase (all blocks).
    pub last_free_change: f32,
    /// Free-phase steps taken, summed over training examples since last asked.
    free_steps: (f64, usize),
    /// Bandit: the current epoch (for exploration), rewards earned since last
    /// asked, and the actions taken in the last batch.
    epoch: usize,
    rewards: (f64, usize),
    pub last_actions: Vec<usize>,
    /// The rate schedule's factor for this epoch.
    rate_scale: f32,
}

impl EqProp {
    /// A Glorot-initialised network for `cfg`; `counts` are the numbers of
    /// training, validation and test examples (for the particles).
    pub fn new(cfg: &Config, counts: [usize; 3]) -> Self {
        let net = Network::initial(cfg);
        Self::from_network(net, Settings::from_config(cfg), cfg, counts)
    }

    pub fn from_network(
        net: Network,
        settings: Settings,
        cfg: &Config,
        counts: [usize; 3],
    ) -> Self {
        let n_train = counts[0];
        let states = |n: usize| -> Vec<Matrix> {
            net.sizes[1..]
                .iter()
                .map(|&w| Matrix::zeros_resident(n, w))
                .collect()
        };
        let warm = if cfg.eval_warm {
            vec![states(counts[1]), states(counts[2])]
        } else {
            Vec::new()
        };
        let threads = cfg.threads.max(1);
        let cap = cfg.batch_size.div_ceil(threads).max(1);
        let block = |cap| {
            let mut b = Block::new(&net.sizes, cap);
            b.scheme = settings.relaxation;
            b.tolerance = settings.tolerance;
            b
        };
        let blocks = (0..threads).map(|_| block(cap)).collect();
        let adjoints = match settings.gradient {
            crate::config::Gradient::Ep => Vec::new(),
            crate::config::Gradient::RecurrentBackprop => (0..threads)
                .map(|_| exact::Adjoint::new(&net.sizes, cap))
                .collect(),
        };
        let eval_blocks = (0..threads).map(|_| block(cfg.eval_block)).collect();
        let particles = if settings.persistent_particles {
            net.sizes[1..]
                .iter()
                .map(|&n| Matrix::zeros_resident(n_train, n))
                .collect()
        } else {
            Vec::new()
        };
        EqProp {
            net,
            settings,
            blocks,
            adjoints,
            eval_blocks,
            particles,
            warm,
            last_free_change: 0.0,
            free_steps: (0.0, 0),
            epoch: 1,
            rewards: (0.0, 0),
            last_actions: Vec::new(),
            rate_scale: 1.0,
        }
    }
}

impl EqProp {
    /// The nudged phase with the update applied after every step: the weights
    /// move by (alpha / beta)(s^{t+1} s^{t+1} - s^t s^t) while the states move
    /// (`NudgedNeg` holds s^t). Summed over a phase with the weights held fixed,
    /// these increments telescope to the standard update.
    fn nudge_continuously(&mut self, beta: f32, batch: usize) {
        let parts = self.blocks.len();
        for _ in 0..self.settings.nudged_steps {
            let (net, eps) = (&self.net, self.settings.epsilon);
            self.blocks.par_iter_mut().for_each(|b| {
                b.copy_states(Phase::Nudged, Phase::NudgedNeg);
                b.compute_input_drive(net);
                b.relax(net, Phase::Nudged, 1, eps, beta);
                b.prepare_update(Phase::Nudged, Phase::NudgedNeg);
            });
            learning::apply(
                &mut self.net,
                &self.blocks,
                Phase::Nudged,
                Phase::NudgedNeg,
                self.rate_scale / beta,
                &self.settings.learning_rates,
                batch,
                parts,
            );
        }
    }
}

/// The network saved in run directory `dir`'s checkpoint, with the run's config.
pub fn load_run(dir: &std::path::Path) -> Result<(Config, Network)> {
    let cfg = crate::train::read_run_config(dir)?;
    if cfg.algorithm == crate::config::Algorithm::Generative {
        return Err(crate::Error::Config(format!(
            "{} holds a generative model, not a network of EP's layers; give an EP \
             run such as results/eqprop-mnist-1h",
            dir.display()
        )));
    }
    let lean = Config {
        persistent_particles: false,
        eval_warm: false,
        ..cfg.clone()
    };
    let mut learner = EqProp::new(&lean, [0, 0, 0]);
    let ckpt = crate::train::checkpoint::Loaded::read(&dir.join(crate::train::CHECKPOINT_FILE))?;
    ckpt.restore(learner.parameters_mut())?;
    Ok((cfg, learner.net))
}

/// The free fixed points of `images` under `net`, relaxed from rest with the
/// run's free phase (no labels, no nudge): per image, every layer after the
/// input, concatenated. The generative model compares image sets on these
/// features of a trained classifier (its Frechet distance).
pub fn free_states(cfg: &Config, net: &Network, images: &Matrix) -> Matrix {
    let settings = Settings::from_config(cfg);
    let width: usize = net.sizes[1..].iter().sum();
    let mut out = Matrix::zeros(images.rows, width);
    let block_rows = cfg.eval_block.max(1);
    out.data
        .par_chunks_mut(block_rows * width)
        .enumerate()
        .for_each(|(c, chunk)| {
            let r0 = c * block_rows;
            let rows = chunk.len() / width;
            let data = Dataset {
                images: Matrix::from_vec(
                    rows,
                    images.cols,
                    images.data[r0 * images.cols..(r0 + rows) * images.cols].to_vec(),
                ),
                labels: vec![0; rows],
            };
            let mut b = Block::new(&net.sizes, rows);
            b.scheme = settings.relaxation;
            b.load(&data, 0..rows, &[], false);
            b.compute_input_drive(net);
            b.relax(net, Phase::Free, settings.free_steps, settings.epsilon, 0.0);
            for i in 0..rows {
                let mut at = i * width;
                for layer in b.states(Phase::Free) {
                    chunk[at..at + layer.cols].copy_from_slice(layer.row(i));
                    at += layer.cols;
                }
            }
        });
    out
}

/// Checkpoint names of the warm-evaluation particle sets.
const WARM_NAMES: [&str; 2] = ["val_particles", "test_particles"];

impl EqProp {
    /// The per-example state sets, named: training particles, then warm ones.
    fn particle_sets(&self) -> impl Iterator<Item = (&'static str, &Vec<Matrix>)> {
        std::iter::once(("particles", &self.particles))
            .chain(WARM_NAMES.into_iter().zip(&self.warm))
    }

    /// Free phase on every example of `data`, from rest or (with `warm`) from
    /// that split's particles, which then keep the new fixed points.
    fn relax_all(
        &mut self,
        data: &Dataset,
        warm: Option<usize>,
        mut activity: Option<&mut Activity>,
    ) -> Stats {
        let s = &self.settings;
        let net = &self.net;
        let per_round = self.eval_blocks.len() * self.eval_blocks[0].cap;
        let mut stats = Stats::default();
        let mut start = 0;
        while start < data.len() {
            let end = (start + per_round).min(data.len());
            let parts = self.eval_blocks.len();
            let particles: &[Matrix] = warm.map_or(&[], |w| &self.warm[w]);
            self.eval_blocks
                .par_iter_mut()
                .enumerate()
                .for_each(|(p, b)| {
                    let (r0, r1) = row_range(end - start, parts, p);
                    b.load(data, start + r0..start + r1, particles, true);
                    b.compute_input_drive(net);
                    b.relax(net, Phase::Free, s.free_steps, s.epsilon, 0.0);
                    b.score_free();
                });
            for (part, b) in self.eval_blocks.iter().enumerate() {
                let r0 = row_range(end - start, parts, part).0;
                stats.examples += b.rows;
                stats.errors += b.errors;
                stats.cost += b.cost;
                if let Some(a) = activity.as_deref_mut() {
                    // The zip ends with the hidden layers: the output is not counted.
                    for (layer, s) in a.0.iter_mut().zip(&b.free) {
                        layer.add(&s.data[..b.rows * s.cols]);
                    }
                }
                if let Some(w) = warm {
                    for (k, p) in self.warm[w].iter_mut().enumerate() {
                        for i in 0..b.rows {
                            p.row_mut(start + r0 + i).copy_from_slice(b.free[k].row(i));
                        }
                    }
                }
            }
            start = end;
        }
        stats
    }
}

impl Block {
    /// Clamps examples `idx` of `data` into this block and sets the initial
    /// free state: the persistent particles if given, else zeros. With
    /// `labels`, also the one-hot targets; without (a bandit), the labels stay
    /// out of the block.
    fn load(
        &mut self,
        data: &Dataset,
        idx: impl ExactSizeIterator<Item = usize>,
        particles: &[Matrix],
        labels: bool,
    ) {
        self.rows = idx.len();
        let n_out = self.target.cols;
        for (i, e) in idx.enumerate() {
            self.x.row_mut(i).copy_from_slice(data.images.row(e));
            let t = self.target.row_mut(i);
            t.fill(0.0);
            if labels {
                let label = data.labels[e];
                self.labels[i] = label;
                t[label as usize % n_out] = 1.0;
            }
            for (k, s) in self.free.iter_mut().enumerate() {
                match particles.get(k) {
                    Some(p) => s.row_mut(i).copy_from_slice(p.row(e)),
                    None => s.row_mut(i).fill(0.0),
                }
            }
        }
    }
}

impl EqProp {
    /// The free phase of a batch on every block (in parallel): load, input
    /// drive, relaxation; scored against the labels if `labels`.
    fn free_phase(&mut self, data: &Dataset, indices: &[usize], labels: bool) {
        let s = &self.settings;
        let parts = self.blocks.len();
        let (net, particles) = (&self.net, &self.particles);
        self.blocks.par_iter_mut().enumerate().for_each(|(p, b)| {
            let (r0, r1) = row_range(indices.len(), parts, p);
            b.load(data, indices[r0..r1].iter().copied(), particles, labels);
            b.compute_input_drive(net);
            b.relax(net, Phase::Free, s.free_steps, s.epsilon, 0.0);
            if labels {
                b.score_free();
            }
        });
        for b in &self.blocks {
            self.free_steps.0 += (b.free_steps_taken * b.rows) as f64;
            self.free_steps.1 += b.rows;
        }
        self.last_free_change = self
            .blocks
            .iter()
            .map(|b| b.last_change)
            .fold(0.0, f32::max);
    }

    /// Persistent particles: each example keeps its free fixed point.
    fn keep_particles(&mut self, indices: &[usize]) {
        let parts = self.blocks.len();
        for (part, b) in self.blocks.iter().enumerate() {
            let r0 = row_range(indices.len(), parts, part).0;
            for (k, p) in self.particles.iter_mut().enumerate() {
                for i in 0..b.rows {
                    p.row_mut(indices[r0 + i]).copy_from_slice(b.free[k].row(i));
                }
            }
        }
    }

    /// Recurrent backprop at the free fixed points, as many iterations as free
    /// steps, and an SGD step down the exact gradient (same rates as EP).
    fn follow_exact_gradient(&mut self, batch: usize) {
        let (net, s) = (&self.net, &self.settings);
        self.adjoints
            .par_iter_mut()
            .zip(&self.blocks)
            .for_each(|(a, b)| a.run(net, b, s.free_steps, s.epsilon));
        let (rates, eps) = (&self.settings.learning_rates, self.settings.epsilon);
        exact::apply(
            &mut self.net,
            &self.blocks,
            &self.adjoints,
            eps,
            (rates, self.rate_scale),
            batch,
        );
    }

    /// The nudged phase(s) from the free states and EP's update.
    fn nudge_and_learn(&mut self, beta: f32, batch: usize) {
        let s = &self.settings;
        let symmetric = s.nudging == Nudging::Symmetric;
        if s.nudged_update == NudgedUpdate::Continuous {
            self.blocks
                .par_iter_mut()
                .for_each(|b| b.start_from_free(Phase::Nudged));
            return self.nudge_continuously(beta, batch);
        }
        let net = &self.net;
        self.blocks.par_iter_mut().for_each(|b| {
            b.start_from_free(Phase::Nudged);
            b.relax(net, Phase::Nudged, s.nudged_steps, s.epsilon, beta);
            if symmetric {
                b.start_from_free(Phase::NudgedNeg);
                b.relax(net, Phase::NudgedNeg, s.nudged_steps, s.epsilon, -beta);
                b.prepare_update(Phase::Nudged, Phase::NudgedNeg);
            } else {
                b.prepare_update(Phase::Nudged, Phase::Free);
            }
        });
        let (plus, minus, coef) = if symmetric {
            (Phase::Nudged, Phase::NudgedNeg, 1.0 / (2.0 * beta))
        } else {
            (Phase::Nudged, Phase::Free, 1.0 / beta)
        };
        let parts = self.blocks.len();
        learning::apply(
            &mut self.net,
            &self.blocks,
            plus,
            minus,
            coef * self.rate_scale,
            &self.settings.learning_rates,
            batch,
            parts,
        );
    }

    /// A bandit batch: the free phase sees only images; each example's action
    /// is chosen from the outputs, the environment rewards it, and the nudge
    /// acts on that action's output alone. Errors count greedy actions that
    /// earn nothing; the cost is 1/2 (s_a - r)^2 of the action taken.
    fn train_bandit(
        &mut self,
        data: &Dataset,
        indices: &[usize],
        rng: &mut ChaCha8Rng,
        beta: f32,
    ) -> Stats {
        self.free_phase(data, indices, false);
        let env = crate::bandit::Environment::new(&data.labels);
        let eps = crate::bandit::epsilon(&self.settings.explore, self.epoch, self.settings.epochs);
        let parts = self.blocks.len();
        let mut stats = Stats::default();
        self.last_actions.clear();
        for (part, b) in self.blocks.iter_mut().enumerate() {
            let r0 = row_range(indices.len(), parts, part).0;
            let out = b.free.last().expect("an output layer");
            let n = out.cols;
            for i in 0..b.rows {
                let e = indices[r0 + i];
                let predicted = &out.data[i * n..(i + 1) * n];
                let (t, m) = (b.target.row_mut(i), b.nudge_mask.row_mut(i));
                let o = crate::bandit::act(&env, e, predicted, eps, rng, t, m);
                stats.errors += o.greedy_wrong as usize;
                stats.cost += o.cost;
                self.rewards.0 += o.reward as f64;
                self.rewards.1 += 1;
                self.last_actions.push(o.action);
            }
            stats.examples += b.rows;
        }
        self.keep_particles(indices);
        self.nudge_and_learn(beta, indices.len());
        stats
    }
}

impl Learner for EqProp {
    fn train_batch(&mut self, data: &Dataset, indices: &[usize], rng: &mut ChaCha8Rng) -> Stats {
        let s = &self.settings;
        let beta = match s.nudging {
            Nudging::RandomSign if rng.random_bool(0.5) => -s.beta,
            _ => s.beta,
        };
        if s.task == crate::config::Task::Bandit {
            return self.train_bandit(data, indices, rng, beta);
        }
        self.free_phase(data, indices, true);
        self.keep_particles(indices);
        if self.settings.gradient == crate::config::Gradient::RecurrentBackprop {
            self.follow_exact_gradient(indices.len());
        } else {
            self.nudge_and_learn(beta, indices.len());
        }
        self.blocks.iter().fold(Stats::default(), |acc, b| Stats {
            examples: acc.examples + b.rows,
            errors: acc.errors + b.errors,
            cost: acc.cost + b.cost,
            ..Stats::default()
        })
    }

    fn start_epoch(&mut self, epoch: usize) {
        self.epoch = epoch;
    }

    fn set_rate_scale(&mut self, scale: f32) {
        self.rate_scale = scale;
    }

    fn take_mean_reward(&mut self) -> Option<f64> {
        let (sum, n) = std::mem::take(&mut self.rewards);
        (self.settings.task == crate::config::Task::Bandit && n > 0).then(|| sum / n as f64)
    }

    fn evaluate(&mut self, data: &Dataset) -> Stats {
        self.relax_all(data, None, None)
    }

    fn evaluate_warm(&mut self, data: &Dataset, split: usize) -> Option<Stats> {
        (split < self.warm.len()).then(|| self.relax_all(data, Some(split), None))
    }

    fn parameters(&self) -> Vec<NamedTensor<'_>> {
        crate::backprop::network_tensors(&self.net)
    }

    fn parameters_mut(&mut self) -> Vec<NamedTensorMut<'_>> {
        crate::backprop::network_tensors_mut(&mut self.net)
    }

    fn run_state(&self) -> Vec<NamedTensor<'_>> {
        self.particle_sets()
            .flat_map(|(name, set)| {
                set.iter().enumerate().map(move |(k, p)| {
                    NamedTensor::new(format!("{name}.s{}", k + 1), vec![p.rows, p.cols], &p.data)
                })
            })
            .collect()
    }

    fn run_state_is_bounded(&self) -> bool {
        true
    }

    fn run_state_mut(&mut self) -> Vec<NamedTensorMut<'_>> {
        let sets = std::iter::once(("particles", &mut self.particles))
            .chain(WARM_NAMES.into_iter().zip(&mut self.warm));
        sets.flat_map(|(name, set)| {
            set.iter_mut().enumerate().map(move |(k, p)| {
                let shape = vec![p.rows, p.cols];
                NamedTensorMut::new(format!("{name}.s{}", k + 1), shape, &mut p.data)
            })
        })
        .collect()
    }

    fn check_finite(&self, epoch: usize) -> Result<()> {
        self.net.check_finite(epoch)
    }

    fn flops_per_example(&self) -> (f64, f64) {
        self.settings.flops_per_example(&self.net.sizes)
    }

    fn flops_per_free_step(&self) -> f64 {
        flops_per_step(&self.net.sizes)
    }

    /// The hidden units' activity at the free fixed point from rest of the
    /// first 1,000 validation digits (a small share of an evaluation's cost).
    fn end_epoch(&mut self, val: &Dataset) -> Vec<(String, f64)> {
        self.diagnostics(val)
    }

    fn diagnostics(&mut self, data: &Dataset) -> Vec<(String, f64)> {
        let sizes = &self.net.sizes;
        let mut activity = Activity::new(&sizes[1..sizes.len() - 1]);
        let head = data.slice(0, data.len().min(ACTIVITY_EXAMPLES));
        self.relax_all(&head, None, Some(&mut activity));
        activity.metrics()
    }

    fn free_phase_residual(&self) -> Option<f64> {
        Some(self.last_free_change as f64)
    }

    fn take_free_steps_mean(&mut self) -> Option<f64> {
        let (sum, n) = std::mem::take(&mut self.free_steps);
        (n > 0).then(|| sum / n as f64)
    }

    fn describe(&self) -> String {
        self.settings.describe(&self.net.sizes)
    }
}

#[cfg(test)]
mod tests;

//! Run configuration: the presets of the paper, TOML files over them, validation.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How the output is nudged in the second phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Nudging {
    /// One nudged phase with beta's sign drawn at random each mini-batch (the paper).
    RandomSign,
    /// One nudged phase with +beta.
    Positive,
    /// Two nudged phases, +beta and -beta, contrasted with each other
    /// (Laborieux et al. 2021): the estimate's bias falls from O(beta) to O(beta^2).
    /// Scellier et al. (2023) call the same estimator centered EP, so
    /// `nudging = "centered"` reads as this.
    #[serde(alias = "centered")]
    Symmetric,
}

/// Which learning algorithm trains the network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Equilibrium Propagation (the EP keys apply).
    #[default]
    Eqprop,
    /// A feed-forward net of the same layers and units, trained by backprop and SGD
    /// (uses layers, learning_rates, epochs, batch_size, seed, shuffle).
    Backprop,
    /// Bandit baseline: stochastic units, the three-factor node-perturbation rule
    /// (uses layers, learning_rates, noise, epochs, batch_size, seed).
    NodePerturbation,
    /// The generative model of Bengio et al. (arXiv 1502.04156): layer pairs
    /// trained as denoising auto-encoders, inference by neural dynamics (see
    /// `generative`; uses layers, learning_rates, epochs, batch_size, seed and
    /// the generative keys).
    Generative,
}

/// How the generative model's encoder f_k and decoder g_k learn (M-step).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PairTraining {
    /// Each layer pair as an ordinary denoising auto-encoder: the pair's
    /// reconstruction error reaches its encoder through its own decoder, never
    /// another pair (the working model, DESIGN §7).
    #[default]
    Dae,
    /// Strictly local, as the paper's algorithm reads: the decoder fits
    /// g_k(corrupt(h_k)) to h_{k-1}, the encoder fits f_k(corrupt(h_{k-1})) to
    /// h_k, at the states that inference found; no gradient crosses a map.
    Local,
}

/// How EP's states move during a phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Relaxation {
    /// Every layer steps by epsilon from the previous state (the paper).
    #[default]
    Synchronous,
    /// Odd layers, then even layers, each set to the minimiser of the energy
    /// given its neighbours (Scellier et al. 2023); epsilon is not used.
    EvenOdd,
}

/// When EP's weight update is applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NudgedUpdate {
    /// Once, from the two equilibria (the paper).
    #[default]
    End,
    /// Step by step during the nudged phase: after each step t the weights change
    /// by the increment of rho_i rho_j, (alpha/beta)(s^{t+1} s^{t+1} - s^t s^t), the
    /// symmetrized STDP-like rule d(rho_i rho_j)/dt integrated as it happens.
    Continuous,
}

/// Which gradient an EP network follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gradient {
    /// EP's estimate: the contrast of the free and nudged equilibria (the paper).
    #[default]
    Ep,
    /// The exact gradient of the loss at the free fixed point, by recurrent
    /// backprop (an ablation: what the model costs, apart from EP's estimate).
    RecurrentBackprop,
}

/// What nudges EP's output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// The label: every output toward its one-hot target.
    #[default]
    Supervised,
    /// A reward: MNIST as a contextual bandit, only the chosen action's output
    /// nudged toward the reward it earned (see `bandit`).
    Bandit,
}

fn one() -> f32 {
    1.0
}

fn one_usize() -> usize {
    1
}

fn default_noise() -> f32 {
    0.1
}

fn default_explore() -> Vec<f32> {
    vec![0.2, 0.01]
}

/// Where EP runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Device {
    #[default]
    Cpu,
    /// An NVIDIA GPU (builds with the `cuda` feature).
    Cuda,
}

/// Everything that determines a run. `config.toml` in a run directory holds it in full.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The preset this configuration started from.
    pub preset: String,
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Layer sizes, input first, output (10 classes) last.
    pub layers: Vec<usize>,
    /// Synchronous steps of the free phase (also used for evaluation).
    pub free_steps: usize,
    /// Steps of the nudged phase.
    pub nudged_steps: usize,
    /// Step size of the dynamics.
    pub epsilon: f32,
    /// Nudging strength.
    pub beta: f32,
    /// One learning rate per weight matrix W_k (the bias of layer k+1 shares it).
    pub learning_rates: Vec<f32>,
    /// The rates fall linearly from `learning_rates` in the first epoch to this
    /// multiple of them in the last (1: constant, as the paper). EP, backprop and
    /// the generative model (its Adam rates) on the CPU.
    #[serde(default = "one")]
    pub final_rate_scale: f32,
    /// The last epoch at the full rates; the fall to `final_rate_scale` starts
    /// there (1: from the first epoch). A run can so be extended by a decay
    /// without changing its first epochs.
    #[serde(default = "one_usize")]
    pub rate_decay_start: usize,
    /// Multiplies the Glorot bound of every initial weight (1: the paper's init).
    /// Below about 0.5 the hidden-to-hidden couplings of a 500-500 net start
    /// with largest singular value under 1, where the energy is convex inside
    /// the box and the free phase does not lock units at 0 or 1.
    #[serde(default = "one")]
    pub init_gain: f32,
    pub nudging: Nudging,
    #[serde(default)]
    pub task: Task,
    /// Node perturbation: std of the noise added to every unit.
    #[serde(default = "default_noise")]
    pub noise: f32,
    /// Bandit only: epsilon of epsilon-greedy exploration in the first and the
    /// last epoch (linear in between).
    #[serde(default = "default_explore")]
    pub explore: Vec<f32>,
    #[serde(default)]
    pub nudged_update: NudgedUpdate,
    /// EP's estimate, or the exact gradient at the free fixed point.
    #[serde(default)]
    pub gradient: Gradient,
    #[serde(default)]
    pub relaxation: Relaxation,
    /// Stop a phase once a step changes no state by more than this (0: run every step).
    #[serde(default)]
    pub tolerance: f32,
    /// Each training example keeps its free-phase state between epochs.
    pub persistent_particles: bool,
    /// Also score validation and test with per-example states carried from one
    /// epoch's evaluation to the next (as the paper's code measures); the
    /// from-rest errors are reported either way.
    #[serde(default)]
    pub eval_warm: bool,
    /// Score validation and test every this many epochs (and always in the last);
    /// the epochs between log no validation or test numbers. Training does not
    /// depend on it: evaluation touches only its own states.
    #[serde(default = "one_usize")]
    pub eval_every: usize,
    /// Write the run state, checkpoint, metrics and curves every this many
    /// epochs, and after the last epoch of a run or of a time-limited sitting.
    /// A crash loses at most this many epochs less one; the 3h net's 423 MB
    /// state took up to about 1 s to write, 15% of its 6 s GPU epoch.
    #[serde(default = "one_usize")]
    pub checkpoint_every: usize,
    /// Also keep each saved epoch's parameters in `epochs/epoch-N/`
    /// (checkpoint.safetensors and config.toml: a run directory that `eval`,
    /// `sample` and `parzen` read), to pick an epoch after training.
    #[serde(default)]
    pub keep_checkpoints: bool,
    pub epochs: usize,
    pub batch_size: usize,
    pub seed: u64,
    /// Shuffle the training examples each epoch (the paper's code does not).
    pub shuffle: bool,
    /// Worker threads; results are bit-identical for the same thread count.
    pub threads: usize,
    /// Where EP runs (CPU results are bit-identical per thread count; the GPU's
    /// agree with them within float tolerance).
    #[serde(default)]
    pub device: Device,
    /// On the GPU: let cuBLAS use TF32 tensor cores for the once-per-batch
    /// GEMMs (input drive, update). Off: plain float32 everywhere.
    #[serde(default)]
    pub tf32: bool,
    /// Rows per thread when evaluating (no learning, so larger blocks are faster).
    pub eval_block: usize,
    /// Use only the first N training examples (0 = all).
    pub limit: usize,
    /// Use only the first N validation and test examples (0 = all).
    pub eval_limit: usize,
    /// Directory with the four IDX files ("" = the MNIST that ships in data/mnist).
    pub data: String,
    /// Generative model only (absent otherwise): per layer pair, the std of the
    /// Gaussian corruption of its input, relative to that layer's RMS over the
    /// batch (relative, so that larger codes earn nothing from the noise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corruption: Option<Vec<f32>>,
    /// Generative: Bernoulli samples averaged to corrupt the sigmoid top code
    /// before its decoder ("spike-like" noise; 0 = none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spike_samples: Option<usize>,
    /// Generative: iterations N of INFERENCE in training (0 = feed-forward codes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_steps: Option<usize>,
    /// Generative: step size delta of the target-propagation term of INFERENCE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_rate: Option<f32>,
    /// Generative: weight alpha of the top-down term g_{k+1}(h_{k+1}) - h_k.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_down: Option<f32>,
    /// Generative: how the layer pairs learn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair_training: Option<PairTraining>,
    /// Generative: samples drawn with the paper's sampler after every epoch for
    /// a validation Parzen estimate in the metrics (0 = none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch_parzen_samples: Option<usize>,
    /// Generative, ours (not the paper's): weight lambda of a penalty
    /// lambda/2 sum_{i != j} rho_ij^2 on the correlations of the top encoder's
    /// codes across each minibatch, so that the paper's diagonal prior fits
    /// them (0 = none, the paper).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_decorrelation: Option<f32>,
}

/// The generative model's settings, resolved (see the keys of [`Config`]).
#[derive(Clone, Debug, PartialEq)]
pub struct GenerativeSettings {
    pub corruption: Vec<f32>,
    pub spike_samples: usize,
    pub inference_steps: usize,
    pub inference_rate: f32,
    pub top_down: f32,
    pub pair_training: PairTraining,
    pub epoch_parzen_samples: usize,
    pub top_decorrelation: f32,
}

/// Names of the presets, in the order `plasticity presets` lists them.
pub const PRESETS: [&str; 11] = [
    "eqprop-mnist-1h",
    "eqprop-mnist-2h",
    "eqprop-mnist-3h",
    "eqprop-mnist-bandit",
    "backprop-mnist-1h",
    "backprop-mnist-2h",
    "backprop-mnist-3h",
    "backprop-mnist-bandit",
    "node-perturbation-mnist-bandit",
    "generative-mnist-2h",
    "generative-mnist-1h",
];

/// SGD rate of the backprop baselines (all layers): the best of 0.05, 0.1, 0.2
/// on 1h validation error (2.17%, 1.98%, 11.7%: at 0.2 hard-sigmoid units die).
pub const BACKPROP_RATE: f32 = 0.1;

pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The paper's hyperparameters (Scellier & Bengio 2017, Table 2), in the
/// effective form of the published code that produced its results.
///
/// The code's cost is |y - d|^2 without the 1/2 of the paper's C, so its
/// beta_code nudges like beta = 2 beta_code here, and its update
/// (alpha / beta_code) dE equals ours with the rates doubled. 1h is the code
/// exactly (beta 0.5 -> 1, rates 0.1, 0.05 -> 0.2, 0.1: validation 3.0% against
/// 3.8% with Table 2 taken literally). 2h and 3h nudge as the code does
/// (beta 1 -> 2) with Table 2's rates: with the doubled rates the 2h net did not
/// leave 90% error in its first 2,000 examples, and with beta = 1 neither.
/// The README lists these measurements.
pub fn preset(name: &str) -> Result<Config> {
    let base = |layers: Vec<usize>, free, nudged, beta, rates: Vec<f32>, epochs| Config {
        preset: name.to_string(),
        algorithm: Algorithm::Eqprop,
        layers,
        free_steps: free,
        nudged_steps: nudged,
        epsilon: 0.5,
        beta,
        learning_rates: rates,
        final_rate_scale: 1.0,
        rate_decay_start: 1,
        init_gain: 1.0,
        nudging: Nudging::RandomSign,
        nudged_update: NudgedUpdate::End,
        gradient: Gradient::Ep,
        task: Task::Supervised,
        noise: default_noise(),
        explore: default_explore(),
        relaxation: Relaxation::Synchronous,
        tolerance: 0.0,
        persistent_particles: true,
        eval_warm: true,
        eval_every: 1,
        checkpoint_every: 1,
        keep_checkpoints: false,
        epochs,
        batch_size: 20,
        seed: 1,
        shuffle: false,
        threads: default_threads(),
        device: Device::Cpu,
        tf32: false,
        eval_block: 250,
        limit: 0,
        eval_limit: 0,
        data: String::new(),
        corruption: None,
        spike_samples: None,
        inference_steps: None,
        inference_rate: None,
        top_down: None,
        pair_training: None,
        epoch_parzen_samples: None,
        top_decorrelation: None,
    };
    match name {
        "eqprop-mnist-1h" => Ok(base(vec![784, 500, 10], 20, 4, 1.0, vec![0.2, 0.1], 25)),
        "eqprop-mnist-2h" => Ok(base(
            vec![784, 500, 500, 10],
            100,
            6,
            2.0,
            vec![0.4, 0.1, 0.01],
            60,
        )),
        "eqprop-mnist-3h" => Ok(base(
            vec![784, 500, 500, 500, 10],
            500,
            8,
            2.0,
            vec![0.128, 0.032, 0.008, 0.002],
            500,
        )),
        // MNIST as a contextual bandit: the 1h settings, a reward nudge instead of the
        // label, and contexts as a bandit meets them: in a new random order each epoch,
        // and with no memory per image (persistent particles would need to recognise
        // an image seen before, which is the label's job in all but name).
        "eqprop-mnist-bandit" => Ok(Config {
            preset: name.to_string(),
            task: Task::Bandit,
            shuffle: true,
            persistent_particles: false,
            eval_warm: false,
            ..preset("eqprop-mnist-1h")?
        }),
        // Backprop on the same bandit: the upper bound for a learner that sees only rewards.
        "backprop-mnist-bandit" => Ok(Config {
            preset: name.to_string(),
            task: Task::Bandit,
            shuffle: true,
            ..preset("backprop-mnist-1h")?
        }),
        // The classic three-factor rule on the same bandit.
        "node-perturbation-mnist-bandit" => Ok(Config {
            preset: name.to_string(),
            algorithm: Algorithm::NodePerturbation,
            // The best of 1e-4, 3e-4, 1e-3 and 3e-3 (results/bandit/COMMAND).
            learning_rates: vec![1e-4, 1e-4],
            ..preset("eqprop-mnist-bandit")?
        }),
        // The paper's generative model (DESIGN §7): 784-1000 softplus-100 sigmoid,
        // INFERENCE with N = 15, delta = 0.1, alpha = 0.001, minibatch 100,
        // 20 epochs. Adam rates and corruption levels are ours (the paper gives none).
        "generative-mnist-2h" => Ok(Config {
            preset: name.to_string(),
            algorithm: Algorithm::Generative,
            layers: vec![784, 1000, 100],
            learning_rates: vec![1e-3, 1e-3],
            epochs: 20,
            batch_size: 100,
            persistent_particles: false,
            eval_warm: false,
            corruption: Some(vec![1.0, 0.5]),
            spike_samples: Some(3),
            inference_steps: Some(15),
            inference_rate: Some(0.1),
            top_down: Some(0.001),
            pair_training: Some(PairTraining::Dae),
            epoch_parzen_samples: Some(2000),
            top_decorrelation: Some(0.0),
            ..preset("eqprop-mnist-1h")?
        }),
        // One layer pair: a denoising auto-encoder whose code is the top layer.
        "generative-mnist-1h" => Ok(Config {
            preset: name.to_string(),
            layers: vec![784, 200],
            learning_rates: vec![1e-3],
            corruption: Some(vec![1.0]),
            ..preset("generative-mnist-2h")?
        }),
        // The baselines: EP's architecture and epochs, SGD on the same cost.
        "backprop-mnist-1h" | "backprop-mnist-2h" | "backprop-mnist-3h" => {
            let ep = preset(&name.replace("backprop", "eqprop"))?;
            Ok(Config {
                preset: name.to_string(),
                algorithm: Algorithm::Backprop,
                learning_rates: vec![BACKPROP_RATE; ep.layers.len() - 1],
                ..ep
            })
        }
        _ => Err(Error::Config(format!(
            "unknown preset `{name}`; known presets: {} (see `plasticity presets`)",
            PRESETS.join(", ")
        ))),
    }
}

impl Config {
    /// Loads a TOML file over a preset: the file's `preset` key (or `preset_name`
    /// when given) picks the base, then every other key overrides it.
    pub fn from_file(path: &Path, preset_name: Option<&str>) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io("cannot read config file", path, e))?;
        let file: toml::Table = toml::from_str(&text).map_err(|e| {
            Error::Config(format!(
                "config file {} is not valid TOML: {}",
                path.display(),
                e.message()
            ))
        })?;
        let name = match (preset_name, file.get("preset")) {
            (Some(n), _) => n.to_string(),
            (None, Some(toml::Value::String(s))) => s.clone(),
            (None, Some(_)) => {
                return Err(Error::Config(format!(
                    "config key `preset` in {} must be a string",
                    path.display()
                )));
            }
            (None, None) => PRESETS[0].to_string(),
        };
        let base = preset(&name)?;
        base.overlay(&file, &path.display().to_string())
    }

    /// Overrides this config's values with `table`'s, checking each key and type.
    pub fn overlay(&self, table: &toml::Table, source: &str) -> Result<Config> {
        let mut merged = toml::Table::try_from(self).expect("config serializes");
        for (key, value) in table {
            if key == "preset" {
                continue;
            }
            let Some(slot) = merged.get_mut(key) else {
                let known: Vec<&String> = merged.keys().collect();
                return Err(Error::Config(format!(
                    "unknown config key `{key}` in {source}; known keys: {}",
                    known
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            *slot = coerce(slot, value).ok_or_else(|| {
                Error::Config(format!(
                    "config key `{key}` in {source} must be {}, found {}",
                    describe(slot),
                    describe(value)
                ))
            })?;
        }
        let cfg: Config = toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| {
                Error::Config(format!("config in {source}: {}", e.message()))
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the values make sense together.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.layers.len() < 2 || self.layers.contains(&0) {
            return bad(format!(
                "layers = {:?}: need an input and an output size, all positive",
                self.layers
            ));
        }
        if !(self.init_gain.is_finite() && self.init_gain > 0.0) {
            return bad(format!(
                "init_gain = {} must be positive (1: Glorot's bound as is)",
                self.init_gain
            ));
        }
        if self.init_gain != 1.0 && self.algorithm == Algorithm::Generative {
            return bad(
                "init_gain is for the EP, backprop and node-perturbation nets; the generative \
                 model keeps its own init: remove it"
                    .into(),
            );
        }
        if self.rate_decay_start == 0 {
            return bad(
                "rate_decay_start = 0: epochs count from 1; use 1 to decay from the first".into(),
            );
        }
        if self.final_rate_scale != 1.0 {
            if !(self.final_rate_scale.is_finite() && self.final_rate_scale >= 0.0) {
                return bad(format!(
                    "final_rate_scale = {} must be 0 or positive",
                    self.final_rate_scale
                ));
            }
            let supported = matches!(
                self.algorithm,
                Algorithm::Eqprop | Algorithm::Backprop | Algorithm::Generative
            );
            if !supported || self.device != Device::Cpu {
                return bad(
                    "final_rate_scale (a decaying learning rate) is for algorithm = \"eqprop\", \
                     \"backprop\" or \"generative\" on device = \"cpu\"; remove it"
                        .into(),
                );
            }
        }
        if self.algorithm == Algorithm::Generative {
            return self.validate_generative();
        }
        if *self.layers.last().unwrap() != crate::data::CLASSES {
            return bad(format!(
                "layers = {:?}: the output layer must have {} units, one per class",
                self.layers,
                crate::data::CLASSES
            ));
        }
        if self.learning_rates.len() != self.layers.len() - 1 {
            return bad(format!(
                "learning_rates has {} entries but layers {:?} has {} weight matrices; give one rate per matrix",
                self.learning_rates.len(),
                self.layers,
                self.layers.len() - 1
            ));
        }
        if !(self.epsilon > 0.0 && self.epsilon <= 1.0) {
            return bad(format!("epsilon = {} must be in (0, 1]", self.epsilon));
        }
        if !self.beta.is_finite() || self.beta == 0.0 {
            return bad(format!("beta = {} must be finite and non-zero", self.beta));
        }
        if self.learning_rates.iter().any(|r| !r.is_finite()) {
            return bad("learning_rates must be finite".into());
        }
        self.validate_counts()?;
        if self.free_steps == 0 {
            return bad("free_steps must be at least 1".into());
        }
        if self.nudging == Nudging::Symmetric && self.nudged_update == NudgedUpdate::Continuous {
            return bad("nudged_update = \"continuous\" works with one nudged phase; use nudging = \"random-sign\" or \"positive\"".into());
        }
        let most_negative = match self.nudging {
            Nudging::Positive => self.beta,
            _ => -self.beta.abs(),
        };
        if self.relaxation == Relaxation::EvenOdd && 1.0 + most_negative <= 0.0 {
            return bad(format!(
                "relaxation = \"even-odd\" sets the nudged output to (drive + beta d) / (1 + beta), \
                 which needs 1 + beta > 0 for every sign used; with beta = {} and nudging {:?} \
                 lower |beta| below 1 or use nudging = \"positive\"",
                self.beta, self.nudging
            ));
        }
        if self.gradient == Gradient::RecurrentBackprop && self.task == Task::Bandit {
            return bad("gradient = \"recurrent-backprop\" is for task = \"supervised\"".into());
        }
        if self.task == Task::Bandit {
            if self.explore.len() != 2 || self.explore.iter().any(|e| !(0.0..=1.0).contains(e)) {
                return bad(format!(
                    "explore = {:?}: give [start, end], each in [0, 1]",
                    self.explore
                ));
            }
            if self.relaxation != Relaxation::Synchronous || self.nudged_update != NudgedUpdate::End
            {
                return bad("task = \"bandit\" needs relaxation = \"synchronous\" and nudged_update = \"end\"".into());
            }
        }
        if self.tolerance.is_nan() || self.tolerance < 0.0 {
            return bad(format!(
                "tolerance = {} must be 0 or positive",
                self.tolerance
            ));
        }
        Ok(())
    }

    /// The factor on every learning rate in `epoch` (1-based): 1 up to
    /// `rate_decay_start`, then linear to `final_rate_scale` in the last epoch.
    pub fn rate_scale(&self, epoch: usize) -> f32 {
        let start = self.rate_decay_start;
        if epoch <= start || self.epochs <= start {
            return 1.0;
        }
        let t = (epoch.min(self.epochs) - start) as f32 / (self.epochs - start) as f32;
        1.0 - (1.0 - self.final_rate_scale) * t
    }

    /// The checks every algorithm shares: the counts that must be positive, the thread cap.
    fn validate_counts(&self) -> Result<()> {
        for (name, v) in [
            ("batch_size", self.batch_size),
            ("threads", self.threads),
            ("eval_block", self.eval_block),
            ("eval_every", self.eval_every),
            ("checkpoint_every", self.checkpoint_every),
        ] {
            if v == 0 {
                return Err(Error::Config(format!("{name} must be at least 1")));
            }
        }
        if self.threads > 256 {
            return Err(Error::Config(format!(
                "threads = {} is more than 256",
                self.threads
            )));
        }
        Ok(())
    }

    fn validate_generative(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        let pairs = self.layers.len() - 1;
        let g = self.generative();
        if self.learning_rates.len() != pairs || g.corruption.len() != pairs {
            return bad(format!(
                "layers = {:?} has {pairs} layer pairs: give learning_rates and corruption one entry each",
                self.layers
            ));
        }
        if self
            .learning_rates
            .iter()
            .chain(&g.corruption)
            .any(|r| !r.is_finite() || *r < 0.0)
        {
            return bad("learning_rates and corruption must be finite and not negative".into());
        }
        if !(g.inference_rate.is_finite() && g.top_down.is_finite()) {
            return bad("inference_rate and top_down must be finite".into());
        }
        if !(g.top_decorrelation.is_finite() && g.top_decorrelation >= 0.0) {
            return bad("top_decorrelation must be finite and not negative (0 = off)".into());
        }
        self.validate_counts()?;
        if self.device != Device::Cpu {
            return bad("the generative model runs on the CPU only; use --device cpu".into());
        }
        Ok(())
    }

    /// The generative keys, with the paper's values where a config leaves one out.
    pub fn generative(&self) -> GenerativeSettings {
        GenerativeSettings {
            corruption: self
                .corruption
                .clone()
                .unwrap_or_else(|| vec![0.5; self.layers.len() - 1]),
            spike_samples: self.spike_samples.unwrap_or(3),
            inference_steps: self.inference_steps.unwrap_or(15),
            inference_rate: self.inference_rate.unwrap_or(0.1),
            top_down: self.top_down.unwrap_or(0.001),
            pair_training: self.pair_training.unwrap_or_default(),
            epoch_parzen_samples: self.epoch_parzen_samples.unwrap_or(2000),
            top_decorrelation: self.top_decorrelation.unwrap_or(0.0),
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serializes")
    }
}

/// `value` converted to `slot`'s type, where that is lossless (integer to float).
fn coerce(slot: &toml::Value, value: &toml::Value) -> Option<toml::Value> {
    use toml::Value as V;
    match (slot, value) {
        (V::Float(_), V::Integer(i)) => Some(V::Float(*i as f64)),
        (V::Integer(_), V::Integer(i)) if *i < 0 => None,
        (V::Array(s), V::Array(v)) => {
            let proto = s.first()?;
            v.iter()
                .map(|x| coerce(proto, x))
                .collect::<Option<Vec<_>>>()
                .map(V::Array)
        }
        (a, b) if std::mem::discriminant(a) == std::mem::discriminant(b) => Some(b.clone()),
        _ => None,
    }
}

fn describe(v: &toml::Value) -> String {
    use toml::Value as V;
    match v {
        V::String(_) => "a string".into(),
        V::Integer(i) if *i < 0 => "a negative integer".into(),
        V::Integer(_) => "a non-negative integer".into(),
        V::Float(_) => "a number".into(),
        V::Boolean(_) => "true or false".into(),
        V::Array(a) => match a.first() {
            Some(x) => format!("a list of {}s", describe(x).trim_start_matches("a ")),
            None => "a list".into(),
        },
        V::Datetime(_) => "a date".into(),
        V::Table(_) => "a table".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_follow_the_paper() {
        let p = preset("eqprop-mnist-2h").unwrap();
        assert_eq!(p.layers, vec![784, 500, 500, 10]);
        assert_eq!((p.free_steps, p.nudged_steps, p.epochs), (100, 6, 60));
        assert_eq!(p.learning_rates, vec![0.4, 0.1, 0.01]);
        assert_eq!(p.beta, 2.0);
        for name in PRESETS {
            preset(name).unwrap().validate().unwrap();
        }
        assert!(
            preset("nope")
                .unwrap_err()
                .to_string()
                .contains("unknown preset")
        );
    }

    #[test]
    fn overlay_checks_keys_and_types() {
        let base = preset("eqprop-mnist-1h").unwrap();
        let t: toml::Table = toml::from_str(
            "beta = 2\nepochs = 3\nlearning_rates = [1, 0.5]\nnudging = \"symmetric\"",
        )
        .unwrap();
        let c = base.overlay(&t, "t").unwrap();
        assert_eq!((c.beta, c.epochs, c.nudging), (2.0, 3, Nudging::Symmetric));
        assert_eq!(c.learning_rates, vec![1.0, 0.5]);
        let t: toml::Table = toml::from_str("betta = 2").unwrap();
        assert!(
            base.overlay(&t, "t")
                .unwrap_err()
                .to_string()
                .contains("unknown config key `betta`")
        );
        let t: toml::Table = toml::from_str("epochs = \"ten\"").unwrap();
        let e = base.overlay(&t, "t").unwrap_err().to_string();
        assert!(
            e.contains("`epochs`") && e.contains("must be a non-negative integer"),
            "{e}"
        );
        let t: toml::Table = toml::from_str("nudging = \"sideways\"").unwrap();
        assert!(base.overlay(&t, "t").is_err());
        // Centered EP (Scellier et al. 2023) is the symmetric estimator by another name.
        let t: toml::Table = toml::from_str("nudging = \"centered\"").unwrap();
        assert_eq!(base.overlay(&t, "t").unwrap().nudging, Nudging::Symmetric);
        let t: toml::Table = toml::from_str("learning_rates = [0.1]").unwrap();
        assert!(
            base.overlay(&t, "t")
                .unwrap_err()
                .to_string()
                .contains("one rate per matrix")
        );
        let t: toml::Table = toml::from_str("relaxation = \"even-odd\"").unwrap();
        let e = base.overlay(&t, "t").unwrap_err().to_string();
        assert!(e.contains("1 + beta > 0"), "{e}");
        let t: toml::Table =
            toml::from_str("relaxation = \"even-odd\"\nbeta = 0.5\ntolerance = 1e-3").unwrap();
        assert!(base.overlay(&t, "t").is_ok());
        let t: toml::Table =
            toml::from_str("nudged_update = \"continuous\"\nnudging = \"symmetric\"").unwrap();
        assert!(base.overlay(&t, "t").is_err());
        let back: Config = toml::from_str(&base.to_toml()).unwrap();
        assert_eq!(back, base);
    }

    #[test]
    fn a_rate_schedule_is_refused_where_no_learner_follows_it() {
        let with = |preset_name: &str, extra: &str| {
            let t: toml::Table =
                toml::from_str(&format!("final_rate_scale = 0.1\n{extra}")).unwrap();
            preset(preset_name).unwrap().overlay(&t, "t")
        };
        assert_eq!(with("eqprop-mnist-1h", "").unwrap().final_rate_scale, 0.1);
        assert!(with("backprop-mnist-1h", "").is_ok());
        assert!(with("generative-mnist-2h", "").is_ok());
        for (p, extra) in [
            ("node-perturbation-mnist-bandit", ""),
            ("eqprop-mnist-1h", "device = \"cuda\""),
        ] {
            let e = with(p, extra).unwrap_err().to_string();
            assert!(e.contains("final_rate_scale"), "{p} {extra}: {e}");
        }
        let t: toml::Table = toml::from_str("final_rate_scale = -1").unwrap();
        assert!(preset("eqprop-mnist-1h").unwrap().overlay(&t, "t").is_err());
        let t: toml::Table = toml::from_str("rate_decay_start = 0").unwrap();
        assert!(preset("eqprop-mnist-1h").unwrap().overlay(&t, "t").is_err());
        // Old run directories' config.toml lack the key: constant rates.
        let old = preset("eqprop-mnist-1h")
            .unwrap()
            .to_toml()
            .replace("final_rate_scale = 1.0\n", "")
            .replace("rate_decay_start = 1\n", "");
        let c: Config = toml::from_str(&old).unwrap();
        assert_eq!((c.final_rate_scale, c.rate_decay_start), (1.0, 1));
    }

    #[test]
    fn init_gain_is_checked_and_old_configs_read_as_one() {
        let with = |p: &str, v: &str| {
            let t: toml::Table = toml::from_str(&format!("init_gain = {v}")).unwrap();
            preset(p).unwrap().overlay(&t, "t")
        };
        assert_eq!(with("eqprop-mnist-2h", "0.5").unwrap().init_gain, 0.5);
        assert_eq!(with("backprop-mnist-2h", "0.5").unwrap().init_gain, 0.5);
        for v in ["0", "-0.5", "nan"] {
            let e = with("eqprop-mnist-1h", v).unwrap_err().to_string();
            assert!(e.contains("init_gain"), "{v}: {e}");
        }
        let e = with("generative-mnist-2h", "0.5").unwrap_err().to_string();
        assert!(e.contains("init_gain"), "{e}");
        let old = preset("eqprop-mnist-1h")
            .unwrap()
            .to_toml()
            .replace("init_gain = 1.0\n", "");
        let c: Config = toml::from_str(&old).unwrap();
        assert_eq!(c.init_gain, 1.0);
    }
}

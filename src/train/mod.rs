//! The training loop, written once for every learner: epochs, metrics,
//! checkpoints, resume, divergence checks, determinism.
//!
//! A learner plugs in through [`Learner`]: train on a batch, evaluate, name its
//! tensors. The loop knows nothing of what is inside.

pub mod checkpoint;

use crate::config::{Algorithm, Config, Device};
use crate::data::{self, Dataset, Splits};
use crate::eqprop::EqProp;
use crate::error::{Error, Result};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Sums over a set of examples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    pub examples: usize,
    pub errors: usize,
    /// Sum of the per-example cost.
    pub cost: f64,
    /// What `errors` counts out of, where that is not one per example (a
    /// generative model counts wrong pixels); 0 means `examples`.
    pub trials: usize,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.examples += o.examples;
        self.errors += o.errors;
        self.cost += o.cost;
        self.trials += o.trials;
    }
}

impl Stats {
    pub fn error_rate(&self) -> f64 {
        let out_of = if self.trials > 0 {
            self.trials
        } else {
            self.examples
        };
        self.errors as f64 / out_of.max(1) as f64
    }
    pub fn mean_cost(&self) -> f64 {
        self.cost / self.examples.max(1) as f64
    }
}

/// A tensor by name, for checkpoints.
pub struct NamedTensor<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: &'a [f32],
}

pub struct NamedTensorMut<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: &'a mut [f32],
}

impl<'a> NamedTensor<'a> {
    pub fn new(name: String, shape: Vec<usize>, data: &'a [f32]) -> Self {
        NamedTensor { name, shape, data }
    }
}

impl<'a> NamedTensorMut<'a> {
    pub fn new(name: String, shape: Vec<usize>, data: &'a mut [f32]) -> Self {
        NamedTensorMut { name, shape, data }
    }
}

/// What the training loop needs of a learning algorithm.
pub trait Learner {
    /// Learns from examples `indices` of `data`; returns the batch's free-phase
    /// (prediction) errors and cost, measured before the update.
    fn train_batch(&mut self, data: &Dataset, indices: &[usize], rng: &mut ChaCha8Rng) -> Stats;
    /// Scores every example of `data`; learns nothing.
    fn evaluate(&mut self, data: &Dataset) -> Stats;
    /// Scores split `split` (0 validation, 1 test) starting from state carried
    /// over from its last evaluation, for learners configured to keep one.
    fn evaluate_warm(&mut self, _data: &Dataset, _split: usize) -> Option<Stats> {
        None
    }
    /// The parameters, by name (the checkpoint).
    fn parameters(&self) -> Vec<NamedTensor<'_>>;
    fn parameters_mut(&mut self) -> Vec<NamedTensorMut<'_>>;
    /// Per-example state that resuming needs (e.g. persistent particles).
    fn run_state(&self) -> Vec<NamedTensor<'_>> {
        Vec::new()
    }
    fn run_state_mut(&mut self) -> Vec<NamedTensorMut<'_>> {
        Vec::new()
    }
    /// Whether the run state is states bounded by clipping (persistent
    /// particles), which `pack` may code at 8 bits; optimiser moments are not.
    fn run_state_is_bounded(&self) -> bool {
        false
    }
    /// Called before each epoch's first batch (1-based), for schedules.
    fn start_epoch(&mut self, _epoch: usize) {}
    /// Every learning rate times `scale` from now on (the config's
    /// `final_rate_scale` schedule; refused by validation for learners that
    /// ignore it).
    fn set_rate_scale(&mut self, _scale: f32) {}
    /// Called after each epoch's training and evaluation, before the
    /// checkpoint: finishes per-epoch state and returns metrics of the
    /// learner's own (named), measured on `val`.
    fn end_epoch(&mut self, _val: &Dataset) -> Vec<(String, f64)> {
        Vec::new()
    }
    /// Measurements of the learner's internal state on (the head of) `data`,
    /// reported by `plasticity eval` (EP: where its hidden units sit).
    fn diagnostics(&mut self, _data: &Dataset) -> Vec<(String, f64)> {
        Vec::new()
    }
    /// For reward-driven learners: mean reward per example since the last call.
    fn take_mean_reward(&mut self) -> Option<f64> {
        None
    }
    /// Brings the parameters and run state to the host (learners that keep
    /// them on a device), before checkpoints; reports a device failure.
    fn sync_host(&mut self) -> Result<()> {
        Ok(())
    }
    /// Err(Diverged) naming the first parameter that is NaN or inf.
    fn check_finite(&self, epoch: usize) -> Result<()>;
    /// Analytic FLOPs per training example and per evaluated example.
    fn flops_per_example(&self) -> (f64, f64);
    /// FLOPs of one free-phase step per example, for learners that relax.
    fn flops_per_free_step(&self) -> f64 {
        0.0
    }
    /// One line about the model, for the log.
    fn describe(&self) -> String;
    /// For learners that relax to a fixed point: the last free step's largest change.
    fn free_phase_residual(&self) -> Option<f64> {
        None
    }
    /// For learners that relax: mean free-phase steps per training example since
    /// the last call (fewer than configured when a tolerance stops phases early).
    fn take_free_steps_mean(&mut self) -> Option<f64> {
        None
    }
}

/// An error rate (a fraction) as a percentage for people: two decimals, more
/// below 0.01% (as many as the first nonzero digit needs), so that a run one
/// digit short of the paper's 0.00% (1 of 50,000 = 0.002%) never prints as if
/// it had reached it, and log-axis ticks there stay distinct.
pub fn percent(rate: f64) -> String {
    let p = 100.0 * rate;
    let decimals = if p > 0.0 && p < 0.01 {
        (-p.log10()).ceil() as usize
    } else {
        2
    };
    format!("{p:.decimals$}%")
}

/// `percent` of a rate that an epoch may lack (`eval_every`): "-" when absent.
pub fn percent_or_dash(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".into(), percent)
}

/// One line of metrics.jsonl. Errors are fractions in [0, 1].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    /// Free-phase errors on the training examples during the epoch (as the paper measures it).
    pub train_error: f64,
    /// Validation and test (absent in epochs that `eval_every` skips).
    pub val_error: Option<f64>,
    pub test_error: Option<f64>,
    /// Mean 1/2 |output - target|^2 at the free fixed points of the epoch.
    pub train_cost: f64,
    pub val_cost: Option<f64>,
    pub test_cost: Option<f64>,
    /// With `eval_warm`: errors when each example's free phase starts from its
    /// fixed point of the previous epoch (the protocol of the paper's code).
    pub val_error_warm: Option<f64>,
    pub test_error_warm: Option<f64>,
    /// Largest state change in the last free step of the epoch's last batch
    /// (how far from a fixed point the free phase stopped), for learners that relax.
    pub free_phase_residual: Option<f64>,
    /// Mean free-phase steps per training example in the epoch.
    #[serde(default)]
    pub free_steps_mean: Option<f64>,
    /// Bandit: mean reward per training example in the epoch (exploration included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_reward: Option<f64>,
    /// Training and evaluation together.
    pub epoch_seconds: f64,
    pub train_seconds: f64,
    /// Training throughput (evaluation excluded).
    pub examples_per_second: f64,
    /// Achieved GFLOP/s of the training part (analytic FLOP count).
    pub train_gflops: f64,
    /// Metrics of a learner's own (`Learner::end_epoch`), e.g. the generative
    /// model's log p(x, h) and code statistics.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, f64>,
}

impl EpochMetrics {
    /// The metrics less the wall-clock fields, for determinism checks.
    pub fn without_timings(&self) -> EpochMetrics {
        EpochMetrics {
            epoch_seconds: 0.0,
            train_seconds: 0.0,
            examples_per_second: 0.0,
            train_gflops: 0.0,
            ..self.clone()
        }
    }
}

/// Progress reports from the loop; the binary draws them, tests ignore them.
pub trait Progress {
    fn start(&mut self, _description: &str, _first_epoch: usize, _epochs: usize) {}
    fn epoch_start(&mut self, _epoch: usize, _examples: usize) {}
    fn batch_done(&mut self, _examples_done: usize, _errors_so_far: usize) {}
    fn evaluating(&mut self, _split: &str) {}
    fn epoch_end(&mut self, _metrics: &EpochMetrics) {}
}

/// A `Progress` that reports nothing.
pub struct Silent;
impl Progress for Silent {}

pub const CONFIG_FILE: &str = "config.toml";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const STATE_FILE: &str = "run_state.safetensors";
/// With `keep_checkpoints`: where each saved epoch's run directory goes.
pub const KEPT_DIR: &str = "epochs";
pub const CURVE_FILE: &str = "learning_curve.png";
/// The generative model's validation Parzen per epoch (`parzen_val`).
pub const PARZEN_CURVE_FILE: &str = "parzen_curve.png";

/// The data a config asks for, with `limit` and `eval_limit` applied.
pub fn load_data(cfg: &Config) -> Result<Splits> {
    let dir = if cfg.data.is_empty() {
        data::default_dir()
    } else {
        PathBuf::from(&cfg.data)
    };
    let mut s = data::load(&dir)?;
    let cut = |d: &mut Dataset, n: usize| {
        if n > 0 && n < d.len() {
            d.split_off(n);
        }
    };
    cut(&mut s.train, cfg.limit);
    cut(&mut s.val, cfg.eval_limit);
    cut(&mut s.test, cfg.eval_limit);
    if s.train.features() != cfg.layers[0] {
        return Err(Error::Config(format!(
            "the data in {} has {} pixels per image but the network's input layer has {}; \
             set layers[0] = {} in the config",
            dir.display(),
            s.train.features(),
            cfg.layers[0],
            s.train.features()
        )));
    }
    Ok(s)
}

/// The learner a config describes.
/// `counts`: training, validation and test examples.
pub fn build_learner(cfg: &Config, counts: [usize; 3]) -> Result<Box<dyn Learner + Send>> {
    Ok(match (cfg.algorithm, cfg.device) {
        (Algorithm::Eqprop, Device::Cpu) => Box::new(EqProp::new(cfg, counts)),
        (Algorithm::Backprop, Device::Cpu) => Box::new(crate::backprop::Backprop::new(cfg)),
        (Algorithm::NodePerturbation, Device::Cpu) => {
            Box::new(crate::node_perturbation::NodePerturbation::new(cfg))
        }
        #[cfg(feature = "cuda")]
        (Algorithm::Eqprop, Device::Cuda) => Box::new(crate::cuda::CudaEqProp::new(cfg, counts)?),
        #[cfg(not(feature = "cuda"))]
        (Algorithm::Eqprop, Device::Cuda) => {
            return Err(Error::Device(
                "--device cuda: this build has no GPU support; rebuild with \
                 `cargo build --release --features cuda`, or use --device cpu"
                    .into(),
            ));
        }
        (Algorithm::Generative, Device::Cpu) => Box::new(crate::generative::Generative::new(cfg)),
        (
            Algorithm::Backprop | Algorithm::NodePerturbation | Algorithm::Generative,
            Device::Cuda,
        ) => {
            return Err(Error::Config(
                "the baselines run on the CPU only; use --device cpu".into(),
            ));
        }
    })
}

/// A rayon pool of `threads` workers, or a plain error naming the count.
pub fn thread_pool(threads: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::Config(format!("cannot start {threads} threads: {e}")))
}

/// Trains `cfg` into `dir`. With `resume`, continues the run in `dir` from its
/// last completed epoch (its config.toml rules; `cfg.epochs` may extend it).
/// Without it, refuses a directory that already holds a run unless `force`.
/// With `time_limit`, starts no epoch that would end past it (judged by the
/// longest epoch so far), leaving the run to be resumed: for machines lent by
/// the hour.
pub fn train(
    cfg: &Config,
    dir: &Path,
    resume: bool,
    force: bool,
    time_limit: Option<Duration>,
    progress: &mut (dyn Progress + Send),
) -> Result<Vec<EpochMetrics>> {
    let started = Instant::now();
    let splits = load_data(cfg)?;
    let pool = thread_pool(cfg.threads)?;
    pool.install(|| {
        let counts = [splits.train.len(), splits.val.len(), splits.test.len()];
        let mut learner = build_learner(cfg, counts)?;
        let history = if resume {
            resume_from(dir, learner.as_mut())?
        } else {
            prepare_dir(dir, force)?;
            Vec::new()
        };
        std::fs::write(dir.join(CONFIG_FILE), cfg.to_toml()).map_err(|e| unwritable(dir, e))?;
        let sitting = Sitting {
            started,
            time_limit,
        };
        run_epochs(
            cfg,
            dir,
            learner.as_mut(),
            &splits,
            history,
            sitting,
            progress,
        )
    })
}

fn unwritable(dir: &Path, e: std::io::Error) -> Error {
    Error::Checkpoint(format!(
        "cannot write to run directory {} ({e}); choose a writable --out",
        dir.display()
    ))
}

fn prepare_dir(dir: &Path, force: bool) -> Result<()> {
    if dir.join(STATE_FILE).exists() && !force {
        return Err(Error::Checkpoint(format!(
            "{} already holds a run; add --resume to continue it, --force to start it over, \
             or choose another --out",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| unwritable(dir, e))?;
    // Probe writability now rather than after the first epoch.
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"").map_err(|e| unwritable(dir, e))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

fn resume_from(dir: &Path, learner: &mut (dyn Learner + Send)) -> Result<Vec<EpochMetrics>> {
    let state = checkpoint::Loaded::read(&dir.join(STATE_FILE))?;
    state.restore(learner.parameters_mut())?;
    state.restore(learner.run_state_mut())?;
    let meta = state.metadata();
    let history: Vec<EpochMetrics> = meta
        .get("metrics")
        .and_then(|m| serde_json::from_str(m).ok())
        .ok_or_else(|| {
            Error::Checkpoint(format!(
                "{} lacks its metrics; the run cannot be resumed, train it again",
                dir.join(STATE_FILE).display()
            ))
        })?;
    Ok(history)
}

/// Reads a run directory's config.toml.
pub fn read_run_config(dir: &Path) -> Result<Config> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::Checkpoint(format!(
            "cannot read {} ({e}); is {} a run directory made by `plasticity train`?",
            path.display(),
            dir.display()
        ))
    })?;
    let cfg: Config = toml::from_str(&text)
        .map_err(|e| Error::Config(format!("{} is malformed: {}", path.display(), e.message())))?;
    cfg.validate()?;
    Ok(cfg)
}

/// When this call of `train` began, and how long it may take.
struct Sitting {
    started: Instant,
    time_limit: Option<Duration>,
}

impl Sitting {
    /// Whether another epoch as long as `longest` would end past the limit.
    fn out_of_time(&self, longest: Option<Duration>) -> bool {
        match (self.time_limit, longest) {
            (Some(limit), Some(longest)) => self.started.elapsed() + longest > limit,
            _ => false,
        }
    }
}

fn run_epochs(
    cfg: &Config,
    dir: &Path,
    learner: &mut (dyn Learner + Send),
    splits: &Splits,
    mut history: Vec<EpochMetrics>,
    sitting: Sitting,
    progress: &mut (dyn Progress + Send),
) -> Result<Vec<EpochMetrics>> {
    let n = splits.train.len();
    let (train_flops, _) = learner.flops_per_example();
    progress.start(&learner.describe(), history.len() + 1, cfg.epochs);
    let mut order: Vec<usize> = (0..n).collect();
    let mut longest_epoch = None;
    for epoch in history.len() + 1..=cfg.epochs {
        // Each epoch's randomness depends only on (seed, epoch): resume is exact.
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(epoch as u64);
        if cfg.shuffle {
            order.sort_unstable();
            order.shuffle(&mut rng);
        }
        progress.epoch_start(epoch, n);
        learner.start_epoch(epoch);
        learner.set_rate_scale(cfg.rate_scale(epoch));
        let t0 = Instant::now();
        let mut train = Stats::default();
        for batch in order.chunks(cfg.batch_size) {
            let s = learner.train_batch(&splits.train, batch, &mut rng);
            if !s.cost.is_finite() {
                learner.sync_host()?;
                learner.check_finite(epoch)?;
                return Err(Error::Diverged {
                    epoch,
                    layer: "output".into(),
                    what: "state",
                });
            }
            train += s;
            progress.batch_done(train.examples, train.errors);
        }
        learner.sync_host()?;
        learner.check_finite(epoch)?;
        let train_seconds = t0.elapsed().as_secs_f64();
        let scored = epoch % cfg.eval_every == 0 || epoch == cfg.epochs;
        let (val, test, val_warm, test_warm) = if scored {
            progress.evaluating("validation");
            let val = learner.evaluate(&splits.val);
            progress.evaluating("test");
            let test = learner.evaluate(&splits.test);
            let val_warm = learner.evaluate_warm(&splits.val, 0);
            let test_warm = learner.evaluate_warm(&splits.test, 1);
            (Some(val), Some(test), val_warm, test_warm)
        } else {
            (None, None, None, None)
        };
        let free_steps_mean = learner.take_free_steps_mean();
        let extra = learner.end_epoch(&splits.val).into_iter().collect();
        // A tolerance may stop free phases early: count the FLOPs of the steps taken.
        let train_flops = match free_steps_mean {
            Some(mean) => {
                train_flops - (cfg.free_steps as f64 - mean) * learner.flops_per_free_step()
            }
            None => train_flops,
        };
        let m = EpochMetrics {
            epoch,
            train_error: train.error_rate(),
            val_error: val.map(|s| s.error_rate()),
            test_error: test.map(|s| s.error_rate()),
            train_cost: train.mean_cost(),
            val_cost: val.map(|s| s.mean_cost()),
            test_cost: test.map(|s| s.mean_cost()),
            val_error_warm: val_warm.map(|s| s.error_rate()),
            test_error_warm: test_warm.map(|s| s.error_rate()),
            free_phase_residual: learner.free_phase_residual(),
            free_steps_mean,
            mean_reward: learner.take_mean_reward(),
            epoch_seconds: t0.elapsed().as_secs_f64(),
            train_seconds,
            examples_per_second: n as f64 / train_seconds,
            train_gflops: train_flops * n as f64 / train_seconds / 1e9,
            extra,
        };
        history.push(m.clone());
        // Judged now, so that a sitting's last epoch is saved.
        let out_of_time = sitting.out_of_time(longest_epoch.max(Some(t0.elapsed())));
        let (save, last) = checkpoint_due(epoch, cfg.epochs, cfg.checkpoint_every, out_of_time);
        if save {
            save_epoch(cfg, dir, learner, &history)?;
        }
        longest_epoch = longest_epoch.max(Some(t0.elapsed()));
        progress.epoch_end(&m);
        if last {
            break;
        }
    }
    Ok(history)
}

/// Whether to save after `epoch`, and whether it is the last of this sitting:
/// every `every` epochs, and always the run's last epoch and one after which
/// the time is up.
fn checkpoint_due(epoch: usize, epochs: usize, every: usize, out_of_time: bool) -> (bool, bool) {
    let last = epoch >= epochs || out_of_time;
    (last || epoch.is_multiple_of(every), last)
}

fn save_epoch(
    cfg: &Config,
    dir: &Path,
    learner: &(dyn Learner + Send),
    history: &[EpochMetrics],
) -> Result<()> {
    let epoch = history.len();
    let mut meta = HashMap::new();
    meta.insert("epoch".to_string(), epoch.to_string());
    meta.insert("preset".to_string(), cfg.preset.clone());
    meta.insert("format".to_string(), "plasticity".to_string());
    // The run state is the commit point; the checkpoint and metrics follow it.
    let mut state_meta = meta.clone();
    state_meta.insert(
        "metrics".to_string(),
        serde_json::to_string(history).expect("metrics serialize"),
    );
    let state = learner.run_state();
    let names: Vec<&str> = match learner.run_state_is_bounded() {
        true => state.iter().map(|t| t.name.as_str()).collect(),
        false => Vec::new(),
    };
    state_meta.insert(checkpoint::CODABLE_KEY.to_string(), names.join(","));
    let mut all = learner.parameters();
    all.extend(state);
    checkpoint::save(&dir.join(STATE_FILE), &all, state_meta)?;
    checkpoint::save(&dir.join(CHECKPOINT_FILE), &learner.parameters(), meta)?;
    if cfg.keep_checkpoints {
        let kept = dir.join(KEPT_DIR).join(format!("epoch-{epoch}"));
        std::fs::create_dir_all(&kept).map_err(|e| unwritable(&kept, e))?;
        for file in [CHECKPOINT_FILE, CONFIG_FILE] {
            std::fs::copy(dir.join(file), kept.join(file))
                .map_err(|e| Error::io("cannot keep", &kept.join(file), e))?;
        }
    }
    let lines: String = history
        .iter()
        .map(|m| serde_json::to_string(m).expect("metrics serialize") + "\n")
        .collect();
    checkpoint::write_atomic(&dir.join(METRICS_FILE), lines.as_bytes())?;
    draw_curves(dir, &cfg.preset, history)
}

/// The learning curve, and the generative model's per-epoch sample quality
/// where its metrics carry one.
fn draw_curves(dir: &Path, preset: &str, history: &[EpochMetrics]) -> Result<()> {
    crate::plot::learning_curve(&dir.join(CURVE_FILE), preset, history)?;
    let parzen: Vec<(f64, f64)> = history
        .iter()
        .filter_map(|m| Some((m.epoch as f64, *m.extra.get("parzen_val")?)))
        .collect();
    if parzen.is_empty() {
        return Ok(());
    }
    crate::plot::linear_chart(
        &dir.join(PARZEN_CURVE_FILE),
        &format!("{preset}: the paper's sampler per epoch"),
        "epoch",
        "validation Parzen log-likelihood (nats)",
        &[crate::plot::Series {
            name: "validation",
            points: parzen,
            color: crate::plot::PALETTE[1],
        }],
    )
}

/// A checkpoint scored on one split (`evaluate_run`).
pub struct Evaluation {
    pub stats: Stats,
    /// The epoch the checkpoint was written after.
    pub epoch: usize,
    pub free_steps: usize,
    /// `Learner::diagnostics` on the split.
    pub diagnostics: Vec<(String, f64)>,
}

/// Evaluates the checkpoint in run directory `dir` on one split.
/// `free_steps` overrides the run's free-phase length.
pub fn evaluate_run(
    dir: &Path,
    split: &str,
    threads: Option<usize>,
    free_steps: Option<usize>,
) -> Result<Evaluation> {
    let mut cfg = read_run_config(dir)?;
    if let Some(t) = threads {
        cfg.threads = t;
    }
    if let Some(n) = free_steps {
        if n == 0 {
            return Err(Error::Config("--free-steps must be at least 1".into()));
        }
        cfg.free_steps = n;
    }
    let splits = load_data(&Config {
        eval_limit: 0,
        ..cfg.clone()
    })?;
    let data = splits.named(split)?;
    let ckpt = checkpoint::Loaded::read(&dir.join(CHECKPOINT_FILE))?;
    let epoch = ckpt
        .metadata()
        .get("epoch")
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    let pool = thread_pool(cfg.threads)?;
    pool.install(|| {
        let mut learner = build_learner(
            &Config {
                persistent_particles: false,
                eval_warm: false,
                ..cfg.clone()
            },
            [0, 0, 0],
        )?;
        ckpt.restore(learner.parameters_mut())?;
        Ok(Evaluation {
            stats: learner.evaluate(data),
            epoch,
            free_steps: cfg.free_steps,
            diagnostics: learner.diagnostics(data),
        })
    })
}

/// Several runs on one chart: test error per epoch into `out` (PNG) and, where
/// runs report it, mean reward per epoch into `out` with `_reward` added.
/// Returns a table of their last epochs. Runs are named by their directories
/// (variants and seeds of one preset differ only there).
pub fn overlay(dirs: &[PathBuf], out: &Path) -> Result<String> {
    use crate::plot::{PALETTE, Series, line_chart, linear_chart};
    let runs: Vec<(String, Vec<EpochMetrics>)> = dirs
        .iter()
        .map(|d| {
            read_run_config(d)?;
            let name = d.file_name().unwrap_or(d.as_os_str());
            Ok((name.to_string_lossy().into_owned(), read_metrics(d)?))
        })
        .collect::<Result<_>>()?;
    let mut table = format!(
        "{:<48} {:>6} {:>8} {:>8} {:>8} {:>8}\n",
        "run", "epochs", "train", "val", "test", "reward"
    );
    for (name, h) in &runs {
        if let Some(m) = h.last() {
            let reward = m.mean_reward.map_or("-".into(), |r| format!("{r:.4}"));
            table += &format!(
                "{:<48} {:>6} {:>8} {:>8} {:>8} {:>8}\n",
                name,
                m.epoch,
                percent(m.train_error),
                percent_or_dash(m.val_error),
                percent_or_dash(m.test_error),
                reward
            );
        }
    }
    let series = |pick: fn(&EpochMetrics) -> Option<f64>| -> Vec<Series<'_>> {
        runs.iter()
            .enumerate()
            .filter(|(_, (_, h))| h.iter().any(|m| pick(m).is_some()))
            .map(|(i, (name, h))| Series {
                name,
                points: h
                    .iter()
                    .filter_map(|m| pick(m).map(|v| (m.epoch as f64, v)))
                    .collect(),
                color: PALETTE[i % PALETTE.len()],
            })
            .collect()
    };
    line_chart(
        out,
        "test error per epoch",
        "epoch",
        "test error",
        &series(|m| m.test_error),
    )?;
    let rewards = series(|m| m.mean_reward);
    if !rewards.is_empty() {
        let stem = out
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("overlay");
        let path = out.with_file_name(format!("{stem}_reward.png"));
        linear_chart(
            &path,
            "mean reward per epoch (training, exploration included)",
            "epoch",
            "mean reward",
            &rewards,
        )?;
    }
    Ok(table)
}

fn read_metrics(dir: &Path) -> Result<Vec<EpochMetrics>> {
    let path = dir.join(METRICS_FILE);
    let text =
        std::fs::read_to_string(&path).map_err(|e| Error::io("cannot read metrics", &path, e))?;
    text.lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<Vec<EpochMetrics>, _>>()
        .map_err(|e| Error::Checkpoint(format!("{} is malformed: {e}", path.display())))
}

/// Redraws a run directory's learning curve from its metrics.jsonl.
pub fn replot(dir: &Path) -> Result<()> {
    let cfg = read_run_config(dir)?;
    let history = read_metrics(dir)?;
    draw_curves(dir, &cfg.preset, &history)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Matrix;
    use rand::RngExt;

    #[test]
    fn a_nonzero_error_rate_never_prints_as_zero() {
        assert_eq!(percent(0.0), "0.00%");
        assert_eq!(percent(0.0183), "1.83%");
        assert_eq!(percent(1.0), "100.00%");
        assert_eq!(percent(1.0 / 50_000.0), "0.002%");
        assert_eq!(percent(3.0 / 50_000.0), "0.006%");
        assert_eq!(percent(1.0 / 1_000_000.0), "0.0001%");
        assert_eq!(percent(0.00005), "0.005%");
        assert_eq!(percent(0.0001), "0.01%");
    }

    #[test]
    fn metrics_lines_read_with_and_without_scores() {
        // A line as every run wrote it before `eval_every`, and one of an unscored epoch.
        let scored = r#"{"epoch":3,"train_error":0.1,"val_error":0.2,"test_error":0.3,"train_cost":1.0,"val_cost":2.0,"test_cost":3.0,"val_error_warm":null,"test_error_warm":null,"free_phase_residual":null,"epoch_seconds":1.0,"train_seconds":1.0,"examples_per_second":1.0,"train_gflops":1.0}"#;
        let m: EpochMetrics = serde_json::from_str(scored).unwrap();
        assert_eq!((m.val_error, m.test_cost), (Some(0.2), Some(3.0)));
        let unscored = scored
            .replace(r#""val_error":0.2"#, r#""val_error":null"#)
            .replace(r#""test_cost":3.0"#, r#""test_cost":null"#);
        let m: EpochMetrics = serde_json::from_str(&unscored).unwrap();
        assert_eq!((m.val_error, m.test_cost), (None, None));
        assert_eq!(
            serde_json::from_str::<EpochMetrics>(&serde_json::to_string(&m).unwrap()).unwrap(),
            m
        );
    }

    #[test]
    fn checkpoints_fall_every_n_epochs_and_at_every_end() {
        let saved = |every, out_of_time: fn(usize) -> bool| -> Vec<usize> {
            let mut saved = Vec::new();
            for epoch in 1..=7 {
                let (save, last) = checkpoint_due(epoch, 7, every, out_of_time(epoch));
                if save {
                    saved.push(epoch);
                }
                if last {
                    break;
                }
            }
            saved
        };
        assert_eq!(saved(1, |_| false), [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(saved(3, |_| false), [3, 6, 7]);
        assert_eq!(saved(3, |e| e == 4), [3, 4]);
        assert_eq!(saved(10, |e| e == 1), [1]);
        assert_eq!(percent_or_dash(None), "-");
        assert_eq!(percent_or_dash(Some(0.5)), "50.00%");
    }

    #[test]
    fn the_rate_schedule_falls_linearly_to_the_final_scale() {
        let cfg = Config {
            epochs: 5,
            final_rate_scale: 0.2,
            ..crate::config::preset("eqprop-mnist-1h").unwrap()
        };
        let scales: Vec<f32> = (1..=5).map(|e| cfg.rate_scale(e)).collect();
        for (got, want) in scales.iter().zip([1.0, 0.8, 0.6, 0.4, 0.2]) {
            assert!((got - want).abs() < 1e-6, "{scales:?}");
        }
        let constant = crate::config::preset("eqprop-mnist-1h").unwrap();
        assert!((1..=25).all(|e| constant.rate_scale(e) == 1.0));
        // A late start keeps the first epochs at full rates, exactly.
        let late = Config {
            epochs: 7,
            rate_decay_start: 3,
            ..cfg
        };
        let scales: Vec<f32> = (1..=7).map(|e| late.rate_scale(e)).collect();
        for (got, want) in scales.iter().zip([1.0, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2]) {
            assert!((got - want).abs() < 1e-6, "{scales:?}");
        }
        assert!(scales[..3].iter().all(|&s| s == 1.0));
    }

    /// From the same start, a first update at scale 1/2 is half the one at scale 1,
    /// for each learner that takes the schedule.
    #[test]
    fn the_rate_scale_multiplies_each_learners_update() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let images = Matrix::from_vec(
            20,
            16,
            (0..320).map(|_| rng.random_range(0.0..1.0)).collect(),
        );
        let data = Dataset {
            images,
            labels: (0..20).map(|i| (i % 10) as u8).collect(),
        };
        let idx: Vec<usize> = (0..20).collect();
        for preset in [
            "eqprop-mnist-1h",
            "backprop-mnist-1h",
            "generative-mnist-2h",
        ] {
            let cfg = Config {
                layers: vec![16, 12, 10],
                threads: 1,
                ..crate::config::preset(preset).unwrap()
            };
            let first_update = |scale: f32| -> Vec<f32> {
                let mut l = build_learner(&cfg, [20, 0, 0]).unwrap();
                let before: Vec<f32> = l
                    .parameters()
                    .iter()
                    .flat_map(|t| t.data.to_vec())
                    .collect();
                l.set_rate_scale(scale);
                // Same seed: the same sign of beta for EP.
                l.train_batch(&data, &idx, &mut ChaCha8Rng::seed_from_u64(2));
                let after = l
                    .parameters()
                    .iter()
                    .flat_map(|t| t.data.to_vec())
                    .collect::<Vec<_>>();
                after.iter().zip(&before).map(|(a, b)| a - b).collect()
            };
            let (full, half) = (first_update(1.0), first_update(0.5));
            let norm = full.iter().map(|d| d * d).sum::<f32>().sqrt();
            assert!(norm > 1e-4, "{preset}: no update");
            let off = full
                .iter()
                .zip(&half)
                .map(|(f, h)| (0.5 * f - h).powi(2))
                .sum::<f32>()
                .sqrt();
            assert!(off < 1e-3 * norm, "{preset}: {off} vs {norm}");
        }
    }
}

//! EP on an NVIDIA GPU (Cargo feature `cuda`): the same model, settings,
//! checkpoints and training loop as the CPU learner, another backend.
//!
//! CUDA is loaded at run time (cudarc, dynamic loading), so building with the
//! feature needs no toolkit, and a machine without a GPU gets one plain error.
//! What runs on the device is in `engine` (memory, graphs) and kernels.cu.

pub mod bench;
mod engine;

pub use crate::cuda_layout::{MAX_BATCH, ResidentPlan, Shape};
pub use engine::{Engine, Relax, Set};

use crate::config::{Config, NudgedUpdate, Nudging};
use crate::data::Dataset;
use crate::eqprop::{Network, Settings};
use crate::error::{Error, Result};
use crate::tensor::Matrix;
use crate::train::{Learner, NamedTensor, NamedTensorMut, Stats};
use cudarc::driver::{CudaContext, CudaGraph};
use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

pub(crate) fn device_error(e: impl std::fmt::Debug) -> Error {
    Error::Device(format!("CUDA failed: {e:?}"))
}

/// GPU 0, or a plain message saying what is missing.
pub fn open() -> Result<Arc<CudaContext>> {
    // SAFETY: these only try to load the shared libraries.
    let (driver, blas, nvrtc) = unsafe {
        (
            cudarc::driver::sys::is_culib_present(),
            cudarc::cublas::sys::is_culib_present(),
            cudarc::nvrtc::sys::is_culib_present(),
        )
    };
    let missing = |what: &str| {
        Err(Error::Device(format!(
            "--device cuda: {what} was not found on this machine; it needs an NVIDIA GPU with \
             its driver and the CUDA 13 runtime (cuBLAS, NVRTC) on the library path, \
             or use --device cpu"
        )))
    };
    if !driver {
        return missing("the NVIDIA driver (libcuda.so)");
    }
    if !blas {
        return missing("cuBLAS (libcublas.so)");
    }
    if !nvrtc {
        return missing("NVRTC (libnvrtc.so)");
    }
    match CudaContext::device_count() {
        Ok(n) if n > 0 => CudaContext::new(0).map_err(device_error),
        _ => missing("a CUDA GPU"),
    }
}

/// The settings this backend does not implement, as a plain error.
pub fn check_supported(cfg: &Config) -> Result<()> {
    let refuse = |what: &str| {
        Err(Error::Config(format!(
            "--device cuda does not support {what}; use --device cpu for it"
        )))
    };
    if cfg.batch_size > MAX_BATCH {
        return refuse(&format!(
            "batches over {MAX_BATCH} (batch_size = {})",
            cfg.batch_size
        ));
    }
    if cfg.tolerance > 0.0 {
        return refuse("a convergence tolerance (set tolerance = 0: fixed step counts)");
    }
    if cfg.nudged_update == NudgedUpdate::Continuous {
        return refuse("nudged_update = \"continuous\"");
    }
    if cfg.task == crate::config::Task::Bandit {
        return refuse("task = \"bandit\"");
    }
    if cfg.gradient != crate::config::Gradient::Ep {
        return refuse("gradient = \"recurrent-backprop\"");
    }
    Ok(())
}

/// Enqueues a batch's free phase: load (from `particles` or rest), input
/// drive, relaxation, score, and the new fixed points back into `particles`.
fn free_phase(e: &mut Engine, s: &Settings, particles: Option<&engine::Particles>) -> Result<Set> {
    e.load(Set::FreeA, particles)?;
    e.input_drive()?;
    let free = e.relax(Set::FreeA, &Relax::of(s, s.free_steps, 0.0, true))?;
    e.score(free)?;
    if let Some(p) = particles {
        e.store(free, p)?;
    }
    Ok(free)
}

/// One split's per-example states: on the device, mirrored on the host for checkpoints.
struct ParticleSet {
    name: &'static str,
    device: engine::Particles,
    host: Vec<Matrix>,
}

/// Graphs for the batch kinds, captured on first use.
#[derive(Default)]
struct Graphs {
    train: Option<CudaGraph>,
    /// From rest; warm validation; warm test.
    eval: [Option<CudaGraph>; 3],
}

pub struct CudaEqProp {
    engine: Engine,
    net: Network,
    settings: Settings,
    batch: usize,
    /// [training particles (if persistent)], then warm validation and test sets.
    particles: Option<ParticleSet>,
    warm: Vec<ParticleSet>,
    graphs: Graphs,
    x: Vec<f32>,
    iparams: Vec<i32>,
    fparams: Vec<f32>,
    /// The host copies of the parameters or particles changed (restore): upload first.
    device_stale: bool,
    /// The first device error; reported by `check_finite`.
    failed: Option<Error>,
    last_change: f32,
    batches: usize,
}

// SAFETY: the learner is used by one thread at a time; every cudarc call binds
// the context to the calling thread first.
unsafe impl Send for CudaEqProp {}

impl CudaEqProp {
    pub fn new(cfg: &Config, counts: [usize; 3]) -> Result<Self> {
        check_supported(cfg)?;
        let ctx = open()?;
        let net = Network::initial(cfg);
        let engine = Engine::new(ctx, &cfg.layers, cfg.batch_size, cfg.tf32)?;
        let set = |name, count| -> Result<ParticleSet> {
            Ok(ParticleSet {
                name,
                device: engine.particles(count)?,
                host: cfg.layers[1..]
                    .iter()
                    .map(|&n| Matrix::zeros(count, n))
                    .collect(),
            })
        };
        let particles = if cfg.persistent_particles {
            Some(set("particles", counts[0])?)
        } else {
            None
        };
        let warm = if cfg.eval_warm {
            vec![
                set("val_particles", counts[1])?,
                set("test_particles", counts[2])?,
            ]
        } else {
            Vec::new()
        };
        let (bp, l) = (engine.shape.bp, engine.shape.depth());
        Ok(CudaEqProp {
            x: vec![0.0; bp * cfg.layers[0]],
            iparams: vec![0; 2 * bp + 1],
            fparams: vec![0.0; 2 * l + 2],
            engine,
            net,
            settings: Settings::from_config(cfg),
            batch: cfg.batch_size,
            particles,
            warm,
            graphs: Graphs::default(),
            device_stale: true,
            failed: None,
            last_change: 0.0,
            batches: 0,
        })
    }

    /// The host network (as of the last `sync_host`).
    pub fn network(&self) -> &Network {
        &self.net
    }

    pub fn engine(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// Kernel launches per relaxation step of the captured training graph.
    pub fn shape(&self) -> &Shape {
        &self.engine.shape
    }

    fn upload_if_stale(&mut self) -> Result<()> {
        if !self.device_stale {
            return Ok(());
        }
        self.engine.upload_params(&self.net)?;
        for set in self.particles.iter_mut().chain(self.warm.iter_mut()) {
            if set.device.count > 0 {
                let flat: Vec<f32> = set
                    .host
                    .iter()
                    .flat_map(|m| m.data.iter().copied())
                    .collect();
                self.engine.upload_particles(&mut set.device, &flat)?;
            }
        }
        self.device_stale = false;
        Ok(())
    }

    /// Fills the host staging buffers for examples `indices` of `data`.
    fn stage(&mut self, data: &Dataset, indices: &[usize], slots: impl Iterator<Item = usize>) {
        let n0 = data.features();
        let bp = self.engine.shape.bp;
        self.x.fill(0.0);
        for (b, (&e, slot)) in indices.iter().zip(slots).enumerate() {
            self.x[b * n0..(b + 1) * n0].copy_from_slice(data.images.row(e));
            self.iparams[b] = slot as i32;
            self.iparams[bp + b] = data.labels[e] as i32;
        }
        self.iparams[2 * bp] = indices.len() as i32;
    }

    /// Captures the training batch: the free phase, then the nudged phase(s)
    /// and the update.
    fn train_graph(&mut self) -> Result<CudaGraph> {
        let s = self.settings.clone();
        let symmetric = s.nudging == Nudging::Symmetric;
        let particles = self.particles.as_ref().map(|p| &p.device);
        self.engine.capture(|e| {
            let free = free_phase(e, &s, particles)?;
            let nudged = |e: &mut Engine, set, sign| {
                e.copy(free, set)?;
                e.relax(set, &Relax::of(&s, s.nudged_steps, sign, false))
            };
            let plus = nudged(e, Set::PosA, 1.0)?;
            let minus = if symmetric {
                nudged(e, Set::NegA, -1.0)?
            } else {
                free
            };
            e.update(plus, minus)
        })
    }

    /// Captures an evaluation batch: from rest (`warm` None) or from a split's particles.
    fn eval_graph(&mut self, warm: Option<usize>) -> Result<CudaGraph> {
        let s = self.settings.clone();
        let particles = warm.map(|w| &self.warm[w].device);
        self.engine
            .capture(|e| free_phase(e, &s, particles).map(|_| ()))
    }

    fn try_train_batch(
        &mut self,
        data: &Dataset,
        indices: &[usize],
        rng: &mut ChaCha8Rng,
    ) -> Result<Stats> {
        self.upload_if_stale()?;
        let s = &self.settings;
        // The same draw as the CPU learner, so both see the same signs.
        let beta = match s.nudging {
            Nudging::RandomSign if rng.random_bool(0.5) => -s.beta,
            _ => s.beta,
        };
        let coef = if s.nudging == Nudging::Symmetric {
            1.0 / (2.0 * beta)
        } else {
            1.0 / beta
        };
        let l = self.engine.shape.depth();
        self.fparams[0] = beta;
        for (k, &rate) in s.learning_rates.iter().enumerate() {
            let scaled = rate * coef / indices.len() as f32;
            self.fparams[1 + k] = scaled;
            self.fparams[1 + l + k] = -scaled;
        }
        self.fparams[2 * l + 1] = 1.0;
        self.stage(data, indices, indices.iter().copied());
        self.engine
            .upload_batch(&self.x, &self.iparams, &self.fparams)?;
        if self.graphs.train.is_none() {
            self.graphs.train = Some(self.train_graph()?);
        }
        self.graphs
            .train
            .as_ref()
            .expect("captured")
            .launch()
            .map_err(device_error)?;
        self.batches += 1;
        let [errors, cost] = self.engine.read_stats()?;
        Ok(Stats {
            examples: indices.len(),
            errors: errors as usize,
            cost: cost as f64,
            ..Stats::default()
        })
    }

    fn try_evaluate(&mut self, data: &Dataset, warm: Option<usize>) -> Result<Stats> {
        self.upload_if_stale()?;
        let slot = warm.map_or(0, |w| w + 1);
        if self.graphs.eval[slot].is_none() {
            // fparams[2L+1] = 1 is the GEMMs' alpha and beta; the rest is unused here.
            let l = self.engine.shape.depth();
            self.fparams.fill(0.0);
            self.fparams[2 * l + 1] = 1.0;
            self.stage(data, &[], std::iter::empty());
            self.engine
                .upload_batch(&self.x, &self.iparams, &self.fparams)?;
            self.graphs.eval[slot] = Some(self.eval_graph(warm)?);
        }
        let mut stats = Stats::default();
        let all: Vec<usize> = (0..data.len()).collect();
        for chunk in all.chunks(self.batch) {
            self.stage(data, chunk, chunk.iter().copied());
            self.engine
                .upload_batch(&self.x, &self.iparams, &self.fparams)?;
            self.graphs.eval[slot]
                .as_ref()
                .expect("captured")
                .launch()
                .map_err(device_error)?;
            let [errors, cost] = self.engine.read_stats()?;
            stats.examples += chunk.len();
            stats.errors += errors as usize;
            stats.cost += cost as f64;
        }
        Ok(stats)
    }

    fn record<T: Default>(&mut self, r: Result<T>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => {
                self.failed.get_or_insert(e);
                T::default()
            }
        }
    }
}

impl Learner for CudaEqProp {
    fn train_batch(&mut self, data: &Dataset, indices: &[usize], rng: &mut ChaCha8Rng) -> Stats {
        if self.failed.is_some() {
            return Stats {
                examples: indices.len(),
                errors: indices.len(),
                cost: f64::NAN,
                ..Stats::default()
            };
        }
        let r = self.try_train_batch(data, indices, rng);
        let failed = r.is_err();
        let mut s = self.record(r);
        if failed {
            // A non-finite cost makes the loop stop and ask check_finite, which reports it.
            s.cost = f64::NAN;
        }
        s
    }

    fn evaluate(&mut self, data: &Dataset) -> Stats {
        let r = self.try_evaluate(data, None);
        self.record(r)
    }

    fn evaluate_warm(&mut self, data: &Dataset, split: usize) -> Option<Stats> {
        if split >= self.warm.len() {
            return None;
        }
        let r = self.try_evaluate(data, Some(split));
        Some(self.record(r))
    }

    fn sync_host(&mut self) -> Result<()> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if self.device_stale {
            return Ok(());
        }
        self.engine.download_params(&mut self.net)?;
        self.last_change = self.engine.read_change()?;
        for set in self.particles.iter_mut().chain(self.warm.iter_mut()) {
            if set.device.count == 0 {
                continue;
            }
            let mut flat = vec![0.0; set.host.iter().map(|m| m.data.len()).sum()];
            self.engine.download_particles(&set.device, &mut flat)?;
            let mut at = 0;
            for m in &mut set.host {
                let n = m.data.len();
                m.data.copy_from_slice(&flat[at..at + n]);
                at += n;
            }
        }
        Ok(())
    }

    fn parameters(&self) -> Vec<NamedTensor<'_>> {
        crate::backprop::network_tensors(&self.net)
    }

    fn parameters_mut(&mut self) -> Vec<NamedTensorMut<'_>> {
        self.device_stale = true;
        crate::backprop::network_tensors_mut(&mut self.net)
    }

    fn run_state(&self) -> Vec<NamedTensor<'_>> {
        self.particles
            .iter()
            .chain(&self.warm)
            .flat_map(|set| {
                set.host.iter().enumerate().map(move |(k, p)| {
                    let name = format!("{}.s{}", set.name, k + 1);
                    NamedTensor::new(name, vec![p.rows, p.cols], &p.data)
                })
            })
            .collect()
    }

    fn run_state_is_bounded(&self) -> bool {
        true
    }

    fn run_state_mut(&mut self) -> Vec<NamedTensorMut<'_>> {
        self.device_stale = true;
        self.particles
            .iter_mut()
            .chain(self.warm.iter_mut())
            .flat_map(|set| {
                let name = set.name;
                set.host.iter_mut().enumerate().map(move |(k, p)| {
                    let shape = vec![p.rows, p.cols];
                    NamedTensorMut::new(format!("{name}.s{}", k + 1), shape, &mut p.data)
                })
            })
            .collect()
    }

    fn check_finite(&self, epoch: usize) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(Error::Device(e.to_string()));
        }
        self.net.check_finite(epoch)
    }

    fn flops_per_example(&self) -> (f64, f64) {
        self.settings.flops_per_example(&self.net.sizes)
    }

    fn flops_per_free_step(&self) -> f64 {
        crate::eqprop::flops_per_step(&self.net.sizes)
    }

    fn describe(&self) -> String {
        format!(
            "{} | {} on the GPU",
            self.settings.describe(&self.net.sizes),
            self.engine
                .ctx
                .name()
                .unwrap_or_else(|_| "CUDA device".into())
        )
    }

    fn free_phase_residual(&self) -> Option<f64> {
        Some(self.last_change as f64)
    }

    fn take_free_steps_mean(&mut self) -> Option<f64> {
        let n = std::mem::take(&mut self.batches);
        (n > 0).then_some(self.settings.free_steps as f64)
    }
}

//! `plasticity bench --device cuda`: time per relaxation step, launches per
//! step, whole epochs, against the GPU's fp32 peak.

use super::{Engine, open};
use crate::bench::Row;
use crate::config::{self, Config, Device, Relaxation};
use crate::eqprop::{Network, flops_per_step};
use crate::error::Result;
use cudarc::driver::sys::CUdevice_attribute as Attr;

/// fp32 peak in GFLOP/s: SMs x FP32 lanes per SM x 2 (FMA) x clock.
pub fn peak_gflops(ctx: &cudarc::driver::CudaContext) -> Result<(f64, String)> {
    let get = |a| ctx.attribute(a).map_err(super::device_error);
    let sms = get(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as f64;
    let khz = get(Attr::CU_DEVICE_ATTRIBUTE_CLOCK_RATE)? as f64;
    let (major, minor) = ctx.compute_capability().map_err(super::device_error)?;
    // FP32 lanes per SM: 64 on sm_60/sm_70/sm_80, 128 on sm_86 and later.
    let lanes = if major >= 9 || (major == 8 && minor >= 6) {
        128.0
    } else {
        64.0
    };
    let name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
    let peak = sms * lanes * 2.0 * khz * 1e3 / 1e9;
    let note = format!(
        "{name}: {sms} SMs x {lanes} lanes x 2 x {:.0} MHz",
        khz / 1e3
    );
    Ok((peak, note))
}

/// How a phase's steps run on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// A graph of one-step launches of the tiled kernel.
    Graph,
    /// One cooperative launch of the tiled kernel (weights restaged each step).
    Tiled,
    /// One cooperative launch of the resident kernel (weights in shared memory).
    Resident,
}

/// Seconds per relaxation step of the batch (a graph of `steps` steps, replayed)
/// and kernel launches per step; None where `kernel` does not apply.
pub fn time_steps(cfg: &Config, steps: usize, kernel: Kernel) -> Result<Option<(f64, f64)>> {
    let ctx = open()?;
    let mut e = Engine::new(ctx, &cfg.layers, cfg.batch_size, cfg.tf32)?;
    e.persistent &= kernel != Kernel::Graph;
    e.use_resident = kernel == Kernel::Resident;
    if kernel == Kernel::Resident
        && (!e.resident_active() || cfg.relaxation != Relaxation::Synchronous)
    {
        return Ok(None);
    }
    e.upload_params(&Network::initial(cfg))?;
    let bp = e.shape.bp;
    let mut ip = vec![0i32; 2 * bp + 1];
    ip[2 * bp] = cfg.batch_size as i32;
    let fp = vec![0.0f32; 2 * e.shape.depth() + 2];
    let x = vec![0.5f32; bp * cfg.layers[0]];
    e.upload_batch(&x, &ip, &fp)?;
    e.load(super::Set::FreeA, None)?;
    e.take_launches();
    let (scheme, eps) = (cfg.relaxation, cfg.epsilon);
    let r = super::Relax {
        steps,
        sign: 0.0,
        scheme,
        eps,
        track_last: false,
    };
    let graph = e.capture(|e| e.relax(super::Set::FreeA, &r).map(|_| ()))?;
    let launches = e.take_launches() as f64 / steps as f64;
    graph.launch().map_err(super::device_error)?;
    e.synchronize()?;
    let reps = 20;
    let t = std::time::Instant::now();
    for _ in 0..reps {
        graph.launch().map_err(super::device_error)?;
    }
    e.synchronize()?;
    Ok(Some((
        t.elapsed().as_secs_f64() / (reps * steps) as f64,
        launches,
    )))
}

/// `repeat`: successive epochs of each preset, the fastest reported (the
/// first includes capturing the batch graphs).
pub fn run(
    presets: &[String],
    schemes: &[String],
    examples: usize,
    repeat: usize,
) -> Result<Vec<Row>> {
    let (peak, about) = peak_gflops(open()?.as_ref())?;
    let mut rows = vec![Row {
        name: "GPU fp32 peak (no tensor cores)".into(),
        seconds: 0.0,
        gflops: peak,
        fraction_of_peak: 1.0,
        threads: 0,
        note: about,
    }];
    for p in presets {
        let mut base = config::preset(p)?;
        base.device = Device::Cuda;
        let splits = crate::train::load_data(&base)?;
        for name in schemes {
            let cfg = crate::compare::scheme(name)?.apply(&base)?;
            let cfg = Config {
                tolerance: 0.0,
                ..cfg
            };
            let label = if name == "paper" {
                p.clone()
            } else {
                format!("{p} [{name}]")
            };
            let per_step = flops_per_step(&cfg.layers) * cfg.batch_size as f64;
            // An even/odd step updates every layer once, like a synchronous one.
            let what = match cfg.relaxation {
                Relaxation::Synchronous => "synchronous",
                Relaxation::EvenOdd => "even/odd",
            };
            for (kernel, how) in [
                (Kernel::Graph, "graph of step kernels"),
                (Kernel::Tiled, "persistent kernel"),
                (Kernel::Resident, "resident weights"),
            ] {
                let Some((secs, launches)) = time_steps(&cfg, 200, kernel)? else {
                    continue;
                };
                rows.push(Row {
                    name: format!("{label}: one {what} step, batch {} [{how}]", cfg.batch_size),
                    seconds: secs,
                    gflops: per_step / secs / 1e9,
                    fraction_of_peak: per_step / secs / 1e9 / peak,
                    threads: 0,
                    note: format!(
                        "{:.2} us per step, {launches} kernel launches per step",
                        secs * 1e6
                    ),
                });
            }
            rows.extend(crate::bench::epoch(
                &label, &cfg, &splits, examples, repeat, peak,
            )?);
        }
    }
    Ok(rows)
}

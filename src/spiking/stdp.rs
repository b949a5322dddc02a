//! STDP from "presynaptic spike times rate of change of postsynaptic potential"
//! (Bengio et al., arXiv 1502.04156 and 1509.05936):
//!
//!   dW = eta * S_pre(t) * dV_post/dt
//!
//! Nothing here puts in a window: each pre spike adds the post membrane's rate of
//! change at that moment, and the window is whatever the post dynamics make of it.
//! The measured synapse is weak, so its own EPSP does not move V.

use super::neuron::{Background, Firing, Neuron};
use rand::{Rng, RngExt};
use serde::Serialize;

/// A post-synaptic neuron model under test.
#[derive(Clone, Debug)]
pub struct Model {
    pub name: &'static str,
    pub tau_m: f64,
    pub firing: Firing,
}

/// The three membranes compared: where V goes after a spike decides the LTD side.
pub fn models() -> Vec<Model> {
    let stochastic = |reset| Firing::Stochastic {
        threshold: 15.0,
        width: 1.5,
        rate0: 0.005,
        reset,
    };
    vec![
        Model {
            name: "stochastic, no reset (arXiv 1509.05936)",
            tau_m: 20.0,
            firing: stochastic(None),
        },
        Model {
            name: "stochastic, reset to 0",
            tau_m: 20.0,
            firing: stochastic(Some(0.0)),
        },
        Model {
            name: "integrate-and-fire, threshold and reset",
            tau_m: 20.0,
            firing: Firing::Threshold {
                threshold: 15.0,
                reset: 0.0,
                refractory: 2.0,
            },
        },
    ]
}

/// Protocol settings (times in ms, potentials in mV).
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub dt: f64,
    /// Background drive: OU input around `bg_mean` (std `bg_sigma`, correlation `bg_tau`).
    pub bg_mean: f64,
    pub bg_sigma: f64,
    pub bg_tau: f64,
    /// The induced post spike: a current step of `inject_mv` for `inject_ms`.
    pub inject_mv: f64,
    pub inject_ms: f64,
    /// Pairings per experiment (Bi & Poo: 60 at 1 Hz) and experiments averaged.
    pub pairings: usize,
    pub experiments: usize,
    /// Spike-time differences examined: -window..=window.
    pub window: f64,
    pub step_ms: f64,
    /// Random-train experiment: seconds simulated, the pre rate (Hz), and a
    /// stronger background so that the post neuron fires by itself (a few Hz).
    pub random_seconds: f64,
    pub random_bg_mean: f64,
    pub random_bg_sigma: f64,
    pub pre_rate_hz: f64,
    pub bin_ms: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            dt: 0.1,
            bg_mean: 8.0,
            bg_sigma: 4.0,
            bg_tau: 5.0,
            inject_mv: 40.0,
            inject_ms: 5.0,
            pairings: 60,
            experiments: 50,
            window: 100.0,
            step_ms: 2.0,
            random_seconds: 400.0,
            random_bg_mean: 12.0,
            random_bg_sigma: 6.0,
            pre_rate_hz: 200.0,
            bin_ms: 4.0,
        }
    }
}

/// Mean weight change (and its standard error) at one spike-time difference
/// dt = t_post - t_pre (positive: pre before post).
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub dt_ms: f64,
    pub dw: f64,
    pub sem: f64,
    pub n: usize,
}

fn summarize(dt_ms: f64, xs: &[f64]) -> Point {
    let n = xs.len();
    let mean = xs.iter().sum::<f64>() / n.max(1) as f64;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n.max(2) - 1) as f64;
    Point {
        dt_ms,
        dw: mean,
        sem: (var / n.max(1) as f64).sqrt(),
        n,
    }
}

/// The pairing protocol of Bi & Poo (1998): the post neuron, in background
/// activity, is made to fire by a brief current step; a pre spike arrives dt
/// before that spike. Each pairing adds dV/dt at the pre spike (eta = 1); an
/// experiment sums `pairings` of them. Returns one point per dt: the mean over
/// experiments of the summed change, per pairing.
pub fn pairing(model: &Model, s: &Settings, rng: &mut impl Rng) -> Vec<Point> {
    let lead = s.window + 50.0; // background before the injection
    let tail = s.window + 20.0;
    let steps = ((lead + tail) / s.dt) as usize;
    let onset = (lead / s.dt) as usize;
    let inject_steps = (s.inject_ms / s.dt) as usize;
    let n_dt = (2.0 * s.window / s.step_ms).round() as usize + 1;
    let dts: Vec<f64> = (0..n_dt)
        .map(|i| -s.window + i as f64 * s.step_ms)
        .collect();
    let mut per_experiment = vec![Vec::with_capacity(s.experiments); n_dt];
    let mut dv = vec![0.0; steps];
    for _ in 0..s.experiments {
        let mut sums = vec![0.0; n_dt];
        let mut done = 0;
        while done < s.pairings {
            let mut neuron = Neuron::new(model.tau_m, model.firing);
            let mut bg = Background::new(s.bg_mean, s.bg_sigma, s.bg_tau);
            neuron.v = s.bg_mean;
            // One second between pairings: start each from the stationary background.
            for _ in 0..(200.0 / s.dt) as usize {
                let u = bg.step(s.dt, rng);
                neuron.step(u, s.dt, rng);
            }
            let mut post = None;
            for (k, slot) in dv.iter_mut().enumerate() {
                let mut u = bg.step(s.dt, rng);
                if (onset..onset + inject_steps).contains(&k) {
                    u += s.inject_mv;
                }
                let r = neuron.step(u, s.dt, rng);
                *slot = r.dv_dt;
                if r.spiked && post.is_none() && k >= onset {
                    post = Some(k);
                }
            }
            // The induced spike must follow the injection closely, as in the experiment.
            let Some(kp) = post.filter(|&k| k < onset + inject_steps + (5.0 / s.dt) as usize)
            else {
                continue;
            };
            for (i, &d) in dts.iter().enumerate() {
                let k_pre = kp as f64 - d / s.dt;
                if k_pre >= 0.0 && (k_pre as usize) < steps {
                    sums[i] += dv[k_pre as usize];
                }
            }
            done += 1;
        }
        for (i, sum) in sums.iter().enumerate() {
            per_experiment[i].push(sum / s.pairings as f64);
        }
    }
    dts.iter()
        .zip(&per_experiment)
        .map(|(&d, xs)| summarize(d, xs))
        .collect()
}

/// Random pre and post spike trains (arXiv 1509.05936): pre spikes are
/// Poisson and independent of the post neuron, which fires by its own rule in
/// background activity. Each pre spike's dV/dt is binned by the time to the
/// nearest post spike.
pub fn random_trains(model: &Model, s: &Settings, rng: &mut impl Rng) -> Vec<Point> {
    let steps = (s.random_seconds * 1000.0 / s.dt) as usize;
    let mut neuron = Neuron::new(model.tau_m, model.firing);
    neuron.v = s.random_bg_mean;
    let mut bg = Background::new(s.random_bg_mean, s.random_bg_sigma, s.bg_tau);
    let p_pre = s.pre_rate_hz / 1000.0 * s.dt;
    let mut pre: Vec<(f64, f64)> = Vec::new();
    let mut post: Vec<f64> = Vec::new();
    for k in 0..steps {
        let t = k as f64 * s.dt;
        let u = bg.step(s.dt, rng);
        let r = neuron.step(u, s.dt, rng);
        if rng.random::<f64>() < p_pre {
            pre.push((t, r.dv_dt));
        }
        if r.spiked {
            post.push(t);
        }
    }
    let n_bins = (2.0 * s.window / s.bin_ms).round() as usize;
    let mut bins = vec![Vec::new(); n_bins];
    for &(t, dv) in &pre {
        let i = post.partition_point(|&p| p < t);
        let nearest = [i.checked_sub(1), (i < post.len()).then_some(i)]
            .into_iter()
            .flatten()
            .map(|j| post[j] - t)
            .min_by(|a, b| a.abs().total_cmp(&b.abs()));
        if let Some(d) = nearest.filter(|d| d.abs() < s.window) {
            let b = ((d + s.window) / s.bin_ms) as usize;
            bins[b.min(n_bins - 1)].push(dv);
        }
    }
    bins.iter()
        .enumerate()
        .map(|(b, xs)| summarize(-s.window + (b as f64 + 0.5) * s.bin_ms, xs))
        .collect()
}

/// Exponential fits of a window: dw ~ a_plus exp(-dt / tau_plus) for dt > 0 and
/// dw ~ a_minus exp(dt / tau_minus) for dt < 0 (a_minus negative for LTD).
#[derive(Clone, Debug, Serialize)]
pub struct Fit {
    pub a_plus: f64,
    pub tau_plus: f64,
    pub a_minus: f64,
    pub tau_minus: f64,
}

/// Least squares on each side: for each tau on a grid, the best amplitude is
/// closed-form; the tau with the least squared error wins.
pub fn fit(points: &[Point]) -> Fit {
    let side = |pts: Vec<(f64, f64)>| -> (f64, f64) {
        let mut best = (f64::INFINITY, 0.0, 0.0);
        let mut tau = 0.5;
        while tau <= 200.0 {
            let (num, den) = pts.iter().fold((0.0, 0.0), |(n, d), &(x, y)| {
                let e = (-x / tau).exp();
                (n + y * e, d + e * e)
            });
            let a = num / den.max(1e-300);
            let sse: f64 = pts
                .iter()
                .map(|&(x, y)| (y - a * (-x / tau).exp()).powi(2))
                .sum();
            if sse < best.0 {
                best = (sse, a, tau);
            }
            tau += 0.25;
        }
        (best.1, best.2)
    };
    let (a_plus, tau_plus) = side(
        points
            .iter()
            .filter(|p| p.dt_ms > 0.0)
            .map(|p| (p.dt_ms, p.dw))
            .collect(),
    );
    let (a_minus, tau_minus) = side(
        points
            .iter()
            .filter(|p| p.dt_ms < 0.0)
            .map(|p| (-p.dt_ms, p.dw))
            .collect(),
    );
    Fit {
        a_plus,
        tau_plus,
        a_minus,
        tau_minus,
    }
}

/// Averaged over pre spikes at rate rho_pre(t), the spike rule's change tends to
/// the rate rule's integral of rho_pre dV/dt: returns (spike-based mean, rate-based)
/// for a post potential V(t) = v(t) over `trials` trials (eta = 1).
pub fn spike_vs_rate(
    rho_pre: impl Fn(f64) -> f64,
    v: impl Fn(f64) -> f64,
    t_end: f64,
    dt: f64,
    trials: usize,
    rng: &mut impl Rng,
) -> (f64, f64) {
    let steps = (t_end / dt) as usize;
    let dv = |t: f64| (v(t + dt) - v(t)) / dt;
    let rate: f64 = (0..steps)
        .map(|k| rho_pre(k as f64 * dt) * dv(k as f64 * dt) * dt)
        .sum();
    let mut total = 0.0;
    for _ in 0..trials {
        for k in 0..steps {
            let t = k as f64 * dt;
            if rng.random::<f64>() < rho_pre(t) * dt {
                total += dv(t);
            }
        }
    }
    (total / trials as f64, rate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn quick() -> Settings {
        Settings {
            experiments: 12,
            random_seconds: 150.0,
            ..Settings::default()
        }
    }

    fn at(points: &[Point], dt: f64) -> f64 {
        // Mean over the points within 6 ms of dt on the same side.
        let near: Vec<f64> = points
            .iter()
            .filter(|p| (p.dt_ms - dt).abs() <= 6.0 && p.dt_ms.signum() == dt.signum())
            .map(|p| p.dw)
            .collect();
        near.iter().sum::<f64>() / near.len() as f64
    }

    #[test]
    fn no_reset_membrane_gives_ltp_then_ltd_and_reset_flips_the_ltd_side() {
        let s = quick();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let m = models();
        let no_reset = pairing(&m[0], &s, &mut rng);
        // Pre shortly before post: potentiation; shortly after: depression; far: ~0.
        assert!(at(&no_reset, 3.0) > 0.2, "{}", at(&no_reset, 3.0));
        assert!(at(&no_reset, -8.0) < -0.2, "{}", at(&no_reset, -8.0));
        assert!(at(&no_reset, -8.0).abs() > 3.0 * at(&no_reset, -90.0).abs());
        // With a reset, V climbs back after the spike: the "LTD" side turns positive.
        let lif = pairing(&m[2], &s, &mut rng);
        assert!(at(&lif, 3.0) > 0.2);
        assert!(at(&lif, -8.0) > 0.1, "{}", at(&lif, -8.0));
    }

    #[test]
    fn random_trains_give_an_antisymmetric_window_without_reset() {
        let s = quick();
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let w = random_trains(&models()[0], &s, &mut rng);
        assert!(
            at(&w, 4.0) > 0.0 && at(&w, -4.0) < 0.0,
            "{} {}",
            at(&w, 4.0),
            at(&w, -4.0)
        );
        let f = fit(&w);
        assert!(
            f.a_plus > 0.0 && f.a_minus < 0.0 && f.tau_plus > 1.0 && f.tau_minus > 1.0,
            "{f:?}"
        );
    }

    #[test]
    fn fit_recovers_known_exponentials() {
        let pts: Vec<Point> = (-50..=50)
            .filter(|&d| d != 0)
            .map(|d| {
                let x = d as f64;
                let dw = if x > 0.0 {
                    0.8 * (-x / 17.0).exp()
                } else {
                    -0.4 * (x / 34.0).exp()
                };
                Point {
                    dt_ms: x,
                    dw,
                    sem: 0.0,
                    n: 1,
                }
            })
            .collect();
        let f = fit(&pts);
        assert!(
            (f.tau_plus - 17.0).abs() < 0.3 && (f.tau_minus - 34.0).abs() < 0.3,
            "{f:?}"
        );
        assert!(
            (f.a_plus - 0.8).abs() < 0.01 && (f.a_minus + 0.4).abs() < 0.01,
            "{f:?}"
        );
    }

    #[test]
    fn spike_rule_averages_to_the_rate_rule() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let rho = |t: f64| 0.02 + 0.015 * (t / 30.0).sin(); // spikes per ms
        let v = |t: f64| 10.0 * (1.0 - (-t / 25.0).exp()) + 3.0 * (t / 17.0).cos();
        let (spikes, rates) = spike_vs_rate(rho, v, 200.0, 0.1, 4000, &mut rng);
        assert!(
            (spikes - rates).abs() < 0.05 * rates.abs().max(0.1),
            "{spikes} vs {rates}"
        );
    }
}

/// Bi & Poo's experimental time constants (ms), for comparison.
pub const BI_POO_TAU_PLUS: f64 = 16.8;
pub const BI_POO_TAU_MINUS: f64 = 33.7;

/// One protocol's window for one model, with its fit.
#[derive(Clone, Debug, Serialize)]
pub struct Window {
    pub protocol: &'static str,
    pub model: &'static str,
    pub points: Vec<Point>,
    pub fit: Fit,
}

/// Every protocol on every model, plus the spike-to-rate check.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub settings: Settings,
    pub seed: u64,
    pub windows: Vec<Window>,
    /// (spike-averaged change, rate-rule integral) for a test trajectory.
    pub spike_vs_rate: (f64, f64),
}

/// Runs both protocols on the three models and writes `window.csv`,
/// `fits.csv`, `report.json` and one PNG per protocol into `out`.
pub fn run(s: &Settings, seed: u64, out: &std::path::Path) -> crate::Result<Report> {
    use rand::SeedableRng;
    let mut windows = Vec::new();
    for (i, m) in models().iter().enumerate() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed.wrapping_add(i as u64));
        let p = pairing(m, s, &mut rng);
        windows.push(Window {
            protocol: "pairing",
            model: m.name,
            fit: fit(&p),
            points: p,
        });
        let r = random_trains(m, s, &mut rng);
        windows.push(Window {
            protocol: "random trains",
            model: m.name,
            fit: fit(&r),
            points: r,
        });
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let svr = spike_vs_rate(
        |t| 0.02 + 0.015 * (t / 30.0).sin(),
        |t| 10.0 * (1.0 - (-t / 25.0).exp()) + 3.0 * (t / 17.0).cos(),
        200.0,
        s.dt,
        4000,
        &mut rng,
    );
    let report = Report {
        settings: s.clone(),
        seed,
        windows,
        spike_vs_rate: svr,
    };
    write(&report, out)?;
    Ok(report)
}

fn write(report: &Report, out: &std::path::Path) -> crate::Result<()> {
    use crate::error::Error;
    use crate::plot::{PALETTE, Series, linear_chart};
    use crate::train::checkpoint::write_atomic;
    std::fs::create_dir_all(out)
        .map_err(|e| Error::io("cannot create output directory", out, e))?;
    let mut csv = String::from("protocol,model,dt_ms,dw,sem,n\n");
    let mut fits = String::from(
        "protocol,model,a_plus,tau_plus_ms,a_minus,tau_minus_ms,bi_poo_tau_plus_ms,bi_poo_tau_minus_ms\n",
    );
    for w in &report.windows {
        for p in &w.points {
            csv += &format!(
                "{},\"{}\",{},{},{},{}\n",
                w.protocol, w.model, p.dt_ms, p.dw, p.sem, p.n
            );
        }
        let f = &w.fit;
        fits += &format!(
            "{},\"{}\",{:.4},{:.2},{:.4},{:.2},{BI_POO_TAU_PLUS},{BI_POO_TAU_MINUS}\n",
            w.protocol, w.model, f.a_plus, f.tau_plus, f.a_minus, f.tau_minus
        );
    }
    write_atomic(&out.join("window.csv"), csv.as_bytes())?;
    write_atomic(&out.join("fits.csv"), fits.as_bytes())?;
    let json = serde_json::to_string_pretty(report).expect("report serializes");
    write_atomic(&out.join("report.json"), json.as_bytes())?;
    for (protocol, file) in [
        ("pairing", "stdp_pairing.png"),
        ("random trains", "stdp_random_trains.png"),
    ] {
        let series: Vec<Series<'_>> = report
            .windows
            .iter()
            .filter(|w| w.protocol == protocol)
            .zip(PALETTE)
            .map(|(w, color)| Series {
                name: w.model,
                points: w.points.iter().map(|p| (p.dt_ms, p.dw)).collect(),
                color,
            })
            .collect();
        linear_chart(
            &out.join(file),
            &format!("dW = S_pre dV_post/dt: {protocol}"),
            "t_post - t_pre (ms); positive: pre before post",
            "weight change per pairing (mV/ms)",
            &series,
        )?;
    }
    Ok(())
}

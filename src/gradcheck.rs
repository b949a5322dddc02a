//! How close EP's local update comes to the true gradient (Scellier & Bengio,
//! Theorem 1), measured on real MNIST examples.
//!
//! For each example: the free fixed point s* (long relaxation from rest), the
//! exact dC/dtheta there by recurrent backprop (`eqprop::gradient`), and EP's
//! update from a converged nudged phase at several beta, one-sided and
//! symmetric, computed both in f64 and by the f32 training code itself. Per
//! layer pair: the cosine between EP's update and -dC/dtheta, and their norm ratio.

use crate::config::Config;
use crate::data::Dataset;
use crate::eqprop::gradient::{self, Grads, States};
use crate::eqprop::{Block, Network, Phase, learning};
use crate::error::Result;
use crate::plot::{PALETTE, Series, log_chart};
use crate::train::checkpoint::write_atomic;
use serde::Serialize;
use std::path::Path;

pub const BETAS: [f64; 9] = [1.0, 0.5, 0.2, 0.1, 0.05, 0.01, 1e-3, 1e-4, 1e-5];

/// Steps for the free fixed point, the RBP recursion and the nudged phase: long
/// enough that each has converged, so that only beta's effect remains.
pub const FREE_STEPS: usize = 400;
pub const NUDGED_STEPS: usize = 400;
/// Step and length of the adjoint (RBP) recursion.
pub const ADJOINT_EPS: f64 = 0.1;
pub const ADJOINT_ITERS: usize = 1500;
/// Examples examined at most to find the usable ones.
pub const SCAN: usize = 300;

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub weights: String,
    pub nudging: &'static str,
    pub precision: &'static str,
    pub beta: f64,
    pub layer: usize,
    pub cosine: f64,
    pub norm_ratio: f64,
}

fn add(acc: &mut Grads, g: &Grads) {
    for (a, b) in acc
        .weights
        .iter_mut()
        .zip(&g.weights)
        .chain(acc.biases.iter_mut().zip(&g.biases))
    {
        a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
    }
}

/// EP's update by the f32 training code: free phase, nudged phase(s), the rule.
fn ep_f32(
    net: &Network,
    data: &Dataset,
    idx: &[usize],
    beta: f32,
    symmetric: bool,
    eps: f32,
) -> Grads {
    let n = idx.len();
    let mut block = Block::new(&net.sizes, n);
    block.rows = n;
    let out = *net.sizes.last().unwrap();
    for (i, &e) in idx.iter().enumerate() {
        block.x.row_mut(i).copy_from_slice(data.images.row(e));
        block.target.row_mut(i)[data.labels[e] as usize % out] = 1.0;
    }
    block.compute_input_drive(net);
    block.relax(net, Phase::Free, FREE_STEPS, eps, 0.0);
    block.start_from_free(Phase::Nudged);
    block.relax(net, Phase::Nudged, NUDGED_STEPS, eps, beta);
    let (minus, coef) = if symmetric {
        block.start_from_free(Phase::NudgedNeg);
        block.relax(net, Phase::NudgedNeg, NUDGED_STEPS, eps, -beta);
        (Phase::NudgedNeg, 1.0 / (2.0 * beta))
    } else {
        (Phase::Free, 1.0 / beta)
    };
    block.prepare_update(Phase::Nudged, minus);
    // Applied to zero parameters with unit rates, the update is read off directly.
    let mut zero = net.clone();
    zero.weights.iter_mut().for_each(|w| w.fill(0.0));
    zero.biases.iter_mut().for_each(|b| b.fill(0.0));
    let rates = vec![1.0; net.weights.len()];
    learning::apply(
        &mut zero,
        std::slice::from_ref(&block),
        Phase::Nudged,
        minus,
        coef,
        &rates,
        n,
        1,
    );
    Grads {
        weights: zero
            .weights
            .iter()
            .map(|w| w.data.iter().map(|&v| v as f64).collect())
            .collect(),
        biases: zero
            .biases
            .iter()
            .map(|b| b.iter().map(|&v| v as f64).collect())
            .collect(),
    }
}

/// What one measurement used: examples kept, and those skipped because their
/// synchronous free phase had not settled (it can oscillate) or their cost was 0.
#[derive(Clone, Debug, Serialize)]
pub struct Usage {
    pub weights: String,
    pub used: usize,
    pub not_settled: usize,
    /// Skipped because dC/dtheta is exactly 0 there: zero cost, or every output
    /// unit clipped at a bound (a hard-sigmoid unit there has no gradient).
    pub zero_gradient: usize,
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} examples used; skipped {} whose free phase had not settled and {} with a zero gradient",
            self.used, self.not_settled, self.zero_gradient
        )
    }
}

/// An example usable for gradient checks: its index, free fixed point, one-hot
/// target and the exact gradient there.
pub type Usable = (usize, States, Vec<f64>, Grads);

/// The first `n` usable examples among the first `SCAN` of `data`: a true fixed
/// point (largest change of the last step under 1e-10) and a nonzero gradient.
pub fn usable(
    label: &str,
    net: &Network,
    data: &Dataset,
    n: usize,
    eps: f64,
) -> (Vec<Usable>, Usage) {
    let out = *net.sizes.last().unwrap();
    let mut usage = Usage {
        weights: label.to_string(),
        used: 0,
        not_settled: 0,
        zero_gradient: 0,
    };
    let mut found = Vec::new();
    for i in 0..data.len().min(SCAN) {
        if found.len() == n {
            break;
        }
        let mut s0: States = vec![data.images.row(i).iter().map(|&v| v as f64).collect()];
        s0.extend(net.sizes[1..].iter().map(|&k| vec![0.0; k]));
        let target: Vec<f64> = (0..out)
            .map(|j| (j == data.labels[i] as usize) as u8 as f64)
            .collect();
        // The fixed point by even/odd steps (synchronous ones can oscillate for
        // ever in deeper nets), checked as a fixed point of the synchronous step.
        let s_star = (0..FREE_STEPS).fold(s0, |s, _| gradient::even_odd_step(net, &s));
        let before = s_star.clone();
        let s_star = gradient::free_step(net, &s_star, eps);
        let moved = s_star
            .iter()
            .zip(&before)
            .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
            .fold(0.0, f64::max);
        if moved > 1e-10 {
            usage.not_settled += 1;
            continue;
        }
        // Every output unit clipped (or on target): the gradient is exactly zero.
        if gradient::layer_gradients(net, &s_star, &target)[net.depth()]
            .iter()
            .all(|d| *d == 0.0)
        {
            usage.zero_gradient += 1;
            continue;
        }
        // A small step keeps the adjoint recursion stable where the synchronous
        // dynamics are not; its limit, the implicit gradient, does not depend on it.
        let g = gradient::rbp(net, &s_star, &target, ADJOINT_ITERS, ADJOINT_EPS);
        let norm: f64 = (0..g.weights.len())
            .map(|k| g.layer(k).iter().map(|v| v * v).sum::<f64>())
            .sum();
        if norm < 1e-24 {
            usage.zero_gradient += 1;
            continue;
        }
        found.push((i, s_star, target, g));
    }
    usage.used = found.len();
    (found, usage)
}

/// Early inference on usable examples: mean cosine per step t (rows) and layer
/// (columns) between the state change and -dC/ds_k, NaN where not yet reached.
pub fn early(
    label: &str,
    net: &Network,
    cfg: &Config,
    data: &Dataset,
    n: usize,
    steps: usize,
    beta: f64,
) -> (Vec<Vec<f64>>, Usage) {
    let (found, usage) = usable(label, net, data, n, cfg.epsilon as f64);
    let depth = net.depth();
    let mut sum = vec![vec![0.0; depth]; steps];
    for (_, s_star, target, _) in &found {
        let c = gradient::early_inference(net, s_star, target, beta, steps, cfg.epsilon as f64);
        for (row, crow) in sum.iter_mut().zip(&c) {
            row.iter_mut().zip(crow).for_each(|(a, b)| *a += b);
        }
    }
    let m = found.len().max(1) as f64;
    (
        sum.into_iter()
            .map(|r| r.into_iter().map(|v| v / m).collect())
            .collect(),
        usage,
    )
}

/// Measures one set of weights on the first `n` usable examples among the first
/// `SCAN` of `data`: a true fixed point (largest change of the last step under
/// 1e-10) with a nonzero gradient, since Theorem 1 speaks of fixed points and a
/// zero gradient has no direction to compare.
pub fn measure(
    label: &str,
    net: &Network,
    cfg: &Config,
    data: &Dataset,
    n: usize,
) -> (Vec<Row>, Usage) {
    let eps = cfg.epsilon as f64;
    let mut exact = Grads::zeros(net);
    let mut ep64: Vec<[Grads; 2]> = BETAS
        .iter()
        .map(|_| [Grads::zeros(net), Grads::zeros(net)])
        .collect();
    let (found, usage) = usable(label, net, data, n, eps);
    let mut idx = Vec::new();
    for (i, s_star, target, g) in found {
        idx.push(i);
        add(&mut exact, &g);
        for (b, &beta) in BETAS.iter().enumerate() {
            for (m, symmetric) in [false, true].into_iter().enumerate() {
                let e = gradient::ep_estimate(
                    net,
                    &s_star,
                    &target,
                    beta,
                    NUDGED_STEPS,
                    eps,
                    symmetric,
                );
                add(&mut ep64[b][m], &e);
            }
        }
    }
    let n = idx.len().max(1);
    let neg: Vec<Vec<f64>> = (0..net.weights.len())
        .map(|k| exact.layer(k).iter().map(|v| -v / n as f64).collect())
        .collect();
    let mut rows = Vec::new();
    for (b, &beta) in BETAS.iter().enumerate() {
        for (m, nudging) in ["one-sided", "symmetric"].into_iter().enumerate() {
            let f32_update = ep_f32(net, data, &idx, beta as f32, m == 1, cfg.epsilon);
            for (precision, g) in [("f64", None), ("f32", Some(&f32_update))] {
                for (k, truth) in neg.iter().enumerate() {
                    let est: Vec<f64> = match g {
                        Some(g) => g.layer(k),
                        None => ep64[b][m].layer(k).iter().map(|v| v / n as f64).collect(),
                    };
                    let (cosine, norm_ratio) = gradient::compare(&est, truth);
                    rows.push(Row {
                        weights: label.to_string(),
                        nudging,
                        precision,
                        beta,
                        layer: k,
                        cosine,
                        norm_ratio,
                    });
                }
            }
        }
    }
    (rows, usage)
}

/// Writes `gradcheck.csv` and one PNG per set of weights: 1 - cosine (worst
/// layer) against beta, per nudging and precision.
pub fn write(rows: &[Row], out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)
        .map_err(|e| crate::Error::io("cannot create output directory", out, e))?;
    let mut csv = String::from("weights,nudging,precision,beta,layer,cosine,norm_ratio\n");
    for r in rows {
        csv += &format!(
            "{},{},{},{},{},{},{}\n",
            r.weights, r.nudging, r.precision, r.beta, r.layer, r.cosine, r.norm_ratio
        );
    }
    write_atomic(&out.join("gradcheck.csv"), csv.as_bytes())?;
    let mut labels: Vec<&str> = rows.iter().map(|r| r.weights.as_str()).collect();
    labels.dedup();
    for label in labels {
        let mut series = Vec::new();
        for (i, (nudging, precision)) in [
            ("one-sided", "f64"),
            ("one-sided", "f32"),
            ("symmetric", "f64"),
            ("symmetric", "f32"),
        ]
        .into_iter()
        .enumerate()
        {
            let points: Vec<(f64, f64)> = BETAS
                .iter()
                .map(|&beta| {
                    let worst = rows
                        .iter()
                        .filter(|r| {
                            r.weights == label
                                && r.nudging == nudging
                                && r.precision == precision
                                && r.beta == beta
                        })
                        .map(|r| 1.0 - r.cosine)
                        .fold(0.0f64, f64::max);
                    (beta.log10(), worst.max(1e-16))
                })
                .collect();
            series.push((format!("{nudging}, {precision}"), points, PALETTE[i]));
        }
        let series: Vec<Series<'_>> = series
            .iter()
            .map(|(name, points, color)| Series {
                name,
                points: points.clone(),
                color: *color,
            })
            .collect();
        log_chart(
            &out.join(format!("gradcheck_{label}.png")),
            &format!("EP's update vs the exact gradient ({label} weights)"),
            "log10 beta",
            "1 - cosine (worst layer, log scale)",
            &series,
        )?;
    }
    Ok(())
}

/// Step by step, EP's nudged updates against BPTT's (Ernoult et al. 2019):
/// per nudged step t (rows) and layer (columns), the mean cosine over usable
/// examples, for the weight updates (W_k with b_{k+1}) and the neural updates
/// (layers 1..=L; NaN while BPTT's adjoint has not reached the layer), and for
/// the first example the traces of a few units.
pub struct GduReport {
    pub weights: Vec<Vec<f64>>,
    pub neurons: Vec<Vec<f64>>,
    /// (unit name, EP's (s_t - s_{t-1}) / beta, -eps dC/ds from BPTT) per step,
    /// both divided by the unit's largest |BPTT| value.
    pub traces: Vec<(String, Vec<f64>, Vec<f64>)>,
    pub usage: Usage,
}

pub fn gdu(
    label: &str,
    net: &Network,
    cfg: &Config,
    data: &Dataset,
    n: usize,
    steps: usize,
    beta: f64,
) -> GduReport {
    let eps = cfg.epsilon as f64;
    let (found, usage) = usable(label, net, data, n, eps);
    let depth = net.depth();
    let mut weights = vec![vec![0.0; depth]; steps];
    let mut neurons = vec![vec![0.0; depth]; steps];
    let mut traces = Vec::new();
    let cos = |a: &[f64], b: &[f64]| {
        if b.iter().all(|v| v.abs() < 1e-15) {
            f64::NAN // BPTT's signal has not reached this layer at this step
        } else {
            gradient::compare(a, b).0
        }
    };
    for (e, (_, s_star, target, _)) in found.iter().enumerate() {
        let trace = gradient::gdu(net, s_star, target, steps, steps, beta, eps);
        for (t, st) in trace.iter().enumerate() {
            for k in 0..depth {
                weights[t][k] += cos(&st.ep_params.layer(k), &st.bptt_params.layer(k));
                neurons[t][k] += cos(&st.ep_neurons[k + 1], &st.bptt_neurons[k + 1]);
            }
        }
        if e == 0 {
            // The output unit and the two first-layer units that BPTT moves most.
            let largest = |v: &[f64]| {
                let mut order: Vec<usize> = (0..v.len()).collect();
                order.sort_by(|&a, &b| v[b].abs().total_cmp(&v[a].abs()));
                order
            };
            let out = largest(&trace[0].bptt_neurons[depth])[0];
            let units = [(depth, out, "output")].into_iter().chain(
                largest(&trace[steps - 1].bptt_neurons[1])
                    .into_iter()
                    .take(2)
                    .map(|j| (1, j, "layer 1")),
            );
            for (k, j, what) in units {
                // Each unit scaled by its largest BPTT value, so all show on one chart.
                let bp: Vec<f64> = trace.iter().map(|st| st.bptt_neurons[k][j]).collect();
                let peak = bp.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
                traces.push((
                    format!("{what} unit {j}"),
                    trace.iter().map(|st| st.ep_neurons[k][j] / peak).collect(),
                    bp.iter().map(|v| v / peak).collect(),
                ));
            }
        }
    }
    let m = found.len().max(1) as f64;
    for row in weights.iter_mut().chain(neurons.iter_mut()) {
        row.iter_mut().for_each(|v| *v /= m);
    }
    GduReport {
        weights,
        neurons,
        traces,
        usage,
    }
}

/// Writes gdu.csv, gdu_cosine.png and gdu_units.png into `out`; returns the table.
pub fn write_gdu(report: &GduReport, title: &str, out: &Path) -> Result<String> {
    std::fs::create_dir_all(out)
        .map_err(|e| crate::Error::io("cannot create output directory", out, e))?;
    let depth = report.weights.first().map_or(0, |r| r.len());
    let mut csv = String::from("t,layer,weights_cosine,neurons_cosine\n");
    let mut table = format!("{:>4}", "t");
    for k in 1..=depth {
        table += &format!("  {:>8} {:>8}", format!("W{}", k - 1), format!("s{k}"));
    }
    table += "\n";
    for (t, (w, s)) in report.weights.iter().zip(&report.neurons).enumerate() {
        table += &format!("{:>4}", t + 1);
        for k in 0..depth {
            table += &format!("  {:>8.4} {:>8.4}", w[k], s[k]);
            csv += &format!("{},{},{},{}\n", t + 1, k + 1, w[k], s[k]);
        }
        table += "\n";
    }
    write_atomic(&out.join("gdu.csv"), csv.as_bytes())?;
    let names: Vec<(String, String)> = (0..depth)
        .map(|k| (format!("W{k}, b{}", k + 1), format!("s{}", k + 1)))
        .collect();
    let mut series = Vec::new();
    for (k, (wn, sn)) in names.iter().enumerate() {
        let pick = |rows: &[Vec<f64>]| -> Vec<(f64, f64)> {
            rows.iter()
                .enumerate()
                .map(|(t, r)| ((t + 1) as f64, r[k]))
                .collect()
        };
        let color = PALETTE[k % PALETTE.len()];
        series.push(Series {
            name: wn,
            points: pick(&report.weights),
            color,
        });
        series.push(Series {
            name: sn,
            points: pick(&report.neurons),
            color: PALETTE[(k + depth) % PALETTE.len()],
        });
    }
    crate::plot::linear_chart(
        &out.join("gdu_cosine.png"),
        &format!("EP step t vs BPTT step T-t, cosine ({title})"),
        "nudged step t",
        "cosine (weights W_k, neurons s_k)",
        &series,
    )?;
    let labels: Vec<(String, String)> = report
        .traces
        .iter()
        .map(|(n, _, _)| (format!("{n}: EP"), format!("{n}: BPTT")))
        .collect();
    let mut series = Vec::new();
    for (i, ((_, ep, bp), (le, lb))) in report.traces.iter().zip(&labels).enumerate() {
        let pts = |v: &[f64]| -> Vec<(f64, f64)> {
            v.iter()
                .enumerate()
                .map(|(t, &y)| ((t + 1) as f64, y))
                .collect()
        };
        series.push(Series {
            name: le,
            points: pts(ep),
            color: PALETTE[(2 * i) % PALETTE.len()],
        });
        series.push(Series {
            name: lb,
            points: pts(bp),
            color: PALETTE[(2 * i + 1) % PALETTE.len()],
        });
    }
    crate::plot::linear_chart(
        &out.join("gdu_units.png"),
        &format!("EP (s_t - s_t-1)/beta vs BPTT -eps dC/ds, one example ({title})"),
        "nudged step t",
        "update / largest |BPTT| of the unit",
        &series,
    )?;
    Ok(table)
}

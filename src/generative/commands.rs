//! The generative model's commands on a trained run: sample, infer, parzen,
//! inpaint. Each reads a run directory, writes its figures and a JSON report
//! beside them, and returns a printable table.

use super::Model;
use super::evaluate::{self, Parzen};
use super::impute::{self, Mask};
use super::inference::{self, Dynamics, Scratch};
use super::sample::{self, Prior, PriorKind, Sampler};
use crate::data::Splits;
use crate::error::Result;
use crate::plot::{PALETTE, Series, image_grid, linear_chart};
use crate::tensor::Matrix;
use crate::train::checkpoint::write_atomic;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::borrow::Borrow;
use std::fmt::Write as _;
use std::path::Path;

const SIDE: usize = 28;

fn need_some(count: usize) -> Result<()> {
    if count == 0 {
        return Err(crate::Error::Config("--count must be at least 1".into()));
    }
    Ok(())
}

fn load(dir: &Path) -> Result<(Model, Splits, crate::config::Config)> {
    let (cfg, model) = Model::load_run(dir)?;
    let splits = crate::train::load_data(&crate::config::Config {
        limit: 0,
        eval_limit: 0,
        ..cfg.clone()
    })?;
    Ok((model, splits, cfg))
}

/// Training images the full prior is fitted to (their inferred top codes).
const PRIOR_FIT_IMAGES: usize = 10_000;
/// EM iterations of the mixture prior's fit.
const MIXTURE_EM_ITERATIONS: usize = 30;

/// The inferred top codes of the first training images, with the run's own
/// INFERENCE: what every fitted prior is fitted to.
fn fit_codes(model: &Model, splits: &Splits, cfg: &crate::config::Config) -> Matrix {
    let images = first_rows(&splits.train.images, PRIOR_FIT_IMAGES);
    sample::inferred_codes(model, &images, &Model::dynamics(&cfg.generative()))
}

/// The prior `s` asks for; `codes` (see [`fit_codes`]) are asked for only
/// where a prior is fitted to them, owned or borrowed.
fn prior_for<C: Borrow<Matrix>>(s: &Sampler, codes: impl FnOnce() -> C) -> Prior {
    match s.prior {
        PriorKind::Diagonal => Prior::Diagonal,
        PriorKind::DiagonalFit => sample::fit_diagonal_prior(codes().borrow()),
        PriorKind::Full => sample::fit_full_prior(codes().borrow()),
        // A fixed seed: the fitted prior is part of the model, not of a sample.
        PriorKind::Mixture(components) => {
            let mut rng = rand::SeedableRng::seed_from_u64(0);
            sample::fit_mixture(
                codes().borrow(),
                components,
                MIXTURE_EM_ITERATIONS,
                &mut rng,
            )
        }
    }
}

/// The digit an EP classifier's free-phase states (`eqprop::free_states`, one
/// row: every layer, the output last) read.
fn classified_digit(states: &[f32]) -> usize {
    crate::tensor::kernels::argmax(&states[states.len() - crate::data::CLASSES..])
}

fn rows_of(m: &Matrix, n: usize) -> Vec<&[f32]> {
    (0..n.min(m.rows)).map(|i| m.row(i)).collect()
}

fn first_rows(m: &Matrix, n: usize) -> Matrix {
    let n = n.min(m.rows);
    Matrix::from_vec(n, m.cols, m.data[..n * m.cols].to_vec())
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("report serializes") + "\n";
    write_atomic(path, text.as_bytes())
}

/// `plasticity sample`: a grid of ancestral samples, the same samples after
/// the refinement, and chains over rounds (one chain per row).
pub fn sample_run(dir: &Path, out: &Path, s: &Sampler, count: usize, seed: u64) -> Result<String> {
    need_some(count)?;
    let (model, splits, cfg) = load(dir)?;
    std::fs::create_dir_all(out).map_err(|e| crate::Error::io("cannot create", out, e))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let prior = prior_for(s, || fit_codes(&model, &splits, &cfg));
    let ancestral = sample::ancestral(&model, &prior, count, s.prior_scale, &mut rng);
    let mut refined = ancestral.clone();
    sample::refine(&model, &mut refined, s, &mut rng, None);
    let cols = (count as f64).sqrt().ceil() as usize;
    let a = out.join("samples_ancestral.png");
    let r = out.join("samples_refined.png");
    image_grid(
        &a,
        "ancestral samples (top prior, then the decoders)",
        &rows_of(&ancestral, count),
        SIDE,
        cols,
        2,
    )?;
    let title = format!(
        "after {} refinement rounds (N={}, delta={}, alpha={}, corruption {})",
        s.rounds, s.dynamics.steps, s.dynamics.rate, s.dynamics.top_down, s.corruption
    );
    image_grid(&r, &title, &rows_of(&refined, count), SIDE, cols, 2)?;
    // Chains: 10 samples, each followed through 20 rounds.
    let (chains, rounds) = (10, 20);
    let mut x = first_rows(&ancestral, chains);
    let mut frames = vec![x.clone()];
    sample::refine(
        &model,
        &mut x,
        &Sampler { rounds, ..*s },
        &mut rng,
        Some(&mut frames),
    );
    let mut cells = Vec::new();
    for c in 0..x.rows {
        for f in &frames {
            cells.push(f.row(c));
        }
    }
    let chain = out.join("chain.png");
    image_grid(
        &chain,
        "refinement chains: ancestral sample, then one round per column",
        &cells,
        SIDE,
        frames.len(),
        2,
    )?;
    Ok(format!(
        "wrote {}, {} and {}",
        a.display(),
        r.display(),
        chain.display()
    ))
}

#[derive(Serialize)]
struct TraceReport {
    images: usize,
    settings: Vec<TraceSeries>,
}

#[derive(Serialize)]
struct TraceSeries {
    rate: f32,
    top_down: f32,
    /// Mean log p(x, h) before the first iteration and after each.
    log_p: Vec<f64>,
    /// Its first term, log p(x | h_1).
    log_p_x: Vec<f64>,
}

/// `plasticity infer`: mean log p(x, h) over test digits, per INFERENCE
/// iteration, for each (delta, alpha); a PNG, a CSV and JSON in `out`.
pub fn infer_run(
    dir: &Path,
    out: &Path,
    settings: &[(f32, f32)],
    steps: usize,
    count: usize,
) -> Result<String> {
    need_some(count)?;
    let (model, splits, _) = load(dir)?;
    let x = first_rows(&splits.test.images, count);
    let mut series = Vec::new();
    for &(rate, top_down) in settings {
        let d = Dynamics {
            steps: 1,
            rate,
            top_down,
            noise: 0.0,
        };
        let mut h = inference::encode(&model, &x);
        let mut scratch = Scratch::new(&model.sizes, x.rows);
        let (mut log_p, mut log_p_x) = (Vec::new(), Vec::new());
        for t in 0..=steps {
            if t > 0 {
                inference::infer(&model, &mut h, &d, &mut scratch, None, None);
            }
            let terms = inference::log_joint_terms(&model, &h, &mut scratch);
            log_p.push(terms.iter().sum());
            log_p_x.push(terms[0]);
        }
        series.push(TraceSeries {
            rate,
            top_down,
            log_p,
            log_p_x,
        });
    }
    std::fs::create_dir_all(out).map_err(|e| crate::Error::io("cannot create", out, e))?;
    let names: Vec<String> = series
        .iter()
        .map(|s| format!("delta {} alpha {}", s.rate, s.top_down))
        .collect();
    let mut csv = String::from("iteration,delta,alpha,log_p_xh,log_p_x_given_h1\n");
    let mut table = format!("mean log p(x, h) over {} test digits (nats)\n", x.rows);
    for (s, name) in series.iter().zip(&names) {
        for t in 0..=steps {
            let _ = writeln!(
                csv,
                "{t},{},{},{},{}",
                s.rate, s.top_down, s.log_p[t], s.log_p_x[t]
            );
        }
        let _ = writeln!(
            table,
            "  {name:<24} start {:9.2}  after {steps:2} {:9.2}  (log p(x|h1): {:8.2} -> {:8.2})",
            s.log_p[0], s.log_p[steps], s.log_p_x[0], s.log_p_x[steps]
        );
    }
    write_atomic(&out.join("inference.csv"), csv.as_bytes())?;
    let curves = |pick: fn(&TraceSeries) -> &Vec<f64>| -> Vec<Series> {
        series
            .iter()
            .zip(&names)
            .enumerate()
            .map(|(i, (s, name))| Series {
                name,
                points: pick(s)
                    .iter()
                    .enumerate()
                    .map(|(t, &v)| (t as f64, v))
                    .collect(),
                color: PALETTE[i % PALETTE.len()],
            })
            .collect()
    };
    linear_chart(
        &out.join("inference.png"),
        "log p(x, h) during inference (test digits)",
        "INFERENCE iteration",
        "mean log p(x, h) (nats)",
        &curves(|s| &s.log_p),
    )?;
    linear_chart(
        &out.join("inference_x.png"),
        "log p(x | h1) during inference (test digits)",
        "INFERENCE iteration",
        "mean log p(x | h1) (nats)",
        &curves(|s| &s.log_p_x),
    )?;
    write_json(
        &out.join("inference.json"),
        &TraceReport {
            images: x.rows,
            settings: series,
        },
    )?;
    Ok(table)
}

/// One row of the sample-quality table.
#[derive(Clone, Debug, Serialize)]
pub struct QualityRow {
    pub samples: String,
    /// Parzen window chosen on validation, and the test log-likelihood there.
    pub sigma: f32,
    pub parzen_val: f64,
    pub parzen_test: f64,
    pub parzen_test_stderr: f64,
    /// Frechet distance to the test images on the classifier's features.
    pub frechet: f64,
    /// Median Euclidean distance from a sample to its nearest training image
    /// (not measured for the training images themselves).
    pub nearest_train_median: Option<f64>,
    /// Fraction of samples closer to a training image than 99% of test images are.
    pub near_copies: Option<f64>,
    /// The test log-likelihood of each digit class's images, 0 to 9: a class
    /// the samples miss shows as a low entry.
    pub parzen_test_by_digit: Vec<f64>,
    /// The share of samples that the classifier reads as each digit, 0 to 9.
    pub digit_shares: Vec<f64>,
}

/// `plasticity parzen`: the paper's Parzen table for ancestral and refined
/// samples (and real training images as the reference), with a Frechet
/// distance on the features of the EP classifier in `classifier`.
pub fn parzen_run(
    dir: &Path,
    classifier: &Path,
    out: &Path,
    refined: &Sampler,
    count: usize,
    seed: u64,
) -> Result<(String, Vec<QualityRow>)> {
    need_some(count)?;
    let (model, splits, cfg) = load(dir)?;
    let (ccfg, net) = crate::eqprop::load_run(classifier)?;
    let features = |m: &Matrix| crate::eqprop::free_states(&ccfg, &net, m);
    let test_moments = evaluate::moments(&features(&splits.test.images));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Inferred once: the report's correlation line and any fitted prior read them.
    let codes = fit_codes(&model, &splits, &cfg);
    let prior = prior_for(refined, || &codes);
    let ancestral = sample::ancestral(&model, &prior, count, refined.prior_scale, &mut rng);
    let mut better = ancestral.clone();
    sample::refine(&model, &mut better, refined, &mut rng, None);
    let real = first_rows(&splits.train.images, count);
    // How far test digits lie from the training set: the yardstick for copies.
    let probe = 1000;
    let test_nn: Vec<f32> = evaluate::nearest(
        &first_rows(&splits.test.images, probe),
        &splits.train.images,
    )
    .iter()
    .map(|p| p.0)
    .collect();
    let mut sorted = test_nn.clone();
    sorted.sort_by(f32::total_cmp);
    let copy_line = sorted[sorted.len() / 100];
    let mut rows = Vec::new();
    let kind = match refined.prior {
        PriorKind::Diagonal => "diagonal".to_string(),
        PriorKind::DiagonalFit => "diagonal (fitted after training)".to_string(),
        PriorKind::Full => "full".to_string(),
        PriorKind::Mixture(c) => format!("{c}-component mixture"),
    };
    let named = [
        (format!("ancestral, {kind} prior"), &ancestral),
        (
            format!(
                "refined: {} rounds, alpha {}, corruption {}, noise {}",
                refined.rounds,
                refined.dynamics.top_down,
                refined.corruption,
                refined.dynamics.noise
            ),
            &better,
        ),
        (format!("training images ({count}, reference)"), &real),
    ];
    for (name, samples) in named {
        let best = evaluate::best_parzen(samples, &splits.val.images);
        let per_image =
            evaluate::parzen_per_image(samples, &splits.test.images, &[best.sigma]).remove(0);
        let test = Parzen::of(best.sigma, &per_image);
        let by_digit = (0..crate::data::CLASSES as u8)
            .map(|d| {
                let of_d: Vec<f64> = per_image
                    .iter()
                    .zip(&splits.test.labels)
                    .filter(|(_, l)| **l == d)
                    .map(|(v, _)| *v)
                    .collect();
                evaluate::mean_stderr(&of_d).0
            })
            .collect();
        let f = features(samples);
        let (m, c) = evaluate::moments(&f);
        let mut shares = vec![0.0; crate::data::CLASSES];
        for i in 0..f.rows {
            shares[classified_digit(f.row(i))] += 1.0 / f.rows as f64;
        }
        let frechet = evaluate::frechet(&m, &c, &test_moments.0, &test_moments.1);
        let reference = name.starts_with("training");
        let (mut median, mut copies) = (None, None);
        if !reference {
            let nn = evaluate::nearest(&first_rows(samples, probe), &splits.train.images);
            let mut d: Vec<f64> = nn.iter().map(|p| (p.0 as f64).sqrt()).collect();
            d.sort_by(f64::total_cmp);
            median = Some(d[d.len() / 2]);
            copies = Some(nn.iter().filter(|p| p.0 < copy_line).count() as f64 / nn.len() as f64);
            let shown = 10.min(nn.len());
            let pairs: Vec<&[f32]> = (0..shown)
                .map(|i| samples.row(i))
                .chain((0..shown).map(|i| splits.train.images.row(nn[i].1)))
                .collect();
            let file = if name.starts_with("ancestral") {
                "nearest_ancestral.png"
            } else {
                "nearest_refined.png"
            };
            std::fs::create_dir_all(out).map_err(|e| crate::Error::io("cannot create", out, e))?;
            let title = format!("{name}: samples (top), nearest training images (bottom)");
            image_grid(&out.join(file), &title, &pairs, SIDE, shown, 2)?;
        }
        rows.push(QualityRow {
            samples: name,
            sigma: best.sigma,
            parzen_val: best.mean,
            parzen_test: test.mean,
            parzen_test_stderr: test.stderr,
            frechet,
            nearest_train_median: median,
            near_copies: copies,
            parzen_test_by_digit: by_digit,
            digit_shares: shares,
        });
    }
    let test_median = {
        let mut d: Vec<f64> = test_nn.iter().map(|&v| (v as f64).sqrt()).collect();
        d.sort_by(f64::total_cmp);
        d[d.len() / 2]
    };
    write_json(&out.join("parzen.json"), &rows)?;
    let mut table = format!(
        "{count} samples; Parzen sigma chosen on the 10,000 validation images; Frechet distance \
         to the test set on the features of {}\n\
         {:<56} {:>6} {:>10} {:>16} {:>9} {:>12} {:>8}\n",
        classifier.display(),
        "samples",
        "sigma",
        "Parzen val",
        "Parzen test",
        "Frechet",
        "NN distance",
        "copies"
    );
    for r in &rows {
        let (nn, copies) = match (r.nearest_train_median, r.near_copies) {
            (Some(d), Some(c)) => (format!("{d:.2}"), format!("{:.1}%", 100.0 * c)),
            _ => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            table,
            "{:<56} {:>6.3} {:>10.1} {:>9.1} ± {:<4.1} {:>9.2} {:>12} {:>8}",
            r.samples,
            r.sigma,
            r.parzen_val,
            r.parzen_test,
            r.parzen_test_stderr,
            r.frechet,
            nn,
            copies
        );
    }
    let mut per_digit = |title: &str, cell: &dyn Fn(&QualityRow) -> Vec<String>| {
        let _ = writeln!(table, "{title} (0-9):");
        for r in &rows {
            let _ = writeln!(table, "{:<56} {}", r.samples, cell(r).join(" "));
        }
    };
    per_digit("Parzen test by digit class", &|r| {
        let v = &r.parzen_test_by_digit;
        v.iter().map(|v| format!("{v:6.1}")).collect()
    });
    per_digit(
        "share of samples the classifier reads as each digit",
        &|r| {
            let v = &r.digit_shares;
            v.iter().map(|v| format!("{:5.1}%", 100.0 * v)).collect()
        },
    );
    let _ = writeln!(
        table,
        "test digits' median distance to their nearest training image: {test_median:.2}; \
         `copies`: samples nearer a training image than 99% of test digits are ({:.2})",
        (copy_line as f64).sqrt()
    );
    let _ = writeln!(
        table,
        "top codes of the first {} training digits (the run's INFERENCE): RMS correlation \
         between units {:.3} (the paper's diagonal prior assumes 0)",
        codes.rows,
        super::rms_correlation(&codes)
    );
    Ok((table, rows))
}

/// The imputation report of one mask.
#[derive(Clone, Debug, Serialize)]
pub struct InpaintReport {
    pub mask: String,
    pub images: usize,
    /// Mean squared error per missing pixel.
    pub mean_fill: f64,
    pub feed_forward: f64,
    /// After each encode/decode step of the model's imputation.
    pub model: Vec<f64>,
    /// Test accuracy of the EP classifier on: complete, mean-filled,
    /// feed-forward-filled and model-imputed images.
    pub accuracy_complete: f64,
    pub accuracy_mean_fill: f64,
    pub accuracy_feed_forward: f64,
    pub accuracy_model: f64,
}

/// How `inpaint_run` imputes.
#[derive(Clone, Copy, Debug)]
pub struct Inpainting {
    /// alpha of each encode/decode step's INFERENCE (the rest is the run's own).
    pub top_down: f32,
    /// Encode/decode steps.
    pub steps: usize,
    /// Test digits used (the first ones).
    pub count: usize,
    /// Seed of the random masks (and of the chain's noise).
    pub seed: u64,
    /// Std of the noise in each hidden update of INFERENCE (0: none, deterministic).
    pub noise: f32,
    /// Report the running mean of the chain's images instead of its last one.
    pub average: bool,
}

/// `plasticity inpaint`: imputation of `mask` on the first test digits.
pub fn inpaint_run(
    dir: &Path,
    classifier: &Path,
    out: &Path,
    mask: Mask,
    settings: &Inpainting,
) -> Result<(String, InpaintReport)> {
    need_some(settings.count)?;
    let (model, splits, cfg) = load(dir)?;
    let Inpainting {
        top_down,
        steps,
        count,
        seed,
        noise,
        average,
    } = *settings;
    let dynamics = Dynamics {
        top_down,
        noise,
        ..Model::dynamics(&cfg.generative())
    };
    let truth = first_rows(&splits.test.images, count);
    let labels = &splits.test.labels[..truth.rows];
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let seen = impute::observed(mask, truth.rows, SIDE, &mut rng);
    let n = truth.cols;
    let mut mean_pixel = vec![0.0f32; n];
    for row in splits.train.images.data.chunks_exact(n) {
        for (m, &v) in mean_pixel.iter_mut().zip(row) {
            *m += v / splits.train.len() as f32;
        }
    }
    let mean_filled = impute::merge(&truth, &seen, &mean_pixel);
    let ff = impute::merge(
        &truth,
        &seen,
        &impute::feed_forward_fill(&model, &mean_filled).data,
    );
    let trail = impute::impute(
        &model,
        &mean_filled,
        &seen,
        &dynamics,
        steps,
        Some(&mut rng),
    );
    let trail = if average {
        impute::running_mean(&trail)
    } else {
        trail
    };
    let filled = trail.last().unwrap_or(&mean_filled);
    let (ccfg, net) = crate::eqprop::load_run(classifier)?;
    let accuracy = |m: &Matrix| {
        let f = crate::eqprop::free_states(&ccfg, &net, m);
        let right = (0..m.rows)
            .filter(|&i| classified_digit(f.row(i)) == labels[i] as usize)
            .count();
        right as f64 / m.rows.max(1) as f64
    };
    let report = InpaintReport {
        mask: mask.to_string(),
        images: truth.rows,
        mean_fill: impute::missing_error(&truth, &mean_filled, &seen),
        feed_forward: impute::missing_error(&truth, &ff, &seen),
        model: trail
            .iter()
            .map(|x| impute::missing_error(&truth, x, &seen))
            .collect(),
        accuracy_complete: accuracy(&truth),
        accuracy_mean_fill: accuracy(&mean_filled),
        accuracy_feed_forward: accuracy(&ff),
        accuracy_model: accuracy(filled),
    };
    std::fs::create_dir_all(out).map_err(|e| crate::Error::io("cannot create", out, e))?;
    // Rows: original, masked (missing pixels grey), feed-forward, model.
    let shown = 12.min(truth.rows);
    let masked = impute::merge(&truth, &seen, &vec![0.35; n]);
    let mut cells = Vec::new();
    for m in [&truth, &masked, &ff, filled] {
        cells.extend(rows_of(m, shown));
    }
    let name = format!("inpaint_{mask}");
    image_grid(
        &out.join(format!("{name}.png")),
        &format!("{mask}: original / masked / feed-forward / model ({steps} steps)"),
        &cells,
        SIDE,
        shown,
        2,
    )?;
    write_json(&out.join(format!("{name}.json")), &report)?;
    let mut table = format!(
        "{mask}, {} test digits: mean squared error per missing pixel\n  mean fill {:.4}   feed-forward {:.4}   model:",
        truth.rows, report.mean_fill, report.feed_forward
    );
    for (t, e) in report.model.iter().enumerate() {
        if t < 3 || (t + 1) % 5 == 0 {
            let _ = write!(table, "  {}:{:.4}", t + 1, e);
        }
    }
    let _ = write!(
        table,
        "\n  classifier accuracy: complete {:.2}%, mean fill {:.2}%, feed-forward {:.2}%, model {:.2}%\n",
        100.0 * report.accuracy_complete,
        100.0 * report.accuracy_mean_fill,
        100.0 * report.accuracy_feed_forward,
        100.0 * report.accuracy_model
    );
    Ok((table, report))
}

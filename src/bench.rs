//! Speed, measured: the machine's fp32 peak, the hot kernels, whole epochs.
//!
//! FLOPs are counted analytically (GEMMs dominate; element-wise work is not
//! counted), so GFLOP/s here are a lower bound on the arithmetic done.

use crate::config::Config;
use crate::data::Splits;
use crate::tensor::{Matrix, Op, gemm, kernels};
use crate::train::build_learner;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::hint::black_box;
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub seconds: f64,
    pub gflops: f64,
    /// Fraction of the fp32 peak of the cores used.
    pub fraction_of_peak: f64,
    pub threads: usize,
    pub note: String,
}

/// Peak fp32 GFLOP/s of one core: 12 independent FMA chains on the widest
/// vectors the CPU has (distinct start values, so none can be folded).
pub fn peak_gflops_one_core() -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return unsafe { fma_peak::avx512() };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return unsafe { fma_peak::avx2() };
        }
    }
    f64::NAN
}

#[cfg(target_arch = "x86_64")]
mod fma_peak {
    use std::arch::x86_64::*;
    use std::time::Instant;
    const ITERS: usize = 20_000_000;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn avx512() -> f64 {
        let m = _mm512_set1_ps(0.999_999);
        let a = _mm512_set1_ps(1e-7);
        let mut acc: [__m512; 12] = [_mm512_setzero_ps(); 12];
        for (i, v) in acc.iter_mut().enumerate() {
            *v = _mm512_set1_ps(i as f32 + 1.0);
        }
        let t = Instant::now();
        for _ in 0..ITERS {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, m, a);
            }
        }
        let dt = t.elapsed().as_secs_f64();
        let mut sum = 0.0;
        for v in acc {
            let mut out = [0f32; 16];
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), v) };
            sum += out.iter().sum::<f32>();
        }
        std::hint::black_box(sum);
        (ITERS * 12 * 16 * 2) as f64 / dt / 1e9
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2() -> f64 {
        let m = _mm256_set1_ps(0.999_999);
        let a = _mm256_set1_ps(1e-7);
        let mut acc: [__m256; 12] = [_mm256_setzero_ps(); 12];
        for (i, v) in acc.iter_mut().enumerate() {
            *v = _mm256_set1_ps(i as f32 + 1.0);
        }
        let t = Instant::now();
        for _ in 0..ITERS {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, m, a);
            }
        }
        let dt = t.elapsed().as_secs_f64();
        let mut sum = 0.0;
        for v in acc {
            let mut out = [0f32; 8];
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
            sum += out.iter().sum::<f32>();
        }
        std::hint::black_box(sum);
        (ITERS * 12 * 8 * 2) as f64 / dt / 1e9
    }
}

/// Rounds of each peak measurement; the best counts. A core taken away for a
/// moment (a shared or virtual machine) makes a round read low, and a peak
/// read low would inflate every fraction of it.
const PEAK_ROUNDS: usize = 5;

/// One core's peak alone, the best of [`PEAK_ROUNDS`].
pub fn peak_gflops_alone() -> f64 {
    (0..PEAK_ROUNDS)
        .map(|_| peak_gflops_one_core())
        .fold(f64::NAN, f64::max)
}

/// The machine's peak: one core's FMA chains on every thread of the current
/// rayon pool at once, the best of [`PEAK_ROUNDS`].
pub fn peak_gflops() -> f64 {
    let round = || -> f64 { rayon::broadcast(|_| peak_gflops_one_core()).iter().sum() };
    (0..PEAK_ROUNDS).map(|_| round()).fold(f64::NAN, f64::max)
}

fn time_it(min_seconds: f64, mut f: impl FnMut()) -> f64 {
    f();
    let mut reps = 1usize;
    loop {
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        let dt = t.elapsed().as_secs_f64();
        if dt >= min_seconds {
            return dt / reps as f64;
        }
        reps = (reps * 2).max((reps as f64 * min_seconds / dt.max(1e-9)) as usize);
    }
}

/// The GEMM shapes of the batch-20 EP hot loop, single-threaded.
pub fn kernels(peak_one_core: f64) -> Vec<Row> {
    let shapes: [(&str, usize, usize, usize, Op); 6] = [
        ("gemm x W0 (20x784x500)", 20, 784, 500, Op::N),
        ("gemm s1 W1 (20x500x500)", 20, 500, 500, Op::N),
        ("gemm s W^T (20x500x500)", 20, 500, 500, Op::T),
        ("gemm s1 W1 (20x500x10)", 20, 500, 10, Op::N),
        ("gemm s2 W1^T (20x10x500)", 20, 10, 500, Op::T),
        ("gemm x^T ds1 (784x20x500)", 784, 20, 500, Op::N),
    ];
    let mut rows = Vec::new();
    for (name, m, k, n, tb) in shapes {
        let a = Matrix::from_vec(m, k, (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect());
        let b = match tb {
            Op::N => Matrix::from_vec(k, n, (0..k * n).map(|i| (i % 5) as f32 * 0.01).collect()),
            Op::T => Matrix::from_vec(n, k, (0..k * n).map(|i| (i % 5) as f32 * 0.01).collect()),
        };
        let mut c = Matrix::zeros(m, n);
        let (a, b) = if m == 784 {
            // The rank-20 update: A^T B with A 20x784.
            let at = Matrix::from_vec(k, m, a.data.clone());
            (at, b)
        } else {
            (a, b)
        };
        let ta = if m == 784 { Op::T } else { Op::N };
        let secs = time_it(0.2, || {
            gemm(c.view_mut(), true, 1.0, a.view(), ta, b.view(), tb);
            black_box(&c);
        });
        let flops = 2.0 * (m * k * n) as f64;
        rows.push(Row {
            name: name.to_string(),
            seconds: secs,
            gflops: flops / secs / 1e9,
            fraction_of_peak: flops / secs / 1e9 / peak_one_core,
            threads: 1,
            note: String::new(),
        });
    }
    let (r, n) = (20, 500);
    let mut s = vec![0.5f32; r * n];
    let d: Vec<f32> = (0..r * n).map(|i| (i % 11) as f32 * 0.1).collect();
    let o = vec![0.1f32; n];
    let secs = time_it(0.2, || {
        black_box(kernels::relax_layer(&mut s, &d, &o, 0, n, 0.5, None));
    });
    rows.push(Row {
        name: "fused relax step (20x500)".into(),
        seconds: secs,
        gflops: (5 * r * n) as f64 / secs / 1e9,
        fraction_of_peak: (5 * r * n) as f64 / secs / 1e9 / peak_one_core,
        threads: 1,
        note: format!("{:.2} ns/element", secs / (r * n) as f64 * 1e9),
    });
    rows
}

/// Times one training epoch of `cfg` (or its first `examples` examples,
/// extrapolated to the full training set) plus evaluation of validation and
/// test, `repeats` times over (successive epochs of one learner); the fastest
/// counts, as for the peak: on a shared machine other work only ever slows a
/// run down. The note lists every repeat's total.
/// `name` labels the rows (the preset, and the scheme if not the paper's).
pub fn epoch(
    name: &str,
    cfg: &Config,
    splits: &Splits,
    examples: usize,
    repeats: usize,
    peak: f64,
) -> crate::Result<Vec<Row>> {
    let n_full = splits.train.len();
    let n = if examples == 0 {
        n_full
    } else {
        examples.min(n_full)
    };
    let n_eval = splits.val.len() + splits.test.len();
    let mut learner = build_learner(cfg, [n_full, splits.val.len(), splits.test.len()])?;
    let (train_flops_full, eval_flops) = learner.flops_per_example();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let order: Vec<usize> = (0..n).collect();
    // Evaluation scales the same way: time a share of it when training was sampled.
    let eval_n = if n == n_full {
        n_eval
    } else {
        (n_eval * n / n_full).max(1)
    };
    let eval_set = splits.val.slice(0, eval_n.min(splits.val.len()));
    // (train seconds, eval seconds, train FLOPs per example, free steps per example)
    let mut runs = Vec::new();
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        for batch in order.chunks(cfg.batch_size) {
            black_box(learner.train_batch(&splits.train, batch, &mut rng));
        }
        let train_secs = t.elapsed().as_secs_f64() * n_full as f64 / n as f64;
        // With a tolerance the free phase may stop early: count the steps it took.
        let steps_mean = learner.take_free_steps_mean();
        let train_flops = match steps_mean {
            Some(m) => {
                train_flops_full - (cfg.free_steps as f64 - m) * learner.flops_per_free_step()
            }
            None => train_flops_full,
        };
        let t = Instant::now();
        let val = learner.evaluate(&eval_set);
        let eval_secs = t.elapsed().as_secs_f64() * n_eval as f64 / val.examples as f64;
        runs.push((train_secs, eval_secs, train_flops, steps_mean));
    }
    let totals: Vec<String> = runs.iter().map(|r| format!("{:.3}", r.0 + r.1)).collect();
    let &(train_secs, eval_secs, train_flops, steps_mean) = runs
        .iter()
        .min_by(|a, b| (a.0 + a.1).total_cmp(&(b.0 + b.1)))
        .expect("at least one repeat");
    let total_flops = train_flops * n_full as f64 + eval_flops * n_eval as f64;
    let total = train_secs + eval_secs;
    let mut note = if n == n_full {
        "measured".to_string()
    } else {
        format!("extrapolated from {n} training examples")
    };
    if runs.len() > 1 {
        note += &format!(
            "; fastest of {} epochs (totals {} s)",
            runs.len(),
            totals.join(", ")
        );
    }
    if let Some(m) = steps_mean {
        note += &format!("; {m:.1} free steps per example");
    }
    let row = |name: String, secs: f64, flops: f64| Row {
        name,
        seconds: secs,
        gflops: flops / secs / 1e9,
        fraction_of_peak: flops / secs / 1e9 / peak,
        threads: cfg.threads,
        note: note.clone(),
    };
    Ok(vec![
        row(
            format!("{} epoch: train {} examples", name, n_full),
            train_secs,
            train_flops * n_full as f64,
        ),
        row(
            format!("{} epoch: evaluate {} examples", name, n_eval),
            eval_secs,
            eval_flops * n_eval as f64,
        ),
        row(format!("{} epoch: total", name), total, total_flops),
    ])
}

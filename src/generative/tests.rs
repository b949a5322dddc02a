//! The generative model against plain references: each pair's gradients by
//! finite differences of its loss, one INFERENCE iteration and log p(x, h) by
//! f64 loops, the Parzen, Frechet and nearest-neighbour evaluations by
//! brute force.
#![allow(clippy::needless_range_loop)]

use super::evaluate;
use super::impute::{self, Mask};
use super::inference::{self, Dynamics, Scratch};
use super::map::Map;
use super::sample::{self, Prior};
use super::*;
use rand::{RngExt, SeedableRng};

const SIZES: [usize; 3] = [6, 5, 3];

fn config(training: PairTraining) -> Config {
    Config {
        layers: SIZES.to_vec(),
        batch_size: 4,
        learning_rates: vec![1e-3, 1e-3],
        corruption: Some(vec![0.0, 0.0]),
        spike_samples: Some(0),
        pair_training: Some(training),
        threads: 1,
        ..crate::config::preset("generative-mnist-2h").unwrap()
    }
}

fn random_matrix(rows: usize, cols: usize, rng: &mut ChaCha8Rng) -> Matrix {
    let data = (0..rows * cols)
        .map(|_| rng.random_range(0.05..0.95))
        .collect();
    Matrix::from_vec(rows, cols, data)
}

/// A model with random biases, and a learner whose work memory holds 4 random
/// images and their feed-forward codes.
fn setup(training: PairTraining, seed: u64) -> Generative {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut g = Generative::new(&config(training));
    for m in g.model.enc.iter_mut().chain(g.model.dec.iter_mut()) {
        m.b.iter_mut()
            .for_each(|b| *b = rng.random_range(-0.5..0.5));
    }
    g.train.h[0] = random_matrix(4, SIZES[0], &mut rng);
    for m in g.train.h.iter_mut().skip(1) {
        m.set_rows(4);
    }
    inference::feed_forward(&g.model, &mut g.train.h);
    g
}

/// act(u W + b) for one row, in f64.
fn map_ref(m: &Map, u: &[f64]) -> Vec<f64> {
    (0..m.outputs())
        .map(|j| {
            let a: f64 = m.b[j] as f64
                + (0..m.inputs())
                    .map(|i| u[i] * m.w.view().at(i, j) as f64)
                    .sum::<f64>();
            match m.act {
                Activation::Sigmoid => 1.0 / (1.0 + (-a).exp()),
                Activation::Softplus => a.exp().ln_1p(),
            }
        })
        .collect()
}

fn sq(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum()
}

fn rows64(m: &Matrix) -> Vec<Vec<f64>> {
    (0..m.rows)
        .map(|i| m.row(i).iter().map(|&v| v as f64).collect())
        .collect()
}

/// lambda/2 sum_{i != j} rho_ij^2 of the correlations of `codes` across the
/// batch (each unit's variance plus CORRELATION_EPS), by the definition.
fn decorrelation_ref(codes: &[Vec<f64>], lambda: f64) -> f64 {
    let (b, n) = (codes.len() as f64, codes[0].len());
    let mu: Vec<f64> = (0..n)
        .map(|i| codes.iter().map(|c| c[i]).sum::<f64>() / b)
        .collect();
    let cov = |i: usize, j: usize| {
        codes
            .iter()
            .map(|c| (c[i] - mu[i]) * (c[j] - mu[j]))
            .sum::<f64>()
            / b
    };
    let sd: Vec<f64> = (0..n)
        .map(|i| (cov(i, i) + CORRELATION_EPS).sqrt())
        .collect();
    let mut r = 0.0;
    for i in 0..n {
        for j in (0..n).filter(|&j| j != i) {
            r += (cov(i, j) / (sd[i] * sd[j])).powi(2);
        }
    }
    0.5 * lambda * r
}

/// The pair's losses (decoder's, encoder's) as defined, per batch mean; the
/// encoder's adds the decorrelation penalty of its clean codes (weight `lambda`).
fn pair_loss(
    training: PairTraining,
    enc: &Map,
    dec: &Map,
    u: &Matrix,
    v: &Matrix,
    lambda: f64,
) -> (f64, f64) {
    let (u, v) = (rows64(u), rows64(v));
    let b = u.len() as f64;
    let codes: Vec<Vec<f64>> = u.iter().map(|x| map_ref(enc, x)).collect();
    let penalty = if lambda > 0.0 {
        decorrelation_ref(&codes, lambda)
    } else {
        0.0
    };
    let (ld, le) = match training {
        PairTraining::Dae => {
            let l: f64 = u
                .iter()
                .map(|x| sq(&map_ref(dec, &map_ref(enc, x)), x))
                .sum();
            (0.5 * l / b, 0.5 * l / b)
        }
        PairTraining::Local => {
            let ld: f64 = u.iter().zip(&v).map(|(x, c)| sq(&map_ref(dec, c), x)).sum();
            let le: f64 = u.iter().zip(&v).map(|(x, c)| sq(&map_ref(enc, x), c)).sum();
            (0.5 * ld / b, 0.5 * le / b)
        }
    };
    (ld, le + penalty)
}

/// Central differences of `loss` in every parameter of `map`, against `grad`.
fn check_map(map: &Map, grad: &MapGrad, loss: impl Fn(&Map) -> f64, what: &str) {
    let h = 1e-2f32;
    let n_w = map.w.data.len();
    for p in 0..n_w + map.b.len() {
        let shift = |delta: f32| {
            let mut m = map.clone();
            let slot = if p < n_w {
                &mut m.w.data[p]
            } else {
                &mut m.b[p - n_w]
            };
            *slot += delta;
            let moved = *slot;
            (loss(&m), moved)
        };
        let ((up, a), (down, b)) = (shift(h), shift(-h));
        let fd = (up - down) / (a - b) as f64;
        let got = if p < n_w {
            grad.w.data[p]
        } else {
            grad.b[p - n_w]
        } as f64;
        assert!(
            (fd - got).abs() <= 1e-3 * (1.0 + fd.abs()),
            "{what} parameter {p}: analytic {got}, finite differences {fd}"
        );
    }
}

#[test]
fn pair_gradients_match_finite_differences() {
    let cases = [PairTraining::Dae, PairTraining::Local]
        .into_iter()
        .flat_map(|t| [(t, 0.0), (t, 0.5)]);
    for (training, lambda) in cases {
        for seed in 0..3 {
            let mut g = setup(training, seed);
            g.settings.top_decorrelation = lambda;
            // Move the states off the feed-forward codes, as inference would.
            let mut rng = ChaCha8Rng::seed_from_u64(seed + 10);
            g.train.h[1] = random_matrix(4, SIZES[1], &mut rng);
            g.train.h[2] = random_matrix(4, SIZES[2], &mut rng);
            for k in 1..=2 {
                g.pair_gradients(k, &mut rng);
                let (u, v) = (&g.train.h[k - 1], &g.train.h[k]);
                let (enc, dec) = (&g.model.enc[k - 1], &g.model.dec[k - 1]);
                let p = &g.train.pairs[k - 1];
                // The penalty is the top pair's only.
                let lambda = if k == 2 { lambda as f64 } else { 0.0 };
                check_map(
                    dec,
                    &p.dec_grad,
                    |m| pair_loss(training, enc, m, u, v, lambda).0,
                    "decoder",
                );
                check_map(
                    enc,
                    &p.enc_grad,
                    |m| pair_loss(training, m, dec, u, v, lambda).1,
                    "encoder",
                );
            }
        }
    }
}

#[test]
fn decorrelation_gradient_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let c = random_matrix(5, 4, &mut rng);
    let lambda = 3.0;
    let mut grad = Matrix::zeros(5, 4);
    decorrelation_gradient(&c, lambda, &mut Correlation::default(), &mut grad);
    let h = 1e-3f32;
    for e in 0..c.data.len() {
        let at = |delta: f32| {
            let mut m = c.clone();
            m.data[e] += delta;
            decorrelation_ref(&rows64(&m), lambda as f64)
        };
        let fd = (at(h) - at(-h)) / (2.0 * h as f64);
        let got = grad.data[e] as f64;
        assert!(
            (fd - got).abs() <= 1e-4 * (1.0 + fd.abs()) && got != 0.0,
            "code {e}: analytic {got}, finite differences {fd}"
        );
    }
}

#[test]
fn rms_correlation_is_zero_for_independent_units_and_one_for_copies() {
    // Units 0 and 1 copy each other; unit 2 is orthogonal to both.
    let m = Matrix::from_vec(4, 3, vec![0., 0., 1., 1., 1., 1., 0., 0., 0., 1., 1., 0.]);
    // One pair (twice) of 6 off-diagonal entries at 1 (less the eps in the variances).
    let rho = 0.25 / (0.25 + CORRELATION_EPS);
    let expected = (2.0 * rho * rho / 6.0).sqrt();
    assert!((rms_correlation(&m) - expected).abs() < 1e-12);
    let independent = Matrix::from_vec(4, 2, vec![0., 0., 1., 0., 0., 1., 1., 1.]);
    assert_eq!(rms_correlation(&independent), 0.0);
}

#[test]
fn activations_and_slopes_agree_with_their_definitions() {
    for act in [Activation::Sigmoid, Activation::Softplus] {
        for i in -40..=40 {
            let a = i as f32 * 0.6;
            let y = act.apply(a);
            let h = 1e-3;
            let fd = (act.apply(a + h) as f64 - act.apply(a - h) as f64) / (2.0 * h as f64);
            assert!((act.slope(y) as f64 - fd).abs() < 2e-3, "{act:?} at {a}");
            assert!(y.is_finite() && y >= 0.0);
        }
    }
    assert_eq!(Activation::Softplus.apply(100.0), 100.0);
}

/// One INFERENCE iteration of DESIGN §7's pseudo-code, in f64, per example.
fn inference_ref(model: &Model, h: &[Vec<f64>], d: &Dynamics) -> Vec<Vec<f64>> {
    let mut h = h.to_vec();
    let top = model.depth();
    for k in (1..=top).rev() {
        let ff = map_ref(&model.enc[k - 1], &h[k - 1]);
        let frec = map_ref(&model.enc[k - 1], &map_ref(&model.dec[k - 1], &h[k]));
        let above = (k < top).then(|| map_ref(&model.dec[k], &h[k + 1]));
        let act = model.activation(k);
        for j in 0..h[k].len() {
            let mut v = h[k][j] + d.rate as f64 * (ff[j] - frec[j]);
            if let Some(a) = &above {
                v += d.top_down as f64 * (a[j] - h[k][j]);
            }
            h[k][j] = act.clamp(v as f32) as f64;
        }
    }
    h
}

#[test]
fn inference_follows_the_papers_pseudo_code_and_log_joint_its_definition() {
    let g = setup(PairTraining::Dae, 4);
    let d = Dynamics {
        steps: 1,
        rate: 0.3,
        top_down: 0.2,
        noise: 0.0,
    };
    let mut h = g.train.h.clone();
    let mut s = Scratch::new(&SIZES, 4);
    inference::infer(&g.model, &mut h, &d, &mut s, None, None);
    for i in 0..4 {
        let start: Vec<Vec<f64>> = g
            .train
            .h
            .iter()
            .map(|m| m.row(i).iter().map(|&v| v as f64).collect())
            .collect();
        let want = inference_ref(&g.model, &start, &d);
        for k in 1..=2 {
            for (a, b) in h[k].row(i).iter().zip(&want[k]) {
                assert!((*a as f64 - b).abs() < 1e-5, "layer {k}: {a} vs {b}");
            }
        }
    }
    // log p(x, h) = sum_k log N(h_{k-1}; g_k(h_k), I) (+ the prior once fitted).
    let mut model = g.model.clone();
    model.prior_mean = vec![0.4, 0.5, 0.6];
    model.prior_var = vec![0.1, 0.2, 0.3];
    let got = inference::log_joint(&model, &h, &mut s);
    let mut want = 0.0;
    for i in 0..4 {
        let rows: Vec<Vec<f64>> = h
            .iter()
            .map(|m| m.row(i).iter().map(|&v| v as f64).collect())
            .collect();
        for k in 1..=2 {
            let mean = map_ref(&model.dec[k - 1], &rows[k]);
            let n = mean.len() as f64;
            want += -0.5 * sq(&rows[k - 1], &mean) - 0.5 * n * (2.0 * std::f64::consts::PI).ln();
        }
        for j in 0..3 {
            let var = model.prior_var[j] as f64;
            want += -0.5
                * ((rows[2][j] - model.prior_mean[j] as f64).powi(2) / var
                    + (2.0 * std::f64::consts::PI * var).ln());
        }
    }
    want /= 4.0;
    assert!((got - want).abs() < 1e-4 * want.abs(), "{got} vs {want}");
}

#[test]
fn parzen_matches_a_direct_sum() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let samples = random_matrix(37, 5, &mut rng);
    let data = random_matrix(11, 5, &mut rng);
    let sigmas = [0.1f32, 0.3, 1.0];
    let got = evaluate::parzen(&samples, &data, &sigmas);
    for (p, &sigma) in got.iter().zip(&sigmas) {
        let s = sigma as f64;
        let values: Vec<f64> = rows64(&data)
            .iter()
            .map(|x| {
                let sum: f64 = rows64(&samples)
                    .iter()
                    .map(|m| {
                        (-sq(x, m) / (2.0 * s * s)).exp()
                            / (2.0 * std::f64::consts::PI * s * s).powf(2.5)
                    })
                    .sum();
                (sum / 37.0).ln()
            })
            .collect();
        let mean = values.iter().sum::<f64>() / 11.0;
        assert!(
            (p.mean - mean).abs() < 1e-3 * (1.0 + mean.abs()),
            "sigma {sigma}: {} vs {mean}",
            p.mean
        );
        assert!(p.stderr > 0.0);
    }
}

#[test]
fn frechet_is_zero_for_equal_sets_and_closed_form_for_diagonal_ones() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let f = random_matrix(200, 6, &mut rng);
    let (m, c) = evaluate::moments(&f);
    assert!(evaluate::frechet(&m, &c, &m, &c).abs() < 1e-6);
    // Diagonal covariances: |m1 - m2|^2 + sum (s1 - s2)^2.
    let d = 4;
    let diag = |v: &[f64]| faer::Mat::<f64>::from_fn(d, d, |i, j| if i == j { v[i] } else { 0.0 });
    let (v1, v2): ([f64; 4], [f64; 4]) = ([1.0, 4.0, 0.25, 9.0], [4.0, 1.0, 1.0, 9.0]);
    let (m1, m2): ([f64; 4], [f64; 4]) = ([0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 0.0, 3.0]);
    let want: f64 = (0..d)
        .map(|i| (m1[i] - m2[i]).powi(2) + (v1[i].sqrt() - v2[i].sqrt()).powi(2))
        .sum();
    let got = evaluate::frechet(&m1, &diag(&v1), &m2, &diag(&v2));
    assert!((got - want).abs() < 1e-9, "{got} vs {want}");
}

#[test]
fn nearest_rows_match_brute_force() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let a = random_matrix(13, 7, &mut rng);
    let b = random_matrix(300, 7, &mut rng);
    for (i, (d, j)) in evaluate::nearest(&a, &b).into_iter().enumerate() {
        let all: Vec<f64> = rows64(&b).iter().map(|r| sq(&rows64(&a)[i], r)).collect();
        let best = (0..all.len())
            .min_by(|&x, &y| all[x].total_cmp(&all[y]))
            .unwrap();
        assert_eq!(j, best);
        assert!((d as f64 - all[best]).abs() < 1e-5);
    }
}

#[test]
fn masks_hide_what_they_say_and_imputation_keeps_the_observed_pixels() {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let bottom = impute::observed(Mask::BottomHalf, 2, 28, &mut rng);
    assert!((0..784).all(|p| bottom.data[p] == if p < 392 { 1.0 } else { 0.0 }));
    let left = impute::observed(Mask::LeftHalf, 1, 28, &mut rng);
    assert!((0..784).all(|p| left.data[p] == if p % 28 >= 14 { 1.0 } else { 0.0 }));
    let r80 = impute::observed(Mask::Random(0.8), 100, 28, &mut rng);
    let seen = r80.data.iter().sum::<f32>() / r80.data.len() as f32;
    assert!((seen - 0.2).abs() < 0.01, "{seen}");
    for name in ["bottom-half", "left-half", "random-50", "random-80"] {
        assert_eq!(name.parse::<Mask>().unwrap().to_string(), name);
    }
    assert!("top-half".parse::<Mask>().is_err());

    let g = setup(PairTraining::Dae, 11);
    let truth = g.train.h[0].clone();
    let mask = Matrix::from_vec(4, 6, (0..24).map(|i| (i % 3 != 0) as u8 as f32).collect());
    let start = impute::merge(&truth, &mask, &[0.5; 6]);
    let d = Model::dynamics(&config(PairTraining::Dae).generative());
    for x in impute::impute(&g.model, &start, &mask, &d, 3, None) {
        for p in 0..24 {
            if mask.data[p] > 0.0 {
                assert_eq!(x.data[p], truth.data[p]);
            }
        }
    }
    assert_eq!(impute::missing_error(&truth, &truth, &mask), 0.0);
}

#[test]
fn corruption_is_relative_to_the_layer_and_spikes_average_bernoullis() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let u = Matrix::from_vec(200, 50, vec![3.0; 10_000]);
    let mut out = Matrix::zeros(0, 50);
    corrupt_gaussian(&u, &mut out, 0.5, &mut rng);
    let std = (out
        .data
        .iter()
        .map(|v| ((v - 3.0) as f64).powi(2))
        .sum::<f64>()
        / 1e4)
        .sqrt();
    assert!((std - 1.5).abs() < 0.05, "std {std}: should be 0.5 x RMS 3");
    let p = Matrix::from_vec(200, 50, vec![0.3; 10_000]);
    corrupt_spikes(&p, &mut out, 3, &mut rng);
    assert!(
        out.data
            .iter()
            .all(|&v| [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0].contains(&v))
    );
    let mean = out.data.iter().sum::<f32>() / 1e4;
    assert!((mean - 0.3).abs() < 0.01, "{mean}");
}

#[test]
fn the_fitted_priors_factor_the_codes_covariance() {
    let g = setup(PairTraining::Dae, 13);
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    let images = random_matrix(300, SIZES[0], &mut rng);
    let d = Model::dynamics(&config(PairTraining::Dae).generative());
    // The codes again, by the same inference.
    let mut h: Vec<Matrix> = SIZES.iter().map(|&n| Matrix::zeros(300, n)).collect();
    h[0] = images.clone();
    let mut s = Scratch::new(&SIZES, 300);
    inference::feed_forward(&g.model, &mut h);
    inference::infer(&g.model, &mut h, &d, &mut s, None, None);
    let codes = rows64(&h[2]);
    let n = SIZES[2];
    let inferred = sample::inferred_codes(&g.model, &images, &d);
    let full = sample::fit_full_prior(&inferred);
    let diagonal = sample::fit_diagonal_prior(&inferred);
    for (prior, keeps_correlations) in [(full, true), (diagonal, false)] {
        let Prior::Full { mean, chol } = prior else {
            panic!("a Gaussian");
        };
        for i in 0..n {
            let m: f64 = codes.iter().map(|c| c[i]).sum::<f64>() / 300.0;
            assert!((m - mean[i] as f64).abs() < 1e-5);
            for j in 0..n {
                let mj: f64 = codes.iter().map(|c| c[j]).sum::<f64>() / 300.0;
                let mut cov: f64 =
                    codes.iter().map(|c| (c[i] - m) * (c[j] - mj)).sum::<f64>() / 299.0;
                if i != j && !keeps_correlations {
                    cov = 0.0;
                }
                let llt: f64 = (0..n)
                    .map(|k| chol[i * n + k] as f64 * chol[j * n + k] as f64)
                    .sum();
                let ridge = if i == j { 1e-6 } else { 0.0 };
                assert!(
                    (llt - cov - ridge).abs() < 1e-5,
                    "({i},{j}): {llt} vs {cov}"
                );
            }
        }
    }
}

#[test]
fn em_finds_two_separated_clusters_and_their_proportions() {
    // 300 codes near (0.2, 0.2, 0.8) and 100 near (0.8, 0.7, 0.1), spread 0.03.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let centres = [[0.2f32, 0.2, 0.8], [0.8, 0.7, 0.1]];
    let mut data = Vec::new();
    for i in 0..400 {
        let c = &centres[(i >= 300) as usize];
        data.extend(c.iter().map(|&m| m + 0.03 * rng.random_range(-1.0f32..1.0)));
    }
    let codes = Matrix::from_vec(400, 3, data);
    let Prior::Mixture {
        weights,
        components,
    } = sample::fit_mixture(&codes, 2, 20, &mut rng)
    else {
        panic!("a mixture");
    };
    let mut found: Vec<(f64, Vec<f32>)> = weights
        .iter()
        .zip(&components)
        .map(|(&w, c)| match c {
            Prior::Full { mean, .. } => (w, mean.clone()),
            _ => panic!("Gaussian components"),
        })
        .collect();
    found.sort_by(|a, b| b.0.total_cmp(&a.0));
    assert!(
        (found[0].0 - 0.75).abs() < 1e-6 && (found[1].0 - 0.25).abs() < 1e-6,
        "{found:?}"
    );
    for ((_, mean), centre) in found.iter().zip(&centres) {
        for (m, c) in mean.iter().zip(centre) {
            assert!((m - c).abs() < 0.01, "{mean:?} vs {centre:?}");
        }
    }
}

#[test]
fn running_mean_of_a_chain_is_the_mean_of_its_first_steps() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let trail: Vec<Matrix> = (0..5)
        .map(|_| Matrix::from_vec(2, 3, (0..6).map(|_| rng.random_range(0.0..1.0)).collect()))
        .collect();
    let means = impute::running_mean(&trail);
    for (t, m) in means.iter().enumerate() {
        for (p, &v) in m.data.iter().enumerate() {
            let direct = trail[..=t].iter().map(|x| x.data[p] as f64).sum::<f64>() / (t + 1) as f64;
            assert!(
                (v as f64 - direct).abs() < 1e-6,
                "step {t}: {v} vs {direct}"
            );
        }
    }
}

#[test]
fn correlation_buffers_reused_across_batch_sizes_give_fresh_results() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (big, small) = (random_matrix(6, 4, &mut rng), random_matrix(3, 4, &mut rng));
    let mut reused = Correlation::default();
    reused.compute(&big);
    reused.compute(&small);
    let mut fresh = Correlation::default();
    fresh.compute(&small);
    assert_eq!(reused.rho, fresh.rho);
    assert_eq!(reused.z, fresh.z);
    assert_eq!(reused.sigma, fresh.sigma);
    assert_eq!(reused.z.len(), 3 * 4);
}

//! The all-EP actor-critic: each way of turning output gradients into weight
//! gradients against finite differences, PPO's output gradient against its
//! surrogate, determinism by seed, and that the agent learns.

use plasticity::eqprop::Network;
use plasticity::rl::actor_critic::{self, Method, Settings, policy, ppo_output_gradient};
use plasticity::rl::estimator::{BackpropEstimator, EqPropEstimator, Estimator, Relaxation};
use plasticity::tensor::Matrix;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(rows: usize, cols: usize, lo: f32, hi: f32, rng: &mut ChaCha8Rng) -> Matrix {
    Matrix::from_vec(
        rows,
        cols,
        (0..rows * cols).map(|_| rng.random_range(lo..hi)).collect(),
    )
}

/// L(theta) = mean over rows of dy . y(x; theta), whose gradient the estimator claims.
fn loss(est: &mut dyn Estimator, net: &Network, x: &Matrix, dy: &Matrix) -> f64 {
    let mut y = Matrix::zeros(0, dy.cols);
    est.outputs(net, x.view(), &mut y);
    let dot: f64 = y
        .data
        .iter()
        .zip(&dy.data)
        .map(|(a, b)| (a * b) as f64)
        .sum();
    dot / x.rows as f64
}

/// Every parameter's estimated gradient against central differences.
fn check_against_finite_differences(est: &mut dyn Estimator, tol: f64) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut net = Network::seeded(&[5, 7, 6, 3], 11);
    // Small weights and biases of 1/2 keep the units inside (0, 1), away from
    // the clip's kinks, where the loss is not differentiable.
    for w in &mut net.weights {
        w.data.iter_mut().for_each(|v| *v *= 0.25);
    }
    for b in &mut net.biases {
        b.fill(0.5);
    }
    let x = random(4, 5, 0.0, 1.0, &mut rng);
    let dy = random(4, 3, -1.0, 1.0, &mut rng);
    let mut y = Matrix::zeros(0, 3);
    est.outputs(&net, x.view(), &mut y);
    assert!(y.data.iter().all(|&v| v > 0.05 && v < 0.95), "{y:?}");
    let mut grad = net.zeros_like();
    est.gradient(&net, dy.view(), &mut grad);
    let h = 1e-3f32;
    let (mut dot, mut nf, mut ng, mut checked) = (0.0, 0.0, 0.0, 0);
    for k in 0..net.weights.len() {
        let n_w = net.weights[k].data.len();
        for i in 0..n_w + net.biases[k].len() {
            let bump = |net: &mut Network, d: f32| {
                if i < n_w {
                    net.weights[k].data[i] += d
                } else {
                    net.biases[k][i - n_w] += d
                }
            };
            let (mut p, mut m) = (net.clone(), net.clone());
            bump(&mut p, h);
            bump(&mut m, -h);
            let fd = (loss(est, &p, &x, &dy) - loss(est, &m, &x, &dy)) / (2.0 * h as f64);
            let got = if i < n_w {
                grad.weights[k].data[i]
            } else {
                grad.biases[k][i - n_w]
            } as f64;
            assert!(
                (fd - got).abs() < tol * (0.01 + fd.abs()),
                "layer {k} parameter {i}: estimate {got}, finite differences {fd}"
            );
            dot += fd * got;
            nf += fd * fd;
            ng += got * got;
            checked += 1;
        }
    }
    assert!(
        checked > 90 && nf > 1e-4,
        "{checked} parameters, |fd|^2 {nf}"
    );
    let cosine = dot / (nf.sqrt() * ng.sqrt());
    assert!(cosine > 0.999, "cosine {cosine}");
}

#[test]
fn ep_estimator_gives_the_gradient_at_the_free_equilibrium() {
    // Relaxed to convergence in both phases, a small symmetric nudge: EP's
    // contrast is the gradient of the loss at the free fixed point.
    let relax = Relaxation {
        free_steps: 300,
        nudged_steps: 300,
        epsilon: 0.5,
        beta: 0.01,
    };
    check_against_finite_differences(&mut EqPropEstimator::new(&[5, 7, 6, 3], 4, relax), 0.05);
}

#[test]
fn backprop_estimator_gives_the_gradient_of_the_feed_forward_pass() {
    check_against_finite_differences(&mut BackpropEstimator::new(&[5, 7, 6, 3], 4), 0.01);
}

/// PPO's clipped surrogate for one step, in f64, written out directly.
fn surrogate(o: [f64; 2], a: usize, old_log_prob: f64, adv: f64, clip: f64, t: f64) -> f64 {
    let z = [(o[0] / t).exp(), (o[1] / t).exp()];
    let ratio = (z[a] / (z[0] + z[1])).ln().exp() / old_log_prob.exp();
    -(ratio * adv).min(ratio.clamp(1.0 - clip, 1.0 + clip) * adv)
}

#[test]
fn ppo_output_gradient_matches_its_surrogate() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (mut clipped, mut free) = (0, 0);
    for _ in 0..400 {
        let o = [rng.random_range(0.0f32..1.0), rng.random_range(0.0f32..1.0)];
        let a = rng.random_range(0..2usize);
        let t = 0.2;
        // An old policy near the current one, so both clipped and unclipped cases occur.
        let old = policy(&o, t)[a].ln() + rng.random_range(-0.4f32..0.4);
        let adv = rng.random_range(-2.0f32..2.0);
        let mut g = [0.0f32; 2];
        ppo_output_gradient(&o, a, old, adv, 0.2, t, &mut g);
        let h = 1e-5;
        for j in 0..2 {
            let f = |d: f64| {
                let mut p = [o[0] as f64, o[1] as f64];
                p[j] += d;
                surrogate(p, a, old as f64, adv as f64, 0.2, t as f64)
            };
            let fd = (f(h) - f(-h)) / (2.0 * h);
            if fd.abs() < 1e-6 && (f(h) - f(0.0)).abs() < 1e-9 {
                // On a flat (clipped) piece: the gradient must be 0.
                assert_eq!(g[j], 0.0);
                clipped += 1;
            } else {
                assert!(
                    (fd - g[j] as f64).abs() < 1e-3 * (1.0 + fd.abs()),
                    "{fd} vs {}",
                    g[j]
                );
                free += 1;
            }
        }
    }
    assert!(
        clipped > 50 && free > 50,
        "clipped {clipped}, unclipped {free}"
    );
}

fn small() -> Settings {
    Settings {
        hidden: vec![16],
        rollout: 64,
        epochs: 2,
        minibatch: 32,
        ..Settings::default()
    }
}

#[test]
fn same_seed_same_episodes_other_seed_others() {
    for method in [Method::EqProp, Method::Backprop] {
        let run = |seed| actor_critic::train(&small(), method, seed, 15, |_| {}).unwrap();
        let (a, b, c) = (run(3), run(3), run(4));
        assert_eq!(a, b, "{method:?}");
        assert_eq!(a.len(), 15);
        assert_ne!(a, c, "{method:?}");
    }
}

#[test]
fn all_ep_actor_critic_learns_to_balance() {
    // The default agent: a random policy lasts ~20 steps; after 150 episodes the
    // last 20 last several times as long.
    let log = actor_critic::train(&Settings::default(), Method::EqProp, 1, 150, |_| {}).unwrap();
    let mean = |e: &[actor_critic::Episode]| e.iter().map(|e| e.ret).sum::<f32>() / e.len() as f32;
    let (first, last) = (mean(&log[..20]), mean(&log[130..]));
    assert!(
        last > 5.0 * first && last > 150.0,
        "first 20: {first}, last 20: {last}"
    );
}

#[test]
fn a_method_reads_back_from_its_name_and_configs_use_the_same_name() {
    for m in [Method::EqProp, Method::Backprop] {
        assert_eq!(m.name().parse::<Method>().unwrap(), m);
        assert_eq!(serde_json::to_value(m).unwrap(), m.name());
    }
    assert!("bptt".parse::<Method>().is_err());
}

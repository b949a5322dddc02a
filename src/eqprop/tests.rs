//! EP against its definitions: the dynamics descend the energy and stop at a
//! fixed point; one step is a projected gradient step (checked by finite
//! differences of E); the learning rule is the contrast of dE/dtheta at the two
//! equilibria (checked by finite differences of E in the weights).
#![allow(clippy::needless_range_loop)]

use super::dynamics::{Block, Phase, step};
use super::learning;
use super::network::Network;
use crate::tensor::Matrix;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SIZES: [usize; 4] = [9, 7, 6, 10];

fn setup(rows: usize, seed: u64) -> (Network, Block) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut net = Network::glorot(&SIZES, &mut rng);
    for b in &mut net.biases {
        for v in b.iter_mut() {
            *v = rng.random_range(-0.2..0.2);
        }
    }
    let mut block = Block::new(&SIZES, rows);
    block.rows = rows;
    for v in &mut block.x.data {
        *v = rng.random_range(0.0..1.0);
    }
    for i in 0..rows {
        block.target.row_mut(i)[i % 10] = 1.0;
    }
    for layer in &mut block.free {
        for v in &mut layer.data {
            *v = rng.random_range(0.1..0.9);
        }
    }
    block.compute_input_drive(&net);
    (net, block)
}

/// Layer states of example `i` with x first, as `Network::energy` takes them.
fn example(block: &Block, states: &[Matrix], i: usize) -> Vec<Vec<f32>> {
    let mut s = vec![block.x.row(i).to_vec()];
    s.extend(states.iter().map(|m| m.row(i).to_vec()));
    s
}

fn total_f(net: &Network, block: &Block, states: &[Matrix], beta: f32) -> f64 {
    (0..block.rows)
        .map(|i| {
            let s = example(block, states, i);
            let refs: Vec<&[f32]> = s.iter().map(|v| v.as_slice()).collect();
            net.energy(&refs) + beta as f64 * Network::cost(s.last().unwrap(), block.target.row(i))
        })
        .sum()
}

#[test]
fn dynamics_descend_the_energy_and_reach_a_fixed_point() {
    for seed in 0..5 {
        for beta in [0.0f32, 0.5, -0.5] {
            let (net, mut block) = setup(4, seed);
            let mut states = block.free.clone();
            let mut drives = block.drives.clone();
            let target = block.target.clone();
            let mask = block.nudge_mask.clone();
            let nudge = (beta != 0.0).then_some((beta, &target, &mask));
            let mut f = total_f(&net, &block, &states, beta);
            for t in 0..60 {
                step(
                    &net,
                    &block.input_drive,
                    &mut states,
                    &mut drives,
                    4,
                    0.5,
                    nudge,
                );
                let f_new = total_f(&net, &block, &states, beta);
                assert!(
                    f_new <= f + 1e-5,
                    "seed {seed} beta {beta} step {t}: F rose {f} -> {f_new}"
                );
                f = f_new;
            }
            for _ in 0..400 {
                step(
                    &net,
                    &block.input_drive,
                    &mut states,
                    &mut drives,
                    4,
                    0.5,
                    nudge,
                );
            }
            let before = states.clone();
            let change = step(
                &net,
                &block.input_drive,
                &mut states,
                &mut drives,
                4,
                0.5,
                nudge,
            );
            assert!(
                change < 1e-5,
                "seed {seed} beta {beta}: |s - step(s)| = {change}"
            );
            let moved = before
                .iter()
                .zip(&states)
                .flat_map(|(a, b)| a.data.iter().zip(&b.data).map(|(x, y)| (x - y).abs()))
                .fold(0.0f32, f32::max);
            assert!((moved - change).abs() < 1e-7);
            block.free = states;
        }
    }
}

#[test]
fn one_step_is_a_projected_gradient_step_of_f() {
    let (net, block) = setup(3, 11);
    let (eps, beta) = (0.5f32, 0.7f32);
    let mut states = block.free.clone();
    let mut drives = block.drives.clone();
    step(
        &net,
        &block.input_drive,
        &mut states,
        &mut drives,
        3,
        eps,
        Some((beta, &block.target, &block.nudge_mask)),
    );
    let h = 1e-3f32;
    for k in 0..block.free.len() {
        for idx in 0..block.free[k].data.len() {
            let mut plus = block.free.clone();
            plus[k].data[idx] += h;
            let mut minus = block.free.clone();
            minus[k].data[idx] -= h;
            let grad = (total_f(&net, &block, &plus, beta) - total_f(&net, &block, &minus, beta))
                / (2.0 * h as f64);
            let want = (block.free[k].data[idx] as f64 - eps as f64 * grad).clamp(0.0, 1.0);
            let got = states[k].data[idx] as f64;
            assert!(
                (got - want).abs() < 2e-3,
                "layer {} unit {idx}: step {got}, FD {want}",
                k + 1
            );
        }
    }
}

#[test]
fn learning_rule_is_the_contrast_of_energy_gradients() {
    let rows = 5;
    let (net0, mut block) = setup(rows, 3);
    // Two distinct sets of states to contrast (any states: the rule is algebraic).
    block.relax(&net0, Phase::Free, 30, 0.5, 0.0);
    block.start_from_free(Phase::Nudged);
    block.relax(&net0, Phase::Nudged, 5, 0.5, 0.8);
    block.prepare_update(Phase::Nudged, Phase::Free);
    let rates = [0.3f32, 0.2, 0.1];
    let coef = 1.0 / 0.8;
    let mut net = net0.clone();
    learning::apply(
        &mut net,
        std::slice::from_ref(&block),
        Phase::Nudged,
        Phase::Free,
        coef,
        &rates,
        rows,
        2,
    );

    // d/dtheta of sum_i E(s_i) by central differences, at each set of states.
    let energy_sum = |n: &Network, states: &[Matrix]| -> f64 {
        (0..rows)
            .map(|i| {
                let s = example(&block, states, i);
                let refs: Vec<&[f32]> = s.iter().map(|v| v.as_slice()).collect();
                n.energy(&refs)
            })
            .sum()
    };
    let h = 1e-2f32;
    for k in 0..net0.weights.len() {
        let scale = rates[k] as f64 * coef as f64 / rows as f64;
        for idx in (0..net0.weights[k].data.len()).step_by(7) {
            let fd = |states: &[Matrix]| {
                let (mut p, mut m) = (net0.clone(), net0.clone());
                p.weights[k].data[idx] += h;
                m.weights[k].data[idx] -= h;
                (energy_sum(&p, states) - energy_sum(&m, states)) / (2.0 * h as f64)
            };
            let want =
                net0.weights[k].data[idx] as f64 - scale * (fd(&block.nudged) - fd(&block.free));
            let got = net.weights[k].data[idx] as f64;
            assert!((got - want).abs() < 1e-4, "W{k}[{idx}]: {got} vs {want}");
        }
        for j in 0..net0.biases[k].len() {
            let fd = |states: &[Matrix]| {
                let (mut p, mut m) = (net0.clone(), net0.clone());
                p.biases[k][j] += h;
                m.biases[k][j] -= h;
                (energy_sum(&p, states) - energy_sum(&m, states)) / (2.0 * h as f64)
            };
            let want = net0.biases[k][j] as f64 - scale * (fd(&block.nudged) - fd(&block.free));
            let got = net.biases[k][j] as f64;
            assert!(
                (got - want).abs() < 1e-4,
                "b{}[{j}]: {got} vs {want}",
                k + 1
            );
        }
    }
}

#[test]
fn splitting_the_update_across_threads_changes_nothing() {
    let (net0, mut block) = setup(6, 5);
    block.relax(&net0, Phase::Free, 20, 0.5, 0.0);
    block.start_from_free(Phase::Nudged);
    block.relax(&net0, Phase::Nudged, 4, 0.5, 1.0);
    block.prepare_update(Phase::Nudged, Phase::Free);
    let rates = [0.1f32, 0.1, 0.1];
    let mut results = Vec::new();
    for parts in [1, 2, 3] {
        let mut net = net0.clone();
        learning::apply(
            &mut net,
            std::slice::from_ref(&block),
            Phase::Nudged,
            Phase::Free,
            1.0,
            &rates,
            6,
            parts,
        );
        results.push(net);
    }
    for r in &results[1..] {
        for (a, b) in r.weights.iter().zip(&results[0].weights) {
            let d = a
                .data
                .iter()
                .zip(&b.data)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(d < 1e-6, "{d}");
        }
    }
}

/// The symmetrized STDP-like rule, d(rho_i rho_j)/dt, integrated step by step
/// over the nudged phase (weights held fixed) is exactly EP's update.
#[test]
fn stepwise_increments_over_the_nudged_phase_sum_to_the_ep_update() {
    let rows = 4;
    let (net0, mut block) = setup(rows, 9);
    block.relax(&net0, Phase::Free, 50, 0.5, 0.0);
    block.start_from_free(Phase::Nudged);
    let rates = [0.2f32, 0.1, 0.05];
    let beta = 0.7;
    let mut stepwise = net0.clone();
    for _ in 0..6 {
        block.copy_states(Phase::Nudged, Phase::NudgedNeg);
        block.relax(&net0, Phase::Nudged, 1, 0.5, beta);
        block.prepare_update(Phase::Nudged, Phase::NudgedNeg);
        learning::apply(
            &mut stepwise,
            std::slice::from_ref(&block),
            Phase::Nudged,
            Phase::NudgedNeg,
            1.0 / beta,
            &rates,
            rows,
            2,
        );
    }
    let mut once = net0.clone();
    block.prepare_update(Phase::Nudged, Phase::Free);
    learning::apply(
        &mut once,
        std::slice::from_ref(&block),
        Phase::Nudged,
        Phase::Free,
        1.0 / beta,
        &rates,
        rows,
        2,
    );
    for (a, b) in stepwise.weights.iter().zip(&once.weights) {
        let d = a
            .data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(d < 1e-5, "stepwise and one-shot updates differ by {d}");
    }
    let moved = once.weights[1]
        .data
        .iter()
        .zip(&net0.weights[1].data)
        .any(|(x, y)| (x - y).abs() > 1e-4);
    assert!(moved, "the update must not be trivial");
}

#[test]
fn even_odd_descends_monotonically_and_finds_the_synchronous_fixed_point() {
    use super::dynamics::step_even_odd;
    // Monotone descent with Glorot weights (F non-convex: several minima).
    for seed in 0..4 {
        for beta in [0.0f32, 0.9, -0.9] {
            let (net, block) = setup(4, 40 + seed);
            let target = block.target.clone();
            let mask = block.nudge_mask.clone();
            let nudge = (beta != 0.0).then_some((beta, &target, &mask));
            let (mut states, mut drives) = (block.free.clone(), block.drives.clone());
            let mut f = total_f(&net, &block, &states, beta);
            for t in 0..60 {
                step_even_odd(&net, &block.input_drive, &mut states, &mut drives, 4, nudge);
                let f_new = total_f(&net, &block, &states, beta);
                assert!(
                    f_new <= f + 1e-6,
                    "seed {seed} beta {beta} step {t}: F rose {f} -> {f_new}"
                );
                f = f_new;
            }
        }
    }
    for seed in 0..4 {
        for beta in [0.0f32, 0.5, -0.5] {
            let (mut net, block) = setup(4, 20 + seed);
            // Weights small enough that the coupling's norm stays under 1: F is then
            // strictly convex on the box and both schemes must find its one minimum
            // (with Glorot weights it has several, and each scheme may pick another).
            for w in &mut net.weights {
                w.data.iter_mut().for_each(|v| *v *= 0.3);
            }
            let mut block = block;
            block.compute_input_drive(&net);
            let target = block.target.clone();
            let mask = block.nudge_mask.clone();
            let nudge = (beta != 0.0).then_some((beta, &target, &mask));
            let mut drives = block.drives.clone();
            let mut even_odd = block.free.clone();
            let mut f = total_f(&net, &block, &even_odd, beta);
            for t in 0..100 {
                step_even_odd(
                    &net,
                    &block.input_drive,
                    &mut even_odd,
                    &mut drives,
                    4,
                    nudge,
                );
                let f_new = total_f(&net, &block, &even_odd, beta);
                assert!(
                    f_new <= f + 1e-6,
                    "seed {seed} beta {beta} step {t}: F rose {f} -> {f_new}"
                );
                f = f_new;
            }
            let mut sync = block.free.clone();
            for _ in 0..600 {
                step(
                    &net,
                    &block.input_drive,
                    &mut sync,
                    &mut drives,
                    4,
                    0.5,
                    nudge,
                );
            }
            for (a, b) in even_odd.iter().zip(&sync) {
                let d = a
                    .data
                    .iter()
                    .zip(&b.data)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0f32, f32::max);
                assert!(
                    d < 1e-4,
                    "seed {seed} beta {beta}: fixed points differ by {d}"
                );
            }
        }
    }
}

#[test]
fn a_tolerance_stops_the_free_phase_early_and_only_it() {
    use crate::config::Relaxation;
    for scheme in [Relaxation::Synchronous, Relaxation::EvenOdd] {
        let (net, mut block) = setup(3, 4);
        block.scheme = scheme;
        block.tolerance = 1e-4;
        let change = block.relax(&net, Phase::Free, 500, 0.5, 0.0);
        assert!(
            change < 1e-4 && block.free_steps_taken < 500,
            "{scheme:?}: {} steps",
            block.free_steps_taken
        );
        assert!(block.free_steps_taken > 1);
        block.start_from_free(Phase::Nudged);
        block.relax(&net, Phase::Nudged, 7, 0.5, 0.5);
        assert!(
            block.free_steps_taken < 500,
            "the nudged phase must not touch the free count"
        );
    }
}

/// A small bandit learner and 40 random "images" (labels set by the caller).
fn bandit_setup(explore: f32) -> (crate::config::Config, crate::data::Dataset) {
    let cfg = crate::config::Config {
        layers: vec![16, 12, 10],
        learning_rates: vec![0.2, 0.1],
        threads: 2,
        batch_size: 20,
        explore: vec![explore, explore],
        ..crate::config::preset("eqprop-mnist-bandit").unwrap()
    };
    (cfg, random_digits(40, 16, 3))
}

/// `rows` random "images" of `cols` pixels in [0, 1], labelled 0, 1, ..., 9, 0, ...
fn random_digits(rows: usize, cols: usize, seed: u64) -> crate::data::Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let images = Matrix::from_vec(
        rows,
        cols,
        (0..rows * cols)
            .map(|_| rng.random_range(0.0..1.0))
            .collect(),
    );
    let labels = (0..rows).map(|i| (i % 10) as u8).collect();
    crate::data::Dataset { images, labels }
}

/// The label reaches only the environment: with the same images and seed, the
/// learner takes the same actions (and relaxes to the same states) whatever
/// the labels are; only the rewards, and so the updates, differ.
#[test]
fn the_bandit_learner_never_sees_the_label() {
    use crate::train::Learner;
    let (cfg, data) = bandit_setup(0.3);
    let mut other = data.clone();
    other.labels.iter_mut().for_each(|l| *l = (*l + 3) % 10);
    let idx: Vec<usize> = (0..20).collect();
    let run = |d: &crate::data::Dataset| {
        let mut l = super::EqProp::new(&cfg, [40, 0, 0]);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        l.train_batch(d, &idx, &mut rng);
        let free: Vec<Vec<f32>> = l.blocks.iter().map(|b| b.free[1].data.clone()).collect();
        (l.last_actions.clone(), free, l.net.weights[1].data.clone())
    };
    let (a, fa, wa) = run(&data);
    let (b, fb, wb) = run(&other);
    assert_eq!(a, b, "actions depend on the labels");
    assert_eq!(fa, fb, "free states depend on the labels");
    assert_ne!(wa, wb, "the rewards, and so the updates, should differ");
}

/// With the chosen action equal to the true class (reward 1), the bandit's
/// update is supervised EP's with the cost restricted to that output unit.
#[test]
fn a_rewarded_true_action_gives_supervised_eps_update_on_that_unit() {
    use crate::train::Learner;
    let (cfg, mut data) = bandit_setup(0.0);
    let idx: Vec<usize> = (0..20).collect();
    // Greedy actions of the fresh net; make them the labels, so every reward is 1.
    let mut probe = super::EqProp::new(&cfg, [40, 0, 0]);
    probe.train_batch(&data, &idx, &mut ChaCha8Rng::seed_from_u64(4));
    for (&e, &a) in idx.iter().zip(&probe.last_actions) {
        data.labels[e] = a as u8;
    }
    let mut bandit = super::EqProp::new(&cfg, [40, 0, 0]);
    let stats = bandit.train_batch(&data, &idx, &mut ChaCha8Rng::seed_from_u64(4));
    assert_eq!(stats.errors, 0);
    // Supervised, by hand: label targets, the nudge only on the label's unit.
    let sup_cfg = crate::config::Config {
        task: crate::config::Task::Supervised,
        ..cfg.clone()
    };
    let mut sup = super::EqProp::new(&sup_cfg, [40, 0, 0]);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let beta = if rng.random_bool(0.5) {
        -cfg.beta
    } else {
        cfg.beta
    };
    sup.free_phase(&data, &idx, true);
    for b in &mut sup.blocks {
        for i in 0..b.rows {
            let m = b.nudge_mask.row_mut(i);
            m.fill(0.0);
            m[b.labels[i] as usize] = 1.0;
        }
    }
    sup.keep_particles(&idx);
    sup.nudge_and_learn(beta, idx.len());
    assert_eq!(bandit.net, sup.net);
    // And the restriction matters: the full supervised update differs.
    let mut full = super::EqProp::new(&sup_cfg, [40, 0, 0]);
    full.train_batch(&data, &idx, &mut ChaCha8Rng::seed_from_u64(4));
    assert_ne!(bandit.net, full.net);
}

/// The same seed gives the same bandit run, bit for bit (exploration included).
#[test]
fn a_bandit_run_is_deterministic_by_seed() {
    use crate::train::Learner;
    let (cfg, data) = bandit_setup(0.5);
    let run = |seed: u64| {
        let mut l = super::EqProp::new(&cfg, [40, 0, 0]);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for batch in [(0..20).collect::<Vec<_>>(), (20..40).collect()] {
            l.train_batch(&data, &batch, &mut rng);
        }
        (l.net, l.last_actions)
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7).1, run(8).1, "exploration should depend on the seed");
}

#[test]
fn batched_recurrent_backprop_matches_the_per_example_reference() {
    let (mut net, mut block) = setup(5, 21);
    // Small weights keep most units inside (0, 1), so the adjoint reaches every layer.
    for w in &mut net.weights {
        w.data.iter_mut().for_each(|v| *v *= 0.3);
    }
    for b in &mut net.biases {
        b.iter_mut().for_each(|v| *v += 0.5);
    }
    block.compute_input_drive(&net);
    block.relax(&net, Phase::Free, 300, 0.5, 0.0);
    // A truncated recursion (17 iterations) must agree too: it is the same sum.
    for iters in [17, 200] {
        let mut adj = super::exact::Adjoint::new(&SIZES, 5);
        adj.run(&net, &block, iters, 0.5);
        let mut grad = net.zeros_like();
        let rates = vec![-1.0; net.weights.len()];
        super::exact::apply(
            &mut grad,
            std::slice::from_ref(&block),
            std::slice::from_ref(&adj),
            0.5,
            (&rates, 1.0),
            5,
        );
        let mut reference = super::gradient::Grads::zeros(&net);
        for i in 0..5 {
            let s: Vec<Vec<f64>> = example(&block, &block.free, i)
                .iter()
                .map(|v| v.iter().map(|&x| x as f64).collect())
                .collect();
            let t: Vec<f64> = block.target.row(i).iter().map(|&x| x as f64).collect();
            let g = super::gradient::rbp(&net, &s, &t, iters, 0.5);
            for (r, v) in reference.weights.iter_mut().zip(&g.weights) {
                r.iter_mut().zip(v).for_each(|(a, b)| *a += b / 5.0);
            }
            for (r, v) in reference.biases.iter_mut().zip(&g.biases) {
                r.iter_mut().zip(v).for_each(|(a, b)| *a += b / 5.0);
            }
        }
        for k in 0..net.weights.len() {
            let got = grad.weights[k].data.iter().chain(&grad.biases[k]);
            let want = reference.weights[k].iter().chain(&reference.biases[k]);
            let mut largest = 0.0f64;
            for (&g, &w) in got.zip(want) {
                assert!(
                    (g as f64 - w).abs() < 1e-6 + 1e-4 * w.abs(),
                    "layer {k}: {g} vs {w}"
                );
                largest = largest.max(w.abs());
            }
            assert!(
                largest > 1e-3,
                "layer {k}: a gradient of zeros proves nothing"
            );
        }
    }
}

#[test]
fn init_gain_scales_the_glorot_weights_and_nothing_else() {
    let mut cfg = crate::config::preset("eqprop-mnist-2h").unwrap();
    let glorot = Network::seeded(&cfg.layers, cfg.seed);
    assert_eq!(Network::initial(&cfg), glorot);
    cfg.init_gain = 0.5;
    let half = Network::initial(&cfg);
    assert_eq!(half.biases, glorot.biases);
    for (h, g) in half.weights.iter().zip(&glorot.weights) {
        assert!(h.data.iter().zip(&g.data).all(|(a, b)| *a == 0.5 * b));
    }
}

/// The claim behind `init_gain`, on real digits: from rest, Glorot's bound runs
/// a 784-500-500-10 net's hidden states into the clips (W1's largest singular
/// value is near 2, the energy not convex inside the box); half the bound
/// leaves about half of them strictly between 0 and 1.
#[test]
fn half_the_glorot_bound_keeps_a_500_500_net_off_the_clips() {
    use crate::train::Learner;
    let splits = crate::data::load(&crate::data::default_dir()).unwrap();
    let digits = splits.val.slice(0, 200);
    let mut cfg = crate::config::preset("eqprop-mnist-2h").unwrap();
    cfg.persistent_particles = false;
    cfg.eval_warm = false;
    let inside = |gain: f32| {
        let cfg = crate::config::Config {
            init_gain: gain,
            ..cfg.clone()
        };
        let got = super::EqProp::new(&cfg, [0, 0, 0]).diagnostics(&digits);
        let at = |name: &str| got.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(got.len(), 4, "{got:?}");
        [at("h1_inside"), at("h2_inside")]
    };
    let glorot = inside(1.0);
    let half = inside(0.5);
    assert!(glorot.iter().all(|&f| f < 0.35), "Glorot: {glorot:?}");
    assert!(half.iter().all(|&f| f > 0.45), "half: {half:?}");
}

/// Why Glorot's bound saturates: a square n x n Glorot matrix has entries of
/// variance 1/n, so its largest singular value is near 2 (the Marchenko-Pastur
/// edge), and the energy's Hessian inside the box, I - [[0, W], [W^T, 0]], has
/// eigenvalues 1 - sigma < 0. Half the bound brings sigma to about 1.
#[test]
fn glorots_500_500_coupling_has_a_singular_value_near_two() {
    // Power iteration on W^T W (f64).
    let sigma_max = |w: &Matrix| {
        let (r, c) = (w.rows, w.cols);
        let mut v = vec![1.0f64; c];
        let mut sigma = 0.0;
        for _ in 0..200 {
            let u: Vec<f64> = (0..r)
                .map(|i| (0..c).map(|j| w.data[i * c + j] as f64 * v[j]).sum())
                .collect();
            let mut z = vec![0.0f64; c];
            for i in 0..r {
                for j in 0..c {
                    z[j] += w.data[i * c + j] as f64 * u[i];
                }
            }
            let norm = z.iter().map(|x| x * x).sum::<f64>().sqrt();
            sigma = norm.sqrt();
            v = z.iter().map(|x| x / norm).collect();
        }
        sigma
    };
    let mut cfg = crate::config::preset("eqprop-mnist-2h").unwrap();
    let glorot = sigma_max(&Network::initial(&cfg).weights[1]);
    cfg.init_gain = 0.5;
    let half = sigma_max(&Network::initial(&cfg).weights[1]);
    assert!((1.85..2.05).contains(&glorot), "Glorot: {glorot}");
    assert!((half - glorot / 2.0).abs() < 1e-6, "{half} vs {glorot}");
}

/// A wrong output unit held at 1 by a bias beyond the clip by more than beta
/// cannot be moved by the nudge: every mistake is unreachable (EP's update for
/// it is exactly zero). With the bias inside the nudge's reach, the same
/// mistakes move. The listing agrees with the error count of a plain evaluation.
#[test]
fn mistakes_pinned_past_the_clip_are_unreachable_and_others_are_not() {
    let cfg = crate::config::Config {
        layers: vec![16, 12, 10],
        eval_block: 7,
        ..crate::config::preset("eqprop-mnist-1h").unwrap()
    };
    let data = random_digits(30, 16, 5);
    let mut net = Network::seeded(&cfg.layers, 2);
    // The outputs see only their biases: unit 3 wins every example (the 27 not
    // labelled 3 are mistakes) and the other units sit at 0, past the clip by more
    // than beta, so only unit 3 can move.
    net.weights[1].fill(0.0);
    net.biases[1].fill(-5.0);
    for (bias, pinned) in [(5.0, true), (1.2, false)] {
        net.biases[1][3] = bias;
        let found = super::mistakes::mistakes(&cfg, &net, &data);
        let wrong: Vec<usize> = (0..30).filter(|i| i % 10 != 3).collect();
        assert_eq!(found.iter().map(|m| m.index).collect::<Vec<_>>(), wrong);
        assert!(
            found
                .iter()
                .all(|m| m.predicted == 3 && m.label as usize == m.index % 10)
        );
        assert!(
            found.iter().all(|m| m.unreachable() == pinned),
            "bias {bias}"
        );
        let mut learner = super::EqProp::from_network(
            net.clone(),
            super::Settings::from_config(&cfg),
            &cfg,
            [0, 0, 0],
        );
        assert_eq!(
            crate::train::Learner::evaluate(&mut learner, &data).errors,
            27
        );
    }
}

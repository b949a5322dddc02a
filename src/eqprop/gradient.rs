//! The exact gradient of EP's loss, to measure EP's estimate against.
//!
//! The loss is C(s*) at the free fixed point s*(theta). Two ways to its gradient:
//! - BPTT: backprop through the T synchronous free steps actually run,
//!   s_{t+1} = clip((1 - eps) s_t + eps (drive(s_t) + b)), from a start s_0;
//! - recurrent backprop (RBP): implicit differentiation at s*, computed as the
//!   same backward recursion with every state held at s* until it converges.
//!
//! Plain f64 loops over one example at a time: this is a reference, not a hot loop.
#![allow(clippy::needless_range_loop)]

use super::network::Network;

/// dC/dW_k and dC/db_{k+1}, laid out like the network's parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Grads {
    pub weights: Vec<Vec<f64>>,
    pub biases: Vec<Vec<f64>>,
}

impl Grads {
    pub fn zeros(net: &Network) -> Self {
        Grads {
            weights: net
                .weights
                .iter()
                .map(|w| vec![0.0; w.data.len()])
                .collect(),
            biases: net.biases.iter().map(|b| vec![0.0; b.len()]).collect(),
        }
    }

    pub fn scale(&mut self, c: f64) {
        for v in self.weights.iter_mut().chain(self.biases.iter_mut()) {
            v.iter_mut().for_each(|x| *x *= c);
        }
    }

    /// self = (self - other) * c.
    pub fn sub_scaled(&mut self, other: &Grads, c: f64) {
        let pairs = self
            .weights
            .iter_mut()
            .zip(&other.weights)
            .chain(self.biases.iter_mut().zip(&other.biases));
        for (a, b) in pairs {
            a.iter_mut().zip(b).for_each(|(x, y)| *x = (*x - y) * c);
        }
    }

    /// Every parameter in one vector.
    pub fn flat(&self) -> Vec<f64> {
        (0..self.weights.len())
            .flat_map(|k| self.layer(k))
            .collect()
    }

    /// All parameters of layer pair k as one flat vector (weights then bias).
    pub fn layer(&self, k: usize) -> Vec<f64> {
        let mut v = self.weights[k].clone();
        v.extend_from_slice(&self.biases[k]);
        v
    }
}

/// Cosine similarity and norm ratio |a| / |b|.
pub fn compare(a: &[f64], b: &[f64]) -> (f64, f64) {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    (dot / (na * nb).max(1e-300), na / nb.max(1e-300))
}

/// States of one example: `s[0]` is x, `s[k]` layer k.
pub type States = Vec<Vec<f64>>;

/// Pre-activation of every free layer: a_k = (1 - eps) s_k + eps (drive_k + b_k).
fn pre_activation(net: &Network, s: &States, eps: f64) -> States {
    let depth = net.depth();
    let mut a = vec![Vec::new(); depth + 1];
    for k in 1..=depth {
        let n = net.sizes[k];
        let mut drive: Vec<f64> = net.biases[k - 1].iter().map(|&b| b as f64).collect();
        let below = &net.weights[k - 1];
        for (i, &si) in s[k - 1].iter().enumerate() {
            if si != 0.0 {
                for (d, &w) in drive.iter_mut().zip(below.row(i)) {
                    *d += si * w as f64;
                }
            }
        }
        if k < depth {
            let above = &net.weights[k];
            for (j, d) in drive.iter_mut().enumerate().take(n) {
                *d += above
                    .row(j)
                    .iter()
                    .zip(&s[k + 1])
                    .map(|(&w, &v)| w as f64 * v)
                    .sum::<f64>();
            }
        }
        a[k] = s[k]
            .iter()
            .zip(&drive)
            .map(|(&v, &d)| (1.0 - eps) * v + eps * d)
            .collect();
    }
    a
}

/// One synchronous free step.
pub fn free_step(net: &Network, s: &States, eps: f64) -> States {
    let a = pre_activation(net, s, eps);
    let mut out = s.clone();
    for k in 1..=net.depth() {
        out[k] = a[k].iter().map(|&v| v.clamp(0.0, 1.0)).collect();
    }
    out
}

/// One synchronous step with the output nudged toward `target` by `beta`.
fn nudged_step(net: &Network, s: &States, target: &[f64], beta: f64, eps: f64) -> States {
    let mut a = pre_activation(net, s, eps);
    let last = a.len() - 1;
    for ((av, &o), &t) in a[last].iter_mut().zip(&s[last]).zip(target) {
        *av += eps * beta * (t - o);
    }
    let mut out = s.clone();
    for k in 1..a.len() {
        out[k] = a[k].iter().map(|&v| v.clamp(0.0, 1.0)).collect();
    }
    out
}

/// `steps` free steps from `s0`: the states s_0..=s_T and the pre-activations a_0..a_{T-1}.
fn unroll(net: &Network, s0: &States, steps: usize, eps: f64) -> (Vec<States>, Vec<States>) {
    let mut traj = vec![s0.clone()];
    let mut pre = Vec::with_capacity(steps);
    for _ in 0..steps {
        let s = traj.last().unwrap();
        pre.push(pre_activation(net, s, eps));
        traj.push(free_step(net, s, eps));
    }
    (traj, pre)
}

/// One even/odd step: layers 1, 3, ... then 2, 4, ... each set to clip(drive + b),
/// the minimiser of E given its neighbours. E never rises, so unlike the
/// synchronous step it cannot oscillate; its fixed points are the same.
pub fn even_odd_step(net: &Network, s: &States) -> States {
    let mut s = s.clone();
    for parity in [1, 0] {
        let a = pre_activation(net, &s, 1.0);
        for k in (1..=net.depth()).filter(|k| k % 2 == parity) {
            s[k] = a[k].iter().map(|&v| v.clamp(0.0, 1.0)).collect();
        }
    }
    s
}

/// C = 1/2 |s_out - d|^2.
pub fn cost(s: &States, target: &[f64]) -> f64 {
    s.last()
        .unwrap()
        .iter()
        .zip(target)
        .map(|(o, t)| 0.5 * (o - t).powi(2))
        .sum()
}

/// Backward through one step whose pre-activations were `a` at states `s`:
/// given g = dC/ds_{t+1}, accumulates the parameter gradients into `grads` and
/// returns dC/ds_t.
fn backward_step(
    net: &Network,
    s: &States,
    a: &States,
    g: &States,
    eps: f64,
    grads: &mut Grads,
) -> States {
    let depth = net.depth();
    // delta_k = g_k * clip'(a_k), with clip' = 1 inside [0, 1] (as the dynamics use it).
    let delta: States = (0..=depth)
        .map(|k| {
            if k == 0 {
                Vec::new()
            } else {
                g[k].iter()
                    .zip(&a[k])
                    .map(|(&gv, &av)| if (0.0..=1.0).contains(&av) { gv } else { 0.0 })
                    .collect()
            }
        })
        .collect();
    let mut prev: States = s.iter().map(|v| vec![0.0; v.len()]).collect();
    for k in 1..=depth {
        for (p, &d) in prev[k].iter_mut().zip(&delta[k]) {
            *p += (1.0 - eps) * d;
        }
        for (b, &d) in grads.biases[k - 1].iter_mut().zip(&delta[k]) {
            *b += eps * d;
        }
        // drive_k has s_{k-1} W_{k-1}: gradients to W_{k-1} and to s_{k-1} (k > 1).
        let w = &net.weights[k - 1];
        for i in 0..w.rows {
            let si = s[k - 1][i];
            let row = w.row(i);
            let grow = &mut grads.weights[k - 1][i * w.cols..(i + 1) * w.cols];
            let mut back = 0.0;
            for j in 0..w.cols {
                grow[j] += eps * si * delta[k][j];
                back += row[j] as f64 * delta[k][j];
            }
            if k > 1 {
                prev[k - 1][i] += eps * back;
            }
        }
        // drive_k has s_{k+1} W_k^T: gradients to W_k and to s_{k+1}.
        if k < depth {
            let w = &net.weights[k];
            for i in 0..w.rows {
                let di = delta[k][i];
                if di == 0.0 {
                    continue;
                }
                let row = w.row(i);
                let grow = &mut grads.weights[k][i * w.cols..(i + 1) * w.cols];
                for j in 0..w.cols {
                    grow[j] += eps * di * s[k + 1][j];
                    prev[k + 1][j] += eps * di * row[j] as f64;
                }
            }
        }
    }
    prev
}

fn output_grad(s: &States, target: &[f64]) -> States {
    let mut g: States = s.iter().map(|v| vec![0.0; v.len()]).collect();
    let last = g.len() - 1;
    for ((gv, &o), &t) in g[last].iter_mut().zip(&s[last]).zip(target) {
        *gv = o - t;
    }
    g
}

/// BPTT: runs `steps` free steps from `s0` and returns (final states, dC/dtheta).
pub fn bptt(net: &Network, s0: &States, target: &[f64], steps: usize, eps: f64) -> (States, Grads) {
    let (mut traj, pre) = unroll(net, s0, steps, eps);
    let mut grads = Grads::zeros(net);
    let mut g = output_grad(traj.last().unwrap(), target);
    for t in (0..steps).rev() {
        g = backward_step(net, &traj[t], &pre[t], &g, eps, &mut grads);
    }
    (traj.pop().unwrap(), grads)
}

/// RBP at a fixed point `s_star`: the backward recursion with the Jacobian at
/// s_star, iterated `iters` times (it converges as the forward dynamics do).
pub fn rbp(net: &Network, s_star: &States, target: &[f64], iters: usize, eps: f64) -> Grads {
    let a = pre_activation(net, s_star, eps);
    let mut grads = Grads::zeros(net);
    let mut g = output_grad(s_star, target);
    for _ in 0..iters {
        g = backward_step(net, s_star, &a, &g, eps, &mut grads);
    }
    grads
}

/// EP's estimate of -dC/dtheta from the free fixed point `s0` and a nudged phase
/// of `steps` steps with strength `beta` (one-sided) or +-beta (`symmetric`):
/// (1/beta) [s_k^b s_{k+1}^b - s_k^0 s_{k+1}^0] (and s^b - s^0 for biases).
pub fn ep_estimate(
    net: &Network,
    s0: &States,
    target: &[f64],
    beta: f64,
    steps: usize,
    eps: f64,
    symmetric: bool,
) -> Grads {
    let nudged = |b: f64| (0..steps).fold(s0.clone(), |s, _| nudged_step(net, &s, target, b, eps));
    let (plus, minus, coef) = if symmetric {
        (nudged(beta), nudged(-beta), 1.0 / (2.0 * beta))
    } else {
        (nudged(beta), s0.clone(), 1.0 / beta)
    };
    let (mut grads, minus) = (hebbian(net, &plus), hebbian(net, &minus));
    let params = grads.weights.iter_mut().chain(grads.biases.iter_mut());
    for (g, m) in params.zip(minus.weights.iter().chain(&minus.biases)) {
        g.iter_mut().zip(m).for_each(|(a, b)| *a = coef * (*a - b));
    }
    grads
}

/// -dE/dtheta at the states `s`: s_k s_{k+1}^T for W_k and s_{k+1} for b_{k+1}.
fn hebbian(net: &Network, s: &States) -> Grads {
    let mut o = Grads::zeros(net);
    for k in 0..net.weights.len() {
        let cols = net.sizes[k + 1];
        for i in 0..net.sizes[k] {
            for j in 0..cols {
                o.weights[k][i * cols + j] = s[k][i] * s[k + 1][j];
            }
        }
        o.biases[k].copy_from_slice(&s[k + 1]);
    }
    o
}

/// dC/ds_k by backprop through the layers at the states `s`, as if the net were
/// feed-forward from each layer to the output: delta_out = (s_out - d) * rho'(s_out),
/// delta_k = (delta_{k+1} W_k^T) * rho'(s_k) with rho' = 1 strictly inside (0, 1)
/// (a unit clipped at a bound does not move for a small nudge).
pub fn layer_gradients(net: &Network, s: &States, target: &[f64]) -> States {
    let depth = net.depth();
    let inside = |v: f64| v > 0.0 && v < 1.0;
    let mut delta: States = s.iter().map(|v| vec![0.0; v.len()]).collect();
    delta[depth] = s[depth]
        .iter()
        .zip(target)
        .map(|(&o, t)| if inside(o) { o - t } else { 0.0 })
        .collect();
    for k in (1..depth).rev() {
        let w = &net.weights[k];
        for i in 0..w.rows {
            let inside = s[k][i] > 0.0 && s[k][i] < 1.0;
            delta[k][i] = if inside {
                w.row(i)
                    .iter()
                    .zip(&delta[k + 1])
                    .map(|(&wij, d)| wij as f64 * d)
                    .sum()
            } else {
                0.0
            };
        }
    }
    delta
}

/// Early inference (Bengio & Fischer, arXiv 1510.02777): from the fixed point
/// `s_star`, nudge the output by `beta` and run `steps` synchronous steps. Returns,
/// per step t = 1..=steps and per layer k = 1..=L+1, the cosine between the
/// change s_k(t) - s_k* and -dC/ds_k from `layer_gradients` (NaN while the
/// change is still below 1e-6 eps beta: the nudge has not reached that layer yet).
pub fn early_inference(
    net: &Network,
    s_star: &States,
    target: &[f64],
    beta: f64,
    steps: usize,
    eps: f64,
) -> Vec<Vec<f64>> {
    let grads = layer_gradients(net, s_star, target);
    let mut s = s_star.clone();
    let mut out = Vec::with_capacity(steps);
    for _ in 0..steps {
        s = nudged_step(net, &s, target, beta, eps);
        let row = (1..s.len())
            .map(|k| {
                let change: Vec<f64> = s[k].iter().zip(&s_star[k]).map(|(a, b)| a - b).collect();
                let neg: Vec<f64> = grads[k].iter().map(|g| -g).collect();
                // Not reached yet: nothing beyond the fixed point's own residual.
                if change.iter().all(|c| c.abs() < 1e-6 * eps * beta.abs()) {
                    f64::NAN
                } else {
                    compare(&change, &neg).0
                }
            })
            .collect();
        out.push(row);
    }
    out
}

/// One nudged step of EP beside the matching step of BPTT.
pub struct GduStep {
    /// EP's parameter update of this nudged step, (1 / beta) times the increment
    /// of -dE/dtheta = s_k s_{k+1}^T: [s^b_t s^b_t - s^b_{t-1} s^b_{t-1}] / beta.
    pub ep_params: Grads,
    /// BPTT's contribution of the matching step from the end, negated: -dC/dtheta(T - t).
    pub bptt_params: Grads,
    /// EP's neural update (s^b_t - s^b_{t-1}) / beta, per layer (index 0: input, empty change).
    pub ep_neurons: States,
    /// -eps dC/ds(T - t + 1) through the clip of that step: BPTT's adjoint of the
    /// states, times eps (one step moves a state by eps times its drive).
    pub bptt_neurons: States,
}

/// Step by step, EP against BPTT (the "gradient descending updates" property,
/// Ernoult et al. 2019): the free phase runs `free` steps from `s0` (to its
/// fixed point), BPTT runs back through them, and the nudged phase runs `steps`
/// steps from the end. GDU says EP's t-th nudged update equals BPTT's t-th
/// step from the end, for the parameters and for the neurons, as beta -> 0.
pub fn gdu(
    net: &Network,
    s0: &States,
    target: &[f64],
    free: usize,
    steps: usize,
    beta: f64,
    eps: f64,
) -> Vec<GduStep> {
    let (mut traj, pre) = unroll(net, s0, free, eps);
    let mut bptt = Vec::with_capacity(steps);
    let mut g = output_grad(traj.last().unwrap(), target);
    for t in (free - steps..free).rev() {
        // The adjoint through this step's clip: a clipped unit cannot move.
        let neurons: States = g
            .iter()
            .zip(&pre[t])
            .map(|(gk, ak)| {
                gk.iter()
                    .zip(ak)
                    .map(|(&x, &a)| {
                        if (0.0..=1.0).contains(&a) {
                            -eps * x
                        } else {
                            0.0
                        }
                    })
                    .collect()
            })
            .collect();
        let mut grads = Grads::zeros(net);
        g = backward_step(net, &traj[t], &pre[t], &g, eps, &mut grads);
        grads.scale(-1.0);
        bptt.push((grads, neurons));
    }
    let mut s = traj.pop().unwrap();
    let mut prev = hebbian(net, &s);
    let mut out = Vec::with_capacity(steps);
    for (bptt_params, bptt_neurons) in bptt {
        let next = nudged_step(net, &s, target, beta, eps);
        let now = hebbian(net, &next);
        let mut ep_params = now.clone();
        ep_params.sub_scaled(&prev, 1.0 / beta);
        let ep_neurons = next
            .iter()
            .zip(&s)
            .map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y) / beta).collect())
            .collect();
        out.push(GduStep {
            ep_params,
            bptt_params,
            ep_neurons,
            bptt_neurons,
        });
        (s, prev) = (next, now);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A small net with Glorot weights times `scale`, biases drawn from `bias`,
    /// and a random input with every other layer at rest.
    fn small_net(
        sizes: &[usize],
        seed: u64,
        scale: f32,
        bias: std::ops::Range<f32>,
    ) -> (Network, States) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut net = Network::glorot(sizes, &mut rng);
        for w in &mut net.weights {
            w.data.iter_mut().for_each(|v| *v *= scale);
        }
        for b in &mut net.biases {
            b.iter_mut()
                .for_each(|v| *v = rng.random_range(bias.clone()));
        }
        let x: Vec<f64> = (0..sizes[0]).map(|_| rng.random_range(0.0..1.0)).collect();
        let mut s0: States = vec![x];
        s0.extend(net.sizes[1..].iter().map(|&n| vec![0.0; n]));
        (net, s0)
    }

    fn setup(seed: u64, scale: f32) -> (Network, States, Vec<f64>) {
        let (net, s0) = small_net(&[8, 7, 6, 5], seed, scale, 0.2..0.5);
        let target = (0..5).map(|j| (j == 2) as u8 as f64).collect();
        (net, s0, target)
    }

    /// Finite differences of `loss(net)` in every parameter.
    fn fd(net: &Network, loss: impl Fn(&Network) -> f64) -> Grads {
        let h = 1e-3f32;
        let mut g = Grads::zeros(net);
        for k in 0..net.weights.len() {
            for i in 0..net.weights[k].data.len() {
                let (mut p, mut m) = (net.clone(), net.clone());
                p.weights[k].data[i] += h;
                m.weights[k].data[i] -= h;
                g.weights[k][i] = (loss(&p) - loss(&m)) / (2.0 * h as f64);
            }
            for j in 0..net.biases[k].len() {
                let (mut p, mut m) = (net.clone(), net.clone());
                p.biases[k][j] += h;
                m.biases[k][j] -= h;
                g.biases[k][j] = (loss(&p) - loss(&m)) / (2.0 * h as f64);
            }
        }
        g
    }

    fn assert_close(a: &Grads, b: &Grads, tol: f64, what: &str) {
        for k in 0..a.weights.len() {
            let (cos, ratio) = compare(&a.layer(k), &b.layer(k));
            assert!(
                cos > 1.0 - tol && (ratio - 1.0).abs() < tol * 10.0,
                "{what}, layer {k}: cosine {cos}, norm ratio {ratio}"
            );
        }
    }

    #[test]
    fn bptt_matches_finite_differences_of_the_unrolled_loss() {
        let (net, s0, target) = setup(1, 1.0);
        let (_, g) = bptt(&net, &s0, &target, 15, 0.5);
        let want = fd(&net, |n| cost(&bptt(n, &s0, &target, 15, 0.5).0, &target));
        assert_close(&g, &want, 1e-4, "BPTT vs FD");
    }

    #[test]
    fn rbp_matches_finite_differences_at_the_fixed_point_and_bptt_at_convergence() {
        // Small weights: one fixed point, reached from anywhere.
        let (net, s0, target) = setup(2, 0.4);
        let relax = |n: &Network| (0..300).fold(s0.clone(), |s, _| free_step(n, &s, 0.5));
        let s_star = relax(&net);
        let g_rbp = rbp(&net, &s_star, &target, 300, 0.5);
        let want = fd(&net, |n| cost(&relax(n), &target));
        assert_close(&g_rbp, &want, 1e-4, "RBP vs FD");
        let (_, g_bptt) = bptt(&net, &s0, &target, 300, 0.5);
        assert_close(&g_bptt, &g_rbp, 1e-6, "BPTT vs RBP");
    }

    #[test]
    fn ep_estimate_tends_to_minus_the_gradient_as_beta_shrinks() {
        let (net, s0, target) = setup(3, 0.4);
        let s_star = (0..300).fold(s0, |s, _| free_step(&net, &s, 0.5));
        let g = rbp(&net, &s_star, &target, 300, 0.5);
        let neg: Vec<Vec<f64>> = (0..g.weights.len())
            .map(|k| g.layer(k).iter().map(|v| -v).collect())
            .collect();
        let err = |beta: f64, symmetric: bool| -> f64 {
            let e = ep_estimate(&net, &s_star, &target, beta, 300, 0.5, symmetric);
            (0..neg.len())
                .map(|k| 1.0 - compare(&e.layer(k), &neg[k]).0)
                .fold(0.0, f64::max)
        };
        assert!(
            err(1e-3, false) < 1e-4,
            "one-sided at beta 1e-3: {}",
            err(1e-3, false)
        );
        assert!(
            err(1e-3, true) < 1e-6,
            "symmetric at beta 1e-3: {}",
            err(1e-3, true)
        );
        // The one-sided estimate's bias is O(beta), the symmetric one's O(beta^2): in
        // 1 - cosine (quadratic in the angle) that is beta^2 against beta^4, so a
        // five times smaller beta divides the error by about 25 and 625.
        let one_sided = err(0.05, false) / err(0.01, false);
        let symmetric = err(0.05, true) / err(0.01, true);
        assert!(
            (12.0..50.0).contains(&one_sided),
            "one-sided ratio {one_sided}"
        );
        assert!(
            (300.0..1300.0).contains(&symmetric),
            "symmetric ratio {symmetric}"
        );
        assert!(err(0.05, true) < err(0.05, false));
    }

    #[test]
    fn the_nudge_reaches_layer_k_after_depth_minus_k_steps_along_the_gradient() {
        let (net, s0) = small_net(&[8, 7, 6, 5, 4], 9, 0.4, 0.3..0.5);
        let target = vec![0.0, 1.0, 0.0, 0.0];
        let s_star = (0..400).fold(s0, |s, _| free_step(&net, &s, 0.5));
        let c = early_inference(&net, &s_star, &target, 1e-4, 6, 0.5);
        // Output (index 3) moves at step 1, layer 3 at step 2, layer 2 at 3, layer 1 at 4.
        for (t, row) in c.iter().enumerate() {
            for (k, &cos) in row.iter().enumerate() {
                let reached = t + 1 >= row.len() - k;
                assert_eq!(
                    !cos.is_nan(),
                    reached,
                    "step {} layer {}: {cos}",
                    t + 1,
                    k + 1
                );
            }
        }
        // On first arrival the change points along -dC/ds (the backprop direction).
        for k in 0..4 {
            let first = c[3 - k][k];
            assert!(first > 0.99, "layer {}: cosine {first} on arrival", k + 1);
        }
    }

    #[test]
    fn each_nudged_step_of_ep_matches_the_bptt_step_it_mirrors() {
        let (net, s0) = small_net(&[8, 7, 6, 5], 11, 0.4, 0.3..0.5);
        let target = vec![0.0, 1.0, 0.0, 0.0, 0.0];
        let steps = gdu(&net, &s0, &target, 300, 8, 1e-5, 0.5);
        for (t, st) in steps.iter().enumerate() {
            // Parameters, all together and per layer pair.
            let (cos, ratio) = compare(&st.ep_params.flat(), &st.bptt_params.flat());
            assert!(
                cos > 0.9999 && (ratio - 1.0).abs() < 1e-3,
                "step {}: cosine {cos}, ratio {ratio}",
                t + 1
            );
            for k in 0..net.weights.len() {
                let (ep, bp) = (st.ep_params.layer(k), st.bptt_params.layer(k));
                if bp.iter().any(|v| v.abs() > 1e-12) {
                    let (cos, _) = compare(&ep, &bp);
                    assert!(cos > 0.9999, "step {} W{k}: cosine {cos}", t + 1);
                }
            }
            // Neurons: (s_t - s_{t-1}) / beta against -eps dC/ds, layer by layer.
            for k in 1..st.ep_neurons.len() {
                let (ep, bp) = (&st.ep_neurons[k], &st.bptt_neurons[k]);
                if bp.iter().any(|v| v.abs() > 1e-12) {
                    let (cos, ratio) = compare(ep, bp);
                    assert!(
                        cos > 0.9999 && (ratio - 1.0).abs() < 1e-3,
                        "step {} layer {k}: cosine {cos}, ratio {ratio}",
                        t + 1
                    );
                } else {
                    assert!(
                        ep.iter().all(|v| v.abs() < 1e-6),
                        "step {} layer {k}",
                        t + 1
                    );
                }
            }
        }
    }
}

//! An actor-critic for CartPole whose actor and critic are EP networks.
//!
//! Nothing here uses backprop unless asked for its twin: the algorithm only
//! decides how each network's outputs should move (dL/dy), and an
//! [`Estimator`] turns that into a weight gradient. With
//! [`Method::EqProp`] that is EP's contrast of two equilibria, with
//! [`Method::Backprop`] the chain rule through a feed-forward net of the same
//! shapes; everything else (data, schedule, optimiser, seeds) is shared.
//!
//! The algorithm is proximal policy optimisation (Schulman et al. 2017), a
//! policy-gradient actor-critic that reuses each batch of experience for a few
//! epochs and stops moving a probability once it has changed too much:
//!
//! - critic: V(s) = v(s) / c with v the network's output in [0, 1] and
//!   c = (1 - gamma) / 2, nudged toward the lambda-return G:
//!   dL/dv = v - c G (the TD error, read over several steps);
//! - actor: two outputs o read as logits, pi = softmax(o / T); for the action
//!   a taken with probability pi_old(a) and advantage A (GAE, normalised over
//!   the batch), dL/do = -A r (e_a - pi) / T with r = pi(a) / pi_old(a):
//!   the advantage times the derivative of the chosen action's
//!   log-probability, set to 0 where PPO clips (r outside 1 -/+ clip on the
//!   side A favours).

use super::cartpole::CartPole;
use super::estimator::{BackpropEstimator, EqPropEstimator, Estimator, Relaxation};
use crate::eqprop::Network;
use crate::error::{Error, Result};
use crate::optim::adam_step;
use crate::tensor::Matrix;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Which rule turns output gradients into weight gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Method {
    #[serde(rename = "ep")]
    EqProp,
    #[serde(rename = "backprop")]
    Backprop,
}

impl Method {
    /// The name on the command line, in configs and in run directories.
    pub fn name(self) -> &'static str {
        match self {
            Method::EqProp => "ep",
            Method::Backprop => "backprop",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Method> {
        [Method::EqProp, Method::Backprop]
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| Error::Config(format!("unknown method `{s}`; use ep or backprop")))
    }
}

/// Hyperparameters of the agent.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Hidden layer sizes of both networks (inputs 8, outputs 2 and 1).
    pub hidden: Vec<usize>,
    pub gamma: f32,
    /// GAE's lambda.
    pub lambda: f32,
    /// Softmax temperature of the actor's outputs (they lie in [0, 1]).
    pub temperature: f32,
    /// Environment steps per update.
    pub rollout: usize,
    /// Passes over each rollout, in minibatches of `minibatch` steps.
    pub epochs: usize,
    pub minibatch: usize,
    /// PPO's clip range of the probability ratio.
    pub clip: f32,
    /// Adam's rates.
    pub actor_rate: f32,
    pub critic_rate: f32,
    /// Decay rates and clip linearly to 0 over the episode budget.
    pub anneal: bool,
    /// EP's relaxation (unused by the backprop twin).
    pub relaxation: Relaxation,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            hidden: vec![64],
            gamma: 0.99,
            lambda: 0.95,
            temperature: 0.2,
            rollout: 256,
            epochs: 10,
            minibatch: 64,
            clip: 0.2,
            actor_rate: 1e-3,
            critic_rate: 1e-3,
            anneal: true,
            relaxation: Relaxation {
                free_steps: 20,
                nudged_steps: 6,
                epsilon: 0.5,
                beta: 0.01,
            },
        }
    }
}

impl Settings {
    /// Rejects settings the agent cannot run with.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(format!("agent settings: {m}")));
        if self.hidden.is_empty() || self.hidden.contains(&0) {
            return bad("hidden must list at least one layer size, none 0");
        }
        if self.rollout == 0 || self.minibatch == 0 || self.epochs == 0 {
            return bad("rollout, minibatch and epochs must be at least 1");
        }
        if !(0.0..1.0).contains(&self.gamma) || !(0.0..=1.0).contains(&self.lambda) {
            return bad("gamma must be in [0, 1) and lambda in [0, 1]");
        }
        let r = &self.relaxation;
        if self.temperature <= 0.0 || r.beta <= 0.0 || r.epsilon <= 0.0 {
            return bad("temperature, beta and epsilon must be positive");
        }
        Ok(())
    }
}

/// One finished episode.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Episode {
    pub episode: usize,
    #[serde(rename = "return")]
    pub ret: f32,
    /// Mean return of the last (up to) 100 episodes.
    pub mean100: f32,
    /// Environment steps so far.
    pub steps: usize,
}

/// Observation scales: x, x_dot, theta, theta_dot to about [-1, 1].
const SCALE: [f32; 4] = [2.4, 3.0, 0.21, 3.0];
pub const INPUTS: usize = 8;

/// Each observation component as its positive and negative parts, so that
/// inputs, like the units, are non-negative rates.
pub fn encode(obs: &[f32; 4], out: &mut [f32]) {
    for (i, (&v, &s)) in obs.iter().zip(&SCALE).enumerate() {
        out[2 * i] = (v / s).max(0.0);
        out[2 * i + 1] = (-v / s).max(0.0);
    }
}

/// Softmax of `o / t` over two logits.
pub fn policy(o: &[f32], t: f32) -> [f32; 2] {
    let p1 = 1.0 / (1.0 + ((o[0] - o[1]) / t).exp());
    [1.0 - p1, p1]
}

/// dL/do of PPO's clipped surrogate L = -min(r A, clip(r, 1 -/+ clip) A) for
/// one step, r = pi(a) / pi_old(a), pi = softmax(o / t):
/// -A r (e_a - pi) / t where the unclipped term is the smaller one, else 0.
pub fn ppo_output_gradient(
    o: &[f32],
    a: usize,
    old_log_prob: f32,
    adv: f32,
    clip: f32,
    t: f32,
    out: &mut [f32],
) {
    let pi = policy(o, t);
    let ratio = (pi[a].ln() - old_log_prob).exp();
    let clipped = (adv > 0.0 && ratio > 1.0 + clip) || (adv < 0.0 && ratio < 1.0 - clip);
    let scale = if clipped { 0.0 } else { -adv * ratio / t };
    for (j, g) in out.iter_mut().enumerate() {
        *g = scale * ((j == a) as u8 as f32 - pi[j]);
    }
}

/// Adam's moments for every parameter of a network.
struct NetAdam {
    m: Network,
    v: Network,
    t: f32,
}

impl NetAdam {
    fn new(net: &Network) -> Self {
        NetAdam {
            m: net.zeros_like(),
            v: net.zeros_like(),
            t: 0.0,
        }
    }

    fn step(&mut self, net: &mut Network, grad: &Network, lr: f32) {
        self.t += 1.0;
        for k in 0..net.weights.len() {
            let (m, v) = (&mut self.m, &mut self.v);
            let (w, g) = (&mut net.weights[k].data, &grad.weights[k].data);
            adam_step(
                w,
                g,
                &mut m.weights[k].data,
                &mut v.weights[k].data,
                lr,
                self.t,
            );
            let (b, g) = (&mut net.biases[k], &grad.biases[k]);
            adam_step(b, g, &mut m.biases[k], &mut v.biases[k], lr, self.t);
        }
    }
}

/// A network, how it learns, and its optimiser state.
struct Learned {
    net: Network,
    estimator: Box<dyn Estimator>,
    adam: NetAdam,
    grad: Network,
    out: Matrix,
}

impl Learned {
    fn new(sizes: &[usize], seed: u64, method: Method, cap: usize, s: &Settings) -> Self {
        let mut net = Network::seeded(sizes, seed);
        // Start the outputs mid-range: a clipped output would pin the policy
        // (or the value) where no gradient reaches it.
        let last = net.weights.len() - 1;
        net.weights[last].data.iter_mut().for_each(|w| *w *= 0.1);
        net.biases[last].fill(0.5);
        let estimator: Box<dyn Estimator> = match method {
            Method::EqProp => Box::new(EqPropEstimator::new(sizes, cap, s.relaxation.clone())),
            Method::Backprop => Box::new(BackpropEstimator::new(sizes, cap)),
        };
        Learned {
            adam: NetAdam::new(&net),
            grad: net.zeros_like(),
            out: Matrix::zeros(0, *sizes.last().unwrap()),
            net,
            estimator,
        }
    }

    fn outputs(&mut self, x: &Matrix) -> &Matrix {
        self.estimator.outputs(&self.net, x.view(), &mut self.out);
        &self.out
    }

    /// One optimiser step down the gradient of a loss with derivative `dy` at
    /// the outputs of the last `outputs` call.
    fn descend(&mut self, dy: &Matrix, lr: f32) {
        self.estimator
            .gradient(&self.net, dy.view(), &mut self.grad);
        self.adam.step(&mut self.net, &self.grad, lr);
    }
}

/// What the agent saw and did during one rollout.
struct Rollout {
    x: Matrix,
    actions: Vec<usize>,
    log_probs: Vec<f32>,
    rewards: Vec<f32>,
    /// The episode ended after this step (terminated or truncated).
    done: Vec<bool>,
}

/// Trains for `episodes` episodes and calls `on_episode` after each.
pub fn train(
    s: &Settings,
    method: Method,
    seed: u64,
    episodes: usize,
    mut on_episode: impl FnMut(&Episode),
) -> Result<Vec<Episode>> {
    s.validate()?;
    if episodes == 0 {
        return Ok(Vec::new());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let sizes = |out: usize| {
        let mut v = vec![INPUTS];
        v.extend(&s.hidden);
        v.push(out);
        v
    };
    let cap = (s.rollout + 1).max(s.minibatch);
    let mut actor = Learned::new(&sizes(2), seed.wrapping_mul(2) + 1, method, cap, s);
    let mut critic = Learned::new(&sizes(1), seed.wrapping_mul(2) + 2, method, cap, s);
    let c = (1.0 - s.gamma) / 2.0;
    let mut env = CartPole::reset(&mut rng);
    let mut x1 = Matrix::zeros(1, INPUTS);
    encode(&env.observation(), x1.row_mut(0));
    let mut log = Vec::with_capacity(episodes);
    let (mut ret, mut steps) = (0.0f32, 0usize);
    let mut r = Rollout {
        x: Matrix::zeros(s.rollout + 1, INPUTS),
        actions: vec![0; s.rollout],
        log_probs: vec![0.0; s.rollout],
        rewards: vec![0.0; s.rollout],
        done: vec![false; s.rollout],
    };
    let mut order: Vec<usize> = (0..s.rollout).collect();
    let (mut mb_x, mut dy_actor, mut dy_critic) = (
        Matrix::zeros(s.minibatch, INPUTS),
        Matrix::zeros(s.minibatch, 2),
        Matrix::zeros(s.minibatch, 1),
    );
    let (mut adv, mut returns) = (vec![0.0f32; s.rollout], vec![0.0f32; s.rollout]);
    let mut values = vec![0.0f32; s.rollout + 1];
    loop {
        // Act.
        for t in 0..s.rollout {
            r.x.row_mut(t).copy_from_slice(x1.row(0));
            let pi = policy(actor.outputs(&x1).row(0), s.temperature);
            let a = (rng.random::<f32>() < pi[1]) as usize;
            let step = env.step(a);
            steps += 1;
            ret += step.reward;
            encode(&step.observation, x1.row_mut(0));
            r.actions[t] = a;
            r.log_probs[t] = pi[a].ln();
            r.rewards[t] = step.reward;
            r.done[t] = step.terminated || step.truncated;
            if step.truncated {
                // Time ran out, the pole did not fall: the future still counts.
                r.rewards[t] += s.gamma * critic.outputs(&x1).data[0] / c;
            }
            if r.done[t] {
                let start = log.len().saturating_sub(99);
                let recent = log[start..].iter().map(|e: &Episode| e.ret).sum::<f32>() + ret;
                let e = Episode {
                    episode: log.len() + 1,
                    ret,
                    mean100: recent / (log.len() - start + 1) as f32,
                    steps,
                };
                on_episode(&e);
                log.push(e);
                if log.len() == episodes {
                    return Ok(log);
                }
                ret = 0.0;
                env = CartPole::reset(&mut rng);
                encode(&env.observation(), x1.row_mut(0));
            }
        }
        r.x.row_mut(s.rollout).copy_from_slice(x1.row(0));
        // Advantages by GAE from the critic's values of every state seen.
        for (v, &o) in values.iter_mut().zip(&critic.outputs(&r.x).data) {
            *v = o / c;
        }
        let mut running = 0.0;
        for t in (0..s.rollout).rev() {
            let go_on = if r.done[t] { 0.0 } else { 1.0 };
            let delta = r.rewards[t] + s.gamma * values[t + 1] * go_on - values[t];
            running = delta + s.gamma * s.lambda * go_on * running;
            adv[t] = running;
            returns[t] = running + values[t];
        }
        let mean = adv.iter().sum::<f32>() / adv.len() as f32;
        let sd = (adv.iter().map(|a| (a - mean).powi(2)).sum::<f32>() / adv.len() as f32).sqrt();
        adv.iter_mut().for_each(|a| *a = (*a - mean) / (sd + 1e-8));
        // Learn.
        let left = if s.anneal {
            1.0 - log.len() as f32 / episodes as f32
        } else {
            1.0
        };
        let clip = s.clip * left;
        for _ in 0..s.epochs {
            order.shuffle(&mut rng);
            for chunk in order.chunks(s.minibatch) {
                let n = chunk.len();
                mb_x.set_rows(n);
                for (i, &t) in chunk.iter().enumerate() {
                    mb_x.row_mut(i).copy_from_slice(r.x.row(t));
                }
                let o = actor.outputs(&mb_x);
                dy_actor.set_rows(n);
                for (i, &t) in chunk.iter().enumerate() {
                    let (a, old, at) = (r.actions[t], r.log_probs[t], adv[t]);
                    let g = dy_actor.row_mut(i);
                    ppo_output_gradient(o.row(i), a, old, at, clip, s.temperature, g);
                }
                actor.descend(&dy_actor, s.actor_rate * left);
                let v = critic.outputs(&mb_x);
                dy_critic.set_rows(n);
                for (i, &t) in chunk.iter().enumerate() {
                    dy_critic.data[i] = v.data[i] - c * returns[t];
                }
                critic.descend(&dy_critic, s.critic_rate * left);
            }
        }
        for (role, net) in [("actor", &actor.net), ("critic", &critic.net)] {
            if let Some((layer, what)) = net.first_non_finite() {
                return Err(Error::Config(format!(
                    "training diverged after {} episodes: the {role}'s {what} {layer} is not \
                     finite (NaN or inf); lower the rates, then train again",
                    log.len()
                )));
            }
        }
    }
}

/// The first episode at which the mean of the last 100 returns reaches `goal`.
pub fn solved_at(log: &[Episode], goal: f32) -> Option<usize> {
    log.iter()
        .find(|e| e.episode >= 100 && e.mean100 >= goal)
        .map(|e| e.episode)
}

//! MNIST as a contextual bandit (issue: reward-driven learning with EP's rule).
//!
//! The learner sees an image, relaxes, reads its 10 outputs as the predicted
//! reward of each action (class), and picks one, epsilon-greedily. Only the
//! [`Environment`] holds the labels: it answers reward 1 if the action is the
//! true class, else 0. The nudged phase then pushes the chosen output toward
//! that reward (cost 1/2 (s_a - r)^2, the other outputs free), and the weight
//! update is EP's, unchanged: only what nudges the network differs from the
//! supervised case.

use rand::RngExt;

/// The bandit's environment: the only place that reads labels.
pub struct Environment<'a> {
    labels: &'a [u8],
}

impl<'a> Environment<'a> {
    pub fn new(labels: &'a [u8]) -> Self {
        Environment { labels }
    }

    /// Reward for taking `action` on example `example`: 1 if it is the true class.
    pub fn reward(&self, example: usize, action: usize) -> f32 {
        (self.labels[example] as usize == action) as u8 as f32
    }
}

/// Epsilon of epsilon-greedy exploration in `epoch` (1-based) of `epochs`:
/// linear from `explore[0]` in the first epoch to `explore[1]` in the last.
pub fn epsilon(explore: &[f32], epoch: usize, epochs: usize) -> f32 {
    let (start, end) = (explore[0], explore[1]);
    if epochs <= 1 {
        return start;
    }
    let f = (epoch.clamp(1, epochs) - 1) as f32 / (epochs - 1) as f32;
    start + (end - start) * f
}

/// The greedy action (first largest predicted reward) and the action taken:
/// with probability `epsilon` a uniformly random one instead.
pub fn choose(predicted: &[f32], epsilon: f32, rng: &mut impl rand::Rng) -> (usize, usize) {
    let greedy = crate::tensor::kernels::argmax(predicted);
    let action = if epsilon > 0.0 && rng.random_bool(epsilon as f64) {
        rng.random_range(0..predicted.len())
    } else {
        greedy
    };
    (greedy, action)
}

/// What one bandit step did for one example.
pub struct Outcome {
    pub action: usize,
    pub reward: f32,
    /// The greedy action earns nothing (the error the environment sees).
    pub greedy_wrong: bool,
    /// 1/2 (s_a - r)^2 of the action taken.
    pub cost: f64,
}

/// One example's step: choose an action from the `predicted` rewards, get its
/// reward from `env`, and set the nudge of this example's output row: toward
/// the reward on the chosen unit (`target`), on that unit alone (`mask`).
pub fn act(
    env: &Environment,
    example: usize,
    predicted: &[f32],
    epsilon: f32,
    rng: &mut impl rand::Rng,
    target: &mut [f32],
    mask: &mut [f32],
) -> Outcome {
    let (greedy, action) = choose(predicted, epsilon, rng);
    let reward = env.reward(example, action);
    target.fill(0.0);
    mask.fill(0.0);
    target[action] = reward;
    mask[action] = 1.0;
    Outcome {
        action,
        reward,
        greedy_wrong: env.reward(example, greedy) == 0.0,
        cost: 0.5 * ((predicted[action] - reward) as f64).powi(2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn reward_is_one_only_for_the_true_class() {
        let labels = [3u8, 7];
        let env = Environment::new(&labels);
        for a in 0..10 {
            assert_eq!(env.reward(0, a), (a == 3) as u8 as f32);
            assert_eq!(env.reward(1, a), (a == 7) as u8 as f32);
        }
    }

    #[test]
    fn epsilon_anneals_linearly_and_exploration_happens_at_that_rate() {
        assert_eq!(epsilon(&[0.2, 0.0], 1, 5), 0.2);
        assert!((epsilon(&[0.2, 0.0], 3, 5) - 0.1).abs() < 1e-7);
        assert_eq!(epsilon(&[0.2, 0.0], 5, 5), 0.0);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let predicted = [0.1, 0.9, 0.2];
        let n = 20_000;
        let explored = (0..n)
            .filter(|_| choose(&predicted, 0.3, &mut rng).1 != 1)
            .count();
        // Random actions hit the greedy one a third of the time: 0.3 * 2/3 = 0.2.
        let rate = explored as f64 / n as f64;
        assert!((rate - 0.2).abs() < 0.015, "{rate}");
        assert_eq!(choose(&predicted, 0.0, &mut rng), (1, 1));
    }
}

//! CartPole with the classic dynamics (Barto, Sutton & Anderson 1983, as
//! corrected by Florian 2007) and the constants, integrator, termination and
//! 500-step cap of Gymnasium's CartPole-v1: reward 1 per step, including the
//! one on which the pole falls. The state is kept in f64 as Gymnasium keeps
//! it; observations are f32, as Gymnasium returns them.

use rand::RngExt;

const GRAVITY: f64 = 9.8;
const MASS_CART: f64 = 1.0;
const MASS_POLE: f64 = 0.1;
const TOTAL_MASS: f64 = MASS_POLE + MASS_CART;
/// Half the pole's length.
const LENGTH: f64 = 0.5;
const POLE_MASS_LENGTH: f64 = MASS_POLE * LENGTH;
const FORCE: f64 = 10.0;
/// Seconds per step (explicit Euler).
const TAU: f64 = 0.02;
const THETA_LIMIT: f64 = 12.0 * 2.0 * std::f64::consts::PI / 360.0;
const X_LIMIT: f64 = 2.4;
/// CartPole-v1's time limit.
pub const MAX_STEPS: usize = 500;

/// (x, x_dot, theta, theta_dot).
pub type State = [f64; 4];

#[derive(Clone, Debug)]
pub struct CartPole {
    pub state: State,
    pub steps: usize,
}

/// What one step returns: observation, reward, terminated (the pole fell or
/// the cart left the track), truncated (the time limit).
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub observation: [f32; 4],
    pub reward: f32,
    pub terminated: bool,
    pub truncated: bool,
}

impl CartPole {
    /// A new episode: every state component uniform in [-0.05, 0.05).
    pub fn reset(rng: &mut impl rand::Rng) -> Self {
        Self::from_state(std::array::from_fn(|_| rng.random_range(-0.05..0.05)))
    }

    pub fn from_state(state: State) -> Self {
        CartPole { state, steps: 0 }
    }

    pub fn observation(&self) -> [f32; 4] {
        self.state.map(|v| v as f32)
    }

    /// Pushes the cart left (action 0) or right (action 1) for one step.
    pub fn step(&mut self, action: usize) -> Step {
        let [x, x_dot, theta, theta_dot] = self.state;
        let force = if action == 1 { FORCE } else { -FORCE };
        let (sin, cos) = theta.sin_cos();
        // Gymnasium's order of operations, so that the states agree to the bit.
        let temp = (force + POLE_MASS_LENGTH * (theta_dot * theta_dot) * sin) / TOTAL_MASS;
        let theta_acc = (GRAVITY * sin - cos * temp)
            / (LENGTH * (4.0 / 3.0 - MASS_POLE * (cos * cos) / TOTAL_MASS));
        let x_acc = temp - POLE_MASS_LENGTH * theta_acc * cos / TOTAL_MASS;
        self.state = [
            x + TAU * x_dot,
            x_dot + TAU * x_acc,
            theta + TAU * theta_dot,
            theta_dot + TAU * theta_acc,
        ];
        self.steps += 1;
        let [x, _, theta, _] = self.state;
        let terminated =
            !(-X_LIMIT..=X_LIMIT).contains(&x) || !(-THETA_LIMIT..=THETA_LIMIT).contains(&theta);
        Step {
            observation: self.observation(),
            reward: 1.0,
            terminated,
            truncated: !terminated && self.steps >= MAX_STEPS,
        }
    }
}

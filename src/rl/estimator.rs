//! How a network's weights learn from a gradient at its outputs.
//!
//! The actor-critic says, for each example, how the loss changes with the
//! network's outputs (dL/dy: the TD error for the critic, the policy gradient
//! for the actor). An `Estimator` turns that into dL/dtheta:
//!
//! - `EqPropEstimator`: the network relaxes freely to s^0 (its outputs are
//!   the free equilibrium's); the outputs are then nudged with the force
//!   -beta dL/dy (target y^0 - dL/dy in EP's cost 1/2 |y - target|^2), once
//!   with +beta and once with -beta, and the gradient is EP's contrast
//!   -(1 / 2 beta) [rho(s^+)^T rho(s^+) - rho(s^-)^T rho(s^-)] per weight.
//!   Nothing is back-propagated: each synapse sees its two units in two phases.
//! - `BackpropEstimator`: the feed-forward net of the same shapes and units,
//!   and backprop's chain rule (the twin the issue compares against).

use crate::backprop::Passes;
use crate::eqprop::{Block, Network, Phase, learning};
use crate::tensor::{Matrix, View};

pub trait Estimator {
    /// The network's outputs for the rows of `x`, into `y` (resized).
    fn outputs(&mut self, net: &Network, x: View, y: &mut Matrix);
    /// Sets `grad` to the gradient of the rows' mean loss, given dL/dy for
    /// each row of the last `outputs` call.
    fn gradient(&mut self, net: &Network, dy: View, grad: &mut Network);
}

/// EP's relaxation settings for the actor and critic.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Relaxation {
    pub free_steps: usize,
    pub nudged_steps: usize,
    pub epsilon: f32,
    pub beta: f32,
}

pub struct EqPropEstimator {
    block: Block,
    settings: Relaxation,
}

impl EqPropEstimator {
    /// Room for `cap` rows at a time.
    pub fn new(sizes: &[usize], cap: usize, settings: Relaxation) -> Self {
        EqPropEstimator {
            block: Block::new(sizes, cap),
            settings,
        }
    }
}

impl Estimator for EqPropEstimator {
    fn outputs(&mut self, net: &Network, x: View, y: &mut Matrix) {
        let b = &mut self.block;
        b.rows = x.rows;
        for i in 0..x.rows {
            b.x.row_mut(i).copy_from_slice(x.row(i));
        }
        // From rest every time: the free equilibrium is a function of x alone.
        for s in &mut b.free {
            s.fill(0.0);
        }
        b.compute_input_drive(net);
        let s = &self.settings;
        b.relax(net, Phase::Free, s.free_steps, s.epsilon, 0.0);
        let out = b.free.last().unwrap();
        y.set_rows(x.rows);
        y.data.copy_from_slice(&out.data[..x.rows * out.cols]);
    }

    fn gradient(&mut self, net: &Network, dy: View, grad: &mut Network) {
        let b = &mut self.block;
        let s = &self.settings;
        let n = b.target.cols;
        for i in 0..b.rows {
            let free = &b.free.last().unwrap().data[i * n..(i + 1) * n];
            for ((t, &y), &g) in b.target.row_mut(i).iter_mut().zip(free).zip(dy.row(i)) {
                *t = y - g;
            }
        }
        for (phase, beta) in [(Phase::Nudged, s.beta), (Phase::NudgedNeg, -s.beta)] {
            b.start_from_free(phase);
            b.relax(net, phase, s.nudged_steps, s.epsilon, beta);
        }
        b.prepare_update(Phase::Nudged, Phase::NudgedNeg);
        grad.zero();
        // `apply` adds rate * coef * mean(contrast); rate -1 makes it -dL/dtheta's negative.
        let rates = vec![-1.0; net.weights.len()];
        let coef = 1.0 / (2.0 * s.beta);
        learning::apply(
            grad,
            std::slice::from_ref(b),
            Phase::Nudged,
            Phase::NudgedNeg,
            coef,
            &rates,
            b.rows,
            1,
        );
    }
}

pub struct BackpropEstimator {
    passes: Passes,
}

impl BackpropEstimator {
    pub fn new(sizes: &[usize], cap: usize) -> Self {
        BackpropEstimator {
            passes: Passes::new(sizes, cap),
        }
    }
}

impl Estimator for BackpropEstimator {
    fn outputs(&mut self, net: &Network, x: View, y: &mut Matrix) {
        let out = self.passes.forward(net, x);
        y.set_rows(x.rows);
        y.data.copy_from_slice(&out.data[..x.rows * out.cols]);
    }

    fn gradient(&mut self, net: &Network, dy: View, grad: &mut Network) {
        self.passes.gradient(net, dy, grad);
    }
}

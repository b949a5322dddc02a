//! The examples a trained network gets wrong, and whether EP can still learn from them.
//!
//! EP's update for an example is the contrast of its nudged and free equilibria. Hard-sigmoid
//! states live in [0, 1]: a wrong output unit whose drive from below exceeds the clip by more
//! than the nudge can pull it back stays at 1 under the nudge, and if no output moves, no state
//! moves, and that example's update is exactly zero at every learning rate. Such an example can
//! never be fitted by EP (nor by any gradient: the clip's derivative is zero there too).

use super::{Block, Network, Phase, Settings};
use crate::config::Config;
use crate::data::Dataset;
use rayon::prelude::*;

/// A misclassified example at its free fixed point from rest.
#[derive(Clone, Debug, PartialEq)]
pub struct Mistake {
    /// Index within the split.
    pub index: usize,
    pub label: u8,
    pub predicted: usize,
    /// The output layer's free states.
    pub output: Vec<f32>,
    /// How far a nudge of +beta and of -beta moves any state (the largest
    /// |s^beta - s| over all layers), against the same number of steps
    /// without a nudge, so that a free phase stopped short of its fixed point
    /// does not count as movement. 0 means EP learns nothing from this example.
    pub moved: [f32; 2],
}

impl Mistake {
    /// Whether neither sign of the nudge moves any state.
    pub fn unreachable(&self) -> bool {
        self.moved[0] == 0.0 && self.moved[1] == 0.0
    }
}

/// Every example of `data` that `net` misclassifies after the run's free phase
/// from rest, with how far the run's nudge (beta, nudged steps) moves it.
pub fn mistakes(cfg: &Config, net: &Network, data: &Dataset) -> Vec<Mistake> {
    let s = Settings::from_config(cfg);
    let rows = cfg.eval_block.max(1);
    let starts: Vec<usize> = (0..data.len()).step_by(rows).collect();
    starts
        .par_iter()
        .flat_map_iter(|&r0| {
            let r1 = (r0 + rows).min(data.len());
            let mut b = Block::new(&net.sizes, r1 - r0);
            b.scheme = s.relaxation;
            b.tolerance = s.tolerance;
            b.load(data, r0..r1, &[], true);
            b.compute_input_drive(net);
            b.relax(net, Phase::Free, s.free_steps, s.epsilon, 0.0);
            let output = |b: &Block, i: usize| b.free.last().unwrap().row(i).to_vec();
            let wrong: Vec<(usize, Vec<f32>)> = (0..b.rows)
                .map(|i| (i, output(&b, i)))
                .filter(|(i, out)| crate::tensor::kernels::argmax(out) != b.labels[*i] as usize)
                .collect();
            // A trained net gets most blocks right: nudge only where there is a mistake.
            if wrong.is_empty() {
                return Vec::new();
            }
            for (phase, beta) in [(Phase::Nudged, s.beta), (Phase::NudgedNeg, -s.beta)] {
                b.start_from_free(phase);
                b.relax(net, phase, s.nudged_steps, s.epsilon, beta);
            }
            // The baseline: the free states carried on for the nudged phase's steps, unnudged.
            b.tolerance = 0.0;
            b.relax(net, Phase::Free, s.nudged_steps, s.epsilon, 0.0);
            let moved = |phase: Phase, i: usize| {
                b.states(phase)
                    .iter()
                    .zip(&b.free)
                    .flat_map(|(n, f)| n.row(i).iter().zip(f.row(i)))
                    .map(|(a, z)| (a - z).abs())
                    .fold(0.0f32, f32::max)
            };
            wrong
                .into_iter()
                .map(|(i, out)| Mistake {
                    index: r0 + i,
                    label: b.labels[i],
                    predicted: crate::tensor::kernels::argmax(&out),
                    output: out,
                    moved: [moved(Phase::Nudged, i), moved(Phase::NudgedNeg, i)],
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The mistakes as CSV: index, label, predicted, both nudges' movement, the outputs.
pub fn to_csv(mistakes: &[Mistake]) -> String {
    let n_out = mistakes.first().map_or(0, |m| m.output.len());
    let mut csv = String::from("index,label,predicted,moved_plus_beta,moved_minus_beta");
    for k in 0..n_out {
        csv += &format!(",out{k}");
    }
    csv.push('\n');
    for m in mistakes {
        csv += &format!(
            "{},{},{},{},{}",
            m.index, m.label, m.predicted, m.moved[0], m.moved[1]
        );
        for o in &m.output {
            csv += &format!(",{o}");
        }
        csv.push('\n');
    }
    csv
}

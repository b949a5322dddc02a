//! Where the hidden units sit at the free fixed point.
//!
//! rho = clip(., 0, 1): a unit held at 0 or 1 by its drive does not move when
//! the output is nudged, so no error signal passes through it, and a unit
//! that is at the same clip for every input (dead at 0, or always on at 1)
//! has stopped learning altogether. When the coupling between two hidden
//! layers has a singular value above 1 the energy is not convex inside the box
//! and the free phase runs units into the clips; Glorot's init gives 500-500
//! couplings a largest singular value near 2 (see `init_gain`).

/// Counts for one hidden layer over a set of examples.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerActivity {
    pub at_zero: u64,
    pub at_one: u64,
    pub states: u64,
    /// Per unit, the largest and smallest state seen.
    unit_max: Vec<f32>,
    unit_min: Vec<f32>,
}

impl LayerActivity {
    /// Nothing seen yet, for a layer of `width` units.
    pub fn new(width: usize) -> Self {
        LayerActivity {
            unit_max: vec![f32::NEG_INFINITY; width],
            unit_min: vec![f32::INFINITY; width],
            ..Default::default()
        }
    }

    /// Adds examples' states of this layer (row-major, one row per example).
    pub fn add(&mut self, states: &[f32]) {
        let width = self.unit_max.len();
        for row in states.chunks_exact(width) {
            for (j, &s) in row.iter().enumerate() {
                self.at_zero += (s <= 0.0) as u64;
                self.at_one += (s >= 1.0) as u64;
                self.unit_max[j] = self.unit_max[j].max(s);
                self.unit_min[j] = self.unit_min[j].min(s);
            }
            self.states += width as u64;
        }
    }

    /// Share of states strictly between the clips (where a nudge can pass).
    pub fn inside(&self) -> f64 {
        let clipped = self.at_zero + self.at_one;
        (self.states - clipped) as f64 / self.states.max(1) as f64
    }

    /// Share of units at the same clip for every example seen.
    pub fn stuck(&self) -> f64 {
        let n = self.unit_max.len();
        let stuck = (0..n)
            .filter(|&j| self.unit_max[j] <= 0.0 || self.unit_min[j] >= 1.0)
            .count();
        stuck as f64 / n.max(1) as f64
    }
}

/// `LayerActivity` of every hidden layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Activity(pub Vec<LayerActivity>);

impl Activity {
    /// Nothing seen yet, for hidden layers of these widths.
    pub fn new(widths: &[usize]) -> Self {
        Activity(widths.iter().map(|&w| LayerActivity::new(w)).collect())
    }

    /// Named metrics: `h{k}_inside` and `h{k}_stuck` for each hidden layer k.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        for (k, a) in self.0.iter().enumerate() {
            out.push((format!("h{}_inside", k + 1), a.inside()));
            out.push((format!("h{}_stuck", k + 1), a.stuck()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_match_a_hand_count() {
        // Two examples, three units: unit 0 always 0 (dead), unit 2 always 1,
        // unit 1 inside once and at 1 once.
        let mut a = LayerActivity::new(3);
        a.add(&[0.0, 0.5, 1.0, 0.0, 1.0, 1.0]);
        assert_eq!((a.at_zero, a.at_one, a.states), (2, 3, 6));
        assert_eq!(a.inside(), 1.0 / 6.0);
        assert_eq!(a.stuck(), 2.0 / 3.0);
        // A third example that lifts unit 0 off the clip un-sticks it.
        a.add(&[0.2, 0.5, 1.0]);
        assert_eq!(a.stuck(), 1.0 / 3.0);
        assert_eq!(a.inside(), 3.0 / 9.0);
    }
}

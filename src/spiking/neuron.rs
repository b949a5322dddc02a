//! Spiking neurons: a leaky membrane, and two ways of turning it into spikes.
//!
//! Time in ms, potentials in mV relative to rest. The membrane
//!   tau_m dV/dt = -V + u(t)
//! is integrated exactly over each step of `dt` for the input u held constant
//! (exponential Euler), so a constant input gives the analytic solution.

use rand::{Rng, RngExt};

/// How the membrane potential becomes spikes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Firing {
    /// Leaky integrate-and-fire: a spike when V crosses `threshold`, then V is
    /// reset to `reset` and held there for `refractory` ms.
    Threshold {
        threshold: f64,
        reset: f64,
        refractory: f64,
    },
    /// Stochastic (escape-noise) firing: Poisson spikes at rate
    /// `rate0 * exp((V - threshold) / width)` per ms. With `reset: None` the spike
    /// leaves V alone, the membrane of arXiv 1509.05936; with `Some(v)` V is reset.
    Stochastic {
        threshold: f64,
        width: f64,
        rate0: f64,
        reset: Option<f64>,
    },
}

/// One neuron: a leaky membrane and a firing rule.
#[derive(Clone, Debug)]
pub struct Neuron {
    pub v: f64,
    pub tau_m: f64,
    pub firing: Firing,
    refractory_left: f64,
}

/// What one step did: whether the neuron spiked, and the membrane's rate of
/// change dV/dt = (u - V) / tau_m at the start of the step (from its dynamics;
/// a reset is a jump, not a rate, and is not in it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepResult {
    pub spiked: bool,
    pub dv_dt: f64,
}

impl Neuron {
    pub fn new(tau_m: f64, firing: Firing) -> Self {
        Neuron {
            v: 0.0,
            tau_m,
            firing,
            refractory_left: 0.0,
        }
    }

    /// Advances by `dt` ms with input `u` (mV: the potential the membrane relaxes to).
    pub fn step(&mut self, u: f64, dt: f64, rng: &mut impl Rng) -> StepResult {
        if self.refractory_left > 0.0 {
            self.refractory_left -= dt;
            return StepResult {
                spiked: false,
                dv_dt: 0.0,
            };
        }
        let dv_dt = (u - self.v) / self.tau_m;
        self.v = u + (self.v - u) * (-dt / self.tau_m).exp();
        let spiked = match self.firing {
            Firing::Threshold {
                threshold,
                reset,
                refractory,
            } => {
                let fire = self.v >= threshold;
                if fire {
                    self.v = reset;
                    self.refractory_left = refractory;
                }
                fire
            }
            Firing::Stochastic {
                threshold,
                width,
                rate0,
                reset,
            } => {
                let rate = rate0 * ((self.v - threshold) / width).min(50.0).exp();
                let fire = rng.random::<f64>() < 1.0 - (-rate * dt).exp();
                if let (true, Some(r)) = (fire, reset) {
                    self.v = r;
                }
                fire
            }
        };
        StepResult { spiked, dv_dt }
    }
}

/// Background input: an Ornstein-Uhlenbeck process around `mean` with standard
/// deviation `sigma` and correlation time `tau` (ms), integrated exactly.
#[derive(Clone, Debug)]
pub struct Background {
    pub mean: f64,
    pub sigma: f64,
    pub tau: f64,
    x: f64,
}

impl Background {
    pub fn new(mean: f64, sigma: f64, tau: f64) -> Self {
        Background {
            mean,
            sigma,
            tau,
            x: 0.0,
        }
    }

    pub fn step(&mut self, dt: f64, rng: &mut impl Rng) -> f64 {
        let a = (-dt / self.tau).exp();
        self.x = a * self.x + self.sigma * (1.0 - a * a).sqrt() * gaussian(rng);
        self.mean + self.x
    }
}

/// A standard normal sample (Box-Muller).
pub fn gaussian(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn never() -> Firing {
        Firing::Threshold {
            threshold: f64::INFINITY,
            reset: 0.0,
            refractory: 0.0,
        }
    }

    #[test]
    fn leaky_membrane_follows_the_analytic_solution() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (tau, u, v0, dt) = (20.0, 12.0, -3.0, 0.1);
        let mut n = Neuron::new(tau, never());
        n.v = v0;
        for k in 1..=1000 {
            let r = n.step(u, dt, &mut rng);
            let t = k as f64 * dt;
            let exact = u + (v0 - u) * (-t / tau).exp();
            assert!((n.v - exact).abs() < 1e-9, "t = {t}: {} vs {exact}", n.v);
            // The reported rate is the analytic derivative at the step's start.
            let t0 = t - dt;
            let want = (u - v0) / tau * (-t0 / tau).exp();
            assert!((r.dv_dt - want).abs() < 1e-9);
        }
    }

    #[test]
    fn lif_fires_at_the_analytic_interval() {
        // Constant suprathreshold input: ISI = t_ref + tau ln((u - v_reset) / (u - v_th)).
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (tau, u, th, reset, refr, dt) = (20.0, 20.0, 15.0, 0.0, 2.0, 0.01);
        let mut n = Neuron::new(
            tau,
            Firing::Threshold {
                threshold: th,
                reset,
                refractory: refr,
            },
        );
        let mut spikes = Vec::new();
        for k in 0..200_000 {
            if n.step(u, dt, &mut rng).spiked {
                spikes.push(k as f64 * dt);
            }
        }
        let isi = refr + tau * ((u - reset) / (u - th)).ln();
        for w in spikes.windows(2).skip(1) {
            assert!(
                (w[1] - w[0] - isi).abs() <= 2.0 * dt,
                "ISI {} vs {isi}",
                w[1] - w[0]
            );
        }
        assert!(spikes.len() > 50);
    }

    #[test]
    fn stochastic_neuron_fires_at_its_rate_and_background_has_its_moments() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let firing = Firing::Stochastic {
            threshold: 10.0,
            width: 2.0,
            rate0: 0.02,
            reset: None,
        };
        let mut n = Neuron::new(20.0, firing);
        n.v = 10.0;
        let (dt, steps) = (0.1, 2_000_000);
        let spikes = (0..steps)
            .filter(|_| n.step(10.0, dt, &mut rng).spiked)
            .count();
        let rate = spikes as f64 / (steps as f64 * dt);
        assert!((rate - 0.02).abs() < 0.001, "rate {rate}/ms");
        let mut bg = Background::new(5.0, 3.0, 5.0);
        let xs: Vec<f64> = (0..400_000).map(|_| bg.step(dt, &mut rng)).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(
            (mean - 5.0).abs() < 0.2 && (var.sqrt() - 3.0).abs() < 0.15,
            "{mean} {var}"
        );
    }
}

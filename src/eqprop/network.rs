//! The layered energy-based network of Scellier & Bengio (2017) and its energy.
//!
//! Layers s_0 = x (clamped), s_1 .. s_L hidden, s_{L+1} output; rho = clip(., 0, 1).
//!   E(s) = 1/2 sum_{k>=1} |s_k|^2 - sum_{k>=0} rho(s_k)^T W_k rho(s_{k+1}) - sum_{k>=1} b_k^T rho(s_k)
//!   C    = 1/2 |s_{L+1} - d|^2,   F = E + beta C.

use crate::tensor::Matrix;
use crate::tensor::kernels::clip01;
use rand::RngExt;

/// Weights and biases. `weights[k]` is W_k (n_k x n_{k+1}); `biases[k]` is the
/// bias of layer k+1 (the input layer has none).
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    pub sizes: Vec<usize>,
    pub weights: Vec<Matrix>,
    pub biases: Vec<Vec<f32>>,
}

impl Network {
    /// Glorot & Bengio (2010) uniform init, U(-sqrt(6/(n_in+n_out)), +...), zero biases,
    /// as in the paper's code.
    pub fn glorot(sizes: &[usize], rng: &mut impl rand::Rng) -> Self {
        let weights = sizes
            .windows(2)
            .map(|w| {
                let bound = (6.0 / (w[0] + w[1]) as f64).sqrt() as f32;
                let data = (0..w[0] * w[1])
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                Matrix::from_vec(w[0], w[1], data)
            })
            .collect();
        let biases = sizes[1..].iter().map(|&n| vec![0.0; n]).collect();
        Network {
            sizes: sizes.to_vec(),
            weights,
            biases,
        }
    }

    /// Glorot init from a seed: the initial weights of every run with that seed.
    pub fn seeded(sizes: &[usize], seed: u64) -> Self {
        use rand::SeedableRng;
        Self::glorot(sizes, &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed))
    }

    /// The initial network of a run: Glorot from the run's seed, every weight
    /// times `init_gain` (exactly the Glorot weights at gain 1).
    pub fn initial(cfg: &crate::config::Config) -> Self {
        let mut net = Self::seeded(&cfg.layers, cfg.seed);
        if cfg.init_gain != 1.0 {
            for w in &mut net.weights {
                w.data.iter_mut().for_each(|v| *v *= cfg.init_gain);
            }
        }
        net
    }

    /// A network of the same shapes with every parameter 0 (a gradient, or an
    /// optimiser's moments).
    pub fn zeros_like(&self) -> Self {
        Network {
            sizes: self.sizes.clone(),
            weights: self
                .weights
                .iter()
                .map(|w| Matrix::zeros(w.rows, w.cols))
                .collect(),
            biases: self.biases.iter().map(|b| vec![0.0; b.len()]).collect(),
        }
    }

    /// Sets every parameter to 0.
    pub fn zero(&mut self) {
        self.weights.iter_mut().for_each(|w| w.fill(0.0));
        self.biases.iter_mut().for_each(|b| b.fill(0.0));
    }

    /// Number of layers after the input (hidden layers plus output).
    pub fn depth(&self) -> usize {
        self.sizes.len() - 1
    }

    /// E(s) of one example; `s[k]` is layer k (s[0] = x). Plain loops in f64:
    /// this is the reference the dynamics are tested against.
    pub fn energy(&self, s: &[&[f32]]) -> f64 {
        let rho = |v: f32| clip01(v) as f64;
        let mut e = 0.0;
        for layer in &s[1..] {
            e += 0.5 * layer.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>();
        }
        for (k, w) in self.weights.iter().enumerate() {
            for i in 0..w.rows {
                let a = rho(s[k][i]);
                if a == 0.0 {
                    continue;
                }
                for (&wij, &sj) in w.row(i).iter().zip(s[k + 1]) {
                    e -= a * wij as f64 * rho(sj);
                }
            }
        }
        for (k, b) in self.biases.iter().enumerate() {
            e -= b
                .iter()
                .zip(s[k + 1])
                .map(|(&b, &v)| b as f64 * rho(v))
                .sum::<f64>();
        }
        e
    }

    /// C = 1/2 |output - target|^2 of one example.
    pub fn cost(output: &[f32], target: &[f32]) -> f64 {
        output
            .iter()
            .zip(target)
            .map(|(&o, &t)| 0.5 * ((o - t) as f64).powi(2))
            .sum()
    }

    /// Err(Diverged) naming the first parameter tensor that holds NaN or inf.
    pub fn check_finite(&self, epoch: usize) -> crate::Result<()> {
        match self.first_non_finite() {
            Some((layer, what)) => Err(crate::Error::Diverged { epoch, layer, what }),
            None => Ok(()),
        }
    }

    /// Name of the first parameter tensor holding NaN or inf, if any.
    pub fn first_non_finite(&self) -> Option<(String, &'static str)> {
        for (k, w) in self.weights.iter().enumerate() {
            if !w.is_finite() {
                return Some((format!("W{k} ({}x{})", w.rows, w.cols), "weights"));
            }
        }
        for (k, b) in self.biases.iter().enumerate() {
            if !b.iter().all(|v| v.is_finite()) {
                return Some((format!("b{} ({})", k + 1, b.len()), "bias"));
            }
        }
        None
    }
}

//! One map of the generative model: y = act(u W + b), with its gradient.
//!
//! Encoders f_k and decoders g_k are both `Map`s. The backward pass is the
//! chain rule inside one map only; a layer pair chains its own two maps
//! (`super::Pair`), and nothing chains maps of different pairs.

use crate::optim::adam_step;
use crate::tensor::{Matrix, Op, View, par_gemm};
use rand::RngExt;

/// The units' nonlinearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// 1 / (1 + e^-a): pixels and the top code, in [0, 1].
    Sigmoid,
    /// ln(1 + e^a): the intermediate codes, in [0, inf).
    Softplus,
}

impl Activation {
    #[inline]
    pub fn apply(self, a: f32) -> f32 {
        match self {
            Activation::Sigmoid => 1.0 / (1.0 + (-a).exp()),
            // For large a, ln(1 + e^a) = a to float precision (and e^a overflows).
            Activation::Softplus if a > 20.0 => a,
            Activation::Softplus => a.exp().ln_1p(),
        }
    }

    /// d act / da, written in terms of the output y = act(a):
    /// sigmoid' = y (1 - y); softplus' = sigmoid(a) = 1 - e^-y.
    #[inline]
    pub fn slope(self, y: f32) -> f32 {
        match self {
            Activation::Sigmoid => y * (1.0 - y),
            Activation::Softplus => -(-y).exp_m1(),
        }
    }

    /// The range of the units: states that inference moves are kept in it.
    #[inline]
    pub fn clamp(self, v: f32) -> f32 {
        match self {
            Activation::Sigmoid => v.clamp(0.0, 1.0),
            Activation::Softplus => v.max(0.0),
        }
    }
}

/// y = act(u W + b) for rows u; `w` is n_in x n_out.
#[derive(Clone, Debug, PartialEq)]
pub struct Map {
    pub w: Matrix,
    pub b: Vec<f32>,
    pub act: Activation,
}

/// The gradient of a loss with respect to one map's parameters.
#[derive(Clone, Debug)]
pub struct MapGrad {
    pub w: Matrix,
    pub b: Vec<f32>,
}

impl Map {
    /// Glorot-uniform weights, zero biases.
    pub fn glorot(n_in: usize, n_out: usize, act: Activation, rng: &mut impl rand::Rng) -> Self {
        let bound = (6.0 / (n_in + n_out) as f64).sqrt() as f32;
        let data = (0..n_in * n_out)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        Map {
            w: Matrix::from_vec(n_in, n_out, data),
            b: vec![0.0; n_out],
            act,
        }
    }

    pub fn inputs(&self) -> usize {
        self.w.rows
    }

    pub fn outputs(&self) -> usize {
        self.w.cols
    }

    /// `y = act(u W + b)`; `y` takes u's row count.
    pub fn forward(&self, u: View, y: &mut Matrix) {
        y.set_rows(u.rows);
        par_gemm(y, false, 1.0, u, Op::N, self.w.view(), Op::N);
        let n = self.outputs();
        for row in y.data.chunks_exact_mut(n) {
            for (v, &b) in row.iter_mut().zip(&self.b) {
                *v = self.act.apply(*v + b);
            }
        }
    }

    /// Given `u`, the output `y = forward(u)` and `dy` = dL/dy, sets `grad` to
    /// dL/dW, dL/db and, with `du`, dL/du. `dy` is overwritten with dL/da.
    pub fn backward(
        &self,
        u: View,
        y: &Matrix,
        dy: &mut Matrix,
        grad: &mut MapGrad,
        du: Option<&mut Matrix>,
    ) {
        for (d, &v) in dy.data.iter_mut().zip(&y.data) {
            *d *= self.act.slope(v);
        }
        par_gemm(&mut grad.w, false, 1.0, u, Op::T, dy.view(), Op::N);
        grad.b.fill(0.0);
        for row in dy.data.chunks_exact(self.outputs()) {
            for (g, &d) in grad.b.iter_mut().zip(row) {
                *g += d;
            }
        }
        if let Some(du) = du {
            du.set_rows(u.rows);
            par_gemm(du, false, 1.0, dy.view(), Op::N, self.w.view(), Op::T);
        }
    }

    pub fn zero_grad(&self) -> MapGrad {
        MapGrad {
            w: Matrix::zeros(self.inputs(), self.outputs()),
            b: vec![0.0; self.outputs()],
        }
    }

    pub fn is_finite(&self) -> bool {
        self.w.is_finite() && self.b.iter().all(|v| v.is_finite())
    }
}

/// Adam (Kingma & Ba 2015) for one map: first and second moments per parameter.
#[derive(Clone, Debug)]
pub struct Adam {
    pub m: MapGrad,
    pub v: MapGrad,
}

impl Adam {
    pub fn new(map: &Map) -> Self {
        Adam {
            m: map.zero_grad(),
            v: map.zero_grad(),
        }
    }

    /// One step of rate `lr`; `t` is the 1-based step count (bias correction).
    pub fn step(&mut self, map: &mut Map, grad: &MapGrad, lr: f32, t: f32) {
        let (m, v) = (&mut self.m, &mut self.v);
        adam_step(
            &mut map.w.data,
            &grad.w.data,
            &mut m.w.data,
            &mut v.w.data,
            lr,
            t,
        );
        adam_step(&mut map.b, &grad.b, &mut m.b, &mut v.b, lr, t);
    }
}

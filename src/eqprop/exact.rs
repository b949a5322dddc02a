//! The exact gradient of EP's loss by recurrent backprop (RBP), batched, for a
//! learner that follows it instead of EP's estimate: same network, fixed
//! points and rates, only the update differs. It tells apart what EP's
//! estimate costs from what the energy-based model itself costs.
//!
//! At the free fixed point s* = clip((1 - eps) s* + eps drive(s*)), with
//! a = (1 - eps) s* + eps drive(s*) and D_t = g_t * clip'(a), the adjoint
//! (dC/ds through one step held at s*) obeys
//!   g_0 = s*_out - d (output layer; 0 elsewhere),
//!   g_{t+1,k} = (1 - eps) D_{t,k} + eps (D_{t,k+1} W_k^T + D_{t,k-1} W_{k-1}),
//! and with S = sum_t D_t (S_0 = 0: the input is clamped)
//!   dC/dW_k = eps (s_k^T S_{k+1} + S_k^T s_{k+1}),  dC/db_{k+1} = eps sum_rows S_{k+1}.
//! `gradient::rbp` is the same thing for one example in plain f64 loops.

use super::dynamics::Block;
use super::network::Network;
use crate::tensor::{Matrix, Op, View, gemm, kernels};

/// Working memory for one block's adjoint, one matrix per free layer.
#[derive(Clone, Debug)]
pub struct Adjoint {
    g: Vec<Matrix>,
    d: Vec<Matrix>,
    /// S = sum over iterations of D, per layer.
    pub sum: Vec<Matrix>,
    /// clip'(a): 1 where the unit's pre-activation at s* lies in [0, 1].
    inside: Vec<Matrix>,
}

impl Adjoint {
    pub fn new(sizes: &[usize], cap: usize) -> Self {
        let layers = || sizes[1..].iter().map(|&n| Matrix::zeros(cap, n)).collect();
        Adjoint {
            g: layers(),
            d: layers(),
            sum: layers(),
            inside: layers(),
        }
    }

    /// Runs `iters` iterations of the adjoint at the block's free states
    /// (its fixed point) for the block's targets; leaves S in `sum`.
    pub fn run(&mut self, net: &Network, b: &Block, iters: usize, eps: f32) {
        let (n, depth) = (b.rows, net.depth());
        let s = &b.free;
        // clip'(a) at s*, from the drives at s*.
        for k in 1..=depth {
            let m = &mut self.inside[k - 1];
            let len = n * m.cols;
            if k == 1 {
                m.data[..len].copy_from_slice(&b.input_drive.data[..len]);
            } else {
                let out = m.view_mut().split_rows(n).0;
                gemm(
                    out,
                    false,
                    1.0,
                    rows(&s[k - 2], n),
                    Op::N,
                    net.weights[k - 1].view(),
                    Op::N,
                );
                kernels::add_bias_rows(&mut m.data[..len], &net.biases[k - 1]);
            }
            if k < depth {
                let out = m.view_mut().split_rows(n).0;
                gemm(
                    out,
                    true,
                    1.0,
                    rows(&s[k], n),
                    Op::N,
                    net.weights[k].view(),
                    Op::T,
                );
            }
            for (v, &sv) in m.data[..len].iter_mut().zip(&s[k - 1].data[..len]) {
                let a = (1.0 - eps) * sv + eps * *v;
                *v = if (0.0..=1.0).contains(&a) { 1.0 } else { 0.0 };
            }
        }
        for (k, g) in self.g.iter_mut().enumerate() {
            let len = n * g.cols;
            g.data[..len].fill(0.0);
            self.sum[k].data[..len].fill(0.0);
            if k == depth - 1 {
                let (out, t) = (&s[k].data[..len], &b.target.data[..len]);
                for ((gv, &o), &tv) in g.data[..len].iter_mut().zip(out).zip(t) {
                    *gv = o - tv;
                }
            }
        }
        for _ in 0..iters {
            for k in 0..depth {
                let len = n * self.g[k].cols;
                let (g, inside) = (&self.g[k].data[..len], &self.inside[k].data[..len]);
                for (((d, &gv), &m), sum) in self.d[k].data[..len]
                    .iter_mut()
                    .zip(g)
                    .zip(inside)
                    .zip(&mut self.sum[k].data[..len])
                {
                    *d = gv * m;
                    *sum += *d;
                }
            }
            // Layer k + 1 is index k: g_{k+1} = (1 - eps) D_{k+1} + eps (D_{k+2} W_{k+1}^T + D_k W_k).
            for k in 0..depth {
                let len = n * self.g[k].cols;
                for (g, &d) in self.g[k].data[..len].iter_mut().zip(&self.d[k].data[..len]) {
                    *g = (1.0 - eps) * d;
                }
                let out = self.g[k].view_mut().split_rows(n).0;
                if k + 1 < depth {
                    let above = rows(&self.d[k + 1], n);
                    gemm(
                        out,
                        true,
                        eps,
                        above,
                        Op::N,
                        net.weights[k + 1].view(),
                        Op::T,
                    );
                }
                if k > 0 {
                    let out = self.g[k].view_mut().split_rows(n).0;
                    let below = rows(&self.d[k - 1], n);
                    gemm(out, true, eps, below, Op::N, net.weights[k].view(), Op::N);
                }
            }
        }
    }
}

fn rows(m: &Matrix, n: usize) -> View<'_> {
    m.rows_view(0, n)
}

/// theta -= rate_k * rate_scale * (1 / batch) * dC/dtheta summed over the blocks.
pub fn apply(
    net: &mut Network,
    blocks: &[Block],
    adjoints: &[Adjoint],
    eps: f32,
    (rates, rate_scale): (&[f32], f32),
    batch: usize,
) {
    for (k, &rate) in rates.iter().enumerate().take(net.weights.len()) {
        let scale = -rate * rate_scale * eps / batch as f32;
        for (b, adj) in blocks.iter().zip(adjoints).filter(|(b, _)| b.rows > 0) {
            let n = b.rows;
            let below = if k == 0 {
                rows(&b.x, n)
            } else {
                rows(&b.free[k - 1], n)
            };
            let w = net.weights[k].view_mut();
            gemm(w, true, scale, below, Op::T, rows(&adj.sum[k], n), Op::N);
            if k > 0 {
                let w = net.weights[k].view_mut();
                let (sk, above) = (rows(&adj.sum[k - 1], n), rows(&b.free[k], n));
                gemm(w, true, scale, sk, Op::T, above, Op::N);
            }
            for i in 0..n {
                for (bias, &d) in net.biases[k].iter_mut().zip(adj.sum[k].row(i)) {
                    *bias += scale * d;
                }
            }
        }
    }
}

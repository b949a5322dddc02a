//! The one matrix layer: f32, row-major, explicit about layout.
//!
//! Every model calls this module and nothing below it. GEMM goes to `faer`
//! (pure Rust, runtime CPU dispatch: AVX2 or AVX-512), always single-threaded:
//! callers split work across cores in large pieces themselves, which measured
//! faster than threading each tiny batch-20 GEMM (see the README's speed section).
//! The element-wise work of a relaxation step is fused into one pass (`kernels`).

pub mod kernels;

use faer::{Accum, MatMut, MatRef, Par};

/// A dense row-major f32 matrix that owns its data.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

/// A borrowed row-major view: element (i, j) is `data[i * stride + j]`.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

/// A mutable row-major view, same layout as [`View`].
#[derive(Debug)]
pub struct ViewMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

/// Whether a GEMM operand is used as stored or transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    N,
    T,
}

impl Matrix {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Matrix {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    /// Zeros written now, page by page. `zeros` gets lazily mapped pages from
    /// calloc, so a large matrix (the persistent particles: 100 MB) would fault
    /// its pages in one at a time inside the training loop, serially.
    pub fn zeros_resident(rows: usize, cols: usize) -> Self {
        let mut data = Vec::with_capacity(rows * cols);
        data.resize(rows * cols, 0.0);
        Matrix { rows, cols, data }
    }

    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data length");
        Matrix { rows, cols, data }
    }

    pub fn view(&self) -> View<'_> {
        View {
            data: &self.data,
            rows: self.rows,
            cols: self.cols,
            stride: self.cols,
        }
    }

    pub fn view_mut(&mut self) -> ViewMut<'_> {
        ViewMut {
            data: &mut self.data,
            rows: self.rows,
            cols: self.cols,
            stride: self.cols,
        }
    }

    /// Rows `r0..r1` as a contiguous view.
    pub fn rows_view(&self, r0: usize, r1: usize) -> View<'_> {
        View {
            data: &self.data[r0 * self.cols..r1 * self.cols],
            rows: r1 - r0,
            cols: self.cols,
            stride: self.cols,
        }
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Uses the first `rows` rows (a last, smaller batch). Growing past the
    /// rows the matrix was made with allocates; shrinking and regrowing does not.
    pub fn set_rows(&mut self, rows: usize) {
        self.data.resize(rows * self.cols, 0.0);
        self.rows = rows;
    }

    pub fn fill(&mut self, v: f32) {
        self.data.fill(v);
    }

    pub fn is_finite(&self) -> bool {
        self.data.iter().all(|x| x.is_finite())
    }
}

impl<'a> View<'a> {
    pub fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.stride + j]
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.stride..i * self.stride + self.cols]
    }

    /// Columns `c0..c1` (a strided view).
    pub fn cols_view(&self, c0: usize, c1: usize) -> View<'a> {
        // A view of no rows holds no data (its slice may be empty even for c0 > 0).
        let data = if self.rows == 0 {
            &self.data[..0]
        } else {
            &self.data[c0..c0 + (self.rows - 1) * self.stride + (c1 - c0)]
        };
        View {
            data,
            rows: self.rows,
            cols: c1 - c0,
            stride: self.stride,
        }
    }

    fn faer(&self) -> MatRef<'a, f32> {
        MatRef::from_row_major_slice_with_stride(
            &self.data[..self.min_len()],
            self.rows,
            self.cols,
            self.stride,
        )
    }

    fn min_len(&self) -> usize {
        if self.rows == 0 {
            0
        } else {
            (self.rows - 1) * self.stride + self.cols
        }
    }
}

impl<'a> ViewMut<'a> {
    /// Splits into rows `..r` and `r..`.
    pub fn split_rows(self, r: usize) -> (ViewMut<'a>, ViewMut<'a>) {
        let (a, b) = self
            .data
            .split_at_mut((r * self.stride).min(self.data.len()));
        (
            ViewMut {
                data: a,
                rows: r,
                cols: self.cols,
                stride: self.stride,
            },
            ViewMut {
                data: b,
                rows: self.rows - r,
                cols: self.cols,
                stride: self.stride,
            },
        )
    }

    pub fn as_view(&self) -> View<'_> {
        View {
            data: self.data,
            rows: self.rows,
            cols: self.cols,
            stride: self.stride,
        }
    }

    fn faer(&mut self) -> MatMut<'_, f32> {
        let len = if self.rows == 0 {
            0
        } else {
            (self.rows - 1) * self.stride + self.cols
        };
        // Built as the transpose of a column-major view: faer 0.23.2's
        // `from_row_major_slice_with_stride_mut` passes its strides swapped
        // (a column-major layout) and writes out of bounds.
        MatMut::from_column_major_slice_with_stride_mut(
            &mut self.data[..len],
            self.cols,
            self.rows,
            self.stride,
        )
        .transpose_mut()
    }
}

/// Part `p` of `rows` rows split into `parts` contiguous, nearly equal ranges
/// (computed, not collected: the hot loop allocates nothing).
pub fn row_range(rows: usize, parts: usize, p: usize) -> (usize, usize) {
    let parts = parts.max(1);
    (rows * p / parts, rows * (p + 1) / parts)
}

/// C = alpha * op(A) op(B) (+ C if `accumulate`).
///
/// Shapes: op(A) is m x k, op(B) is k x n, C is m x n. Single-threaded by design.
pub fn gemm(mut c: ViewMut, accumulate: bool, alpha: f32, a: View, ta: Op, b: View, tb: Op) {
    let (am, ak) = match ta {
        Op::N => (a.rows, a.cols),
        Op::T => (a.cols, a.rows),
    };
    let (bk, bn) = match tb {
        Op::N => (b.rows, b.cols),
        Op::T => (b.cols, b.rows),
    };
    assert!(
        am == c.rows && bn == c.cols && ak == bk,
        "gemm shapes: op(A) {am}x{ak}, op(B) {bk}x{bn}, C {}x{}",
        c.rows,
        c.cols
    );
    let fa = a.faer();
    let fa = if ta == Op::T { fa.transpose() } else { fa };
    let fb = b.faer();
    let fb = if tb == Op::T { fb.transpose() } else { fb };
    let acc = if accumulate {
        Accum::Add
    } else {
        Accum::Replace
    };
    if ak == 0 {
        // faer leaves C untouched for an empty product; make Replace mean zero.
        if !accumulate {
            let mut fc = c.faer();
            fc.fill(0.0);
        }
        return;
    }
    faer::linalg::matmul::matmul(c.faer(), acc, fa, fb, alpha, Par::Seq);
}

/// `C = alpha op(A) op(B) (+ C)` with C's rows split across the current rayon
/// pool, one single-threaded [`gemm`] per piece: for the larger batch-100
/// GEMMs of the generative model. Each element of C is computed by one call,
/// so results depend on the thread count only through where the rows split.
pub fn par_gemm(c: &mut Matrix, accumulate: bool, alpha: f32, a: View, ta: Op, b: View, tb: Op) {
    use rayon::prelude::*;
    let parts = rayon::current_num_threads().clamp(1, c.rows.max(1));
    let rows = c.rows;
    let cols = c.cols;
    let chunks: Vec<(usize, &mut [f32])> = {
        let mut out = Vec::with_capacity(parts);
        let mut rest: &mut [f32] = &mut c.data;
        for p in 0..parts {
            let (r0, r1) = row_range(rows, parts, p);
            let (head, tail) = rest.split_at_mut((r1 - r0) * cols);
            out.push((r0, head));
            rest = tail;
        }
        out
    };
    chunks.into_par_iter().for_each(|(r0, data)| {
        let n = data.len() / cols.max(1);
        let part = ViewMut {
            data,
            rows: n,
            cols,
            stride: cols,
        };
        // Rows r0..r0+n of op(A): rows of A, or columns of A when transposed.
        let a_part = match ta {
            Op::N => View {
                data: &a.data[(r0 * a.stride).min(a.data.len())..],
                rows: n,
                cols: a.cols,
                stride: a.stride,
            },
            Op::T => a.cols_view(r0, r0 + n),
        };
        gemm(part, accumulate, alpha, a_part, ta, b, tb);
    });
}

/// The plain triple loop that every GEMM call is checked against.
pub fn gemm_reference(
    c: &mut Matrix,
    accumulate: bool,
    alpha: f32,
    a: &Matrix,
    ta: Op,
    b: &Matrix,
    tb: Op,
) {
    let get = |m: &Matrix, t: Op, i: usize, j: usize| match t {
        Op::N => m.data[i * m.cols + j],
        Op::T => m.data[j * m.cols + i],
    };
    let k = if ta == Op::N { a.cols } else { a.rows };
    for i in 0..c.rows {
        for j in 0..c.cols {
            let mut s = 0.0f64;
            for p in 0..k {
                s += get(a, ta, i, p) as f64 * get(b, tb, p, j) as f64;
            }
            let v = alpha * s as f32;
            let dst = &mut c.data[i * c.cols + j];
            *dst = if accumulate { *dst + v } else { v };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rand_matrix(rows: usize, cols: usize, seed: u64) -> Matrix {
        // A small LCG keeps the test free of RNG crates' version changes.
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let data = (0..rows * cols)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        Matrix::from_vec(rows, cols, data)
    }

    fn max_abs_diff(a: &Matrix, b: &Matrix) -> f32 {
        a.data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn gemm_matches_reference(m in 1usize..40, k in 0usize..70, n in 1usize..40,
                                  ta in any::<bool>(), tb in any::<bool>(), acc in any::<bool>(),
                                  alpha in -2.0f32..2.0, seed in any::<u64>()) {
            let ta = if ta { Op::T } else { Op::N };
            let tb = if tb { Op::T } else { Op::N };
            let a = if ta == Op::N { rand_matrix(m, k, seed) } else { rand_matrix(k, m, seed) };
            let b = if tb == Op::N { rand_matrix(k, n, seed ^ 1) } else { rand_matrix(n, k, seed ^ 1) };
            let c0 = rand_matrix(m, n, seed ^ 2);
            let mut c = c0.clone();
            let mut r = c0.clone();
            gemm(c.view_mut(), acc, alpha, a.view(), ta, b.view(), tb);
            gemm_reference(&mut r, acc, alpha, &a, ta, &b, tb);
            prop_assert!(max_abs_diff(&c, &r) <= 1e-5 * (k as f32 + 1.0), "diff {}", max_abs_diff(&c, &r));
        }

        #[test]
        fn par_gemm_matches_reference(m in 1usize..40, k in 0usize..70, n in 1usize..40,
                                      ta in any::<bool>(), tb in any::<bool>(), acc in any::<bool>(),
                                      threads in 1usize..5, seed in any::<u64>()) {
            let ta = if ta { Op::T } else { Op::N };
            let tb = if tb { Op::T } else { Op::N };
            let a = if ta == Op::N { rand_matrix(m, k, seed) } else { rand_matrix(k, m, seed) };
            let b = if tb == Op::N { rand_matrix(k, n, seed ^ 1) } else { rand_matrix(n, k, seed ^ 1) };
            let c0 = rand_matrix(m, n, seed ^ 2);
            let mut c = c0.clone();
            let mut r = c0.clone();
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| par_gemm(&mut c, acc, 0.5, a.view(), ta, b.view(), tb));
            gemm_reference(&mut r, acc, 0.5, &a, ta, &b, tb);
            prop_assert!(max_abs_diff(&c, &r) <= 1e-5 * (k as f32 + 1.0), "diff {}", max_abs_diff(&c, &r));
        }
    }

    #[test]
    fn gemm_on_ep_shapes_and_strided_views() {
        // The batch-20 shapes of the EP hot loop, and a column slice (row split of dW).
        for &(m, k, n) in &[(20, 784, 500), (20, 500, 10), (20, 10, 500)] {
            let a = rand_matrix(m, k, 3);
            let b = rand_matrix(k, n, 4);
            let mut c = Matrix::zeros(m, n);
            let mut r = Matrix::zeros(m, n);
            gemm(c.view_mut(), false, 1.0, a.view(), Op::N, b.view(), Op::N);
            gemm_reference(&mut r, false, 1.0, &a, Op::N, &b, Op::N);
            assert!(max_abs_diff(&c, &r) < 1e-3, "{m}x{k}x{n}");
        }
        let x = rand_matrix(20, 30, 5);
        let d = rand_matrix(20, 7, 6);
        let mut w = rand_matrix(30, 7, 7);
        let mut r = w.clone();
        // Update rows 10..25 of w with x[:, 10..25]^T d, through strided views.
        let xs = x.view().cols_view(10, 25);
        let (_, rest) = w.view_mut().split_rows(10);
        let (mid, _) = rest.split_rows(15);
        gemm(mid, true, 0.5, xs, Op::T, d.view(), Op::N);
        let mut xsub = Matrix::zeros(20, 15);
        for i in 0..20 {
            for j in 0..15 {
                xsub.data[i * 15 + j] = x.data[i * 30 + 10 + j];
            }
        }
        let mut rmid = Matrix::from_vec(15, 7, r.data[70..175].to_vec());
        gemm_reference(&mut rmid, true, 0.5, &xsub, Op::T, &d, Op::N);
        r.data[70..175].copy_from_slice(&rmid.data);
        assert!(max_abs_diff(&w, &r) < 1e-5);
    }

    #[test]
    fn resident_zeros_are_zeros() {
        let (a, b) = (Matrix::zeros_resident(7, 13), Matrix::zeros(7, 13));
        assert_eq!((a.rows, a.cols), (7, 13));
        assert_eq!(a.data, b.data);
    }

    #[test]
    fn row_ranges_cover_exactly() {
        for rows in 0..50 {
            for parts in 1..5 {
                assert_eq!(row_range(rows, parts, 0).0, 0);
                assert_eq!(row_range(rows, parts, parts - 1).1, rows);
                for p in 1..parts {
                    assert_eq!(row_range(rows, parts, p - 1).1, row_range(rows, parts, p).0);
                }
            }
        }
    }
}

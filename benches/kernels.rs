//! Criterion benchmarks of the EP hot loop: the batch-20 GEMM shapes, the fused
//! relaxation kernel, and one training step of each preset (synthetic input).
//! `plasticity bench` reports the same kernels with GFLOP/s and fraction of peak.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use plasticity::config;
use plasticity::data;
use plasticity::tensor::{Matrix, Op, gemm, kernels};
use plasticity::train::build_learner;
use rand::SeedableRng;
use std::hint::black_box;

fn filled(rows: usize, cols: usize) -> Matrix {
    Matrix::from_vec(
        rows,
        cols,
        (0..rows * cols).map(|i| (i % 13) as f32 * 0.05).collect(),
    )
}

fn gemms(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm");
    for &(m, k, n, tb) in &[
        (20, 784, 500, Op::N),
        (20, 500, 500, Op::N),
        (20, 500, 500, Op::T),
        (20, 500, 10, Op::N),
        (20, 10, 500, Op::T),
    ] {
        let a = filled(m, k);
        let b = if tb == Op::N {
            filled(k, n)
        } else {
            filled(n, k)
        };
        let mut out = Matrix::zeros(m, n);
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        g.bench_function(
            BenchmarkId::from_parameter(format!("{m}x{k}x{n}{tb:?}")),
            |bench| bench.iter(|| gemm(out.view_mut(), false, 1.0, a.view(), Op::N, b.view(), tb)),
        );
    }
    // The rank-20 weight update x^T ds (784x20x500).
    let x = filled(20, 784);
    let d = filled(20, 500);
    let mut w = Matrix::zeros(784, 500);
    g.throughput(Throughput::Elements(2 * 784 * 20 * 500));
    g.bench_function("update 784x20x500", |bench| {
        bench.iter(|| gemm(w.view_mut(), true, 1e-3, x.view(), Op::T, d.view(), Op::N))
    });
    g.finish();
}

fn relax(c: &mut Criterion) {
    let (rows, n) = (20, 500);
    let mut s = vec![0.5f32; rows * n];
    let drive: Vec<f32> = (0..rows * n).map(|i| (i % 11) as f32 * 0.1).collect();
    let bias = vec![0.1f32; n];
    let target = vec![0.0f32; rows * n];
    let mut g = c.benchmark_group("relax_layer");
    g.throughput(Throughput::Elements((rows * n) as u64));
    g.bench_function("free 20x500", |b| {
        b.iter(|| black_box(kernels::relax_layer(&mut s, &drive, &bias, 0, n, 0.5, None)))
    });
    let mask = vec![1.0f32; target.len()];
    g.bench_function("nudged 20x500", |b| {
        b.iter(|| {
            black_box(kernels::relax_layer(
                &mut s,
                &drive,
                &bias,
                0,
                n,
                0.5,
                Some((1.0, &target, &mask)),
            ))
        })
    });
    g.finish();
}

fn train_step(c: &mut Criterion) {
    let dir = std::env::temp_dir().join("plasticity-bench-data");
    data::write_synthetic(&dir, 600, 20, 28, 1);
    let splits = data::load(&dir).unwrap();
    let mut g = c.benchmark_group("train_batch");
    g.sample_size(10);
    for name in ["eqprop-mnist-1h", "eqprop-mnist-2h"] {
        let cfg = config::preset(name).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads)
            .build()
            .unwrap();
        let counts = [splits.train.len(), splits.val.len(), splits.test.len()];
        let mut learner = build_learner(&cfg, counts).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let batch: Vec<usize> = (0..cfg.batch_size).collect();
        g.throughput(Throughput::Elements(cfg.batch_size as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                pool.install(|| black_box(learner.train_batch(&splits.train, &batch, &mut rng)))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, gemms, relax, train_step);
criterion_main!(benches);

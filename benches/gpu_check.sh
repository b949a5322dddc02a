#!/usr/bin/env bash
# Everything that needs a GPU, in one pass (for a lent GPU machine without Rust):
# the GPU-vs-CPU tests, `plasticity bench --device cuda`, the 1h preset trained
# on the GPU and the 3h preset's first epochs, and PyTorch on the same GPU.
# Build here first:
#   cargo build --release --features cuda && cargo test --release --features cuda --no-run
#   bash benches/gpu_check.sh --stage     # copies stripped binaries to target/gpu
# then on the GPU machine: OUT=dir bash benches/gpu_check.sh
# (PYTORCH=0 skips PyTorch.) Few files go to $OUT: a lent machine returns only a handful.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--stage" ]; then
    mkdir -p target/gpu
    strip -o target/gpu/plasticity target/release/plasticity
    t=$(ls -t target/release/deps/cuda-* | grep -v '\.d$' | head -1)
    strip -o target/gpu/cuda-tests "$t"
    ls -la target/gpu
    exit 0
fi
source benches/gpu_env.sh
step() { echo "== $1" | tee -a "$LOG"; shift; local s; s=$(date +%s%N); timeout "$@"; echo "rc=$? wall $(( ($(date +%s%N) - s) / 1000000 )) ms" | tee -a "$LOG"; }
step "GPU vs CPU tests" 150 target/gpu/cuda-tests --nocapture --test-threads 1 2>&1 | tee "$OUT/tests.txt"
step "bench --device cuda" 120 target/gpu/plasticity bench --device cuda --no-kernels \
    --preset eqprop-mnist-1h --preset eqprop-mnist-2h --preset eqprop-mnist-3h 2>&1 | tee "$OUT/bench_cuda.txt"
step "train 1h" 90 target/gpu/plasticity train --preset eqprop-mnist-1h --device cuda --out /tmp/t1 2>&1 | tail -2 | tee -a "$LOG"
mkdir -p "$OUT/train"
cp /tmp/t1/metrics.jsonl /tmp/t1/config.toml /tmp/t1/learning_curve.png /tmp/t1/checkpoint.safetensors "$OUT/train/"
step "train 3h, 3 epochs" 90 target/gpu/plasticity train --preset eqprop-mnist-3h --device cuda --epochs 3 --out /tmp/t3 2>&1 | tail -4 | tee -a "$LOG"
cat /tmp/t3/metrics.jsonl >> "$LOG"
[ "${PYTORCH:-1}" = 0 ] && exit 0
for p in eqprop-mnist-1h eqprop-mnist-3h; do
    lim=$([ $p = eqprop-mnist-3h ] && echo 1000 || echo 0)
    step "pytorch $p" 60 python3 benches/pytorch_eqprop.py --device cuda --preset $p \
        --limit $lim --eval-limit 1000 2>&1 | tee -a "$OUT/pytorch_cuda.jsonl"
done

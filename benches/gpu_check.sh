#!/usr/bin/env bash
# Everything that needs a GPU, in one pass (for a lent GPU machine without Rust):
# the GPU-vs-CPU tests, `plasticity bench --device cuda`, and PyTorch on the same
# GPU. Build here first:
#   cargo build --release --features cuda && cargo test --release --features cuda --no-run
#   bash benches/gpu_check.sh --stage     # copies stripped binaries to target/gpu
# then on the GPU machine: OUT=dir bash benches/gpu_check.sh
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
OUT="${OUT:-/tmp/gpu-out}"
mkdir -p "$OUT"
# cuBLAS and NVRTC may live inside the Python wheels rather than on the system path.
for lib in libcublas.so.13 libnvrtc.so.13 libcublasLt.so.13; do
    d=$(find / -name "$lib*" -not -path '*/proc/*' 2>/dev/null | head -1 | xargs -r dirname)
    [ -n "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" | tee "$OUT/env.txt"
nvidia-smi -L | tee -a "$OUT/env.txt"
step() { echo "== $1"; shift; timeout "$@"; echo "rc=$?"; }
step "GPU vs CPU tests" 150 target/gpu/cuda-tests --nocapture --test-threads 1 2>&1 | tee "$OUT/tests.txt"
step "bench --device cuda" 100 target/gpu/plasticity bench --device cuda --no-kernels \
    --preset eqprop-mnist-1h --preset eqprop-mnist-2h --preset eqprop-mnist-3h \
    --schemes paper,even-odd 2>&1 | tee "$OUT/bench_cuda.txt"
[ "${PYTORCH:-1}" = 0 ] && exit 0
for p in eqprop-mnist-1h eqprop-mnist-3h; do
    lim=$([ $p = eqprop-mnist-3h ] && echo 1000 || echo 0)
    step "pytorch $p" 60 python3 benches/pytorch_eqprop.py --device cuda --preset $p \
        --limit $lim --eval-limit 1000 2>&1 | tee -a "$OUT/pytorch_cuda.jsonl"
done

#!/usr/bin/env bash
# One epoch of eqprop-mnist-1h (50,000 training examples plus validation and test
# from rest), plasticity against the plain PyTorch script beside this file, on the
# same machine and thread count. Needs `cargo build --release` and a python3 with
# torch and numpy (PYTHON=... to choose it). Prints both JSON lines and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${THREADS:-2}"
PYTHON="${PYTHON:-python3}"
out="$(mktemp -d)"
# Like for like: validation and test from rest only (the script has no warm scoring).
printf 'eval_warm = false\n' >"$out/cfg.toml"
./target/release/plasticity train --config "$out/cfg.toml" --epochs 1 --threads "$THREADS" \
    --out "$out/run" --force >/dev/null 2>&1
ours="$(cat "$out/run/metrics.jsonl")"
theirs="$("$PYTHON" benches/pytorch_eqprop.py --epochs 1 --threads "$THREADS")"
echo "plasticity: $ours"
echo "pytorch:    $theirs"
"$PYTHON" - "$ours" "$theirs" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for key, what in [("train_seconds", "training (50,000 examples)"),
                  ("epoch_seconds", "epoch (training + validation and test)")]:
    print(f"{what}: plasticity {a[key]:.2f} s, pytorch {b[key]:.2f} s: {b[key] / a[key]:.1f}x faster")
PY
rm -rf "$out"

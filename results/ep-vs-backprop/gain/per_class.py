"""Per-class test error of layered checkpoints read as feed-forward nets (as backprop trains
and scores them), and for each output unit the share of test digits that leave it pinned at
0 (pre-activation <= 0), where the hard sigmoid's derivative, and so backprop's gradient
through that unit, is zero. Needs numpy. Run from the repository root:
    python3 results/ep-vs-backprop/gain/per_class.py RUN_DIR ...
"""
import sys
import numpy as np

sys.path.insert(0, "results/ep-vs-backprop")
from feedforward import load, idx  # noqa: E402  (reads safetensors and the IDX files)

xt = idx("t10k-images-idx3-ubyte", 3).reshape(-1, 784).astype(np.float32) / 255
yt = idx("t10k-labels-idx1-ubyte", 1)
for run in sys.argv[1:]:
    p = load(f"{run}/checkpoint.safetensors")
    depth = sum(1 for k in p if k.startswith("W"))
    s = xt
    for k in range(depth):
        pre = s @ p[f"W{k}"] + p[f"b{k + 1}"]
        s = np.clip(pre, 0, 1)
    pred = s.argmax(1)
    print(f"{run.removeprefix('results/')}: test error {np.mean(pred != yt):.4f}")
    print("  class:               " + " ".join(f"{c:>5d}" for c in range(10)))
    print("  error within class:  " + " ".join(f"{np.mean(pred[yt == c] != c):5.2f}" for c in range(10)))
    print("  output pinned at 0:  " + " ".join(f"{np.mean(pre[:, c] <= 0):5.2f}" for c in range(10)))

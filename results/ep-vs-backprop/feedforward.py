"""Reads the committed 1h checkpoints (EP and backprop) two ways: as a feed-forward net
(s1 = clip(x W0 + b1), out = clip(s1 W1 + b2)) and by EP's synchronous dynamics run 200
steps from that feed-forward state. Needs numpy. Run from the repository root:
    python3 results/ep-vs-backprop/feedforward.py > results/ep-vs-backprop/feedforward.txt
"""
import gzip, json, struct
import numpy as np


def load(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    header, data = json.loads(b[8 : 8 + n]), b[8 + n :]
    return {k: np.frombuffer(data[v["data_offsets"][0] : v["data_offsets"][1]], dtype=np.float32).reshape(v["shape"])
            for k, v in header.items() if k != "__metadata__"}


def idx(name, dims):
    raw = gzip.open(f"data/mnist/{name}.gz").read()
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


x = idx("train-images-idx3-ubyte", 3).reshape(-1, 784).astype(np.float32) / 255
y = idx("train-labels-idx1-ubyte", 1)
xt = idx("t10k-images-idx3-ubyte", 3).reshape(-1, 784).astype(np.float32) / 255
yt = idx("t10k-labels-idx1-ubyte", 1)
for run in ["eqprop-mnist-1h", "backprop-mnist-1h"]:
    p = load(f"results/{run}/checkpoint.safetensors")
    W0, W1, b1, b2 = p["W0"], p["W1"], p["b1"], p["b2"]
    for name, (X, Y) in [("val", (x[50000:], y[50000:])), ("test", (xt, yt))]:
        s1 = np.clip(X @ W0 + b1, 0, 1)
        out = np.clip(s1 @ W1 + b2, 0, 1)
        ff = np.mean(out.argmax(1) != Y)
        a, o = s1, out
        for _ in range(200):
            a, o = (np.clip(0.5 * a + 0.5 * (X @ W0 + b1 + o @ W1.T), 0, 1),
                    np.clip(0.5 * o + 0.5 * (a @ W1 + b2), 0, 1))
        ep = np.mean(o.argmax(1) != Y)
        print(f"{run} {name}: feed-forward error {ff:.4f}, EP fixed point from there {ep:.4f}")

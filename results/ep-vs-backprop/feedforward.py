"""Reads layered checkpoints (EP or backprop, any depth) two ways: as a feed-forward net
(s_k = clip(s_{k-1} W_{k-1} + b_k), the output last) and by EP's synchronous dynamics run 200
steps from that feed-forward state (eps = 0.5: s_k <- clip(s_k / 2 + (s_{k-1} W_{k-1} + b_k +
s_{k+1} W_k^T) / 2)). Prints the error of each read on the first 10,000 training digits (with
--train), the validation and the test digits, and (with --inside) the share of each hidden
layer's states strictly between the clips. Needs numpy. Run from the repository root:
    python3 results/ep-vs-backprop/feedforward.py > results/ep-vs-backprop/feedforward.txt
    python3 results/ep-vs-backprop/feedforward.py --train --inside RUN_DIR ...
"""
import gzip, json, struct, sys
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


def inside(states):
    return " (hidden states inside: " + ", ".join(f"{np.mean((h > 0) & (h < 1)):.2f}" for h in states[1:-1]) + ")"


def main():
    args = sys.argv[1:]
    show_train, show_inside = "--train" in args, "--inside" in args
    runs = [a for a in args if not a.startswith("--")] or ["results/eqprop-mnist-1h", "results/backprop-mnist-1h"]
    x = idx("train-images-idx3-ubyte", 3).reshape(-1, 784).astype(np.float32) / 255
    y = idx("train-labels-idx1-ubyte", 1)
    xt = idx("t10k-images-idx3-ubyte", 3).reshape(-1, 784).astype(np.float32) / 255
    yt = idx("t10k-labels-idx1-ubyte", 1)
    splits = [("train", (x[:10000], y[:10000]))] if show_train else []
    splits += [("val", (x[50000:], y[50000:])), ("test", (xt, yt))]
    for run in runs:
        p = load(f"{run}/checkpoint.safetensors")
        depth = sum(1 for k in p if k.startswith("W"))
        W = [p[f"W{k}"] for k in range(depth)]
        b = [None] + [p[f"b{k}"] for k in range(1, depth + 1)]
        for name, (X, Y) in splits:
            s = [X]
            for k in range(depth):
                s.append(np.clip(s[-1] @ W[k] + b[k + 1], 0, 1))
            ff, ff_inside = np.mean(s[-1].argmax(1) != Y), inside(s)
            for _ in range(200):
                s = [X] + [
                    np.clip(0.5 * s[k] + 0.5 * (s[k - 1] @ W[k - 1] + b[k] + (s[k + 1] @ W[k].T if k < depth else 0)), 0, 1)
                    for k in range(1, depth + 1)
                ]
            ep = np.mean(s[-1].argmax(1) != Y)
            extra = (ff_inside, inside(s)) if show_inside else ("", "")
            print(f"{run.removeprefix('results/')} {name}: feed-forward error {ff:.4f}{extra[0]}, EP fixed point from there {ep:.4f}{extra[1]}")


if __name__ == "__main__":
    main()

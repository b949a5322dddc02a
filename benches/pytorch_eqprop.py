"""A plain PyTorch implementation of the eqprop-mnist-1h preset, for timing side by side.

The same equations, hyperparameters and protocol as `plasticity train --preset
eqprop-mnist-1h` (784-500-10, batch 20, 20 free and 4 nudged synchronous steps,
eps 0.5, beta 1 with a random sign per batch, rates 0.2 and 0.1, persistent
particles, Glorot init, evaluation of validation and test from rest), written the
way a researcher would: explicit dynamics (no autograd), torch.no_grad, float32.
Not part of the library; it reads the MNIST that ships in data/mnist.

    python3 benches/pytorch_eqprop.py [--epochs 1] [--threads 2] [--limit N]

Prints one JSON object per epoch: errors and seconds (training, evaluation, total).
"""

import argparse
import gzip
import json
import pathlib
import time

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent / "data" / "mnist"


def idx(name, dims):
    raw = gzip.open(ROOT / f"{name}.gz").read()
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load():
    x = torch.tensor(idx("train-images-idx3-ubyte", 3).reshape(-1, 784), dtype=torch.float32) / 255
    y = torch.tensor(idx("train-labels-idx1-ubyte", 1).astype(np.int64))
    xt = torch.tensor(idx("t10k-images-idx3-ubyte", 3).reshape(-1, 784), dtype=torch.float32) / 255
    yt = torch.tensor(idx("t10k-labels-idx1-ubyte", 1).astype(np.int64))
    return (x[:50000], y[:50000]), (x[50000:], y[50000:]), (xt, yt)


def glorot(n_in, n_out, gen):
    bound = (6.0 / (n_in + n_out)) ** 0.5
    return (torch.rand(n_in, n_out, generator=gen) * 2 - 1) * bound


@torch.no_grad()
def relax(x_drive, s1, s2, W1, b2, steps, eps, beta=0.0, target=None):
    for _ in range(steps):
        d1 = x_drive + s2 @ W1.T
        d2 = s1 @ W1 + b2
        if beta != 0.0:
            d2 = d2 + beta * (target - s2)
        s1 = ((1 - eps) * s1 + eps * d1).clamp_(0, 1)
        s2 = ((1 - eps) * s2 + eps * d2).clamp_(0, 1)
    return s1, s2


@torch.no_grad()
def evaluate(x, y, W0, b1, W1, b2, steps, eps, block=500):
    errors = 0
    for i in range(0, len(x), block):
        xb = x[i : i + block]
        s1 = torch.zeros(len(xb), 500)
        s2 = torch.zeros(len(xb), 10)
        s1, s2 = relax(xb @ W0 + b1, s1, s2, W1, b2, steps, eps)
        errors += (s2.argmax(1) != y[i : i + block]).sum().item()
    return errors / len(x)


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="train on the first N examples only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    (x, y), (xv, yv), (xt, yt) = load()
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    gen = torch.Generator().manual_seed(1)
    W0, W1 = glorot(784, 500, gen), glorot(500, 10, gen)
    b1, b2 = torch.zeros(500), torch.zeros(10)
    free, nudged, eps, beta0, (a0, a1), batch = 20, 4, 0.5, 1.0, (0.2, 0.1), 20
    p1, p2 = torch.zeros(len(x), 500), torch.zeros(len(x), 10)
    onehot = torch.nn.functional.one_hot(y, 10).float()
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        errors = 0
        for i in range(0, len(x), batch):
            xb, tb = x[i : i + batch], onehot[i : i + batch]
            x_drive = xb @ W0 + b1
            s1, s2 = relax(x_drive, p1[i : i + batch], p2[i : i + batch], W1, b2, free, eps)
            p1[i : i + batch], p2[i : i + batch] = s1, s2
            errors += (s2.argmax(1) != y[i : i + batch]).sum().item()
            beta = beta0 if torch.rand(1, generator=gen).item() < 0.5 else -beta0
            n1, n2 = relax(x_drive, s1, s2, W1, b2, nudged, eps, beta, tb)
            c0, c1 = a0 / (beta * len(xb)), a1 / (beta * len(xb))
            W0 += c0 * (xb.T @ (n1 - s1))
            b1 += c0 * (n1 - s1).sum(0)
            W1 += c1 * (n1.T @ n2 - s1.T @ s2)
            b2 += c1 * (n2 - s2).sum(0)
        train_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        val = evaluate(xv, yv, W0, b1, W1, b2, free, eps)
        test = evaluate(xt, yt, W0, b1, W1, b2, free, eps)
        eval_s = time.perf_counter() - t1
        print(json.dumps({
            "epoch": epoch, "train_error": errors / len(x), "val_error": val, "test_error": test,
            "train_seconds": train_s, "eval_seconds": eval_s, "epoch_seconds": train_s + eval_s,
            "examples_per_second": len(x) / train_s, "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }), flush=True)


if __name__ == "__main__":
    main()

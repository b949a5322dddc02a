"""A plain PyTorch implementation of the EP presets, for timing side by side.

The same equations, hyperparameters and protocol as `plasticity train --preset
eqprop-mnist-1h` (and -2h, -3h): batch 20, synchronous steps, eps 0.5, beta with
a random sign per batch, per-layer rates, persistent particles, Glorot init,
evaluation of validation and test from rest; written the way a researcher would:
explicit dynamics (no autograd), torch.no_grad, float32, on the CPU or a GPU.
Not part of the library; it reads the MNIST that ships in data/mnist.

    python3 benches/pytorch_eqprop.py [--preset eqprop-mnist-1h] [--device cpu|cuda]
        [--epochs 1] [--threads 2] [--limit N] [--eval-limit N]

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


# The presets as `plasticity presets` lists them: layers, free and nudged steps,
# beta, rates (the published code's effective values; see src/config.rs).
PRESETS = {
    "eqprop-mnist-1h": ([784, 500, 10], 20, 4, 1.0, [0.2, 0.1]),
    "eqprop-mnist-2h": ([784, 500, 500, 10], 100, 6, 2.0, [0.4, 0.1, 0.01]),
    "eqprop-mnist-3h": ([784, 500, 500, 500, 10], 500, 8, 2.0, [0.128, 0.032, 0.008, 0.002]),
}


@torch.no_grad()
def relax(x_drive, s, W, b, steps, eps, beta=0.0, target=None):
    """Synchronous steps; s[k] is layer k+1, W[k] = W_k, b[k] = bias of layer k+1."""
    s = list(s)
    L = len(s)
    for _ in range(steps):
        d = []
        for k in range(L):
            dk = x_drive if k == 0 else s[k - 1] @ W[k] + b[k]
            if k + 1 < L:
                dk = dk + s[k + 1] @ W[k + 1].T
            if k + 1 == L and beta != 0.0:
                dk = dk + beta * (target - s[k])
            d.append(dk)
        s = [((1 - eps) * sk + eps * dk).clamp_(0, 1) for sk, dk in zip(s, d)]
    return s


@torch.no_grad()
def evaluate(x, y, W, b, sizes, steps, eps, block=500):
    errors = 0
    for i in range(0, len(x), block):
        xb = x[i : i + block]
        s = [torch.zeros(len(xb), n, device=x.device) for n in sizes[1:]]
        s = relax(xb @ W[0] + b[0], s, W, b, steps, eps)
        errors += (s[-1].argmax(1) != y[i : i + block]).sum().item()
    return errors / len(x)


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="eqprop-mnist-1h", choices=sorted(PRESETS))
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="train on the first N examples only")
    ap.add_argument("--eval-limit", type=int, default=0, help="evaluate the first N only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    (x, y), (xv, yv), (xt, yt) = load()
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    if args.eval_limit:
        xv, yv, xt, yt = xv[: args.eval_limit], yv[: args.eval_limit], xt[: args.eval_limit], yt[: args.eval_limit]
    sizes, free, nudged, beta0, rates = PRESETS[args.preset]
    eps, batch = 0.5, 20
    gen = torch.Generator().manual_seed(1)
    W = [glorot(a, c, gen).to(dev) for a, c in zip(sizes, sizes[1:])]
    b = [torch.zeros(n, device=dev) for n in sizes[1:]]
    x, y, xv, yv, xt, yt = (t.to(dev) for t in (x, y, xv, yv, xt, yt))
    particles = [torch.zeros(len(x), n, device=dev) for n in sizes[1:]]
    onehot = torch.nn.functional.one_hot(y, 10).float()
    for epoch in range(1, args.epochs + 1):
        sync()
        t0 = time.perf_counter()
        errors = torch.zeros((), device=dev)
        for i in range(0, len(x), batch):
            xb, tb = x[i : i + batch], onehot[i : i + batch]
            x_drive = xb @ W[0] + b[0]
            s = relax(x_drive, [p[i : i + batch] for p in particles], W, b, free, eps)
            for p, sk in zip(particles, s):
                p[i : i + batch] = sk
            errors += (s[-1].argmax(1) != y[i : i + batch]).sum()
            beta = beta0 if torch.rand(1, generator=gen).item() < 0.5 else -beta0
            n = relax(x_drive, s, W, b, nudged, eps, beta, tb)
            c = [a / (beta * len(xb)) for a in rates]
            W[0] += c[0] * (xb.T @ (n[0] - s[0]))
            b[0] += c[0] * (n[0] - s[0]).sum(0)
            for k in range(1, len(W)):
                W[k] += c[k] * (n[k - 1].T @ n[k] - s[k - 1].T @ s[k])
                b[k] += c[k] * (n[k] - s[k]).sum(0)
        sync()
        train_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        val = evaluate(xv, yv, W, b, sizes, free, eps)
        test = evaluate(xt, yt, W, b, sizes, free, eps)
        sync()
        eval_s = time.perf_counter() - t1
        print(json.dumps({
            "preset": args.preset, "device": str(dev),
            "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else None,
            "epoch": epoch, "train_examples": len(x), "train_error": errors.item() / len(x),
            "val_error": val, "test_error": test,
            "train_seconds": train_s, "eval_seconds": eval_s, "epoch_seconds": train_s + eval_s,
            "examples_per_second": len(x) / train_s, "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }), flush=True)


if __name__ == "__main__":
    main()

"""Train the example network on ecgray's synthetic ECGs and write its weights as safetensors.

    python -m ecgray_example_ecg8.train ecg8.safetensors [--seed 0] [--n-per-class 40] [--epochs 15]

The data come from :func:`ecgray.synth.training_arrays` at 500 Hz x 5,000 samples: records of the kinds
``normal`` (class NORM), ``AF`` and ``LBBB``, of which the 8 leads of the model are kept (ecgray's lead
order is DI, DII, DIII, AVR, AVL, AVF, V1..V6, so indices 0, 1, 6..11). Training is seeded, takes a few
seconds on 2 CPU cores and reaches well above chance on held-out synthetic records (:func:`evaluate`);
the network is an example of a plugin, not a clinical model.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from ecgray_example_ecg8 import CLASSES, build

__all__ = ["KIND_OF_CLASS", "LEAD_INDEX", "synthetic_set", "train", "evaluate", "main"]

#: the ecgray.synth kind behind each class of the model
KIND_OF_CLASS = {"NORM": "normal", "AF": "AF", "LBBB": "LBBB"}
#: the model's leads I, II, V1..V6 among ecgray.synth's 12 (DI, DII, DIII, AVR, AVL, AVF, V1..V6)
LEAD_INDEX = (0, 1, 6, 7, 8, 9, 10, 11)


def synthetic_set(n_per_class: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(X (N, 8, 5000) float32 mV, y (N,) int64 class index)``: ``n_per_class`` records of each class."""
    from ecgray.synth import training_arrays

    counts = {KIND_OF_CLASS[c]: int(n_per_class) for c in CLASSES}
    X, _, kinds = training_arrays(counts, seed=seed, fs=500, n_samples=5000)
    index = {KIND_OF_CLASS[c]: i for i, c in enumerate(CLASSES)}
    return np.ascontiguousarray(X[:, LEAD_INDEX]), np.array([index[k] for k in kinds], dtype=np.int64)


@contextlib.contextmanager
def _threads(n: int | None):
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def train(out: str | os.PathLike, *, seed: int = 0, n_per_class: int = 40, epochs: int = 15,
          batch_size: int = 16, lr: float = 3e-3, threads: int | None = None,
          n_heldout_per_class: int = 30) -> Path:
    """Train on ``n_per_class`` synthetic records per class for ``epochs`` epochs (Adam, seeded) and
    write the state dict to ``out`` (``.safetensors``), with string metadata (seed, sizes, the
    held-out accuracy on ``n_heldout_per_class`` records per class drawn with another seed, time).
    ``threads``: torch intra-op threads while training (default: leave torch's setting). Returns ``out``.
    """
    from safetensors.torch import save_file

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"{out}: write the weights as .safetensors (ecgray never loads pickles)")
    t0 = time.perf_counter()
    with _threads(threads):
        X, y = synthetic_set(n_per_class, seed=seed)
        torch.manual_seed(seed)
        model = build()
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(seed)
        xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        loss_fn = torch.nn.CrossEntropyLoss()
        for _ in range(int(epochs)):
            order = torch.randperm(len(yt), generator=gen)
            for i in range(0, len(order), batch_size):
                idx = order[i:i + batch_size]
                opt.zero_grad()
                loss = loss_fn(model(xt[idx]), yt[idx])
                loss.backward()
                opt.step()
        model.eval()
        train_s = time.perf_counter() - t0
        acc = _accuracy(model, *synthetic_set(n_heldout_per_class, seed=seed + 1000))
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"model": "ecgray_example_ecg8.ECG8Net", "classes": json.dumps(list(CLASSES)), "seed": str(seed),
            "n_per_class": str(n_per_class), "epochs": str(epochs), "train_seconds": f"{train_s:.2f}",
            "heldout_accuracy": f"{acc:.4f}", "heldout_per_class": str(n_heldout_per_class)}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata=meta)
    return out


def _accuracy(model: torch.nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        pred = model(torch.from_numpy(X)).argmax(dim=1).numpy()
    return float(np.mean(pred == y))


def evaluate(weights: str | os.PathLike, *, n_per_class: int = 30, seed: int = 1000) -> float:
    """Accuracy of the weights in ``weights`` on ``n_per_class`` synthetic records per class of ``seed``
    (pick a seed other than the training one)."""
    from safetensors.torch import load_file

    model = build()
    model.load_state_dict(load_file(str(weights)), strict=True)
    model.eval()
    return _accuracy(model, *synthetic_set(n_per_class, seed=seed))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m ecgray_example_ecg8.train", description=__doc__.splitlines()[0])
    ap.add_argument("out", help="weights file to write (.safetensors)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-per-class", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=15)
    # one thread: the network is so small that more threads mostly wait for each other (on 2 busy cores,
    # 2 threads took 10x longer than 1)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    path = train(a.out, seed=a.seed, n_per_class=a.n_per_class, epochs=a.epochs, threads=a.threads)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    print(f"wrote {path} in {time.perf_counter() - t0:.1f} s; held-out accuracy {meta['heldout_accuracy']} "
          f"({meta['heldout_per_class']} synthetic records per class; chance 0.33)")


if __name__ == "__main__":
    main()

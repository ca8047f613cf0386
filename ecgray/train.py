"""Train the demo model: the Ribeiro et al. 2020 ResNet, narrowed, on synthetic ECGs.

``ecgray train-demo --seed 0`` reproduces ``ecgray/models/weights/demo.safetensors``
(and writes ``demo.json`` beside it: command, seed, data sizes, epochs,
width, wall time, held-out metrics). Deterministic on CPU for a given seed
and thread count (``torch.set_num_threads(2)``, deterministic algorithms).

Data: :func:`ecgray.synth.training_arrays` (400 Hz, 4096 samples, 12 leads),
one label per record (normal -> all-zero target; RBBB is never positive).
Held-out data come from a different seed (``seed + 1000``).
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ecgray.models.ribeiro2020 import CLASSES, ResNet1d, ResNetConfig
from ecgray.synth import KINDS, training_arrays

DEMO_DIR = Path(__file__).resolve().parent / "models" / "weights"


@dataclass
class TrainConfig:
    seed: int = 0
    n_per_class: int = 240
    n_normal: int = 400
    n_val_per_class: int = 50
    epochs: int = 8
    width: float = 0.125
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.0
    threads: int = 2
    kinds: tuple[str, ...] = field(default=KINDS)

    def counts(self) -> dict[str, int]:
        return {k: (self.n_normal if k == "normal" else self.n_per_class) for k in self.kinds}

    @property
    def val_seed(self) -> int:
        return self.seed + 1000


def build_model(width: float, seed: int) -> ResNet1d:
    torch.manual_seed(seed)
    return ResNet1d(ResNetConfig.scaled(width))


def train_model(cfg: TrainConfig, *, X: np.ndarray | None = None, Y: np.ndarray | None = None,
                log=None) -> tuple[ResNet1d, dict]:
    """Train and return ``(model in eval mode, info)``. ``X``/``Y`` override the synthetic data."""
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    if X is None:
        X, Y, _ = training_arrays(cfg.counts(), seed=cfg.seed)
    model = build_model(cfg.width, cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * int(np.ceil(len(X) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(steps, 1), pct_start=0.15)
    loss_fn = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(cfg.seed)
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
    history = []
    for ep in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(Xt), generator=gen)
        tot, t0 = 0.0, time.perf_counter()
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(Xt[idx]), Yt[idx])
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
        history.append(round(tot / len(Xt), 5))
        if log:
            log(f"epoch {ep + 1}/{cfg.epochs}: loss {history[-1]:.4f} ({time.perf_counter() - t0:.0f} s)")
    model.eval()
    return model, {"train_loss": history}


def _auc(y: np.ndarray, s: np.ndarray) -> float | None:
    pos, neg = s[y > 0.5], s[y < 0.5]
    if len(pos) == 0 or len(neg) == 0:
        return None
    from scipy.stats import rankdata

    r = rankdata(np.concatenate([pos, neg]))
    return float((r[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


@torch.no_grad()
def predict(model: ResNet1d, X: np.ndarray, batch_size: int = 64) -> np.ndarray:
    model.eval()
    out = [torch.sigmoid(model(torch.from_numpy(X[i:i + batch_size]))).numpy() for i in range(0, len(X), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, len(CLASSES)), np.float32)


def evaluate(model: ResNet1d, X: np.ndarray, Y: np.ndarray, kinds: list[str]) -> dict:
    """Per-class accuracy / AUC / F1 at 0.5, exact-match accuracy overall and per kind."""
    P = predict(model, X)
    pred = P >= 0.5
    per_class = {}
    for j, c in enumerate(CLASSES):
        y, p = Y[:, j] > 0.5, pred[:, j]
        tp, fp, fn = int((y & p).sum()), int((~y & p).sum()), int((y & ~p).sum())
        f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else None
        per_class[c] = {"n_pos": int(y.sum()), "accuracy": round(float((y == p).mean()), 4),
                        "auc": None if (a := _auc(Y[:, j], P[:, j])) is None else round(a, 4),
                        "f1": None if f1 is None else round(f1, 4),
                        "sensitivity": round(tp / y.sum(), 4) if y.sum() else None}
    exact = (pred == (Y > 0.5)).all(1)
    by_kind = {k: round(float(exact[[i for i, kk in enumerate(kinds) if kk == k]].mean()), 4)
               for k in dict.fromkeys(kinds)}
    return {"n": int(len(X)), "overall_accuracy": round(float(exact.mean()), 4), "per_class": per_class,
            "accuracy_by_kind": by_kind}


def train_demo(seed: int = 0, *, out: str | Path | None = None, cfg: TrainConfig | None = None,
               command: str | None = None, log=lambda m: print(m, flush=True)) -> dict:
    """Train, evaluate on held-out data (seed + 1000), save weights + ``.json`` provenance; returns the info."""
    from ecgray.models.weights import model_id, save_model

    cfg = cfg or TrainConfig(seed=seed)
    out = Path(out) if out else DEMO_DIR / "demo.safetensors"
    t0 = time.perf_counter()
    model, info = train_model(cfg, log=log)
    train_s = time.perf_counter() - t0
    Xv, Yv, kv = training_arrays({k: cfg.n_val_per_class for k in cfg.kinds}, seed=cfg.val_seed)
    metrics = evaluate(model, Xv, Yv, kv)
    wall = time.perf_counter() - t0
    cfg_d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    info = {
        "command": command or f"ecgray train-demo --seed {cfg.seed}",
        "seed": cfg.seed,
        "held_out_seed": cfg.val_seed,
        "config": cfg_d,
        "n_train": sum(cfg.counts().values()),
        "n_train_per_kind": cfg.counts(),
        "n_held_out": int(len(Xv)),
        "data": "ecgray.synth.training_arrays (400 Hz, 4096 samples; kinds " + ", ".join(cfg.kinds)
                + "; normal -> all-zero target; RBBB not simulated)",
        "architecture": f"Ribeiro et al. 2020 ResNet1d, ResNetConfig.scaled({cfg.width})",
        "train_wall_s": round(train_s, 1),
        "wall_s": round(wall, 1),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {cfg.threads} threads",
        **info,
        "held_out": metrics,
    }
    info["model_id"] = model_id(model)
    save_model(model, out, metadata={"trained_on": "ecgray.synth", "train_info": json.dumps(
        {k: info[k] for k in ("command", "seed", "n_train", "config")}, sort_keys=True)})
    out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    return info

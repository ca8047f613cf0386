"""Issue 5: can a different synthetic data design make the AF relevance concentrate in the f-wave windows?

For each data design (keyword arguments of :func:`ecgray.synth.simulate`, plus ``_width``, ``_epochs``,
``_wd`` for the model) and seed: train a demo-size model (the ``ecgray train-demo`` recipe: same counts,
optimiser, one-cycle schedule, 8 epochs unless ``_epochs``) on that design, measure exact-match accuracy
on 50 held-out records per kind, and run the ground-truth check (:func:`ecgray.check.check_rows`,
20 records per class, IG-16, LRP-eps, LRP-alpha-beta, Saliency) on held-out records of the *same*
design. Training on CUDA is not bit-identical to the CPU recipe; this is a search over designs, not a
way to make the committed weights.

    python benchmarks/af_designs.py --out benchmarks/results/af_designs.json [--seeds 0,1] [NAME ...]

Needs torch, numpy, captum and zennit only (runs on a bare GPU box; see gpu_run.sh for the wheels).
Result (NVIDIA H200, 2026-11-26; 18 designs, 29 runs): benchmarks/results/af_designs.json (its
``note``: the ``*irrother`` and ``tq`` designs ran before two small fixes of those options).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ecgray.check import check_rows
from ecgray.synth import KINDS, training_arrays
from ecgray.train import TrainConfig, build_model

FA = (0.10, 0.25)          # coarse f-waves (default 0.05-0.15 mV)
TQ = {"f_wave_support": "tq"}  # f-waves only inside the TQ windows (exact support)
DESIGNS = {
    "base": {},
    "junc30": {"p_junctional": 0.3},
    "famp": {"f_wave_amplitude": FA},
    "junc30_famp": {"p_junctional": 0.3, "f_wave_amplitude": FA},
    "junc30_irrother": {"p_junctional": 0.3, "p_irregular_other": 0.4},
    "junc30_famp_irrother": {"p_junctional": 0.3, "f_wave_amplitude": FA, "p_irregular_other": 0.4},
    "junc45_irr45_famp_irrother": {"p_irregular": 0.45, "p_junctional": 0.45, "f_wave_amplitude": FA,
                                   "p_irregular_other": 0.5},
    "tq": {**TQ},
    "tq_famp": {**TQ, "f_wave_amplitude": FA},
    "tq_junc30": {**TQ, "p_junctional": 0.3},
    "tq_junc30_famp": {**TQ, "p_junctional": 0.3, "f_wave_amplitude": FA},
    "tq_junc30_famp_irrother": {**TQ, "p_junctional": 0.3, "f_wave_amplitude": FA, "p_irregular_other": 0.4},
    "tq_famp_irrother": {**TQ, "f_wave_amplitude": FA, "p_irregular_other": 0.4},
    "w05_base": {"_width": 0.5},
    "w05_tq_junc30": {**TQ, "p_junctional": 0.3, "_width": 0.5},
    "w0125_e24_base": {"_epochs": 24},
    "w0125_e24_tq_junc30": {**TQ, "p_junctional": 0.3, "_epochs": 24},
    "w025_wd_tq": {**TQ, "_width": 0.25, "_wd": 1e-3},
}
METHODS = ("integrated_gradients", "lrp_epsilon", "lrp_alpha_beta", "saliency")


def train(cfg: TrainConfig, X: np.ndarray, Y: np.ndarray, device: str) -> nn.Module:
    """The train_model recipe on ``device`` (AdamW = Adam when weight_decay is 0)."""
    model = build_model(cfg.width, cfg.seed).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * int(np.ceil(len(X) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.15)
    loss_fn = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(cfg.seed)
    Xt, Yt = torch.from_numpy(X).to(device), torch.from_numpy(Y).to(device)
    for _ in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(Xt), generator=gen).to(device)
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(Xt[idx]), Yt[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


def run_design(name: str, seed: int, device: str) -> dict:
    kw = dict(DESIGNS[name])
    ov = {k[1:]: kw.pop(k) for k in list(kw) if k.startswith("_")}
    cfg = TrainConfig(seed=seed, width=ov.get("width", 0.125), weight_decay=ov.get("wd", 0.0),
                      epochs=ov.get("epochs", 8))
    t0 = time.perf_counter()
    X, Y, _ = training_arrays(cfg.counts(), seed=seed, **kw)
    model = train(cfg, X, Y, device)
    train_s = time.perf_counter() - t0
    Xv, Yv, kv = training_arrays({k: 50 for k in KINDS}, seed=cfg.val_seed, **kw)
    with torch.no_grad():
        P = torch.cat([torch.sigmoid(model(torch.from_numpy(Xv[i:i + 100]).to(device))).cpu()
                       for i in range(0, len(Xv), 100)]).numpy()
    exact = ((P >= 0.5) == (Yv > 0.5)).all(1)
    acc = {k: round(float(exact[np.array(kv) == k].mean()), 3) for k in KINDS}
    rows, info = check_rows(model, n_per_class=20, n_steps=16, batch_size=64, methods=METHODS, **kw)
    return {"design": DESIGNS[name], "acc": acc, "info": info, "train_s": round(train_s, 1), "rows": rows}


def summary(r: dict) -> str:
    R = {(x["method"], x["region"]): x for x in r["rows"]}
    f = lambda m, reg, k="ratio": R[(m, reg)][k] if R[(m, reg)][k] is not None else float("nan")  # noqa: E731
    return "\n".join(f"   {m[:8]:8s} f_wave {f(m, 'f_wave'):.2f} no_P {f(m, 'no_P'):.2f} QRS {f(m, 'QRS'):.2f} | "
                     f"P(normal) {f(m, 'P (normal records)', 'mean_relevance_in'):+.2g} | "
                     f"LBBB {f(m, 'QRS+T (named leads)'):.2f}" for m in METHODS)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*", default=list(DESIGNS))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    res = json.loads(a.out.read_text()) if a.out.is_file() else {}
    res.setdefault("runs", {})
    res["machine"] = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    for name in a.names:
        for seed in (int(s) for s in a.seeds.split(",")):
            r = run_design(name, seed, device)
            res["runs"][f"{name}/{seed}"] = r
            print(f"== {name} seed {seed}: train {r['train_s']:.0f} s, held-out exact match {r['acc']}", flush=True)
            print(summary(r), flush=True)
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()

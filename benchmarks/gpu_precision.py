"""Precision and compiled speed of attributions on CUDA (run on a lent GPU box; see gpu_run.sh).

Part 1, precision: for the bench model (``random``: the published architecture,
seeded weights) and the trained ``demo`` model, Saliency, IG-16 and LRP-epsilon
under three settings -- strict float32 (TF32 off), TF32 convolutions (PyTorch's
default for cuDNN), bf16 autocast -- against strict float32 Captum per target
(Saliency, IG) or ecgray strict float32 (LRP). Figures per (record, target)
row: worst ``max|a-b| / max|b|`` and the median / worst relative L2 error.

Part 2, speed: IG-50, all 6 targets, 64 CODE-15 exams, eager vs ``torch.compile``
in float32, TF32 and bf16 -- the ``precision`` phases of ``ecgray bench``
(``ecgray.bench.cuda_precisions``). The committed results/gpu_precision.json
was written by an earlier version of this part (keys ``<setting>_<mode>``
with ``fp32_strict``; see its ``notes``).

    python benchmarks/gpu_precision.py --data .devdata/code15 --out $OUT/gpu_precision.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ecgray.attribution import attribute
from ecgray.attribution.core import precision_mode
from ecgray.bench import (cuda_precisions, max_rel_diff, rel_l2, bench_inputs, forward_flops, ig_reference, machine,
                          naive_ig, naive_saliency, save)
from ecgray.models import load_model


#: output key -> ``attribute(precision=...)`` (keys as in results/gpu_precision.json)
SETTINGS = {"fp32_strict": "fp32", "tf32": "tf32", "bf16": "bf16"}


def errors(a: np.ndarray, ref: np.ndarray) -> dict:
    med, worst = rel_l2(a, ref)
    return {"max_rel_diff": max_rel_diff(a, ref), "median_rel_l2": med, "max_rel_l2": worst}


def part_precision(X: np.ndarray, device: str) -> dict:
    out: dict = {}
    T = list(range(6))
    for model in ("random", "demo"):
        net = load_model(model).to(device).eval()
        res: dict = {}
        with precision_mode("fp32", device):
            refs = {"saliency": naive_saliency(net, X, T, device), "ig_16": naive_ig(net, X, T, 16, device)}
            with torch.no_grad():
                logits_ref = net(torch.as_tensor(X, device=device)).float().cpu().numpy()
        refs["lrp_epsilon"] = attribute(net, X, targets=None, method="lrp_epsilon").relevance
        for setting, prec in SETTINGS.items():
            with precision_mode(prec, device), torch.no_grad():
                lg = net(torch.as_tensor(X, device=device)).float().cpu().numpy()
            res[setting] = {"max_abs_logit_diff": float(np.abs(lg - logits_ref).max()),
                            "logit_scale": float(np.abs(logits_ref).max())}
            for method, kw in (("saliency", {}), ("ig_16", {"n_steps": 16}), ("lrp_epsilon", {})):
                m = "integrated_gradients" if method == "ig_16" else method
                rel = attribute(net, X, targets=None, method=m, precision=prec, **kw).relevance
                res[setting][method] = errors(rel, refs[method])
        out[model] = res
        print(model, json.dumps(res, indent=1), flush=True)
    return out


def part_speed(X: np.ndarray, device: str, n_steps: int = 50) -> dict:
    """The ``precision`` phases of ``ecgray bench --device cuda --compile`` (1-D layout)."""
    net = load_model("random").to(device).eval()
    T = list(range(6))
    ref, ref_ph = ig_reference(net, X, n_steps, device)

    def row(name, base_s, s, n_attr, **extra):
        print(f"{name}: {s:.3f} s, {n_attr / s:.0f} attributions/s, {extra}", flush=True)

    return cuda_precisions(net, X, T, n_steps, forward_flops(net), torch.cuda.get_device_name(), device, row, True,
                            ref, ref_ph["seconds"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--records", type=int, default=64)
    ap.add_argument("--precision-records", type=int, default=8)
    a = ap.parse_args()
    device = "cuda"
    X, source = bench_inputs(a.records, a.data)
    res = {"machine": machine(device), "inputs": source, "records": a.records}
    res["precision"] = part_precision(X[: a.precision_records], device)
    save(res, a.out)
    res["speed"] = part_speed(X, device)
    save(res, a.out)


if __name__ == "__main__":
    main()

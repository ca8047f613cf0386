"""Precision and compiled speed of attributions on CUDA (run on a lent GPU box; see gpu_run.sh).

Part 1, precision: for the bench model (``random``: the published architecture,
seeded weights) and the trained ``demo`` model, Saliency, IG-16 and LRP-epsilon
under three settings -- strict float32 (TF32 off), TF32 convolutions (PyTorch's
default for cuDNN), bf16 autocast -- against strict float32 Captum per target
(Saliency, IG) or ecgray strict float32 (LRP). Figures per (record, target)
row: worst ``max|a-b| / max|b|`` and the median / worst relative L2 error.

Part 2, speed: IG-50, all 6 targets, 64 CODE-15 exams, 16 records per chunk,
eager vs ``torch.compile`` (``ecgray.attribution.fast.compile_model``) for
strict fp32, TF32 and bf16; each timed after its own warm-up (compile time
reported separately).

    python benchmarks/gpu_precision.py --data .devdata/code15 --out $OUT/gpu_precision.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from ecgray.attribution import attribute
from ecgray.attribution.fast import compile_model
from ecgray.bench import _rel, _rel_l2, _roofline, bench_inputs, forward_flops, machine, naive_ig, naive_saliency, save, timed
from ecgray.models import load_model


@contextlib.contextmanager
def precision(name: str):
    prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = name != "fp32_strict"
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if name == "bf16" else contextlib.nullcontext()
    try:
        with ctx:
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev


def errors(a: np.ndarray, ref: np.ndarray) -> dict:
    med, worst = _rel_l2(a, ref)
    return {"max_rel_diff": _rel(a, ref), "median_rel_l2": med, "max_rel_l2": worst}


def part_precision(X: np.ndarray, device: str) -> dict:
    out: dict = {}
    T = list(range(6))
    for model in ("random", "demo"):
        net = load_model(model).to(device).eval()
        res: dict = {}
        with precision("fp32_strict"):
            refs = {"saliency": naive_saliency(net, X, T, device), "ig_16": naive_ig(net, X, T, 16, device),
                    "lrp_epsilon": attribute(net, X, targets=None, method="lrp_epsilon").relevance}
            with torch.no_grad():
                logits_ref = net(torch.as_tensor(X, device=device)).float().cpu().numpy()
        for setting in ("fp32_strict", "tf32", "bf16"):
            with precision(setting):
                with torch.no_grad():
                    lg = net(torch.as_tensor(X, device=device)).float().cpu().numpy()
                res[setting] = {"max_abs_logit_diff": float(np.abs(lg - logits_ref).max()),
                                "logit_scale": float(np.abs(logits_ref).max())}
                for method, kw in (("saliency", {}), ("ig_16", {"n_steps": 16}), ("lrp_epsilon", {})):
                    m = "integrated_gradients" if method == "ig_16" else method
                    rel = attribute(net, X, targets=None, method=m, **kw).relevance
                    res[setting][method] = errors(rel, refs[method])
        out[model] = res
        print(model, json.dumps(res, indent=1), flush=True)
    return out


def part_speed(X: np.ndarray, device: str, n_steps: int = 50, bs: int = 16) -> dict:
    net = load_model("random").to(device).eval()
    F = forward_flops(net)
    n_attr = len(X) * 6
    out: dict = {}
    gpu = torch.cuda.get_device_name()
    for setting in ("fp32_strict", "tf32", "bf16"):
        for label, model in (("eager", net), ("compiled", None)):
            if model is None:
                torch._dynamo.reset()  # else the cache of earlier settings counts against the recompile limit
                model = compile_model(net)
            ph: dict = {}
            t0 = time.perf_counter()
            with precision(setting):
                attribute(model, X, targets=None, method="ig", n_steps=n_steps, batch_size=bs)  # warm-up / compile
            ph["first_call_s"] = time.perf_counter() - t0
            with timed(device, ph, gpu=True):
                with precision(setting):
                    attribute(model, X, targets=None, method="ig", n_steps=n_steps, batch_size=bs)
            _roofline(ph, n_steps, F, 6, n_attr, gpu)
            ph["attributions_per_s"] = n_attr / ph["seconds"]
            out[f"{setting}_{label}"] = ph
            print(f"IG-{n_steps} {setting:12s} {label:9s} {ph['seconds']:.3f} s  {ph['attributions_per_s']:.0f} attr/s  "
                  f"{ph['achieved_tflops']} TFLOP/s  util {ph.get('gpu_util_mean')}  first call {ph['first_call_s']:.1f} s",
                  flush=True)
    return out


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

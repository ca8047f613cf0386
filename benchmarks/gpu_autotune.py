"""``torch.compile`` modes for the fastest GPU setting (bf16, channels-last 2-D view), IG-50, all 6 targets.

Side by side in one process on the published network (seeded weights) and 64 CODE-15 exams: the
compiled bf16 2-D view in ``torch.compile``'s default mode (the 790 attributions/s of
``gpu_layout.json``) and in ``max-autotune-no-cudagraphs`` (Inductor benchmarks Triton templates
against cuDNN for every convolution shape), each with its compile time and error vs the 1-D float32
fast path.

    python benchmarks/gpu_autotune.py --data .devdata/code15 --out $OUT/gpu_autotune.json

Result (NVIDIA H200, ``results/gpu_autotune.json``): default mode 715 attributions/s (first call
30 s; 19 % relative L2 vs float32); ``max-autotune-no-cudagraphs`` was still autotuning after ~290 s
when the device command's time limit ended it, so it has no figure. Give it a longer lease.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ecgray.attribution import attribute
from ecgray.attribution.fast import compile_model
from ecgray.bench import rel_l2, roofline, bench_setup, ig_reference, save, timed
from ecgray.models.ribeiro2020 import ResNet2dView


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--records", type=int, default=64)
    ap.add_argument("--n-steps", type=int, default=50)
    ap.add_argument("--modes", default="default,max-autotune-no-cudagraphs")
    a = ap.parse_args()
    device, n = "cuda", a.n_steps
    net, X, T, F, res = bench_setup("random", a.records, a.data, device, n_steps=n)
    ref, ref_ph = ig_reference(net, X, n, device)
    res["phases"]["fp32_eager_1d_reference"] = ref_ph
    save(res, a.out)
    n_attr = len(X) * len(T)
    for mode in a.modes.split(","):
        ph: dict = {"precision": "bf16", "layout": "2d", "compile_mode": mode}
        res["phases"][f"bf16_compiled_2d_{mode}"] = ph
        try:
            torch._dynamo.reset()
            model = compile_model(ResNet2dView(net).eval(), mode=None if mode == "default" else mode)
            t0 = time.perf_counter()
            attribute(model, X, targets=None, method="ig", n_steps=n, precision="bf16")
            ph["first_call_s"] = round(time.perf_counter() - t0, 1)
            with timed(device, ph, gpu=True):
                out = attribute(model, X, targets=None, method="ig", n_steps=n, precision="bf16").relevance
            ph["median_rel_l2_vs_fp32"], ph["max_rel_l2_vs_fp32"] = rel_l2(out, ref)
            roofline(ph, n, F, len(T), n_attr, res["machine"]["gpu"])
            ph["attributions_per_s"] = round(n_attr / ph["seconds"], 1)
        except Exception as exc:  # noqa: BLE001 - report, keep the other figures
            ph["error"] = f"{type(exc).__name__}: {exc}"[:500]
        print(mode, {k: v for k, v in ph.items() if k in ("first_call_s", "seconds", "attributions_per_s",
                                                          "median_rel_l2_vs_fp32", "error")}, flush=True)
        save(res, a.out)


if __name__ == "__main__":
    main()

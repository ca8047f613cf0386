"""Seconds per record (all 6 targets) of each attribution method on the full network.

    python benchmarks/attribution_cpu.py [--methods saliency,ixg,lrp,lrp_alpha_beta,ig] [--n-steps 16] [--records 2]

Uses real CODE-15 exams from ../shared/data when present (random ECG-like input otherwise) and the
published architecture with seeded random weights (`random` model: timing does not depend on the
weights). Prints a table and writes benchmarks/results/attribution_cpu.json with machine facts.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ecgray.attribution import attribute, resolve_method
from ecgray.models import load_model

ROOT = Path(__file__).resolve().parents[1]


def inputs(n: int) -> np.ndarray:
    import h5py

    d = ROOT / ".." / "shared" / "data" / "code15-test80"
    if (d / "pacient_1.hdf5").exists():
        xs = []
        for i in range(1, n + 1):
            with h5py.File(d / f"pacient_{i}.hdf5", "r") as f:
                xs.append(f["tracings"][0].T.astype(np.float32))
        return np.stack(xs)
    rng = np.random.default_rng(0)
    return rng.normal(0, 0.3, (n, 12, 4096)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="saliency,input_x_gradient,lrp_epsilon,lrp_alpha_beta,integrated_gradients")
    ap.add_argument("--n-steps", type=int, default=16)
    ap.add_argument("--records", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "attribution_cpu.json"))
    args = ap.parse_args()
    model = load_model("random")
    x = inputs(args.records)
    attribute(model, x[:1], targets=["AF"], method="saliency")  # warm-up
    rows = []
    for m in args.methods.split(","):
        name = resolve_method(m).name
        params = {"n_steps": args.n_steps} if name == "integrated_gradients" else {}
        t0 = time.perf_counter()
        res = attribute(model, x, targets=None, method=name, **params)
        dt = time.perf_counter() - t0
        rows.append({"method": name, "params": params, "records": len(x), "targets": len(res.targets),
                     "s_per_record": dt / len(x), "s_per_record_target": dt / len(x) / len(res.targets)})
        print(f"{name:22s} {params!s:18s} {dt / len(x):7.2f} s/record  {dt / len(x) / len(res.targets):6.3f} s/record-target")
    out = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                       "threads": torch.get_num_threads(), "load_avg": os.getloadavg()},
           "model": "random (published architecture)", "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Channels-last 2-D convolutions (``ResNet2dView``) vs the 1-D model on CUDA, IG-50, all 6 targets.

Side by side in one process on the published network (seeded weights) and 64 CODE-15 exams:
eager in float32 / TF32 / bf16 for both layouts, and ``torch.compile`` of the 2-D view in TF32 and
bf16; every figure with its error against the 1-D float32 fast path. The same phases are part of
``ecgray bench --device cuda`` (``precision``); this script runs only them (a short GPU lease).

    python benchmarks/gpu_layout.py --data .devdata/code15 --out $OUT/gpu_layout.json
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ecgray.bench import cuda_precisions, bench_setup, ig_reference, print_table, save


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--records", type=int, default=64)
    ap.add_argument("--n-steps", type=int, default=50)
    a = ap.parse_args()
    device, n = "cuda", a.n_steps
    net, X, T, F, res = bench_setup("random", a.records, a.data, device)
    rows: list[dict] = []

    def row(name, base_s, s, n_attr, **extra):
        rows.append({"phase": name, "baseline_s": round(base_s, 3), "ecgray_s": round(s, 3),
                     "ratio": round(base_s / s, 2), "attributions_per_s": round(n_attr / s, 2), **extra})
        save({**res, "rows": rows, "partial": True}, a.out)

    ref, ref_ph = ig_reference(net, X, n, device)
    res["phases"]["fp32_eager_1d_reference"] = ref_ph
    P = res["phases"]
    P.update(cuda_precisions(net, X, T, n, F, res["machine"]["gpu"], device, row, False, ref, ref_ph["seconds"],
                              layouts=("1d", "2d")))
    P.update(cuda_precisions(net, X, T, n, F, res["machine"]["gpu"], device, row, True, ref, ref_ph["seconds"],
                              layouts=("2d",), precisions=("tf32", "bf16")))
    res["rows"] = rows
    print_table(res)
    save(res, a.out)


if __name__ == "__main__":
    main()

"""Issue 16, "must show": ``ecgray evaluate``'s measures on the demo model's held-out synthetic records.

* faithfulness: deletion curves (MoRF vs random vs LeRF) for every method on correctly classified AF and
  LBBB records (held-out seed 2000, never used in training), with the ``zero`` and ROAD ``noisy_linear``
  replacements;
* randomisation: cascading MPRT and the random-logit test, per method;
* agreement between the methods per record x target, and, with ``--models``, between demo models
  trained with other seeds (``ecgray train-demo --seed k --out demo-seed{k}.safetensors``).

    python benchmarks/evaluate_demo.py --n 50 --out benchmarks/results/evaluate_demo.json \\
        [--models /tmp/seeds/demo-seed1.safetensors,/tmp/seeds/demo-seed2.safetensors]

Plain functions (:func:`ecgray.evaluate.evaluate_batch`), no Ray; one thread unless ``--threads``.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from ecgray.evaluate import EvaluateConfig, evaluate_batch
from ecgray.models import load_model
from ecgray.synth import truth_arrays

METHODS = ("integrated_gradients", "lrp_epsilon", "saliency", "input_x_gradient", "deeplift", "lrp_alpha_beta",
           "gradient_shap", "guided_backprop", "grad_cam", "smoothgrad")
PARAMS = {"integrated_gradients": {"n_steps": 32}, "gradient_shap": {"n_samples": 16}}


def rows_for(X, kinds, model):
    with torch.no_grad():
        p = torch.sigmoid(model(torch.from_numpy(X))).numpy()
    classes = list(model.classes)
    rows = []
    for i, k in enumerate(kinds):
        rows.append({"record_key": f"heldout-{i:04d}", "record_id": f"heldout-{i:04d}", "window": 0,
                     **{f"prob_{c}": float(p[i, j]) for j, c in enumerate(classes)},
                     **{f"label_{c}": (c == k) for c in classes}})
    return rows, p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50, help="held-out records per class (AF, LBBB)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--road-methods", default="integrated_gradients,lrp_epsilon,saliency",
                    help="methods also measured with the ROAD noisy-linear replacement")
    ap.add_argument("--mprt-methods", default="integrated_gradients,saliency,lrp_epsilon,input_x_gradient")
    ap.add_argument("--mprt-n", type=int, default=10, help="records per class for the (costly) MPRT")
    ap.add_argument("--models", default="", help="further demo models for the agreement across seeds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    model = load_model("demo")
    X, kinds, _ = truth_arrays({"AF": a.n, "LBBB": a.n}, seed=2000)
    rows, p = rows_for(X, kinds, model)
    classes = list(model.classes)
    correct = [i for i, k in enumerate(kinds) if p[i, classes.index(k)] >= 0.5]
    methods = tuple(m for m in a.methods.split(",") if m)
    result = {"machine": f"{platform.machine()}, {a.threads} thread(s), torch {torch.__version__}",
              "held_out_seed": 2000, "n_per_class": a.n, "n_correct": len(correct), "methods": list(methods)}
    frames = {}
    for kind in ("AF", "LBBB"):
        idx = [i for i in correct if kinds[i] == kind]
        for rep in ("zero", "noisy_linear"):
            ms = methods if rep == "zero" else tuple(m for m in a.road_methods.split(",") if m)
            cfg = EvaluateConfig(methods=ms, params=PARAMS, targets=(kind,),
                                 tests=("faithfulness", "agreement") if rep == "zero" else ("faithfulness",),
                                 replacement=rep)
            tabs = evaluate_batch(model, X[idx], [rows[i] for i in idx], cfg, evaluation_id="bench")
            for name in ("faithfulness", "agreement"):
                if rep == "noisy_linear" and name == "agreement":
                    continue
                frames.setdefault(name, []).append(pl.from_arrow(tabs[name]))
    mprt = tuple(m for m in a.mprt_methods.split(",") if m)
    for kind in ("AF", "LBBB"):
        idx = [i for i in correct if kinds[i] == kind][:a.mprt_n]
        cfg = EvaluateConfig(methods=mprt, params=PARAMS, targets=(kind,), tests=("randomisation",))
        tabs = evaluate_batch(model, X[idx], [rows[i] for i in idx], cfg, evaluation_id="bench")
        frames.setdefault("randomisation", []).append(pl.from_arrow(tabs["randomisation"]))
    if a.models:
        extra = {Path(m).stem: load_model(m) for m in a.models.split(",") if m}
        for kind in ("AF", "LBBB"):
            idx = [i for i in correct if kinds[i] == kind]
            cfg = EvaluateConfig(methods=("integrated_gradients", "saliency", "lrp_epsilon"), params=PARAMS,
                                 targets=(kind,), tests=("agreement",), models=tuple(extra))
            tabs = evaluate_batch(model, X[idx], [rows[i] for i in idx], cfg, evaluation_id="bench",
                                  extra_models=extra, model_name="demo")
            frames.setdefault("agreement_models", []).append(pl.from_arrow(tabs["agreement"]).filter(kind="models"))
    f = pl.concat(frames["faithfulness"])
    result["faithfulness"] = (f.group_by("method", "target", "replacement")
                              .agg(pl.len().alias("n"), pl.col("random_minus_morf").mean().round(3),
                                   (pl.col("random_minus_morf") > 0).mean().round(3).alias("frac_morf_faster"),
                                   pl.col("lerf_minus_morf").mean().round(3),
                                   pl.col("faithfulness_correlation").mean().round(3),
                                   pl.col("auc_morf").mean().round(3), pl.col("auc_random").mean().round(3))
                              .sort("replacement", "target", "method").to_dicts())
    r = pl.concat(frames["randomisation"])
    last = r.filter(test="cascading").group_by("method").agg(pl.col("step").max().alias("_last"))
    result["mprt_fully_randomised"] = (r.filter(test="cascading").join(last, on="method")
                                       .filter(pl.col("step") == pl.col("_last"))
                                       .group_by("method", "target").agg(pl.len().alias("n"),
                                                                         pl.col("spearman_abs").mean().round(3),
                                                                         pl.col("spearman_signed").mean().round(3),
                                                                         pl.col("topk_overlap").mean().round(3))
                                       .sort("method", "target").to_dicts())
    result["mprt_by_layer"] = (r.filter(test="cascading").group_by("method", "step", "layer")
                               .agg(pl.col("spearman_abs").mean().round(3), pl.col("spearman_signed").mean().round(3))
                               .sort("method", "step").to_dicts())
    result["random_logit"] = (r.filter(test="random_logit").group_by("method")
                              .agg(pl.len().alias("n"), pl.col("spearman_abs").mean().round(3),
                                   pl.col("spearman_signed").mean().round(3)).sort("method").to_dicts())
    ag = pl.concat(frames["agreement"])
    result["agreement_methods"] = {"n_record_targets": int(ag.select(pl.struct("record_key", "target").n_unique()).item()),
                                   "pairs": ag.group_by("a", "b").agg(pl.col("spearman_abs").mean().round(3),
                                                                       pl.col("spearman_signed").mean().round(3),
                                                                       pl.col("topk_overlap").mean().round(3))
                                   .sort("a", "b").to_dicts()}
    if "agreement_models" in frames:
        am = pl.concat(frames["agreement_models"])
        result["agreement_models"] = {"n_record_targets": int(am.select(pl.struct("record_key", "target").n_unique()).item()),
                                      "pairs": am.group_by("method", "a", "b")
                                      .agg(pl.col("spearman_abs").mean().round(3),
                                           pl.col("spearman_signed").mean().round(3),
                                           pl.col("topk_overlap").mean().round(3)).sort("method", "a", "b").to_dicts()}
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("n_correct", "wall_s")}))


if __name__ == "__main__":
    main()

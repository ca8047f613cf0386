"""Ground truth beyond density ratios: counterfactuals, RMA/RRA/AUC-PR, negative controls, graded features.

Three parts (metrics: :mod:`ecgray.groundtruth`; data: :mod:`ecgray.synth` ``feature_strength`` and
the control kinds):

1. **Negative-control model** (part ``negctrl``): a demo-size ResNet (width 0.125, the ``train_model``
   recipe on CPU) trained on ``normal`` + ``AF`` + ``AF_ctrl`` (AF with the same irregular RR and no P
   waves, but no f-waves; all-zero target), so that the f-waves are the *only* evidence of AF. Held-out
   accuracy (seed + 1000), then on held-out AF records (seed 2000) the counterfactual test and the
   localisation metrics per method on the AF (f-wave / TQ) windows. Part ``negctrl_tq``: the same with
   ``f_wave_support="tq"`` (f-waves only inside the TQ windows), where an AF record and its control are
   identical outside the windows, so that all the evidence the model can have lies inside them.
2. **Demo model** (part ``demo``; ``ecgray/models/weights/demo.safetensors``): the same on held-out AF, LBBB and
   1dAVb records (seed 2000), and the demo model's probability on the control kinds.
3. **Graded features**: strength uniform in 0..1 (label ``strength >= 0.5``), Spearman correlations
   of in-window relevance with strength and probability, relevance of false positives/negatives.

    python benchmarks/groundtruth.py --out benchmarks/results/groundtruth.json [--parts negctrl,negctrl_tq,demo]

Parts not run keep their entry of an existing ``--out`` file.

CPU only (2 threads); about 15 minutes with the defaults on two uncontended cores.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ecgray import groundtruth as gt
from ecgray.synth import CONTROL_KINDS, training_arrays, truth_arrays
from ecgray.train import TrainConfig, predict, train_model


def _round(o, nd=4):
    if isinstance(o, dict):
        return {k: _round(v, nd) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_round(v, nd) for v in o]
    if isinstance(o, (float, np.floating)):
        o = float(o)
        return o if not np.isfinite(o) else float(f"{o:.{nd}g}")
    if isinstance(o, np.integer):
        return int(o)
    return o


def negative_control_model(a, log, **sim_kw) -> tuple[torch.nn.Module, dict]:
    cfg = TrainConfig(seed=a.seed, width=0.125, epochs=a.epochs, threads=2,
                      kinds=("normal", "AF", "AF_ctrl"))
    counts = {"normal": a.n_train, "AF": a.n_train, "AF_ctrl": a.n_train}
    t0 = time.perf_counter()
    X, Y, _ = training_arrays(counts, seed=a.seed, **sim_kw)
    model, info = train_model(cfg, X=X, Y=Y, log=log)
    train_s = time.perf_counter() - t0
    Xv, Yv, kv = training_arrays({k: a.n_val for k in counts}, seed=cfg.val_seed, **sim_kw)
    P = predict(model, Xv)
    ia = list(model.classes).index("AF")
    kv = np.array(kv)
    pred_af = P[:, ia] >= 0.5
    acc = {k: float(np.mean(pred_af[kv == k] == (k == "AF"))) for k in counts}
    return model, {"design": sim_kw, "train_counts": counts, "epochs": a.epochs, "width": 0.125, "seed": a.seed,
                   "held_out_seed": cfg.val_seed, "n_held_out_per_kind": a.n_val, "train_wall_s": round(train_s, 1),
                   "train_loss": info["train_loss"],
                   "held_out_accuracy_AF_decision": float(np.mean(pred_af == (kv == "AF"))),
                   "held_out_accuracy_by_kind": acc,
                   "held_out_exact_match": float(np.mean(((P >= 0.5) == (Yv > 0.5)).all(1)))}


def control_probabilities(model, n: int, seed: int, kinds=CONTROL_KINDS, **sim_kw) -> dict:
    """The model's probability of each control's class on ``n`` control records."""
    out = {}
    for ck in kinds:
        X, _, _ = truth_arrays({ck: n}, seed=seed, **sim_kw)
        p = predict(model, X)[:, list(model.classes).index(ck[:-5])]
        out[ck] = {"n": n, "median_p": float(np.median(p)), "frac_p_ge_0.5": float(np.mean(p >= 0.5))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=200, help="training records per kind (negative-control model)")
    ap.add_argument("--n-val", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--n-eval", type=int, default=20, help="held-out records per class for the metrics")
    ap.add_argument("--n-graded", type=int, default=30)
    ap.add_argument("--n-steps", type=int, default=32)
    ap.add_argument("--methods", default=",".join(gt.METHODS))
    ap.add_argument("--demo-classes", default="AF,LBBB,1dAVb")
    ap.add_argument("--parts", default="negctrl,negctrl_tq,demo", help="negctrl, negctrl_tq, demo")
    a = ap.parse_args()
    parts = a.parts.split(",")
    torch.set_num_threads(2)
    methods = a.methods.split(",")
    log = lambda m: print(m, flush=True)  # noqa: E731
    t_all = time.perf_counter()
    res = json.loads(a.out.read_text()) if a.out.is_file() else {}
    cmd = "python benchmarks/groundtruth.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if k != "out") + f" --out {a.out}"
    res.update({"machine": f"{platform.machine()} CPU, 2 threads (shared)", "date": time.strftime("%Y-%m-%d"),
                "torch": torch.__version__,
                "definitions": "ecgray.groundtruth module docstring; counterfactual drop = logit(x) - logit(x "
                               "without the feature); random_noise / random_zero: equal L2 energy removed outside "
                               "the windows", "eval_seed": gt.GT_SEED})
    res.setdefault("commands", {})

    for part, kw in (("negctrl", {}), ("negctrl_tq", {"f_wave_support": "tq"})):
        if part not in parts:
            continue
        key = "negative_control_model" + ("_tq" if kw else "")
        log(f"== negative-control model (normal + AF + AF_ctrl) {kw}")
        model, info = negative_control_model(a, log, **kw)
        log(json.dumps(_round(info)))
        t0 = time.perf_counter()
        rep = gt.class_report(model, "AF", a.n_eval, methods=methods, n_steps=a.n_steps, **kw)
        res[key] = {**info, "AF": rep, "control_probabilities": control_probabilities(
            model, a.n_eval, gt.GT_SEED, kinds=("AF_ctrl",), **kw),
            "graded_AF": gt.graded_report(model, "AF", a.n_graded, methods=methods, n_steps=a.n_steps, **kw),
            "eval_wall_s": round(time.perf_counter() - t0, 1)}
        res["commands"][part] = cmd
        log(json.dumps(_round(res[key]["AF"])))
    if "demo" not in parts:
        res["wall_s_last"] = round(time.perf_counter() - t_all, 1)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(_round(res), indent=1) + "\n")
        return

    log("== demo model")
    from ecgray.models import load_model

    demo = load_model("demo")
    t0 = time.perf_counter()
    res["demo_model"] = {k: gt.class_report(demo, k, a.n_eval, methods=methods, n_steps=a.n_steps)
                         for k in a.demo_classes.split(",")}
    res["demo_model"]["control_probabilities"] = control_probabilities(demo, a.n_eval, gt.GT_SEED)
    for k in ("AF", "LBBB"):
        res["demo_model"][f"graded_{k}"] = gt.graded_report(demo, k, a.n_graded, methods=methods, n_steps=a.n_steps)
    res["demo_model"]["eval_wall_s"] = round(time.perf_counter() - t0, 1)
    res["commands"]["demo"] = cmd
    log(json.dumps(_round({k: v for k, v in res["demo_model"].items()})))
    res["wall_s_last"] = round(time.perf_counter() - t_all, 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(_round(res), indent=1) + "\n")


if __name__ == "__main__":
    main()

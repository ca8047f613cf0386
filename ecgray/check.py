"""Ground-truth check of attributions on synthetic ECGs with planted features.

For a model (default: the demo model) and a held-out synthetic set
(:func:`ecgray.synth.truth_arrays`, seed :data:`CHECK_SEED`, never used in
training), and for each attribution method:

* **AF** (target AF, correctly classified AF records): positive relevance
  density (positive relevance summed over leads, per sample) inside the
  planted windows vs outside, for the regions ``f_wave`` (TQ segments, where
  the fibrillatory baseline is seen), ``no_P`` (where a P wave would have
  been) and -- for honesty, since irregular RR makes QRS positions evidence
  too -- ``QRS``;
* **LBBB** (target LBBB, correctly classified LBBB records): the same over the
  (lead, sample) cells of the QRS and T windows in the characteristic leads
  (:data:`ecgray.synth.LBBB_QRS_LEADS`, :data:`~ecgray.synth.LBBB_T_LEADS`),
  region ``QRS+T (named leads)``; ``QRS (named leads)`` separately;
* **normal P waves** (target AF, normal records the model calls not-AF):
  mean signed AF relevance per sample (summed over leads) inside the P
  windows -- visible P waves are evidence against AF, so this should be < 0;
  ``frac_negative`` is the share of such records whose mean is negative.

``ratio = density_in / density_out`` where the densities are means over all
selected records' cells (pooled); ``median_record_ratio`` is the median of
per-record ratios. ``net_share_in``: the share of the *signed* relevance
(summed over records and cells) that lies inside the region, to compare with
``frac_cells_in``, the share of cells inside. The two answer different
questions: the AF f-wave region (TQ segments) covers ~58 % of the record and
holds small amplitudes, so with input-scaled methods (IG with a zero
baseline, LRP) the demo model's positive *density* there stays below the
QRS's, and its net AF relevance there is only about proportional to the
region's extent (figures in tests/test_check.py). A search over 18 synthetic
data designs and model variants (junctional normals without P waves, irregular
RR in LBBB/1dAVb, coarse f-waves, f-waves only inside the TQ windows, width
0.25/0.5, 24 epochs, weight decay; 29 trainings on an H200,
``benchmarks/af_designs.py``, ``benchmarks/results/af_designs.json``) did not
change that: f-wave ratio IG 0.74-1.79 (median 1.21), LRP-eps 0.51-1.37
(0.70), LRP-alpha-beta 0.33-1.87 (0.70), Saliency 0.88-3.10 (1.40).

The density ratio is not something the ground truth guarantees for AF: with the default
``f_wave_support="all"`` the f-waves are everywhere, under the QRS-T too, so a model that uses them
need not put its relevance in the TQ windows. :mod:`ecgray.groundtruth` adds what the synthetic
records can guarantee -- the counterfactual test (the same record with its feature removed,
:func:`ecgray.synth.without_feature`; the demo model's AF logit drops for every AF record) -- and the
localisation metrics RMA, RRA, AUC-PR and signed share, negative controls and graded features
(``benchmarks/groundtruth.py``, ``benchmarks/results/groundtruth.json``).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from ecgray.synth import MODEL_LEADS, truth_arrays

CHECK_SEED = 2000
DEFAULT_METHODS = ("integrated_gradients", "lrp_epsilon", "lrp_alpha_beta", "saliency")
SCHEMA_COLUMNS = ("method", "target", "region", "n_records", "density_in", "density_out", "ratio",
                  "median_record_ratio", "net_share_in", "frac_cells_in", "mean_relevance_in", "frac_negative")


def _mask(truth: list[dict], L: int, features: Iterable[str], *, named_leads: bool = False) -> np.ndarray:
    """Boolean ``(12, L)`` mask of the truth rows with ``feature`` in ``features``.

    ``named_leads``: only rows for a specific lead (``lead != "all"``); else only ``"all"`` rows.
    """
    m = np.zeros((12, L), bool)
    feats = set(features)
    for r in truth:
        if r["feature"] not in feats:
            continue
        if named_leads and r["lead"] != "all":
            m[MODEL_LEADS.index(r["lead"]), r["start"]:r["stop"]] = True
        elif not named_leads and r["lead"] == "all":
            m[:, r["start"]:r["stop"]] = True
    return m


def _ratio_row(method, target, region, rel: np.ndarray, masks: list[np.ndarray], *, per_lead: bool) -> dict:
    """rel ``(N, 12, L)``; masks ``(12, L)`` per record. ``per_lead``: cells are (lead, sample), else samples."""
    ins, outs, rr = [], [], []
    net_in = net_all = 0.0
    cells_in = cells_all = 0
    for r, m in zip(rel, masks):
        pos = np.clip(r, 0, None)
        if per_lead:
            i, o = pos[m], pos[~m]
            net_in += float(r[m].sum())
            cells_in += int(m.sum())
            cells_all += m.size
        else:
            p = pos.sum(0)
            mm = m.any(0)
            i, o = p[mm], p[~mm]
            net_in += float(r.sum(0)[mm].sum())
            cells_in += int(mm.sum())
            cells_all += mm.size
        net_all += float(r.sum())
        if i.size == 0 or o.size == 0:
            continue
        ins.append(i)
        outs.append(o)
        rr.append(i.mean() / o.mean() if o.mean() > 0 else np.inf)
    if not ins:
        return {"method": method, "target": target, "region": region, "n_records": 0, "density_in": None,
                "density_out": None, "ratio": None, "median_record_ratio": None, "net_share_in": None,
                "frac_cells_in": None, "mean_relevance_in": None, "frac_negative": None}
    di, do = float(np.concatenate(ins).mean()), float(np.concatenate(outs).mean())
    return {"method": method, "target": target, "region": region, "n_records": len(ins), "density_in": di,
            "density_out": do, "ratio": di / do if do > 0 else float("inf"),
            "median_record_ratio": float(np.median(rr)), "net_share_in": net_in / net_all if net_all else None,
            "frac_cells_in": cells_in / cells_all, "mean_relevance_in": None, "frac_negative": None}


def _p_row(method, rel: np.ndarray, masks: list[np.ndarray]) -> dict:
    vals = []
    for r, m in zip(rel, masks):
        mm = m.any(0)
        if mm.any():
            vals.append(float(r.sum(0)[mm].mean()))
    return {"method": method, "target": "AF", "region": "P (normal records)", "n_records": len(vals),
            "density_in": None, "density_out": None, "ratio": None, "median_record_ratio": None,
            "net_share_in": None, "frac_cells_in": None, "mean_relevance_in": float(np.mean(vals)) if vals else None,
            "frac_negative": float(np.mean(np.array(vals) < 0)) if vals else None}


def default_params(method: str, n_steps: int = 32) -> dict:
    return {"n_steps": n_steps, "internal_batch_size": 64} if method == "integrated_gradients" else {}


def run_check(model=None, *, n_per_class: int = 20, seed: int = CHECK_SEED,
              methods: Iterable[str] = DEFAULT_METHODS, n_steps: int = 32, batch_size: int = 8, **sim_kw):
    """Run the check; returns ``(pyarrow.Table, info)`` (``info``: selection counts).

    ``sim_kw`` go to :func:`ecgray.synth.simulate` (default: the demo model's training design).
    """
    import pyarrow as pa

    rows, info = check_rows(model, n_per_class=n_per_class, seed=seed, methods=methods, n_steps=n_steps,
                            batch_size=batch_size, **sim_kw)
    cols = {c: [r[c] for r in rows] for c in SCHEMA_COLUMNS}
    schema = pa.schema([("method", pa.string()), ("target", pa.string()), ("region", pa.string()),
                        ("n_records", pa.int64())] + [(c, pa.float64()) for c in SCHEMA_COLUMNS[4:]])
    return pa.table(cols, schema=schema), info


def check_rows(model=None, *, n_per_class: int = 20, seed: int = CHECK_SEED,
               methods: Iterable[str] = DEFAULT_METHODS, n_steps: int = 32, batch_size: int = 8,
               **sim_kw) -> tuple[list[dict], dict]:
    """The check's rows as dicts (:data:`SCHEMA_COLUMNS`) and ``info``; see :func:`run_check`."""
    from ecgray.attribution import attribute, resolve_method
    from ecgray.models import load_model

    if model is None or isinstance(model, str):
        model = load_model(model or "demo")
    X, kinds, truths = truth_arrays({"normal": n_per_class, "AF": n_per_class, "LBBB": n_per_class}, seed=seed,
                                    **sim_kw)
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        P = torch.sigmoid(model(torch.from_numpy(X).to(device))).cpu().numpy()
    classes = list(model.classes)
    ia, il = classes.index("AF"), classes.index("LBBB")
    kinds_a = np.array(kinds)
    af = np.flatnonzero((kinds_a == "AF") & (P[:, ia] >= 0.5))
    lb = np.flatnonzero((kinds_a == "LBBB") & (P[:, il] >= 0.5))
    nm = np.flatnonzero((kinds_a == "normal") & (P[:, ia] < 0.5))
    info = {"n_per_class": n_per_class, "seed": seed, "AF_correct": int(len(af)), "LBBB_correct": int(len(lb)),
            "normal_not_AF": int(len(nm)), "AF_records": int((kinds_a == "AF").sum())}
    L = X.shape[-1]
    rows = []
    for method in methods:
        name = resolve_method(method).name
        params = default_params(name, n_steps)
        idx_af = np.concatenate([af, nm])
        rel_af = attribute(model, X[idx_af], targets=["AF"], method=name, batch_size=batch_size,
                           **params).relevance[:, 0] if len(idx_af) else np.zeros((0, 12, L))
        rel_pos, rel_nm = rel_af[:len(af)], rel_af[len(af):]
        tr_af = [truths[i] for i in af]
        for region, feats in (("f_wave", ["f_wave"]), ("no_P", ["no_P"]), ("QRS", ["QRS"])):
            rows.append(_ratio_row(name, "AF", region, rel_pos, [_mask(t, L, feats) for t in tr_af], per_lead=False))
        rows.append(_p_row(name, rel_nm, [_mask(truths[i], L, ["P"]) for i in nm]))
        rel_lb = attribute(model, X[lb], targets=["LBBB"], method=name, batch_size=batch_size,
                           **params).relevance[:, 0] if len(lb) else np.zeros((0, 12, L))
        tr_lb = [truths[i] for i in lb]
        rows.append(_ratio_row(name, "LBBB", "QRS+T (named leads)", rel_lb,
                               [_mask(t, L, ["QRS", "T"], named_leads=True) for t in tr_lb], per_lead=True))
        rows.append(_ratio_row(name, "LBBB", "QRS (named leads)", rel_lb,
                               [_mask(t, L, ["QRS"], named_leads=True) for t in tr_lb], per_lead=True))
    return rows, info


def print_check(table, info: dict, console=None) -> None:
    """A rich table of the check results."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = Table(title=f"ground-truth check (held-out seed {info['seed']}, {info['n_per_class']} records/class; "
                    f"correct: AF {info['AF_correct']}, LBBB {info['LBBB_correct']}, normal {info['normal_not_AF']})")
    for c, j in (("method", "left"), ("target", "left"), ("region", "left"), ("n", "right"), ("ratio in/out", "right"),
                 ("median rec. ratio", "right"), ("net share in", "right"), ("cells in", "right"),
                 ("mean R in", "right"), ("frac < 0", "right")):
        t.add_column(c, justify=j)
    f = lambda v, fmt: "" if v is None else format(v, fmt)  # noqa: E731
    for r in table.to_pylist():
        t.add_row(r["method"], r["target"], r["region"], str(r["n_records"]), f(r["ratio"], ".2f"),
                  f(r["median_record_ratio"], ".2f"), f(r["net_share_in"], ".2f"), f(r["frac_cells_in"], ".2f"),
                  f(r["mean_relevance_in"], ".3g"), f(r["frac_negative"], ".2f"))
    console.print(t)

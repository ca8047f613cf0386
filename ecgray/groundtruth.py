"""Ground-truth metrics of attributions on synthetic ECGs: localisation, counterfactuals, graded features.

Extends :mod:`ecgray.check` (positive-density ratio in/out of the planted windows) with metrics that
answer sharper questions, all on the synthetic records of :mod:`ecgray.synth`, whose planted features
can be removed exactly (``feature_strength``, :func:`ecgray.synth.without_feature`).

Masks (:func:`feature_mask`, boolean ``(12, L)``, cells = (lead, sample)): ``AF`` the ``f_wave``
windows (TQ segments) in all leads; ``LBBB`` the QRS windows in :data:`~ecgray.synth.LBBB_QRS_LEADS`
and the T windows in :data:`~ecgray.synth.LBBB_T_LEADS`; ``1dAVb`` the P windows in all leads.

Localisation metrics of a relevance map ``R`` (same shape as the mask; all over cells):

* ``density_ratio``: mean positive relevance per cell inside / outside (pooled over records, as the
  check; the check sums AF relevance over leads first, here AF cells are per lead);
* ``signed_share``: ``sum R[inside] / sum R`` (pooled over records: sums over all records first);
  compare with ``frac_cells_in``, the share of cells inside;
* ``rma``: relevance mass accuracy (Arras et al. 2022, Quantus ``RelevanceMassAccuracy``):
  ``sum max(R, 0)[inside] / sum max(R, 0)``, per record, mean over records;
* ``rra``: relevance rank accuracy: the share of the top-K cells by ``R`` (signed; ties broken by a
  stable sort) that lie inside, ``K`` = number of mask cells; per record, mean;
* ``auc_pr``: average precision (area under the precision-recall curve, the step-wise sum
  ``sum_k (r_k - r_{k-1}) p_k`` over distinct thresholds, as scikit-learn's
  ``average_precision_score``) of ``|R|`` as a score for the mask cells; per record, mean;
  ``ap_chance`` (= ``frac_cells_in``) is the value of a random map.

Counterfactual test (:func:`counterfactual_test`): ``drop = logit(x) - logit(x_cf)`` for the record
``x`` and its feature-removed copy ``x_cf`` (same random numbers, only the feature differs; the
difference ``d = x - x_cf`` is the removed signal). The control removes an equal amount of signal
elsewhere, seeded per record (``default_rng([seed, i])``), in two ways:

* ``noise``: subtract a smooth random signal (white Gaussian noise per lead, smoothed with a 25 ms Hann
  window) that is zero on the *excluded* samples and scaled to the same L2 norm as ``d``;
* ``zero``: set random 50 ms blocks (all leads) outside the excluded samples to 0 until the removed
  energy ``sum x**2`` over those cells reaches ``||d||**2`` (or no blocks are left).

The excluded samples are those where the mask is set in any lead, plus the support of ``d``
(``|d| > 1e-6 max|d|`` in any lead) unless that support covers more than half of the record (AF with
``f_wave_support="all"``: the f-waves are everywhere; then only the mask is excluded). Reported: the
share of records with ``drop > 0``, the median drop, the share whose probability falls below 0.5.

Graded features (:func:`graded_report`): records with ``feature_strength`` uniform in 0..1
(:func:`ecgray.synth.graded_arrays`, label ``strength >= 0.5``); per method the Spearman correlation of
the per-record signed relevance inside the mask (``relevance_in``; also RMA) with the strength and with
the model's probability, and mean ``relevance_in`` of the true/false positives/negatives.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from ecgray.synth import (CONTROL_KINDS, LBBB_QRS_LEADS, LBBB_T_LEADS, MODEL_LEADS, graded_arrays, record_seeds,
                          simulate)

METHODS = ("integrated_gradients", "lrp_epsilon", "saliency", "lrp_alpha_beta")
GT_SEED = 2000  # held-out records (the demo model trained on seed 0, was validated on 1000)


# --------------------------------------------------------------------------- masks
def _base(kind: str) -> str:
    return kind[:-len("_ctrl")] if kind in CONTROL_KINDS else kind


def feature_mask(kind: str, truth: list[dict], L: int) -> np.ndarray:
    """Boolean ``(12, L)`` mask of ``kind``'s planted feature (module docstring) from a record's truth rows.

    Control kinds get their class's mask: an AF record without ``f_wave`` rows (strength 0) gets the
    TQ segments from its T and QRS rows (each T end to the next QRS onset; the segments cut by the
    record's edges are left out); LBBB uses the ``"all"`` QRS/T rows restricted to the named leads.
    """
    def allrows(f):
        return [(r["start"], r["stop"]) for r in truth if r["feature"] == f and r["lead"] == "all"]

    kind = _base(kind)
    m = np.zeros((12, L), bool)
    if kind == "AF":
        fw = allrows("f_wave")
        if not fw and truth:
            qs = sorted(a for a, _ in allrows("QRS"))
            fw = [(b, min(q for q in qs if q >= b)) for _, b in allrows("T") if any(q >= b for q in qs)]
        for a, b in fw:
            m[:, a:b] = True
    elif kind == "LBBB":
        qi = [MODEL_LEADS.index(ld) for ld in LBBB_QRS_LEADS]
        ti = [MODEL_LEADS.index(ld) for ld in LBBB_T_LEADS]
        for a, b in allrows("QRS"):
            m[qi, a:b] = True
        for a, b in allrows("T"):
            m[ti, a:b] = True
    elif kind == "1dAVb":
        for a, b in allrows("P"):
            m[:, a:b] = True
    else:
        raise ValueError(f"no feature mask for kind {kind!r} (AF, LBBB, 1dAVb and their controls)")
    return m


# --------------------------------------------------------------------------- localisation metrics
def density_ratio(R: np.ndarray, M: np.ndarray) -> float:
    """Mean positive relevance per cell inside ``M`` / outside (``inf`` if outside is 0; nan if empty)."""
    pos = np.clip(np.asarray(R, np.float64), 0, None)
    M = np.asarray(M, bool)
    if not M.any() or M.all():
        return float("nan")
    i, o = pos[M].mean(), pos[~M].mean()
    return float(i / o) if o > 0 else float("inf")


def signed_share(R: np.ndarray, M: np.ndarray) -> float:
    """``sum R[M] / sum R`` (nan if ``sum R`` is 0)."""
    R = np.asarray(R, np.float64)
    tot = R.sum()
    return float(R[np.asarray(M, bool)].sum() / tot) if tot != 0 else float("nan")


def rma(R: np.ndarray, M: np.ndarray) -> float:
    """Relevance mass accuracy: positive relevance inside ``M`` / all positive relevance (nan if none)."""
    pos = np.clip(np.asarray(R, np.float64), 0, None)
    tot = pos.sum()
    return float(pos[np.asarray(M, bool)].sum() / tot) if tot > 0 else float("nan")


def rra(R: np.ndarray, M: np.ndarray) -> float:
    """Relevance rank accuracy: share of the top-``K`` cells by ``R`` inside ``M``, ``K = M.sum()``."""
    M = np.asarray(M, bool).ravel()
    k = int(M.sum())
    if k == 0:
        return float("nan")
    order = np.argsort(-np.asarray(R, np.float64).ravel(), kind="stable")
    return float(M[order[:k]].mean())


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision of ``scores`` for binary ``labels``: ``sum_k (r_k - r_{k-1}) p_k`` over the
    distinct score thresholds (descending; tied scores form one threshold), as scikit-learn's
    ``average_precision_score``. nan without positives."""
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels, bool).ravel()
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # last index of each distinct threshold
    tp = np.cumsum(y)[last]
    prec = tp / (last + 1)
    rec = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, rec]) * prec))


def auc_pr(R: np.ndarray, M: np.ndarray, score: str = "abs") -> float:
    """Average precision of ``|R|`` (``score="abs"``) or ``max(R, 0)`` (``"positive"``) for the mask cells."""
    R = np.asarray(R, np.float64)
    if score not in ("abs", "positive"):
        raise ValueError("score must be 'abs' or 'positive'")
    return average_precision(np.abs(R) if score == "abs" else np.clip(R, 0, None), M)


def localisation(rel: np.ndarray, masks: Sequence[np.ndarray]) -> dict:
    """The localisation metrics of relevance maps ``rel (N, 12, L)`` against ``masks`` (module docstring)."""
    n = len(rel)
    if n == 0:
        return {"n_records": 0}
    ins, outs = [], []
    s_in = s_all = 0.0
    per = {"rma": [], "rra": [], "auc_pr": []}
    for r, m in zip(rel, masks):
        r = np.asarray(r, np.float64)
        pos = np.clip(r, 0, None)
        ins.append(pos[m])
        outs.append(pos[~m])
        s_in += float(r[m].sum())
        s_all += float(r.sum())
        per["rma"].append(rma(r, m))
        per["rra"].append(rra(r, m))
        per["auc_pr"].append(auc_pr(r, m))
    di, do = float(np.concatenate(ins).mean()), float(np.concatenate(outs).mean())
    frac = float(np.mean([m.mean() for m in masks]))
    out = {"n_records": n, "density_ratio": di / do if do > 0 else float("inf"),
           "signed_share": s_in / s_all if s_all else float("nan"), "frac_cells_in": frac}
    for k, v in per.items():
        out[k] = float(np.nanmean(v)) if not np.all(np.isnan(v)) else float("nan")
    out["rra_chance"] = out["ap_chance"] = frac
    return out


# --------------------------------------------------------------------------- counterfactuals
def counterfactual_arrays(kind: str, n: int | None = None, *, seed: int = GT_SEED, seeds: Iterable[int] | None = None,
                          fs: float = 400, n_samples: int = 4096, **sim_kw):
    """``n`` records of ``kind`` (seeds :func:`ecgray.synth.record_seeds` ``(seed, n)`` or explicit ``seeds``)
    and their feature-removed copies: ``(X, X_cf, truths, truths_cf, seeds)``, ``X`` ``(n, 12, n_samples)``."""
    seeds = np.asarray(list(seeds) if seeds is not None else record_seeds(seed, int(n)), np.int64)
    X = np.empty((len(seeds), 12, n_samples), np.float32)
    Xc = np.empty_like(X)
    tr, trc = [], []
    for i, s in enumerate(seeds):
        kw = dict(fs=fs, duration=n_samples / fs, seed=int(s), **sim_kw)
        a, ta = simulate(kind, **kw)
        b, tb = simulate(kind, **{**kw, "feature_strength": 0.0})
        X[i], Xc[i] = a.T, b.T
        tr.append(ta)
        trc.append(tb)
    return X, Xc, tr, trc, seeds


def excluded_samples(mask: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Samples ``(L,)`` the random removal avoids: the mask (any lead) and the support of ``d`` unless that
    covers more than half of the record (see the module docstring)."""
    ex = np.asarray(mask, bool).any(0)
    mx = float(np.abs(d).max()) if d.size else 0.0
    if mx > 0:
        sup = (np.abs(d) > 1e-6 * mx).any(0)
        if sup.mean() <= 0.5:
            ex = ex | sup
    return ex


def random_removal(x: np.ndarray, d: np.ndarray, excluded: np.ndarray, rng: np.random.Generator, *,
                   mode: str = "noise", fs: float = 400, smooth_s: float = 0.025, block_s: float = 0.05) -> np.ndarray:
    """``x`` ``(12, L)`` with an amount of signal equal to ``d``'s L2 energy removed outside ``excluded``."""
    x = np.asarray(x, np.float64)
    e = float(np.sum(np.asarray(d, np.float64) ** 2))
    allowed = ~np.asarray(excluded, bool)
    if mode == "noise":
        k = max(int(round(smooth_s * fs)), 1)
        w = np.hanning(k + 2)[1:-1]
        z = rng.standard_normal(x.shape)
        z = np.stack([np.convolve(c, w, mode="same") for c in z]) * allowed[None, :]
        nz = float(np.sqrt(np.sum(z ** 2)))
        return (x - z * (np.sqrt(e) / nz if nz > 0 else 0.0)).astype(np.float32)
    if mode == "zero":
        b = max(int(round(block_s * fs)), 1)
        L = x.shape[1]
        starts = [s for s in range(0, L - b + 1, b) if allowed[s:s + b].all()]
        out = x.copy()
        removed = 0.0
        for s in rng.permutation(starts):
            if removed >= e:
                break
            removed += float(np.sum(out[:, s:s + b] ** 2))
            out[:, s:s + b] = 0.0
        return out.astype(np.float32)
    raise ValueError("mode must be 'noise' or 'zero'")


def _logits(model, X: np.ndarray, j: int, batch_size: int = 32) -> np.ndarray:
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(X), batch_size):
            out.append(model(torch.from_numpy(np.ascontiguousarray(X[i:i + batch_size], np.float32)).to(device))
                       [:, j].float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _drop_summary(drop: np.ndarray, logit_after: np.ndarray) -> dict:
    if len(drop) == 0:
        return {"n": 0}
    q = np.percentile(drop, [10, 50, 90])
    return {"n": int(len(drop)), "frac_drop_positive": float(np.mean(drop > 0)), "median_drop": float(q[1]),
            "p10_drop": float(q[0]), "p90_drop": float(q[2]), "mean_drop": float(np.mean(drop)),
            "frac_below_0.5": float(np.mean(logit_after < 0))}


def counterfactual_test(model, X: np.ndarray, X_cf: np.ndarray, masks: Sequence[np.ndarray], target: str, *,
                        seed: int = 0, modes: Sequence[str] = ("noise", "zero"), fs: float = 400,
                        batch_size: int = 32) -> dict:
    """The counterfactual test (module docstring) for records ``X`` ``(N, 12, L)`` and copies ``X_cf``.

    Returns ``{"target", "logit_median", "feature": summary, "random_<mode>": summary, "drop": array,
    "drop_random_<mode>": array}``; a summary has ``n, frac_drop_positive, median_drop, p10/p90/mean_drop,
    frac_below_0.5`` (share of records whose probability after the removal is < 0.5).
    """
    j = list(model.classes).index(target)
    lx = _logits(model, X, j, batch_size)
    lc = _logits(model, X_cf, j, batch_size)
    res = {"target": target, "logit_median": float(np.median(lx)) if len(lx) else None,
           "feature": _drop_summary(lx - lc, lc), "drop": lx - lc}
    for mode in modes:
        Xr = np.empty_like(X)
        for i in range(len(X)):
            d = X[i].astype(np.float64) - X_cf[i]
            Xr[i] = random_removal(X[i], d, excluded_samples(masks[i], d), np.random.default_rng([seed, i]),
                                   mode=mode, fs=fs)
        lr = _logits(model, Xr, j, batch_size)
        res[f"random_{mode}"] = _drop_summary(lx - lr, lr)
        res[f"drop_random_{mode}"] = lx - lr
    return res


# --------------------------------------------------------------------------- reports
def _params(method: str, n_steps: int) -> dict:
    from ecgray.check import default_params

    return default_params(method, n_steps)


def relevance(model, X: np.ndarray, target: str, method: str, *, n_steps: int = 32, batch_size: int = 16) -> np.ndarray:
    """``(N, 12, L)`` relevance of ``target`` (logit) by ``method``."""
    from ecgray.attribution import attribute, resolve_method

    name = resolve_method(method).name
    if len(X) == 0:
        return np.zeros((0,) + X.shape[1:], np.float32)
    return attribute(model, X, targets=[target], method=name, batch_size=batch_size,
                     **_params(name, n_steps)).relevance[:, 0]


def class_report(model, kind: str, n: int, *, seed: int = GT_SEED, methods: Iterable[str] = METHODS,
                 n_steps: int = 32, batch_size: int = 16, cf_seed: int = 0, **sim_kw) -> dict:
    """Counterfactual test and localisation metrics per method for ``n`` held-out records of ``kind``
    (target ``kind``), on the correctly classified ones (probability >= 0.5)."""
    from ecgray.attribution import resolve_method

    X, Xc, tr, _, seeds = counterfactual_arrays(kind, n, seed=seed, **sim_kw)
    j = list(model.classes).index(kind)
    lx = _logits(model, X, j, batch_size)
    ok = np.flatnonzero(lx >= 0)
    L = X.shape[-1]
    masks = [feature_mask(kind, tr[i], L) for i in ok]
    cf = counterfactual_test(model, X[ok], Xc[ok], masks, kind, seed=cf_seed, batch_size=batch_size)
    out = {"kind": kind, "n": int(n), "seed": seed, "n_correct": int(len(ok)),
           "counterfactual": {k: v for k, v in cf.items() if not k.startswith("drop")}, "methods": {}}
    for m in methods:
        name = resolve_method(m).name
        out["methods"][name] = localisation(relevance(model, X[ok], kind, name, n_steps=n_steps,
                                                      batch_size=batch_size), masks)
    return out


def _spearman(a, b) -> float | None:
    from scipy.stats import spearmanr

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return None
    return float(spearmanr(a[ok], b[ok]).statistic)


def graded_report(model, kind: str, n: int, *, seed: int = GT_SEED, methods: Iterable[str] = METHODS,
                  threshold: float = 0.5, n_steps: int = 32, batch_size: int = 16, **sim_kw) -> dict:
    """Graded feature (module docstring): ``n`` records of ``kind`` with strength uniform in 0..1.

    Returns the counts (``tp, fp, fn, tn`` at probability 0.5 against ``strength >= threshold``),
    ``spearman_p_strength`` and per method ``spearman_in_strength`` / ``spearman_in_p`` (signed relevance
    inside the mask vs strength / probability), ``spearman_rma_strength`` / ``spearman_rma_p`` and
    ``mean_in_{tp,fp,fn,tn}``.
    """
    from ecgray.attribution import resolve_method

    X, strength, y, truths, _ = graded_arrays(kind, n, seed=seed, threshold=threshold, **sim_kw)
    j = list(model.classes).index(kind)
    p = 1.0 / (1.0 + np.exp(-_logits(model, X, j, batch_size).astype(np.float64)))
    L = X.shape[-1]
    masks = [feature_mask(kind, t, L) for t in truths]
    pos, yy = p >= 0.5, y > 0.5
    groups = {"tp": pos & yy, "fp": pos & ~yy, "fn": ~pos & yy, "tn": ~pos & ~yy}
    out = {"kind": kind, "n": int(n), "seed": seed, "threshold": threshold,
           **{k: int(v.sum()) for k, v in groups.items()}, "spearman_p_strength": _spearman(p, strength),
           "methods": {}}
    for m in methods:
        name = resolve_method(m).name
        R = relevance(model, X, kind, name, n_steps=n_steps, batch_size=batch_size).astype(np.float64)
        r_in = np.array([r[mk].sum() for r, mk in zip(R, masks)])
        r_rma = np.array([rma(r, mk) for r, mk in zip(R, masks)])
        row = {"spearman_in_strength": _spearman(r_in, strength), "spearman_in_p": _spearman(r_in, p),
               "spearman_rma_strength": _spearman(r_rma, strength), "spearman_rma_p": _spearman(r_rma, p)}
        for g, sel in groups.items():
            row[f"mean_in_{g}"] = float(r_in[sel].mean()) if sel.any() else None
        out["methods"][name] = row
    return out


def print_reports(reports: Sequence[dict], console=None) -> None:
    """Rich tables of :func:`class_report` results: the counterfactual test per class, then the
    localisation metrics per method x class (``ecgray check``)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = Table(title="counterfactual test: logit drop when the planted feature is removed vs an equal amount of "
                    "signal elsewhere (correctly classified held-out records)")
    for c in ("class", "n", "feature: share dropped", "median drop", "noise elsewhere: share / median",
              "zeros elsewhere: share / median", "feature removal: p < 0.5"):
        t.add_column(c, justify="left" if c == "class" else "right")
    f = lambda s, k, fmt: "–" if s.get(k) is None else format(s[k], fmt)  # noqa: E731
    for r in reports:
        cf = r["counterfactual"]
        fe, rn, rz = cf.get("feature", {}), cf.get("random_noise", {}), cf.get("random_zero", {})
        t.add_row(r["kind"], str(r["n_correct"]), f(fe, "frac_drop_positive", ".0%"), f(fe, "median_drop", "+.2f"),
                  f"{f(rn, 'frac_drop_positive', '.0%')} / {f(rn, 'median_drop', '+.2f')}",
                  f"{f(rz, 'frac_drop_positive', '.0%')} / {f(rz, 'median_drop', '+.2f')}",
                  f(fe, "frac_below_0.5", ".0%"))
    console.print(t)
    t = Table(title="localisation in the planted windows (chance = share of cells inside)")
    for c in ("method", "class", "n", "density in/out", "signed share", "cells in", "RMA", "RRA", "AUC-PR"):
        t.add_column(c, justify="left" if c in ("method", "class") else "right")
    for r in reports:
        for m, loc in r["methods"].items():
            if not loc.get("n_records"):
                continue
            t.add_row(m, r["kind"], str(loc["n_records"]), f(loc, "density_ratio", ".2f"), f(loc, "signed_share", ".2f"),
                      f(loc, "frac_cells_in", ".2f"), f(loc, "rma", ".2f"), f(loc, "rra", ".2f"), f(loc, "auc_pr", ".2f"))
    console.print(t)


def report_table(reports: Sequence[dict]):
    """:func:`class_report` results as the ``ground_truth`` table (:mod:`ecgray.schemas.evaluation`), one row per
    method x class, for the report (``<output>/reduced/ground_truth.parquet``)."""
    from ecgray.schemas.tables import from_rows

    rows = []
    for r in reports:
        cf = r["counterfactual"]
        fe, rn = cf.get("feature", {}), cf.get("random_noise", {})
        for m, loc in r["methods"].items():
            rows.append({"method": m, "target": r["kind"], "seed": int(r["seed"]), "n_records": int(r["n_correct"]),
                         **{k: loc.get(k) for k in ("density_ratio", "signed_share", "frac_cells_in", "rma", "rra",
                                                    "auc_pr")},
                         "feature_frac_drop": fe.get("frac_drop_positive"), "feature_median_drop": fe.get("median_drop"),
                         "control_median_drop": rn.get("median_drop")})
    return from_rows("ground_truth", rows)


def write_report_table(reports: Sequence[dict], output: str) -> str:
    """Write :func:`report_table` to ``<output>/reduced/ground_truth.parquet`` (local or S3); returns the path."""
    import pyarrow.parquet as pq

    from ecgray.io.fs import fs_path, is_s3, join, pyarrow_fs

    dest = join(output, "reduced")
    fs = pyarrow_fs(dest)
    if not is_s3(dest):
        fs.create_dir(fs_path(dest), recursive=True)
    path = join(dest, "ground_truth.parquet")
    pq.write_table(report_table(reports), fs_path(path), filesystem=fs)
    return path

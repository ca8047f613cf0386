"""Every table builder of the per-record outputs: the rows of ``records``, ``relevance_summary``, ``relevance``
(:func:`records_table`, :func:`per_lead_tables`) and of ``beats`` / ``beats_relevance`` (:func:`beats_tables`),
as Arrow tables conforming to :mod:`ecgray.schemas.tables`. Plain functions of NumPy and records in, Arrow out:
``ecgray explain`` (:mod:`ecgray.explain`) and the pipeline's table stage (:mod:`ecgray.pipeline.stages`) call
the same ones. ``cfg``: an :class:`ecgray.explain.ExplainConfig` (what every row records; its ``spec`` gives
the classes and leads).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from ecgray.io.labels import label_of
from ecgray.schemas.tables import conform, empty, from_rows

BEAT_LEAD = "DII"  # R-peaks on lead II (canonical name), else the model's first lead (ecgray.beats falls back by quality)
BEAT_WINDOW_MS = (-300, 500)


def key_of(rec) -> str:
    """The record key of a record (or record metadata): its ``record_key``, else its URI."""
    return getattr(rec, "record_key", "") or str(rec.uri)


def _n_samples(rec) -> int:
    """Samples of a record as read (``n_samples_in``): ``rec.n_samples`` (an :class:`ecgray.io.Record`, or
    record metadata without the signal, ``ecgray.pipeline.stages._record_meta``)."""
    return int(rec.n_samples)


def records_table(run_id: str, cfg, items: list[tuple[object, object]], probs: np.ndarray) -> pa.Table:
    """The ``records`` table of ``(record, window)`` pairs with the model's probabilities ``probs (N, C)``
    (``C``: the classes of ``cfg.spec``, one ``label_<class>`` and ``prob_<class>`` column each).
    Of a record it reads ``record_key`` (else ``uri``), ``record_id``, ``uri``, ``dataset``, ``format``,
    ``fs``, ``n_samples`` (see :func:`_n_samples`; never the signal itself) and ``labels``; of a window
    ``window``, ``offset`` and ``flags``. ``label_<class>``: :func:`ecgray.io.labels.label_of` (null
    when the labels do not say, e.g. a class the readers do not know, or a record without labels)."""
    classes = cfg.classes
    if probs.shape[1:] != (len(classes),):
        raise ValueError(f"probabilities of shape {probs.shape} for {len(classes)} classes {list(classes)}")
    rows = []
    for (rec, w), p in zip(items, probs):
        lab = rec.labels
        known = lab.scheme != "none"  # scheme "none" (no labels at all, e.g. MIMIC-IV-ECG): labels null, not False
        row = {
            "run_id": run_id, "model": cfg.model_name, "model_id": cfg.model_id,
            "record_key": key_of(rec), "record_id": rec.record_id, "window": int(w.window), "uri": rec.uri,
            "dataset": rec.dataset, "format": rec.format, "fs_in": float(rec.fs),
            "n_samples_in": _n_samples(rec), "window_offset": int(w.offset), "flags": list(w.flags),
            "label_normal": bool(lab.normal) if known else None, "raw_codes": list(lab.raw),
            "label_scheme": lab.scheme,
        }
        for c in classes:
            row[f"label_{c}"] = label_of(lab, c)
        for i, c in enumerate(classes):
            row[f"prob_{c}"] = float(p[i])
        rows.append(row)
    return from_rows("records", rows, classes)


def per_lead_tables(run_id: str, cfg, items, attr, method: str, classes: Sequence[str]) -> dict[str, pa.Table]:
    """Vectorised ``relevance_summary`` (and ``relevance``) rows for one attribution result."""
    r = attr.relevance  # (N, T, leads, L)
    n, t, n_leads, length = r.shape
    class_index = [list(classes).index(tg) for tg in attr.targets]
    prob = attr.probabilities[:, class_index]  # (N, T)
    delta = attr.delta if attr.delta is not None else np.full((n, t), np.nan, np.float32)
    rep = t * n_leads
    cols = {
        "run_id": pa.array([run_id] * (n * rep)),
        "model": pa.array([cfg.model_name] * (n * rep)),
        "model_id": pa.array([cfg.model_id] * (n * rep)),
        "record_key": pa.array(np.repeat([key_of(rec) for rec, _ in items], rep)),
        "record_id": pa.array(np.repeat([rec.record_id for rec, _ in items], rep)),
        "window": pa.array(np.repeat([w.window for _, w in items], rep).astype(np.int32)),
        "method": pa.array([method] * (n * rep)),
        "target": pa.array(np.tile(np.repeat(list(attr.targets), n_leads), n)),
        "output": pa.array([cfg.output] * (n * rep)),
        "lead": pa.array(np.tile(_leads(cfg, n_leads), n * t)),
    }
    per_row = lambda a: np.repeat(np.asarray(a, np.float32).reshape(n * t), n_leads)  # noqa: E731
    summary = dict(cols)
    summary.update(
        probability=per_row(prob),
        mean=r.mean(-1, dtype=np.float64).astype(np.float32).ravel(),
        mean_pos=np.clip(r, 0, None).mean(-1, dtype=np.float64).astype(np.float32).ravel(),
        mean_neg=np.clip(r, None, 0).mean(-1, dtype=np.float64).astype(np.float32).ravel(),
        sum=r.sum(-1, dtype=np.float64).astype(np.float32).ravel(),
        abs_sum=np.abs(r).sum(-1, dtype=np.float64).astype(np.float32).ravel(),
        delta=per_row(delta),
    )
    out = {"relevance_summary": conform(pa.table(summary), "relevance_summary")}
    if cfg.keep_relevance:
        full = dict(cols)
        flat = np.ascontiguousarray(r, dtype=np.float32).reshape(-1)
        full.update(
            window_offset=pa.array(np.repeat([w.offset for _, w in items], rep).astype(np.int64)),
            probability=per_row(prob),
            delta=per_row(delta),
            relevance=pa.FixedSizeListArray.from_arrays(flat, length).cast(pa.list_(pa.float32())),
        )
        out["relevance"] = conform(pa.table(full), "relevance")
    return out


def _leads(cfg, n_leads: int) -> tuple[str, ...]:
    leads = cfg.leads
    if len(leads) != n_leads:
        raise ValueError(f"relevance of {n_leads} leads for a model of {len(leads)} leads {list(leads)}")
    return leads


def _dict_strings(values, indices: np.ndarray) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(np.asarray(indices, np.int32)), pa.array(list(values), pa.string()))


def _lists(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    """``(N, K)`` rows as a list<float16> array; rows where ``valid`` is False are null."""
    n, k = values.shape
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(values, np.float16).reshape(-1)),
                                    mask=pa.array(~np.asarray(valid, bool)))


def row_scale(values: np.ndarray) -> np.ndarray:
    """Power-of-two scale of each row of ``(N, K)`` ``values``: ``2**ceil(log2(max |v|))`` (1 for rows that are
    all zero or non-finite), so ``values / scale`` lies in [-1, 1] and keeps float16's relative precision down
    to 2**-14 of the row's largest value (``ecgray.schemas.tables.BEAT_PRECISION``)."""
    a = np.where(np.isfinite(values), np.abs(values), 0.0).max(axis=1) if values.size else np.zeros(len(values))
    with np.errstate(divide="ignore"):
        e = np.where(a > 0, np.ceil(np.log2(np.where(a > 0, a, 1.0))), 0.0)
    return np.exp2(e).astype(np.float32)


def beats_tables(run_id: str, cfg, p: dict, average_beats) -> dict[str, pa.Table]:
    """``beats`` (window x lead: the average beat and its delineated waves, :func:`ecgray.delineate.delineate` on
    the averaged beats' R-peaks; fixed windows, flagged, when ``average_beats`` gives no ``peaks`` or ``cfg.waves`` is
    ``"fixed"``) and
    ``beats_relevance`` (window x method x target x lead)."""
    from ecgray.delineate import columns_of, delineate, fixed_bounds

    methods = list(p["attrs"])
    targets = list(p["attrs"][methods[0]].targets) if methods else []
    fs, leads = float(cfg.spec.fs), cfg.leads
    beat_lead = BEAT_LEAD if BEAT_LEAD in leads else leads[0]
    sig_rows: dict[str, list] = {k: [] for k in ("i", "lead", "start", "step", "signal", "ok", "n_beats", "quality",
                                                "lead_used", "hr", "waves")}
    rel_rows: dict[str, list] = {k: [] for k in ("i", "method", "target", "lead", "relevance", "ok")}
    for i, (rec, w) in enumerate(zip(p["recs"], p["wins"])):
        rel = np.stack([p["attrs"][m].relevance[i] for m in methods])  # (M, T, leads, L)
        L = rel.shape[-1]
        start = max(0, -w.offset)
        valid = (start, min(L, start + w.n_resampled - max(0, w.offset)))
        avg = average_beats(p["x"][i], rel, fs=fs, lead=beat_lead, leads=leads, window_ms=BEAT_WINDOW_MS, valid=valid)
        M, T, n_leads, K = avg.relevance.shape
        ok = int(avg.n_beats) > 0
        off = np.asarray(avg.offsets_ms, np.float64)
        sig_rows["i"].append(np.full(n_leads, i))
        sig_rows["lead"].append(np.arange(n_leads))
        sig_rows["start"].append(np.full(n_leads, off[0], np.float32))
        sig_rows["step"].append(np.full(n_leads, (off[1] - off[0]) if K > 1 else 1000.0 / fs, np.float32))
        sig_rows["signal"].append(np.asarray(avg.signal, np.float32).reshape(n_leads, K))
        sig_rows["ok"].append(np.full(n_leads, ok))
        sig_rows["n_beats"].append(np.full(n_leads, int(avg.n_beats), np.int32))
        sig_rows["quality"].extend([str(avg.quality)] * n_leads)
        sig_rows["lead_used"].extend([str(avg.lead_used)] * n_leads)
        sig_rows["hr"].append(np.full(n_leads, avg.heart_rate_bpm, np.float32))
        peaks = getattr(avg, "peaks", None)
        delineated = ok and peaks is not None and getattr(cfg, "waves", "delineated") == "delineated"
        wb = delineate(p["x"][i], peaks, fs, valid=valid) if delineated else fixed_bounds()
        sig_rows["waves"].extend([columns_of(wb)] * n_leads)
        n = M * T * n_leads
        rel_rows["i"].append(np.full(n, i))
        rel_rows["method"].append(np.repeat(np.arange(M), T * n_leads))
        rel_rows["target"].append(np.tile(np.repeat(np.arange(T), n_leads), M))
        rel_rows["lead"].append(np.tile(np.arange(n_leads), M * T))
        rel_rows["relevance"].append(np.asarray(avg.relevance, np.float32).reshape(n, K))
        rel_rows["ok"].append(np.full(n, ok))
    if not sig_rows["i"]:
        return {"beats": empty("beats"), "beats_relevance": empty("beats_relevance")}
    cat = {k: (np.concatenate(v) if k not in ("quality", "lead_used", "waves") else v) for k, v in sig_rows.items()}
    wave_cols = {k: pa.array([w[k] for w in cat["waves"]], pa.string() if k.endswith("_method") else pa.float32())
                 for k in (cat["waves"][0] if cat["waves"] else {})}
    rcat = {k: np.concatenate(v) for k, v in rel_rows.items()}
    keys = [w.record_key for w in p["wins"]]
    ids = [w.record_id for w in p["wins"]]
    wins = np.asarray([w.window for w in p["wins"]], np.int32)
    scale = row_scale(rcat["relevance"])

    def common(idx: np.ndarray) -> dict:
        return {"run_id": _dict_strings([run_id], np.zeros(len(idx))),
                "model": _dict_strings([cfg.model_name], np.zeros(len(idx))),
                "model_id": _dict_strings([cfg.model_id], np.zeros(len(idx))),
                "record_key": pa.array([keys[j] for j in idx], pa.string()),
                "record_id": pa.array([ids[j] for j in idx], pa.string()),
                "window": pa.array(wins[idx])}

    beats = pa.table({
        **common(cat["i"]),
        "lead": _dict_strings(leads, cat["lead"]),
        "offset_start_ms": pa.array(cat["start"]), "offset_step_ms": pa.array(cat["step"]),
        "signal": _lists(cat["signal"], cat["ok"]),
        "n_beats": pa.array(cat["n_beats"]), "quality": pa.array(cat["quality"], pa.string()),
        "lead_used": pa.array(cat["lead_used"], pa.string()), "heart_rate_bpm": pa.array(cat["hr"]),
        **wave_cols,
    })
    beats_rel = pa.table({
        **common(rcat["i"]),
        "method": _dict_strings(methods, rcat["method"]),
        "target": _dict_strings(targets, rcat["target"]),
        "output": _dict_strings([cfg.output], np.zeros(len(rcat["i"]))),
        "lead": _dict_strings(leads, rcat["lead"]),
        "relevance": _lists(rcat["relevance"] / scale[:, None], rcat["ok"]),
        "relevance_scale": pa.array(scale, mask=~rcat["ok"]),
    })
    return {"beats": conform(beats, "beats"), "beats_relevance": conform(beats_rel, "beats_relevance")}

"""``ecgray report OUTPUT``: a self-contained HTML report of a pipeline output.

>>> from ecgray.report import report
>>> report("s3://bucket/out/")        # -> s3://bucket/out/report/index.html + fig_*.png

Reads the reduced tables under ``<output>/reduced/`` (computing them with
:func:`ecgray.reduce.reduce` when missing, or always with ``rerun_reduce=True``),
the committed ``records`` / ``errors`` shards for the summary, and, when the
pipeline kept it, the full ``relevance`` table for one example record per
class. Figures (matplotlib, Agg-free :class:`~matplotlib.figure.Figure`):

(a) relevance vs. probability per class, misclassifications marked, binned means with CIs;
(b) per-lead bars in the clinical 12-lead layout, class-labelled vs. normal records;
(c) average beats per lead coloured by relevance (one figure per method x class);
(d) relevance heat-map of one example record per class (only with a ``relevance`` table);
"Can these explanations be trusted?": verdicts, deletion curves, randomisation and agreement
(:mod:`.trust`), from ``ecgray evaluate``'s tables when the output has them.

Unlabelled records (no labels in the input: ``label_*`` null; groups
``unlabelled_predicted_positive`` / ``unlabelled_predicted_negative`` of
:mod:`ecgray.reduce`) are drawn by the prediction instead of the label: (a)
shows them as "label unknown" dots with the bin means of both unlabelled groups,
(b) draws predicted positive vs. predicted negative next to (or, for an
unlabelled data set, instead of) labelled vs. normal, and (c) draws the beats of
the unlabelled records predicted the class with those not predicted as the
dashed reference (a second figure per method x class in a mixed data set).

Every PNG is written next to ``index.html`` and embedded in it as a data URI.
"""
from __future__ import annotations

import datetime as _dt
import posixpath

import numpy as np
import polars as pl

from ecgray.models.spec import RIBEIRO2020
from ecgray.store import output_spec, uncommitted_shards

from .html import FigureItem, Section, esc, page, table
from .trust import trust_section

__all__ = ["report", "build_report"]


def _order(values, preferred=()) -> list[str]:
    vals = list(dict.fromkeys(v for v in values if v is not None))
    return [c for c in preferred if c in vals] + sorted(v for v in vals if v not in preferred)


def _summary_section(output: str, points: pl.DataFrame) -> Section:
    from ecgray.reduce import committed_files, scan_table

    n_shards = len(committed_files(output, "records"))
    pending = uncommitted_shards(output)
    rec = scan_table(output, "records")
    n_win = n_rec = 0
    if rec is not None:
        n_win, n_rec = rec.select(pl.len(), pl.col("record_key").n_unique()).collect().row(0)
    err = scan_table(output, "errors")
    err_rows, n_err_rec = [], 0
    if err is not None:
        e = err.group_by("stage", "error_type").agg(pl.len().alias("n"), pl.col("record_key").n_unique().alias("r"))
        e = e.sort("n", "stage", "error_type", descending=[True, False, False]).collect()
        err_rows = [list(r) for r in e.iter_rows()]
        n_err_rec = err.select(pl.col("record_key").n_unique()).collect().item()
    items = [table(["run", ""], [
        ["committed shards", n_shards],
        ["uncommitted shards (ignored)", ", ".join(s[6:] for s in pending) or "none"],
        ["records ok (explained)", n_rec], ["record windows", n_win],
        ["records with errors", n_err_rec],
    ], numeric=[False, True])]
    if err_rows:
        items.append(table(["stage", "error type", "rows", "records"], err_rows, numeric=[False, False, True, True],
                           caption="errors by type"))
    else:
        items.append("<p>No errors.</p>")
    # per method x target: groups and outcomes, mean relevance per outcome
    from .figures import UNLABELLED

    groups = ["positive", "normal", "other"]
    if points.filter(pl.col("group").is_in(UNLABELLED)).height:
        groups += list(UNLABELLED)
    s = (points.group_by("method", "target")
         .agg(*[(pl.col("group") == g).sum().alias(g) for g in groups],
              *[(pl.col("outcome") == o).sum().alias(o) for o in ("TP", "FP", "FN", "TN")],
              *[pl.col("relevance_sum").filter(pl.col("outcome") == o).mean().alias(f"r_{o}")
                for o in ("TP", "FP", "FN", "TN")])
         .sort("method", "target"))
    rows = [[r["method"], r["target"], *[r[g] for g in groups],
             *[f"{r[o]} / {r['r_' + o]:+.3g}" if r[o] else "0 / –" for o in ("TP", "FP", "FN", "TN")]]
            for r in s.iter_rows(named=True)]
    heads = {"unlabelled_predicted_positive": "unlabelled, predicted", "unlabelled_predicted_negative":
             "unlabelled, not predicted"}
    items.append(table(["method", "target", *[heads.get(g, g) for g in groups], "TP n / mean rel.",
                        "FP n / mean rel.", "FN n / mean rel.", "TN n / mean rel."], rows,
                       numeric=[False, False] + [True] * (len(groups) + 4),
                       caption="record windows per group and outcome; mean record relevance per outcome"))
    intro = ("Only committed shards are read. Record relevance = sum of relevance over all leads and samples; group: "
             "positive = labelled with the class, normal = labelled normal.")
    if len(groups) > 3:
        intro += (" Unlabelled records (no labels in the input, e.g. MIMIC-IV-ECG; groups "
                  "<code>unlabelled_predicted_positive</code> / <code>unlabelled_predicted_negative</code>) have no "
                  "outcome; they are split by the model's prediction: unlabelled, predicted = probability of the "
                  "class ≥ the threshold, unlabelled, not predicted = below it.")
    return Section("Summary", intro, items)


def _top_leads(lead_rel: pl.DataFrame, k: int = 3, group: str = "positive") -> str:
    from .figures import lead_label

    d = lead_rel.filter((pl.col("group") == group) & (pl.col("rank") <= k)).sort("method", "target", "rank")
    rows = (d.group_by("method", "target", maintain_order=True)
            .agg(pl.col("lead").str.join(", "), pl.col("share_abs").sum().alias("share")))
    who = "labelled records" if group == "positive" else "unlabelled records predicted the class"
    return table(["method", "target", f"top {k} leads (mean relevance, {who})", "their share of |relevance|"],
                 [[m, t, ", ".join(lead_label(x) for x in l.split(", ")), f"{s:.0%}" if s is not None else "–"]
                  for m, t, l, s in rows.iter_rows()],
                 numeric=[False, False, False, True])


def _example_arrays(rel_lf: pl.LazyFrame, record_key: str, window: int, target: str, methods: list[str],
                    leads: list[str]):
    d = (rel_lf.filter((pl.col("record_key") == record_key) & (pl.col("window") == window) & (pl.col("target") == target))
         .select("method", "lead", "relevance").collect())
    out = {}
    for m in methods:
        dm = d.filter(method=m)
        if not dm.height:
            continue
        by_lead = {l: np.asarray(v, np.float32) for l, v in dm.select("lead", "relevance").iter_rows()}
        n = max(len(v) for v in by_lead.values())
        arr = np.full((len(leads), n), np.nan, np.float32)
        for i, l in enumerate(leads):
            if l in by_lead:
                arr[i, : len(by_lead[l])] = by_lead[l]
        out[m] = arr
    return out


def build_report(output: str, tables: dict[str, pl.DataFrame], *, threshold: float = 0.5, dpi: int = 100,
                 methods: list[str] | None = None, targets: list[str] | None = None,
                 evaluation: dict[str, pl.DataFrame] | None = None) -> tuple[str, list[FigureItem]]:
    """The HTML text and the figures (not written anywhere); ``evaluation``: the tables of
    :func:`ecgray.evaluate.summary.summarise` (None: the section says how to get them)."""
    from ecgray.reduce import scan_table

    from . import figures as F

    pts, cp, lr = tables["class_probability_points"], tables["class_probability"], tables["lead_relevance"]
    br, wr = tables["beat_relevance"], tables["wave_relevance"]
    spec = output_spec(output) or RIBEIRO2020  # classes, leads and fs of the explained model
    leads = list(spec.canonical_leads)
    methods = methods or _order(pts["method"].unique().to_list(), ())
    targets = targets or _order(pts["target"].unique().to_list(), spec.classes)
    figs: list[FigureItem] = []

    def add(fig_cap, name, alt):
        fig, cap = fig_cap
        item = FigureItem(F.to_png(fig, dpi=dpi), f"fig_{len(figs) + 1:02d}_{name}.png", cap, alt)
        figs.append(item)
        return item

    sections = [_summary_section(output, pts)]
    sec = Section("Relevance vs. probability", "Does the explanation follow the prediction?")
    for m in methods:
        sec.items.append(add(F.fig_relevance_vs_probability(pts, cp, m, targets, threshold), f"probability_{m}",
                             f"relevance vs probability, {m}"))
    sections.append(sec)
    sec = Section("Relevance per lead", "Which leads does the model use for each class?")
    for m in methods:
        sec.items.append(add(F.fig_lead_bars(lr, m, targets), f"leads_{m}", f"relevance per lead, {m}"))
    has_unlabelled = pts.filter(pl.col("group").is_in(F.UNLABELLED)).height > 0
    has_labelled = pts.filter(pl.col("group").is_in(F.LABELLED)).height > 0 or not has_unlabelled
    if has_labelled:
        sec.items.append(_top_leads(lr))
    if has_unlabelled:
        sec.items.append(_top_leads(lr, group="unlabelled_predicted_positive"))
    sections.append(sec)
    sec = Section("Average beats", "Which part of the beat carries the relevance?")
    for m in methods:
        for t in targets:
            present = set(pts.filter(method=m, target=t)["group"].unique().to_list())
            has_labelled = bool(present & set(F.LABELLED)) or not present & set(F.UNLABELLED)
            has_unlabelled = bool(present & set(F.UNLABELLED))
            if has_labelled:
                if br.filter(method=m, target=t, group="positive").height:
                    sec.items.append(add(F.fig_average_beats(br, wr, m, t), f"beats_{m}_{t}",
                                         f"average beats {t}, {m}"))
                else:
                    sec.items.append(f"<p class=\"note\">No beats of records labelled {esc(t)} ({esc(m)}).</p>")
            if has_unlabelled:
                if br.filter(method=m, target=t, group="unlabelled_predicted_positive").height:
                    sec.items.append(add(F.fig_average_beats(br, wr, m, t, group="unlabelled_predicted_positive"),
                                         f"beats_unlabelled_{m}_{t}", f"average beats {t}, {m}, unlabelled records"))
                else:
                    sec.items.append(f"<p class=\"note\">No beats of unlabelled records predicted {esc(t)} "
                                     f"(probability ≥ {threshold:g}; {esc(m)}).</p>")
    sections.append(sec)
    sec = Section("Example records", "")
    rel = scan_table(output, "relevance")
    if rel is None:
        sec.items.append("<p class=\"note\">No per-sample <code>relevance</code> table in this output (the pipeline "
                         "ran without <code>--keep-relevance</code>), so no example heat-maps.</p>")
    else:
        m0 = methods[0]
        for t in targets:
            have = rel.filter(pl.col("target") == t).select("record_key", "window").unique().collect()
            cand = (pts.filter(method=m0, target=t).join(have, on=["record_key", "window"], how="inner")
                    .with_columns((pl.col("group") == "positive").alias("_pos"))
                    .sort(["_pos", "probability", "record_id", "record_key"], descending=[True, True, False, False],
                          nulls_last=True))
            if not cand.height:
                sec.items.append(f"<p class=\"note\">No record with per-sample relevance for {esc(t)}.</p>")
                continue
            r = cand.row(0, named=True)
            arrays = _example_arrays(rel, r["record_key"], r["window"], t, methods, leads)
            info = (f"{r['record_key']}, window {r['window']}, p({t}) = {r['probability']:.2f}, group {r['group']}, "
                    f"outcome {r['outcome'] or 'unknown'}")
            sec.items.append(add(F.fig_example(arrays, r["record_id"], t, info, spec.fs, leads), f"example_{t}", f"example {t}"))
    sections.append(sec)
    sections.append(trust_section(evaluation, add))
    meta = (f"output <code>{esc(output)}</code> · methods {esc(', '.join(methods))} · classes {esc(', '.join(targets))}"
            f" · model input {len(leads)} leads ({esc(', '.join(F.lead_label(x) for x in leads))}), "
            f"{spec.fs:g} Hz × {spec.n_samples} samples, {esc(spec.activation)}"
            f" · generated {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC}")
    return page("ecgray report", meta, sections), figs


def report(output: str, *, dest: str | None = None, threshold: float = 0.5, rerun_reduce: bool = False,
           reduce_kwargs: dict | None = None, dpi: int = 100, methods: list[str] | None = None,
           targets: list[str] | None = None) -> str:
    """Write ``<dest or output/report>/index.html`` and its PNGs; returns the index.html path/URI.

    ``methods`` / ``targets`` restrict the figures (default: all in the reduced tables).
    """
    from ecgray.io.fs import is_s3, join, open_fs
    from ecgray.reduce import read_reduced, reduce

    tables = None if rerun_reduce else read_reduced(output)
    if tables is None:
        tables = reduce(output, threshold=threshold, **(reduce_kwargs or {}))
    evaluation = None
    from ecgray.evaluate.summary import has_evaluation, read_ground_truth, read_summary, summarise

    if has_evaluation(output):
        evaluation = (None if rerun_reduce else read_summary(output)) or summarise(output)
    truth = read_ground_truth(output)
    if truth is not None:
        evaluation = {**(evaluation or {}), "ground_truth": truth}
    text, figs = build_report(output, tables, threshold=threshold, dpi=dpi, methods=methods, targets=targets,
                              evaluation=evaluation)
    dest = dest or join(output, "report")
    fs, root = open_fs(dest)
    if not is_s3(dest):
        fs.makedirs(root, exist_ok=True)
    for f in figs:
        with fs.open(posixpath.join(root, f.filename), "wb") as fh:
            fh.write(f.png)
    with fs.open(posixpath.join(root, "index.html"), "wb") as fh:
        fh.write(text.encode("utf-8"))
    return join(dest, "index.html")

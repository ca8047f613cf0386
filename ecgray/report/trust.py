"""The report section "Can these explanations be trusted?" from an evaluation's data-set tables
(:mod:`ecgray.evaluate.summary`): deletion curves, randomisation curves, agreement heat maps, verdicts."""
from __future__ import annotations

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from .html import Section, esc, table

ORDER_STYLE = {"morf": ("#d62728", "most relevant first (MoRF)"), "lerf": ("#1f5fa8", "least relevant first (LeRF)"),
               "random": ("#555555", "random order")}
INTRO = ("Each map is tested three ways (<code>ecgray evaluate</code>; numbers per record in "
         "<code>evaluation/</code>, data-set tables in <code>reduced/evaluation_*.parquet</code>). "
         "<b>Faithfulness:</b> blocks of the record (one lead × a few tens of ms) are removed in order of "
         "relevance; a faithful map makes the target's logit fall faster than removing them in random order. "
         "<b>Randomisation:</b> the model's weights are re-initialised from the output layer down; a map that "
         "still looks the same explains the input, not what the model learned. <b>Agreement:</b> rank correlation "
         "of the maps of different methods (and models) for the same record and class. Read the three together: a "
         "single number can mislead in both directions.")


def fig_deletion(curves: pl.DataFrame, method: str, targets: list[str], replacement: str):
    d = curves.filter(method=method, replacement=replacement)
    n = len(targets)
    ncols = min(3, n)
    nrows = (n + ncols - 1) // ncols
    fig = Figure(figsize=(4.6 * ncols, 3.4 * nrows + 0.6))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, t in zip(axes, targets):
        dt = d.filter(target=t)
        for o, (colour, label) in ORDER_STYLE.items():
            do = dt.filter(order=o).sort("step")
            if not do.height:
                continue
            f, z = do["fraction"].to_numpy(), do["logit"].to_numpy()
            lo, hi = do["ci_low"].to_numpy(), do["ci_high"].to_numpy()
            ax.plot(f, z, color=colour, lw=1.6, label=label, marker="o", ms=3)
            ok = np.isfinite(lo) & np.isfinite(hi)
            if ok.any():
                ax.fill_between(f[ok], lo[ok], hi[ok], color=colour, alpha=0.15, lw=0)
        n_rec = int(dt.filter(order="morf", step=0)["n"].sum()) if dt.height else 0
        ax.set_title(f"{t} (n = {n_rec})", fontsize=11, fontweight="bold")
        ax.set_xlabel("share of blocks removed")
        ax.set_ylabel(f"mean logit of {t}")
        ax.grid(alpha=0.3)
    for ax in axes[n:]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=3, frameon=False, bbox_to_anchor=(0.5, 0.995))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.1, top=0.86 if nrows == 1 else 0.9, hspace=0.5, wspace=0.3)
    caption = (f"<b>Deletion curves ({esc(method)}, replacement {esc(replacement)})</b>: mean logit of the class "
               "after removing a growing share of the record's blocks, most relevant first (red), least relevant "
               "first (blue) and in random order (grey), with 95 % CIs; records evaluated for the class (predicted "
               "or labelled). <i>Read off:</i> a faithful map puts the red curve well below the grey one.")
    return fig, caption


def fig_randomisation(rand: pl.DataFrame, methods: list[str]):
    c = rand.filter(test="cascading")
    fig = Figure(figsize=(10, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]
    layers: list[str] = []
    for i, m in enumerate(methods):
        dm = (c.filter(method=m).group_by("step").agg(pl.col("layer").first(), pl.col("spearman_abs").mean(),
                                                      pl.col("spearman_signed").mean()).sort("step"))
        if not dm.height:
            continue
        if len(dm) > len(layers):
            layers = dm["layer"].to_list()
        steps = dm["step"].to_numpy()
        for ax, col in zip(axes, ("spearman_abs", "spearman_signed")):
            ax.plot(steps, dm[col].to_numpy(), marker="o", ms=3, color=colours[i % len(colours)], label=m)
    for ax, title in zip(axes, ("Spearman of |R| with the original map", "Spearman of signed R")):
        ax.axhline(0.3, color="k", ls=":", lw=0.8)
        ax.axhline(0.0, color="k", lw=0.5)
        ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=8)
        ax.set_xlabel("randomised down to (cumulative, from the output)")
        ax.set_title(title, fontsize=11)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(-0.2, 1.05)
    axes[0].legend(fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.3, top=0.9, wspace=0.08)
    caption = ("<b>Cascading model-parameter randomisation</b>: the model's units are re-initialised one after the "
               "other from the output layer down; each point is the mean rank correlation (over records and classes) "
               "between the map of the randomised model and the original map. <i>Read off:</i> a map that explains "
               "the learned model falls towards 0 (dotted line: 0.3, the verdict's bound); a map that stays high "
               "follows the input signal rather than the weights.")
    return fig, caption


def fig_agreement(agree: pl.DataFrame, kind: str = "methods", method: str | None = None):
    d = agree.filter(kind=kind) if method is None else agree.filter(kind=kind, method=method)
    names = list(dict.fromkeys(d["a"].to_list() + d["b"].to_list()))
    k = len(names)
    mat = np.eye(k)
    for r in d.iter_rows(named=True):
        i, j = names.index(r["a"]), names.index(r["b"])
        mat[i, j] = mat[j, i] = np.nan if r["spearman_abs"] is None else r["spearman_abs"]
    fig = Figure(figsize=(1.0 * k + 3.0, 0.8 * k + 2.0), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(mat, vmin=-1, vmax=1, cmap="RdBu_r")
    for i in range(k):
        for j in range(k):
            v = mat[i, j]
            ax.text(j, i, "–" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=9,
                    color="white" if np.isfinite(v) and abs(v) > 0.6 else "black")
    short = [n.replace("integrated_gradients", "IG").replace("_", " ") for n in names]
    ax.set_xticks(range(k), short, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), short, fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8, label="mean Spearman of |R|")
    what = "methods" if kind == "methods" else f"models ({method})"
    ax.set_title(f"agreement between {what}", fontsize=11)
    caption = (f"<b>Agreement between {esc(what)}</b>: mean rank correlation of |R| over all cells of the same record "
               "and class, averaged over records and classes. <i>Read off:</i> conclusions that only one method "
               "supports deserve doubt.")
    return fig, caption


def _ground_truth_table(gt: pl.DataFrame) -> str:
    f = lambda v, fmt: "–" if v is None else format(v, fmt)  # noqa: E731
    rows = [[r["method"], r["target"], r["n_records"], f(r["feature_frac_drop"], ".0%"),
             f(r["feature_median_drop"], "+.2f"), f(r["control_median_drop"], "+.2f"), f(r["density_ratio"], ".2f"),
             f(r["signed_share"], ".2f"), f(r["frac_cells_in"], ".2f"), f(r["rma"], ".2f"), f(r["rra"], ".2f"),
             f(r["auc_pr"], ".2f")] for r in gt.sort("target", "method").iter_rows(named=True)]
    seed = gt["seed"][0]
    return ("<p>Ground truth (held-out synthetic records, seed " + esc(seed) + ", correctly classified; "
            "<code>ecgray check</code>): removing the planted feature vs the same signal energy elsewhere, and "
            "where the relevance lies relative to the planted windows (chance: the share of cells inside).</p>"
            + table(["method", "class", "n", "feature removed: logit drops", "median drop", "elsewhere: median drop",
                     "density in/out", "signed share", "cells in", "RMA", "RRA", "AUC-PR"], rows,
                    numeric=[False, False] + [True] * 10, caption="ground truth per method × class"))


def trust_section(tables: dict[str, pl.DataFrame] | None, add) -> Section:
    """The section; ``add((fig, caption), name, alt)`` registers a figure (see ``build_report``)."""
    sec = Section("Can these explanations be trusted?", INTRO)
    gt = (tables or {}).get("ground_truth")
    if gt is not None and gt.height:
        sec.items.append(_ground_truth_table(gt))
    if not tables or set(tables) == {"ground_truth"}:
        sec.items.append("<p class=\"note\">No evaluation in this output: run <code>ecgray evaluate OUTPUT "
                         "--sample 20</code> (then <code>ecgray report</code> again) for deletion curves, "
                         "randomisation checks and agreement between methods.</p>")
        return sec
    v = tables.get("evaluation_verdicts")
    if v is not None and v.height:
        sec.items.append(table(["method", "class", "faithful", "randomisation", "class-sensitive", "trust", "numbers"],
                               [[r["method"], r["target"], r["faithful"], r["randomisation"], r["class_sensitive"],
                                 r["trust"], r["verdict"].split(" — ", 1)[-1]] for r in v.iter_rows(named=True)],
                               caption="verdict per method × class"))
    curves = tables.get("evaluation_deletion")
    if curves is not None and curves.height:
        for m in list(dict.fromkeys(curves["method"].to_list())):
            dm = curves.filter(method=m)
            targets = list(dict.fromkeys(dm.sort("target")["target"].to_list()))
            for rep in list(dict.fromkeys(dm["replacement"].to_list())):
                sec.items.append(add(fig_deletion(curves, m, targets, rep), f"deletion_{m}_{rep}",
                                     f"deletion curves, {m}"))
    rand = tables.get("evaluation_randomisation")
    if rand is not None and rand.filter(test="cascading").height:
        methods = list(dict.fromkeys(rand["method"].to_list()))
        sec.items.append(add(fig_randomisation(rand, methods), "randomisation", "model-parameter randomisation"))
    agree = tables.get("evaluation_agreement")
    if agree is not None and agree.filter(kind="methods").height:
        sec.items.append(add(fig_agreement(agree, "methods"), "agreement_methods", "agreement between methods"))
    if agree is not None and agree.filter(kind="models").height:
        for m in list(dict.fromkeys(agree.filter(kind="models")["method"].to_list())):
            sec.items.append(add(fig_agreement(agree, "models", m), f"agreement_models_{m}",
                                 f"agreement between models, {m}"))
    return sec

"""Matplotlib figures of the report, built on :class:`matplotlib.figure.Figure` (no pyplot, no GUI:
safe in worker threads and headless machines). Each ``fig_*`` returns ``(Figure, caption)``."""
from __future__ import annotations

import io

import numpy as np
import polars as pl
from matplotlib.collections import LineCollection
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ecgray.reduce import LABELLED_GROUPS as LABELLED
from ecgray.reduce import UNLABELLED_GROUPS as UNLABELLED

# Clinical 12-lead printout: rows I/aVR/V1/V4, II/aVL/V2/V5, III/aVF/V3/V6.
CLINICAL_LAYOUT = (("DI", "AVR", "V1", "V4"), ("DII", "AVL", "V2", "V5"), ("DIII", "AVF", "V3", "V6"))
LEAD_LABEL = {"DI": "I", "DII": "II", "DIII": "III", "AVR": "aVR", "AVL": "aVL", "AVF": "aVF"}
#: group -> (colour, legend label); ``{target}`` in a label is the class (``"the class"`` where several are drawn)
GROUP_STYLE = {"positive": ("#1f5fa8", "labelled with the class"), "normal": ("#2e8b57", "normal"),
               "other": ("#8c8c8c", "other"),
               "unlabelled_predicted_positive": ("#7b3294", "unlabelled, predicted {target}"),
               "unlabelled_predicted_negative": ("#a6761d", "unlabelled, not predicted")}
#: colour names of the groups, for captions
GROUP_COLOUR_NAME = {"positive": "blue", "normal": "green", "other": "grey", "unlabelled_predicted_positive": "purple",
                     "unlabelled_predicted_negative": "brown"}
OUTCOME_STYLE = {  # marker, colour, size, label
    "TN": ("o", "#b0b0b0", 10, "TN"), "TP": ("o", "#1f5fa8", 16, "TP"),
    "FP": ("x", "#d62728", 36, "FP (false positive)"), "FN": ("v", "#ff7f0e", 36, "FN (false negative)"),
    None: ("D", "#8c8c8c", 12, "label unknown"),
}
CMAP = "RdBu_r"  # diverging: blue = negative relevance, red = positive, white = 0


def lead_label(lead: str) -> str:
    return LEAD_LABEL.get(lead, lead)


def group_label(group: str, target: str | None = None) -> str:
    """Legend label of a group (``target``: the class, when one is drawn)."""
    return GROUP_STYLE[group][1].format(target=target or "the class")


def _group_list(groups, target: str | None = None) -> str:
    """Caption text naming the groups drawn and their colours: ``blue = labelled with the class, ...``."""
    return ", ".join(f"{GROUP_COLOUR_NAME[g]} = {group_label(g, target)}" for g in groups)


def drawn_groups(groups_present) -> tuple[str, ...]:
    """The pairs a figure compares, from the groups present: labelled (positive vs. normal) when any labelled
    record is there, unlabelled (predicted positive vs. predicted negative) when any unlabelled one is; both
    for a mixed data set."""
    present = set(groups_present)
    out: tuple[str, ...] = ()
    if present & set(LABELLED) or not present & set(UNLABELLED):
        out += ("positive", "normal")
    if present & set(UNLABELLED):
        out += UNLABELLED
    return out


def to_png(fig: Figure, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")  # fixed layouts: no bbox_inches="tight" (2x draw)
    return buf.getvalue()


def _grid(n: int, ncols: int = 3):
    ncols = max(1, min(ncols, n))
    return (n + ncols - 1) // ncols, ncols


# ------------------------------------------------------------------------- (a) relevance vs probability
def fig_relevance_vs_probability(points: pl.DataFrame, binned: pl.DataFrame, method: str, targets: list[str],
                                 threshold: float = 0.5):
    nrows, ncols = _grid(len(targets))
    W, H = 5.4 * ncols + 0.4, 4.2 * nrows + 1.2
    fig = Figure(figsize=(W, H))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, t in zip(axes, targets):
        d = points.filter(method=method, target=t)
        for outcome, (mk, col, size, label) in OUTCOME_STYLE.items():
            sel = d.filter(pl.col("outcome").is_null() if outcome is None else pl.col("outcome") == outcome)
            if sel.height:
                ax.scatter(sel["probability"].to_numpy(), sel["relevance_sum"].to_numpy(), marker=mk, c=col, s=size,
                           linewidths=1.2 if mk in "xv" else 0.3, zorder=3 if outcome in ("FP", "FN") else 2,
                           label=f"{label} (n={sel.height})")
        b = binned.filter(method=method, target=t)
        for g, (col, _) in GROUP_STYLE.items():
            bg = b.filter(group=g).sort("bin")
            glabel = group_label(g)
            if bg.height:
                x = ((bg["bin_low"] + bg["bin_high"]) / 2).to_numpy()
                y = bg["mean_relevance_sum"].to_numpy()
                err = np.vstack([y - bg["ci_low"].to_numpy(), bg["ci_high"].to_numpy() - y])
                ax.errorbar(x, y, yerr=np.clip(err, 0, None), color=col, lw=1.6, capsize=3, marker="s", ms=4,
                            label=f"bin mean, {glabel}", zorder=4)
        ax.axhline(0, color="k", lw=0.6)
        ax.axvline(threshold, color="k", lw=0.8, ls="--")
        stats = (d.filter(pl.col("outcome").is_not_null()).group_by("outcome")
                 .agg(pl.len().alias("n"), pl.col("relevance_sum").mean().alias("m")))
        lines = [f"{r['outcome']}: mean {r['m']:+.3g} (n={r['n']})" for r in stats.sort("outcome").iter_rows(named=True)]
        unl = (d.filter(pl.col("group").is_in(UNLABELLED)).group_by("group")
               .agg(pl.len().alias("n"), pl.col("relevance_sum").mean().alias("m")))
        short = {"unlabelled_predicted_positive": "unlab. pred. +", "unlabelled_predicted_negative": "unlab. pred. −"}
        lines += [f"{short[r['group']]}: mean {r['m']:+.3g} (n={r['n']})"
                  for r in unl.sort("group", descending=True).iter_rows(named=True)]
        txt = "\n".join(lines)
        if txt:
            ax.text(0.02, 0.98, txt, transform=ax.transAxes, va="top", ha="left", fontsize=8,
                    bbox=dict(boxstyle="round", fc="white", ec="0.7", alpha=0.9))
        ax.set_xlim(-0.02, 1.02)
        ax.set_title(f"{t}  ({method})")
        ax.set_xlabel(f"model probability of {t}")
        ax.set_ylabel("record relevance (sum over leads)")
        ax.grid(alpha=0.3)
    for ax in axes[len(targets):]:
        ax.set_visible(False)
    seen = {}
    for ax in axes[: len(targets)]:
        for h, l in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(l.split(" (n=")[0], h)
    fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=4, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.005))
    fig.subplots_adjust(left=0.75 / W, right=1 - 0.2 / W, top=1 - 0.4 / H, bottom=1.3 / H,
                        hspace=0.9 / 4.2, wspace=0.25)
    sel = binned.filter(method=method)
    groups = [g for g in GROUP_STYLE if sel.filter(group=g).height] or list(LABELLED)
    unlabelled = [g for g in groups if g in UNLABELLED]
    caption = (f"<b>Relevance vs. probability ({method}).</b> One dot per record window: x = the model's probability of "
               f"the class, y = the record's total relevance for the class (sum of relevance over all the model's leads and "
               f"samples). Misclassifications at threshold {threshold:g} (dashed line) are marked: red × = false "
               "positive, orange ▼ = false negative. Squares with error bars: mean per probability bin with a 95 % "
               f"bootstrap CI, per group ({_group_list(groups)}). ")
    if unlabelled:
        caption += ("Unlabelled records (no labels in the input) have no outcome: they are the grey "
                    "“label unknown” diamonds, and their bin means are split by the prediction (probability ≥ "
                    f"{threshold:g}: predicted the class; below: not predicted). ")
    caption += ("<i>Read off:</i> whether relevance rises with the probability, and whether it stays near zero for "
                "false classifications (the box gives the mean relevance per outcome TP/FP/FN/TN"
                + (", and per unlabelled group" if unlabelled else "") + ").")
    return fig, caption


def absent_lead(ax, lead: str) -> None:
    """A panel of the clinical layout for a lead the model does not take: named, empty, marked so."""
    ax.set_axis_off()
    ax.set_title(lead_label(lead), fontsize=12, fontweight="bold", color="0.6")
    ax.text(0.5, 0.5, "not an input\nof the model", ha="center", va="center", color="0.5", fontsize=10,
            transform=ax.transAxes)


# ------------------------------------------------------------------------------- (b) per-lead bars
def fig_lead_bars(lead_rel: pl.DataFrame, method: str, targets: list[str], groups=None):
    """``groups``: the bars per class; default :func:`drawn_groups` of the method's groups (positive vs. normal,
    and unlabelled predicted positive vs. predicted negative when the data set has unlabelled records)."""
    fig = Figure(figsize=(15, 10))
    axes = fig.subplots(3, 4, sharey=True)
    d = lead_rel.filter(method=method)
    groups = tuple(groups) if groups is not None else drawn_groups(d["group"].unique().to_list())
    x = np.arange(len(targets))
    width = 0.8 / len(groups)
    present = set(d["lead"].unique().to_list())
    for r, row in enumerate(CLINICAL_LAYOUT):
        for c, lead in enumerate(row):
            ax = axes[r, c]
            if present and lead not in present:
                absent_lead(ax, lead)
                continue
            for gi, g in enumerate(groups):
                dg = d.filter(lead=lead, group=g)
                means = np.full(len(targets), np.nan)
                lo = np.full(len(targets), np.nan)
                hi = np.full(len(targets), np.nan)
                for ti, t in enumerate(targets):
                    row_t = dg.filter(target=t)
                    if row_t.height:
                        means[ti], lo[ti], hi[ti] = row_t.select("mean_relevance", "ci_low", "ci_high").row(0)
                err = np.vstack([means - lo, hi - means])
                err = np.where(np.isfinite(err), np.clip(err, 0, None), 0)
                ax.bar(x + (gi - (len(groups) - 1) / 2) * width, np.nan_to_num(means), width, yerr=err, capsize=2,
                       color=GROUP_STYLE[g][0], alpha=0.85, label=group_label(g), error_kw=dict(lw=0.8))
            ax.axhline(0, color="k", lw=0.6)
            ax.set_title(lead_label(lead), fontsize=12, fontweight="bold")
            ax.set_xticks(x, targets, fontsize=8, rotation=0)
            ax.grid(axis="y", alpha=0.3)
            if c == 0:
                ax.set_ylabel("mean lead relevance")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(groups), frameon=False, bbox_to_anchor=(0.5, 0.955))
    fig.suptitle(f"Relevance per lead ({method})", y=0.985)
    fig.subplots_adjust(left=0.06, right=0.985, bottom=0.05, top=0.885, hspace=0.35, wspace=0.08)
    pairs = []
    if "positive" in groups or "normal" in groups:
        pairs.append("in records labelled with that class (blue) vs. normal records (green)")
    if set(UNLABELLED) & set(groups):
        pairs.append("in unlabelled records the model predicts the class for (probability ≥ threshold; purple) vs. "
                     "unlabelled records it does not (brown)")
    caption = (f"<b>Relevance per lead ({method}), clinical 12-lead layout</b> (rows I, aVR, V1, V4 / II, aVL, V2, V5 / "
               "III, aVF, V3, V6; a lead the model does not take is marked so). In each lead: mean relevance of the lead (sum over its samples) for each target "
               f"class, {'; and '.join(pairs)}, with 95 % CIs (normal approximation, mean ± 1.96·sd/√n). "
               "<i>Read off:</i> which leads carry the evidence for a class ("
               + ("tall blue bars, well above the green ones" if "positive" in groups else
                  "tall purple bars, well above the brown ones")
               + "), e.g. whether LBBB/RBBB decisions rest on V1/V6 and aVL, and AF decisions on the rhythm leads "
               "II/V1.")
    return fig, caption


# ----------------------------------------------------------------------------- (c) average beats
def fig_average_beats(beat_rel: pl.DataFrame, wave_rel: pl.DataFrame, method: str, target: str,
                      group: str = "positive", waves: dict | None = None, reference: str | None = None):
    """``group``: the records whose beats are drawn in colour; ``reference``: the group drawn as a dashed
    reference (default: ``"normal"``, or ``"unlabelled_predicted_negative"`` for
    ``group="unlabelled_predicted_positive"``)."""
    from ecgray.reduce import WAVES

    waves = waves or WAVES
    if reference is None:
        reference = "unlabelled_predicted_negative" if group in UNLABELLED else "normal"
    d = beat_rel.filter(method=method, target=target)
    dg = d.filter(group=group)
    dn = d.filter(group=reference)
    vmax = float(np.nanmax(np.abs(dg["mean_relevance"].to_numpy()))) if dg.height else 1.0
    vmax = vmax if np.isfinite(vmax) and vmax > 0 else 1.0
    norm = TwoSlopeNorm(vmin=-vmax, vcenter=0.0, vmax=vmax)
    fig = Figure(figsize=(15, 9.5))
    axes = fig.subplots(3, 4, sharex=True)
    fig.subplots_adjust(left=0.05, right=0.9, bottom=0.07, top=0.88, hspace=0.3, wspace=0.22)
    lc = None
    n_rec = int(dg["n"].max()) if dg.height else 0
    present = set(beat_rel.filter(method=method, target=target)["lead"].unique().to_list())
    for r, row in enumerate(CLINICAL_LAYOUT):
        for c, lead in enumerate(row):
            ax = axes[r, c]
            if present and lead not in present:
                absent_lead(ax, lead)
                continue
            for i, (name, (a, b)) in enumerate(waves.items()):
                ax.axvspan(a, b, color=("#f2e6ff", "#fff2cc", "#e6f7ff")[i % 3], alpha=0.7, lw=0, zorder=0)
            nl = dn.filter(lead=lead).sort("offset_ms")
            if nl.height:
                ax.plot(nl["offset_ms"].to_numpy(), nl["mean_signal"].to_numpy(), color="0.55", lw=1.0, ls="--",
                        zorder=1)
            gl = dg.filter(lead=lead).sort("offset_ms")
            if gl.height:
                x = gl["offset_ms"].to_numpy().astype(float)
                y = gl["mean_signal"].to_numpy()
                rel = gl["mean_relevance"].to_numpy()
                ax.plot(x, y, color="0.25", lw=0.7, zorder=2)  # keeps the shape visible where relevance ~ 0
                segs = np.stack([np.column_stack([x[:-1], y[:-1]]), np.column_stack([x[1:], y[1:]])], axis=1)
                lc = LineCollection(segs, cmap=CMAP, norm=norm, linewidths=2.6, zorder=3)
                lc.set_array((rel[:-1] + rel[1:]) / 2)
                ax.add_collection(lc)
                ax.fill_between(x, gl["signal_ci_low"].to_numpy(), gl["signal_ci_high"].to_numpy(), color="k",
                                alpha=0.08, lw=0, zorder=1)
                ax.autoscale_view()
            w = wave_rel.filter(method=method, target=target, group=group, lead=lead)
            if w.height:
                txt = "  ".join(f"{wv}{sg}" for wv, sg in w.select("wave", "sign").iter_rows())
                ax.text(0.98, 0.96, txt, transform=ax.transAxes, fontsize=8, va="top", ha="right",
                        bbox=dict(boxstyle="round", fc="white", ec="0.8", alpha=0.85))
            ax.set_title(lead_label(lead), fontsize=12, fontweight="bold")
            ax.grid(alpha=0.25)
            if r == 2:
                ax.set_xlabel("ms from R-peak")
    if lc is not None:
        cb = fig.colorbar(lc, cax=fig.add_axes((0.92, 0.25, 0.012, 0.5)))
        cb.set_label("mean relevance (per sample)")
    what = {"positive": f"records labelled {target}", "normal": "normal records", "other": "other records",
            "unlabelled_predicted_positive": f"unlabelled records predicted {target}",
            "unlabelled_predicted_negative": f"unlabelled records not predicted {target}"}
    n_ref = int(dn["n"].max()) if dn.height else 0
    handles = [Line2D([], [], color="tab:red", lw=2.6, label=f"{what[group]}: average beat coloured by relevance"),
               Line2D([], [], color="0.55", lw=1, ls="--", label=f"{what[reference]}: average beat")]
    fig.legend(handles=handles, loc="upper center", ncol=2, frameon=False, bbox_to_anchor=(0.475, 0.955))
    fig.suptitle(f"Average beats, {target} ({method}; {n_rec} {what[group]}, {n_ref} {what[reference]})",
                 x=0.475, y=0.985)
    pred = (f" (unlabelled: the input has no labels for them; predicted = model probability of {target} ≥ the "
            "threshold)" if group in UNLABELLED or reference in UNLABELLED else "")
    ref_txt = (f"the dashed grey line the average beat of the {what[reference]}" if dn.height else
               f"no dashed line: no beats of {what[reference]}")
    caption = (f"<b>Average beats for {target} ({method}).</b> Per lead, the average beat (−300…+500 ms around the "
               f"R-peak) of the {what[group]}{pred}, averaged over records, drawn in colour by its mean relevance "
               "for the class (red = evidence for, blue = against, white = none; colour scale centred at 0); the "
               f"grey band is the signal's 95 % CI and {ref_txt}. Shaded "
               "windows: the fixed reference windows P (−250…−100 ms), QRS (−50…+60 ms), T (+120…+400 ms); the box "
               "gives the sign of the mean wave relevance (+/− when its 95 % CI excludes 0, else 0), each record's "
               "relevance averaged over its own delineated P, QRS and T (ecgray.delineate), the fixed window only "
               f"where a wave was not delineated{_delineated_txt(wave_rel, method, target, group)}. "
               "<i>Read off:</i> which part of the beat (P wave, QRS, ST-T) in which lead drives the decision, and how the beat differs from "
               + ("normal" if reference == "normal" else f"the {what[reference]}") + " there.")
    return fig, caption


def _delineated_txt(wave_rel: pl.DataFrame, method: str, target: str, group: str) -> str:
    """Caption text: per wave, in how many of the group's records it was delineated (wave_relevance n_delineated)."""
    if "n_delineated" not in wave_rel.columns:
        return ""
    w = (wave_rel.filter(method=method, target=target, group=group)
         .group_by("wave", maintain_order=True).agg(pl.col("n_delineated").max(), pl.col("n").max()))
    if not w.height:
        return ""
    return " (delineated: " + ", ".join(f"{wv} {d}/{n}" for wv, d, n in w.iter_rows()) + " records)"


# --------------------------------------------------------------------------- (d) example heat-maps
def fig_example(rel: dict[str, np.ndarray], record: str, target: str, info: str, fs: float, leads: list[str]):
    """``rel``: ``{method: array (n_leads, n_samples)}``, rows in the order of ``leads`` (canonical names);
    ``fs``: the model's sampling rate."""
    methods = list(rel)
    H = 3.4 * len(methods) + 1.2
    fig = Figure(figsize=(14, H))
    axes = np.atleast_1d(fig.subplots(len(methods), 1, squeeze=False)).ravel()
    fig.subplots_adjust(left=0.06, right=0.99, top=1 - 0.75 / H, bottom=0.55 / H, hspace=0.5 / 3.4)
    for ax, m in zip(axes, methods):
        a = np.asarray(rel[m], float)
        vmax = float(np.nanpercentile(np.abs(a), 99)) if a.size else 1.0
        vmax = vmax if np.isfinite(vmax) and vmax > 0 else 1.0
        im = ax.imshow(a, aspect="auto", cmap=CMAP, norm=TwoSlopeNorm(vmin=-vmax, vcenter=0, vmax=vmax),
                       extent=(0, a.shape[1] / fs, a.shape[0] - 0.5, -0.5), interpolation="nearest")
        ax.set_yticks(np.arange(a.shape[0]), [lead_label(l) for l in leads[: a.shape[0]]])
        ax.set_title(f"{m}", fontsize=10, loc="left")
        fig.colorbar(im, ax=ax, pad=0.01, label="relevance")
    axes[-1].set_xlabel("time (s)")
    fig.suptitle(f"{target}: record {record} — {info}", y=1 - 0.15 / H)
    caption = (f"<b>Example record for {target}</b> ({record}; {info}). Heat-map of the per-sample relevance for "
               f"{target} over the model's {len(leads)} leads (rows) and time (x), one panel per attribution method; red = evidence "
               "for the class, blue = against, colour scale centred at 0 and clipped at the 99th percentile of |r|. "
               "<i>Read off:</i> whether the relevance sits on specific beats/waves and leads (plausible) or is "
               "spread as noise, and whether the methods agree.")
    return fig, caption

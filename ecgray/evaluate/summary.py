"""The data-set-level tables of an evaluation and a one-line verdict per method x class.

Written by ``ecgray reduce`` (when ``<output>/evaluation`` exists) to ``<output>/reduced/<name>.parquet``
(schemas: :data:`ecgray.schemas.evaluation.EVALUATION_SUMMARY_TABLES`); read by the report's section
"Can these explanations be trusted?". Means over record windows with 95 % normal-approximation CIs
(``mean +- 1.96 sd / sqrt(n)``).

Verdict rules (:func:`verdicts`), per method x target:

* ``faithful``: ``yes`` when the CI of ``random_minus_morf`` (random-order minus MoRF deletion area,
  logit units) lies above 0, ``no`` when it lies below 0 or touches it from below with a mean <= 0,
  else ``undecided``; a target with fewer than :data:`MIN_N` record windows is ``too few records``
  (and so is its trust);
* ``randomisation``: ``passes`` when, for the fully randomised model, the mean Spearman correlation with
  the original map is below :data:`RANDOMISED_MAX` (0.3) for both ``|R|`` and signed ``R``; ``sign
  only`` when only the signed one is (the map's *magnitude* then follows the input, not the learned
  weights -- IG and InputXGradient multiply by the input); else ``fails``;
* ``class_sensitive`` (random logit): ``passes`` when the map of a random other class correlates
  (Spearman ``|R|``) below :data:`RANDOM_LOGIT_MAX` (0.5) with the target's map, else ``fails``;
* ``trust``: ``no`` when faithful is ``no``; ``yes`` when faithful is ``yes``, randomisation
  ``passes`` and the map is class-sensitive (or that was not measured); ``partly`` when faithful is
  ``yes`` otherwise, or undecided / not measured with randomisation ``passes``; else ``no``.
"""
from __future__ import annotations

import posixpath

import polars as pl

from ecgray.schemas.evaluation import EVALUATION_SUMMARY_NAMES, GROUND_TRUTH
from ecgray.schemas.tables import conform

Z95 = 1.959963984540054
RANDOMISED_MAX = 0.3
RANDOM_LOGIT_MAX = 0.5
MIN_N = 3
TOO_FEW = "too few records"


def _ci(col: str, prefix: str = "") -> list[pl.Expr]:
    half = Z95 * pl.col(col).std() / pl.col(col).count().cast(pl.Float64).sqrt()
    return [(pl.col(col).mean() - half).alias(f"{prefix}ci_low"), (pl.col(col).mean() + half).alias(f"{prefix}ci_high")]


def _scan(output: str, name: str) -> pl.LazyFrame | None:
    from ecgray.io.fs import storage_options
    from ecgray.store import Store, evaluation_root

    store = Store(evaluation_root(output))
    files = []
    for _, marker in sorted(store.commits().items()):
        rel = marker.get("files", {}).get(name)
        if rel is not None:
            path = posixpath.join(store.path, rel)
            files.append(f"s3://{path}" if store.s3 else path)
    if not files:
        return None
    return pl.scan_parquet(files, storage_options=storage_options(output), hive_partitioning=False)


def has_evaluation(output: str) -> bool:
    return _scan(output, "faithfulness") is not None or _scan(output, "randomisation") is not None \
        or _scan(output, "agreement") is not None


def _sim_aggs() -> list[pl.Expr]:
    return [pl.len().alias("n"), pl.col("spearman_abs").mean(), *[e.name.prefix("spearman_abs_")
                                                                  for e in _ci("spearman_abs")],
            pl.col("spearman_signed").mean(), pl.col("topk_overlap").mean()]


def summarise(output: str) -> dict[str, pl.DataFrame]:
    """The evaluation's data-set tables (:data:`EVALUATION_SUMMARY_NAMES`; empty frames for tests not run)."""
    out: dict[str, pl.DataFrame] = {}
    f = _scan(output, "faithfulness")
    keys = ["method", "target", "replacement", "segments"]
    if f is not None:
        out["evaluation_faithfulness"] = (f.group_by(keys).agg(
            pl.len().alias("n"), pl.col("random_minus_morf").mean(), *_ci("random_minus_morf"),
            (pl.col("random_minus_morf") > 0).mean().alias("frac_morf_faster"), pl.col("lerf_minus_morf").mean(),
            pl.col("faithfulness_correlation").mean(), *_ci("faithfulness_correlation", "fc_"))
            .sort(keys).collect())
    d = _scan(output, "deletion")
    if d is not None:
        on = ["record_key", "window", "method", "target", "replacement", "segments", "order"]
        first = d.filter(pl.col("step") == 0).select(*on, pl.col("logit").alias("_z0"))
        out["evaluation_deletion"] = (d.join(first, on=on)
                                      .with_columns((pl.col("_z0") - pl.col("logit")).alias("_drop"))
                                      .group_by(keys + ["order", "step"])
                                      .agg(pl.col("fraction").first(), pl.len().alias("n"), pl.col("logit").mean(),
                                           *_ci("logit"), pl.col("_drop").mean().alias("logit_drop"))
                                      .sort(keys + ["order", "step"]).collect())
    r = _scan(output, "randomisation")
    if r is not None:
        out["evaluation_randomisation"] = (r.group_by("method", "target", "test", "step")
                                           .agg(pl.col("layer").first(), *_sim_aggs())
                                           .sort("method", "target", "test", "step").collect())
    a = _scan(output, "agreement")
    if a is not None:
        out["evaluation_agreement"] = (a.group_by("kind", "method", "model", "a", "b").agg(*_sim_aggs())
                                       .sort("kind", "method", "model", "a", "b", nulls_last=True).collect())
    out = {k: pl.from_arrow(conform(v.to_arrow(), k)) for k, v in out.items()}
    out["evaluation_verdicts"] = pl.from_arrow(conform(verdicts(out).to_arrow(), "evaluation_verdicts"))
    return out


def verdicts(tables: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """One row per method x target with the rules of the module docstring and a readable line."""
    f = tables.get("evaluation_faithfulness")
    r = tables.get("evaluation_randomisation")
    pairs: dict[tuple[str, str], dict] = {}
    if f is not None:
        for row in f.iter_rows(named=True):  # the first replacement of a method x target decides
            pairs.setdefault((row["method"], row["target"]), {})["f"] = row
    if r is not None:
        for (m, t, test), g in r.group_by("method", "target", "test", maintain_order=True):
            last = g.sort("step").row(-1, named=True)
            pairs.setdefault((m, t), {})[test] = last
    rows = []
    for (m, t), d in sorted(pairs.items()):
        parts = []
        fr = d.get("f")
        if fr is None:
            faithful = "not measured"
        else:
            lo, hi, mean = fr["ci_low"], fr["ci_high"], fr["random_minus_morf"]
            if fr["n"] < MIN_N or lo is None or hi is None:
                faithful = TOO_FEW
            elif lo > 0:
                faithful = "yes"
            elif hi < 0 or mean <= 0:
                faithful = "no"
            else:
                faithful = "undecided"
            ci = f" [{lo:+.2f}, {hi:+.2f}]" if lo is not None and hi is not None else ""
            fc = fr["faithfulness_correlation"]
            parts.append(f"random − MoRF deletion area {mean:+.2f} logit{ci} ({fr['n']} windows, "
                         f"{fr['frac_morf_faster']:.0%} of them), faithfulness correlation "
                         f"{'–' if fc is None else format(fc, '.2f')} ({fr['replacement']}, {fr['segments']})")
        c = d.get("cascading")
        if c is None:
            rand = "not measured"
        else:
            below = lambda v: v is not None and v < RANDOMISED_MAX  # noqa: E731
            rand = ("passes" if below(c["spearman_abs"]) and below(c["spearman_signed"])
                    else "sign only" if below(c["spearman_signed"]) else "fails")
            parts.append(f"fully randomised model: Spearman |R| {c['spearman_abs']:.2f}, signed "
                         f"{c['spearman_signed']:.2f}")
        rl = d.get("random_logit")
        if rl is None:
            cls = "not measured"
        else:
            cls = "passes" if rl["spearman_abs"] is not None and rl["spearman_abs"] < RANDOM_LOGIT_MAX else "fails"
            parts.append(f"random other class: Spearman |R| {rl['spearman_abs']:.2f}")
        if faithful == "not measured" and rand == "not measured":
            trust = "not measured"
        elif faithful == TOO_FEW:
            trust = TOO_FEW
        elif faithful == "no":
            trust = "no"
        elif faithful == "yes":
            trust = "yes" if rand in ("passes", "not measured") and cls != "fails" else "partly"
        else:
            trust = "partly" if rand == "passes" else "no"
        rows.append({"method": m, "target": t, "faithful": faithful, "randomisation": rand, "class_sensitive": cls,
                     "trust": trust, "verdict": f"{m} × {t}: trust {trust} — " + "; ".join(parts)})
    schema = {"method": pl.String, "target": pl.String, "faithful": pl.String, "randomisation": pl.String,
              "class_sensitive": pl.String, "trust": pl.String, "verdict": pl.String}
    return pl.DataFrame(rows, schema=schema)


def write_summary(output: str, dest: str | None = None) -> dict[str, pl.DataFrame]:
    """Compute :func:`summarise` and write each table to ``<dest or output/reduced>/<name>.parquet``."""
    import pyarrow.parquet as pq

    from ecgray.io.fs import fs_path, is_s3, join, pyarrow_fs

    tables = summarise(output)
    dest = dest or join(output, "reduced")
    fs = pyarrow_fs(dest)
    if not is_s3(dest):
        fs.create_dir(fs_path(dest), recursive=True)
    for name, df in tables.items():
        pq.write_table(conform(df.to_arrow(), name), fs_path(join(dest, f"{name}.parquet")), filesystem=fs,
                       compression="zstd")
    return tables


def read_ground_truth(output: str) -> pl.DataFrame | None:
    """``<output>/reduced/ground_truth.parquet`` (``ecgray check --into``, ``ecgray demo``), or None."""
    from ecgray.io.fs import join, open_fs

    fs, root = open_fs(join(output, "reduced"))
    path = posixpath.join(root, f"{GROUND_TRUTH}.parquet")
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as fh:
        return pl.read_parquet(fh)


def read_summary(output: str, dest: str | None = None) -> dict[str, pl.DataFrame] | None:
    """The tables :func:`write_summary` wrote (None when the verdicts file is missing)."""
    from ecgray.io.fs import join, open_fs

    dest = dest or join(output, "reduced")
    fs, root = open_fs(dest)
    if not fs.exists(posixpath.join(root, "evaluation_verdicts.parquet")):
        return None
    out = {}
    for name in EVALUATION_SUMMARY_NAMES + (GROUND_TRUTH,):
        path = posixpath.join(root, f"{name}.parquet")
        if fs.exists(path):
            with fs.open(path, "rb") as fh:
                out[name] = pl.read_parquet(fh)
    return out

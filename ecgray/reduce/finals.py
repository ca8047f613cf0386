"""From merged partials to the reduced tables (``class_probability``, ``lead_relevance``, ``beat_relevance``,
``wave_relevance``; :func:`finish`)."""
from __future__ import annotations

import numpy as np
import polars as pl

from ecgray.io.fs import is_s3, storage_options
from ecgray.leads import STANDARD_LEADS
from ecgray.schemas.tables import empty

from .common import WAVES
from .partials import Accumulator
from .stats import _normal_ci, _sd, bootstrap_ci, merge_moments, row_seed


def class_probability(bins: dict[tuple, list], *, n_bins: int = 10, n_boot: int = 1000, seed: int = 0) -> pl.DataFrame:
    """``class_probability`` from ``Accumulator.bins``: per method x target x group x bin the count, the mean
    probability and relevance_sum, and a seeded percentile-bootstrap CI of the mean over the bin's values
    (sorted first: the CI does not depend on the order the shards were read in)."""
    rows = []
    for (m, t, g, b) in sorted(bins):
        n, p_sum, parts = bins[(m, t, g, b)]
        vals = np.sort(np.concatenate(parts))
        lo, hi = bootstrap_ci(vals, n_boot=n_boot, rng=np.random.default_rng(row_seed(seed, m, t, g, b)))
        rows.append({"method": m, "target": t, "group": g, "bin": int(b), "n": int(n), "mean_probability": p_sum / n,
                     "mean_relevance_sum": float(vals.mean()), "ci_low": lo, "ci_high": hi})
    if not rows:
        return pl.from_arrow(empty("class_probability"))
    return pl.DataFrame(rows, schema_overrides={"bin": pl.Int32, "n": pl.Int64}).with_columns(
        (pl.col("bin").cast(pl.Float64) / n_bins).alias("bin_low"),
        ((pl.col("bin").cast(pl.Float64) + 1) / n_bins).alias("bin_high"),
        pl.lit(n_boot, pl.Int32).alias("n_boot"))


def _lead_order() -> pl.Expr:
    """Leads in the standard order (DI .. V6; the tables' lead names are canonical for every model)."""
    return pl.col("lead").replace_strict({l: i for i, l in enumerate(STANDARD_LEADS)}, default=len(STANDARD_LEADS),
                                         return_dtype=pl.Int32)


def lead_relevance(partials: list[pl.DataFrame]) -> pl.DataFrame:
    by = ["method", "target", "group", "lead"]
    if not partials:
        return pl.from_arrow(empty("lead_relevance"))
    m = merge_moments(pl.concat(partials), by)
    out = m.select(*by, pl.col("n").cast(pl.Int64), pl.col("mean").alias("mean_relevance"),
                   _sd().alias("sd_relevance"),
                   pl.when(pl.col("share_n") > 0).then(pl.col("share_sum") / pl.col("share_n")).alias("share_abs"))
    out = out.with_columns(*_normal_ci("mean_relevance", "sd_relevance", "n"),
                           pl.col("mean_relevance").rank("min", descending=True)
                           .over("method", "target", "group").cast(pl.Int32).alias("rank"))
    return out.sort("method", "target", "group", _lead_order())


def beat_relevance(acc: dict) -> pl.DataFrame:
    if not acc:
        return pl.from_arrow(empty("beat_relevance"))
    parts = []
    for (m, t, g, lead, start, step, k), (n, sm, s2, rm, r2) in acc.items():
        off = (np.float64(start) + np.float64(step) * np.arange(k)).astype(np.float32)
        parts.append(pl.DataFrame({"method": [m] * k, "target": [t] * k, "group": [g] * k, "lead": [lead] * k,
                                   "offset_ms": off, "n": n.astype(np.int64), "sig_mean": sm, "sig_m2": s2,
                                   "rel_mean": rm, "rel_m2": r2}))
    by = ["method", "target", "group", "lead", "offset_ms"]
    m = merge_moments(pl.concat(parts), by, names=("sig_", "rel_"))  # grids that share an offset
    out = m.select(*by, "n", pl.col("sig_mean").alias("mean_signal"), _sd("sig_m2").alias("_sd_signal"),
                   pl.col("rel_mean").alias("mean_relevance"), _sd("rel_m2").alias("_sd_rel"))
    out = out.with_columns(*_normal_ci("mean_signal", "_sd_signal", "n", "signal_"),
                           *_normal_ci("mean_relevance", "_sd_rel", "n"))
    return out.drop("_sd_signal", "_sd_rel").sort("method", "target", "group", _lead_order(), "offset_ms")


def wave_relevance(partials: list[pl.DataFrame], waves: dict[str, tuple[float, float]] = WAVES) -> pl.DataFrame:
    by = ["method", "target", "group", "lead", "wave"]
    if not partials:
        return pl.from_arrow(empty("wave_relevance"))
    m = merge_moments(pl.concat(partials), by)
    nf = pl.col("n").cast(pl.Float64)
    out = m.select(*by, pl.col("n").cast(pl.Int64), pl.col("mean").alias("mean_relevance"), _sd().alias("_sd"),
                   pl.col("n_delineated").cast(pl.Int64),
                   (pl.col("n") - pl.col("n_delineated")).cast(pl.Int64).alias("n_fixed"),
                   (pl.col("start_sum") / nf).alias("start_ms"), (pl.col("end_sum") / nf).alias("end_ms"))
    out = out.with_columns(*_normal_ci("mean_relevance", "_sd", "n"))
    out = out.with_columns(
        pl.when(pl.col("ci_low") > 0).then(pl.lit("+")).when(pl.col("ci_high") < 0).then(pl.lit("-"))
        .otherwise(pl.lit("0")).alias("sign"),
        pl.col("wave").replace_strict({k: i for i, k in enumerate(waves)}, default=len(waves),
                                      return_dtype=pl.Int32).alias("_w"))
    return out.sort("method", "target", "group", _lead_order(), "_w").drop("_sd", "_w")


def finish(acc: Accumulator, *, n_boot: int = 1000, seed: int = 0) -> dict[str, pl.DataFrame]:
    """The reduced tables from merged partials (not yet conformed). With a points sink, the points are
    on disk already and ``class_probability_points`` is a lazy scan of that file."""
    hashes = np.concatenate(acc.hashes) if acc.hashes else np.zeros(0, np.uint64)
    uniq, counts = np.unique(hashes, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{int((counts > 1).sum())} record window x method x target rows appear in more than one "
                         "committed shard (a record in 2 committed shards?): the output is inconsistent; rerun the "
                         "pipeline with --overwrite")
    if acc.sink is not None:
        acc.sink.commit()
        points = _scan_points(acc.sink.path)
    else:
        points = (pl.concat(acc.points) if acc.points else pl.from_arrow(empty("class_probability_points"))
                  ).sort("method", "target", "record_id", "record_key", "window")
    return {"class_probability_points": points,
            "class_probability": class_probability(acc.bins, n_bins=acc.n_bins, n_boot=n_boot, seed=seed),
            "lead_relevance": lead_relevance(acc.lead), "beat_relevance": beat_relevance(acc.beat),
            "wave_relevance": wave_relevance(acc.wave)}


def _scan_points(path: str) -> pl.LazyFrame:
    return pl.scan_parquet(path, storage_options=storage_options(path) if is_s3(path) else None)



"""Reduce a pipeline output to the small tables the report (and a notebook) reads.

>>> from ecgray.reduce import reduce
>>> tables = reduce("s3://bucket/out/")          # -> s3://bucket/out/reduced/<name>.parquet
>>> tables["lead_relevance"].filter(target="AF", group="positive")

Inputs: the committed shards of ``records``, ``relevance_summary`` and ``beats``
(hive layout ``<output>/<table>/shard=<k>/part-0.parquet``; a shard counts only
once its marker ``<output>/_commits/shard=<k>.json`` exists), scanned lazily
with Polars (``pl.scan_parquet(..., hive_partitioning=True)``); every
reduction is a Polars ``group_by``/``agg``, no loop over rows. Schemas of the
outputs: ``schemas.tables.TABLES`` (``class_probability``,
``class_probability_points``, ``lead_relevance``, ``beat_relevance``,
``wave_relevance``).

Definitions
-----------
* *record*: one record window ``(record_id, window)``; a record with several
  windows counts once per window.
* *group* of a record for a target class: ``"positive"`` if ``label_<target>``,
  else ``"normal"`` if ``label_normal``, else ``"other"`` (including unknown labels).
* *record relevance* (``relevance_sum``): the sum over the 12 leads of
  ``relevance_summary.sum``, i.e. the record's total relevance for the target
  (for a complete method: output minus baseline output, up to ``delta``).
  Per lead the same quantity restricted to the lead (``relevance_summary.sum``).
* *probability*: ``relevance_summary.probability`` (the model's probability of
  the target), falling back to ``records.prob_<target>``; *predicted* =
  probability >= ``threshold``; *outcome* TP/FP/FN/TN against ``label_<target>``
  (null when the label is unknown).
* *probability bins*: ``n_bins`` equal bins on [0, 1]; bin ``k`` holds
  ``k/n_bins <= p < (k+1)/n_bins``, the last bin also holds ``p == 1``.
* CIs are 95 %: ``class_probability`` uses a percentile bootstrap of the mean
  (``n_boot`` resamples, seeded per row with ``(seed, crc32(method, target,
  group, bin))`` so a row's CI does not depend on the other rows); the others
  use the normal approximation ``mean +- 1.96 * sd / sqrt(n)`` (sd with
  ddof=1; null for n < 2).
* *share_abs* of a lead: ``abs_sum`` of the lead / sum of ``abs_sum`` over the
  record's leads, averaged over the records (records with zero total skipped).
* *rank*: 1 = largest mean (signed) relevance within method x target x group
  (ties share the smallest rank).
* *waves*: fixed windows relative to the R-peak, both ends included,
  :data:`WAVES` (P -250..-100 ms, QRS -50..+60 ms, T +120..+400 ms). A record's
  wave relevance is the mean of its average-beat relevance over the window's
  offsets; ``sign`` is ``"+"`` / ``"-"`` (ASCII) when the 95 % CI of the mean
  over records lies above / below 0, else ``"0"``.
* beats rows whose signal or relevance is null/NaN or whose ``n_beats`` is 0
  are skipped.

The same ``lead_relevance`` query in DuckDB: :func:`duckdb_lead_relevance_sql`.
"""
from __future__ import annotations

import json
import posixpath
import zlib
from typing import Iterable

import numpy as np
import polars as pl

from schemas.tables import CLASSES, LEADS, conform, empty

WAVES: dict[str, tuple[float, float]] = {"P": (-250.0, -100.0), "QRS": (-50.0, 60.0), "T": (120.0, 400.0)}
GROUPS = ("positive", "normal", "other")
OUTCOMES = ("TP", "FP", "FN", "TN")
REDUCED_TABLES = ("class_probability", "class_probability_points", "lead_relevance", "beat_relevance",
                  "wave_relevance")
Z95 = 1.959963984540054
KEY = ("record_id", "window")


# ------------------------------------------------------------------------------------ reading
def _fs_helpers():
    from ecgray.io.fs import is_s3, join, open_fs, s3_endpoint, s3_region

    return is_s3, join, open_fs, s3_endpoint, s3_region


def committed_files(output: str, name: str) -> list[str]:
    """Paths/URIs of table ``name``'s files in the committed shards of ``output`` (shard order).

    A shard counts only when ``<output>/_commits/shard=<k>.json`` exists; the file
    is the marker's ``files[name]`` (else ``<name>/shard=<k>/part-0.parquet``) and
    must exist. (Stand-in for ``ecgray.pipeline.read_table``, but lazy.)
    """
    is_s3, join, open_fs, _, _ = _fs_helpers()
    fs, root = open_fs(output)
    commits = posixpath.join(root, "_commits")
    try:
        markers = sorted(p for p in fs.find(commits, maxdepth=1)
                         if posixpath.basename(p).startswith("shard=") and p.endswith(".json"))
    except FileNotFoundError:
        markers = []
    out = []
    for m in markers:
        shard = posixpath.basename(m)[len("shard="):-len(".json")]
        try:
            with fs.open(m, "rb") as f:
                rel = (json.loads(f.read().decode()).get("files") or {}).get(name)
        except (ValueError, FileNotFoundError):
            continue
        path = posixpath.join(root, rel or f"{name}/shard={shard}/part-0.parquet")
        if fs.exists(path):
            out.append("s3://" + path if is_s3(output) else path)
    return out


def _storage_options(output: str) -> dict | None:
    is_s3, _, _, s3_endpoint, s3_region = _fs_helpers()
    if not is_s3(output):
        return None
    import os

    opts: dict = {}
    ep = s3_endpoint()
    if ep:
        opts["aws_endpoint_url"] = ep
        if ep.startswith("http://"):
            opts["aws_allow_http"] = "true"
    opts["aws_region"] = s3_region() or "us-east-1"
    for env, key in (("AWS_ACCESS_KEY_ID", "aws_access_key_id"), ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
                     ("AWS_SESSION_TOKEN", "aws_session_token")):
        if os.environ.get(env):
            opts[key] = os.environ[env]
    return opts


def scan_table(output: str, name: str) -> pl.LazyFrame | None:
    """Lazy frame of table ``name`` over the committed shards (None if no committed file)."""
    files = committed_files(output, name)
    if not files:
        return None
    # schema of the first file; columns missing in older shards -> null, extra ones ignored
    lf = pl.scan_parquet(files, hive_partitioning=True, hive_schema={"shard": pl.String},
                         storage_options=_storage_options(output), missing_columns="insert", extra_columns="ignore")
    # dictionary-encoded strings (if any writer keeps them) -> plain strings
    return lf.with_columns(pl.col(pl.Categorical).cast(pl.String))


def _empty_lazy(name: str) -> pl.LazyFrame:
    return pl.from_arrow(empty(name)).lazy()


# ------------------------------------------------------------------------------- statistics
def bootstrap_ci(values: Iterable[float], *, n_boot: int = 1000, rng: np.random.Generator | int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap CI of the mean (vectorised; resamples drawn in chunks of <= 4e6 draws)."""
    v = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64)
    v = v[np.isfinite(v)]
    n = v.size
    if n == 0:
        return float("nan"), float("nan")
    if n == 1 or n_boot <= 0:
        return float(v[0]) if n == 1 else float(v.mean()), float(v[0]) if n == 1 else float(v.mean())
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    means = np.empty(n_boot)
    step = max(1, int(4_000_000 // n))
    for s in range(0, n_boot, step):
        k = min(step, n_boot - s)
        means[s:s + k] = v[rng.integers(0, n, size=(k, n))].mean(axis=1)
    a = (1.0 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return float(lo), float(hi)


def row_seed(seed: int, *parts) -> list[int]:
    """Seed of one CI row: ``[seed, crc32("part0\\0part1...")]`` (stable across runs and platforms)."""
    return [int(seed), zlib.crc32("\0".join(map(str, parts)).encode())]


def _normal_ci(mean: str, sd: str, n: str, prefix: str = "") -> list[pl.Expr]:
    half = Z95 * pl.col(sd) / pl.col(n).cast(pl.Float64).sqrt()
    return [(pl.col(mean) - half).alias(f"{prefix}ci_low"), (pl.col(mean) + half).alias(f"{prefix}ci_high")]


# --------------------------------------------------------------------------------- queries
def record_groups(records: pl.LazyFrame, targets: Iterable[str] = CLASSES) -> pl.LazyFrame:
    """Long records: record_id, window, target, label, label_normal, rec_probability, group."""
    cols = set(records.collect_schema().names())
    parts = []
    for c in targets:
        parts.append(records.select(
            pl.col("record_id"), pl.col("window"), pl.lit(c, pl.String).alias("target"),
            (pl.col(f"label_{c}") if f"label_{c}" in cols else pl.lit(None, pl.Boolean)).alias("label"),
            (pl.col("label_normal") if "label_normal" in cols else pl.lit(None, pl.Boolean)).alias("label_normal"),
            (pl.col(f"prob_{c}").cast(pl.Float64) if f"prob_{c}" in cols else pl.lit(None, pl.Float64))
            .alias("rec_probability"),
        ))
    long = pl.concat(parts, how="vertical")
    return long.with_columns(
        pl.when(pl.col("label")).then(pl.lit("positive"))
        .when(pl.col("label_normal")).then(pl.lit("normal"))
        .otherwise(pl.lit("other")).alias("group"))


def _with_group(lf: pl.LazyFrame, groups: pl.LazyFrame, extra: tuple[str, ...] = ()) -> pl.LazyFrame:
    g = groups.select("record_id", "window", "target", "group", *extra)
    return lf.join(g, on=["record_id", "window", "target"], how="left").with_columns(
        pl.col("group").fill_null("other"))


def class_probability_points(summary: pl.LazyFrame, groups: pl.LazyFrame, *, threshold: float = 0.5) -> pl.LazyFrame:
    per_record = summary.group_by("record_id", "window", "method", "target").agg(
        pl.col("sum").cast(pl.Float64).sort_by("lead").sum().alias("relevance_sum"),  # fixed order: bit-reproducible
        pl.col("probability").cast(pl.Float64).drop_nulls().first().alias("probability"))
    j = _with_group(per_record, groups, ("label", "rec_probability"))
    j = j.with_columns(pl.coalesce("probability", "rec_probability").alias("probability"))
    pred = pl.col("probability") >= threshold
    lab = pl.col("label")
    outcome = (pl.when(lab.is_null() | pl.col("probability").is_null()).then(pl.lit(None, pl.String))
               .when(pred & lab).then(pl.lit("TP")).when(pred & ~lab).then(pl.lit("FP"))
               .when(~pred & lab).then(pl.lit("FN")).otherwise(pl.lit("TN")))
    return j.select("record_id", "window", "method", "target", "group", "probability", "relevance_sum",
                    "label", pred.alias("predicted"), outcome.alias("outcome")
                    ).sort("method", "target", "record_id", "window")


def class_probability(points: pl.DataFrame, *, n_bins: int = 10, n_boot: int = 1000, seed: int = 0) -> pl.DataFrame:
    binned = (points.lazy()
              .filter(pl.col("probability").is_not_null() & pl.col("relevance_sum").is_not_null())
              .with_columns((pl.col("probability") * n_bins).floor().clip(0, n_bins - 1).cast(pl.Int32).alias("bin"))
              .group_by("method", "target", "group", "bin")
              .agg(pl.len().cast(pl.Int64).alias("n"), pl.col("probability").mean().alias("mean_probability"),
                   pl.col("relevance_sum").mean().alias("mean_relevance_sum"), pl.col("relevance_sum").sort().alias("_values"))  # sorted: CI independent of scan order
              .sort("method", "target", "group", "bin")
              .collect())
    lo, hi = [], []
    for m, t, g, b, vals in binned.select("method", "target", "group", "bin", "_values").iter_rows():
        ci = bootstrap_ci(np.asarray(vals, np.float64), n_boot=n_boot, rng=np.random.default_rng(row_seed(seed, m, t, g, b)))
        lo.append(ci[0])
        hi.append(ci[1])
    return binned.drop("_values").with_columns(
        (pl.col("bin").cast(pl.Float64) / n_bins).alias("bin_low"),
        ((pl.col("bin").cast(pl.Float64) + 1) / n_bins).alias("bin_high"),
        pl.Series("ci_low", lo, pl.Float64), pl.Series("ci_high", hi, pl.Float64),
        pl.lit(n_boot, pl.Int32).alias("n_boot"))


def _lead_order() -> pl.Expr:
    return pl.col("lead").replace_strict({l: i for i, l in enumerate(LEADS)}, default=len(LEADS), return_dtype=pl.Int32)


def lead_relevance(summary: pl.LazyFrame, groups: pl.LazyFrame) -> pl.LazyFrame:
    rec = ["record_id", "window", "method", "target"]
    den = pl.col("abs_sum").cast(pl.Float64).sum().over(rec)
    j = _with_group(summary, groups).with_columns(
        pl.col("sum").cast(pl.Float64).alias("_rel"),
        pl.when(den > 0).then(pl.col("abs_sum").cast(pl.Float64) / den).otherwise(None).alias("_share"))
    out = j.group_by("method", "target", "group", "lead").agg(
        pl.col("_rel").count().cast(pl.Int64).alias("n"), pl.col("_rel").mean().alias("mean_relevance"),
        pl.col("_rel").std(ddof=1).alias("sd_relevance"), pl.col("_share").mean().alias("share_abs"))
    out = out.with_columns(*_normal_ci("mean_relevance", "sd_relevance", "n"),
                           pl.col("mean_relevance").rank("min", descending=True)
                           .over("method", "target", "group").cast(pl.Int32).alias("rank"))
    return out.sort("method", "target", "group", _lead_order())


def _clean_beats(beats: pl.LazyFrame) -> pl.LazyFrame:
    cols = set(beats.collect_schema().names())
    ok = pl.col("signal").is_not_null() & pl.col("relevance").is_not_null()
    ok = ok & pl.col("signal").is_finite() & pl.col("relevance").is_finite()
    if "n_beats" in cols:
        ok = ok & (pl.col("n_beats").fill_null(1) > 0)
    return beats.filter(ok).with_columns(pl.col("signal").cast(pl.Float64), pl.col("relevance").cast(pl.Float64))


def beat_relevance(beats: pl.LazyFrame, groups: pl.LazyFrame) -> pl.LazyFrame:
    j = _with_group(_clean_beats(beats), groups)
    out = j.group_by("method", "target", "group", "lead", "offset_ms").agg(
        pl.len().cast(pl.Int64).alias("n"), pl.col("signal").mean().alias("mean_signal"),
        pl.col("signal").std(ddof=1).alias("_sd_signal"), pl.col("relevance").mean().alias("mean_relevance"),
        pl.col("relevance").std(ddof=1).alias("_sd_rel"))
    out = out.with_columns(*_normal_ci("mean_signal", "_sd_signal", "n", "signal_"),
                           *_normal_ci("mean_relevance", "_sd_rel", "n"))
    return out.drop("_sd_signal", "_sd_rel").sort("method", "target", "group", _lead_order(), "offset_ms")


def wave_relevance(beats: pl.LazyFrame, groups: pl.LazyFrame, waves: dict[str, tuple[float, float]] = WAVES
                   ) -> pl.LazyFrame:
    wave = pl.lit(None, pl.String)
    off = pl.col("offset_ms").cast(pl.Float64)
    expr = None
    for name, (a, b) in waves.items():
        cond = (off >= a) & (off <= b)
        expr = pl.when(cond).then(pl.lit(name)) if expr is None else expr.when(cond).then(pl.lit(name))
    wave = expr.otherwise(None) if expr is not None else wave
    j = _with_group(_clean_beats(beats).with_columns(wave.alias("wave")).filter(pl.col("wave").is_not_null()), groups)
    per_rec = j.group_by("record_id", "window", "method", "target", "group", "lead", "wave").agg(
        pl.col("relevance").mean().alias("_rel"))
    out = per_rec.group_by("method", "target", "group", "lead", "wave").agg(
        pl.len().cast(pl.Int64).alias("n"), pl.col("_rel").mean().alias("mean_relevance"),
        pl.col("_rel").std(ddof=1).alias("_sd"))
    out = out.with_columns(*_normal_ci("mean_relevance", "_sd", "n"))
    out = out.with_columns(
        pl.when(pl.col("ci_low") > 0).then(pl.lit("+")).when(pl.col("ci_high") < 0).then(pl.lit("-"))
        .otherwise(pl.lit("0")).alias("sign"),
        pl.col("wave").replace_strict({k: v[0] for k, v in waves.items()}, return_dtype=pl.Float64).alias("start_ms"),
        pl.col("wave").replace_strict({k: v[1] for k, v in waves.items()}, return_dtype=pl.Float64).alias("end_ms"),
        pl.col("wave").replace_strict({k: i for i, k in enumerate(waves)}, return_dtype=pl.Int32).alias("_w"))
    return out.sort("method", "target", "group", _lead_order(), "_w").drop("_sd", "_w")


# ---------------------------------------------------------------------------------- driver
def _write(df: pl.DataFrame, name: str, dest: str) -> None:
    import pyarrow.parquet as pq

    from ecgray.io.fs import fs_path, is_s3, join, pyarrow_fs

    tbl = conform(df.to_arrow(), name)
    fs = pyarrow_fs(dest)
    if not is_s3(dest):
        fs.create_dir(fs_path(dest), recursive=True)
    pq.write_table(tbl, fs_path(join(dest, f"{name}.parquet")), filesystem=fs, compression="zstd")


def _conformed(df: pl.DataFrame, name: str) -> pl.DataFrame:
    return pl.from_arrow(conform(df.to_arrow(), name))


def reduce(output: str, *, threshold: float = 0.5, n_bins: int = 10, n_boot: int = 1000, seed: int = 0,
           dest: str | None = None, write: bool = True, engine: str = "streaming") -> dict[str, pl.DataFrame]:
    """Compute the reduced tables of pipeline output ``output``; write them to ``dest``
    (default ``<output>/reduced``) as ``<name>.parquet`` unless ``write=False``.

    Returns ``{name: DataFrame}`` for the five tables of :data:`REDUCED_TABLES`
    (conformed to their schemas). Raises FileNotFoundError when ``output`` has
    no committed ``relevance_summary``. ``engine``: Polars engine for the scans
    (``"streaming"``, the default, keeps memory bounded on large ``beats``
    tables; ``"in-memory"`` also works).
    """
    from ecgray.io.fs import join

    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    summary = scan_table(output, "relevance_summary")
    if summary is None:
        raise FileNotFoundError(f"{output}: no committed relevance_summary shards (is it a pipeline output?)")
    records = scan_table(output, "records")
    if records is None:
        records = _empty_lazy("records")
    beats = scan_table(output, "beats")
    if beats is None:
        beats = _empty_lazy("beats")
    groups = record_groups(records).cache()
    points = class_probability_points(summary, groups, threshold=threshold)
    lazy = {"class_probability_points": points, "lead_relevance": lead_relevance(summary, groups),
            "beat_relevance": beat_relevance(beats, groups), "wave_relevance": wave_relevance(beats, groups)}
    frames = dict(zip(lazy, pl.collect_all(list(lazy.values()), engine=engine)))
    frames["class_probability"] = class_probability(frames["class_probability_points"], n_bins=n_bins,
                                                    n_boot=n_boot, seed=seed)
    out = {name: _conformed(frames[name], name) for name in REDUCED_TABLES}
    if write:
        dest = dest or join(output, "reduced")
        for name, df in out.items():
            _write(df, name, dest)
    return out


def read_reduced(output: str, dest: str | None = None) -> dict[str, pl.DataFrame] | None:
    """The reduced tables written by :func:`reduce` (None if any is missing)."""
    from ecgray.io.fs import join, open_fs

    dest = dest or join(output, "reduced")
    fs, root = open_fs(dest)
    out = {}
    for name in REDUCED_TABLES:
        path = posixpath.join(root, f"{name}.parquet")
        if not fs.exists(path):
            return None
        with fs.open(path, "rb") as f:
            out[name] = pl.read_parquet(f)
    return out


# ---------------------------------------------------------------------------------- DuckDB
def _sql_list(files: list[str]) -> str:
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"


def duckdb_lead_relevance_sql(output: str) -> str:
    """DuckDB SQL computing ``lead_relevance`` (without the schema cast) from the committed files.

    Reads the same Parquet files as :func:`reduce` (``read_parquet([...],
    hive_partitioning=true)``); for ``s3://`` outputs DuckDB needs ``httpfs``
    and an S3 secret configured by the caller.
    """
    summ = committed_files(output, "relevance_summary")
    recs = committed_files(output, "records")
    if not summ:
        raise FileNotFoundError(f"{output}: no committed relevance_summary shards")
    src_s = f"read_parquet({_sql_list(summ)}, hive_partitioning=true)"
    if recs:
        src_r = f"read_parquet({_sql_list(recs)}, hive_partitioning=true)"
        rec = "\n    UNION ALL ".join(
            f"SELECT record_id, \"window\", '{c}' AS target, \"label_{c}\" AS label, label_normal FROM {src_r}"
            for c in CLASSES)
    else:
        rec = "SELECT NULL::VARCHAR AS record_id, NULL::INTEGER AS \"window\", NULL::VARCHAR AS target, " \
              "NULL::BOOLEAN AS label, NULL::BOOLEAN AS label_normal WHERE false"
    return f"""
WITH rec AS (
    {rec}
),
j AS (
    SELECT s.method, s.target, s.lead, CAST(s."sum" AS DOUBLE) AS rel,
           CASE WHEN r.label THEN 'positive' WHEN r.label_normal THEN 'normal' ELSE 'other' END AS grp,
           CASE WHEN sum(CAST(s.abs_sum AS DOUBLE)) OVER w > 0
                THEN CAST(s.abs_sum AS DOUBLE) / sum(CAST(s.abs_sum AS DOUBLE)) OVER w END AS share
    FROM {src_s} AS s
    LEFT JOIN rec AS r ON r.record_id = s.record_id AND r."window" = s."window" AND r.target = s.target
    WINDOW w AS (PARTITION BY s.record_id, s."window", s.method, s.target)
),
g AS (
    SELECT method, target, grp, lead, count(rel) AS n, avg(rel) AS mean_relevance,
           stddev_samp(rel) AS sd_relevance, avg(share) AS share_abs
    FROM j GROUP BY method, target, grp, lead
)
SELECT method, target, grp AS "group", lead, n, mean_relevance, sd_relevance,
       mean_relevance - {Z95!r} * sd_relevance / sqrt(n) AS ci_low,
       mean_relevance + {Z95!r} * sd_relevance / sqrt(n) AS ci_high,
       share_abs,
       rank() OVER (PARTITION BY method, target, grp ORDER BY mean_relevance DESC) AS "rank"
FROM g
ORDER BY method, target, "group", lead
"""

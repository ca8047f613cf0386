"""Reduce a pipeline output to the small tables the report (and a notebook) reads.

>>> from ecgray.reduce import reduce
>>> tables = reduce("s3://bucket/out/")          # -> s3://bucket/out/reduced/<name>.parquet
>>> tables["lead_relevance"].filter(target="AF", group="positive")

Inputs: the committed shards of ``records``, ``relevance_summary``, ``beats`` and
``beats_relevance`` (hive layout ``<output>/<table>/shard=<k>/part-0.parquet``; a
shard counts only once its marker ``<output>/_commits/shard=<k>.json`` exists).

The reduce streams: each shard is read on its own (a record's rows all live in
its shard, so labels join within it) and turned into small mergeable partials
(:func:`shard_partial`): per group the count, mean and sum of squared
deviations (``n, mean, m2``) of every quantity, merged with Chan et al.'s
pairwise update (:func:`merge_moments`, :class:`Accumulator`), plus one small
row per record window x method x target (``class_probability_points``, which the
exact bootstrap CIs need). Memory is bounded by the number of groups (methods x
targets x groups x leads x offsets), not of records; time is linear in the
number of shards. ``use_ray=True`` computes the partials in Ray tasks so that no
machine holds the data set. Within a shard every aggregation is a Polars
``group_by``/``agg`` or a NumPy reduction over the list columns, no loop over
rows. Schemas of the outputs: ``schemas.tables.TABLES`` (``class_probability``,
``class_probability_points``, ``lead_relevance``, ``beat_relevance``,
``wave_relevance``).

Definitions
-----------
* *record*: one record window ``(record_key, window)``; a record with several
  windows counts once per window. ``record_key`` (the path relative to the input
  root) tells records that share a ``record_id`` apart; a record whose rows
  appear in two committed shards is refused (it would be counted twice).
* *group* of a record for a target class (:data:`GROUPS`): for a record whose
  ``label_<target>`` is known, ``"positive"`` if it is true, else ``"normal"`` if
  ``label_normal``, else ``"other"``. For a record whose ``label_<target>`` is null
  (an unlabelled record: scheme ``"none"``, no ``#Dx`` and no labels CSV row, e.g.
  MIMIC-IV-ECG), ``"unlabelled_predicted_positive"`` if its ``records.prob_<target>``
  is >= ``threshold``, else ``"unlabelled_predicted_negative"`` (also when that
  probability is null). The two partition the unlabelled records, so the tables
  compare predicted positive with predicted negative for unlabelled data as they
  compare labelled-with-the-class with normal for labelled data. The group does
  not depend on the method. A ``relevance_summary`` row without a ``records`` row
  is ``"other"``.
* *record relevance* (``relevance_sum``): the sum over the model's leads of
  ``relevance_summary.sum``, i.e. the record's total relevance for the target
  (for a complete method: output minus baseline output, up to ``delta``).
  Per lead the same quantity restricted to the lead (``relevance_summary.sum``).
* *probability*: ``relevance_summary.probability`` (the model's probability of
  the target), falling back to ``records.prob_<target>``; *predicted* =
  probability >= ``threshold``; *outcome* TP/FP/FN/TN against ``label_<target>``
  (null when the label is unknown, i.e. for both ``unlabelled_*`` groups).
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
* beats: ``beats_relevance`` rows join their window's ``beats`` row on
  ``(record_key, window, lead)``; the relevance is ``relevance * relevance_scale``
  (stored precision: ``schemas.tables.BEAT_PRECISION``); rows with null lists or
  ``n_beats`` 0 are skipped, and so are single offsets whose signal or relevance
  is NaN. Offsets: ``offset_start_ms + i * offset_step_ms`` (as float32).

The same ``lead_relevance`` query in DuckDB: :func:`duckdb_lead_relevance_sql`.
"""
from __future__ import annotations

import io
import posixpath
import uuid
import zlib
from typing import Iterable

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from ecgray.io.fs import fs_path, is_s3, join, open_fs, pyarrow_fs, storage_options
from ecgray.leads import STANDARD_LEADS
from ecgray.store import committed_table_files
from schemas.tables import READABLE_VERSIONS, conform, empty, record_classes

WAVES: dict[str, tuple[float, float]] = {"P": (-250.0, -100.0), "QRS": (-50.0, 60.0), "T": (120.0, 400.0)}
#: groups of labelled records, then of unlabelled ones (null ``label_<target>``; split by the predicted class)
LABELLED_GROUPS = ("positive", "normal", "other")
UNLABELLED_GROUPS = ("unlabelled_predicted_positive", "unlabelled_predicted_negative")
GROUPS = LABELLED_GROUPS + UNLABELLED_GROUPS
OUTCOMES = ("TP", "FP", "FN", "TN")
REDUCED_TABLES = ("class_probability", "class_probability_points", "lead_relevance", "beat_relevance",
                  "wave_relevance")
Z95 = 1.959963984540054
KEY = ("record_key", "window")


# ------------------------------------------------------------------------------------ reading
def committed_shard_files(output: str) -> list[dict[str, str]]:
    """One ``{table: path or URI}`` per committed shard of ``output`` (shard order)
    (:func:`ecgray.store.committed_table_files`); ValueError for a shard whose schema version this
    reducer cannot read (:data:`schemas.tables.READABLE_VERSIONS`)."""
    return committed_table_files(output, readable=READABLE_VERSIONS)


def committed_files(output: str, name: str) -> list[str]:
    """Paths/URIs of table ``name``'s files in the committed shards of ``output`` (shard order)."""
    return [f[name] for f in committed_shard_files(output) if name in f]


def scan_table(output: str, name: str) -> pl.LazyFrame | None:
    """Lazy frame of table ``name`` over the committed shards (None if no committed file)."""
    files = committed_files(output, name)
    if not files:
        return None
    # schema of the first file; columns missing in older shards -> null, extra ones ignored
    lf = pl.scan_parquet(files, hive_partitioning=True, hive_schema={"shard": pl.String},
                         storage_options=storage_options(output), missing_columns="insert", extra_columns="ignore")
    # dictionary-encoded strings (if any writer keeps them) -> plain strings
    return lf.with_columns(pl.col(pl.Categorical).cast(pl.String))


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


# ------------------------------------------------------------------------- mergeable moments
def merge_moments(df: pl.DataFrame, by: list[str], names: Iterable[str] = ("",)) -> pl.DataFrame:
    """Combine partial ``(n, mean, m2)`` rows that share ``by`` (Chan et al. 1979, pairwise update):
    ``n = sum n_i``, ``mean = sum n_i mean_i / n``, ``m2 = sum m2_i + n_i (mean_i - mean)^2``.
    ``names``: column prefixes of moment sets sharing the count ``n`` (``"sig_"`` -> ``sig_mean``,
    ``sig_m2``). Rows with ``n == 0`` are dropped; other columns in ``df`` are summed.
    """
    df = df.filter(pl.col("n") > 0)
    nf = pl.col("n").cast(pl.Float64)
    means = {f"_{p}mean": (nf * pl.col(f"{p}mean")).sum().over(by) / nf.sum().over(by) for p in names}
    df = df.with_columns(**means)
    extra = [c for c in df.columns if c not in by and c != "n" and not c.startswith("_")
             and not any(c in (f"{p}mean", f"{p}m2") for p in names)]
    aggs = [pl.col("n").sum()]
    for p in names:
        aggs += [pl.col(f"_{p}mean").first().alias(f"{p}mean"),
                 (pl.col(f"{p}m2") + nf * (pl.col(f"{p}mean") - pl.col(f"_{p}mean")) ** 2).sum().alias(f"{p}m2")]
    aggs += [pl.col(c).sum() for c in extra]
    return df.group_by(by, maintain_order=True).agg(aggs)


def _sd(m2: str = "m2", n: str = "n") -> pl.Expr:
    """Sample standard deviation (ddof=1) from moments; null for n < 2."""
    return pl.when(pl.col(n) >= 2).then((pl.col(m2) / (pl.col(n) - 1)).clip(0).sqrt()).otherwise(None)


def _moments_np(x: np.ndarray, valid: np.ndarray, starts: np.ndarray):
    """Per group of consecutive rows (groups start at ``starts``): count, mean and m2 of ``x`` over the
    valid entries, column by column. ``x`` (R, K) float64, ``valid`` (R, K) bool."""
    xv = np.where(valid, x, 0.0)
    n = np.add.reduceat(valid.astype(np.int64), starts, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.add.reduceat(xv, starts, axis=0) / n
    sizes = np.diff(np.r_[starts, len(x)])
    dev = np.where(valid, x - np.repeat(mean, sizes, axis=0), 0.0)
    m2 = np.add.reduceat(dev * dev, starts, axis=0)
    return n, np.where(n > 0, mean, 0.0), m2


# --------------------------------------------------------------------------------- per shard
def record_groups(records: pl.DataFrame | pl.LazyFrame, targets: Iterable[str] | None = None, *,
                  threshold: float = 0.5):
    """Long records: record_key, window, target, label, label_normal, rec_probability, group (the module
    docstring's definition; unlabelled records are split at ``threshold`` by ``rec_probability``).
    ``targets``: default the model's classes, the ``prob_<class>`` columns of ``records``."""
    names = records.collect_schema().names()
    cols = set(names)
    targets = record_classes(names) if targets is None else tuple(targets)
    # label_scheme "none" (no labels at all) is unlabelled even where an older output stored False
    none = (pl.col("label_scheme") == "none").fill_null(False) if "label_scheme" in cols else pl.lit(False)

    def known(col: str):
        return pl.when(none).then(pl.lit(None, pl.Boolean)).otherwise(pl.col(col)) if col in cols \
            else pl.lit(None, pl.Boolean)

    parts = []
    for c in targets:
        parts.append(records.select(
            pl.col("record_key"), pl.col("window"), pl.lit(c, pl.String).alias("target"),
            known(f"label_{c}").alias("label"), known("label_normal").alias("label_normal"),
            (pl.col(f"prob_{c}").cast(pl.Float64) if f"prob_{c}" in cols else pl.lit(None, pl.Float64))
            .alias("rec_probability"),
        ))
    if not parts:  # a records table without class columns (no rows written)
        parts.append(records.select(pl.col("record_key"), pl.col("window"), pl.lit(None, pl.String).alias("target"),
                                    pl.lit(None, pl.Boolean).alias("label"),
                                    pl.lit(None, pl.Boolean).alias("label_normal"),
                                    pl.lit(None, pl.Float64).alias("rec_probability")).head(0))
    long = pl.concat(parts, how="vertical")
    return long.with_columns(
        pl.when(pl.col("label").is_null())
        .then(pl.when(pl.col("rec_probability") >= threshold).then(pl.lit(UNLABELLED_GROUPS[0]))
              .otherwise(pl.lit(UNLABELLED_GROUPS[1])))
        .when(pl.col("label")).then(pl.lit("positive"))
        .when(pl.col("label_normal")).then(pl.lit("normal"))
        .otherwise(pl.lit("other")).alias("group"))


def _with_group(df, groups, extra: tuple[str, ...] = ()):
    g = groups.select("record_key", "window", "target", "group", *extra)
    return df.join(g, on=["record_key", "window", "target"], how="left").with_columns(
        pl.col("group").fill_null("other"))


def class_probability_points(summary: pl.DataFrame, groups: pl.DataFrame, *, threshold: float = 0.5) -> pl.DataFrame:
    """One row per record window x method x target (see the module docstring)."""
    per_record = summary.group_by("record_key", "window", "method", "target").agg(
        pl.col("record_id").first(),
        pl.col("sum").cast(pl.Float64).sort_by("lead").sum().alias("relevance_sum"),  # fixed order: bit-reproducible
        pl.col("probability").cast(pl.Float64).drop_nulls().first().alias("probability"))
    j = _with_group(per_record, groups, ("label", "rec_probability"))
    j = j.with_columns(pl.coalesce("probability", "rec_probability").alias("probability"))
    pred = pl.col("probability") >= threshold
    lab = pl.col("label")
    outcome = (pl.when(lab.is_null() | pl.col("probability").is_null()).then(pl.lit(None, pl.String))
               .when(pred & lab).then(pl.lit("TP")).when(pred & ~lab).then(pl.lit("FP"))
               .when(~pred & lab).then(pl.lit("FN")).otherwise(pl.lit("TN")))
    return j.select("record_key", "record_id", "window", "method", "target", "group", "probability",
                    "relevance_sum", "label", pred.alias("predicted"), outcome.alias("outcome"))


def lead_partial(summary: pl.DataFrame, groups: pl.DataFrame) -> pl.DataFrame:
    """Moments of the lead relevance (``sum``) and the summed share per method x target x group x lead."""
    rec = ["record_key", "window", "method", "target"]
    den = pl.col("abs_sum").cast(pl.Float64).sum().over(rec)
    j = _with_group(summary, groups).with_columns(
        pl.col("sum").cast(pl.Float64).alias("_rel"),
        pl.when(den > 0).then(pl.col("abs_sum").cast(pl.Float64) / den).otherwise(None).alias("_share"))
    return j.group_by("method", "target", "group", "lead").agg(
        pl.col("_rel").count().cast(pl.Int64).alias("n"), pl.col("_rel").mean().fill_null(0.0).alias("mean"),
        ((pl.col("_rel") - pl.col("_rel").mean()) ** 2).sum().alias("m2"),
        pl.col("_share").sum().alias("share_sum"), pl.col("_share").count().cast(pl.Int64).alias("share_n"))


BEAT_KEY = ["method", "target", "group", "lead", "offset_start_ms", "offset_step_ms", "k"]


def beat_partials(beats: pl.DataFrame, beats_rel: pl.DataFrame, groups: pl.DataFrame,
                  waves: dict[str, tuple[float, float]] = WAVES) -> tuple[dict, pl.DataFrame]:
    """Per method x target x group x lead (and offset grid): moments of the average-beat signal and
    relevance at every offset (``{key: (n, sig_mean, sig_m2, rel_mean, rel_m2)}``, arrays of the grid's
    length), and moments of the per-record wave relevance (a DataFrame). An entry counts when signal and
    relevance are finite and the window has beats (``n_beats > 0``)."""
    empty_waves = pl.DataFrame(schema={"method": pl.String, "target": pl.String, "group": pl.String,
                                       "lead": pl.String, "wave": pl.String, "n": pl.Int64, "mean": pl.Float64,
                                       "m2": pl.Float64})
    if beats.height == 0 or beats_rel.height == 0:
        return {}, empty_waves
    sig = beats.select("record_key", "window", "lead", "offset_start_ms", "offset_step_ms", "n_beats", "signal")
    j = _with_group(beats_rel.select("record_key", "window", "method", "target", "lead", "relevance", "relevance_scale")
                    .join(sig, on=["record_key", "window", "lead"], how="inner"), groups)
    j = j.filter(pl.col("relevance").is_not_null() & pl.col("signal").is_not_null()
                 & (pl.col("n_beats").fill_null(1) > 0)
                 & (pl.col("relevance").list.len() == pl.col("signal").list.len()))
    j = j.with_columns(pl.col("relevance").list.len().alias("k")).sort(BEAT_KEY)
    acc: dict = {}
    wave_parts = []
    for (start, step, k), part in j.group_by("offset_start_ms", "offset_step_ms", "k", maintain_order=True):
        k = int(k)
        if k == 0:
            continue
        rel = part["relevance"].explode().cast(pl.Float64).to_numpy().reshape(-1, k) \
            * part["relevance_scale"].cast(pl.Float64).fill_null(1.0).to_numpy()[:, None]
        sg = part["signal"].explode().cast(pl.Float64).to_numpy().reshape(-1, k)
        valid = np.isfinite(rel) & np.isfinite(sg)
        keys = part.select(BEAT_KEY[:4])
        starts = np.flatnonzero(np.r_[True, np.any(keys[1:].to_numpy() != keys[:-1].to_numpy(), axis=1)]
                                if keys.height > 1 else np.array([True]))
        n, sm, s2 = _moments_np(sg, valid, starts)
        _, rm, r2 = _moments_np(rel, valid, starts)
        for g, row in enumerate(keys[starts].iter_rows()):
            acc[(*row, float(start), float(step), k)] = (n[g], sm[g], s2[g], rm[g], r2[g])
        # waves: per record the mean relevance over the window's offsets, then moments over records
        off = (np.float64(start) + np.float64(step) * np.arange(k)).astype(np.float32).astype(np.float64)
        for wave, (a, b) in waves.items():
            win = (off >= a) & (off <= b)
            if not win.any():
                continue
            cnt = (valid & win).sum(1)
            with np.errstate(invalid="ignore", divide="ignore"):
                per_rec = np.where(valid & win, rel, 0.0).sum(1) / cnt
            ok = (cnt > 0)[:, None]
            wn, wm, w2 = _moments_np(np.nan_to_num(per_rec)[:, None], ok, starts)
            wave_parts.append(keys[starts].with_columns(
                pl.lit(wave).alias("wave"), pl.Series("n", wn[:, 0], pl.Int64), pl.Series("mean", wm[:, 0]),
                pl.Series("m2", w2[:, 0])))
    waves_df = merge_moments(pl.concat(wave_parts), ["method", "target", "group", "lead", "wave"]) \
        if wave_parts else empty_waves
    return acc, waves_df


def _read(path: str, storage_options) -> pl.DataFrame:
    df = pl.read_parquet(path, storage_options=storage_options, hive_partitioning=False)
    return df.with_columns(pl.col(pl.Categorical).cast(pl.String))


def shard_partial(files: dict[str, str], *, threshold: float = 0.5, storage_options: dict | None = None,
                  waves: dict[str, tuple[float, float]] = WAVES) -> dict:
    """Everything the reduce needs from one committed shard (``files``: table -> path/URI), small and
    mergeable: ``points`` (one row per record window x method x target), ``lead`` and ``wave``
    (moments per method x target x group x lead [x wave]) and ``beat`` (moment arrays per key).
    A record's rows all live in its shard, so groups are joined within the shard."""
    records = _read(files["records"], storage_options) if "records" in files else pl.from_arrow(empty("records"))
    groups = record_groups(records, threshold=threshold)
    out: dict = {"points": None, "lead": None, "wave": None, "beat": {}}
    if "relevance_summary" in files:
        summary = _read(files["relevance_summary"], storage_options)
        out["points"] = class_probability_points(summary, groups, threshold=threshold)
        out["lead"] = lead_partial(summary, groups)
    if "beats" in files and "beats_relevance" in files:
        out["beat"], out["wave"] = beat_partials(_read(files["beats"], storage_options),
                                                 _read(files["beats_relevance"], storage_options), groups, waves)
    return out


class PointsSink:
    """Writes ``class_probability_points`` shard by shard to one Parquet file (local or S3), conformed."""

    def __init__(self, dest: str):
        fs = pyarrow_fs(dest)
        if not is_s3(dest):
            fs.create_dir(fs_path(dest), recursive=True)
        self.fs, self.path = fs, join(dest, "class_probability_points.parquet")
        self._tmp = join(dest, f"_tmp-points-{uuid.uuid4().hex[:8]}.parquet")  # moved into place by commit()
        self.schema = conform(empty("class_probability_points"), "class_probability_points").schema
        self._writer = pq.ParquetWriter(fs_path(self._tmp), self.schema, filesystem=fs, compression="zstd")
        self.rows = 0

    def write(self, df: pl.DataFrame) -> None:
        tbl = conform(df.sort("method", "target", "record_id", "record_key", "window").to_arrow(),
                      "class_probability_points")
        self._writer.write_table(tbl)
        self.rows += tbl.num_rows

    def close(self) -> None:
        self._writer.close()

    def commit(self) -> None:
        self.close()
        self.fs.move(fs_path(self._tmp), fs_path(self.path))

    def discard(self) -> None:
        self.close()
        try:
            self.fs.delete_file(fs_path(self._tmp))
        except OSError:
            pass


class Accumulator:
    """Running merge of shard partials. Memory is bounded by the number of groups, plus, per record window x
    method x target, an 8-byte hash (the duplicate check) and its ``relevance_sum`` as float64 (the exact
    bootstrap CIs of ``class_probability`` resample them). The points rows themselves are kept only without a
    ``sink`` (a :class:`PointsSink` that writes them shard by shard instead)."""

    def __init__(self, *, n_bins: int = 10, sink: PointsSink | None = None):
        self.n_bins, self.sink = n_bins, sink
        self.points: list[pl.DataFrame] = []
        self.bins: dict[tuple, list] = {}  # (method, target, group, bin) -> [n, sum of probability, [values]]
        self.hashes: list[np.ndarray] = []
        self.lead: list[pl.DataFrame] = []
        self.wave: list[pl.DataFrame] = []
        self.beat: dict = {}
        self.shards = 0

    def _add_points(self, pts: pl.DataFrame) -> None:
        self.hashes.append(pts.select(pl.struct("record_key", "window", "method", "target").hash(seed=0))
                           .to_series().to_numpy())
        if self.sink is not None:
            self.sink.write(pts)
        else:
            self.points.append(pts)
        binned = (pts.filter(pl.col("probability").is_not_null() & pl.col("relevance_sum").is_not_null())
                  .with_columns((pl.col("probability") * self.n_bins).floor().clip(0, self.n_bins - 1)
                                .cast(pl.Int32).alias("bin"))
                  .group_by("method", "target", "group", "bin")
                  .agg(pl.len().alias("n"), pl.col("probability").sum().alias("p"), pl.col("relevance_sum")))
        for m, t, g, b, n, p, vals in binned.iter_rows():
            slot = self.bins.setdefault((m, t, g, b), [0, 0.0, []])
            slot[0] += n
            slot[1] += p
            slot[2].append(np.asarray(vals, np.float64))

    def add(self, part: dict) -> None:
        self.shards += 1
        if part.get("points") is not None and part["points"].height:
            self._add_points(part["points"])
        for name in ("lead", "wave"):
            if part.get(name) is not None and part[name].height:
                getattr(self, name).append(part[name])
        for key, (n, sm, s2, rm, r2) in part.get("beat", {}).items():
            if key not in self.beat:
                self.beat[key] = (n.astype(np.int64), sm, s2, rm, r2)
                continue
            n0, sm0, s20, rm0, r20 = self.beat[key]
            tot = n0 + n
            with np.errstate(invalid="ignore", divide="ignore"):
                w = np.where(tot > 0, n / tot, 0.0)
            ds, dr = sm - sm0, rm - rm0
            self.beat[key] = (tot, sm0 + ds * w, s20 + s2 + ds * ds * n0 * w, rm0 + dr * w, r20 + r2 + dr * dr * n0 * w)
        if self.shards % 64 == 0:  # one array per bin and one of hashes, not one per shard
            for slot in self.bins.values():
                if len(slot[2]) > 1:
                    slot[2] = [np.concatenate(slot[2])]
            if len(self.hashes) > 1:
                self.hashes = [np.concatenate(self.hashes)]
        if len(self.lead) > 64:  # keep the partial lists short
            self.lead = [merge_moments(pl.concat(self.lead), ["method", "target", "group", "lead"])]
        if len(self.wave) > 64:
            self.wave = [merge_moments(pl.concat(self.wave), ["method", "target", "group", "lead", "wave"])]


# ---------------------------------------------------------------------------------- finals
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
    out = m.select(*by, pl.col("n").cast(pl.Int64), pl.col("mean").alias("mean_relevance"), _sd().alias("_sd"))
    out = out.with_columns(*_normal_ci("mean_relevance", "_sd", "n"))
    out = out.with_columns(
        pl.when(pl.col("ci_low") > 0).then(pl.lit("+")).when(pl.col("ci_high") < 0).then(pl.lit("-"))
        .otherwise(pl.lit("0")).alias("sign"),
        pl.col("wave").replace_strict({k: v[0] for k, v in waves.items()}, return_dtype=pl.Float64).alias("start_ms"),
        pl.col("wave").replace_strict({k: v[1] for k, v in waves.items()}, return_dtype=pl.Float64).alias("end_ms"),
        pl.col("wave").replace_strict({k: i for i, k in enumerate(waves)}, return_dtype=pl.Int32).alias("_w"))
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


# ---------------------------------------------------------------------------------- driver
def _write(df: pl.DataFrame, name: str, dest: str) -> None:
    tbl = conform(df.to_arrow(), name)
    fs = pyarrow_fs(dest)
    if not is_s3(dest):
        fs.create_dir(fs_path(dest), recursive=True)
    pq.write_table(tbl, fs_path(join(dest, f"{name}.parquet")), filesystem=fs, compression="zstd")


def _conformed(df: pl.DataFrame, name: str) -> pl.DataFrame:
    return pl.from_arrow(conform(df.to_arrow(), name))


def _partial_task(files: list[dict], threshold: float, storage_options) -> bytes:
    """Ray task body: a batch of shards -> one merged partial, as a codec payload (no pickle)."""
    from ecgray.pipeline import codec

    acc = Accumulator()
    for f in files:
        acc.add(shard_partial(f, threshold=threshold, storage_options=storage_options))
    return codec.dumps(_acc_payload(acc))


def _ipc(df: pl.DataFrame | None) -> bytes | None:
    if df is None:
        return None
    buf = io.BytesIO()
    df.write_ipc(buf)
    return buf.getvalue()


def _acc_payload(acc: Accumulator) -> dict:
    cat = lambda parts: pl.concat(parts) if parts else None  # noqa: E731
    return {"points": _ipc(cat(acc.points)), "lead": _ipc(cat(acc.lead)), "wave": _ipc(cat(acc.wave)),
            "beat_keys": [list(k) for k in acc.beat], "beat": [list(v) for v in acc.beat.values()]}


def _payload_partial(p: dict) -> dict:
    df = lambda b: None if b is None else pl.read_ipc(io.BytesIO(b))  # noqa: E731
    return {"points": df(p["points"]), "lead": df(p["lead"]), "wave": df(p["wave"]),
            "beat": {tuple(k): tuple(v) for k, v in zip(p["beat_keys"], p["beat"])}}


def _accumulate(acc: Accumulator, shards: list[dict], *, threshold: float, opts, use_ray: bool,
                shards_per_task: int, progress) -> None:
    """Add every shard's partial to ``acc``: here one shard at a time, or in Ray tasks of
    ``shards_per_task`` shards each (merged here as they finish)."""
    if use_ray:
        from ecgray.pipeline.codec import loads
        from ecgray.pipeline.run import ray_init_if_needed

        ray = ray_init_if_needed()
        task = ray.remote(num_cpus=1, max_retries=3)(_partial_task)
        batches = [shards[i:i + shards_per_task] for i in range(0, len(shards), shards_per_task)]
        pending = [task.remote(b, threshold, opts) for b in batches]
        done = 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            acc.add(_payload_partial(loads(ray.get(ready[0]))))
            done += 1
            if progress:
                progress(done, len(batches))
        return
    for i, files in enumerate(shards):
        acc.add(shard_partial(files, threshold=threshold, storage_options=opts))
        if progress:
            progress(i + 1, len(shards))


def reduce(output: str, *, threshold: float = 0.5, n_bins: int = 10, n_boot: int = 1000, seed: int = 0,
           dest: str | None = None, write: bool = True, use_ray: bool = False,
           shards_per_task: int = 16, stream_points: bool = False, progress=None) -> dict[str, pl.DataFrame]:
    """Compute the reduced tables of pipeline output ``output``; write them to ``dest``
    (default ``<output>/reduced``) as ``<name>.parquet`` unless ``write=False``.

    Streams: each committed shard is read on its own and turned into small mergeable partials
    (:func:`shard_partial`) that are merged as they come (:class:`Accumulator`). ``threshold`` decides
    ``predicted`` and splits unlabelled records into the two ``unlabelled_predicted_*`` groups. Memory is bounded
    by the number of groups (plus one small row per record for ``class_probability_points``), time
    is linear in the number of shards. ``use_ray=True`` computes the partials in Ray tasks of
    ``shards_per_task`` shards each, so no machine holds the data set, and merges them on the
    driver. ``progress(done, total)`` is called after each shard (each task with Ray).
    ``stream_points=True`` (what ``ecgray reduce`` does) writes ``class_probability_points`` shard by
    shard while reading (rows in shard order, sorted within a shard) instead of holding it, and returns
    it as a lazy scan of the written file: then memory does not grow with the number of records beyond
    16 bytes per record window x method x target (a hash and the value the bootstrap resamples).

    Returns ``{name: DataFrame}`` for the five tables of :data:`REDUCED_TABLES` (conformed to their
    schemas). Raises FileNotFoundError when ``output`` has no committed ``relevance_summary``, and
    ValueError for outputs of a schema version this reducer cannot read.
    """
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    shards = committed_shard_files(output)
    if not any("relevance_summary" in f for f in shards):
        raise FileNotFoundError(f"{output}: no committed relevance_summary shards (is it a pipeline output?)")
    if stream_points and not write:
        raise ValueError("stream_points=True writes the points table: it needs write=True")
    dest = dest or join(output, "reduced")
    opts = storage_options(output)
    acc = Accumulator(n_bins=n_bins, sink=PointsSink(dest) if stream_points else None)
    try:
        _accumulate(acc, shards, threshold=threshold, opts=opts, use_ray=use_ray, shards_per_task=shards_per_task,
                    progress=progress)
        frames = finish(acc, n_boot=n_boot, seed=seed)
    except BaseException:
        if acc.sink is not None:
            acc.sink.discard()  # no half-written points file next to the other tables
        raise
    out = {name: (frames[name] if isinstance(frames[name], pl.LazyFrame) else _conformed(frames[name], name))
           for name in REDUCED_TABLES}
    if write:
        for name, df in out.items():
            if not isinstance(df, pl.LazyFrame):  # streamed points are written already
                _write(df, name, dest)
    return out


def read_reduced(output: str, dest: str | None = None) -> dict[str, pl.DataFrame] | None:
    """The reduced tables written by :func:`reduce` (None if any is missing)."""
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


def duckdb_lead_relevance_sql(output: str, *, threshold: float = 0.5) -> str:
    """DuckDB SQL computing ``lead_relevance`` (without the schema cast) from the committed files;
    ``threshold`` splits the unlabelled records as in :func:`reduce`.

    Reads the same Parquet files as :func:`reduce` (``read_parquet([...],
    hive_partitioning=true)``); for ``s3://`` outputs DuckDB needs ``httpfs``
    and an S3 secret configured by the caller.
    """
    summ = committed_files(output, "relevance_summary")
    recs = committed_files(output, "records")
    if not summ:
        raise FileNotFoundError(f"{output}: no committed relevance_summary shards")
    src_s = f"read_parquet({_sql_list(summ)}, hive_partitioning=true)"
    classes = record_classes(pl.scan_parquet(recs[0], storage_options=storage_options(output))
                             .collect_schema().names()) if recs else ()
    if classes:
        src_r = f"read_parquet({_sql_list(recs)}, hive_partitioning=true, union_by_name=true)"
        rec = "\n    UNION ALL ".join(
            f"SELECT record_key, \"window\", '{c}' AS target, CASE WHEN label_scheme = 'none' THEN NULL "
            f"ELSE \"label_{c}\" END AS label, CASE WHEN label_scheme = 'none' THEN NULL ELSE label_normal END "
            "AS label_normal, "
            f"CAST(\"prob_{c}\" AS DOUBLE) AS prob, true AS present FROM {src_r}"
            for c in classes)
    else:
        rec = "SELECT NULL::VARCHAR AS record_key, NULL::INTEGER AS \"window\", NULL::VARCHAR AS target, " \
              "NULL::BOOLEAN AS label, NULL::BOOLEAN AS label_normal, NULL::DOUBLE AS prob, " \
              "NULL::BOOLEAN AS present WHERE false"
    thr = repr(float(threshold))
    pos, neg = UNLABELLED_GROUPS
    return f"""
WITH rec AS (
    {rec}
),
j AS (
    SELECT s.method, s.target, s.lead, CAST(s."sum" AS DOUBLE) AS rel,
           CASE WHEN r.present IS NULL THEN 'other'
                WHEN r.label IS NULL THEN CASE WHEN r.prob >= {thr} THEN '{pos}' ELSE '{neg}' END
                WHEN r.label THEN 'positive' WHEN r.label_normal THEN 'normal' ELSE 'other' END AS grp,
           CASE WHEN sum(CAST(s.abs_sum AS DOUBLE)) OVER w > 0
                THEN CAST(s.abs_sum AS DOUBLE) / sum(CAST(s.abs_sum AS DOUBLE)) OVER w END AS share
    FROM {src_s} AS s
    LEFT JOIN rec AS r ON r.record_key = s.record_key AND r."window" = s."window" AND r.target = s.target
    WINDOW w AS (PARTITION BY s.record_key, s."window", s.method, s.target)
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

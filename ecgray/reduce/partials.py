"""Per shard: the records' groups and the small mergeable partials (:func:`shard_partial`), and their running
merge (:class:`Accumulator`, with :class:`PointsSink` writing ``class_probability_points`` as it goes)."""
from __future__ import annotations

import uuid
from typing import Iterable

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from ecgray.delineate import DELINEATED
from ecgray.io.fs import fs_path, is_s3, join, pyarrow_fs
from ecgray.schemas.tables import conform, empty, record_classes

from .common import UNLABELLED_GROUPS, WAVE_COLUMNS, WAVES
from .stats import _moments_np, merge_moments


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
    length), and moments of the per-record wave relevance (a DataFrame, with ``n_delineated`` and the sums of
    the bounds used, ``start_sum`` / ``end_sum``): a record's window for a wave is its delineated bounds
    (``beats.wave_<w>_on_ms`` / ``_off_ms`` with a delineator's ``wave_<w>_method``), else ``waves``' fixed one.
    An entry counts when signal and relevance are finite and the window has beats (``n_beats > 0``)."""
    empty_waves = pl.DataFrame(schema={"method": pl.String, "target": pl.String, "group": pl.String,
                                       "lead": pl.String, "wave": pl.String, "n": pl.Int64, "mean": pl.Float64,
                                       "m2": pl.Float64, "n_delineated": pl.Int64, "start_sum": pl.Float64,
                                       "end_sum": pl.Float64})
    if beats.height == 0 or beats_rel.height == 0:
        return {}, empty_waves
    have = set(beats.columns)
    wave_cols = [pl.col(c).cast(dt) if c in have else pl.lit(None, dt).alias(c)
                 for cols in WAVE_COLUMNS.values() for c, dt in zip(cols, (pl.Float64, pl.Float64, pl.String))]
    sig = beats.select("record_key", "window", "lead", "offset_start_ms", "offset_step_ms", "n_beats", "signal",
                       *wave_cols)
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
        # waves: per record the mean relevance over its window's offsets (the record's delineated bounds, else
        # the fixed window, also when the delineated window holds no offset of the grid), then moments over records
        off = (np.float64(start) + np.float64(step) * np.arange(k)).astype(np.float32).astype(np.float64)
        for wave, (a, b) in waves.items():
            c_on, c_off, c_m = WAVE_COLUMNS.get(wave, (None, None, None))
            fixed_win = (off >= a) & (off <= b)
            lo, hi = np.full(part.height, float(a)), np.full(part.height, float(b))
            dl = np.zeros(part.height, bool)
            if c_on is not None:
                on_v = part[c_on].fill_null(np.nan).to_numpy().astype(np.float64)
                off_v = part[c_off].fill_null(np.nan).to_numpy().astype(np.float64)
                dl = part[c_m].is_in(list(DELINEATED)).fill_null(False).to_numpy() \
                    & np.isfinite(on_v) & np.isfinite(off_v) & (on_v <= off_v)
                # float32 bounds as stored, compared on the float32 grid like the fixed ones
                dwin = (off[None, :] >= on_v[:, None]) & (off[None, :] <= off_v[:, None])
                dl &= (dwin & valid).any(1)
                lo, hi = np.where(dl, on_v, lo), np.where(dl, off_v, hi)
                win = np.where(dl[:, None], dwin, fixed_win[None, :])
            else:
                win = np.broadcast_to(fixed_win, rel.shape)
            if not win.any():
                continue
            cnt = (valid & win).sum(1)
            with np.errstate(invalid="ignore", divide="ignore"):
                per_rec = np.where(valid & win, rel, 0.0).sum(1) / cnt
            ok = cnt > 0
            wn, wm, w2 = _moments_np(np.nan_to_num(per_rec)[:, None], ok[:, None], starts)
            sums = np.add.reduceat(np.stack([ok & dl, np.where(ok, lo, 0.0), np.where(ok, hi, 0.0)], 1)
                                   .astype(np.float64), starts, axis=0)
            wave_parts.append(keys[starts].with_columns(
                pl.lit(wave).alias("wave"), pl.Series("n", wn[:, 0], pl.Int64), pl.Series("mean", wm[:, 0]),
                pl.Series("m2", w2[:, 0]), pl.Series("n_delineated", sums[:, 0], pl.Float64).cast(pl.Int64),
                pl.Series("start_sum", sums[:, 1]), pl.Series("end_sum", sums[:, 2])))
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



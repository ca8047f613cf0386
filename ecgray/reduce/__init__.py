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
rows. Schemas of the outputs: ``ecgray.schemas.tables.TABLES`` (``class_probability``,
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
* *waves*: each record's delineated P, QRS and T (``beats.wave_<w>_on_ms`` /
  ``_off_ms``, :mod:`ecgray.delineate`), else -- not delineated, or a schema <= 4
  output -- the fixed windows :data:`WAVES` (P -250..-100 ms, QRS -50..+60 ms,
  T +120..+400 ms), both ends included, counted in ``n_delineated`` / ``n_fixed``.
  A record's wave relevance is the mean of its average-beat relevance over the
  wave's offsets; ``sign`` is ``"+"`` / ``"-"`` (ASCII) when the 95 % CI of the mean
  over records lies above / below 0, else ``"0"``.
* beats: ``beats_relevance`` rows join their window's ``beats`` row on
  ``(record_key, window, lead)``; the relevance is ``relevance * relevance_scale``
  (stored precision: ``ecgray.schemas.tables.BEAT_PRECISION``); rows with null lists or
  ``n_beats`` 0 are skipped, and so are single offsets whose signal or relevance
  is NaN. Offsets: ``offset_start_ms + i * offset_step_ms`` (as float32).

The same ``lead_relevance`` query in DuckDB: :func:`duckdb_lead_relevance_sql`.
"""
from __future__ import annotations

import io
import posixpath

import polars as pl
import pyarrow.parquet as pq

from ecgray.io.fs import fs_path, is_s3, join, open_fs, pyarrow_fs, storage_options
from ecgray.schemas.tables import conform

from .common import (GROUPS, KEY, LABELLED_GROUPS, OUTCOMES, REDUCED_TABLES, UNLABELLED_GROUPS, WAVES,
                     committed_files, committed_shard_files, scan_table)
from .finals import beat_relevance, class_probability, finish, lead_relevance, wave_relevance
from .partials import (Accumulator, PointsSink, beat_partials, class_probability_points, lead_partial,
                       record_groups, shard_partial)
from .sql import duckdb_lead_relevance_sql
from .stats import Z95, bootstrap_ci, merge_moments, row_seed

__all__ = ["reduce", "read_reduced", "duckdb_lead_relevance_sql", "committed_files", "committed_shard_files",
           "scan_table", "record_groups", "shard_partial", "Accumulator", "PointsSink", "finish",
           "class_probability", "class_probability_points", "lead_relevance", "lead_partial", "beat_partials",
           "beat_relevance", "wave_relevance", "bootstrap_ci", "merge_moments", "row_seed", "GROUPS",
           "LABELLED_GROUPS", "UNLABELLED_GROUPS", "OUTCOMES", "REDUCED_TABLES", "WAVES", "KEY", "Z95"]


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
        from ecgray.evaluate.summary import has_evaluation, write_summary

        if has_evaluation(output):  # ecgray evaluate's data-set tables, next to the others
            write_summary(output, dest)
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





"""What the reduce reads and the names it uses: committed files of an output, the groups, the waves."""
from __future__ import annotations

import polars as pl

from ecgray.delineate import FIXED_WAVES
from ecgray.io.fs import storage_options
from ecgray.store import committed_table_files
from ecgray.schemas.tables import READABLE_VERSIONS

#: the fixed wave windows (ms from the R-peak, both ends included): the fallback for records whose waves were not
#: delineated (``beats.wave_<w>_method`` not a delineator's name, or a schema <= 4 output without the columns)
WAVES: dict[str, tuple[float, float]] = dict(FIXED_WAVES)
#: per wave: the ``beats`` columns of its delineated bounds and method (:mod:`ecgray.delineate`)
WAVE_COLUMNS: dict[str, tuple[str, str, str]] = {w: (f"wave_{w.lower()}_on_ms", f"wave_{w.lower()}_off_ms",
                                                     f"wave_{w.lower()}_method") for w in FIXED_WAVES}
#: groups of labelled records, then of unlabelled ones (null ``label_<target>``; split by the predicted class)
LABELLED_GROUPS = ("positive", "normal", "other")
UNLABELLED_GROUPS = ("unlabelled_predicted_positive", "unlabelled_predicted_negative")
GROUPS = LABELLED_GROUPS + UNLABELLED_GROUPS
OUTCOMES = ("TP", "FP", "FN", "TN")
REDUCED_TABLES = ("class_probability", "class_probability_points", "lead_relevance", "beat_relevance",
                  "wave_relevance")
Z95 = 1.959963984540054
KEY = ("record_key", "window")


def committed_shard_files(output: str) -> list[dict[str, str]]:
    """One ``{table: path or URI}`` per committed shard of ``output`` (shard order)
    (:func:`ecgray.store.committed_table_files`); ValueError for a shard whose schema version this
    reducer cannot read (:data:`ecgray.schemas.tables.READABLE_VERSIONS`)."""
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



"""Arrow schemas of every table ecgray writes: the single home of column names and types.

Writers call :func:`conform` before writing (it checks names and types and
attaches the table name and schema version as Parquet metadata); readers and
the reducer refer to these names. Only plain scalar and list columns are used,
so Polars and DuckDB read every file directly.

Bump :data:`SCHEMA_VERSION` whenever a column is added, removed or retyped.
"""
from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

CLASSES = ("1dAVb", "RBBB", "LBBB", "SB", "AF", "ST")
LEADS = ("DI", "DII", "DIII", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")

_provenance = [
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("model_id", pa.string(), nullable=False),
]
_key = [
    pa.field("record_id", pa.string(), nullable=False),
    pa.field("window", pa.int32(), nullable=False),
]
_target = [
    pa.field("method", pa.string(), nullable=False),
    pa.field("target", pa.string(), nullable=False),
    pa.field("output", pa.string(), nullable=False),  # "logit" or "probability"
]

TABLES: dict[str, pa.Schema] = {
    # One row per record window: where it came from, its labels, the model's probabilities.
    "records": pa.schema(
        _provenance
        + _key
        + [
            pa.field("uri", pa.string(), nullable=False),
            pa.field("dataset", pa.string()),
            pa.field("format", pa.string()),
            pa.field("fs_in", pa.float64()),
            pa.field("n_samples_in", pa.int64()),
            pa.field("window_offset", pa.int64(), nullable=False),
            pa.field("flags", pa.list_(pa.string())),
        ]
        + [pa.field(f"label_{c}", pa.bool_()) for c in CLASSES]
        + [
            pa.field("label_normal", pa.bool_()),
            pa.field("raw_codes", pa.list_(pa.string())),
            pa.field("label_scheme", pa.string()),
        ]
        + [pa.field(f"prob_{c}", pa.float32()) for c in CLASSES]
    ),
    # One row per record window x method x target x lead: summary statistics of the relevance.
    "relevance_summary": pa.schema(
        _provenance
        + _key
        + _target
        + [
            pa.field("lead", pa.string(), nullable=False),
            pa.field("probability", pa.float32()),  # model probability of `target`
            pa.field("mean", pa.float32()),
            pa.field("mean_pos", pa.float32()),  # mean of max(r, 0) over samples
            pa.field("mean_neg", pa.float32()),  # mean of min(r, 0) over samples
            pa.field("sum", pa.float32()),
            pa.field("abs_sum", pa.float32()),
            pa.field("delta", pa.float32()),  # completeness/conservation error of the record x target
        ]
    ),
    # Full per-sample relevance (optional in pipeline runs; what `ecgray explain` writes).
    "relevance": pa.schema(
        _provenance
        + _key
        + _target
        + [
            pa.field("lead", pa.string(), nullable=False),
            pa.field("window_offset", pa.int64(), nullable=False),
            pa.field("probability", pa.float32()),
            pa.field("delta", pa.float32()),
            pa.field("relevance", pa.list_(pa.float32())),  # 4096 samples at 400 Hz
        ]
    ),
    # One row per record window x method x target x lead x time offset around the R-peak.
    "beats": pa.schema(
        _provenance
        + _key
        + _target
        + [
            pa.field("lead", pa.string(), nullable=False),
            pa.field("offset_ms", pa.float32(), nullable=False),
            pa.field("signal", pa.float32()),
            pa.field("relevance", pa.float32()),
            pa.field("n_beats", pa.int32()),
            pa.field("quality", pa.string()),
        ]
    ),
    # One row per record (or record window) that could not be processed.
    "errors": pa.schema(
        [
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("record_id", pa.string(), nullable=False),
            pa.field("uri", pa.string()),
            pa.field("stage", pa.string(), nullable=False),
            pa.field("error_type", pa.string(), nullable=False),
            pa.field("message", pa.string(), nullable=False),
        ]
    ),
}


class SchemaError(ValueError):
    """A table does not match its declared schema."""


def schema(name: str) -> pa.Schema:
    """The Arrow schema of table ``name`` with its name and version as metadata."""
    try:
        s = TABLES[name]
    except KeyError:
        raise SchemaError(f"unknown table {name!r}; known: {', '.join(TABLES)}") from None
    return s.with_metadata({b"ecgray.table": name.encode(), b"ecgray.schema_version": str(SCHEMA_VERSION).encode()})


def empty(name: str) -> pa.Table:
    """A table with no rows and the schema of ``name``."""
    return schema(name).empty_table()


def from_rows(name: str, rows: list[dict]) -> pa.Table:
    """Build table ``name`` from a list of row dicts (missing nullable columns are null)."""
    s = schema(name)
    if not rows:
        return s.empty_table()
    extra = set().union(*(r.keys() for r in rows)) - set(s.names)
    if extra:
        raise SchemaError(f"table {name!r}: unknown columns {sorted(extra)}")
    return pa.Table.from_pylist(rows, schema=s)


def conform(table: pa.Table, name: str) -> pa.Table:
    """Check ``table`` against the schema of ``name``; reorder columns and cast safely.

    Raises :class:`SchemaError` on missing or extra columns, on nulls in
    non-nullable columns, and on casts that would lose information.
    """
    s = schema(name)
    missing = [n for n in s.names if n not in table.column_names]
    extra = [n for n in table.column_names if n not in s.names]
    if missing or extra:
        raise SchemaError(f"table {name!r}: missing columns {missing}, unexpected columns {extra}")
    table = table.select(s.names)
    for field in s:
        col = table.column(field.name)
        if not field.nullable and col.null_count:
            raise SchemaError(f"table {name!r}: column {field.name!r} has {col.null_count} nulls")
    try:
        return table.cast(s, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise SchemaError(f"table {name!r}: {exc}") from exc

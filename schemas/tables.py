"""Arrow schemas of every table ecgray writes: the single home of column names and types.

Writers call :func:`conform` before writing (it checks names and types and
attaches the table name and schema version as Parquet metadata); readers and
the reducer refer to these names. Only plain scalar and list columns are used,
so Polars and DuckDB read every file directly.

Bump :data:`SCHEMA_VERSION` whenever a column is added, removed or retyped.

Classes and leads follow the model (``ecgray.models.spec.ModelSpec``): ``records`` has one
``label_<class>`` and one ``prob_<class>`` column per class of the model, in the model's order
(:func:`records_schema`; the class list is also in the file's metadata, ``ecgray.classes``, and in
the run's ``_manifest.json``, ``model_spec``); ``lead`` columns hold canonical lead names
(``ecgray.leads.canonical_lead``: ``DI``, ``DII``, ..., ``V6``) whatever the model calls them.
"""
from __future__ import annotations

import json
import re

import pyarrow as pa

SCHEMA_VERSION = 5
#: versions :mod:`ecgray.reduce` can read (v3: ``record_key`` in every table, compact ``beats`` +
#: ``beats_relevance``; v4: the class columns of ``records`` and the leads follow the model's spec --
#: a v3 output is the v4 layout of the Ribeiro et al. 2020 classes; v5: the delineated wave bounds of
#: ``beats`` (``wave_*``) -- a v3/v4 output lacks them and the reduce uses the fixed windows for every
#: record, flagged; v2 outputs must be recomputed: they cannot tell records that share a name apart)
READABLE_VERSIONS = (3, 4, 5)

#: columns of ``records`` a class column must not collide with (case-insensitively: DuckDB folds case)
_RECORD_LABEL_COLUMNS = ("label_normal", "label_scheme")
_CLASS_COLUMN = re.compile(r"^(label|prob)_(.+)$")

_provenance = [
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("model_id", pa.string(), nullable=False),
]
# record_key: the record's path relative to the input root (``site_a/X``, ``exams.hdf5#12``), unique
# within an input; every join uses (record_key, window). record_id is the display name (may repeat).
_key = [
    pa.field("record_key", pa.string(), nullable=False),
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
        # label_normal: null when the record has no labels at all (label_scheme "none": no #Dx and no
        # labels CSV row, e.g. MIMIC-IV-ECG), never False for "unknown". The class columns follow
        # (records_schema): label_<class> (bool; null when unknown) ... then prob_<class> (float32) ...
        + [
            pa.field("label_normal", pa.bool_()),
            pa.field("raw_codes", pa.list_(pa.string())),
            pa.field("label_scheme", pa.string()),
        ]
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
            pa.field("relevance", pa.list_(pa.float32())),  # the model's n_samples (4096 at 400 Hz for Ribeiro et al.)
        ]
    ),
    # One row per record window x lead: the average beat around the R-peak. Sample i of ``signal`` lies at
    # offset_start_ms + i * offset_step_ms from the R-peak (-300 ms, 1000 / fs ms: 320 samples at 400 Hz, 400 at 500 Hz).
    # Null signal (and n_beats 0) when no beat was found. Precision (BEAT_PRECISION below): float16.
    "beats": pa.schema(
        _provenance
        + _key
        + [
            pa.field("lead", pa.string(), nullable=False),
            pa.field("offset_start_ms", pa.float32(), nullable=False),
            pa.field("offset_step_ms", pa.float32(), nullable=False),
            pa.field("signal", pa.list_(pa.float16())),  # mV, float16: relative error <= 2**-11
            pa.field("n_beats", pa.int32()),
            pa.field("quality", pa.string()),  # ok, fallback_lead, few_beats, no_beats (see ecgray.beats)
            pa.field("lead_used", pa.string()),  # lead the R-peaks were detected on
            pa.field("heart_rate_bpm", pa.float32()),  # 60 / median RR of the detected beats
            # The window's delineated waves (ecgray.delineate; the same on every lead row of the window), ms from
            # the R-peak, both ends included; null unless wave_<w>_method names a delineator. wave_<w>_method:
            # "neurokit2-prominence" (P), "spatial-velocity" (QRS), "neurokit2-dwt" (T), "fixed" (not delineated:
            # the reduce uses its fixed window) or "absent" (P only: no consistent P wave, e.g. AF; fixed window).
            # Absent in schema <= 4 outputs (read as "fixed").
            pa.field("wave_p_on_ms", pa.float32()),
            pa.field("wave_p_off_ms", pa.float32()),
            pa.field("wave_p_method", pa.string()),
            pa.field("wave_qrs_on_ms", pa.float32()),
            pa.field("wave_qrs_off_ms", pa.float32()),
            pa.field("wave_qrs_method", pa.string()),
            pa.field("wave_t_on_ms", pa.float32()),
            pa.field("wave_t_off_ms", pa.float32()),
            pa.field("wave_t_method", pa.string()),
        ]
    ),
    # One row per record window x method x target x lead: the relevance on the average beat, on the offsets
    # of the window's ``beats`` row (same offset_start_ms / offset_step_ms; null when no beat was found).
    # Stored scaled: relevance[i] * relevance_scale is the value (BEAT_PRECISION below).
    "beats_relevance": pa.schema(
        _provenance
        + _key
        + _target
        + [
            pa.field("lead", pa.string(), nullable=False),
            pa.field("relevance", pa.list_(pa.float16())),  # relevance / relevance_scale, in [-1, 1]
            pa.field("relevance_scale", pa.float32()),  # a power of two: 2**ceil(log2(max |relevance| of the row))
        ]
    ),
    # One row per record (or record window) that could not be processed.
    "errors": pa.schema(
        [
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("record_key", pa.string(), nullable=False),
            pa.field("record_id", pa.string(), nullable=False),
            pa.field("uri", pa.string()),
            pa.field("stage", pa.string(), nullable=False),
            pa.field("error_type", pa.string(), nullable=False),
            pa.field("message", pa.string(), nullable=False),
        ]
    ),
}

# --------------------------------------------------------------------------------------------
# Reduced tables (``ecgray.reduce``: ``<output>/reduced/<name>.parquet``), one file each.
# A "record" below is one record window (record_key, window). The group of a record for a
# target (ecgray.reduce.GROUPS): with label_<target> known, "positive" (label_<target>), "normal"
# (label_normal) or "other" (neither); with label_<target> null (an unlabelled record),
# "unlabelled_predicted_positive" (records.prob_<target> >= the reduce's threshold) or
# "unlabelled_predicted_negative" (below it, or null). CIs are 95 %.
_reduced_key = [
    pa.field("method", pa.string(), nullable=False),
    pa.field("target", pa.string(), nullable=False),
    # "positive" | "normal" | "other" | "unlabelled_predicted_positive" | "unlabelled_predicted_negative"
    pa.field("group", pa.string(), nullable=False),
]
TABLES.update({
    # One row per record x method x target: relevance_sum = sum over leads of relevance_summary.sum
    # (the record's total relevance for the target); outcome from probability >= threshold vs label.
    "class_probability_points": pa.schema(
        _key
        + [
            pa.field("method", pa.string(), nullable=False),
            pa.field("target", pa.string(), nullable=False),
            pa.field("group", pa.string(), nullable=False),
            pa.field("probability", pa.float64()),
            pa.field("relevance_sum", pa.float64()),
            pa.field("label", pa.bool_()),  # label_<target>; null when unknown
            pa.field("predicted", pa.bool_()),  # probability >= threshold
            pa.field("outcome", pa.string()),  # "TP" | "FP" | "FN" | "TN"; null when the label is unknown
        ]
    ),
    # One row per method x target x group x probability bin (n_bins equal bins on [0, 1], the last
    # one closed): mean of relevance_sum with a seeded percentile-bootstrap 95 % CI.
    "class_probability": pa.schema(
        _reduced_key
        + [
            pa.field("bin", pa.int32(), nullable=False),
            pa.field("bin_low", pa.float64(), nullable=False),
            pa.field("bin_high", pa.float64(), nullable=False),
            pa.field("n", pa.int64(), nullable=False),
            pa.field("mean_probability", pa.float64()),
            pa.field("mean_relevance_sum", pa.float64()),
            pa.field("ci_low", pa.float64()),
            pa.field("ci_high", pa.float64()),
            pa.field("n_boot", pa.int32(), nullable=False),
        ]
    ),
    # One row per method x target x group x lead: the lead's relevance (relevance_summary.sum) over
    # records, normal-approximation CI (mean +- 1.96 sd / sqrt(n)), share of the record's absolute
    # relevance (abs_sum / sum of abs_sum over leads, averaged over records), rank (1 = largest mean).
    "lead_relevance": pa.schema(
        _reduced_key
        + [
            pa.field("lead", pa.string(), nullable=False),
            pa.field("n", pa.int64(), nullable=False),
            pa.field("mean_relevance", pa.float64()),
            pa.field("sd_relevance", pa.float64()),
            pa.field("ci_low", pa.float64()),
            pa.field("ci_high", pa.float64()),
            pa.field("share_abs", pa.float64()),
            pa.field("rank", pa.int32()),
        ]
    ),
    # One row per method x target x group x lead x offset_ms (ms from the R-peak): the average beat's
    # signal and relevance averaged over records, normal-approximation CIs.
    "beat_relevance": pa.schema(
        _reduced_key
        + [
            pa.field("lead", pa.string(), nullable=False),
            pa.field("offset_ms", pa.float32(), nullable=False),
            pa.field("n", pa.int64(), nullable=False),
            pa.field("mean_signal", pa.float64()),
            pa.field("signal_ci_low", pa.float64()),
            pa.field("signal_ci_high", pa.float64()),
            pa.field("mean_relevance", pa.float64()),
            pa.field("ci_low", pa.float64()),
            pa.field("ci_high", pa.float64()),
        ]
    ),
    # One row per method x target x group x lead x wave: per record the mean beat relevance over the wave's
    # window (both ends included; the record's delineated bounds, beats.wave_*, else the fixed window of
    # ecgray.reduce.WAVES), then mean over records with a normal-approximation CI; sign "+" / "-" when the
    # CI excludes 0, else "0". start_ms / end_ms: the mean over the records of the bounds used;
    # n = n_delineated + n_fixed (records with delineated bounds / with the fixed window).
    "wave_relevance": pa.schema(
        _reduced_key
        + [
            pa.field("lead", pa.string(), nullable=False),
            pa.field("wave", pa.string(), nullable=False),  # "P" | "QRS" | "T"
            pa.field("start_ms", pa.float64(), nullable=False),
            pa.field("end_ms", pa.float64(), nullable=False),
            pa.field("n", pa.int64(), nullable=False),
            pa.field("n_delineated", pa.int64(), nullable=False),
            pa.field("n_fixed", pa.int64(), nullable=False),
            pa.field("mean_relevance", pa.float64()),
            pa.field("ci_low", pa.float64()),
            pa.field("ci_high", pa.float64()),
            pa.field("sign", pa.string()),
        ]
    ),
})


#: How ``beats`` and ``beats_relevance`` store their lists (``ecgray.tables.beats_tables``): signal as float16 (relative
#: error <= 2**-11, i.e. < 0.05 %, about 1 uV at 2 mV); relevance divided by a power-of-two row scale, then float16:
#: relative error <= 2**-11 for values >= 2**-14 of the row's largest |value|, absolute error <= 2**-25 of it below.
#: The tables derived from them (beat_relevance, wave_relevance) average these values; all other tables are float32.
BEAT_PRECISION = "float16 (relevance with a power-of-two row scale)"


class SchemaError(ValueError):
    """A table does not match its declared schema."""


def check_classes(classes) -> tuple[str, ...]:
    """The class names as a tuple; :class:`SchemaError` when they cannot name ``records`` columns:
    empty or repeated names, or ``label_<class>`` equal to ``label_normal`` / ``label_scheme`` or to
    another class's column ignoring case (DuckDB matches column names case-insensitively)."""
    classes = tuple(str(c) for c in classes)
    seen: dict[str, str] = {c.lower(): c for c in _RECORD_LABEL_COLUMNS}
    for c in classes:
        if not c:
            raise SchemaError("a class name is empty")
        col = f"label_{c}".lower()
        if col in seen:
            other = seen[col]
            raise SchemaError(f"class {c!r}: its column label_{c} collides with {other!r} (case-insensitively); "
                              "rename the class in the model's spec")
        seen[col] = f"label_{c}"
    return classes


def records_schema(classes) -> pa.Schema:
    """The ``records`` schema of a model with ``classes``: the fixed columns, ``label_<class>`` per class,
    then ``prob_<class>`` per class (model order)."""
    classes = check_classes(classes)
    return pa.schema(list(TABLES["records"]) + [pa.field(f"label_{c}", pa.bool_()) for c in classes]
                     + [pa.field(f"prob_{c}", pa.float32()) for c in classes])


def record_classes(names) -> tuple[str, ...]:
    """The classes of a ``records`` table from its column names (the ``prob_<class>`` columns, in order)."""
    return tuple(m.group(2) for n in names if (m := _CLASS_COLUMN.match(n)) and m.group(1) == "prob")


def schema(name: str, classes=None) -> pa.Schema:
    """The Arrow schema of table ``name`` with its name and version as metadata; ``records`` with the
    columns of ``classes`` (and ``ecgray.classes``, their JSON list, as metadata)."""
    try:
        s = TABLES[name]
    except KeyError:
        raise SchemaError(f"unknown table {name!r}; known: {', '.join(TABLES)}") from None
    meta = {b"ecgray.table": name.encode(), b"ecgray.schema_version": str(SCHEMA_VERSION).encode()}
    if name == "records":
        classes = check_classes(classes or ())
        s = records_schema(classes)
        meta[b"ecgray.classes"] = json.dumps(list(classes)).encode()
    return s.with_metadata(meta)


def empty(name: str, classes=None) -> pa.Table:
    """A table with no rows and the schema of ``name`` (``records``: of ``classes``)."""
    return schema(name, classes).empty_table()


def from_rows(name: str, rows: list[dict], classes=None) -> pa.Table:
    """Build table ``name`` from a list of row dicts (missing nullable columns are null); ``records`` rows
    for ``classes`` (default: the ``prob_<class>`` keys of the first row)."""
    if name == "records" and classes is None:
        classes = record_classes(rows[0]) if rows else ()
    s = schema(name, classes)
    if not rows:
        return s.empty_table()
    extra = set().union(*(r.keys() for r in rows)) - set(s.names)
    if extra:
        raise SchemaError(f"table {name!r}: unknown columns {sorted(extra)}")
    return pa.Table.from_pylist(rows, schema=s)


def conform(table: pa.Table, name: str, classes=None) -> pa.Table:
    """Check ``table`` against the schema of ``name``; reorder columns and cast safely. ``records``:
    against the columns of ``classes`` (default: those of its ``prob_<class>`` columns).

    Raises :class:`SchemaError` on missing or extra columns, on nulls in
    non-nullable columns, and on casts that would lose information.
    """
    if name == "records" and classes is None:
        classes = record_classes(table.column_names)
    s = schema(name, classes)
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

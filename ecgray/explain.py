"""The core, Ray-free path: records in, Arrow tables out.

Three plain stages that the CLI, notebooks and the Ray pipeline share:

* :func:`prepare` — read one record (local or ``s3://``) and cut it into model
  input windows; bad input becomes a row of the ``errors`` table, never an
  exception;
* :func:`explain_windows` — probabilities and relevance for a batch of windows,
  every requested method and target, as the ``records``, ``relevance_summary``
  and (optionally) ``relevance`` tables (built by :mod:`ecgray.tables`);
* :func:`explain` — both, over a list of record URIs.
"""
from __future__ import annotations

import traceback
import uuid
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa

from ecgray.schemas.tables import SchemaError, check_classes, from_rows

from .attribution import attribute
from .errors import ECGError, ModelError, redact
from .io import read_record
from .models.spec import RIBEIRO2020, ModelSpec, spec_of
from .preprocess import preprocess
from .tables import key_of, per_lead_tables, records_table


def new_run_id() -> str:
    """A short unique id for a run (stored in every output row)."""
    return uuid.uuid4().hex[:12]



def error_row(run_id: str, record_id: str | None, uri: str | None, exc: BaseException, stage: str = "read",
              record_key: str | None = None) -> dict:
    """One ``errors`` row for an exception; unexpected exceptions keep their type and the last frame.
    ``record_key`` defaults to ``uri`` (then to the record id)."""
    if isinstance(exc, ECGError):
        row = exc.as_row()
        row["record_id"] = record_id or exc.record_id
    else:
        where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        at = f" (at {where[0].filename.rsplit('/', 1)[-1]}:{where[0].lineno})" if where else ""
        row = {
            "record_id": record_id or "<unknown>",
            "stage": stage,
            "error_type": f"internal_{type(exc).__name__}",
            "message": redact(f"{record_id or uri}: unexpected {type(exc).__name__}: {exc}{at}"),
        }
    row.update(run_id=run_id, uri=uri, record_key=record_key or (str(uri) if uri else row["record_id"]))
    return row


@dataclass
class PreparedRecord:
    """Windows of one record ready for the model, with the record's metadata."""

    record: object  # ecgray.io.Record
    windows: list  # list[ecgray.preprocess.Prepared]


def prepare(uri: str, *, run_id: str, labels_csv: str | None = None, policy: str = "first",
            stride_s: float | None = None, max_windows: int | None = None,
            record_key: str | None = None, spec: ModelSpec = RIBEIRO2020) -> tuple[PreparedRecord | None, dict | None]:
    """Read and preprocess one record for a model of ``spec``. Returns ``(prepared, None)`` or
    ``(None, error_row)``. ``record_key``: the record's key within its input (default: ``uri``)."""
    record_id = None
    key = record_key or str(uri)
    try:
        rec = read_record(uri, labels_csv=labels_csv)
        record_id = rec.record_id
        rec.record_key = key
    except Exception as exc:  # noqa: BLE001 - every failure becomes an errors row
        return None, error_row(run_id, getattr(exc, "record_id", None) or _id_from_uri(uri), uri, exc, "read", key)
    try:
        windows = preprocess(rec, spec=spec, policy=policy, stride_s=stride_s, max_windows=max_windows)
    except Exception as exc:  # noqa: BLE001
        return None, error_row(run_id, record_id, uri, exc, "preprocess", key)
    return PreparedRecord(rec, windows), None


def _id_from_uri(uri: str) -> str:
    name = str(uri).rstrip("/").rsplit("/", 1)[-1]
    for ext in (".hea", ".mat", ".dat", ".hdf5", ".h5", ".edf"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return name or str(uri)


@dataclass
class ExplainConfig:
    """What to explain and how; stored with every output row."""

    model_name: str
    model_id: str
    methods: Sequence[str] = ("integrated_gradients",)
    targets: Sequence[str] | None = None  # None = all classes of the model
    output: str = "logit"
    params: dict = field(default_factory=dict)  # per-method keyword arguments: {"integrated_gradients": {"n_steps": 16}}
    keep_relevance: bool = True  # also build the full per-sample `relevance` table
    batch_size: int = 8  # windows per attribution call
    spec: ModelSpec = RIBEIRO2020  # the model's: geometry, leads and classes of every table
    waves: str = "delineated"  # beats: delineate P/QRS/T per record, or "fixed" windows only

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    @property
    def leads(self) -> tuple[str, ...]:
        """The model's leads as the tables name them (canonical: ``DI``, ``DII``, ..., ``V6``)."""
        return self.spec.canonical_leads


def require_table_layout(model) -> ModelSpec:
    """The model's spec (:func:`~ecgray.models.spec.spec_of`), checked against what the output tables
    can hold: any geometry, leads and classes, as long as every class can name a ``records`` column
    (:func:`ecgray.schemas.tables.check_classes`); :class:`ModelError` otherwise."""
    spec = spec_of(model)
    try:
        check_classes(spec.classes)
    except SchemaError as e:
        raise ModelError(f"{getattr(model, 'source', None) or type(model).__name__}: {e}") from None
    return spec


def config_for(model, cfg: ExplainConfig) -> ExplainConfig:
    """``cfg`` with the spec of ``model`` (checked by :func:`require_table_layout`)."""
    spec = require_table_layout(model)
    return cfg if cfg.spec == spec else replace(cfg, spec=spec)


def explain_windows(model, items: list[tuple[object, object]], cfg: ExplainConfig, *, run_id: str) -> dict[str, pa.Table]:
    """Explain a batch of ``(record, window)`` pairs with every method of ``cfg``.

    Returns ``records`` (one row per window), ``relevance_summary`` and, when
    ``cfg.keep_relevance``, ``relevance`` — all conforming to ``schemas``.
    """
    cfg = config_for(model, cfg)
    x = np.stack([w.x for _, w in items]).astype(np.float32, copy=False)
    tables: dict[str, list[pa.Table]] = {"records": [], "relevance_summary": [], "relevance": []}
    probs = None
    for method in cfg.methods:
        attr = attribute(model, x, targets=cfg.targets, method=method, output=cfg.output,
                         batch_size=cfg.batch_size, **cfg.params.get(method, {}))
        if probs is None:
            probs = attr.probabilities
        for name, tbl in per_lead_tables(run_id, cfg, items, attr, method, cfg.classes).items():
            tables[name].append(tbl)
    tables["records"].append(records_table(run_id, cfg, items, probs))
    return {k: pa.concat_tables(v) for k, v in tables.items() if v}


def chunks(seq: Iterable, size: int):
    buf = []
    for item in seq:
        buf.append(item)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def explain(model, uris: Sequence[str], cfg: ExplainConfig, *, run_id: str | None = None, labels_csv: str | None = None,
            policy: str = "first", stride_s: float | None = None, max_windows: int | None = None,
            record_keys: Sequence[str] | None = None) -> dict[str, pa.Table]:
    """Explain records end to end in this process (no Ray).

    Every URI ends either in the output tables or as exactly one row of ``errors``. ``record_keys``
    (one per URI, e.g. the catalog's ``record_key``) name the records in the tables; default: the URIs.
    """
    cfg = config_for(model, cfg)
    run_id = run_id or new_run_id()
    errors: list[dict] = []
    if record_keys is not None and len(record_keys) != len(uris):
        raise ValueError(f"{len(record_keys)} record_keys for {len(uris)} uris")
    keys = list(record_keys) if record_keys is not None else [str(u) for u in uris]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"record key {dup!r} given more than once: every record needs its own key")

    def windows():
        for uri, key in zip(uris, keys):
            prep, err = prepare(uri, run_id=run_id, labels_csv=labels_csv, policy=policy,
                                stride_s=stride_s, max_windows=max_windows, record_key=key, spec=cfg.spec)
            if err is not None:
                errors.append(err)
                continue
            for w in prep.windows:
                yield prep.record, w

    parts: dict[str, list[pa.Table]] = {}
    for batch in chunks(windows(), cfg.batch_size):
        try:
            out = explain_windows(model, batch, cfg, run_id=run_id)
        except Exception as exc:  # noqa: BLE001 - one bad batch must not end the run
            for rec, _ in batch:
                errors.append(error_row(run_id, rec.record_id, rec.uri, exc, "attribute", key_of(rec)))
            continue
        for name, tbl in out.items():
            parts.setdefault(name, []).append(tbl)
    result = {name: pa.concat_tables(v) for name, v in parts.items()}
    for name in ("records", "relevance_summary") + (("relevance",) if cfg.keep_relevance else ()):
        result.setdefault(name, from_rows(name, [], cfg.classes if name == "records" else None))
    # A record with several windows that failed in one batch must appear once in errors.
    seen, unique = set(), []
    for e in errors:
        if e["record_key"] not in seen:
            seen.add(e["record_key"])
            unique.append(e)
    result["errors"] = from_rows("errors", unique)
    return result

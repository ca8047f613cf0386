"""The core, Ray-free path: records in, Arrow tables out.

Three plain stages that the CLI, notebooks and the Ray pipeline share:

* :func:`prepare` — read one record (local or ``s3://``) and cut it into model
  input windows; bad input becomes a row of the ``errors`` table, never an
  exception;
* :func:`explain_windows` — probabilities and relevance for a batch of windows,
  every requested method and target, as the ``records``, ``relevance_summary``
  and (optionally) ``relevance`` tables;
* :func:`explain` — both, over a list of record URIs.
"""
from __future__ import annotations

import traceback
import uuid
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa

from ecgray.schemas.tables import SchemaError, check_classes, conform, from_rows

from .attribution import attribute
from .errors import ECGError, ModelError, redact
from .io import read_record
from .io.labels import label_of
from .leads import canonical_lead
from .models.spec import RIBEIRO2020, ModelSpec, spec_of
from .preprocess import preprocess


def new_run_id() -> str:
    """A short unique id for a run (stored in every output row)."""
    return uuid.uuid4().hex[:12]


def key_of(rec) -> str:
    """The record key of a record (or record metadata): its ``record_key``, else its URI."""
    return getattr(rec, "record_key", "") or str(rec.uri)


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

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    @property
    def leads(self) -> tuple[str, ...]:
        """The model's leads as the tables name them (canonical: ``DI``, ``DII``, ..., ``V6``)."""
        return table_leads(self.spec)


def table_leads(spec: ModelSpec) -> tuple[str, ...]:
    """The leads of ``spec`` in its order, by their canonical names (the ``lead`` values of every table)."""
    return tuple(canonical_lead(x) for x in spec.leads)


def _n_samples(rec) -> int:
    """Samples of a record as read (``n_samples_in``): ``rec.n_samples`` (an :class:`ecgray.io.Record`, or
    record metadata without the signal, ``ecgray.pipeline.stages._record_meta``)."""
    return int(rec.n_samples)


def records_table(run_id: str, cfg: ExplainConfig, items: list[tuple[object, object]], probs: np.ndarray) -> pa.Table:
    """The ``records`` table of ``(record, window)`` pairs with the model's probabilities ``probs (N, C)``
    (``C``: the classes of ``cfg.spec``, one ``label_<class>`` and ``prob_<class>`` column each).
    Of a record it reads ``record_key`` (else ``uri``), ``record_id``, ``uri``, ``dataset``, ``format``,
    ``fs``, ``n_samples`` (see :func:`_n_samples`; never the signal itself) and ``labels``; of a window
    ``window``, ``offset`` and ``flags``. ``label_<class>``: :func:`ecgray.io.labels.label_of` (null
    when the labels do not say, e.g. a class the readers do not know, or a record without labels)."""
    classes = cfg.classes
    if probs.shape[1:] != (len(classes),):
        raise ValueError(f"probabilities of shape {probs.shape} for {len(classes)} classes {list(classes)}")
    rows = []
    for (rec, w), p in zip(items, probs):
        lab = rec.labels
        known = lab.scheme != "none"  # scheme "none" (no labels at all, e.g. MIMIC-IV-ECG): labels null, not False
        row = {
            "run_id": run_id, "model": cfg.model_name, "model_id": cfg.model_id,
            "record_key": key_of(rec), "record_id": rec.record_id, "window": int(w.window), "uri": rec.uri,
            "dataset": rec.dataset, "format": rec.format, "fs_in": float(rec.fs),
            "n_samples_in": _n_samples(rec), "window_offset": int(w.offset), "flags": list(w.flags),
            "label_normal": bool(lab.normal) if known else None, "raw_codes": list(lab.raw),
            "label_scheme": lab.scheme,
        }
        for c in classes:
            row[f"label_{c}"] = label_of(lab, c)
        for i, c in enumerate(classes):
            row[f"prob_{c}"] = float(p[i])
        rows.append(row)
    return from_rows("records", rows, classes)


def per_lead_tables(run_id: str, cfg: ExplainConfig, items, attr, method: str, classes: Sequence[str]) -> dict[str, pa.Table]:
    """Vectorised ``relevance_summary`` (and ``relevance``) rows for one attribution result."""
    r = attr.relevance  # (N, T, 12, L)
    n, t, n_leads, length = r.shape
    class_index = [list(classes).index(tg) for tg in attr.targets]
    prob = attr.probabilities[:, class_index]  # (N, T)
    delta = attr.delta if attr.delta is not None else np.full((n, t), np.nan, np.float32)
    rep = t * n_leads
    cols = {
        "run_id": pa.array([run_id] * (n * rep)),
        "model": pa.array([cfg.model_name] * (n * rep)),
        "model_id": pa.array([cfg.model_id] * (n * rep)),
        "record_key": pa.array(np.repeat([key_of(rec) for rec, _ in items], rep)),
        "record_id": pa.array(np.repeat([rec.record_id for rec, _ in items], rep)),
        "window": pa.array(np.repeat([w.window for _, w in items], rep).astype(np.int32)),
        "method": pa.array([method] * (n * rep)),
        "target": pa.array(np.tile(np.repeat(list(attr.targets), n_leads), n)),
        "output": pa.array([cfg.output] * (n * rep)),
        "lead": pa.array(np.tile(_leads(cfg, n_leads), n * t)),
    }
    per_row = lambda a: np.repeat(np.asarray(a, np.float32).reshape(n * t), n_leads)  # noqa: E731
    summary = dict(cols)
    summary.update(
        probability=per_row(prob),
        mean=r.mean(-1, dtype=np.float64).astype(np.float32).ravel(),
        mean_pos=np.clip(r, 0, None).mean(-1, dtype=np.float64).astype(np.float32).ravel(),
        mean_neg=np.clip(r, None, 0).mean(-1, dtype=np.float64).astype(np.float32).ravel(),
        sum=r.sum(-1, dtype=np.float64).astype(np.float32).ravel(),
        abs_sum=np.abs(r).sum(-1, dtype=np.float64).astype(np.float32).ravel(),
        delta=per_row(delta),
    )
    out = {"relevance_summary": conform(pa.table(summary), "relevance_summary")}
    if cfg.keep_relevance:
        full = dict(cols)
        flat = np.ascontiguousarray(r, dtype=np.float32).reshape(-1)
        full.update(
            window_offset=pa.array(np.repeat([w.offset for _, w in items], rep).astype(np.int64)),
            probability=per_row(prob),
            delta=per_row(delta),
            relevance=pa.FixedSizeListArray.from_arrays(flat, length).cast(pa.list_(pa.float32())),
        )
        out["relevance"] = conform(pa.table(full), "relevance")
    return out


def _leads(cfg: ExplainConfig, n_leads: int) -> tuple[str, ...]:
    leads = cfg.leads
    if len(leads) != n_leads:
        raise ValueError(f"relevance of {n_leads} leads for a model of {len(leads)} leads {list(leads)}")
    return leads


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

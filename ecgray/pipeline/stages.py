"""The four stages of the Ray Data plan. One row = one shard everywhere.

Rows travel between stages as ``pa.Table``\\ s with two columns, ``shard``
(string) and ``payload`` (large_binary: a dict encoded by
:mod:`ecgray.pipeline.codec` -- JSON + ``.npy`` arrays, no pickle), so Ray Data
never holds tensor-extension columns and every stage sees a whole shard:

* :func:`read_preprocess` (task) -- ``prepare`` each record of the shard: stacked
  windows ``x (W, leads, samples)`` of the model's spec, per-window metadata, error rows;
* :class:`AttributeActor` (actor pool) -- loads the model once; probabilities and
  full relevance of every window x target x method (``ecgray.attribution.attribute``);
* :func:`beats_and_tables` (task) -- beat averages and the Arrow tables
  (``records``, ``relevance_summary``, ``beats``, ``errors``[, ``relevance``]) as IPC bytes;
* :func:`write_shard` (task) -- Parquet files moved into place, commit marker last;
  returns one tiny row of counts and stage times.

Fault injection (tests only): ``faults={"stage": ..., "mode": "exit"|"raise",
"shards": [...], "marker_dir": path}`` kills (``os._exit``) or raises in the
first attempt of ``stage`` for the listed shards; a marker file per shard
makes the retry succeed.
"""
from __future__ import annotations

import logging
import os
import time
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import torch

from ecgray.attribution import attribute
from ecgray.explain import error_row, prepare
from ecgray.models import load_model
from ecgray.models.spec import RIBEIRO2020
from ecgray.preprocess import resample_factors
from ecgray.schemas.tables import empty, from_rows
from ecgray.store import Store
from ecgray.tables import beats_tables, per_lead_tables, records_table

from . import codec

log = logging.getLogger("ecgray.pipeline")


# --------------------------------------------------------------------------- row (de)serialisation
def pack(shard: str, payload: dict) -> pa.Table:
    data = codec.dumps(payload)
    return pa.table({"shard": pa.array([shard], pa.string()), "payload": pa.array([data], pa.large_binary())})


def unpack(batch: pa.Table) -> list[tuple[str, dict]]:
    shards = batch.column("shard").to_pylist()
    payloads = batch.column("payload")
    return [(s, codec.loads(payloads[i].as_py())) for i, s in enumerate(shards)]


def concat_rows(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables) if len(tables) != 1 else tables[0]


def to_ipc(tbl: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, tbl.schema) as w:
        w.write_table(tbl)
    return sink.getvalue().to_pybytes()


def from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def maybe_fail(faults, stage: str, shard: str) -> None:
    """Test hook: die or raise on the first attempt of ``stage`` for the chosen shards.

    ``faults`` is one spec or a list of specs ``{"stage", "mode": "exit"|"raise", "shards": [...]|"all",
    "marker_dir"}``; stages: read, attribute, beats, write (before any file), commit (files moved, no marker).
    """
    if not faults:
        return
    for spec in faults if isinstance(faults, (list, tuple)) else [faults]:
        if spec.get("stage") != stage:
            continue
        shards = spec.get("shards", "all")
        if shards != "all" and shard not in shards:
            continue
        marker = os.path.join(spec["marker_dir"], f"{stage}-{shard}")
        if os.path.exists(marker):
            continue
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        if spec.get("mode", "raise") == "exit":
            os._exit(1)
        raise RuntimeError(f"injected fault in {stage} for shard {shard}")


# --------------------------------------------------------------------------- stage 1: read
def _record_meta(rec) -> SimpleNamespace:
    """What the tables need of a Record, without its signal: ``n_samples`` (as ``Record.n_samples``) instead."""
    lab = rec.labels
    return SimpleNamespace(
        record_key=rec.record_key, record_id=rec.record_id, uri=rec.uri, dataset=rec.dataset, format=rec.format, fs=float(rec.fs),
        n_samples=int(rec.n_samples),
        # scheme "none" (no labels at all) is kept: records_table writes null label_* for it, not False
        labels=SimpleNamespace(normal=bool(lab.normal), raw=tuple(lab.raw), scheme=lab.scheme,
                               classes=dict(lab.classes)),
    )


def _n_resampled(n: int, fs_in: float, fs_out: float) -> int:
    up, down = resample_factors(float(fs_in), float(fs_out))
    return n if up == down else -(-n * up // down)


def read_preprocess(batch: pa.Table, *, run_id: str, labels_csv: str | None, policy: str,
                    stride_s: float | None = None, max_windows: int | None = None,
                    faults: dict | None = None, spec=None) -> pa.Table:
    """Stage 1: read and preprocess a shard's records for a model of ``spec`` (default: Ribeiro et al. 2020)."""
    model_spec = spec or RIBEIRO2020

    out = []
    for shard, item_spec in unpack(batch):
        maybe_fail(faults, "read", shard)
        t0 = time.perf_counter()
        recs, wins, xs, errors = [], [], [], []
        for item in item_spec["items"]:
            if item.get("error"):
                errors.append({"run_id": run_id, "record_key": item["record_key"], "record_id": item["record_id"],
                               "uri": item["uri"], "stage": "read",
                               "error_type": item.get("error_type") or "unreadable", "message": item["error"]})
                continue
            prep, err = prepare(item["uri"], run_id=run_id, labels_csv=labels_csv, policy=policy,
                                stride_s=stride_s, max_windows=max_windows, record_key=item["record_key"], spec=model_spec)
            if err is not None:
                errors.append(err)
                continue
            meta = _record_meta(prep.record)
            n_res = _n_resampled(meta.n_samples, meta.fs, model_spec.fs)
            for w in prep.windows:
                xs.append(w.x)
                w_meta = SimpleNamespace(record_key=meta.record_key, record_id=w.record_id, window=int(w.window), offset=int(w.offset),
                                         fs_in=float(w.fs_in), n_samples_in=int(w.n_samples_in),
                                         flags=tuple(w.flags), n_resampled=int(n_res))
                recs.append(meta)
                wins.append(w_meta)
        x = np.stack(xs).astype(np.float32, copy=False) if xs else np.zeros((0, *model_spec.input_shape), np.float32)
        payload = {**item_spec, "recs": recs, "wins": wins, "x": x, "errors": errors,
                   "times": {"read": time.perf_counter() - t0}}
        out.append(pack(shard, payload))
    return concat_rows(out)


# --------------------------------------------------------------------------- stage 2: attribute
#: retries of a shard whose attribution raised out of the actor (inside the actor, so bounded); a dead actor or
#: node is Ray's to retry (``max_task_retries=-1`` in ``ecgray.pipeline.run._plan``)
APP_RETRIES = 3


class AttributeActor:
    """Loads the model once per actor; attributes whole shards."""

    def __init__(self, *, model: str, weights: str | None, methods: list[str], targets: list[str] | None,
                 output: str, params: dict, batch_size: int, use_gpu: bool = False, precision: str = "fp32",
                 torch_threads: int | None = None, faults: dict | None = None):
        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        self.device = "cuda" if (use_gpu and torch.cuda.is_available()) else "cpu"
        self.model = load_model(model, weights=weights, device=self.device)
        self.methods, self.targets, self.output = list(methods), targets, output
        self.params, self.batch_size, self.faults = params, batch_size, faults
        self.precision = precision if self.device == "cuda" else "fp32"
        if precision != self.precision:
            log.info("precision %s requested but the actor runs on CPU: float32 instead", precision)

    def _attribute(self, x: np.ndarray) -> dict:
        return {m: attribute(self.model, x, targets=self.targets, method=m, output=self.output,
                             batch_size=self.batch_size, precision=self.precision, **self.params.get(m, {}))
                for m in self.methods}

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for shard, p in unpack(batch):
            for attempt in range(APP_RETRIES + 1):
                try:
                    out.append(self._shard(shard, p))
                    break
                except Exception:  # noqa: BLE001 - an exception escaping a shard: retried here, bounded
                    if attempt == APP_RETRIES:
                        raise
                    log.warning("attribution of shard %s failed (attempt %d of %d); retrying", shard, attempt + 1,
                                APP_RETRIES + 1, exc_info=True)
        return concat_rows(out)

    def _shard(self, shard: str, p: dict) -> pa.Table:
        maybe_fail(self.faults, "attribute", shard)
        t0 = time.perf_counter()
        attrs: dict = {}
        if len(p["x"]):
            try:
                attrs = self._attribute(p["x"])
            except Exception:  # noqa: BLE001 - isolate the failing record(s), keep the rest
                attrs = self._per_record(p, error_row)
        p["attrs"] = attrs
        p["times"]["attribute"] = time.perf_counter() - t0
        return pack(shard, p)

    def _per_record(self, p: dict, error_row) -> dict:
        """Fallback after a failed shard: attribute record by record; failures become error rows."""
        keep, parts = [], []
        keys = [w.record_key for w in p["wins"]]
        for key in dict.fromkeys(keys):
            idx = [i for i, k in enumerate(keys) if k == key]
            rec = p["recs"][idx[0]]
            try:
                parts.append(self._attribute(p["x"][idx]))
                keep.extend(idx)
            except Exception as exc:  # noqa: BLE001
                p["errors"].append(error_row(p["run_id"], rec.record_id, rec.uri, exc, "attribute", key))
        p["x"] = p["x"][keep]
        p["recs"] = [p["recs"][i] for i in keep]
        p["wins"] = [p["wins"][i] for i in keep]
        if not parts:
            return {}
        merged = {}
        for m in self.methods:
            first = parts[0][m]
            merged[m] = type(first)(
                relevance=np.concatenate([a[m].relevance for a in parts]),
                probabilities=np.concatenate([a[m].probabilities for a in parts]),
                logits=np.concatenate([a[m].logits for a in parts]),
                targets=first.targets, method=first.method, params=first.params,
                delta=None if first.delta is None else np.concatenate([a[m].delta for a in parts]),
            )
        return merged


# --------------------------------------------------------------------------- stage 3: beats + tables
def beats_and_tables(batch: pa.Table, *, run_id: str, cfg, with_beats: bool = True,
                     faults: dict | None = None) -> pa.Table:
    if with_beats:  # ecgray.beats is part of the package: with_beats=False is the only way to get no beats
        from ecgray.beats import average_beats
    else:
        average_beats = None
    out = []
    for shard, p in unpack(batch):
        maybe_fail(faults, "beats", shard)
        t0 = time.perf_counter()
        tables: dict[str, list[pa.Table]] = {"records": [], "relevance_summary": []}
        if cfg.keep_relevance:
            tables["relevance"] = []
        beats = {"beats": empty("beats"), "beats_relevance": empty("beats_relevance")}
        if p["attrs"]:
            items = list(zip(p["recs"], p["wins"]))
            classes = cfg.classes
            for m, attr in p["attrs"].items():
                for name, tbl in per_lead_tables(run_id, cfg, items, attr, m, classes).items():
                    tables[name].append(tbl)
            probs = next(iter(p["attrs"].values())).probabilities
            tables["records"].append(records_table(run_id, cfg, items, probs))
            if average_beats is not None:
                try:
                    beats = beats_tables(run_id, cfg, p, average_beats)
                except Exception as exc:  # noqa: BLE001 - a beats failure must not lose the shard
                    log.exception("beats failed for shard %s", shard)
                    for key, rid, uri in dict.fromkeys((r.record_key, r.record_id, r.uri) for r in p["recs"]):
                        p["errors"].append(error_row(run_id, rid, uri, exc, "beats", key))
                        # the record's other tables are kept; the error row says its beats are missing
        result = {name: (pa.concat_tables(v) if v else empty(name, cfg.classes if name == "records" else None))
                  for name, v in tables.items()}
        result.update(beats)
        result["errors"] = from_rows("errors", p["errors"])
        p["times"]["beats"] = time.perf_counter() - t0
        payload = {"shard": shard, "record_hash": p["record_hash"], "times": p["times"],
                   "ipc": {name: to_ipc(t) for name, t in result.items()}}
        out.append(pack(shard, payload))
    return concat_rows(out)


# --------------------------------------------------------------------------- stage 4: write
RESULT_SCHEMA = pa.schema([
    ("shard", pa.string()), ("records_ok", pa.int64()), ("errors", pa.int64()), ("windows", pa.int64()),
    ("rows_relevance_summary", pa.int64()), ("rows_beats", pa.int64()), ("t_read", pa.float64()),
    ("t_attribute", pa.float64()), ("t_beats", pa.float64()), ("t_write", pa.float64()),
])


def write_shard(batch: pa.Table, *, output: str, run_id: str, faults: dict | None = None) -> pa.Table:
    store = Store(output)
    rows = []
    for shard, p in unpack(batch):
        maybe_fail(faults, "write", shard)
        t0 = time.perf_counter()
        tables = {name: from_ipc(b) for name, b in p["ipc"].items()}
        recs = tables["records"]
        ok_keys = set(recs.column("record_key").to_pylist())
        n_ok = len(ok_keys)
        errs = tables["errors"]
        n_err = len(set(errs.column("record_key").to_pylist()) - ok_keys)
        store.write_shard(shard, tables, run_id=run_id, record_hash=p["record_hash"],
                          extra={"records_ok": n_ok, "records_error": n_err, "times": p["times"]},
                          before_commit=lambda: maybe_fail(faults, "commit", shard))
        t = p["times"]
        rows.append({"shard": shard, "records_ok": n_ok, "errors": n_err, "windows": recs.num_rows,
                     "rows_relevance_summary": tables["relevance_summary"].num_rows,
                     "rows_beats": tables["beats"].num_rows, "t_read": t.get("read", 0.0),
                     "t_attribute": t.get("attribute", 0.0), "t_beats": t.get("beats", 0.0),
                     "t_write": time.perf_counter() - t0})
    return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)

"""The output layout of a pipeline run, its commit protocol and its readers: the one place that knows
which files of an output exist for a reader (:meth:`Store.commits`, :func:`committed_table_files`,
:func:`read_table`), used by the pipeline, :mod:`ecgray.reduce` and :mod:`ecgray.report`.

Layout under ``<output>`` (a local folder or an ``s3://`` prefix)::

    _manifest.json                              what the run computes (checked on --resume)
    _commits/shard=<k>.json                     one commit marker per finished shard
    <table>/shard=<k>/part-0.parquet            records, relevance_summary, beats, beats_relevance, errors[, relevance]
    _tmp/<run_id>/shard=<k>/...                 staging area (removed at the end of a run)
    _lock.json                                  the live run that holds the output (ecgray.pipeline.lock)
    reduced/<name>.parquet                      ecgray.reduce's tables (and ecgray.evaluate.summary's)
    evaluation/...                              ecgray.evaluate's tables, the same protocol (evaluation_root)

Exactly-once: a shard's files have deterministic names, are written to
``_tmp`` first and moved into place (a rename locally, copy+delete on S3);
its commit marker is written *last*. A shard without a marker does not exist
for :func:`read_table`; a retried or resumed shard overwrites its files.

Plan and growth: ``_manifest.json`` holds the plan, ``"shards": {k: {"record_hash",
"records": [record_key, ...], "fingerprints": [...], "run_id"}}`` (the run that planned
the shard), written before any shard runs; a commit marker binds to its plan entry by
``record_hash``. ``--resume`` keeps committed shards untouched, reruns unfinished ones
under the same number and plans records that no shard holds into new shards numbered
after every shard planned so far (``next_shard``); see :func:`ecgray.pipeline.run.run`.
A record's fingerprint (:func:`record_fingerprint`) covers what the catalog knows of it
(header fields, labels, the error type; signal files are checked against their
header's size), not the signal samples.

Provenance: rows and commit markers carry the run id of the run that wrote their
shard, the plan entry that of the run that planned it, and the manifest the run id of
the latest run with the ``runs`` history.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import uuid
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from ecgray.io import is_s3, open_fs
from ecgray.schemas.tables import SCHEMA_VERSION, empty

TABLE_NAMES = ("records", "relevance_summary", "beats", "beats_relevance", "errors", "relevance")
MANIFEST = "_manifest.json"
COMMITS = "_commits"
TMP = "_tmp"
LOCK = "_lock.json"
EVALUATION = "evaluation"  # ecgray.evaluate's tables: a Store of their own under <output>/evaluation
KNOWN_ENTRIES = set(TABLE_NAMES) | {MANIFEST, COMMITS, TMP, LOCK, "reduced", EVALUATION}  # + ecgray.reduce's output

log = logging.getLogger("ecgray.pipeline")


class PipelineError(RuntimeError):
    """A run that is refused (non-empty output, changed input on --resume, ...)."""


def shard_name(index: int) -> str:
    return f"{index:05d}"


def shard_hash(items: Iterable[tuple[str, str]]) -> str:
    """Hash of a shard's ``(record_id, relative uri)`` pairs (detects a changed input on --resume)."""
    h = hashlib.sha256()
    for rid, rel in items:
        h.update(f"{rid}\t{rel}\n".encode())
    return h.hexdigest()[:16]


#: catalog columns a record's fingerprint covers (fixed: a new catalog column must not change old fingerprints);
#: not ``uri`` (an input folder that moved keeps its records) nor ``error`` (its text names paths)
FINGERPRINT_COLUMNS = ("record_key", "record_id", "format", "dataset", "fs", "n_samples", "n_leads", "leads",
                       "label_1dAVb", "label_RBBB", "label_LBBB", "label_SB", "label_AF", "label_ST", "label_normal",
                       "raw_codes", "label_scheme", "error_type")


def record_fingerprint(row: dict) -> str:
    """What the catalog knows of a record (:data:`FINGERPRINT_COLUMNS`), hashed: a changed header (sampling
    rate, length, leads), label, signal file size or readability changes it; signal samples rewritten in
    place with the same size do not."""
    blob = json.dumps([row.get(c) for c in FINGERPRINT_COLUMNS], default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def output_spec(output: str):
    """The :class:`~ecgray.models.spec.ModelSpec` of the model a pipeline output explains (its manifest's
    ``model_spec``); outputs written before the manifest held it (schema v3) explain the Ribeiro et al.
    2020 layout, :data:`~ecgray.models.spec.RIBEIRO2020`; None without a manifest."""
    from ecgray.models.spec import RIBEIRO2020, ModelSpec

    manifest = Store(output).manifest()
    if manifest is None:
        return None
    spec = manifest.get("model_spec")
    return ModelSpec.from_dict(spec) if spec else RIBEIRO2020


class Store:
    """Paths and file operations on one output root (fsspec filesystem: local or S3)."""

    def __init__(self, root: str):
        self.root = str(root).rstrip("/") if is_s3(root) else str(root)
        self.fs, self.path = open_fs(self.root)
        self.s3 = is_s3(self.root)

    # -- paths -------------------------------------------------------------------------------
    def p(self, *parts: str) -> str:
        return posixpath.join(self.path, *parts)

    def table_file(self, table: str, shard: str) -> str:
        return self.p(table, f"shard={shard}", "part-0.parquet")

    def commit_file(self, shard: str) -> str:
        return self.p(COMMITS, f"shard={shard}.json")

    def tmp_dir(self, run_id: str) -> str:
        return self.p(TMP, run_id)

    # -- basic io -----------------------------------------------------------------------------
    def _mkdirs(self, path: str) -> None:
        if not self.s3:
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)

    def write_bytes(self, path: str, data: bytes) -> None:
        self._mkdirs(path)
        with self.fs.open(path, "wb") as f:
            f.write(data)

    def read_json(self, path: str) -> dict:
        with self.fs.open(path, "rb") as f:
            return json.loads(f.read().decode())

    def move(self, src: str, dst: str) -> None:
        """Rename locally (atomic); copy + delete on S3 (the copy is atomic per object)."""
        self._mkdirs(dst)
        if self.s3:
            self.fs.copy(src, dst)
            self.fs.rm(src)
        else:
            import os

            os.replace(src, dst)

    def entries(self) -> list[str]:
        """Names directly under the root (empty when it does not exist)."""
        try:
            if not self.fs.exists(self.path):
                return []
            return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self.path, detail=False))
        except FileNotFoundError:
            return []

    def rm(self, path: str) -> None:
        try:
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass

    # -- manifest and commits -----------------------------------------------------------------
    def manifest(self) -> dict | None:
        try:
            return self.read_json(self.p(MANIFEST))
        except FileNotFoundError:
            return None

    def write_manifest(self, manifest: dict) -> None:
        self.write_atomic(self.p(MANIFEST), json.dumps(manifest, indent=1, sort_keys=True).encode())

    def write_atomic(self, path: str, data: bytes) -> None:
        """Write ``path`` so that readers see the old or the new content, never a part (S3: one PUT)."""
        if self.s3:
            self.write_bytes(path, data)
            return
        self._mkdirs(path)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def commits(self) -> dict[str, dict]:
        """``{shard: marker}`` of every committed shard."""
        folder = self.p(COMMITS)
        try:
            paths = self.fs.find(folder, maxdepth=1) if self.fs.exists(folder) else []
        except FileNotFoundError:
            paths = []
        paths = sorted(p for p in paths if p.endswith(".json") and posixpath.basename(p).startswith("shard="))
        if not paths:
            return {}
        if self.s3:
            blobs = self.fs.cat(paths)
            return {posixpath.basename(p)[6:-5]: json.loads(blobs[p]) for p in paths}
        return {posixpath.basename(p)[6:-5]: self.read_json(p) for p in paths}

    def write_shard(self, shard: str, tables: dict[str, pa.Table], *, run_id: str, record_hash: str,
                    extra: dict | None = None, before_commit=None) -> dict:
        """Stage, move into place and commit one shard's tables; returns the commit marker."""
        tmp = posixpath.join(self.tmp_dir(run_id), f"shard={shard}")
        files = {}
        for name, tbl in tables.items():
            buf = io.BytesIO()
            pq.write_table(tbl, buf, compression="zstd")
            staged = posixpath.join(tmp, f"{name}.parquet")
            self.write_bytes(staged, buf.getvalue())
            final = self.table_file(name, shard)
            self.move(staged, final)
            files[name] = posixpath.relpath(final, self.path)
        marker = {
            "shard": shard, "run_id": run_id, "record_hash": record_hash, "schema_version": SCHEMA_VERSION,
            "rows": {name: int(t.num_rows) for name, t in tables.items()}, "files": files, **(extra or {}),
        }
        if before_commit is not None:
            before_commit()
        staged = posixpath.join(tmp, "commit.json")
        self.write_bytes(staged, json.dumps(marker, sort_keys=True).encode())
        self.move(staged, self.commit_file(shard))  # LAST: the shard now exists
        return marker

    def remove_shard(self, shard: str) -> None:
        """Delete a shard's marker (first) and files."""
        self.rm(self.commit_file(shard))
        for name in TABLE_NAMES:
            self.rm(self.p(name, f"shard={shard}"))

    def clean(self, *, keep_shards: Sequence[str] | None = None) -> None:
        """Remove ``_tmp``; with ``keep_shards``, also shard folders without a commit (crash leftovers)."""
        self.rm(self.p(TMP))
        if keep_shards is None:
            return
        keep = {f"shard={s}" for s in keep_shards}
        for name in TABLE_NAMES:
            folder = self.p(name)
            try:
                subs = self.fs.ls(folder, detail=False) if self.fs.exists(folder) else []
            except FileNotFoundError:
                subs = []
            for sub in subs:
                if posixpath.basename(sub.rstrip("/")) not in keep:
                    self.rm(sub)


def evaluation_root(output: str) -> str:
    """Where ``ecgray evaluate`` writes the evaluation of the run in ``output``."""
    return f"{str(output).rstrip('/')}/{EVALUATION}"


def committed_table_files(output: str, *, readable: Sequence[int] | None = None) -> list[dict[str, str]]:
    """One ``{table: path or s3:// URI}`` per committed shard of ``output`` (shard order), from the commit
    markers. ``readable``: the schema versions the caller can read; a shard written with another one
    raises ValueError (rerun with ``--overwrite``)."""
    store = Store(output)
    out = []
    for shard, marker in sorted(store.commits().items()):
        version = marker.get("schema_version")
        if readable is not None and version not in readable:
            raise ValueError(f"{output}: shard {shard} was written with output schema version {version} "
                             f"(this ecgray reads {', '.join(map(str, readable))}); rerun the pipeline "
                             "with --overwrite to recompute it (older outputs cannot tell records that share a "
                             "name apart)")
        files = {}
        for name, rel in (marker.get("files") or {}).items():
            path = posixpath.join(store.path, rel)
            files[name] = "s3://" + path if store.s3 else path
        out.append(files)
    return out


def uncommitted_shards(output: str, table: str = "records") -> list[str]:
    """``shard=<k>`` folders of ``table`` without a commit marker (a crashed or running shard: readers ignore
    them)."""
    store = Store(output)
    try:
        dirs = [posixpath.basename(p.rstrip("/")) for p in store.fs.ls(store.p(table), detail=False)]
    except FileNotFoundError:
        return []
    markers = {f"shard={k}" for k in store.commits()}
    return sorted(d for d in dirs if d.startswith("shard=") and d not in markers)


def committed_shards(output: str) -> dict[str, dict]:
    """``{shard: commit marker}`` of the committed shards under ``output``."""
    return Store(output).commits()


def read_table(output: str, name: str, *, columns: list[str] | None = None) -> pa.Table:
    """Table ``name`` of a pipeline output, from committed shards only (in shard order).

    Shards without a commit marker (a run that crashed or is still running)
    are ignored. Returns an empty table of the schema when nothing is committed.
    """
    from ecgray.schemas.tables import record_classes, schema

    store = Store(output)
    parts = []
    for shard, marker in sorted(store.commits().items()):
        rel = marker.get("files", {}).get(name)
        if rel is None:
            continue
        with store.fs.open(posixpath.join(store.path, rel), "rb") as f:
            parts.append(pq.read_table(f, columns=columns))
    classes = None
    if name == "records":  # the model's classes: the run's spec, else those of the files' columns
        spec = output_spec(output)
        classes = spec.classes if spec is not None else (record_classes(parts[0].column_names) if parts else ())
    if not parts:
        tbl = empty(name, classes)
        return tbl.select(columns) if columns else tbl
    tbl = pa.concat_tables(parts)
    if columns is None:
        tbl = tbl.cast(schema(name, classes))
    return tbl

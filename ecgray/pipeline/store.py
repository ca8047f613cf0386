"""The output layout of a pipeline run, its commit protocol and its readers.

Layout under ``<output>`` (a local folder or an ``s3://`` prefix)::

    _manifest.json                              what the run computes (checked on --resume)
    _commits/shard=<k>.json                     one commit marker per finished shard
    <table>/shard=<k>/part-0.parquet            records, relevance_summary, beats, errors[, relevance]
    _tmp/<run_id>/shard=<k>/...                 staging area (removed at the end of a run)

Exactly-once: a shard's files have deterministic names, are written to
``_tmp`` first and moved into place (a rename locally, copy+delete on S3);
its commit marker is written *last*. A shard without a marker does not exist
for :func:`read_table`; a retried or resumed shard overwrites its files.
"""
from __future__ import annotations

import hashlib
import io
import json
import posixpath
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from ecgray.io import is_s3, open_fs
from schemas.tables import SCHEMA_VERSION, empty

TABLE_NAMES = ("records", "relevance_summary", "beats", "errors", "relevance")
MANIFEST = "_manifest.json"
COMMITS = "_commits"
TMP = "_tmp"
KNOWN_ENTRIES = set(TABLE_NAMES) | {MANIFEST, COMMITS, TMP, "reduced"}  # reduced: ecgray.reduce's output


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
        self.write_bytes(self.p(MANIFEST), json.dumps(manifest, indent=1, sort_keys=True).encode())

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


def committed_shards(output: str) -> dict[str, dict]:
    """``{shard: commit marker}`` of the committed shards under ``output``."""
    return Store(output).commits()


def read_table(output: str, name: str, *, columns: list[str] | None = None) -> pa.Table:
    """Table ``name`` of a pipeline output, from committed shards only (in shard order).

    Shards without a commit marker (a run that crashed or is still running)
    are ignored. Returns an empty table of the schema when nothing is committed.
    """
    from schemas.tables import schema

    store = Store(output)
    parts = []
    for shard, marker in sorted(store.commits().items()):
        rel = marker.get("files", {}).get(name)
        if rel is None:
            continue
        with store.fs.open(posixpath.join(store.path, rel), "rb") as f:
            parts.append(pq.read_table(f, columns=columns))
    if not parts:
        tbl = empty(name)
        return tbl.select(columns) if columns else tbl
    tbl = pa.concat_tables(parts)
    if columns is None:
        tbl = tbl.cast(schema(name))
    return tbl

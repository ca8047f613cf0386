"""The output layout of a pipeline run, its commit protocol and its readers.

Layout under ``<output>`` (a local folder or an ``s3://`` prefix)::

    _manifest.json                              what the run computes (checked on --resume)
    _commits/shard=<k>.json                     one commit marker per finished shard
    <table>/shard=<k>/part-0.parquet            records, relevance_summary, beats, beats_relevance, errors[, relevance]
    _tmp/<run_id>/shard=<k>/...                 staging area (removed at the end of a run)
    _lock.json                                  the live run that holds the output (removed at its end)

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

Lock: ``_lock.json`` names the run that holds the output (run id, host, pid, start
and heartbeat time); :func:`acquire_lock` creates it atomically (locally a hard link
of a complete temporary file, on S3 a ``PutObject`` with ``If-None-Match: *``),
refreshes it every :data:`LOCK_HEARTBEAT_S` and removes it at the end. A lock is
stale when its heartbeat is older than its ``ttl_s`` (:data:`LOCK_TTL_S`), or at once
when it was taken on this machine (same host, boot and pid namespace) by a process
that is no longer running; a stale lock is taken over (locally by renaming it away and
checking that the renamed file is the stale one, on S3 by a ``PutObject`` with
``If-Match`` its ETag), with a warning. A create or take-over on S3 is read back and checked, which guards
S3-compatible stores that ignore conditional headers except against two runs racing within one round trip.
A heartbeat reads the lock and rewrites it only if it is still this run's (on S3 with ``If-Match``); a
run that finds another run's lock there (it was deemed stale: no heartbeat for ``ttl_s``) logs an error
and stops refreshing, and its end leaves that lock in place. Clocks of the hosts must agree to well
within ``ttl_s``.
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
import socket
import threading
import time
import uuid
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from ecgray.io import is_s3, open_fs
from schemas.tables import SCHEMA_VERSION, empty

TABLE_NAMES = ("records", "relevance_summary", "beats", "beats_relevance", "errors", "relevance")
MANIFEST = "_manifest.json"
COMMITS = "_commits"
TMP = "_tmp"
LOCK = "_lock.json"
KNOWN_ENTRIES = set(TABLE_NAMES) | {MANIFEST, COMMITS, TMP, LOCK, "reduced"}  # reduced: ecgray.reduce's output

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


# --------------------------------------------------------------------------- the output lock
#: a lock whose heartbeat is older than this is stale (the holder's ``ttl_s`` in the lock file wins)
LOCK_TTL_S = 120.0
#: how often a holder refreshes its lock
LOCK_HEARTBEAT_S = 15.0


def _env_seconds(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def machine_id() -> str:
    """Host name + boot id + pid namespace: where a pid names one process (Linux; the host name elsewhere)."""
    parts = [socket.gethostname(), _read_text("/proc/sys/kernel/random/boot_id") or ""]
    try:
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        parts.append("")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _proc_stat(pid: int) -> list[str] | None:
    stat = _read_text(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[-1].split() if stat else None  # [state, ppid, ..., starttime at 19, ...]


def _proc_start(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def pid_running(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` of this machine runs (and, with ``start``, is the one that started then)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    except (OSError, OverflowError):
        return True  # cannot tell: the heartbeat decides
    fields = _proc_stat(pid)
    if fields:
        if fields[0] in ("Z", "X"):  # a zombie: dead, not yet reaped
            return False
        if start is not None and len(fields) > 19 and fields[19] != str(start):  # the pid was reused
            return False
    return True


def _parse_lock(raw: bytes | None) -> dict | None:
    if raw is None:
        return None
    try:
        info = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def describe_lock(info: dict, now: float | None = None) -> str:
    """``run R (host H, pid P, started T, last heartbeat N s ago)``."""
    if not info:
        return "an unreadable lock"
    now = time.time() if now is None else now
    age = now - float(info.get("heartbeat_unix") or 0)
    return (f"run {info.get('run_id')!s} (host {info.get('host')!s}, pid {info.get('pid')!s}, started "
            f"{info.get('started')!s}, last heartbeat {age:.0f} s ago)")


class OutputLock:
    """``<output>/_lock.json`` held by this process for one run (see the module docstring).

    ``acquire()`` refuses (:class:`PipelineError` naming the holder) while another live run holds it and takes
    over a stale one; a daemon thread refreshes the heartbeat; ``release()`` stops it and removes the lock if
    it is still this one. ``took_over`` is the stale lock replaced, ``lost`` the lock a heartbeat found in
    place of this one (another run decided this one was stale: this run's heartbeat stopped for ``ttl_s``).
    """

    def __init__(self, store: Store, run_id: str, *, ttl_s: float | None = None, heartbeat_s: float | None = None):
        self.store, self.run_id = store, str(run_id)
        self.path = store.p(LOCK)
        self.ttl_s = float(ttl_s or _env_seconds("ECGRAY_LOCK_TTL_S", LOCK_TTL_S))
        self.heartbeat_s = float(heartbeat_s or _env_seconds("ECGRAY_LOCK_HEARTBEAT_S",
                                                             min(LOCK_HEARTBEAT_S, self.ttl_s / 4)))
        self.token = uuid.uuid4().hex
        self.started = time.time()
        self.took_over: dict | None = None
        self.lost: dict | None = None
        self.held = False
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._io = threading.Lock()

    # -- content ------------------------------------------------------------------------------
    def info(self) -> dict:
        now = time.time()
        return {"run_id": self.run_id, "token": self.token, "host": socket.gethostname(), "machine": machine_id(),
                "pid": os.getpid(), "pid_start": _proc_start(os.getpid()), "started": _iso(self.started),
                "started_unix": self.started, "heartbeat": _iso(now), "heartbeat_unix": now, "ttl_s": self.ttl_s,
                "heartbeat_s": self.heartbeat_s, "output": self.store.root}

    def _data(self) -> bytes:
        return json.dumps(self.info(), sort_keys=True).encode()

    def stale_reason(self, other: dict, mtime: float | None) -> str | None:
        """Why ``other`` (a parsed lock file) is stale, or None while its run may be alive."""
        now = time.time()
        if not other:  # not JSON: a lock being written by a fallback O_EXCL create, or garbage
            age = now - mtime if mtime else float("inf")
            return f"the lock file is unreadable and {age:.0f} s old" if age > self.ttl_s else None
        ttl = float(other.get("ttl_s") or self.ttl_s)
        age = now - float(other.get("heartbeat_unix") or 0)
        if age > ttl:
            return f"its last heartbeat was {age:.0f} s ago (stale after {ttl:.0f} s)"
        if other.get("machine") == machine_id():
            pid = other.get("pid")
            if not pid_running(pid if isinstance(pid, int) else -1, other.get("pid_start")):
                return f"its process {pid} on this machine is not running"
        return None

    # -- storage primitives (local / S3) ------------------------------------------------------
    def _read(self) -> tuple[bytes | None, str | None, float | None]:
        """``(raw, etag, mtime)`` of the lock file; ``raw`` None when there is none."""
        if self.store.s3:
            fs = self.store.fs
            try:
                meta = fs.info(self.path)  # the ETag first: a later If-Match on it fails if the object changed
                raw = fs.cat_file(self.path)
            except FileNotFoundError:
                return None, None, None
            mtime = meta.get("LastModified")
            return raw, meta.get("ETag"), mtime.timestamp() if hasattr(mtime, "timestamp") else None
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
                mtime = os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            return None, None, None
        return raw, None, mtime

    def _put_s3(self, data: bytes, **cond) -> bool:
        """PUT with a condition; False when the condition fails."""
        try:
            out = self.store.fs.pipe_file(self.path, data, **cond)
        except (FileExistsError, FileNotFoundError):
            return False
        except OSError as exc:  # s3fs maps 412 PreconditionFailed (If-Match) to OSError(EINVAL)
            if "precondition" in str(exc).lower() or getattr(exc, "errno", None) == 22:
                return False
            raise
        self._etag = out.get("ETag") if isinstance(out, dict) else None
        return True

    def _create(self) -> bool:
        """Create the lock if there is none (atomic); False if one exists."""
        data = self._data()
        if self.store.s3:
            ok = self._put_s3(data, mode="create")
            return ok and self._verify()
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.{self.token}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, self.path)  # appears complete or not at all
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links on this filesystem: exclusive create, then write
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        finally:
            os.remove(tmp)

    def _verify(self) -> bool:
        """Read back: the lock is this one (guards S3 stores that ignore conditional headers)."""
        raw, etag, _ = self._read()
        mine = (_parse_lock(raw) or {}).get("token") == self.token
        if mine and etag:
            self._etag = etag
        return mine

    def _take_over(self, stale_raw: bytes, etag: str | None) -> bool:
        """Replace the stale lock ``stale_raw`` with this one; False if the lock changed meanwhile."""
        if self.store.s3:
            if etag is None:
                return False
            return self._put_s3(self._data(), IfMatch=etag) and self._verify()
        aside = f"{self.path}.{self.token}.stale"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return self._create()
        with open(aside, "rb") as f:
            moved = f.read()
        if moved != stale_raw:  # another run replaced the stale lock first: put its lock back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            except OSError:
                if not os.path.exists(self.path):
                    os.rename(aside, self.path)
            if os.path.exists(aside):
                os.remove(aside)
            return False
        os.remove(aside)
        return self._create()

    def _remove(self) -> None:
        if self.store.s3:
            self.store.fs.rm_file(self.path)
        else:
            os.remove(self.path)

    # -- protocol -------------------------------------------------------------------------------
    def acquire(self) -> "OutputLock":
        for _ in range(10):
            if self._create():
                break
            raw, etag, mtime = self._read()
            if raw is None:
                continue  # released meanwhile: try again
            other = _parse_lock(raw)
            why = self.stale_reason(other, mtime)
            if why is None:
                raise PipelineError(
                    f"output {self.store.root} is in use by {describe_lock(other)}; wait for it to finish or stop "
                    f"it (a lock whose run died is taken over by the next run once its heartbeat is "
                    f"{float(other.get('ttl_s') or self.ttl_s):.0f} s old, at once on the machine that ran it; "
                    f"delete {self.store.root.rstrip('/')}/{LOCK} only if you are sure that run is gone)")
            if self._take_over(raw, etag):
                self.took_over = other
                log.warning("took over the stale lock of %s on %s: %s", describe_lock(other), self.store.root, why)
                break
        else:
            raise PipelineError(f"could not lock {self.store.root}: other runs keep replacing its {LOCK}; "
                                "try again")
        self.held = True
        self._thread = threading.Thread(target=self._beat, name=f"ecgray-lock-{self.run_id}", daemon=True)
        self._thread.start()
        return self

    def refresh(self) -> bool:
        """One heartbeat; False (and ``lost`` set) when the lock is no longer this one."""
        with self._io:
            if not self.held or self.lost is not None:
                return False
            raw, etag, _ = self._read()
            other = _parse_lock(raw)
            if other is None or other.get("token") != self.token:
                self.lost = other or {}
                log.error("lost the lock of %s: %s holds it now; this run (%s) continues, but another run may be "
                          "writing into the same output", self.store.root,
                          describe_lock(other) if other else "nobody", self.run_id)
                return False
            if self.store.s3:
                if not self._put_s3(self._data(), **({"IfMatch": etag} if etag else {})):
                    return self.refresh_lost()
            else:
                self.store.write_atomic(self.path, self._data())  # race window: read-check, then replace
            return True

    def refresh_lost(self) -> bool:
        self.lost = _parse_lock(self._read()[0]) or {}
        log.error("lost the lock of %s to %s", self.store.root, describe_lock(self.lost))
        return False

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self.refresh():
                    return
            except Exception:  # noqa: BLE001 - a failed heartbeat must not kill the run; the next one retries
                log.warning("could not refresh the lock of %s", self.store.root, exc_info=True)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still this one (idempotent)."""
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        with self._io:
            self.held = False
            try:
                raw, _, _ = self._read()
                other = _parse_lock(raw)
                if other is not None and other.get("token") == self.token:
                    self._remove()
                elif self.lost is None:
                    log.error("the lock of %s was not this run's (%s) at its end: %s", self.store.root,
                              self.run_id, describe_lock(other) if other else "no lock")
            except Exception:  # noqa: BLE001
                log.warning("could not remove the lock of %s", self.store.root, exc_info=True)

    def __enter__(self) -> "OutputLock":
        return self.acquire() if not self.held else self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire_lock(output: str | Store, run_id: str, **kw) -> OutputLock:
    """Lock ``output`` for run ``run_id`` (:class:`OutputLock`); raises :class:`PipelineError` while a live
    run holds it."""
    store = output if isinstance(output, Store) else Store(output)
    return OutputLock(store, run_id, **kw).acquire()


def read_lock(output: str) -> dict | None:
    """The parsed ``_lock.json`` of ``output`` (None when unlocked)."""
    store = Store(output)
    return _parse_lock(OutputLock(store, "-")._read()[0])

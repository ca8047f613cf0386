"""The output lock of a pipeline run.

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
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid

from ecgray.store import LOCK, PipelineError, Store

log = logging.getLogger("ecgray.pipeline")

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

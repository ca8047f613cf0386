"""``ecgray.pipeline.progress``: the console of a pipeline run, for people.

* :class:`Progress` -- shards and records done of the run's total, records/s, ETA and errors
  so far: a live rich bar when stderr is a terminal, else a plain line every ``interval``
  seconds (``ECGRAY_PROGRESS_INTERVAL``, default 10) for logs and ``ray job submit``::

      [ecgray] 12/40 shards, 384/1280 records, 35.2 records/s, ETA 25 s, 2 errors

* :class:`LocalRayConsole` -- keeps a *local* Ray instance's own console output (startup
  notices, Ray Data's execution and issue-detector logs, the driver core worker's native
  ``E``-level lines) in Ray's session logs instead of on the console. A cluster run
  (``RAY_ADDRESS``) is left as Ray prints it. ``ECGRAY_RAY_CONSOLE=1`` turns it off.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import threading
import time

#: seconds between two plain progress lines (not a terminal)
DEFAULT_INTERVAL = 10.0
PREFIX = "[ecgray]"


def format_duration(s: float | None) -> str:
    """``25 s``, ``4 min 05 s``, ``2 h 07 min``; ``?`` when unknown."""
    if s is None or s != s or s == float("inf"):
        return "?"
    s = max(0, int(round(s)))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def format_rate(r: float) -> str:
    """Records/s with about three significant digits: ``0.42``, ``3.51``, ``35.2``, ``352``."""
    return f"{r:.2f}" if r < 10 else f"{r:.1f}" if r < 100 else f"{r:.0f}"


def _interval_from_env() -> float:
    try:
        return float(os.environ.get("ECGRAY_PROGRESS_INTERVAL", DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL


class Progress:
    """Progress of one run: call :meth:`start`, :meth:`update` per finished shard, :meth:`close`.

    ``live``: a rich bar (default: when ``stream`` is a terminal); otherwise plain lines on
    ``stream`` (default ``sys.stderr`` at write time) at most every ``interval`` seconds, one at
    the start and one at the end. ``clock`` is injectable for tests; :meth:`tick` writes the
    periodic line when it is due (a background thread calls it unless ``thread=False``).
    """

    def __init__(self, shards_total: int, records_total: int, *, interval: float | None = None, stream=None,
                 live: bool | None = None, clock=time.monotonic, thread: bool = True):
        self.shards_total, self.records_total = int(shards_total), int(records_total)
        self.shards_done = self.records_done = self.errors = self.windows = 0
        self.interval = _interval_from_env() if interval is None else float(interval)
        self._stream = stream
        self._clock = clock
        self._thread_wanted = thread
        self._live_wanted = live
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._bar = self._task = None
        self.t0 = self._last = None
        self._last_state: tuple[int, int] | None = None
        self.closed = False

    # ------------------------------------------------------------------ state
    @property
    def stream(self):
        return self._stream if self._stream is not None else sys.stderr

    def rate(self, now: float | None = None) -> float:
        """Records per second since :meth:`start`."""
        now = self._clock() if now is None else now
        dt = now - (self.t0 if self.t0 is not None else now)
        return self.records_done / dt if dt > 0 else 0.0

    def eta(self, now: float | None = None) -> float | None:
        left = self.records_total - self.records_done
        if left <= 0:
            return 0.0
        r = self.rate(now)
        return left / r if r > 0 else None

    def line(self, now: float | None = None) -> str:
        """``[ecgray] 12/40 shards, 384/1280 records, 35.2 records/s, ETA 25 s, 2 errors``."""
        now = self._clock() if now is None else now
        err = f"{self.errors} error{'' if self.errors == 1 else 's'}"
        rate = f"{format_rate(self.rate(now))} records/s" if self.records_done else "- records/s"
        return (f"{PREFIX} {self.shards_done}/{self.shards_total} shards, {self.records_done}/{self.records_total} "
                f"records, {rate}, ETA {format_duration(self.eta(now))}, {err}")

    # ------------------------------------------------------------------ output
    def _write(self, text: str) -> None:
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream never stops the run
            pass

    def _is_live(self) -> bool:
        if self._live_wanted is not None:
            return bool(self._live_wanted)
        try:
            return bool(self.stream.isatty()) and os.environ.get("TERM") != "dumb"
        except (AttributeError, ValueError):
            return False

    def _bar_text(self, now: float) -> str:
        rate = format_rate(self.rate(now)) if self.records_done else "-"
        err = f", {self.errors} err" if self.errors else ""
        return (f"{self.shards_done}/{self.shards_total} shards {self.records_done}/{self.records_total} rec "
                f"{rate}/s ETA {format_duration(self.eta(now))}{err}")

    def start(self, now: float | None = None) -> "Progress":
        now = self._clock() if now is None else now
        self.t0 = self._last = now
        self._last_state = (self.shards_done, self.errors)
        if self._is_live():
            from rich.console import Console
            from rich.progress import BarColumn, Progress as RichProgress, TextColumn

            console = Console(file=self.stream)
            self._bar = RichProgress(TextColumn("[bold]ecgray[/]"), BarColumn(bar_width=16),
                                     TextColumn("{task.fields[text]}"), console=console, transient=False,
                                     redirect_stdout=False, redirect_stderr=False, auto_refresh=False)
            self._task = self._bar.add_task("run", total=max(self.records_total, 1), text=self._bar_text(now))
            self._bar.start()
            self._bar.refresh()
        else:
            self._write(f"{PREFIX} explaining {self.records_total} records in {self.shards_total} shards")
        if self._thread_wanted:
            self._thread = threading.Thread(target=self._run, name="ecgray-progress", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        period = 0.5 if self._bar is not None else max(0.2, min(self.interval, 1.0))
        while not self._stop.wait(period):
            self.tick()

    def tick(self, now: float | None = None) -> None:
        """Refresh the bar, or write the plain line if ``interval`` has passed since the last one."""
        with self._lock:
            if self.closed or self.t0 is None:
                return
            now = self._clock() if now is None else now
            if self._bar is not None:
                self._bar.update(self._task, completed=self.records_done, text=self._bar_text(now))
                self._bar.refresh()
            elif self.interval > 0 and now - self._last >= self.interval:
                # a line when something finished since the last one; while nothing does, one every
                # 6 intervals (a heartbeat for logs), not the same line every interval
                state = (self.shards_done, self.errors)
                if state != self._last_state or now - self._last >= 6 * self.interval:
                    self._last = now
                    self._last_state = state
                    self._write(self.line(now))

    def update(self, *, shards: int = 1, records: int = 0, errors: int = 0, windows: int = 0,
               now: float | None = None) -> None:
        with self._lock:
            self.shards_done += shards
            self.records_done += records
            self.errors += errors
            self.windows += windows
        self.tick(now)

    def close(self, *, interrupted: bool = False, now: float | None = None) -> None:
        """Stop the bar or write the last plain line (skipped when interrupted: the caller says why)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        with self._lock:
            if self.closed:
                return
            self.closed = True
            now = self._clock() if now is None else now
            if self._bar is not None:
                self._bar.update(self._task, completed=self.records_done, text=self._bar_text(now))
                self._bar.refresh()
                self._bar.stop()
            elif not interrupted and self.t0 is not None:
                self._write(self.line(now).replace(
                    f", ETA {format_duration(self.eta(now))}", f", done in {format_duration(now - self.t0)}"))

    def __enter__(self):
        return self.start()

    def __exit__(self, typ, exc, tb):
        self.close(interrupted=typ is not None)
        return False


# ---------------------------------------------------------------------- Ray's console output
_RAY_LOGGERS = ("ray", "ray.data")


def _console_handlers(logger: logging.Logger) -> list[logging.Handler]:
    return [h for h in logger.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


class LocalRayConsole:
    """Keep a local Ray instance's console output in Ray's logs; call around ``ray.init``.

    ``before_init()`` (nothing is done when ``RAY_ADDRESS`` is set, Ray already runs or
    ``ECGRAY_RAY_CONSOLE=1``): the ``ray`` / ``ray.data`` console handlers show errors only and
    the ``ray`` records (Ray's startup notices: token authentication, "Started a local Ray
    instance") are buffered. ``after_init()``: the buffered and later ``ray`` records go to
    ``<session>/logs/ecgray-driver.log`` (Ray Data keeps its own ``ray-data.log``), and the
    process's native stderr (file descriptor 2: the driver core worker's ``E`` lines, which Ray
    also writes to ``python-core-driver-*.log``) to ``<session>/logs/ecgray-driver-stderr.log``,
    while ``sys.stderr`` stays on the console. ``restore()`` undoes all of it; call it after
    ``ray.shutdown()`` so Ray's exit messages stay in the logs too.
    """

    def __init__(self):
        self.active = False
        self.log_dir: str | None = None
        self._levels: list[tuple[logging.Handler, int]] = []
        self._buffer: logging.handlers.MemoryHandler | None = None
        self._file: logging.Handler | None = None
        self._saved_fd: int | None = None
        self._saved_stderr = None

    @staticmethod
    def wanted() -> bool:
        if os.environ.get("RAY_ADDRESS") or os.environ.get("ECGRAY_RAY_CONSOLE", "") not in ("", "0"):
            return False
        try:
            import ray
        except ImportError:  # pragma: no cover
            return False
        return not ray.is_initialized()

    def before_init(self) -> "LocalRayConsole":
        if not self.wanted():
            return self
        self.active = True
        import ray.data  # noqa: F401  (configures the ray.data logger and its console handler)

        for name in _RAY_LOGGERS:
            for h in _console_handlers(logging.getLogger(name)):
                self._levels.append((h, h.level))
                h.setLevel(logging.ERROR)
        self._buffer = logging.handlers.MemoryHandler(capacity=10_000, flushLevel=logging.CRITICAL + 1)
        logging.getLogger("ray").addHandler(self._buffer)
        return self

    def after_init(self) -> "LocalRayConsole":
        if not self.active:
            return self
        import ray

        if not ray.is_initialized():
            return self
        try:
            self.log_dir = ray._private.worker._global_node.get_logs_dir_path()
        except Exception:  # noqa: BLE001 - private API: without it, the console simply stays as it is
            self.log_dir = None
        if not self.log_dir or not os.path.isdir(self.log_dir):
            return self
        fmt = logging.Formatter("%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s")
        self._file = logging.FileHandler(os.path.join(self.log_dir, "ecgray-driver.log"), encoding="utf-8")
        self._file.setFormatter(fmt)
        ray_logger = logging.getLogger("ray")
        ray_logger.addHandler(self._file)
        if self._buffer is not None:
            ray_logger.removeHandler(self._buffer)
            self._buffer.setTarget(self._file)
            self._buffer.close()  # flushes into the file
            self._buffer = None
        self._redirect_fd2(os.path.join(self.log_dir, "ecgray-driver-stderr.log"))
        return self

    def _redirect_fd2(self, path: str) -> None:
        try:
            fd2_is_stderr = sys.stderr is not None and sys.stderr.fileno() == 2
        except (AttributeError, ValueError, OSError):  # e.g. captured by a test runner: leave fd 2 alone
            fd2_is_stderr = False
        if not fd2_is_stderr:
            return
        try:
            sys.stderr.flush()
            saved = os.dup(2)
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(target, 2)
            os.close(target)
        except OSError:
            return
        self._saved_fd = saved
        self._saved_stderr = sys.stderr
        sys.stderr = open(saved, "w", buffering=1, encoding=getattr(self._saved_stderr, "encoding", None) or "utf-8",
                          errors="backslashreplace", closefd=False)

    @property
    def console_fd(self) -> int:
        """The file descriptor of the console's stderr (2 unless diverted)."""
        return self._saved_fd if self._saved_fd is not None else 2

    def restore(self) -> None:
        if not self.active:
            return
        self.active = False
        if self._saved_fd is not None:
            try:
                sys.stderr.flush()
                sys.stderr.close()
            except (OSError, ValueError):
                pass
            sys.stderr = self._saved_stderr
            os.dup2(self._saved_fd, 2)
            os.close(self._saved_fd)
            self._saved_fd = self._saved_stderr = None
        ray_logger = logging.getLogger("ray")
        for h in (self._buffer, self._file):
            if h is not None:
                ray_logger.removeHandler(h)
                h.close()
        self._buffer = self._file = None
        for h, level in self._levels:
            h.setLevel(level)
        self._levels = []

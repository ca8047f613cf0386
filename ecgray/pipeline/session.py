"""Ray for one command line run (``ecgray run`` / ``ecgray demo``): start or join, stop, and Ctrl-C."""
from __future__ import annotations

import os
import signal
import sys

from ecgray.store import Store


def interrupted_message(output: str | None, hint: str = "rerun with --resume") -> str:
    """``interrupted after K of N shards; rerun with --resume``: K committed (by any run), N planned."""
    k, n = 0, None
    if output is not None:
        try:
            store = Store(output)
            k = len(store.commits())
            n = (store.manifest() or {}).get("n_shards")
        except Exception:  # noqa: BLE001 - an unreadable output still gets the message
            pass
    done = f"{k} of {n} shards" if n is not None else f"{k} shards"
    return f"interrupted after {done}; {hint}"


class RaySession:
    """Ray for one ``run`` / ``demo`` command: a local instance's own console output kept in Ray's logs
    (:class:`ecgray.pipeline.progress.LocalRayConsole`), a clean shutdown before the last lines, and the
    SIGINT message (exit 130). A cluster (``RAY_ADDRESS``) is joined and left as it is."""

    def __init__(self):
        self.quiet = None
        self.started = False

    def start(self, **init_kwargs) -> None:
        import ray

        from .progress import LocalRayConsole
        from .run import ray_init_if_needed

        was_up = ray.is_initialized()
        self.quiet = LocalRayConsole().before_init()
        ray_init_if_needed(**init_kwargs)
        self.started = not was_up and ray.is_initialized()
        self.quiet.after_init()

    def stop(self) -> None:
        if self.started:
            import ray

            self.started = False
            try:
                ray.shutdown()
            except Exception:  # noqa: BLE001 - shutting down never hides the run's own outcome
                pass
        if self.quiet is not None:
            self.quiet.restore()
            self.quiet = None

    def interrupted(self, output: str | None, hint: str = "rerun with --resume") -> str:
        """After Ctrl-C: stop Ray; returns the line that says how far the run got (a second Ctrl-C while Ray
        stops writes it and exits 130 at once)."""
        message = interrupted_message(output, hint)

        def again(signum, frame):  # a second Ctrl-C while Ray shuts down: leave at once, same message
            sys.stdout.flush()
            os.write(self.stderr_fd(), (message + "\n").encode())
            os._exit(130)

        try:
            previous = signal.signal(signal.SIGINT, again)
        except ValueError:  # not the main thread
            previous = None
        try:
            self.stop()
            message = interrupted_message(output, hint)  # shards committed while Ray stopped count too
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        return message

    def stderr_fd(self) -> int:
        return self.quiet.console_fd if self.quiet is not None else 2

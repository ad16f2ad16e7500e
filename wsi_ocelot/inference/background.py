"""A writer thread behind a bounded queue: the engine's host work that need not delay the
device (points to the slide, the border buffer, purity counts, GeoJSON and Zarr writes, the
tissue map) runs here, in submission order, while the main thread feeds the next batch.

The queue is bounded, so memory stays flat: a writer that falls behind makes the main
thread wait. An exception in a job is raised in the main thread at its next ``submit``,
``drain`` or ``close``; after it, later jobs are skipped.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

__all__ = ["BackgroundWriter"]

_STOP = object()


class BackgroundWriter:
    """Runs ``submit``\\ ted callables one at a time on one thread, in order.

    ``depth`` is the most jobs waiting (each holds one batch's points or tissue
    probabilities). ``inline=True`` runs each job at once in the caller's thread (same
    results; for debugging and for measuring the work). ``cpu_s`` is the thread CPU time the
    jobs took, ``wait_s`` how long ``submit`` waited for room in the queue."""

    def __init__(self, depth: int = 4, *, inline: bool = False, name: str = "wsi-ocelot-writer"):
        self.inline = inline
        self.cpu_s = 0.0
        self.wait_s = 0.0
        self.jobs = 0
        self._error: BaseException | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._thread: threading.Thread | None = None
        if not inline:
            self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
            self._thread.start()

    # -- the thread ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                if self._error is None:
                    self._run(item)
            finally:
                self._queue.task_done()

    def _run(self, item: tuple[Callable[..., Any], tuple[Any, ...]]) -> None:
        fn, args = item
        t0 = time.thread_time()
        try:
            fn(*args)
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            self._error = err
        finally:
            self.cpu_s += time.thread_time() - t0
            self.jobs += 1

    # -- the caller ---------------------------------------------------------------------------
    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; waits while the queue is full."""
        self._raise()
        if self.inline:
            self._run((fn, args))
            self._raise()
            return
        t0 = time.perf_counter()
        self._queue.put((fn, args))
        self.wait_s += time.perf_counter() - t0

    def drain(self) -> None:
        """Wait until every queued job has run; raise the first error of one."""
        if not self.inline:
            self._queue.join()
        self._raise()

    def close(self) -> None:
        """Drain and stop the thread."""
        try:
            self.drain()
        finally:
            self._stop()

    def _stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self._thread = None

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        # the main thread failed: skip what is queued, stop, keep the main thread's error
        if self._error is None:
            self._error = RuntimeError("skipped after an error in the main thread")
        try:
            self._stop()
        finally:
            self._error = None

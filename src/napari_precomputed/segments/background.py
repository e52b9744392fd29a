"""Work off the UI thread, results back on it (no Qt here).

:class:`Background` runs functions on a small shared thread pool and hands each result
(or error) to a callback **on the UI thread**, through a :class:`Poster`:

* in a Qt viewer, the Qt poster of :mod:`napari_precomputed.widgets.segments` (a queued
  signal into the main thread's event loop), registered with :func:`register_poster`
  (the package registers a loader for it, so a Qt viewer finds it without the widget);
* without one (``ViewerModel``, scripts), a :class:`QueuePoster`: callbacks wait in a
  queue until the UI thread calls :meth:`Background.process` or :meth:`Background.wait`.

Nothing here touches napari layers from a worker thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

__all__ = [
    "Background",
    "Poster",
    "QueuePoster",
    "register_poster",
    "register_poster_loader",
    "poster_for",
    "WORKERS",
]

log = logging.getLogger("napari_precomputed")

T = TypeVar("T")

#: Threads fetching meshes (shared by every view; each fetch batches many segments).
WORKERS = 2


class Poster(Protocol):
    """Carries callbacks from worker threads to the UI thread."""

    def post(self, callback: Callable[[], None]) -> None:
        """From any thread: call ``callback`` on the UI thread soon."""

    def process(self) -> None:
        """On the UI thread: run what has been posted and is due."""


class QueuePoster:
    """A poster without an event loop: callbacks wait until :meth:`process`."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()

    def post(self, callback: Callable[[], None]) -> None:
        self._queue.put(callback)

    def process(self) -> None:
        while True:
            try:
                callback = self._queue.get_nowait()
            except queue.Empty:
                return
            callback()


_poster: Poster | None = None
_loader: Callable[[], Poster] | None = None


def register_poster(poster: Poster | None) -> None:
    """Use ``poster`` for viewers with a Qt window (``None``: none)."""
    global _poster
    _poster = poster


def register_poster_loader(loader: Callable[[], Poster]) -> None:
    """``loader()`` imports and returns the Qt poster when a Qt viewer first needs one."""
    global _loader
    _loader = loader


def poster_for(viewer: Any) -> Poster:
    """The Qt poster for a viewer with a Qt window, else a new :class:`QueuePoster`."""
    global _poster
    window = getattr(viewer, "window", None)
    if window is not None and getattr(window, "_qt_window", None) is not None:
        if _poster is None and _loader is not None:
            try:
                _poster = _loader()
            except Exception as e:  # pragma: no cover - Qt missing or broken
                log.debug("napari-precomputed: no Qt poster: %s", e)
        if _poster is not None:
            return _poster
    return QueuePoster()


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _shared_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(WORKERS, thread_name_prefix="precomputed-segments")
        return _executor


class Background:
    """Runs work on the shared pool; ``done``/``failed`` run on the UI thread."""

    def __init__(self, poster: Poster | None = None) -> None:
        self.poster: Poster = poster if poster is not None else QueuePoster()
        self._lock = threading.Lock()
        self._pending = 0  # submitted, callback not yet run
        self.closed = False

    @property
    def busy(self) -> bool:
        """Work submitted whose callback has not run yet."""
        with self._lock:
            return self._pending > 0

    def submit(
        self,
        work: Callable[[], T],
        done: Callable[[T], None],
        failed: Callable[[BaseException], None] | None = None,
    ) -> Future[None]:
        """Run ``work()`` on a worker thread, then ``done(result)`` (or ``failed(error)``;
        default: log it) on the UI thread. Callbacks of a closed :class:`Background` are
        dropped."""
        with self._lock:
            self._pending += 1

        def finish(callback: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                try:
                    if not self.closed:
                        callback()
                except Exception:  # a callback must not break the event loop
                    log.exception("napari-precomputed: background callback failed")
                finally:
                    with self._lock:
                        self._pending -= 1

            return run

        def job() -> None:
            try:
                result = work()
            except BaseException as e:  # handed to the UI thread
                error = e
                if failed is None:
                    log.warning("napari-precomputed: background work failed: %s", e)
                    self.poster.post(finish(lambda: None))
                else:
                    self.poster.post(finish(lambda: failed(error)))
                return
            self.poster.post(finish(lambda: done(result)))

        return _shared_executor().submit(job)

    def process(self) -> None:
        """Run the callbacks that are due (call on the UI thread)."""
        self.poster.process()

    def wait(self, timeout: float = 30.0) -> bool:
        """On the UI thread: process callbacks until no work is pending (work a callback
        submits included). False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            self.process()
            if not self.busy:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)

    def close(self) -> None:
        """Drop the callbacks of work still running."""
        self.closed = True

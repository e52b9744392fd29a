"""Shared resources of opened volumes, as TensorStore's context holds them: the
decoded-chunk cache, I/O concurrency and the decode pool.

Resources live in a :class:`Context`, not in globals, so a napari session and a script
can share one cache, and tests can use a fresh one.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .cache import DEFAULT_CACHE_BYTES, ChunkCache

__all__ = ["Context", "default_context"]

#: TensorStore context resources that bound concurrent requests to a store.
_IO_RESOURCES = (
    "file_io_concurrency",
    "gcs_request_concurrency",
    "s3_request_concurrency",
    "http_request_concurrency",
)


class Context:
    """Shared resources: the decoded-chunk cache, I/O concurrency and a decode pool.

    ``Context({"cache_pool": {"total_bytes_limit": 0}})`` accepts TensorStore's context
    JSON for the members that apply here.
    """

    def __init__(
        self,
        spec: dict[str, Any] | None = None,
        *,
        cache_bytes: int | None = None,
        io_concurrency: int | None = None,
        decode_threads: int | None = None,
    ) -> None:
        spec = dict(spec or {})
        pool = spec.get("cache_pool") or {}
        if cache_bytes is None:
            cache_bytes = int(pool.get("total_bytes_limit", DEFAULT_CACHE_BYTES))
        if decode_threads is None:
            limit = (spec.get("data_copy_concurrency") or {}).get("limit", "shared")
            decode_threads = (os.cpu_count() or 2) if limit == "shared" else int(limit)
        explicit = io_concurrency is not None
        if io_concurrency is None:
            io_concurrency = 64
            for name in _IO_RESOURCES:
                limit = (spec.get(name) or {}).get("limit", "shared")
                if limit != "shared":
                    io_concurrency, explicit = int(limit), True
                    break
        self.cache = ChunkCache(cache_bytes)
        self.io_concurrency = int(io_concurrency)
        #: True when ``io_concurrency`` was asked for: volumes opened with this context
        #: then open their stores with it; otherwise each store keeps its own default.
        self.io_concurrency_explicit = explicit
        self.decode_threads = max(1, int(decode_threads))
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        # The scales opened in this context (weakly): what every handle of one stored
        # scale must forget when another handle rewrites it (see ``scales``).
        self._scales: weakref.WeakSet[Any] = weakref.WeakSet()

    @property
    def executor(self) -> ThreadPoolExecutor:
        """Pool used to decode and encode chunks in parallel (codecs release the GIL)."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self.decode_threads, thread_name_prefix="precomputed-decode"
                )
            return self._executor

    def track(self, scale: Any) -> None:
        """Remember an opened scale (weakly) so :meth:`scales` finds it."""
        with self._lock:
            self._scales.add(scale)

    def scales(self, storage_id: Hashable) -> list[Any]:
        """The live opened scales of this context whose ``storage_id`` (kvstore URL and
        scale prefix) is ``storage_id``: every handle of one stored scale."""
        with self._lock:
            return [s for s in self._scales if s.storage_id == storage_id]

    def __getstate__(self) -> dict[str, Any]:
        # A context never travels with a pickled volume: workers build their own cache.
        return {
            "cache_bytes": self.cache.total_bytes_limit,
            "io": self.io_concurrency if self.io_concurrency_explicit else None,
            "threads": self.decode_threads,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            cache_bytes=state["cache_bytes"],
            io_concurrency=state["io"],
            decode_threads=state["threads"],
        )


_default: Context | None = None
_default_lock = threading.Lock()


def default_context() -> Context:
    """The process-wide context used when none is passed."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Context()
        return _default

"""Byte-bounded cache of decoded chunks and the shared context that owns it.

Resources live in a :class:`Context` (as in TensorStore), not in globals, so a napari
session and a script can share one cache, and tests can use a fresh one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from cachetools import LRUCache

__all__ = ["ChunkCache", "Context", "default_context"]

#: Default decoded-chunk cache: enough for a few napari screens of 64^3 uint64 chunks.
DEFAULT_CACHE_BYTES = 512 * 1024 * 1024
#: TensorStore context resources that bound concurrent requests to a store.
_IO_RESOURCES = (
    "file_io_concurrency",
    "gcs_request_concurrency",
    "s3_request_concurrency",
    "http_request_concurrency",
)


class ChunkCache:
    """Thread-safe LRU cache of numpy arrays, bounded by their total ``nbytes``."""

    def __init__(self, total_bytes_limit: int = DEFAULT_CACHE_BYTES) -> None:
        self.total_bytes_limit = int(total_bytes_limit)
        self._lru: LRUCache[Hashable, np.ndarray] = LRUCache(
            maxsize=max(1, self.total_bytes_limit), getsizeof=lambda a: max(1, a.nbytes)
        )
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        #: Bumped by every invalidation: see :meth:`put`.
        self.epoch = 0
        #: Owners (scale cache ids) that have partial-chunk entries, so invalidation scans
        #: the cache only when it can find something.
        self.partial_owners: set[Hashable] = set()

    @property
    def nbytes(self) -> int:
        with self._lock:
            return int(self._lru.currsize)

    def keeps(self, nbytes: int) -> bool:
        """Whether :meth:`put` would keep an array of ``nbytes``."""
        return 0 < nbytes <= self.total_bytes_limit

    def get(self, key: Hashable) -> np.ndarray | None:
        if self.total_bytes_limit <= 0:
            return None
        with self._lock:
            value = self._lru.get(key)
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
            return value

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._lru

    def put(self, key: Hashable, value: np.ndarray, epoch: int | None = None) -> None:
        """Cache ``value``. With ``epoch`` (the :attr:`epoch` read before fetching it),
        only if nothing was invalidated since: a read that raced with a write must not
        put the pre-write chunk back after the write dropped it."""
        if self.total_bytes_limit <= 0 or value.nbytes > self.total_bytes_limit:
            return
        value.flags.writeable = False  # shared between readers: never mutate in place
        with self._lock:
            if epoch is None or epoch == self.epoch:
                self._lru[key] = value

    def invalidate(self, keys: Iterable[Hashable]) -> None:
        with self._lock:
            self.epoch += 1
            for k in keys:
                self._lru.pop(k, None)

    def invalidate_prefix(self, prefix: tuple[Any, ...]) -> None:
        """Drop every entry whose key tuple starts with ``prefix``."""
        n = len(prefix)
        with self._lock:
            self.epoch += 1
            for k in [k for k in self._lru if isinstance(k, tuple) and k[:n] == prefix]:
                del self._lru[k]

    def invalidate_positions(self, owner: Hashable, positions: Iterable[Hashable]) -> None:
        """Drop every entry ``(owner, pos, ...)`` for the given positions: the whole
        chunks and any partial (slab) entries cached for them."""
        wanted = set(positions)
        with self._lock:
            self.epoch += 1
            for p in wanted:
                self._lru.pop((owner, p), None)
            if owner in self.partial_owners:
                for k in [
                    k
                    for k in self._lru
                    if isinstance(k, tuple) and len(k) > 2 and k[0] == owner and k[1] in wanted
                ]:
                    del self._lru[k]

    def clear(self) -> None:
        with self._lock:
            self.epoch += 1
            self._lru.clear()


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

    @property
    def executor(self) -> ThreadPoolExecutor:
        """Pool used to decode and encode chunks in parallel (codecs release the GIL)."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self.decode_threads, thread_name_prefix="precomputed-decode"
                )
            return self._executor

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

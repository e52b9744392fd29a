"""Byte-bounded cache of decoded chunks, shared by the scales opened in one
:class:`~precomputed.context.Context`.

Entries are keyed ``(scale cache id, chunk position, ...)``; an *epoch* counter lets a
read that raced with a write avoid putting the pre-write chunk back (:meth:`ChunkCache.put`).
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable
from typing import Any

import numpy as np
from cachetools import LRUCache

__all__ = ["ChunkCache", "DEFAULT_CACHE_BYTES"]

#: Default decoded-chunk cache: enough for a few napari screens of 64^3 uint64 chunks.
DEFAULT_CACHE_BYTES = 512 * 1024 * 1024


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

"""Byte-bounded cache of decoded chunks, shared by the scales opened in one
:class:`~precomputed.context.Context`.

Entries are keyed ``(scale cache id, chunk position, ...)``: the whole decoded chunk under
``(owner, pos)``, partial entries (slabs, encoded bytes) under longer keys. All entries
of one position come from one stored version of the chunk, recorded in the position's
:class:`Stamp`: the storage *generation* they were read from (the chunk's key, or its
shard file) and the time it was last known current. A read whose staleness bound is
later than that time revalidates the position (``recheck_cached_data``:
:mod:`precomputed.revalidate`) instead of trusting it.

An *epoch* counter lets a read that raced with a write avoid putting the pre-write chunk
back (:meth:`ChunkCache.put`).
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np
from cachetools import LRUCache

__all__ = ["ChunkCache", "DEFAULT_CACHE_BYTES", "Stamp"]

#: Default decoded-chunk cache: enough for a few napari screens of 64^3 uint64 chunks.
DEFAULT_CACHE_BYTES = 512 * 1024 * 1024


class Stamp:
    """The stored version the cached entries of one chunk position come from.

    ``generation``: the storage generation they were read from (``None``: not known, so
    they cannot be revalidated, only dropped); ``time``: when it was last known to be
    current (``time.time()`` taken before the read or check that saw it); ``keys``: the
    cache keys holding entries of the position."""

    __slots__ = ("generation", "time", "keys")

    def __init__(self, generation: str | None, time: float) -> None:
        self.generation = generation
        self.time = time
        self.keys: list[Hashable] = []


def _position_of(key: Hashable) -> tuple[Hashable, Hashable] | None:
    if isinstance(key, tuple) and len(key) >= 2:
        return key[0], key[1]
    return None


class _Entries(LRUCache):
    """The LRU of arrays, keeping each position's :class:`Stamp` as long as one of its
    entries is cached (every removal, eviction included, goes through ``__delitem__``)."""

    def __init__(self, maxsize: int, stamps: dict[tuple[Hashable, Hashable], Stamp]) -> None:
        super().__init__(maxsize=maxsize, getsizeof=lambda a: max(1, a.nbytes))
        self.stamps = stamps

    def __delitem__(self, key: Hashable) -> None:
        super().__delitem__(key)
        pos = _position_of(key)
        stamp = None if pos is None else self.stamps.get(pos)
        if stamp is not None:
            try:
                stamp.keys.remove(key)
            except ValueError:
                pass
            if not stamp.keys:
                del self.stamps[pos]  # type: ignore[arg-type]


class ChunkCache:
    """Thread-safe LRU cache of numpy arrays, bounded by their total ``nbytes``, with the
    stored version of every position's entries (:class:`Stamp`)."""

    def __init__(self, total_bytes_limit: int = DEFAULT_CACHE_BYTES) -> None:
        self.total_bytes_limit = int(total_bytes_limit)
        self._stamps: dict[tuple[Hashable, Hashable], Stamp] = {}
        self._lru = _Entries(max(1, self.total_bytes_limit), self._stamps)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        #: Positions revalidated (``recheck_cached_data``) and those found changed.
        self.revalidated = 0
        self.changed = 0
        #: Bumped by every invalidation: see :meth:`put`.
        self.epoch = 0
        #: Owners (scale cache ids) that have partial-chunk entries (kept for callers
        #: that record it; invalidation finds every entry through the stamps).
        self.partial_owners: set[Hashable] = set()

    @property
    def nbytes(self) -> int:
        with self._lock:
            return int(self._lru.currsize)

    @property
    def enabled(self) -> bool:
        return self.total_bytes_limit > 0

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

    def put(
        self,
        key: Hashable,
        value: np.ndarray,
        epoch: int | None = None,
        *,
        generation: str | None = None,
        time: float | None = None,
    ) -> None:
        """Cache ``value``. With ``epoch`` (the :attr:`epoch` read before fetching it),
        only if nothing was invalidated since: a read that raced with a write must not
        put the pre-write chunk back after the write dropped it.

        ``generation`` and ``time``: the stored version the value was read from and the
        time taken before that read. Entries of the position from another version are
        dropped; without a generation the position's entries can only be dropped, never
        revalidated."""
        if self.total_bytes_limit <= 0 or value.nbytes > self.total_bytes_limit:
            return
        value.flags.writeable = False  # shared between readers: never mutate in place
        pos = _position_of(key)
        with self._lock:
            if epoch is not None and epoch != self.epoch:
                return
            if pos is not None:
                stamp = self._stamps.get(pos)
                if stamp is not None and (generation is None or stamp.generation != generation):
                    for k in list(stamp.keys):
                        if k != key:
                            self._lru.pop(k, None)  # another (or an unknown) version
            self._lru[key] = value
            if pos is None:
                return
            when = float("-inf") if time is None or generation is None else time
            stamp = self._stamps.get(pos)
            if stamp is None:
                stamp = self._stamps[pos] = Stamp(generation, when)
            elif generation is not None and stamp.generation == generation:
                stamp.time = max(stamp.time, when)
            else:
                stamp.generation, stamp.time = generation, when
            if key not in stamp.keys:
                stamp.keys.append(key)

    # -- revalidation -----------------------------------------------------------------
    def stale(
        self, owner: Hashable, positions: Iterable[Hashable], bound: float
    ) -> list[tuple[Hashable, str | None]]:
        """``(pos, generation)`` of the positions with cached entries last known current
        before ``bound``: what a read with that staleness bound must revalidate."""
        out = []
        with self._lock:
            stamps = self._stamps
            for p in positions:
                stamp = stamps.get((owner, p))
                if stamp is not None and stamp.time < bound:
                    out.append((p, stamp.generation))
        return out

    def confirm(
        self, owner: Hashable, items: Sequence[tuple[Hashable, str]], time: float
    ) -> None:
        """The entries of each ``(pos, generation)`` were found current at ``time``
        (taken before the check): no read starting before it revalidates them again."""
        with self._lock:
            self.revalidated += len(items)
            stamps = self._stamps
            for p, generation in items:
                stamp = stamps.get((owner, p))
                if stamp is not None and stamp.generation == generation and stamp.time < time:
                    stamp.time = time

    def drop_changed(self, owner: Hashable, positions: Sequence[Hashable]) -> None:
        """Revalidation found the stored chunk of ``positions`` changed: forget them."""
        with self._lock:
            self.revalidated += len(positions)
            self.changed += len(positions)
        self.invalidate_positions(owner, positions)

    def stamp(self, owner: Hashable, pos: Hashable) -> tuple[str | None, float] | None:
        """``(generation, time)`` of a position's cached entries, None when it has none."""
        with self._lock:
            s = self._stamps.get((owner, pos))
            return None if s is None else (s.generation, s.time)

    # -- invalidation -----------------------------------------------------------------
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
        with self._lock:
            self.epoch += 1
            for p in set(positions):
                stamp = self._stamps.get((owner, p))
                if stamp is not None:
                    for k in list(stamp.keys):
                        self._lru.pop(k, None)

    def clear(self) -> None:
        with self._lock:
            self.epoch += 1
            self._lru.clear()
            self._stamps.clear()

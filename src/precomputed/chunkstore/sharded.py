"""Sharded scales: chunks packed into ``neuroglancer_uint64_sharded_v1`` shard files.

:class:`ShardedIdStore` is the format's one store of uint64 ids to bytes: a scale's chunks
(through :class:`ShardedChunkStore`, which puts the chunk grid on it: a grid position is a
compressed Morton id) and per-segment data such as sharded meshes (the id *is* the
segment id). It offers

- :meth:`~ShardedIdStore.locate_many` — where each id's value lies (shard key and
  absolute byte range) without reading it; :meth:`~ShardedIdStore.read_many` — the
  values. Index lookups are batched and concurrent, shard index entries and minishard
  indices cached (bounded), a minishard index another thread is loading waited for, not
  fetched twice; shards a caller wants whole are read in one request each;
- :meth:`~ShardedIdStore.commit` / :meth:`~ShardedIdStore.commit_shard` — put or delete
  values, each shard rewritten once, conditionally on the generation read (re-read and
  merged again when another writer got there first).

Values may carry *unindexed prefixes*: bytes stored immediately before a value, outside
its indexed range, where the sharded multi-resolution mesh format keeps a segment's
fragment data (in front of its manifest). A commit stores the ``prefixes`` given for new
values and keeps those of the entries it does not replace when told their size
(``prefix_size``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, TypeVar

import numpy as np
from cachetools import LRUCache

from .. import sharding as sh
from ..codecs.gzip import DEFAULT_LIMIT
from ..errors import (
    ConditionFailedError,
    CorruptDataError,
    GenerationChangedError,
    InvalidArgumentError,
)
from ..internal.contention import pause
from ..internal.geometry import ChunkGrid, Vec3
from ..kvstore import NO_VALUE, Generation, KvStore
from .base import (
    MAX_COMMIT_RETRIES,
    ChunkStore,
    CommitStats,
    DeliverChunk,
    Rebuild,
    Versioned,
    join_key,
)

__all__ = ["Location", "Placement", "ShardedIdStore", "ShardedChunkStore", "shard_number"]

_U64_MAX = (1 << 64) - 1
_T = TypeVar("_T")


class _Stale(Exception):
    """A read found index data of one shard from two generations: start again."""

    def __init__(self, shards: set[int], changed: dict[str, Any]) -> None:
        super().__init__(shards)
        self.shards = shards
        self.changed = changed


class Placement(NamedTuple):
    """Chunk ids with their shard and minishard numbers (uint64 arrays of equal length)."""

    ids: np.ndarray
    shards: np.ndarray
    minishards: np.ndarray


class Location(NamedTuple):
    """Where a stored value lies: shard file ``key`` and absolute bytes ``[start, stop)``
    (still in the shard ``data_encoding``)."""

    key: str
    start: int
    stop: int


def _id(value: object) -> int:
    try:
        i = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError) as e:
        raise InvalidArgumentError(f"ids must be integers in [0, 2**64): {e}") from None
    if not 0 <= i <= _U64_MAX:
        raise InvalidArgumentError(f"ids must be integers in [0, 2**64), got {i}")
    return i


def _id_array(ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """``ids`` as a flat uint64 array; :class:`InvalidArgumentError` for anything that is
    not an integer in ``[0, 2**64)``."""
    if isinstance(ids, np.ndarray):
        if ids.dtype.kind == "i" and ids.size and int(ids.min()) < 0:
            raise InvalidArgumentError(f"ids must be integers in [0, 2**64), got {ids.min()}")
        if ids.dtype.kind not in "iu":
            return np.array([_id(i) for i in ids.reshape(-1).tolist()], np.uint64)
        return ids.astype(np.uint64, copy=False).reshape(-1)
    return np.array([_id(i) for i in ids], np.uint64)


def _ids_text(ids: Iterable[int], limit: int = 8) -> str:
    """``chunks [1, 2, 3]`` (at most ``limit`` ids shown), for error messages."""
    ids = sorted(ids)
    more = f", ... ({len(ids)} in all)" if len(ids) > limit else ""
    return f"chunk{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids[:limit]))}{more}"


def shard_number(group: Hashable) -> int:
    """A sharded store's group: the shard number that ``group_of`` returned."""
    if isinstance(group, (int, np.integer)):
        return int(group)
    raise TypeError(f"not a shard number: {group!r}")


def _size_seen(start: int, blob: bytes | None) -> str:
    """What a short ranged read tells about an object's size, for error messages."""
    if blob is None:
        return "0 (the shard file is missing)"
    return str(start + len(blob)) if blob else f"<= {start}"


class ShardedIdStore:
    """uint64 ids to bytes in the shard files under ``prefix`` (one sharding spec).

    Reads cost at most three ranged requests per id when cold (shard index entry,
    minishard index, data) and one when warm: index entries and minishard indices are
    cached (bounded). The first read of a shard fetches its whole index when that is at most
    ``INDEX_SPAN_BYTES`` (otherwise the span of the entries needed); shards a caller knows
    are wholly wanted (``whole``) are read in one request each. Thread-safe.
    """

    #: Number of cached minishard indices / shard index entries.
    INDEX_CACHE_ENTRIES = 16384
    #: Largest shard index read whole on first use (else: largest span of entries read in
    #: one request).
    INDEX_SPAN_BYTES = 64 * 1024
    #: Reads through the shard index that found the shard changed before the shards are
    #: read whole instead (:meth:`read_placed`), or, for :meth:`locate_many`, before it gives up.
    MAX_INDEX_READS = 8
    #: Attempts to rewrite a shard that other writers keep changing before giving up.
    MAX_COMMIT_RETRIES = MAX_COMMIT_RETRIES
    #: Shards rewritten at once by :meth:`commit` (a scale's chunk commits are scheduled
    #: by :mod:`precomputed.writepath` instead, one :meth:`commit_shard` per group).
    COMMIT_CONCURRENCY = 8

    def __init__(
        self,
        kvstore: KvStore,
        prefix: str,
        spec: sh.ShardingSpec,
        *,
        max_value_bytes: int = DEFAULT_LIMIT,
        max_minishard_entries: int = sh.MAX_MINISHARD_ENTRIES,
    ) -> None:
        self.kvstore = kvstore
        self.prefix = prefix
        self.spec = spec
        #: Bounds of every inflation (gzip chunk data, gzip minishard indices): what the
        #: format allows the values and minishards of this store to hold.
        self.max_value_bytes = max_value_bytes
        self.max_minishard_entries = max_minishard_entries
        self.index_size = spec.shard_index_size
        self._lock = threading.Lock()
        # (shard, minishard) -> set when the thread loading its minishard index is done
        self._loading: dict[tuple[int, int], threading.Event] = {}
        # Every cached item carries the generation of the shard it was read from: a read
        # uses items of one generation only and pins its data ranges to it.
        # (shard, minishard) -> (generation, absolute (start, stop) or None: empty / no shard)
        self._entries: LRUCache[tuple[int, int], tuple[Generation, tuple[int, int] | None]] = (
            LRUCache(self.INDEX_CACHE_ENTRIES)
        )
        # (shard, minishard) -> (generation, {chunk id: (start, stop)})
        self._minishards: LRUCache[tuple[int, int], tuple[Generation, dict[int, tuple[int, int]]]] = (
            LRUCache(self.INDEX_CACHE_ENTRIES)
        )

    def __repr__(self) -> str:
        return f"ShardedIdStore({self.kvstore.url + self.prefix!r})"

    # -- placement ----------------------------------------------------------------------
    def place(self, ids: Sequence[int] | np.ndarray) -> Placement:
        """Shard and minishard numbers of ``ids`` (:class:`InvalidArgumentError` for an id
        that is not an integer in ``[0, 2**64)``)."""
        if len(ids) <= 8:  # a few ids: integer arithmetic beats numpy's set-up
            got = [(i, *sh.placement_of_id(i, self.spec)) for i in map(_id, ids)]
            cols = list(zip(*got, strict=True)) or [(), (), ()]
            return Placement(*(np.array(c, np.uint64) for c in cols))
        arr = _id_array(ids)
        shards, minishards = sh.shard_and_minishard(arr, self.spec)  # hashes internally
        return Placement(arr, shards, minishards)

    def shard_key(self, shard: int) -> str:
        """Storage key of shard number ``shard``."""
        return join_key(self.prefix, sh.shard_filename(int(shard), self.spec))

    def describe(self, chunk_id: int) -> str:
        """Where ``chunk_id`` lives, for error messages."""
        p = self.place([chunk_id])
        return f"{self.shard_key(int(p.shards[0]))}, minishard {int(p.minishards[0])}, chunk id {int(chunk_id)}"

    def invalidate(self, shards: Iterable[int] | None = None) -> None:
        """Forget cached index data of ``shards`` (all when None), e.g. after another
        writer's change."""
        with self._lock:
            if shards is None:
                self._entries.clear()
                self._minishards.clear()
                return
            drop = {int(s) for s in shards}
            for cache in (self._entries, self._minishards):
                for k in [k for k in cache if k[0] in drop]:
                    del cache[k]

    # -- reading --------------------------------------------------------------------------
    def locate_many(
        self,
        ids: Sequence[int] | np.ndarray,
        *,
        generations: dict[str, Generation] | None = None,
    ) -> list[Location | None]:
        """Where each id's stored value lies (``None`` where the id is absent), without
        reading it: the index lookups of :meth:`read_many`, batched and cached alike. For
        callers that read more than the value (e.g. the unindexed prefix in front of it),
        then check and decode it with :meth:`check_read` and :meth:`decode_value`.

        ``generations`` (a dict to fill): the generation of each shard key the locations
        came from (one per shard). Read the locations with
        ``kvstore.read_ranges_pinned(requests, generations)``: a
        :class:`GenerationChangedError` then means the shard was replaced since its
        index was read (:meth:`invalidate` it and locate again), never other bytes."""
        if not len(ids):
            return []
        p = self.place(ids)
        idx = range(len(p.ids))

        def attempt() -> list[Location | None]:
            locs, gens = self._locate(idx, p)
            if generations is not None:
                generations.update({self.shard_key(s): g for s, g in gens.items()})
            return locs

        return self._consistently(p, idx, attempt)

    def read_many(
        self, ids: Sequence[int] | np.ndarray, *, deferred: bool = False
    ) -> list[bytes | None]:
        """Bytes stored for each id (``None`` if absent), index lookups batched: every
        needed index entry and minishard index is fetched once, concurrently."""
        if not len(ids):
            return []
        return self.read_placed(self.place(ids), deferred=deferred)

    def read_placed(
        self,
        p: Placement,
        *,
        whole: Iterable[int] = (),
        deferred: bool = False,
        generations: dict[int, Generation] | None = None,
    ) -> list[bytes | None]:
        """:meth:`read_many` for placed ids; shards in ``whole`` (every chunk of them is
        wanted) are read in one request each. With ``deferred`` the shard data encoding is
        left on the bytes for :meth:`finish` (so callers spread it over their threads).

        Every id's bytes (index entry, minishard index, data) come from one generation of
        its shard, ids of one shard from the same one: the data ranges are read pinned to
        the generation the (cached) indices came from, and when the shard changed the
        read starts again from its index (after :attr:`MAX_INDEX_READS` such attempts the
        shards are read whole, one request each: always one version). ``generations``
        (a dict to fill): the generation of each shard read."""
        ids, shards, minis = p
        out: list[bytes | None] = [None] * len(ids)
        whole = set(whole)
        rest = [i for i in range(len(ids)) if int(shards[i]) not in whole]
        if whole:
            self._read_whole_shards(whole, ids, shards, out, deferred, generations)
        if rest:
            self._read_via_indices(rest, p, out, deferred, generations)
        return out

    def read_versioned(self, ids: Sequence[int] | np.ndarray) -> list[tuple[bytes | None, Generation]]:
        """Each id's value (``None``: absent, shard data encoding removed) with the
        generation of its shard it was read from. Cached index data of a shard whose
        generation changed is dropped first (one metadata check per shard), so an
        absent id is absent in the shard's current version, not in a cached one."""
        if not len(ids):
            return []
        p = self.place(ids)
        self._drop_stale(p)
        gens: dict[int, Generation] = {}
        blobs = self.read_placed(p, generations=gens)
        return [(b, gens.get(int(s), NO_VALUE)) for b, s in zip(blobs, p.shards, strict=True)]

    def read_placed_each(
        self,
        p: Placement,
        deliver: DeliverChunk,
        *,
        whole: Iterable[int] = (),
        versioned: bool = False,
    ) -> None:
        """:meth:`read_placed` with ``deferred=True``, each id's bytes handed to
        ``deliver(i, bytes, generation of its shard)`` as soon as they arrive (the index
        lookups come first; shards in ``whole`` are delivered when read). With
        ``versioned`` cached index data of changed shards is dropped first, as
        :meth:`read_versioned` does. When a shard changes during the read its ids are
        read again through its new index and delivered again (see
        ``ChunkStore.read_chunks_each``)."""
        if not len(p.ids):
            return
        if versioned:
            self._drop_stale(p)
        ids, shards, _ = p
        whole = set(whole)
        rest = [i for i in range(len(ids)) if int(shards[i]) not in whole]
        if rest:
            self._stream_via_indices(rest, p, deliver)
        if whole:
            gens: dict[int, Generation] = {}
            tmp: list[bytes | None] = [None] * len(ids)
            self._read_whole_shards(whole, ids, shards, tmp, True, gens if versioned else None)
            for i in range(len(ids)):
                if int(shards[i]) in whole:
                    deliver(i, tmp[i], gens.get(int(shards[i]), NO_VALUE))

    def _stream_via_indices(self, idx: list[int], p: Placement, deliver: DeliverChunk) -> None:
        ids, shards, minis = p
        tries = 0
        while True:
            try:
                self._stream_attempt(idx, p, deliver)
                return
            except (_Stale, GenerationChangedError) as e:
                self.invalidate(self._changed_shards(e, p, idx))
                tries += 1
                if tries >= self.MAX_INDEX_READS:
                    # Writers keep replacing the shards: read them whole, one request each.
                    whole = {int(shards[i]) for i in idx}
                    tmp: list[bytes | None] = [None] * len(ids)
                    got: dict[int, Generation] = {}
                    self._read_whole_shards(whole, ids, shards, tmp, True, got)
                    for i in idx:
                        deliver(i, tmp[i], got.get(int(shards[i]), NO_VALUE))
                    return
                pause(tries)

    def _stream_attempt(self, idx: list[int], p: Placement, deliver: DeliverChunk) -> None:
        """One attempt of :meth:`_stream_via_indices`: the data ranges pinned to the
        generation their index data came from, each delivered as it arrives."""
        ids, shards, minis = p
        locs, gens = self._locate(idx, p)
        requests: list[Location] = []
        targets: list[int] = []
        for i, loc in zip(idx, locs, strict=True):
            if loc is None:
                deliver(i, None, gens.get(int(shards[i]), NO_VALUE))
            else:
                requests.append(loc)
                targets.append(i)
        if not requests:
            return
        pins = {loc.key: gens[int(shards[i])] for i, loc in zip(targets, requests, strict=True)}

        def on(j: int, blob: bytes | None, gen: Generation | None) -> None:
            i = targets[j]
            key, a, b = requests[j]
            if blob is None or len(blob) != b - a:
                raise CorruptDataError(
                    f'Error reading chunk {int(ids[i])} in minishard {int(minis[i])} of '
                    f'"{key}": Requested byte range [{a}, {b}) is not valid for '
                    f"value of size {_size_seen(a, blob)}"
                )
            deliver(i, blob, gens[int(shards[i])])

        self.kvstore.read_ranges_each(requests, on, generations=pins)

    def _drop_stale(self, p: Placement) -> None:
        """Forget cached index data of the shards of ``p`` whose generation changed
        (one metadata check per shard with cached data)."""
        wanted = {(int(s), int(m)) for s, m in zip(p.shards, p.minishards, strict=True)}
        cached: dict[int, set[Generation]] = {}  # shard -> generations of its cached data
        with self._lock:
            for k in wanted:
                for cache in (self._entries, self._minishards):
                    hit = cache.get(k)
                    if hit is not None:
                        cached.setdefault(k[0], set()).add(hit[0])
        stale = [
            s
            for s, gens in cached.items()
            if len(gens) > 1 or self.kvstore.current_generation(self.shard_key(s)) not in gens
        ]
        if stale:
            self.invalidate(stale)

    def finish(self, blob: bytes, chunk_id: Callable[[], int]) -> bytes:
        """Remove the shard data encoding from a deferred read; ``chunk_id()`` names the
        chunk if the bytes are corrupt."""
        if self.spec.data_encoding == "raw":
            return bytes(blob)
        try:
            return sh.decode_chunk_data(blob, self.spec, "", self.max_value_bytes)
        except CorruptDataError:
            p = self.place([chunk_id()])
            what = (
                f'chunk {int(p.ids[0])} in minishard {int(p.minishards[0])} of '
                f'"{self.shard_key(int(p.shards[0]))}"'
            )
            sh.decode_chunk_data(blob, self.spec, what, self.max_value_bytes)  # names the chunk
            raise  # pragma: no cover

    def check_read(self, id_: int, loc: Location, blob: bytes | None) -> None:
        """Raise :class:`CorruptDataError` unless ``blob`` is all of ``loc``'s bytes (a
        read at a :meth:`locate_many` location came back short: the shard changed or is
        truncated)."""
        if blob is None or len(blob) != loc.stop - loc.start:
            raise CorruptDataError(
                f'Error reading id {id_} in "{loc.key}": Requested byte range '
                f"[{loc.start}, {loc.stop}) is not valid for value of size "
                f"{_size_seen(loc.start, blob)}"
            )

    def decode_value(self, id_: int, loc: Location, blob: bytes | memoryview) -> bytes:
        """Remove the shard ``data_encoding`` from the value of ``id_`` read at ``loc``."""
        return sh.decode_chunk_data(
            blob, self.spec, f'id {id_} in "{loc.key}"', self.max_value_bytes
        )

    def _locate(
        self, idx: Iterable[int], p: Placement
    ) -> tuple[list[Location | None], dict[int, Generation]]:
        """Locations of the placed ids at positions ``idx`` of ``p``, and the generation of
        each shard they lie in (:class:`_Stale` when a shard's index data came from two)."""
        ids, shards, minis = p
        idx = list(idx)
        # (shard, minishard) -> a requested chunk id in it, to name in error messages.
        wanted: dict[tuple[int, int], int] = {}
        for i in idx:
            wanted.setdefault((int(shards[i]), int(minis[i])), int(ids[i]))
        tables = self._minishard_tables(wanted)
        gens: dict[int, Generation] = {}
        mixed: set[int] = set()
        for (s, _), (gen, _) in tables.items():
            if gens.setdefault(s, gen) != gen:
                mixed.add(s)
        if mixed:
            raise _Stale(mixed, {})
        keys: dict[int, str] = {}
        out: list[Location | None] = []
        for i in idx:
            s = int(shards[i])
            rng = tables[(s, int(minis[i]))][1].get(int(ids[i]))
            if rng is None:
                out.append(None)
                continue
            key = keys.get(s)
            if key is None:
                key = keys[s] = self.shard_key(s)
            out.append(Location(key, *rng))
        return out, gens

    def _consistently(self, p: Placement, idx: Iterable[int], attempt: Callable[[], _T]) -> _T:
        """Run ``attempt`` (a read of placed ids at ``idx``) until it sees one generation
        per shard: after a :class:`_Stale` or a :class:`GenerationChangedError` the shards
        that changed are forgotten and it runs again, at most :attr:`MAX_INDEX_READS` times
        (then :class:`ConditionFailedError` naming the shards)."""
        tries = 0
        while True:
            try:
                return attempt()
            except (_Stale, GenerationChangedError) as e:
                changed = self._changed_shards(e, p, idx)
                self.invalidate(changed)
                tries += 1
                if tries >= self.MAX_INDEX_READS:
                    names = ", ".join(f'"{self.shard_key(s)}"' for s in sorted(changed))
                    raise ConditionFailedError(
                        f"Error reading {names}: changed while being read on each of "
                        f"{tries} attempts; giving up"
                    ) from None
                pause(tries)

    def _changed_shards(self, e: Exception, p: Placement, idx: Iterable[int]) -> set[int]:
        if isinstance(e, _Stale):
            return e.shards
        assert isinstance(e, GenerationChangedError)
        by_key = {self.shard_key(int(p.shards[i])): int(p.shards[i]) for i in idx}
        return {by_key[k] for k in e.changed if k in by_key}

    def _read_whole_shards(
        self,
        whole: set[int],
        ids: np.ndarray,
        shards: np.ndarray,
        out: list[bytes | None],
        deferred: bool = False,
        generations: dict[int, Generation] | None = None,
    ) -> None:
        order = sorted(whole)
        keys = [self.shard_key(s) for s in order]
        if generations is None:
            blobs = self.kvstore.read_many(keys)  # each shard in one request: one version
        else:
            blobs, gens = self.kvstore.read_ranges_pinned([(k, 0, None) for k in keys])
            generations.update({s: gens[k] for s, k in zip(order, keys, strict=True)})
        contents = {}
        for s, blob in zip(order, blobs, strict=True):
            key = self.shard_key(s)
            try:
                contents[s] = (
                    {}
                    if blob is None
                    else sh.split_shard(
                        blob,
                        self.spec,
                        key,
                        allow_duplicates=True,
                        decode=not deferred,
                        limit=self.max_value_bytes,
                        max_entries=self.max_minishard_entries,
                    )
                )
            except CorruptDataError as e:
                wanted = [int(i) for i, t in zip(ids, shards, strict=True) if int(t) == s]
                raise CorruptDataError(
                    f'Error reading {_ids_text(wanted)} of shard "{key}" (the whole shard): {e}'
                ) from None
        for i, s in enumerate(shards):
            s = int(s)
            if s in whole:
                out[i] = contents[s].get(int(ids[i]))  # type: ignore[assignment]

    def _read_via_indices(
        self,
        idx: list[int],
        p: Placement,
        out: list[bytes | None],
        deferred: bool = False,
        generations: dict[int, Generation] | None = None,
    ) -> None:
        ids, shards, minis = p
        tries = 0
        while True:
            try:
                requests, targets, blobs, gens = self._pinned_ranges(idx, p)
                break
            except (_Stale, GenerationChangedError) as e:
                self.invalidate(self._changed_shards(e, p, idx))
                tries += 1
                if tries >= self.MAX_INDEX_READS:
                    # Writers keep replacing the shards: read them whole, one request each.
                    whole = {int(shards[i]) for i in idx}
                    tmp: list[bytes | None] = [None] * len(ids)
                    self._read_whole_shards(whole, ids, shards, tmp, deferred, generations)
                    for i in idx:
                        out[i] = tmp[i]
                    return
                pause(tries)
        if generations is not None:
            generations.update(gens)
        for i, (shard_key, a, b), blob in zip(targets, requests, blobs, strict=True):
            what = f'chunk {int(ids[i])} in minishard {int(minis[i])} of "{shard_key}"'
            if blob is None or len(blob) != b - a:
                raise CorruptDataError(
                    f"Error reading {what}: Requested byte range [{a}, {b}) is not valid for "
                    f"value of size {_size_seen(a, blob)}"
                )
            out[i] = (
                blob
                if deferred
                else sh.decode_chunk_data(blob, self.spec, what, self.max_value_bytes)
            )

    def _pinned_ranges(
        self, idx: list[int], p: Placement
    ) -> tuple[list[Location], list[int], list[bytes | None], dict[int, Generation]]:
        """One attempt of a read through the indices: the data ranges of the ids at
        ``idx`` read pinned to the generation their index data came from."""
        locs, gens = self._locate(idx, p)
        requests: list[Location] = []
        targets: list[int] = []
        for i, loc in zip(idx, locs, strict=True):
            if loc is not None:
                requests.append(loc)
                targets.append(i)
        if not requests:
            return requests, targets, [], gens
        pins = {loc.key: gens[int(p.shards[i])] for i, loc in zip(targets, requests, strict=True)}
        blobs, _ = self.kvstore.read_ranges_pinned(requests, pins)
        return requests, targets, blobs, gens

    def _minishard_tables(
        self, wanted: Mapping[tuple[int, int], int]
    ) -> dict[tuple[int, int], tuple[Generation, dict[int, tuple[int, int]]]]:
        """Minishard indices of ``wanted`` (shard, minishard) pairs, from the cache or the
        store. A pair another thread is already loading is waited for, not fetched twice
        (concurrent readers of one shard would otherwise repeat its index requests)."""
        with self._lock:
            entries = {k: self._entries[k] for k in wanted if k in self._entries}
            tables = {k: self._minishards[k] for k in wanted if k in self._minishards}
            todo = [k for k in wanted if k not in tables]
            theirs = {k: self._loading[k] for k in todo if k in self._loading}
            mine = [k for k in todo if k not in theirs]
            for k in mine:
                self._loading[k] = threading.Event()
        try:
            # Work from local copies: a concurrent reader may evict cache entries meanwhile.
            need = {k: wanted[k] for k in mine}
            entries.update(self._load_entries({k: c for k, c in need.items() if k not in entries}))
            tables.update(self._load_minishards(need, entries))
        finally:
            with self._lock:
                for k in mine:
                    self._loading.pop(k).set()
        if theirs:
            for event in theirs.values():
                event.wait()
            with self._lock:
                tables.update({k: self._minishards[k] for k in theirs if k in self._minishards})
            rest = {k: wanted[k] for k in theirs if k not in tables}  # their load failed
            if rest:
                tables.update(self._minishard_tables(rest))
        return tables

    def _size(self, key: str) -> int | str:
        """Size of a small (truncated) stored shard, for error messages."""
        blob = self.kvstore.read(key)
        return "<missing>" if blob is None else len(blob)

    def _load_entries(
        self, wanted: Mapping[tuple[int, int], int]
    ) -> dict[tuple[int, int], tuple[Generation, tuple[int, int] | None]]:
        """Fetch shard index entries (absolute ranges, ``None`` = empty minishard).

        One request per shard: the span of the shard index from the first to the last
        entry needed (one entry when one minishard is needed), or one request per entry
        when that span would be large. ``wanted`` maps each key to a chunk id to name.
        """
        found: dict[tuple[int, int], tuple[Generation, tuple[int, int] | None]] = {}
        if not wanted:
            return found
        by_shard: dict[int, list[int]] = {}
        for s, m in sorted(wanted):
            by_shard.setdefault(s, []).append(m)
        requests: list[tuple[str, int, int]] = []
        plan: list[tuple[int, int, list[int]]] = []  # (shard, first entry, entries wanted)
        n = self.spec.num_minishards
        whole_index = 16 * n <= self.INDEX_SPAN_BYTES
        for s, ms in by_shard.items():
            key = self.shard_key(s)
            if whole_index:
                # A small shard index is fetched whole, for the price of one entry: later
                # reads of other minishards of this shard skip a round trip.
                requests.append((key, 0, 16 * n))
                plan.append((s, 0, ms))
                continue
            spans = (
                [ms] if 16 * (ms[-1] + 1 - ms[0]) <= self.INDEX_SPAN_BYTES else [[m] for m in ms]
            )
            for group in spans:
                requests.append((key, 16 * group[0], 16 * (group[-1] + 1)))
                plan.append((s, group[0], group))
        # All entries of one shard from one generation of it (one descriptor / pinned).
        blobs, gens = self.kvstore.read_ranges_pinned(requests)
        for (s, lo, ms), (key, a, _), blob in zip(plan, requests, blobs, strict=True):
            gen = gens[key]
            if blob is None:  # no shard file: every chunk in it is missing
                found.update({(s, m): (gen, None) for m in ms})
                continue
            if whole_index and len(blob) == 16 * n:
                found.update(
                    {k: (gen, v) for k, v in self._spare_entries(blob, s, key, set(ms)).items()}
                )
            for m in ms:
                entry = blob[16 * (m - lo) : 16 * (m - lo) + 16]
                if len(entry) < 16:  # the file ends before this entry: empty or truncated
                    size: int | str = a + len(blob) if blob else self._size(key)
                    if size == 0 or size == "<missing>":
                        found.update({(s, m): (gen, None) for m in ms})  # no chunks
                        break
                    raise CorruptDataError(
                        f'Error reading chunk {wanted[(s, m)]} in minishard {m} of "{key}": '
                        f"Error retrieving shard index entry: Requested byte range "
                        f"[{16 * m}, {16 * m + 16}) is not valid for value of size {size}"
                    )
                found[(s, m)] = (gen, self._entry(entry, s, m, key, wanted))
        with self._lock:
            self._entries.update(found)
        return found

    def _spare_entries(
        self, index: bytes, s: int, key: str, wanted: set[int]
    ) -> dict[tuple[int, int], tuple[int, int] | None]:
        """Entries of a whole shard index that nobody asked for yet, to cache. A bad one is
        left out: it raises only when a read needs it, naming the chunk read."""
        spare: dict[tuple[int, int], tuple[int, int] | None] = {}
        for m in range(self.spec.num_minishards):
            if m not in wanted:
                try:
                    spare[(s, m)] = sh.decode_shard_index_entry(
                        index[16 * m : 16 * m + 16], m, self.spec, key
                    )
                except CorruptDataError:
                    pass
        return spare

    def _entry(
        self, data16: bytes, s: int, m: int, key: str, wanted: Mapping[tuple[int, int], int]
    ) -> tuple[int, int] | None:
        try:
            return sh.decode_shard_index_entry(data16, m, self.spec, key)
        except CorruptDataError as e:
            raise CorruptDataError(f"Error reading chunk {wanted[(s, m)]}: {e}") from None

    def _load_minishards(
        self,
        wanted: Mapping[tuple[int, int], int],
        entries: Mapping[tuple[int, int], tuple[Generation, tuple[int, int] | None]],
    ) -> dict[tuple[int, int], tuple[Generation, dict[int, tuple[int, int]]]]:
        """Fetch and decode minishard indices ``{chunk id: absolute (start, stop)}``, each
        read pinned to the generation its shard index entry came from."""
        found: dict[tuple[int, int], tuple[Generation, dict[int, tuple[int, int]]]] = {
            k: (entries[k][0], {}) for k in wanted if entries[k][1] is None
        }
        todo = [k for k in wanted if k not in found]
        if todo:
            requests = [(self.shard_key(s), *entries[(s, m)][1]) for s, m in todo]  # type: ignore[misc]
            pins: dict[str, Generation] = {}
            mixed: set[int] = set()
            for (s, m), (key, _, _) in zip(todo, requests, strict=True):
                if pins.setdefault(key, entries[(s, m)][0]) != entries[(s, m)][0]:
                    mixed.add(s)
            if mixed:
                raise _Stale(mixed, {})
            blobs, _ = self.kvstore.read_ranges_pinned(requests, pins)
            for (s, m), (key, a, b), blob in zip(todo, requests, blobs, strict=True):
                cid = wanted[(s, m)]
                if blob is None or len(blob) != b - a:
                    raise CorruptDataError(
                        f'Error reading chunk {cid} in minishard {m} of "{key}": Error reading '
                        f"minishard index: Requested byte range [{a}, {b}) is not valid for "
                        f"value of size {_size_seen(a, blob)}"
                    )
                try:
                    mids, starts, ends = sh.decode_minishard_index(
                        blob, self.spec, key, m, self.max_minishard_entries
                    )
                except CorruptDataError as e:
                    raise CorruptDataError(f"Error reading chunk {cid}: {e}") from None
                table: dict[int, tuple[int, int]] = {}
                for i, x, y in zip(mids.tolist(), starts.tolist(), ends.tolist(), strict=True):
                    table.setdefault(i, (x, y))  # a duplicated id: the first entry wins
                found[(s, m)] = (entries[(s, m)][0], table)
        with self._lock:
            self._minishards.update(found)
        return found

    # -- writing --------------------------------------------------------------------------
    def commit(
        self,
        updates: Mapping[int, bytes | None],
        *,
        prefixes: Mapping[int, bytes] | None = None,
        prefix_size: Callable[[int, bytes], int] | None = None,
    ) -> CommitStats:
        """Store ``{id: bytes or None (delete)}``: grouped by shard, each shard rewritten
        once (:meth:`commit_shard`), up to :attr:`COMMIT_CONCURRENCY` shards at a time.
        ``prefixes`` and ``prefix_size``: see :meth:`commit_shard`."""
        ids = list(updates)
        shards = self.place(ids).shards.tolist() if ids else []
        by_shard: dict[int, dict[int, bytes | None]] = {}
        for cid, shard in zip(ids, shards, strict=True):
            by_shard.setdefault(int(shard), {})[int(cid)] = updates[cid]

        def one(item: tuple[int, dict[int, bytes | None]]) -> CommitStats:
            return self.commit_shard(*item, prefixes=prefixes, prefix_size=prefix_size)

        items = sorted(by_shard.items())
        if len(items) <= 1:
            results = [one(item) for item in items]
        else:
            with ThreadPoolExecutor(min(self.COMMIT_CONCURRENCY, len(items))) as pool:
                results = list(pool.map(one, items))
        total = CommitStats()
        for got in results:
            total.add(got)
        return total

    def commit_shard(
        self,
        shard: int,
        updates: Mapping[int, bytes | None],
        *,
        full: bool = False,
        prefixes: Mapping[int, bytes] | None = None,
        prefix_size: Callable[[int, bytes], int] | None = None,
    ) -> CommitStats:
        """Rewrite one shard with ``updates`` (id -> bytes, or None to delete) merged in,
        exactly once.

        Reads the shard (unless ``full``: the updates supply every chunk of it), merges,
        encodes in TensorStore's order and writes conditionally on the generation that was
        read; if another writer changed the shard in between, re-reads and merges again
        (:meth:`commit_shard_with` with updates that need no stored value). A shard that
        cannot be parsed is never overwritten (:class:`CorruptDataError`).

        ``prefixes`` (``{id: bytes}``) are stored, never encoded, just before the new values
        of those ids, outside their indexed ranges. Entries kept from the stored shard keep
        their prefix only when ``prefix_size(id, value)`` tells its size (default: none,
        so only the indexed bytes survive).
        """
        # Apply the shard data encoding once, outside the retry loop.
        new = {
            int(cid): None if data is None else sh.encode_chunk_data(data, self.spec)
            for cid, data in updates.items()
        }
        return self._commit_shard(
            shard, (), lambda _stored: new, full=full, encoded=True,
            prefixes=prefixes, prefix_size=prefix_size,
        )  # fmt: skip

    def commit_shard_with(
        self,
        shard: int,
        ids: Sequence[int],
        rebuild: Callable[[Mapping[int, bytes | None]], Mapping[int, bytes | None]],
    ) -> CommitStats:
        """Conditional read-modify-write of one shard: ``rebuild({id: stored value or
        None})`` (values of ``ids`` as stored, shard data encoding removed) returns the
        updates (id -> value, ``None``: delete); the shard is written only if it still has
        the generation those values were read from, else re-read and ``rebuild`` called
        again (up to :data:`MAX_COMMIT_RETRIES` attempts, then
        :class:`ConditionFailedError` naming the shard). With no ``ids``, ``rebuild`` is
        called once."""
        return self._commit_shard(shard, [int(i) for i in ids], rebuild)

    def _commit_shard(
        self,
        shard: int,
        want: Sequence[int],
        rebuild: Callable[[Mapping[int, bytes | None]], Mapping[int, bytes | None]],
        *,
        full: bool = False,
        encoded: bool = False,
        prefixes: Mapping[int, bytes] | None = None,
        prefix_size: Callable[[int, bytes], int] | None = None,
    ) -> CommitStats:
        """The one conditional read-modify-write of a shard (see :meth:`commit_shard_with`);
        ``encoded``: ``rebuild`` returns values already in the shard data encoding;
        ``full``: its updates replace every chunk (nothing read, written unconditionally)."""
        key = self.shard_key(shard)
        stats = CommitStats(keys=[key])
        fixed: dict[int, bytes | None] | None = None
        if not want:  # the updates need no stored value: compute (and encode) them once
            fixed = self._encoded(rebuild({}), encoded)
        new: dict[int, bytes | None] = {} if fixed is None else fixed
        while True:
            kept: dict[int, bytes | memoryview] = {}
            if full:
                assert fixed is not None
                new, merged, generation = fixed, {}, None
            else:
                blob, generation = self.kvstore.read_with_generation(key)
                # Keep stored chunks in their data encoding (zero-copy views into the old
                # shard): no gunzip/gzip round trip, and only the old + the new shard in
                # memory.
                try:
                    entries = (
                        {}
                        if not blob
                        else sh.shard_entries(
                            blob, self.spec, key, max_entries=self.max_minishard_entries
                        )
                    )
                    view = memoryview(blob) if blob else memoryview(b"")
                    if fixed is not None:
                        new = fixed
                    else:
                        stored = {
                            cid: None
                            if cid not in entries
                            else self.decode_value(cid, Location(key, *entries[cid]), view[slice(*entries[cid])])
                            for cid in want
                        }  # fmt: skip
                        new = self._encoded(rebuild(stored), encoded)
                    merged = self._stored(view, key, entries, new, prefix_size, kept)
                except CorruptDataError as e:
                    if want:
                        # A read-modify-write fails as a read of its chunks would, naming
                        # the chunk whose stored bytes are bad.
                        self.invalidate([shard])
                        self.read_many(want)
                    raise CorruptDataError(
                        f'Cannot write {_ids_text(list(new) or want)} to shard "{key}" (nothing was '
                        f"written): the existing shard is corrupt: {e}"
                    ) from None
                del blob, view
            for cid, data in new.items():
                if data is None:
                    merged.pop(cid, None)
                else:
                    merged[cid] = data
            if prefixes:
                kept.update(
                    {
                        cid: prefixes[cid]
                        for cid, d in new.items()
                        if d is not None and prefixes.get(cid)
                    }
                )
            data_out = (
                sh.encode_shard(merged, self.spec, data_encoded=True, prefixes=kept or None)
                if merged
                else None
            )
            del merged, kept
            gen: Generation | None
            if generation is None:
                if data_out is None:
                    self.kvstore.delete(key)
                    gen = NO_VALUE
                else:
                    gen = self.kvstore.write(key, data_out) or NO_VALUE
            elif data_out is None and generation == NO_VALUE:
                gen = NO_VALUE  # nothing stored before, nothing to store now
            else:
                gen = self.kvstore.write_conditional(key, data_out, generation)
            if gen is not None:
                break
            # Another writer changed the shard since we read it: read and merge again.
            data_out = None
            stats.retries += 1
            if stats.retries >= self.MAX_COMMIT_RETRIES:
                raise ConditionFailedError(
                    f'Error writing shard "{key}": it changed concurrently on each of '
                    f"{stats.retries} attempts; giving up (the edits are not stored)"
                )
            pause(stats.retries, base=0.001, doublings=8)
        self.invalidate([shard])
        stats.generations[key] = gen
        if data_out is None:
            stats.groups_deleted += 1
        else:
            stats.groups_written += 1
        stats.chunks_written = sum(1 for v in new.values() if v is not None)
        stats.chunks_deleted = len(new) - stats.chunks_written
        return stats

    def _encoded(
        self, updates: Mapping[int, bytes | None], encoded: bool
    ) -> dict[int, bytes | None]:
        """``updates`` with int ids, in the shard data encoding."""
        if encoded:
            return {int(cid): data for cid, data in updates.items()}
        return {
            int(cid): None if data is None else sh.encode_chunk_data(data, self.spec)
            for cid, data in updates.items()
        }

    def _stored(
        self,
        view: memoryview,
        key: str,
        entries: Mapping[int, tuple[int, int]],
        replaced: Mapping[int, object],
        prefix_size: Callable[[int, bytes], int] | None,
        prefixes: dict[int, bytes | memoryview],
    ) -> dict[int, bytes | memoryview]:
        """The ``entries`` of a stored shard (validated as TensorStore's write path does) as
        views into its bytes ``view``; with ``prefix_size``, the unindexed prefixes of the
        entries not ``replaced`` are added to ``prefixes`` (views too)."""
        if prefix_size is not None:
            for cid, (a, b) in entries.items():
                if cid in replaced:
                    continue
                n = prefix_size(cid, self.decode_value(cid, Location(key, a, b), view[a:b]))
                if not 0 <= n <= a - self.index_size:
                    raise CorruptDataError(
                        f'Error reading id {cid} in "{key}": its {n} bytes of prefix do not '
                        f"fit before byte {a}"
                    )
                if n:
                    prefixes[cid] = view[a - n : a]
        return {cid: view[a:b] for cid, (a, b) in entries.items()}


class ShardedChunkStore(ChunkStore):
    """A sharded scale's chunks: grid positions are compressed Morton ids in a
    :class:`ShardedIdStore` (``ids``); write groups are shard numbers."""

    streamed_reads = True

    def __init__(
        self,
        kvstore: KvStore,
        prefix: str,
        grid: ChunkGrid,
        spec: sh.ShardingSpec,
        max_chunk_bytes: int = DEFAULT_LIMIT,
    ) -> None:
        super().__init__(kvstore, prefix, grid)
        self.spec = spec
        self.bits = sh.morton_bits(grid.size, grid.chunk)
        self.rectangular_groups = sh.is_rectangular(spec, self.bits)
        # A minishard holds at most the chunks that can map to it: its box of the grid
        # for rectangular shards, else (hashed) the whole grid.
        cell = sh.minishard_shape_in_chunks(spec, self.bits, grid.shape)
        most = math.prod(cell) if cell is not None else grid.num_chunks
        self.ids = ShardedIdStore(
            kvstore,
            prefix,
            spec,
            max_value_bytes=max_chunk_bytes,
            max_minishard_entries=max(1, min(most, sh.MAX_MINISHARD_ENTRIES)),
        )

    # -- placement ----------------------------------------------------------------------
    def chunk_ids(self, positions: Sequence[Vec3] | np.ndarray) -> np.ndarray:
        arr = np.asarray(positions, dtype=np.int64).reshape(-1, 3)
        return sh.compressed_morton_codes(arr, self.bits)

    def placement(self, positions: Sequence[Vec3]) -> Placement:
        """Chunk ids, shard numbers and minishard numbers of ``positions``."""
        if len(positions) <= 8:  # a few chunks: integer arithmetic beats numpy's set-up
            got = [sh.placement_of(p, self.bits, self.spec) for p in positions]
            cols = list(zip(*got, strict=True)) or [(), (), ()]
            return Placement(*(np.array(c, np.uint64) for c in cols))
        ids = self.chunk_ids(positions)
        shards, minishards = sh.shard_and_minishard(ids, self.spec)  # hashes internally
        return Placement(ids, shards, minishards)

    def shard_key(self, shard: int) -> str:
        return self.ids.shard_key(shard)

    def key(self, pos: Vec3) -> str:
        return self.shard_key(int(self.placement([pos]).shards[0]))

    def describe(self, pos: Vec3) -> str:
        ids, shards, minis = self.placement([pos])
        return (
            f"{self.shard_key(int(shards[0]))}, minishard {int(minis[0])}, chunk id {int(ids[0])}"
        )

    def group_of(self, pos: Vec3) -> Hashable:
        return int(self.placement([pos]).shards[0])

    def groups_of(self, positions: Sequence[Vec3]) -> list[Hashable]:
        return [int(s) for s in self.placement(positions).shards]

    def group_key(self, group: Hashable) -> str:
        return self.shard_key(shard_number(group))

    def group_size(self, group: Hashable) -> int:
        if not self.rectangular_groups:
            return -1  # unknown: whole-shard writes cannot be detected
        return sh.chunks_in_shard(self.spec, self.bits, self.grid.shape, shard_number(group))

    def invalidate(self, groups: Sequence[Hashable] | None = None) -> None:
        self.ids.invalidate(None if groups is None else [shard_number(g) for g in groups])

    # -- reading --------------------------------------------------------------------------
    def read_chunks(
        self, positions: Sequence[Vec3], *, deferred: bool = False
    ) -> list[bytes | None]:
        if not len(positions):
            return []
        p = self.placement(positions)
        return self.ids.read_placed(p, whole=self._whole_shards(p.shards), deferred=deferred)

    def read_chunks_each(
        self, positions: Sequence[Vec3], deliver: DeliverChunk, *, versioned: bool = False
    ) -> None:
        if not len(positions):
            return
        p = self.placement(positions)
        # As read_chunks and read_versioned: whole shards in one request each, except
        # for versioned reads (which go through the revalidated indices).
        whole = () if versioned else self._whole_shards(p.shards)
        self.ids.read_placed_each(p, deliver, whole=whole, versioned=versioned)

    def read_versioned(self, positions: Sequence[Vec3]) -> list[Versioned]:
        if not len(positions):
            return []
        got = self.ids.read_versioned(self.chunk_ids(list(positions)))
        return [Versioned(data, gen) for data, gen in got]

    def finish(self, pos: Vec3, blob: bytes) -> bytes:
        """Remove the shard data encoding from a deferred read."""
        return self.ids.finish(blob, lambda: int(self.chunk_ids([pos])[0]))

    def _whole_shards(self, shards: np.ndarray) -> set[int]:
        """Shards whose every chunk is requested: read each in a single request."""
        if not self.rectangular_groups:
            return set()
        values, counts = np.unique(shards, return_counts=True)
        return {
            int(s)
            for s, c in zip(values, counts, strict=True)
            if c == sh.chunks_in_shard(self.spec, self.bits, self.grid.shape, int(s))
        }

    # -- writing --------------------------------------------------------------------------
    def commit_group(self, group: Hashable, updates: Mapping[Vec3, bytes | None]) -> CommitStats:
        """Rewrite one shard with ``updates`` merged in, exactly once (see
        :meth:`ShardedIdStore.commit_shard`); a write of every chunk of a rectangular
        shard does not read it first."""
        shard = shard_number(group)
        ids = [int(i) for i in self.chunk_ids(list(updates))] if updates else []
        full = self.rectangular_groups and len(ids) == self.group_size(shard)
        return self.ids.commit_shard(
            shard, dict(zip(ids, updates.values(), strict=True)), full=full
        )

    def commit_group_with(
        self, group: Hashable, positions: Sequence[Vec3], rebuild: Rebuild
    ) -> CommitStats:
        shard = shard_number(group)
        if not positions:
            return self.commit_group(group, rebuild({}))
        want = [int(i) for i in self.chunk_ids(list(positions))]
        pos_of: dict[int, Vec3] = dict(zip(want, positions, strict=True))

        def rebuild_ids(stored: Mapping[int, bytes | None]) -> dict[int, bytes | None]:
            updates = rebuild({pos_of[cid]: blob for cid, blob in stored.items()})
            if not updates:
                return {}
            ids = self.chunk_ids(list(updates)).tolist()
            return {int(cid): blob for cid, blob in zip(ids, updates.values(), strict=True)}

        return self.ids.commit_shard_with(shard, want, rebuild_ids)

"""Values keyed by uint64 id in ``neuroglancer_uint64_sharded_v1`` shard files.

The volume's :class:`~precomputed.storage.ShardedChunkStore` addresses chunks by grid
position; meshes, skeletons and other per-segment data address them by segment id (the id
*is* the sharding key, hashed per the spec). :class:`ShardedIdStore` is that keyed store,
built only on the pure functions of :mod:`precomputed.sharding` and a :class:`KvStore`:

- :meth:`ShardedIdStore.locate_many` — where each id's value lies (shard key and absolute
  byte range), with the shard index and minishard index look-ups of all ids batched into
  one concurrent :meth:`KvStore.read_ranges` call per step and minishard indices cached;
- :meth:`ShardedIdStore.read_many` — the values themselves (one more batched step);
- :meth:`ShardedIdStore.write` — put or delete values, grouping them by shard and
  rewriting each shard exactly once (conditionally on the generation read, retried when
  another writer got there first), laid out by :func:`sharding.encode_shard`.

Values may carry *unindexed prefixes*: bytes stored immediately before the value and
outside its indexed range, as the sharded multi-resolution mesh format stores a
segment's fragment data in front of its manifest. :meth:`write` keeps the prefixes of
entries it does not replace when told their size (``prefix_size``).

Cold reads cost two round trips before the data (the shard index, read whole when it is
at most :attr:`ShardedIdStore.INDEX_SPAN_BYTES`, then the minishard indices); warm reads
of ids in cached minishards cost none.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from cachetools import LRUCache

from . import sharding as sh
from .errors import ConditionFailedError, CorruptDataError, InvalidArgumentError
from .kvstore import NO_VALUE, KvStore

__all__ = ["Location", "ShardedIdStore", "IdWriteStats"]

_U64_MAX = (1 << 64) - 1


@dataclass(frozen=True)
class Location:
    """Where a stored value lies: shard file ``key`` and absolute bytes ``[start, stop)``
    (still in the shard ``data_encoding``)."""

    key: str
    start: int
    stop: int


@dataclass
class IdWriteStats:
    """What :meth:`ShardedIdStore.write` did."""

    shards_written: int = 0
    shards_deleted: int = 0
    values_written: int = 0
    values_deleted: int = 0
    retries: int = 0


def _join(prefix: str, name: str) -> str:
    if not prefix:
        return name
    return prefix + name if prefix.endswith("/") else f"{prefix}/{name}"


def _ids_array(ids: Sequence[int] | np.ndarray) -> np.ndarray:
    try:
        arr = np.asarray(ids, dtype=np.uint64).reshape(-1)
    except (OverflowError, ValueError, TypeError) as e:
        raise InvalidArgumentError(f"ids must be integers in [0, 2**64): {e}") from None
    if isinstance(ids, np.ndarray):
        if ids.dtype.kind == "i" and ids.size and int(ids.min()) < 0:
            raise InvalidArgumentError(f"ids must be integers in [0, 2**64), got {ids.min()}")
        return arr
    bad = [i for i in ids if not (0 <= int(i) <= _U64_MAX)]
    if bad:
        raise InvalidArgumentError(f"ids must be integers in [0, 2**64), got {bad[0]}")
    return arr


class ShardedIdStore:
    """uint64-keyed values in the shard files under ``prefix`` of ``kvstore``.

    Thread-safe: caches are guarded by a lock; concurrent readers of the same cold
    minishard may both fetch its index (harmless).
    """

    #: Minishard indices (and shard index entries) kept in memory.
    INDEX_CACHE_ENTRIES = 16384
    #: A shard index at most this large is read whole on first use (later look-ups in
    #: other minishards of the shard then skip a round trip); larger: one entry each.
    INDEX_SPAN_BYTES = 64 * 1024
    #: Rewrites of a shard that keeps changing under us before giving up.
    MAX_WRITE_RETRIES = 64
    #: Shards rewritten at once by :meth:`write`.
    WRITE_CONCURRENCY = 8

    def __init__(self, kvstore: KvStore, prefix: str, spec: sh.ShardingSpec) -> None:
        self.kvstore = kvstore
        self.prefix = prefix
        self.spec = spec
        self._lock = threading.Lock()
        # (shard, minishard) -> absolute (start, stop) of its minishard index, or None
        self._entries: LRUCache[tuple[int, int], tuple[int, int] | None] = LRUCache(
            self.INDEX_CACHE_ENTRIES
        )
        # (shard, minishard) -> {id: absolute (start, stop)}
        self._tables: LRUCache[tuple[int, int], dict[int, tuple[int, int]]] = LRUCache(
            self.INDEX_CACHE_ENTRIES
        )

    def __repr__(self) -> str:
        return f"ShardedIdStore({self.kvstore.url + self.prefix!r})"

    # -- placement ------------------------------------------------------------------------
    def shard_key(self, shard: int) -> str:
        """Storage key of shard number ``shard``."""
        return _join(self.prefix, sh.shard_filename(int(shard), self.spec))

    def placement(self, ids: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(shard, minishard)`` uint64 arrays of ``ids``."""
        return sh.shard_and_minishard(_ids_array(ids), self.spec)

    def invalidate(self, shards: Sequence[int] | None = None) -> None:
        """Forget cached indices (of ``shards``, or all) after another writer's change."""
        with self._lock:
            if shards is None:
                self._entries.clear()
                self._tables.clear()
                return
            drop = {int(s) for s in shards}
            for cache in (self._entries, self._tables):
                for k in [k for k in cache if k[0] in drop]:
                    del cache[k]

    # -- reading --------------------------------------------------------------------------
    def locate_many(self, ids: Sequence[int] | np.ndarray) -> list[Location | None]:
        """Location of each id's stored value, ``None`` where the id is absent."""
        arr = _ids_array(ids)
        if not arr.size:
            return []
        shards, minis = self.placement(arr)
        pairs = list(zip(shards.tolist(), minis.tolist(), strict=True))
        tables = self._minishard_tables(set(pairs))
        out: list[Location | None] = []
        for i, (s, m) in zip(arr.tolist(), pairs, strict=True):
            rng = tables[(s, m)].get(i)
            out.append(None if rng is None else Location(self.shard_key(s), *rng))
        return out

    def read_many(self, ids: Sequence[int] | np.ndarray) -> list[bytes | None]:
        """Each id's value (shard data encoding removed), ``None`` where absent."""
        arr = _ids_array(ids)
        locs = self.locate_many(arr)
        todo = [i for i, loc in enumerate(locs) if loc is not None]
        out: list[bytes | None] = [None] * len(locs)
        if not todo:
            return out
        blobs = self.kvstore.read_ranges(
            [(locs[i].key, locs[i].start, locs[i].stop) for i in todo]  # type: ignore[union-attr]
        )
        for i, blob in zip(todo, blobs, strict=True):
            loc = locs[i]
            assert loc is not None
            self.check_read(int(arr[i]), loc, blob)
            out[i] = self.decode_value(int(arr[i]), loc, blob)  # type: ignore[arg-type]
        return out

    def check_read(self, id_: int, loc: Location, blob: bytes | None) -> None:
        """Raise :class:`CorruptDataError` unless ``blob`` is all of ``loc``'s bytes."""
        n = loc.stop - loc.start
        if blob is None or len(blob) != n:
            seen = "0 (the shard file is missing)" if blob is None else loc.start + len(blob)
            raise CorruptDataError(
                f'Error reading id {id_} in "{loc.key}": Requested byte range '
                f"[{loc.start}, {loc.stop}) is not valid for value of size {seen}"
            )

    def decode_value(self, id_: int, loc: Location, blob: bytes) -> bytes:
        """Remove the shard ``data_encoding`` from a value read at ``loc``."""
        return sh.decode_chunk_data(blob, self.spec, f'id {id_} in "{loc.key}"')

    def _minishard_tables(
        self, pairs: set[tuple[int, int]]
    ) -> dict[tuple[int, int], dict[int, tuple[int, int]]]:
        with self._lock:
            tables = {k: self._tables[k] for k in pairs if k in self._tables}
            entries = {k: self._entries[k] for k in pairs if k in self._entries}
        todo = [k for k in pairs if k not in tables]
        if not todo:
            return tables
        entries.update(self._load_entries([k for k in todo if k not in entries]))
        tables.update(self._load_tables(todo, entries))
        return tables

    def _load_entries(
        self, pairs: list[tuple[int, int]]
    ) -> dict[tuple[int, int], tuple[int, int] | None]:
        """Shard index entries of ``pairs``: one request per shard when its index is
        small (the whole index, every entry cached), else one per entry."""
        found: dict[tuple[int, int], tuple[int, int] | None] = {}
        if not pairs:
            return found
        n = self.spec.num_minishards
        whole = 16 * n <= self.INDEX_SPAN_BYTES
        by_shard: dict[int, list[int]] = {}
        for s, m in sorted(pairs):
            by_shard.setdefault(s, []).append(m)
        requests: list[tuple[str, int, int]] = []
        plan: list[tuple[int, int, list[int]]] = []  # shard, first entry read, entries wanted
        for s, ms in by_shard.items():
            key = self.shard_key(s)
            if whole:
                requests.append((key, 0, 16 * n))
                plan.append((s, 0, ms))
            else:
                for m in ms:
                    requests.append((key, 16 * m, 16 * m + 16))
                    plan.append((s, m, [m]))
        blobs = self.kvstore.read_ranges(requests)
        spare: dict[tuple[int, int], tuple[int, int] | None] = {}
        for (s, lo, ms), (key, _, _), blob in zip(plan, requests, blobs, strict=True):
            if blob is None or (blob == b"" and lo == 0):  # no shard (or empty): no ids
                found.update({(s, m): None for m in ms})
                continue
            for m in ms:
                entry = blob[16 * (m - lo) : 16 * (m - lo) + 16]
                found[(s, m)] = sh.decode_shard_index_entry(entry, m, self.spec, key)
            if whole and len(blob) == 16 * n:
                for m in set(range(n)) - set(ms):
                    try:
                        spare[(s, m)] = sh.decode_shard_index_entry(
                            blob[16 * m : 16 * m + 16], m, self.spec, key
                        )
                    except CorruptDataError:
                        pass  # raised when (if) an id of that minishard is read
        with self._lock:
            self._entries.update(spare)
            self._entries.update(found)
        return found

    def _load_tables(
        self,
        pairs: list[tuple[int, int]],
        entries: Mapping[tuple[int, int], tuple[int, int] | None],
    ) -> dict[tuple[int, int], dict[int, tuple[int, int]]]:
        found: dict[tuple[int, int], dict[int, tuple[int, int]]] = {
            k: {} for k in pairs if entries[k] is None
        }
        todo = [k for k in pairs if k not in found]
        if todo:
            requests = [(self.shard_key(s), *entries[(s, m)]) for s, m in todo]  # type: ignore[misc]
            blobs = self.kvstore.read_ranges(requests)
            for (s, m), (key, a, b), blob in zip(todo, requests, blobs, strict=True):
                if blob is None or len(blob) != b - a:
                    seen = "<missing>" if blob is None else a + len(blob)
                    raise CorruptDataError(
                        f'Error reading minishard index for minishard {m} of "{key}": '
                        f"Requested byte range [{a}, {b}) is not valid for value of size {seen}"
                    )
                ids, starts, ends = sh.decode_minishard_index(blob, self.spec, key, m)
                table: dict[int, tuple[int, int]] = {}
                for i, x, y in zip(ids.tolist(), starts.tolist(), ends.tolist(), strict=True):
                    table.setdefault(i, (x, y))  # a repeated id: the first entry wins
                found[(s, m)] = table
        with self._lock:
            self._tables.update(found)
        return found

    # -- writing --------------------------------------------------------------------------
    def write(
        self,
        values: Mapping[int, bytes | None],
        *,
        prefixes: Mapping[int, bytes] | None = None,
        prefix_size: Callable[[int, bytes], int] | None = None,
    ) -> IdWriteStats:
        """Store ``values`` (``None`` deletes an id), rewriting each shard touched once.

        ``prefixes`` gives unindexed bytes to store in front of new values. Entries of a
        rewritten shard that are not in ``values`` are kept; ``prefix_size(id, value)``
        tells how many bytes in front of such an entry belong to it (default: none, so
        only the indexed bytes survive). A shard that cannot be parsed is never
        overwritten (:class:`CorruptDataError`).
        """
        if not values:
            return IdWriteStats()
        arr = _ids_array(list(values))
        shards, _ = self.placement(arr)
        groups: dict[int, list[int]] = {}
        for i, s in zip(arr.tolist(), shards.tolist(), strict=True):
            groups.setdefault(s, []).append(i)
        stats = IdWriteStats()
        lock = threading.Lock()

        def one(item: tuple[int, list[int]]) -> None:
            s, ids = item
            got = self._rewrite_shard(s, {i: values[i] for i in ids}, prefixes or {}, prefix_size)
            with lock:
                for name in vars(stats):
                    setattr(stats, name, getattr(stats, name) + getattr(got, name))

        items = sorted(groups.items())
        if len(items) == 1:
            one(items[0])
        else:
            with ThreadPoolExecutor(min(self.WRITE_CONCURRENCY, len(items))) as pool:
                list(pool.map(one, items))
        return stats

    def _existing(self, blob: bytes, key: str) -> dict[int, tuple[int, int]]:
        """``{id: absolute (start, stop)}`` of every entry of a stored shard."""
        size = self.spec.shard_index_size
        if len(blob) < size:
            raise CorruptDataError(
                f'Error reading shard "{key}": Existing shard has size {len(blob)}, '
                f"but expected at least: {size}"
            )
        ranges = sh.decode_shard_index(blob[:size], self.spec, key)
        out: dict[int, tuple[int, int]] = {}
        for m in np.flatnonzero(ranges[:, 0] != ranges[:, 1]).tolist():
            a, b = int(ranges[m, 0]) + size, int(ranges[m, 1]) + size
            sh.check_byte_range(a, b, len(blob), f'Error reading minishard {m} of "{key}"')
            ids, starts, ends = sh.decode_minishard_index(blob[a:b], self.spec, key, m)
            for i, x, y in zip(ids.tolist(), starts.tolist(), ends.tolist(), strict=True):
                sh.check_byte_range(x, y, len(blob), f'Error reading id {i} in "{key}"')
                out.setdefault(i, (x, y))
        return out

    def _rewrite_shard(
        self,
        shard: int,
        updates: Mapping[int, bytes | None],
        prefixes: Mapping[int, bytes],
        prefix_size: Callable[[int, bytes], int] | None,
    ) -> IdWriteStats:
        key = self.shard_key(shard)
        fresh = {
            i: None if v is None else sh.encode_chunk_data(v, self.spec) for i, v in updates.items()
        }
        stats = IdWriteStats()
        while True:
            blob, generation = self.kvstore.read_with_generation(key)
            merged: dict[int, bytes | memoryview] = {}
            kept_prefixes: dict[int, bytes | memoryview] = {}
            if blob:
                view = memoryview(blob)
                try:
                    existing = self._existing(blob, key)
                except CorruptDataError as e:
                    raise CorruptDataError(
                        f'Cannot write {len(updates)} id(s) to shard "{key}" (nothing was '
                        f"written): the existing shard is corrupt: {e}"
                    ) from None
                for i, (a, b) in existing.items():
                    if i in fresh:
                        continue
                    merged[i] = view[a:b]
                    if prefix_size is not None:
                        n = prefix_size(i, self.decode_value(i, Location(key, a, b), blob[a:b]))
                        if not 0 <= n <= a - self.spec.shard_index_size:
                            raise CorruptDataError(
                                f'Error reading id {i} in "{key}": its {n} bytes of prefix '
                                f"do not fit before byte {a}"
                            )
                        if n:
                            kept_prefixes[i] = view[a - n : a]
            for i, v in fresh.items():
                if v is not None:
                    merged[i] = v
                    if prefixes.get(i):
                        kept_prefixes[i] = prefixes[i]
            encoded = (
                sh.encode_shard(merged, self.spec, data_encoded=True, prefixes=kept_prefixes)
                if merged
                else None
            )
            del merged, kept_prefixes
            if encoded is None and generation == NO_VALUE:
                ok = True
            else:
                ok = self.kvstore.write_if(key, encoded, generation)
            if ok:
                break
            stats.retries += 1
            if stats.retries >= self.MAX_WRITE_RETRIES:
                raise ConditionFailedError(
                    f'Error writing shard "{key}": it changed concurrently on each of '
                    f"{stats.retries} attempts; giving up (nothing was written)"
                )
            time.sleep(random.uniform(0, min(0.2, 0.001 * (1 << min(stats.retries, 8)))))
        self.invalidate([shard])
        if encoded is None:
            stats.shards_deleted += 1 if generation != NO_VALUE else 0
        else:
            stats.shards_written += 1
        stats.values_written = sum(1 for v in fresh.values() if v is not None)
        stats.values_deleted = len(fresh) - stats.values_written
        return stats

"""Chunk stores: turn chunk grid positions into stored bytes and back.

Two implementations behind one interface: :class:`UnshardedChunkStore` (one key per
chunk) and :class:`ShardedChunkStore` (chunks packed into shard files). Both deal in
*encoded* chunk bytes (the volume encoding: raw, jpeg, ...); decoding lives in codecs.

Writes are organised in *groups*: the unit that is rewritten at once (a chunk key for
unsharded scales, a shard file for sharded ones). ``commit_group`` rewrites one group
exactly once; the transaction layer decides which groups to commit and how many at a time.
"""

from __future__ import annotations

import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from cachetools import LRUCache

from . import sharding as sh
from .codecs import gzip_decompress
from .errors import ConditionFailedError, CorruptDataError
from .internal.geometry import ChunkGrid, Vec3
from .kvstore import NO_VALUE, KvStore

__all__ = [
    "ChunkStore",
    "UnshardedChunkStore",
    "ShardedChunkStore",
    "CommitStats",
    "join_key",
]

_GZIP_MAGIC = b"\x1f\x8b"


def join_key(prefix: str, name: str) -> str:
    """Join a scale prefix and a name, adding ``/`` only where needed."""
    if not prefix:
        return name
    return prefix + name if prefix.endswith("/") else f"{prefix}/{name}"


@dataclass
class CommitStats:
    """What a commit did, for progress reports and tests."""

    groups_written: int = 0
    groups_deleted: int = 0
    chunks_written: int = 0
    chunks_deleted: int = 0
    retries: int = 0
    keys: list[str] = field(default_factory=list)

    def add(self, other: CommitStats) -> None:
        self.groups_written += other.groups_written
        self.groups_deleted += other.groups_deleted
        self.chunks_written += other.chunks_written
        self.chunks_deleted += other.chunks_deleted
        self.retries += other.retries
        self.keys.extend(other.keys)


#: Chunk keys (and local paths) remembered per store, a few MiB at most.
_KEY_MEMO = 1 << 16


class ChunkStore(ABC):
    """Maps chunk grid positions of one scale to encoded bytes in a kvstore."""

    def __init__(self, kvstore: KvStore, prefix: str, grid: ChunkGrid) -> None:
        self.kvstore = kvstore
        self.prefix = prefix
        self.grid = grid

    @abstractmethod
    def describe(self, pos: Vec3) -> str:
        """Human-readable location of a chunk, for error messages."""

    @abstractmethod
    def read_chunks(
        self, positions: Sequence[Vec3], *, deferred: bool = False
    ) -> list[bytes | None]:
        """Encoded bytes of each chunk (``None`` if missing), fetched concurrently.

        With ``deferred`` a store may return bytes that still need :meth:`finish` (e.g.
        gzip shard data), so callers can spread that work over their decode threads.
        """

    def finish(self, pos: Vec3, blob: bytes) -> bytes:
        """Complete a ``read_chunks(..., deferred=True)`` result (identity by default)."""
        return blob

    @abstractmethod
    def group_of(self, pos: Vec3) -> Hashable:
        """The write group (chunk or shard) that holds ``pos``."""

    @abstractmethod
    def group_size(self, group: Hashable) -> int:
        """Number of chunks that exist in ``group`` (for whole-group writes)."""

    @abstractmethod
    def commit_group(self, group: Hashable, updates: Mapping[Vec3, bytes | None]) -> CommitStats:
        """Apply ``updates`` (``None`` deletes) to one group, rewriting it exactly once."""

    def group_key(self, group: Hashable) -> str:
        """Storage key of a group."""
        return self.describe(group)  # type: ignore[arg-type]

    def invalidate(self, groups: Sequence[Hashable] | None = None) -> None:
        """Forget cached index data (after another writer may have changed storage)."""
        return None


class UnshardedChunkStore(ChunkStore):
    """One key per chunk: ``<prefix>/<x0>-<x1>_<y0>-<y1>_<z0>-<z1>``.

    Chunks written by CloudVolume with gzip are read too: gzip bytes under the plain key,
    or (on local and memory stores, where a miss is cheap) a ``.gz`` sibling key.
    """

    def __init__(self, kvstore: KvStore, prefix: str, grid: ChunkGrid) -> None:
        super().__init__(kvstore, prefix, grid)
        self._try_gz_suffix = kvstore.url.startswith(("file://", "memory://"))
        self._keys: dict[Vec3, str] = {}

    def key(self, pos: Vec3) -> str:
        # Remembered: plane reads ask for the same few hundred keys again and again.
        key = self._keys.get(pos)
        if key is None:
            if len(self._keys) >= _KEY_MEMO:
                self._keys.clear()
            key = self._keys[pos] = join_key(self.prefix, self.grid.chunk_name(pos))
        return key

    def describe(self, pos: Vec3) -> str:
        return self.key(pos)

    def read_chunks(
        self, positions: Sequence[Vec3], *, deferred: bool = False
    ) -> list[bytes | None]:
        keys = [self.key(p) for p in positions]
        out = self.kvstore.read_many(keys)
        if self._try_gz_suffix:
            missing = [i for i, v in enumerate(out) if v is None]
            if missing:
                found = self.kvstore.read_many([keys[i] + ".gz" for i in missing])
                for i, v in zip(missing, found, strict=True):
                    out[i] = v
        return [
            None if v is None else self._maybe_gunzip(v, k) for v, k in zip(out, keys, strict=True)
        ]

    @staticmethod
    def _maybe_gunzip(data: bytes, key: str) -> bytes:
        if data[:2] == _GZIP_MAGIC:
            try:
                return gzip_decompress(data, key)
            except CorruptDataError:
                return data  # a raw chunk that happens to start with 1f 8b
        return data

    def group_of(self, pos: Vec3) -> Hashable:
        return tuple(pos)

    def group_size(self, group: Hashable) -> int:
        return 1

    def group_key(self, group: Hashable) -> str:
        return self.key(group)  # type: ignore[arg-type]

    def commit_group(self, group: Hashable, updates: Mapping[Vec3, bytes | None]) -> CommitStats:
        stats = CommitStats()
        for pos, data in updates.items():
            key = self.key(pos)
            if data is None:
                self.kvstore.delete(key)
                if self._try_gz_suffix:
                    self.kvstore.delete(key + ".gz")
                stats.chunks_deleted += 1
                stats.groups_deleted += 1
            else:
                self.kvstore.write(key, data)
                stats.chunks_written += 1
                stats.groups_written += 1
            stats.keys.append(key)
        return stats


def _ids_text(ids: Iterable[int], limit: int = 8) -> str:
    """``chunks [1, 2, 3]`` (at most ``limit`` ids shown), for error messages."""
    ids = sorted(ids)
    more = f", ... ({len(ids)} in all)" if len(ids) > limit else ""
    return f"chunk{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids[:limit]))}{more}"


def _shard_number(group: Hashable) -> int:
    """A sharded store's group: the shard number that ``group_of`` returned."""
    if isinstance(group, (int, np.integer)):
        return int(group)
    raise TypeError(f"not a shard number: {group!r}")


def _size_seen(start: int, blob: bytes | None) -> str:
    """What a short ranged read tells about an object's size, for error messages."""
    if blob is None:
        return "0 (the shard file is missing)"
    return str(start + len(blob)) if blob else f"<= {start}"


class ShardedChunkStore(ChunkStore):
    """Chunks packed into ``neuroglancer_uint64_sharded_v1`` shard files.

    Reads cost at most three ranged requests per chunk when cold (shard index entry,
    minishard index, data) and one when warm: index entries and minishard indices are
    cached (bounded). The first read of a shard fetches its whole index when that is at most
    ``INDEX_SPAN_BYTES`` (otherwise the span of the entries needed); a read that covers a
    whole (rectangular) shard reads it in one request.
    """

    #: Number of cached minishard indices / shard index entries.
    INDEX_CACHE_ENTRIES = 16384
    #: Largest shard index read whole on first use (else: largest span of entries read in
    #: one request).
    INDEX_SPAN_BYTES = 64 * 1024
    #: Attempts to rewrite a shard that other writers keep changing before giving up.
    MAX_COMMIT_RETRIES = 64

    def __init__(
        self, kvstore: KvStore, prefix: str, grid: ChunkGrid, spec: sh.ShardingSpec
    ) -> None:
        super().__init__(kvstore, prefix, grid)
        self.spec = spec
        self.bits = sh.morton_bits(grid.size, grid.chunk)
        self.rectangular = sh.is_rectangular(spec, self.bits)
        self.index_size = spec.shard_index_size
        self._lock = threading.Lock()
        # (shard, minishard) -> set when the thread loading its minishard index is done
        self._loading: dict[tuple[int, int], threading.Event] = {}
        # (shard, minishard) -> absolute (start, stop) or None (empty minishard / no shard)
        self._entries: LRUCache[tuple[int, int], tuple[int, int] | None] = LRUCache(
            self.INDEX_CACHE_ENTRIES
        )
        # (shard, minishard) -> {chunk id: (start, stop)}
        self._minishards: LRUCache[tuple[int, int], dict[int, tuple[int, int]]] = LRUCache(
            self.INDEX_CACHE_ENTRIES
        )

    # -- placement ----------------------------------------------------------------------
    def chunk_ids(self, positions: Sequence[Vec3] | np.ndarray) -> np.ndarray:
        arr = np.asarray(positions, dtype=np.int64).reshape(-1, 3)
        return sh.compressed_morton_codes(arr, self.bits)

    def placement(self, positions: Sequence[Vec3]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Chunk ids, shard numbers and minishard numbers of ``positions``."""
        if len(positions) <= 8:  # a few chunks: integer arithmetic beats numpy's set-up
            got = [sh.placement_of(p, self.bits, self.spec) for p in positions]
            cols = list(zip(*got, strict=True)) or [(), (), ()]
            return tuple(np.array(c, np.uint64) for c in cols)  # type: ignore[return-value]
        ids = self.chunk_ids(positions)
        shards, minishards = sh.shard_and_minishard(ids, self.spec)  # hashes internally
        return ids, shards, minishards

    def shard_key(self, shard: int) -> str:
        return join_key(self.prefix, sh.shard_filename(int(shard), self.spec))

    def describe(self, pos: Vec3) -> str:
        ids, shards, minis = self.placement([pos])
        return (
            f"{self.shard_key(int(shards[0]))}, minishard {int(minis[0])}, chunk id {int(ids[0])}"
        )

    def group_of(self, pos: Vec3) -> Hashable:
        return int(self.placement([pos])[1][0])

    def groups_of(self, positions: Sequence[Vec3]) -> list[int]:
        return [int(s) for s in self.placement(positions)[1]]

    def group_key(self, group: Hashable) -> str:
        return self.shard_key(_shard_number(group))

    def group_size(self, group: Hashable) -> int:
        if not self.rectangular:
            return -1  # unknown: whole-shard writes cannot be detected
        return sh.chunks_in_shard(self.spec, self.bits, self.grid.shape, _shard_number(group))

    def invalidate(self, groups: Sequence[Hashable] | None = None) -> None:
        with self._lock:
            if groups is None:
                self._entries.clear()
                self._minishards.clear()
                return
            drop = {_shard_number(g) for g in groups}
            for cache in (self._entries, self._minishards):
                for k in [k for k in cache if k[0] in drop]:
                    del cache[k]

    # -- reading --------------------------------------------------------------------------
    def read_chunks(
        self, positions: Sequence[Vec3], *, deferred: bool = False
    ) -> list[bytes | None]:
        if not len(positions):
            return []
        ids, shards, minis = self.placement(positions)
        out: list[bytes | None] = [None] * len(positions)
        whole = self._whole_shards(shards)
        rest = [i for i in range(len(positions)) if int(shards[i]) not in whole]
        if whole:
            self._read_whole_shards(whole, ids, shards, out, deferred)
        if rest:
            self._read_via_indices(rest, ids, shards, minis, out, deferred)
        return out

    def finish(self, pos: Vec3, blob: bytes) -> bytes:
        """Remove the shard data encoding from a deferred read."""
        if self.spec.data_encoding == "raw":
            return bytes(blob)
        try:
            return sh.decode_chunk_data(blob, self.spec, "")
        except CorruptDataError:
            ids, shards, minis = self.placement([pos])
            what = (
                f'chunk {int(ids[0])} in minishard {int(minis[0])} of '
                f'"{self.shard_key(int(shards[0]))}"'
            )
            sh.decode_chunk_data(blob, self.spec, what)  # raises again, naming the chunk
            raise  # pragma: no cover

    def _whole_shards(self, shards: np.ndarray) -> set[int]:
        """Shards whose every chunk is requested: read each in a single request."""
        if not self.rectangular:
            return set()
        values, counts = np.unique(shards, return_counts=True)
        return {
            int(s)
            for s, c in zip(values, counts, strict=True)
            if c == sh.chunks_in_shard(self.spec, self.bits, self.grid.shape, int(s))
        }

    def _read_whole_shards(
        self,
        whole: set[int],
        ids: np.ndarray,
        shards: np.ndarray,
        out: list[bytes | None],
        deferred: bool = False,
    ) -> None:
        order = sorted(whole)
        blobs = self.kvstore.read_many([self.shard_key(s) for s in order])
        contents = {}
        for s, blob in zip(order, blobs, strict=True):
            key = self.shard_key(s)
            try:
                contents[s] = (
                    {}
                    if blob is None
                    else sh.split_shard(
                        blob, self.spec, key, allow_duplicates=True, decode=not deferred
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
        ids: np.ndarray,
        shards: np.ndarray,
        minis: np.ndarray,
        out: list[bytes | None],
        deferred: bool = False,
    ) -> None:
        # (shard, minishard) -> a requested chunk id in it, to name in error messages.
        wanted: dict[tuple[int, int], int] = {}
        for i in idx:
            wanted.setdefault((int(shards[i]), int(minis[i])), int(ids[i]))
        tables = self._minishard_tables(wanted)
        requests: list[tuple[str, int, int]] = []
        targets: list[int] = []
        for i in idx:
            key = (int(shards[i]), int(minis[i]))
            rng = tables[key].get(int(ids[i]))
            if rng is not None:
                requests.append((self.shard_key(key[0]), rng[0], rng[1]))
                targets.append(i)
        if not requests:
            return
        blobs = self.kvstore.read_ranges(requests)
        for i, (shard_key, a, b), blob in zip(targets, requests, blobs, strict=True):
            what = f'chunk {int(ids[i])} in minishard {int(minis[i])} of "{shard_key}"'
            if blob is None or len(blob) != b - a:
                raise CorruptDataError(
                    f"Error reading {what}: Requested byte range [{a}, {b}) is not valid for "
                    f"value of size {_size_seen(a, blob)}"
                )
            out[i] = blob if deferred else sh.decode_chunk_data(blob, self.spec, what)

    def _minishard_tables(
        self, wanted: Mapping[tuple[int, int], int]
    ) -> dict[tuple[int, int], dict[int, tuple[int, int]]]:
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
    ) -> dict[tuple[int, int], tuple[int, int] | None]:
        """Fetch shard index entries (absolute ranges, ``None`` = empty minishard).

        One request per shard: the span of the shard index from the first to the last
        entry needed (one entry when one minishard is needed), or one request per entry
        when that span would be large. ``wanted`` maps each key to a chunk id to name.
        """
        found: dict[tuple[int, int], tuple[int, int] | None] = {}
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
        blobs = self.kvstore.read_ranges(requests)
        for (s, lo, ms), (key, a, _), blob in zip(plan, requests, blobs, strict=True):
            if blob is None:  # no shard file: every chunk in it is missing
                found.update({(s, m): None for m in ms})
                continue
            if whole_index and len(blob) == 16 * n:
                found.update(self._spare_entries(blob, s, key, set(ms)))
            for m in ms:
                entry = blob[16 * (m - lo) : 16 * (m - lo) + 16]
                if len(entry) < 16:  # the file ends before this entry: empty or truncated
                    size: int | str = a + len(blob) if blob else self._size(key)
                    if size == 0 or size == "<missing>":
                        found.update({(s, m): None for m in ms})  # no chunks
                        break
                    raise CorruptDataError(
                        f'Error reading chunk {wanted[(s, m)]} in minishard {m} of "{key}": '
                        f"Error retrieving shard index entry: Requested byte range "
                        f"[{16 * m}, {16 * m + 16}) is not valid for value of size {size}"
                    )
                found[(s, m)] = self._entry(entry, s, m, key, wanted)
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
        entries: Mapping[tuple[int, int], tuple[int, int] | None],
    ) -> dict[tuple[int, int], dict[int, tuple[int, int]]]:
        """Fetch and decode minishard indices ``{chunk id: absolute (start, stop)}``."""
        found: dict[tuple[int, int], dict[int, tuple[int, int]]] = {
            k: {} for k in wanted if entries[k] is None
        }
        todo = [k for k in wanted if k not in found]
        if todo:
            requests = [(self.shard_key(s), *entries[(s, m)]) for s, m in todo]  # type: ignore[misc]
            blobs = self.kvstore.read_ranges(requests)
            for (s, m), (key, a, b), blob in zip(todo, requests, blobs, strict=True):
                cid = wanted[(s, m)]
                if blob is None or len(blob) != b - a:
                    raise CorruptDataError(
                        f'Error reading chunk {cid} in minishard {m} of "{key}": Error reading '
                        f"minishard index: Requested byte range [{a}, {b}) is not valid for "
                        f"value of size {_size_seen(a, blob)}"
                    )
                try:
                    mids, starts, ends = sh.decode_minishard_index(blob, self.spec, key, m)
                except CorruptDataError as e:
                    raise CorruptDataError(f"Error reading chunk {cid}: {e}") from None
                table: dict[int, tuple[int, int]] = {}
                for i, x, y in zip(mids.tolist(), starts.tolist(), ends.tolist(), strict=True):
                    table.setdefault(i, (x, y))  # a duplicated id: the first entry wins
                found[(s, m)] = table
        with self._lock:
            self._minishards.update(found)
        return found

    # -- writing --------------------------------------------------------------------------
    def commit_group(self, group: Hashable, updates: Mapping[Vec3, bytes | None]) -> CommitStats:
        """Rewrite one shard with ``updates`` merged in, exactly once.

        Reads the shard (unless the updates supply every chunk of it), merges, encodes in
        TensorStore's order and writes conditionally on the generation that was read; if
        another writer changed the shard in between, re-reads and merges again.
        """
        shard = _shard_number(group)
        key = self.shard_key(shard)
        positions = list(updates)
        ids = [int(i) for i in self.chunk_ids(positions)]
        # Apply the shard data encoding once, outside the retry loop.
        new = {
            cid: None if data is None else sh.encode_chunk_data(data, self.spec)
            for cid, data in zip(ids, updates.values(), strict=True)
        }
        stats = CommitStats(keys=[key])
        full = self.rectangular and len(new) == self.group_size(shard)
        while True:
            if full:
                merged: dict[int, bytes | memoryview] = {}
                generation = None
            else:
                blob, generation = self.kvstore.read_with_generation(key)
                # Keep stored chunks in their data encoding (zero-copy views into the old
                # shard): no gunzip/gzip round trip, and only the old + the new shard in
                # memory. A shard that cannot be parsed is never overwritten.
                try:
                    merged = {} if not blob else sh.split_shard(blob, self.spec, key, decode=False)
                except CorruptDataError as e:
                    raise CorruptDataError(
                        f'Cannot write {_ids_text(new)} to shard "{key}" (nothing was '
                        f"written): the existing shard is corrupt: {e}"
                    ) from None
                del blob
            for cid, data in new.items():
                if data is None:
                    merged.pop(cid, None)
                else:
                    merged[cid] = data
            encoded = sh.encode_shard(merged, self.spec, data_encoded=True) if merged else None
            del merged
            if generation is None:
                if encoded is None:
                    self.kvstore.delete(key)
                else:
                    self.kvstore.write(key, encoded)
                ok = True
            elif encoded is None and generation == NO_VALUE:
                ok = True  # nothing stored before, nothing to store now
            else:
                ok = self.kvstore.write_if(key, encoded, generation)
            if ok:
                break
            # Another writer changed the shard since we read it: read and merge again.
            encoded = None
            stats.retries += 1
            if stats.retries >= self.MAX_COMMIT_RETRIES:
                raise ConditionFailedError(
                    f'Error writing shard "{key}": it changed concurrently on each of '
                    f"{stats.retries} attempts; giving up (the edits are not stored)"
                )
            time.sleep(random.uniform(0, min(0.2, 0.001 * (1 << min(stats.retries, 8)))))
        self.invalidate([shard])
        if encoded is None:
            stats.groups_deleted += 1
        else:
            stats.groups_written += 1
        stats.chunks_written = sum(1 for v in new.values() if v is not None)
        stats.chunks_deleted = len(new) - stats.chunks_written
        return stats

"""Chunk stores: turn chunk grid positions into stored bytes and back.

Two implementations behind one interface: :class:`UnshardedChunkStore` (one key per
chunk) and :class:`ShardedChunkStore` (chunks packed into shard files). Both deal in
*encoded* chunk bytes (the volume encoding: raw, jpeg, ...); decoding lives in codecs.

Writes are organised in *groups*: the unit that is rewritten at once (a chunk key for
unsharded scales, a shard file for sharded ones). ``commit_group`` rewrites one group
exactly once; the transaction layer decides which groups to commit and how many at a time.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from cachetools import LRUCache

from . import sharding as sh
from .codecs import gzip_decompress
from .errors import CorruptDataError
from .grid import ChunkGrid, Vec3
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
    def read_chunks(self, positions: Sequence[Vec3]) -> list[bytes | None]:
        """Encoded bytes of each chunk (``None`` if missing), fetched concurrently."""

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

    def key(self, pos: Vec3) -> str:
        return join_key(self.prefix, self.grid.chunk_name(pos))

    def describe(self, pos: Vec3) -> str:
        return self.key(pos)

    def read_chunks(self, positions: Sequence[Vec3]) -> list[bytes | None]:
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


class ShardedChunkStore(ChunkStore):
    """Chunks packed into ``neuroglancer_uint64_sharded_v1`` shard files.

    Reads cost at most three ranged requests per chunk when cold (shard index entry,
    minishard index, data) and one when warm: index entries and minishard indices are
    cached (bounded). A read that needs several minishards of one shard fetches the whole
    shard index at once; a read that covers a whole (rectangular) shard reads it in one
    request.
    """

    #: Number of cached minishard indices / shard index entries.
    INDEX_CACHE_ENTRIES = 16384

    def __init__(
        self, kvstore: KvStore, prefix: str, grid: ChunkGrid, spec: sh.ShardingSpec
    ) -> None:
        super().__init__(kvstore, prefix, grid)
        self.spec = spec
        self.bits = sh.morton_bits(grid.size, grid.chunk)
        self.rectangular = sh.is_rectangular(spec, self.bits)
        self.index_size = spec.shard_index_size
        self._lock = threading.Lock()
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
        ids = self.chunk_ids(positions)
        shards, minishards = sh.shard_and_minishard(ids, self.spec)  # hashes internally
        return ids, shards, minishards

    def shard_key(self, shard: int) -> str:
        return join_key(self.prefix, sh.shard_filename(int(shard), self.spec))

    def describe(self, pos: Vec3) -> str:
        ids, shards, minis = self.placement([pos])
        return f"chunk {int(ids[0])} in minishard {int(minis[0])} of {self.shard_key(int(shards[0]))!r}"

    def group_of(self, pos: Vec3) -> Hashable:
        return int(self.placement([pos])[1][0])

    def groups_of(self, positions: Sequence[Vec3]) -> list[int]:
        return [int(s) for s in self.placement(positions)[1]]

    def group_key(self, group: Hashable) -> str:
        return self.shard_key(int(group))  # type: ignore[arg-type]

    def group_size(self, group: Hashable) -> int:
        if not self.rectangular:
            return -1  # unknown: whole-shard writes cannot be detected
        return sh.chunks_in_shard(self.spec, self.bits, self.grid.shape, int(group))  # type: ignore[arg-type]

    def invalidate(self, groups: Sequence[Hashable] | None = None) -> None:
        with self._lock:
            if groups is None:
                self._entries.clear()
                self._minishards.clear()
                return
            drop = {int(g) for g in groups}  # type: ignore[arg-type]
            for cache in (self._entries, self._minishards):
                for k in [k for k in cache if k[0] in drop]:
                    del cache[k]

    # -- reading --------------------------------------------------------------------------
    def read_chunks(self, positions: Sequence[Vec3]) -> list[bytes | None]:
        if not len(positions):
            return []
        ids, shards, minis = self.placement(positions)
        out: list[bytes | None] = [None] * len(positions)
        whole = self._whole_shards(shards)
        rest = [i for i in range(len(positions)) if int(shards[i]) not in whole]
        if whole:
            self._read_whole_shards(whole, ids, shards, out)
        if rest:
            self._read_via_indices(rest, ids, shards, minis, out)
        return out

    def _whole_shards(self, shards: np.ndarray) -> set[int]:
        """Shards whose every chunk is requested: read each in a single request."""
        if not self.rectangular:
            return set()
        values, counts = np.unique(shards, return_counts=True)
        return {
            int(s)
            for s, c in zip(values, counts, strict=True)
            if c > 1 and c == sh.chunks_in_shard(self.spec, self.bits, self.grid.shape, int(s))
        }

    def _read_whole_shards(
        self, whole: set[int], ids: np.ndarray, shards: np.ndarray, out: list[bytes | None]
    ) -> None:
        order = sorted(whole)
        blobs = self.kvstore.read_many([self.shard_key(s) for s in order])
        contents = {}
        for s, blob in zip(order, blobs, strict=True):
            contents[s] = {} if blob is None else sh.split_shard(blob, self.spec, self.shard_key(s))
        for i, s in enumerate(shards):
            s = int(s)
            if s in whole:
                out[i] = contents[s].get(int(ids[i]))

    def _read_via_indices(
        self,
        idx: list[int],
        ids: np.ndarray,
        shards: np.ndarray,
        minis: np.ndarray,
        out: list[bytes | None],
    ) -> None:
        needed = sorted({(int(shards[i]), int(minis[i])) for i in idx})
        self._load_entries([k for k in needed if not self._has(self._entries, k)])
        self._load_minishards([k for k in needed if not self._has(self._minishards, k)])
        requests: list[tuple[str, int, int]] = []
        targets: list[int] = []
        with self._lock:
            for i in idx:
                key = (int(shards[i]), int(minis[i]))
                table = self._minishards.get(key) or {}
                rng = table.get(int(ids[i]))
                if rng is not None:
                    requests.append((self.shard_key(key[0]), rng[0], rng[1]))
                    targets.append(i)
        if not requests:
            return
        blobs = self.kvstore.read_ranges(requests)
        for i, (key, a, b), blob in zip(targets, requests, blobs, strict=True):
            if blob is None or len(blob) != b - a:
                raise CorruptDataError(
                    f"Error reading chunk {int(ids[i])} in minishard {int(minis[i])} of {key!r}: "
                    f"Requested byte range [{a}, {b}) is not valid for the shard "
                    f"(got {0 if blob is None else len(blob)} bytes)"
                )
            out[i] = sh.decode_chunk_data(
                blob, self.spec, f"chunk {int(ids[i])} in minishard {int(minis[i])} of {key!r}"
            )

    def _has(self, cache: LRUCache, key: tuple[int, int]) -> bool:
        with self._lock:
            return key in cache

    def _load_entries(self, keys: list[tuple[int, int]]) -> None:
        """Fetch shard index entries; a shard needing several reads its whole index."""
        if not keys:
            return
        by_shard: dict[int, list[int]] = {}
        for s, m in keys:
            by_shard.setdefault(s, []).append(m)
        requests: list[tuple[str, int, int]] = []
        plan: list[tuple[int, list[int] | None]] = []
        for s, ms in by_shard.items():
            key = self.shard_key(s)
            if len(ms) > 1:
                requests.append((key, 0, self.index_size))
                plan.append((s, None))
            else:
                requests.append((key, 16 * ms[0], 16 * ms[0] + 16))
                plan.append((s, ms))
        blobs = self.kvstore.read_ranges(requests)
        found: dict[tuple[int, int], tuple[int, int] | None] = {}
        for (s, ms), (key, a, b), blob in zip(plan, requests, blobs, strict=True):
            if blob is None:  # no shard file: every chunk in it is missing
                for m in by_shard[s]:
                    found[(s, m)] = None
                continue
            if ms is None:
                if len(blob) == 0:
                    for m in by_shard[s]:
                        found[(s, m)] = None
                    continue
                if len(blob) < self.index_size:
                    raise CorruptDataError(
                        f"Error retrieving shard index of {key!r}: Requested byte range "
                        f"[0, {self.index_size}) is not valid for value of size {len(blob)}"
                    )
                for m in range(1 << self.spec.minishard_bits):
                    found[(s, m)] = sh.decode_shard_index_entry(
                        blob[16 * m : 16 * m + 16], m, self.spec, key
                    )
            else:
                m = ms[0]
                if len(blob) == 0 and self._is_empty_file(key):
                    found[(s, m)] = None
                    continue
                if len(blob) < 16:
                    raise CorruptDataError(
                        f"Error retrieving shard index entry for minishard {m} of {key!r}: "
                        f"Requested byte range [{a}, {b}) is not valid for value of size "
                        f"{a + len(blob)}"
                    )
                found[(s, m)] = sh.decode_shard_index_entry(blob, m, self.spec, key)
        with self._lock:
            self._entries.update(found)

    def _is_empty_file(self, key: str) -> bool:
        head = self.kvstore.read_range(key, 0, 1)
        return head is not None and len(head) == 0

    def _load_minishards(self, keys: list[tuple[int, int]]) -> None:
        with self._lock:
            ranges = {k: self._entries.get(k) for k in keys}
        empty = {k for k, r in ranges.items() if r is None}
        todo = [k for k in keys if k not in empty]
        found: dict[tuple[int, int], dict[int, tuple[int, int]]] = {k: {} for k in empty}
        if todo:
            requests = [(self.shard_key(s), *ranges[(s, m)]) for s, m in todo]  # type: ignore[misc]
            blobs = self.kvstore.read_ranges(requests)
            for (s, m), (key, a, b), blob in zip(todo, requests, blobs, strict=True):
                got = 0 if blob is None else len(blob)
                if blob is None or got != b - a:
                    raise CorruptDataError(
                        f"Error reading minishard {m} in {key!r}: Requested byte range "
                        f"[{a}, {b}) is not valid for value of size {a + got}"
                    )
                mids, starts, ends = sh.decode_minishard_index(blob, self.spec, key, m)
                found[(s, m)] = {
                    int(i): (int(x), int(y)) for i, x, y in zip(mids, starts, ends, strict=True)
                }
        with self._lock:
            self._minishards.update(found)

    # -- writing --------------------------------------------------------------------------
    def commit_group(self, group: Hashable, updates: Mapping[Vec3, bytes | None]) -> CommitStats:
        """Rewrite one shard with ``updates`` merged in, exactly once.

        Reads the shard (unless the updates supply every chunk of it), merges, encodes in
        TensorStore's order and writes conditionally on the generation that was read; if
        another writer changed the shard in between, re-reads and merges again.
        """
        shard = int(group)  # type: ignore[arg-type]
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
                merged: dict[int, bytes] = {}
                generation = None
            else:
                blob, generation = self.kvstore.read_with_generation(key)
                # Keep stored chunks in their data encoding: no gunzip/gzip round trip.
                merged = {} if not blob else sh.split_shard(blob, self.spec, key, decode=False)
                del blob  # free the old shard before encoding the new one
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
            stats.retries += 1
        self.invalidate([shard])
        if encoded is None:
            stats.groups_deleted += 1
        else:
            stats.groups_written += 1
        stats.chunks_written = sum(1 for v in new.values() if v is not None)
        stats.chunks_deleted = len(new) - stats.chunks_written
        return stats

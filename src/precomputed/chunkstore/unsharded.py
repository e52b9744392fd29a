"""One key per chunk: ``<prefix>/<x0>-<x1>_<y0>-<y1>_<z0>-<z1>`` (and CloudVolume's gzip)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from ..codecs.gzip import gzip_decompress
from ..errors import CorruptDataError
from ..internal.geometry import ChunkGrid, Vec3
from ..kvstore import KvStore
from .base import ChunkStore, CommitStats, join_key

__all__ = ["UnshardedChunkStore"]

_GZIP_MAGIC = b"\x1f\x8b"
#: Chunk keys remembered per store, a few MiB at most.
_KEY_MEMO = 1 << 16


class UnshardedChunkStore(ChunkStore):
    """One key per chunk: ``<prefix>/<x0>-<x1>_<y0>-<y1>_<z0>-<z1>``.

    Chunks written by CloudVolume with gzip are read too: gzip bytes under the plain key,
    or (on local and memory stores, where a miss is cheap) a ``.gz`` sibling key.
    """

    ranged_chunk_reads = True

    def __init__(self, kvstore: KvStore, prefix: str, grid: ChunkGrid) -> None:
        super().__init__(kvstore, prefix, grid)
        # A .gz twin is looked for only where a miss costs nothing (local files, memory).
        self._try_gz_suffix = kvstore.cheap_misses
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

    def gz_twins(self, positions: Sequence[Vec3]) -> list[Vec3]:
        if not self._try_gz_suffix or not positions:
            return []
        found = self.kvstore.read_many([self.key(p) + ".gz" for p in positions])
        return [p for p, b in zip(positions, found, strict=True) if b is not None]

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

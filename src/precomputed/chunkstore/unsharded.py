"""One key per chunk: ``<prefix>/<x0>-<x1>_<y0>-<y1>_<z0>-<z1>`` (and CloudVolume's
compressed forms of it)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from ..codecs.compression import SUFFIXES, inflate, inflate_limited, sniff
from ..codecs.gzip import DEFAULT_LIMIT, too_large
from ..errors import ConditionFailedError, CorruptDataError
from ..internal.contention import pause
from ..internal.geometry import ChunkGrid, Vec3
from ..kvstore import NO_VALUE, Generation, KvStore
from .base import ChunkStore, CommitStats, DeliverChunk, Rebuild, Versioned, join_key

__all__ = ["UnshardedChunkStore", "SizeBounds"]

#: Chunk keys remembered per store, a few MiB at most.
_KEY_MEMO = 1 << 16
#: ``sizes(pos) -> (exact, most)``: a stored chunk's exact size when its encoding fixes it
#: (raw), and the most bytes it can take (see :func:`precomputed.codecs.stored_size_bounds`).
SizeBounds = Callable[[Vec3], "tuple[int | None, int]"]


def _no_bounds(pos: Vec3) -> tuple[int | None, int]:
    return None, DEFAULT_LIMIT


class UnshardedChunkStore(ChunkStore):
    """One key per chunk: ``<prefix>/<x0>-<x1>_<y0>-<y1>_<z0>-<z1>``.

    Chunks CloudVolume wrote compressed are read too, as CloudFiles stores them: on
    local and memory stores (where a miss is cheap) as ``<key>.gz``, ``<key>.br`` or
    ``<key>.zstd`` files next to the missing plain key; anywhere as gzip or zstd bytes
    under the plain key (recognised by their magic bytes), and for raw chunks brotli bytes
    under the plain key (tried when the length is not the raw length). A raw chunk of
    exactly its raw length is raw, whatever its first bytes (as TensorStore reads it).
    Every inflation is bounded by ``sizes`` (the most the chunk's encoding can take): a
    bomb is a :class:`CorruptDataError` naming the key, with bounded memory.
    """

    ranged_chunk_reads = True
    streamed_reads = True

    def __init__(
        self, kvstore: KvStore, prefix: str, grid: ChunkGrid, sizes: SizeBounds | None = None
    ) -> None:
        super().__init__(kvstore, prefix, grid)
        # Sibling files are looked for only where a miss costs nothing (local files, memory).
        self._try_suffixes = kvstore.cheap_misses
        self._keys: dict[Vec3, str] = {}
        self.sizes: SizeBounds = sizes or _no_bounds

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
        if self._try_suffixes:
            missing = [i for i, v in enumerate(out) if v is None]
            for suffix, method in SUFFIXES.items():
                if not missing:
                    break
                found = self.kvstore.read_many([keys[i] + suffix for i in missing])
                still = []
                for i, v in zip(missing, found, strict=True):
                    if v is None:
                        still.append(i)
                        continue
                    _, most = self.sizes(positions[i])
                    out[i] = inflate(v, method, most, f'"{keys[i] + suffix}"')
                missing = still
        if deferred:
            return out
        return [None if v is None else self.finish(p, v) for p, v in zip(positions, out, strict=True)]

    def read_chunks_each(
        self, positions: Sequence[Vec3], deliver: DeliverChunk, *, versioned: bool = False
    ) -> None:
        if self._try_suffixes:
            # Local stores answer at once, and the twins are looked for after the batch.
            if versioned:
                for i, pos in enumerate(positions):
                    got = self._read_versioned_one(pos, finish=False)
                    deliver(i, got.data, got.generation)
                return
            for i, blob in enumerate(self.read_chunks(positions, deferred=True)):
                deliver(i, blob, None)
            return
        keys = [self.key(p) for p in positions]
        self.kvstore.read_ranges_each([(k, 0, None) for k in keys], deliver, pinned=versioned)

    def finish(self, pos: Vec3, blob: bytes) -> bytes:
        """Inflate a chunk CloudVolume stored compressed under the plain key (bounded);
        other bytes are returned as they are, for the encoding's decoder to judge."""
        exact, most = self.sizes(pos)
        if exact is not None and len(blob) == exact:
            return blob
        method = sniff(blob)
        if method is None:
            if exact is None:
                return blob
            method = "br"  # raw of the wrong length: brotli has no magic bytes to sniff
        out, why = inflate_limited(blob, method, most)
        if out is not None:
            return out
        if why == too_large(most):
            raise CorruptDataError(
                f'Error reading "{self.key(pos)}": {method} data {why}'
            )
        return blob  # not such a stream after all: the decoder reports what is wrong

    def group_of(self, pos: Vec3) -> Hashable:
        return tuple(pos)

    def group_size(self, group: Hashable) -> int:
        return 1

    def group_key(self, group: Hashable) -> str:
        return self.key(group)  # type: ignore[arg-type]

    def gz_twins(self, positions: Sequence[Vec3]) -> list[Vec3]:
        if not self._try_suffixes or not positions:
            return []
        todo = list(positions)
        found: list[Vec3] = []
        for suffix in SUFFIXES:
            if not todo:
                break
            blobs = self.kvstore.read_many([self.key(p) + suffix for p in todo])
            found += [p for p, b in zip(todo, blobs, strict=True) if b is not None]
            todo = [p for p, b in zip(todo, blobs, strict=True) if b is None]
        return found

    def read_versioned(self, positions: Sequence[Vec3]) -> list[Versioned]:
        return [self._read_versioned_one(pos) for pos in positions]

    def _read_versioned_one(self, pos: Vec3, finish: bool = True) -> Versioned:
        key = self.key(pos)
        data, gen = self.kvstore.read_with_generation(key)
        if data is not None:
            return Versioned(self.finish(pos, data) if finish else data, gen)
        # Missing under the plain key: CloudVolume's compressed twin, if any, is the
        # stored chunk; a write goes to the plain key "only if absent" (NO_VALUE).
        if self._try_suffixes:
            for suffix, method in SUFFIXES.items():
                twin = self.kvstore.read(key + suffix)
                if twin is not None:
                    _, most = self.sizes(pos)
                    data = inflate(twin, method, most, f'"{key + suffix}"')
                    break
        return Versioned(data, gen)

    def commit_group_with(
        self, group: Hashable, positions: Sequence[Vec3], rebuild: Rebuild
    ) -> CommitStats:
        pos: Vec3 = tuple(group)  # type: ignore[arg-type, assignment]
        key = self.key(pos)
        stats = CommitStats(keys=[key])
        updates = None if positions else rebuild({})
        while True:
            if updates is None or positions:
                got = self.read_versioned([pos])[0]
                expected: Generation | None = got.generation
                updates = rebuild({p: got.data for p in positions})
            else:
                expected = None  # nothing read: nothing another writer could invalidate
            extra = [p for p in updates if tuple(p) != pos]
            if extra:
                raise ValueError(f"chunk {key!r}: updates for other chunks {extra[:3]}")
            if pos not in updates:
                return stats  # nothing to store
            data = updates[pos]
            if expected is None:
                if data is None:
                    self.kvstore.delete(key)
                    gen: Generation | None = NO_VALUE
                else:
                    gen = self.kvstore.write(key, data) or NO_VALUE
            else:
                gen = self.kvstore.write_conditional(key, data, expected)
            if gen is not None:
                break
            stats.retries += 1
            if stats.retries >= self.MAX_COMMIT_RETRIES:
                raise ConditionFailedError(
                    f'Error writing chunk "{key}": it changed concurrently on each of '
                    f"{stats.retries} attempts; giving up (the edits are not stored)"
                )
            pause(stats.retries, base=0.001, doublings=8)
        # CloudVolume's readers of local files prefer a compressed twin over the plain
        # key: after the plain key is written (or deleted) no stale twin may remain.
        if self._try_suffixes:
            self._drop_twins(key)
        stats.generations[key] = gen
        if data is None:
            stats.chunks_deleted += 1
            stats.groups_deleted += 1
        else:
            stats.chunks_written += 1
            stats.groups_written += 1
        return stats

    def _drop_twins(self, key: str) -> None:
        """Delete CloudVolume's compressed twins of ``key`` that exist (a metadata check
        each: these stores answer a miss at once)."""
        twins = [key + s for s in SUFFIXES if self.kvstore.current_generation(key + s) != NO_VALUE]
        if twins:
            self.kvstore.delete_many(twins)


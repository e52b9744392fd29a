"""Chunk stores: chunk grid positions of one scale to stored bytes and back.

Two implementations behind one interface: :class:`~.unsharded.UnshardedChunkStore` (one
key per chunk) and :class:`~.sharded.ShardedChunkStore` (chunks packed into shard files).
Both deal in *encoded* chunk bytes (the volume encoding: raw, jpeg, ...); decoding lives
in :mod:`precomputed.codecs`.

Writes are organised in *groups*: the unit that is rewritten at once (a chunk key for
unsharded scales, a shard file for sharded ones). ``commit_group`` rewrites one group
exactly once (conditionally on the generation it read, where a group holds several
chunks); :mod:`precomputed.writepath` decides which groups to commit and how many at a
time. Callers test the capability attributes below, never the store's class.

Consistency: :meth:`ChunkStore.read_versioned` reads encoded chunks together with the
generation of their group (all bytes of one chunk from one version of its shard), and
:meth:`ChunkStore.commit_group_with` is the one conditional read-modify-write: it hands
the stored bytes to a ``rebuild`` callback and writes the group only if its generation is
still the one read, calling ``rebuild`` again on fresh bytes when another writer got there
first. Everything that writes a group on top of stored data (partial chunk writes,
transaction merges) goes through it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from ..internal.geometry import ChunkGrid, Vec3
from ..kvstore import Generation, KvStore

__all__ = [
    "ChunkStore", "CommitStats", "DeliverChunk", "Rebuild", "Versioned", "join_key",
    "MAX_COMMIT_RETRIES",
]  # fmt: skip

#: Attempts of a conditional group write that other writers keep beating, before
#: :class:`~precomputed.errors.ConditionFailedError`.
MAX_COMMIT_RETRIES = 64

#: ``rebuild(stored) -> updates``: given the stored encoded bytes of the positions a
#: :meth:`ChunkStore.commit_group_with` asked for (``None``: missing), the encoded bytes
#: to store (``None``: delete) for any positions of the group. Called once per attempt,
#: with the bytes of the generation that attempt writes on top of: it must re-apply the
#: caller's buffered changes to what it is given, keeping no state from a failed attempt.
Rebuild = Callable[[Mapping[Vec3, "bytes | None"]], Mapping[Vec3, "bytes | None"]]


#: ``deliver(index, bytes or None, generation or None)``: one chunk of
#: :meth:`ChunkStore.read_chunks_each`, as soon as its bytes have arrived.
DeliverChunk = Callable[[int, "bytes | None", "Generation | None"], None]


class Versioned(NamedTuple):
    """An encoded chunk (``None``: missing) and the generation of its group's key it was
    read from (``NO_VALUE``: the key was missing)."""

    data: bytes | None
    generation: Generation


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
    #: The generation each written group key has after the commit (``NO_VALUE``:
    #: deleted), for callers that cache what they wrote.
    generations: dict[str, Generation] = field(default_factory=dict)

    def add(self, other: CommitStats) -> None:
        self.groups_written += other.groups_written
        self.groups_deleted += other.groups_deleted
        self.chunks_written += other.chunks_written
        self.chunks_deleted += other.chunks_deleted
        self.retries += other.retries
        self.keys.extend(other.keys)
        self.generations.update(other.generations)


class ChunkStore(ABC):
    """Maps chunk grid positions of one scale to encoded bytes in a kvstore."""

    #: True when each write group is a box of several chunks (rectangular shards): a read
    #: covering a whole group fetches it in one request, so readers batch by group. False
    #: for unsharded stores (a group is one chunk) and for hashed shards.
    rectangular_groups: bool = False
    #: True when every chunk is one whole object under :meth:`key`: byte ranges of the
    #: key are byte ranges of the chunk, and exact-size reads fill a chunk in place.
    ranged_chunk_reads: bool = False
    #: True when :meth:`read_chunks_each` is implemented: each chunk is handed over as
    #: soon as its bytes arrive, so readers decode while the rest is still on the way.
    streamed_reads: bool = False
    #: Attempts of :meth:`commit_group_with` before it gives up.
    MAX_COMMIT_RETRIES: int = MAX_COMMIT_RETRIES

    def __init__(self, kvstore: KvStore, prefix: str, grid: ChunkGrid) -> None:
        self.kvstore = kvstore
        self.prefix = prefix
        self.grid = grid

    @abstractmethod
    def key(self, pos: Vec3) -> str:
        """Storage key of the object that holds chunk ``pos`` (a chunk or shard file)."""

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

    def read_chunks_each(
        self, positions: Sequence[Vec3], deliver: DeliverChunk, *, versioned: bool = False
    ) -> None:
        """:meth:`read_chunks` with ``deferred=True``, each chunk handed to
        ``deliver(i, bytes, generation)`` (``i``: its index in ``positions``) as soon as
        its bytes have arrived, on the thread the store reads on: ``deliver`` must be
        quick and thread-safe, and the bytes still need :meth:`finish`.

        With ``versioned`` the generation is the one :meth:`read_versioned` reports (the
        group's key the bytes or the absence came from, every byte of a chunk from it);
        otherwise None. A chunk may be delivered twice when its shard changed during the
        read (the second time from the newer generation, which then holds for the whole
        shard); callers keep the last. The first failure ends the call and is raised
        (chunks delivered before it stay valid). Only where :attr:`streamed_reads`."""
        raise NotImplementedError(f"{type(self).__name__} does not stream reads")

    def finish(self, pos: Vec3, blob: bytes) -> bytes:
        """Complete a ``read_chunks(..., deferred=True)`` result (identity by default)."""
        return blob

    @abstractmethod
    def group_of(self, pos: Vec3) -> Hashable:
        """The write group (chunk or shard) that holds ``pos``."""

    def groups_of(self, positions: Sequence[Vec3]) -> list[Hashable]:
        """:meth:`group_of` of each position (stores may do it vectorised)."""
        return [self.group_of(p) for p in positions]

    @abstractmethod
    def group_size(self, group: Hashable) -> int:
        """Number of chunks that exist in ``group`` (for whole-group writes)."""

    def read_versioned(self, positions: Sequence[Vec3]) -> list[Versioned]:
        """Encoded bytes of each chunk (finished, as :meth:`read_chunks` returns them) with
        the generation of its group's key they came from. All bytes of one chunk (for
        shards: index entry, minishard index, data) come from one generation; chunks of
        one group read in one call share it. A group that keeps changing while it is read
        raises :class:`~precomputed.errors.ConditionFailedError` naming its key."""
        raise NotImplementedError

    def group_generation(self, group: Hashable) -> Generation:
        """The generation the group's key has now (``NO_VALUE``: missing), from
        metadata only where the store allows (a cheap revalidation)."""
        return self.kvstore.current_generation(self.group_key(group))

    def commit_group(self, group: Hashable, updates: Mapping[Vec3, bytes | None]) -> CommitStats:
        """Apply ``updates`` (``None`` deletes) to one group, rewriting it exactly once;
        other chunks of the group are kept (conditionally on the generation read)."""
        return self.commit_group_with(group, (), lambda _stored: updates)

    @abstractmethod
    def commit_group_with(
        self, group: Hashable, positions: Sequence[Vec3], rebuild: Rebuild
    ) -> CommitStats:
        """Conditional read-modify-write of one group.

        Reads the stored bytes of ``positions`` (finished; ``None``: missing) at one
        generation of the group, calls ``rebuild(stored)`` for the updates, and stores
        them (with the group's other chunks kept) only if the group still has that
        generation ("only if absent" when it was missing). When another writer changed
        the group in between, re-reads and calls ``rebuild`` again, up to
        :data:`MAX_COMMIT_RETRIES` attempts, then raises
        :class:`~precomputed.errors.ConditionFailedError` naming the key (nothing of
        this commit stored). ``positions`` may be empty (updates that need no base):
        an unsharded chunk is then written without reading it.
        """

    @abstractmethod
    def group_key(self, group: Hashable) -> str:
        """Storage key of a group."""

    def invalidate(self, groups: Sequence[Hashable] | None = None) -> None:
        """Forget cached index data (after another writer may have changed storage)."""
        return None

    def gz_twins(self, positions: Sequence[Vec3]) -> list[Vec3]:
        """Those of ``positions`` (missing under their key) stored under one of CloudVolume's
        compressed names instead (``<key>.gz``, ``.br``, ``.zstd``), where the store looks
        for such twins; none by default."""
        return []

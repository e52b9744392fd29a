"""Chunk grid positions (or uint64 ids) to encoded bytes and back: one interface for both
layouts (:mod:`.base`), one key per chunk (:mod:`.unsharded`), shard files
(:mod:`.sharded`)."""

from .base import ChunkStore, CommitStats, join_key
from .sharded import Location, Placement, ShardedChunkStore, ShardedIdStore
from .unsharded import UnshardedChunkStore

__all__ = [
    "ChunkStore",
    "CommitStats",
    "join_key",
    "UnshardedChunkStore",
    "ShardedChunkStore",
    "ShardedIdStore",
    "Placement",
    "Location",
]

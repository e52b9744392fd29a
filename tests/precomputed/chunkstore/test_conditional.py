"""Issue 14: the chunk layer's consistency primitives, deterministically.

``ChunkStore.read_versioned`` (bytes with their group's generation, one version per
chunk), ``ChunkStore.commit_group_with`` (the conditional read-modify-write that calls
``rebuild`` again on fresh bytes when another writer got there first) and pinned sharded
reads that restart from the index when the shard changes under them. Another writer is
injected at the exact moment between a read and the write (or between the index and the
data reads) through a second store instance; real stores, no mocks of their behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

import precomputed
from precomputed.chunkstore import ShardedChunkStore, UnshardedChunkStore
from precomputed.errors import ConditionFailedError
from precomputed.internal.geometry import Vec3
from precomputed.kvstore import NO_VALUE, FileKvStore, KvStore, MemoryKvStore
from precomputed.writepath import commit_chunks
from volumes import sharding_json

SIZE, CHUNK = (16, 16, 16), (4, 4, 4)
RECT = sharding_json(2, 1, 3)  # 8 shards of 2x2x2 chunks, minishards of 2x2x1
GZIP = sharding_json(2, 1, 3, data="gzip", index="gzip")


def create(kv: KvStore, sharding: dict[str, Any] | None) -> precomputed.Volume:
    scale: dict[str, Any] = {
        "size": list(SIZE),
        "chunk_size": list(CHUNK),
        "encoding": "raw",
        "resolution": [1, 1, 1],
    }
    if sharding is not None:
        scale["sharding"] = sharding
    spec = {
        "driver": "neuroglancer_precomputed",
        "kvstore": {"driver": "memory"},
        "multiscale_metadata": {"data_type": "uint16", "num_channels": 1, "type": "image"},
        "scale_metadata": scale,
    }
    return precomputed.open(
        spec, create=True, kvstore=kv, context=precomputed.Context(cache_bytes=0)
    )


def reopen(kv: KvStore) -> precomputed.Volume:
    return precomputed.open(
        {"driver": "neuroglancer_precomputed", "kvstore": {"driver": "memory"}},
        kvstore=kv,
        context=precomputed.Context(cache_bytes=0),
    )


def stores(kind: str, memory_store: MemoryKvStore, tmp_path: Any) -> tuple[KvStore, KvStore]:
    """Two instances of one store: ours and another writer's."""
    if kind == "memory":
        return memory_store, MemoryKvStore(memory_store.path)
    return FileKvStore(tmp_path), FileKvStore(tmp_path)


def after_first(kv: KvStore, method: str, action: Any, when: Any = None) -> list[str]:
    """Run ``action()`` right after the first call of ``kv.method`` (matching ``when``)."""
    original = getattr(kv, method)
    fired: list[str] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        if not fired and (when is None or when(*args, **kwargs)):
            fired.append(str(args[0]))
            action()
        return out

    setattr(kv, method, wrapper)
    return fired


def before_first(kv: KvStore, method: str, action: Any, when: Any) -> list[str]:
    """Run ``action()`` just before the first call of ``kv.method`` matching ``when``."""
    original = getattr(kv, method)
    fired: list[str] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not fired and when(*args, **kwargs):
            fired.append(repr(args[0])[:80])
            action()
        return original(*args, **kwargs)

    setattr(kv, method, wrapper)
    return fired


# ---------------------------------------------------------------------------------------
# commit_group_with: re-read and re-apply on a failed condition
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "file"])
@pytest.mark.parametrize("sharding", [None, RECT, GZIP], ids=["unsharded", "sharded", "gzip-shards"])
def test_rebuild_runs_again_on_what_the_other_writer_stored(
    kind: str, sharding: dict[str, Any] | None, memory_store: MemoryKvStore, tmp_path: Any
) -> None:
    kv, other_kv = stores(kind, memory_store, tmp_path)
    vol = create(kv, sharding)
    vol[...] = 1
    other = reopen(other_kv)
    store = vol.handle.store
    pos: Vec3 = (0, 0, 0)
    group = store.group_of(pos)
    seen: list[np.ndarray] = []

    def rebuild(stored: Mapping[Vec3, bytes | None]) -> dict[Vec3, bytes | None]:
        chunk = np.array(vol.handle.decode(pos, stored[pos]))
        seen.append(chunk.copy())
        chunk[0, 0] = 5  # our change: the first z plane
        return {pos: vol.handle.encode(pos, chunk)}

    method = "read_with_generation"
    fired = after_first(kv, method, lambda: other.__setitem__(np.s_[0:4, 0:4, 3:4, :], 7))
    stats = store.commit_group_with(group, [pos], rebuild)
    assert fired and stats.retries == 1 and len(seen) == 2
    assert (seen[0] == 1).all() and (seen[1][0, 3] == 7).all()  # the 2nd saw their write
    out = reopen(other_kv)[0:4, 0:4, 0:4, 0].read()
    assert (out[:, :, 0] == 5).all() and (out[:, :, 3] == 7).all() and (out[:, :, 1:3] == 1).all()
    key = store.group_key(group)
    assert stats.generations == {key: kv.current_generation(key)}


@pytest.mark.parametrize("sharding", [None, RECT], ids=["unsharded", "sharded"])
def test_a_missing_group_is_written_only_if_still_absent(
    sharding: dict[str, Any] | None, memory_store: MemoryKvStore
) -> None:
    vol = create(memory_store, sharding)
    other = reopen(MemoryKvStore(memory_store.path))
    fired = after_first(
        memory_store, "read_with_generation", lambda: other.__setitem__(np.s_[0:4, 0:4, 0:2, :], 8)
    )
    stats = vol[0:4, 0:4, 2:4, :].write(6)  # partial: the chunk is read (missing) first
    assert fired and stats is not None and stats.retries == 1
    out = reopen(memory_store)[0:4, 0:4, 0:4, 0].read()
    assert (out[:, :, :2] == 8).all() and (out[:, :, 2:] == 6).all()


@pytest.mark.parametrize("sharding", [None, RECT], ids=["unsharded", "sharded"])
def test_a_writer_that_always_loses_gives_up_naming_the_key_and_stores_nothing(
    sharding: dict[str, Any] | None, memory_store: MemoryKvStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    vol = create(memory_store, sharding)
    vol[...] = 1
    store = vol.handle.store
    monkeypatch.setattr(type(store), "MAX_COMMIT_RETRIES", 3)
    if isinstance(store, ShardedChunkStore):  # its shards are rewritten by its id store
        monkeypatch.setattr(type(store.ids), "MAX_COMMIT_RETRIES", 3)
    key = store.key((0, 0, 0))
    before = memory_store.read(key)
    other = MemoryKvStore(memory_store.path)

    def conflicting(k: str, data: bytes | None, gen: str) -> str | None:
        other.write(k, memory_store.read(k) or b"")  # someone else wins every time
        return None

    monkeypatch.setattr(memory_store, "write_conditional", conflicting)
    with pytest.raises(ConditionFailedError, match=rf'"{key}".*3 attempts'):
        vol[0:2, 0:2, 0:2, :] = 2
    assert memory_store.read(key) == before


def test_rebuild_without_positions_is_called_once_and_reads_nothing(
    memory_store: MemoryKvStore,
) -> None:
    vol = create(memory_store, None)
    store = vol.handle.store
    assert isinstance(store, UnshardedChunkStore)
    calls: list[dict[Vec3, bytes | None]] = []
    chunk = np.full((1, 4, 4, 4), 3, np.uint16)

    def rebuild(stored: Mapping[Vec3, bytes | None]) -> dict[Vec3, bytes | None]:
        calls.append(dict(stored))
        return {(0, 0, 0): vol.handle.encode((0, 0, 0), chunk)}

    memory_store.request_log = []
    store.commit_group_with((0, 0, 0), [], rebuild)
    assert calls == [{}]
    assert [op for op, *_ in memory_store.request_log if op in ("read", "read_range")] == []
    assert (reopen(memory_store)[0:4, 0:4, 0:4].read() == 3).all()


# ---------------------------------------------------------------------------------------
# commit_chunks(merge=): an edit merged with what is stored, inside the conditional write
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sharding", [None, RECT], ids=["unsharded", "sharded"])
def test_merge_sees_the_other_writers_chunk_and_both_edits_survive(
    sharding: dict[str, Any] | None, memory_store: MemoryKvStore
) -> None:
    vol = create(memory_store, sharding)
    vol[...] = 1
    base = np.ones((1, 4, 4, 4), np.uint16)
    ours = base.copy()
    ours[0, 0] = 5  # our edit: z plane 0 of chunk (0, 0, 0)
    other = reopen(MemoryKvStore(memory_store.path))
    after_first(
        memory_store, "read_with_generation", lambda: other.__setitem__(np.s_[0:4, 0:4, 3:4, :], 7)
    )
    merges: list[np.ndarray | None] = []

    def merge(pos: Vec3, mine: np.ndarray, stored: np.ndarray | None) -> np.ndarray | None:
        merges.append(None if stored is None else stored.copy())
        assert stored is not None
        return np.where(mine != base, mine, stored)

    stats = commit_chunks(vol.handle, {(0, 0, 0): ours}, merge=merge)
    assert stats.retries == 1 and len(merges) == 2 and (merges[1][0, 3] == 7).all()
    out = reopen(memory_store)[0:4, 0:4, 0:4, 0].read()
    assert (out[:, :, 0] == 5).all() and (out[:, :, 3] == 7).all()


def test_merge_returning_none_stores_nothing_for_that_chunk(memory_store: MemoryKvStore) -> None:
    vol = create(memory_store, RECT)
    vol[...] = 1
    memory_store.request_log = []
    stats = commit_chunks(
        vol.handle, {(0, 0, 0): np.zeros((1, 4, 4, 4), np.uint16)}, merge=lambda p, o, s: None
    )
    assert stats.chunks_written == 0
    assert (reopen(memory_store).read() == 1).all()


# ---------------------------------------------------------------------------------------
# Reads: one generation per chunk, restart on change
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_read_versioned_reports_the_groups_generation(
    kind: str, memory_store: MemoryKvStore, tmp_path: Any
) -> None:
    kv, other_kv = stores(kind, memory_store, tmp_path)
    for sharding in (None, RECT):
        vol = create(kv, sharding)
        vol[0:8, 0:4, 0:4, :] = 4
        store = vol.handle.store
        got = store.read_versioned([(0, 0, 0), (1, 0, 0), (3, 3, 3)])
        for pos, (data, gen) in zip([(0, 0, 0), (1, 0, 0)], got[:2], strict=True):
            assert data is not None and (vol.handle.decode(pos, data) == 4).all()
            assert gen == kv.current_generation(store.key(pos))
            assert gen == store.group_generation(store.group_of(pos))
        assert got[2] == (None, NO_VALUE)
        kv.delete_prefix("")


def test_read_versioned_sees_a_chunk_another_writer_added_to_a_cached_shard(
    memory_store: MemoryKvStore,
) -> None:
    vol = create(memory_store, RECT)
    vol[0:4, 0:4, 0:4, :] = 1
    store = vol.handle.store
    assert isinstance(store, ShardedChunkStore)
    assert store.read_versioned([(1, 1, 0)])[0].data is None  # absent: indices cached
    reopen(MemoryKvStore(memory_store.path))[4:8, 4:8, 0:4, :] = 2
    data, gen = store.read_versioned([(1, 1, 0)])[0]
    assert data is not None and (vol.handle.decode((1, 1, 0), data) == 2).all()
    assert gen == memory_store.current_generation(store.key((1, 1, 0)))


@pytest.mark.parametrize("kind", ["memory", "file"])
@pytest.mark.parametrize("sharding", [RECT, GZIP], ids=["raw", "gzip"])
def test_a_shard_replaced_between_index_and_data_reads_is_read_again_from_its_index(
    kind: str, sharding: dict[str, Any], memory_store: MemoryKvStore, tmp_path: Any
) -> None:
    kv, other_kv = stores(kind, memory_store, tmp_path)
    vol = create(kv, sharding)
    vol[...] = 1
    other = reopen(other_kv)
    vol[0:4, 0:4, 0:4].read()  # indices of shard 0 cached
    # The other writer rewrites shard 0 with chunks of other sizes (so every offset moves)
    # just before our data read, which is pinned to the cached generation.
    noise = np.random.default_rng(0).integers(0, 9, (8, 8, 8, 1)).astype(np.uint16)
    fired = before_first(
        kv,
        "read_ranges_pinned",
        lambda: other.__setitem__(np.s_[0:8, 0:8, 0:8, :], noise + 10),
        when=lambda requests, generations=None: bool(generations),
    )
    np.testing.assert_array_equal(vol[0:4, 0:4, 0:4].read(), noise[0:4, 0:4, 0:4] + 10)
    assert fired


def test_a_shard_that_changes_on_every_index_read_is_read_whole(
    memory_store: MemoryKvStore,
) -> None:
    vol = create(memory_store, GZIP)
    vol[...] = 1
    store = vol.handle.store
    assert isinstance(store, ShardedChunkStore)
    other = reopen(MemoryKvStore(memory_store.path))
    original = memory_store.read_ranges_pinned
    rounds = [1]

    def changing(requests: Any, generations: Any = None) -> Any:
        if generations:  # every pinned data read finds a newer shard
            rounds[0] += 1
            other[0:8, 0:8, 0:8, :] = rounds[0]
        return original(requests, generations)

    memory_store.read_ranges_pinned = changing  # type: ignore[method-assign]
    got = vol[0:4, 0:4, 0:4].read()
    assert (got == got.flat[0]).all() and int(got.flat[0]) == rounds[0]  # one version
    assert rounds[0] - 1 == store.ids.MAX_INDEX_READS


def test_a_direct_write_holds_only_the_groups_in_flight(memory_store: MemoryKvStore) -> None:
    """Chunks built for a group are dropped once it is stored (a retry builds them
    again): writing 512 chunks of 128 KiB holds a few groups' worth, not the whole write."""
    import tracemalloc

    from precomputed.writepath import GROUP_CONCURRENCY

    spec = {
        "driver": "neuroglancer_precomputed",
        "kvstore": {"driver": "memory"},
        "multiscale_metadata": {"data_type": "uint16", "num_channels": 1, "type": "image"},
        "scale_metadata": {
            "size": [512, 512, 128],
            "chunk_size": [64, 64, 16],
            "encoding": "raw",
            "resolution": [1, 1, 1],
        },
    }
    vol = precomputed.open(
        spec, create=True, kvstore=memory_store, context=precomputed.Context(cache_bytes=0)
    )
    data = np.ones((512, 512, 128, 1), np.uint16)  # 64 MiB, 512 chunks of 128 KiB
    chunk = 64 * 64 * 16 * 2
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        vol[...] = data
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    # Each group in flight: its chunk, its encoding and the stored copy (the memory store
    # keeps the bytes: 512 chunks stay stored, counted once each).
    stored = 512 * chunk
    assert peak <= stored + 4 * GROUP_CONCURRENCY * chunk + (1 << 20), peak / chunk

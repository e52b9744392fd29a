"""Transactions: a write-back buffer of dirty chunks, committed grouped by shard.

Reads through a transaction see its edits; a failed commit keeps them for a retry; edits
made while a commit runs survive it; unsharded scales use the same machinery (one group
per chunk key).
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import numpy as np
import pytest

import precomputed
from precomputed.errors import InvalidArgumentError
from precomputed.kvstore import KvStore, MemoryKvStore

SIZE, CHUNK = (16, 16, 16), (4, 4, 4)
# Rectangular shards of 2x2x2 chunks (8x8x8 voxels), 8 of them.
RECT = {
    "@type": "neuroglancer_uint64_sharded_v1",
    "preshift_bits": 2,
    "hash": "identity",
    "minishard_bits": 1,
    "shard_bits": 3,
    "minishard_index_encoding": "gzip",
    "data_encoding": "gzip",
}


def create(kv: KvStore, sharding: dict[str, Any] | None = RECT, key: str = "s0") -> Any:
    scale: dict[str, Any] = {
        "key": key,
        "size": list(SIZE),
        "chunk_size": list(CHUNK),
        "encoding": "raw",
        "resolution": [1, 1, 1] if key == "s0" else [2, 2, 2],
    }
    if sharding is not None:
        scale["sharding"] = sharding
    return precomputed.open(
        {
            "driver": "neuroglancer_precomputed",
            "kvstore": {"driver": "memory"},  # the volume is at the root of `kv`
            "multiscale_metadata": {"data_type": "uint16", "num_channels": 1, "type": "image"},
            "scale_metadata": scale,
        },
        create=True,
        kvstore=kv,
        context=precomputed.Context(cache_bytes=0),
    )


def reopen(kv: KvStore, key: str = "s0") -> Any:
    return precomputed.open(
        {
            "driver": "neuroglancer_precomputed",
            "kvstore": {"driver": "memory"},
            "scale_metadata": {"key": key},
        },
        kvstore=kv,
        context=precomputed.Context(cache_bytes=0),
    )


def writes(kv: KvStore) -> Counter[str]:
    assert kv.request_log is not None
    return Counter(k for op, k, _, _ in kv.request_log if op in ("write", "delete"))


@pytest.fixture(params=["sharded", "unsharded"])
def vol(request: pytest.FixtureRequest, memory_store: MemoryKvStore) -> Any:
    v = create(memory_store, RECT if request.param == "sharded" else None)
    v[...] = 1
    return v


# ---------------------------------------------------------------------------------------
# Reads see the buffer; nothing is stored before commit
# ---------------------------------------------------------------------------------------


def test_reads_through_a_transaction_see_dirty_chunks(
    vol: Any, memory_store: MemoryKvStore
) -> None:
    memory_store.request_log = []
    with vol.transaction() as txn:
        vol[2:5, 3:7, 1:2, :] = 7  # partial chunks: read-modify-write into the buffer
        vol[3:4, 0:16, 1:2, :] = 8  # a second partial write over the first
        inside = vol[0:8, 0:8, 0:4].read()
        assert (inside[2:5, 3:7, 1, 0] == np.where(np.arange(2, 5) == 3, 8, 7)[:, None]).all()
        assert (vol[3, 0:16, 1].read() == 8).all()
        assert inside[0, 0, 0, 0] == 1
        # Other views and other openers see the stored data until the commit.
        assert (reopen(memory_store)[2:5, 3:7, 1].read() == 1).all()
        assert not writes(memory_store)
        assert txn.dirty_chunks > 0
    out = reopen(memory_store).read()
    expected = np.ones((*SIZE, 1), np.uint16)
    expected[2:5, 3:7, 1:2] = 7
    expected[3:4, 0:16, 1:2] = 8
    np.testing.assert_array_equal(out, expected)
    assert txn.empty


def test_explicit_transaction_object_with_with_transaction(
    vol: Any, memory_store: MemoryKvStore
) -> None:
    txn = precomputed.Transaction()
    view = vol.with_transaction(txn)
    view[0:4, 0:4, 0:4, :] = 5
    assert (view[0:4, 0:4, 0:4].read() == 5).all()
    assert (vol[0:4, 0:4, 0:4].read() == 1).all()  # the plain view is not in the txn
    stats = txn.commit()
    assert stats.chunks_written == 1
    assert (vol[0:4, 0:4, 0:4].read() == 5).all()


def test_one_transaction_spans_two_scales(memory_store: MemoryKvStore) -> None:
    a = create(memory_store, RECT, key="s0")
    b = create(memory_store, None, key="s1")
    txn = precomputed.Transaction()
    a.with_transaction(txn)[0:4, 0:4, 0:4, :] = 3
    b.with_transaction(txn)[0:4, 0:4, 0:4, :] = 4
    assert txn.dirty_groups() == 2
    assert not a[0:4, 0:4, 0:4].read().any() and not b[0:4, 0:4, 0:4].read().any()
    txn.commit()
    assert (reopen(memory_store, "s0")[0:4, 0:4, 0:4].read() == 3).all()
    assert (reopen(memory_store, "s1")[0:4, 0:4, 0:4].read() == 4).all()


def test_exception_in_the_with_block_discards_the_edits(
    vol: Any, memory_store: MemoryKvStore
) -> None:
    memory_store.request_log = []
    with pytest.raises(RuntimeError, match="boom"), vol.transaction():
        vol[...] = 9
        raise RuntimeError("boom")
    assert not writes(memory_store)
    assert (vol.read() == 1).all()
    with vol.transaction():  # the volume is free for a new transaction
        vol[0, 0, 0] = 2
    assert vol[0, 0, 0].read() == 2


def test_only_one_with_block_transaction_at_a_time(vol: Any) -> None:
    with vol.transaction():
        with pytest.raises(InvalidArgumentError, match="already active"):
            vol.transaction()


def test_each_group_is_written_once_per_commit(memory_store: MemoryKvStore) -> None:
    sharded = create(memory_store, RECT)
    memory_store.request_log = []
    with sharded.transaction() as txn:
        for x in range(0, 16, 2):
            sharded[x : x + 2, 0:16, 0:8, :] = x + 1  # 8 writes over shards 0-3
    assert writes(memory_store) == {f"s0/{s}.shard": 1 for s in range(4)}
    assert txn.last_stats is not None and txn.last_stats.groups_written == 4
    expected = np.zeros((*SIZE, 1), np.uint16)
    for x in range(0, 16, 2):
        expected[x : x + 2, 0:16, 0:8] = x + 1
    np.testing.assert_array_equal(reopen(memory_store).read(), expected)


def test_unsharded_writes_use_the_same_machinery(memory_store: MemoryKvStore) -> None:
    vol = create(memory_store, None)
    memory_store.request_log = []
    progress: list[tuple[int, int]] = []
    with vol.transaction() as txn:
        vol[0:8, 0:4, 0:4, :] = 3
        vol[2:6, 0:4, 0:4, :] = 4
        assert txn.dirty_groups() == 2  # one group per chunk key
        stats = txn.commit(progress=lambda i, n: progress.append((i, n)))
    assert stats.groups_written == 2 and stats.chunks_written == 2
    assert sorted(progress) == [(1, 2), (2, 2)]
    assert writes(memory_store) == {"s0/0-4_0-4_0-4": 1, "s0/4-8_0-4_0-4": 1}
    assert txn.empty
    out = reopen(memory_store)[0:8, 0:4, 0:4].read()
    assert (out[0:2] == 3).all() and (out[2:6] == 4).all() and (out[6:8] == 3).all()


def test_all_zero_chunks_are_deleted_at_commit(vol: Any, memory_store: MemoryKvStore) -> None:
    with vol.transaction() as txn:
        vol[0:4, 0:4, 0:4, :] = 0
    assert txn.last_stats is not None and txn.last_stats.chunks_deleted == 1
    assert not reopen(memory_store)[0:4, 0:4, 0:4].read().any()


# ---------------------------------------------------------------------------------------
# Failures and concurrent edits
# ---------------------------------------------------------------------------------------


class FailingWrites:
    """Makes a store's writes raise while ``failing`` is set."""

    def __init__(self, kv: KvStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.failing = True
        self.attempts = 0
        for name in ("write", "write_conditional"):
            original = getattr(kv, name)

            def wrapper(*args: Any, _original: Any = original) -> Any:
                if args[0] != "info" and self.failing:
                    self.attempts += 1
                    raise OSError("disk on fire")
                return _original(*args)

            monkeypatch.setattr(kv, name, wrapper)


def test_failed_commit_keeps_the_edits_and_a_retry_stores_them(
    vol: Any, memory_store: MemoryKvStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = FailingWrites(memory_store, monkeypatch)
    txn = precomputed.Transaction()
    view = vol.with_transaction(txn)
    view[0:16, 0:8, 0:4, :] = 6  # several groups
    dirty = txn.dirty_chunks
    with pytest.raises(OSError, match="disk on fire"):
        txn.commit()
    assert failing.attempts >= 1
    assert txn.dirty_chunks == dirty  # nothing dropped
    assert (view[0:16, 0:8, 0:4].read() == 6).all()  # still visible through the txn
    assert (reopen(memory_store)[0:16, 0:8, 0:4].read() == 1).all()

    failing.failing = False
    txn.commit()
    assert txn.empty
    assert (reopen(memory_store)[0:16, 0:8, 0:4].read() == 6).all()


def test_failed_with_block_commit_raises_and_keeps_the_edits(
    vol: Any, memory_store: MemoryKvStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = FailingWrites(memory_store, monkeypatch)
    with pytest.raises(OSError), vol.transaction() as txn:
        vol[0:4, 0:4, 0:4, :] = 2
    assert txn.dirty_chunks == 1
    failing.failing = False
    txn.commit()
    assert (reopen(memory_store)[0:4, 0:4, 0:4].read() == 2).all()


def test_partially_failed_commit_forgets_only_the_stored_groups(
    memory_store: MemoryKvStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    vol = create(memory_store, RECT)
    original = memory_store.write

    def write(key: str, data: bytes) -> None:
        if key == "s0/1.shard":
            raise OSError("shard 1 refused")
        original(key, data)

    monkeypatch.setattr(memory_store, "write", write)
    txn = precomputed.Transaction()
    vol.with_transaction(txn)[0:16, 0:8, 0:8, :] = 5  # full shards 0 and 1
    with pytest.raises(OSError, match="shard 1 refused"):
        txn.commit()
    assert sorted(txn.dirty_positions()[vol._h]) == [
        (x, y, z) for x in (2, 3) for y in (0, 1) for z in (0, 1)
    ]
    assert (reopen(memory_store)[0:8, 0:8, 0:8].read() == 5).all()
    monkeypatch.setattr(memory_store, "write", original)
    txn.commit()
    assert (reopen(memory_store)[0:16, 0:8, 0:8].read() == 5).all()


def test_edits_made_while_a_commit_runs_are_not_lost(
    vol: Any, memory_store: MemoryKvStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    txn = precomputed.Transaction()
    view = vol.with_transaction(txn)
    view[0:4, 0:4, 0:4, :] = 10
    entered, release = threading.Event(), threading.Event()
    for name in ("write", "write_conditional"):
        original = getattr(memory_store, name)

        def slow(*args: Any, _original: Any = original) -> Any:
            entered.set()
            assert release.wait(10)
            return _original(*args)

        monkeypatch.setattr(memory_store, name, slow)
    errors: list[BaseException] = []

    def commit() -> None:
        try:
            txn.commit()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    worker = threading.Thread(target=commit)
    worker.start()
    assert entered.wait(10)
    view[0:4, 0:4, 0:4, :] = 11  # the chunk being committed, edited again
    view[8:12, 8:12, 8:12, :] = 12  # a chunk the running commit does not know
    release.set()
    worker.join(10)
    assert not errors
    assert txn.dirty_chunks == 2  # both new edits are still pending
    assert (reopen(memory_store)[0:4, 0:4, 0:4].read() == 10).all()  # first commit stored
    txn.commit()
    assert txn.empty
    out = reopen(memory_store).read()
    assert (out[0:4, 0:4, 0:4] == 11).all() and (out[8:12, 8:12, 8:12] == 12).all()


def test_discard_drops_the_edits(vol: Any, memory_store: MemoryKvStore) -> None:
    txn = precomputed.Transaction()
    vol.with_transaction(txn)[...] = 3
    txn.discard()
    assert txn.empty and txn.commit().groups_written == 0
    assert (reopen(memory_store).read() == 1).all()


# -- rebase: merging the edits with another writer's ------------------------------------------


def test_rebase_merges_another_writers_changes_voxel_by_voxel(memory_store: MemoryKvStore) -> None:
    from precomputed.readpath import fetch

    vol = create(memory_store)
    vol[...] = 1
    txn = precomputed.Transaction()
    mine = vol.with_transaction(txn)
    mine[0:4, 0:4, 0:4, :] = 5  # chunk (0, 0, 0): all of it
    mine[4:6, 0:4, 0:4, :] = 6  # chunk (1, 0, 0): half of it
    mine[8:12, 0:4, 0:4, :] = 7  # chunk (2, 0, 0): undone below
    mine[8:12, 0:4, 0:4, :] = 1
    mine[12:16, 0:4, 0:4, :] = 8  # chunk (3, 0, 0): nobody else touches it
    bases: dict[Any, Any] = {}
    fetch(vol.handle, list(txn.dirty_positions()[vol.handle]), None, bases.__setitem__)
    other = reopen(memory_store)
    other[0:2, 0:4, 0:4, :] = 9  # overlaps ours in chunk (0, 0, 0): ours win there
    other[6:8, 0:4, 0:4, :] = 3  # the other half of chunk (1, 0, 0): merged
    got = {r.position: r for r in txn.rebase(vol.handle, bases)}
    assert {p: r.outcome for p, r in got.items()} == {
        (0, 0, 0): "merged", (1, 0, 0): "merged", (2, 0, 0): "unchanged", (3, 0, 0): "kept"
    }
    assert got[(0, 0, 0)].conflicts == 2 * 4 * 4 and got[(1, 0, 0)].conflicts == 0
    assert (got[(1, 0, 0)].stored[:, :, :, 2:4] == 3).all()  # the new base: as stored now
    assert sorted(txn.dirty_positions()[vol.handle]) == [(0, 0, 0), (1, 0, 0), (3, 0, 0)]
    txn.commit()
    row = reopen(memory_store)[:, 2, 2, 0].read()
    assert row.tolist() == [5] * 4 + [6, 6, 3, 3] + [1] * 4 + [8] * 4


def test_merge_chunk_reads_absent_as_zeros() -> None:
    from precomputed.transaction import merge_chunk

    ours = np.array([1, 0, 2, 0])
    merged, both = merge_chunk(ours, None, np.array([0, 4, 5, 0]))
    assert merged.tolist() == [1, 4, 2, 0] and both == 1  # voxel 2: we wrote 2, they 5
    assert merge_chunk(np.array([0, 4]), np.array([0, 0]), np.array([0, 4])) == (None, 0)


# ---------------------------------------------------------------------------------------
# Other handles of the same scale see what a commit stored
# ---------------------------------------------------------------------------------------


def test_other_handles_in_the_context_forget_a_rewritten_shards_index(
    memory_store: MemoryKvStore,
) -> None:
    vol = create(memory_store)  # no chunk cache: every read goes to the shard
    vol[...] = 1
    ctx = vol.context
    other = precomputed.open(
        {"driver": "neuroglancer_precomputed", "kvstore": {"driver": "memory"}},
        kvstore=memory_store,
        context=ctx,
    )
    assert other.handle is not vol.handle and other.handle in ctx.scales(vol.handle.storage_id)
    assert (other[4:8, 0:4, 0:4, :].read() == 1).all()  # caches the shard's index
    # Rewrite chunk (0, 0, 0) of that shard with data that compresses differently, so
    # every chunk after it moves inside the shard file.
    noise = np.random.default_rng(0).integers(0, 2**16, (4, 4, 4, 1), dtype=np.uint16)
    with vol.transaction():
        vol[0:4, 0:4, 0:4, :] = noise
    np.testing.assert_array_equal(other[0:4, 0:4, 0:4, :].read(), noise)
    assert (other[4:8, 0:8, 0:8, :].read() == 1).all()


def test_refresh_sees_a_write_made_through_another_context(memory_store: MemoryKvStore) -> None:
    vol = create(memory_store)
    vol[...] = 1
    spec = {"driver": "neuroglancer_precomputed", "kvstore": {"driver": "memory"}}
    # recheck_cached_data false: cached chunks are never revalidated, only refresh()
    # makes the reader forget them.
    reader = precomputed.open(
        {**spec, "recheck_cached_data": False}, kvstore=memory_store, context=precomputed.Context()
    )
    checking = precomputed.open(spec, kvstore=memory_store, context=precomputed.Context())
    assert (reader.read() == 1).all()  # its own cache now holds every chunk
    assert (checking.read() == 1).all()
    vol[0:4, 0:4, 0:4, :] = 7  # another context: the reader's cache does not know
    assert (reader[0:4, 0:4, 0:4, :].read() == 1).all()
    # The default (true) revalidates every cached chunk on every read.
    assert (checking[0:4, 0:4, 0:4, :].read() == 7).all()
    reader.refresh()
    assert (reader[0:4, 0:4, 0:4, :].read() == 7).all()
    assert (reader[4:16, :, :, :].read() == 1).all()

"""Sharded scales through the public ``Volume``: reads, writes, conditional writes, errors.

Issue 3. Request counts come from ``KvStore.request_log``; stores are the loopback ones
from conftest.py (memory, file with lock + rename, fake-gcs-server with real
``ifGenerationMatch``). Interoperability with TensorStore is in tests/interop.
"""

from __future__ import annotations

import threading
import time
import tracemalloc
from collections import Counter
from typing import Any

import numpy as np
import pytest

import precomputed
from precomputed import sharding as sh
from precomputed.chunkstore import ShardedChunkStore, ShardedIdStore
from precomputed.errors import ConditionFailedError, CorruptDataError, NotFoundError
from precomputed.kvstore import FileKvStore, KvStore, MemoryKvStore
from volumes import sharding_json

SHARD_DIR = "1_1_1/"
SHARD0 = SHARD_DIR + "0.shard"


def create(
    kv: KvStore,
    size: tuple[int, int, int],
    chunk: tuple[int, int, int],
    sharding: dict[str, Any] | None,
    *,
    dtype: str = "uint8",
    channels: int = 1,
    cache_bytes: int = 0,
    **options: Any,
) -> precomputed.Volume:
    """A new sharded scale at the root of ``kv`` (no decoded-chunk cache by default, so
    every read reaches the store and request counts are exact)."""
    scale: dict[str, Any] = {
        "size": list(size),
        "chunk_size": list(chunk),
        "encoding": "raw",
        "resolution": [1, 1, 1],
    }
    if sharding is not None:
        scale["sharding"] = sharding
    spec = {
        "driver": "neuroglancer_precomputed",
        # The volume lives at the root of the kvstore instance passed below.
        "kvstore": {"driver": "memory"},
        "multiscale_metadata": {"data_type": dtype, "num_channels": channels, "type": "image"},
        "scale_metadata": scale,
    }
    return precomputed.open(
        spec,
        create=True,
        kvstore=kv,
        context=precomputed.Context(cache_bytes=cache_bytes),
        **options,
    )


def reopen(kv: KvStore, **options: Any) -> precomputed.Volume:
    return precomputed.open(
        {"driver": "neuroglancer_precomputed", "kvstore": {"driver": "memory"}},
        kvstore=kv,
        context=precomputed.Context(cache_bytes=0),
        **options,
    )


def store_of(vol: precomputed.Volume) -> ShardedChunkStore:
    store = vol._h.store
    assert isinstance(store, ShardedChunkStore)
    return store


def shard_requests(kv: KvStore) -> list[tuple[str, str, int | None, int | None]]:
    assert kv.request_log is not None
    return [r for r in kv.request_log if r[1].endswith(".shard")]


def random_data(shape: tuple[int, ...], seed: int = 0, dtype: str = "uint8") -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 200, shape).astype(dtype)


# 16^3 voxels in 4^3 chunks: grid 4x4x4, Morton bits (2, 2, 2). preshift 2 + minishard 1 +
# shard 3 = 6 bits: rectangular, minishards of 2x2x1 chunks, 8 shards of 2x2x2 chunks.
SIZE, CHUNK = (16, 16, 16), (4, 4, 4)
RECT = sharding_json(2, 1, 3)
MURMUR = sharding_json(1, 2, 2, hash="murmurhash3_x86_128", data="gzip", index="gzip")


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sharding", [RECT, MURMUR], ids=["identity", "murmurhash-gzip"])
def test_cold_read_costs_at_most_three_ranged_reads_and_a_warm_read_one(
    memory_store: MemoryKvStore, sharding: dict[str, Any]
) -> None:
    data = random_data((*SIZE, 1))
    create(memory_store, SIZE, CHUNK, sharding)[...] = data
    rng = np.random.default_rng(1)
    for gx, gy, gz in rng.integers(0, 4, (5, 3)).tolist():  # five random chunks
        vol = reopen(memory_store)  # cold: empty index caches (and no chunk cache)
        box = np.s_[4 * gx : 4 * gx + 4, 4 * gy : 4 * gy + 4, 4 * gz : 4 * gz + 4, :]
        memory_store.request_log = []
        np.testing.assert_array_equal(vol[box].read(), data[box])
        cold = shard_requests(memory_store)
        # Shard index entry, minishard index, chunk data: ranged reads of one shard file.
        assert len(cold) == 3 and {op for op, *_ in cold} == {"read_range"}
        assert len({key for _, key, _, _ in cold}) == 1

        memory_store.request_log = []
        np.testing.assert_array_equal(vol[box].read(), data[box])
        warm = shard_requests(memory_store)
        assert [op for op, *_ in warm] == ["read_range"]
        if sharding is RECT:
            assert warm[0][3] - warm[0][2] == 4**3  # just the chunk's bytes (raw data)


def test_warm_read_of_another_chunk_in_a_cached_minishard_is_one_request(
    memory_store: MemoryKvStore,
) -> None:
    create(memory_store, SIZE, CHUNK, RECT)[...] = random_data((*SIZE, 1))
    vol = reopen(memory_store)
    vol[0:4, 0:4, 0:4, :].read()  # chunk (0,0,0): minishard 0 = chunks x, y in {0, 1}, z=0
    memory_store.request_log = []
    vol[4:8, 4:8, 0:4, :].read()  # chunk (1,1,0): same minishard, index cached
    assert [op for op, *_ in shard_requests(memory_store)] == ["read_range"]


def test_request_covering_whole_shards_reads_each_in_one_request(
    memory_store: MemoryKvStore,
) -> None:
    data = random_data((*SIZE, 1))
    vol = create(memory_store, SIZE, CHUNK, RECT)
    vol[...] = data
    wx, wy, wz, _ = vol.chunk_layout.write_chunk
    assert (wx, wy, wz) == (8, 8, 8)
    memory_store.request_log = []
    np.testing.assert_array_equal(vol[8:16, 0:8, 8:16, :].read(), data[8:16, 0:8, 8:16])
    assert [op for op, *_ in shard_requests(memory_store)] == ["read"]

    memory_store.request_log = []
    np.testing.assert_array_equal(vol.read(), data)
    reqs = shard_requests(memory_store)
    assert sorted(op for op, *_ in reqs) == ["read"] * 8
    assert len({key for _, key, _, _ in reqs}) == 8


@pytest.mark.parametrize("preshift", [6, 9], ids=["64-chunk-shards", "512-chunk-shards"])
def test_large_reads_fetch_whole_shards_whatever_the_batching(
    memory_store: MemoryKvStore, preshift: int
) -> None:
    # 1024 chunks (more than a read batch), in shards of 64 or 512 chunks that are not
    # contiguous in the x-fastest order of a box's chunks.
    size, chunk = (128, 128, 32), (8, 8, 8)
    data = random_data((*size, 1))
    vol = create(memory_store, size, chunk, sharding_json(preshift, 0, 10 - preshift))
    vol[...] = data
    memory_store.request_log = []
    np.testing.assert_array_equal(vol.read(), data)
    reqs = shard_requests(memory_store)
    assert {op for op, *_ in reqs} == {"read"}
    assert len(reqs) == len({key for _, key, _, _ in reqs}) == 2 ** (10 - preshift)


def test_reading_several_minishards_of_a_shard_fetches_its_index_once(
    memory_store: MemoryKvStore,
) -> None:
    create(memory_store, SIZE, CHUNK, RECT)[...] = random_data((*SIZE, 1))
    vol = reopen(memory_store)
    memory_store.request_log = []
    vol[0:8, 0:8, 0:4, :].read()  # 4 chunks, minishard 0 of shard 0; z=4..8 untouched
    vol[0:4, 0:4, 4:8, :].read()  # minishard 1 of shard 0
    ops = [(op, a, b) for op, _, a, b in shard_requests(memory_store)]
    n = store_of(vol).spec.num_minishards
    assert ops[0] == ("read_range", 0, 16 * n)  # the whole (small) shard index
    # index, minishard 0, its 4 adjacent chunks in one request; then, with the index
    # entry of minishard 1 already known: minishard 1, chunk
    assert len(ops) == 1 + 1 + 1 + 2


def test_a_bad_index_entry_of_another_minishard_fails_only_the_reads_that_need_it(
    memory_store: MemoryKvStore,
) -> None:
    data = random_data((*SIZE, 1))
    create(memory_store, SIZE, CHUNK, RECT)[...] = data
    shard = bytearray(memory_store.read(SHARD0))
    shard[16:32] = (40).to_bytes(8, "little") + (8).to_bytes(8, "little")  # end < start
    memory_store.write(SHARD0, bytes(shard))
    vol = reopen(memory_store)
    # Minishard 0 (z 0..4) reads fine although the whole index, bad entry 1 included, came
    # in the same request; minishard 1 (z 4..8) fails, naming the chunk read.
    np.testing.assert_array_equal(vol[0:8, 0:8, 0:4, :].read(), data[0:8, 0:8, 0:4])
    with pytest.raises(CorruptDataError, match=r"minishard 1"):
        vol[0:4, 0:4, 4:8, :].read()


def test_concurrent_readers_of_one_minishard_load_its_index_once(
    memory_store: MemoryKvStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = random_data((*SIZE, 1))
    create(memory_store, SIZE, CHUNK, MURMUR)[...] = data
    vol = reopen(memory_store)
    slow = memory_store._read_ranges

    def read_ranges(requests: Any) -> Any:
        threading.Event().wait(0.02)  # a remote store: requests take a while
        return slow(requests)

    monkeypatch.setattr(memory_store, "_read_ranges", read_ranges)
    memory_store.request_log = []
    box = (slice(4, 8), slice(0, 4), slice(8, 12), slice(None))
    got: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: got.append(vol[box].read())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8
    for arr in got:
        np.testing.assert_array_equal(arr, data[box])
    # The shard index and the minishard index once; the chunk itself by each reader.
    assert len(shard_requests(memory_store)) == 2 + 8


@pytest.mark.parametrize("span", [64 * 1024, 16])
def test_index_entries_of_several_minishards_come_in_one_span_or_one_each(
    memory_store: MemoryKvStore, monkeypatch: pytest.MonkeyPatch, span: int
) -> None:
    create(memory_store, SIZE, CHUNK, RECT)[...] = random_data((*SIZE, 1))
    monkeypatch.setattr(ShardedIdStore, "INDEX_SPAN_BYTES", span)
    memory_store.coalesce_gap = -1  # the store would merge the adjacent entries anyway
    vol = reopen(memory_store)
    memory_store.request_log = []
    vol[0:4, 0:4, 0:8, :].read()  # chunks (0,0,0) and (0,0,1): minishards 0 and 1
    ranges = [(a, b) for _, _, a, b in shard_requests(memory_store)]
    entries = [(0, 32)] if span > 16 else [(0, 16), (16, 32)]
    assert ranges[: len(entries)] == entries
    assert len(ranges) == len(entries) + 4  # + 2 minishard indices + 2 chunks


def test_index_caches_are_bounded(
    memory_store: MemoryKvStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    create(memory_store, SIZE, CHUNK, RECT)[...] = random_data((*SIZE, 1))
    monkeypatch.setattr(ShardedIdStore, "INDEX_CACHE_ENTRIES", 3)
    vol = reopen(memory_store)
    for x in range(0, 16, 4):
        for y in range(0, 16, 4):
            vol[x : x + 4, y : y + 4, 0:4, :].read()
    store = store_of(vol)
    assert len(store.ids._entries) <= 3 and len(store.ids._minishards) <= 3


def test_many_chunks_are_fetched_concurrently_over_http(tmp_path: Any, http_server: Any) -> None:
    # murmurhash: no whole-shard reads, so each chunk is its own ranged request.
    data = random_data((*SIZE, 1))
    create(FileKvStore(tmp_path), SIZE, CHUNK, MURMUR)[...] = data
    http_server.root = tmp_path
    http_server.latency = 0.05
    vol = precomputed.open(http_server.url + "/", context=precomputed.Context(cache_bytes=0))
    vol.kvstore.coalesce_gap = -1  # one request per chunk (no merging of adjacent ranges)
    np.testing.assert_array_equal(vol.read(), data)
    chunk_reads = [r for r in http_server.requests if r[1].endswith(".shard")]
    assert len(chunk_reads) >= 64
    assert http_server.max_in_flight >= 4  # requests overlapped


class TestMissing:
    """Missing shard, empty shard file, empty minishard, absent id: zeros, or NOT_FOUND
    with ``fill_missing_data_reads=False`` (the option applies to sharded scales too)."""

    @pytest.fixture
    def kv(self, memory_store: MemoryKvStore) -> MemoryKvStore:
        vol = create(memory_store, SIZE, CHUNK, RECT)
        vol[0:4, 0:4, 0:4, :] = 9  # chunk (0,0,0) only: minishard 0 of shard 0
        memory_store.write(SHARD_DIR + "7.shard", b"")  # an empty shard file
        return memory_store

    CASES = {
        "absent id": np.s_[4:8, 0:4, 0:4],  # chunk (1,0,0): minishard 0 of shard 0
        "empty minishard": np.s_[0:4, 0:4, 4:8],  # chunk (0,0,1): minishard 1 of shard 0
        "missing shard": np.s_[8:12, 0:4, 0:4],  # shard 1: no file
        "empty shard file": np.s_[12:16, 12:16, 12:16],  # shard 7
    }

    @pytest.mark.parametrize("case", CASES)
    def test_reads_as_zeros_by_default(self, kv: MemoryKvStore, case: str) -> None:
        vol = reopen(kv)
        assert not vol[self.CASES[case]].read().any()
        assert (vol[0:4, 0:4, 0:4].read() == 9).all()

    @pytest.mark.parametrize("case", CASES)
    def test_not_found_without_fill_missing_data_reads(self, kv: MemoryKvStore, case: str) -> None:
        vol = reopen(kv, fill_missing_data_reads=False)
        with pytest.raises(NotFoundError, match=r"1_1_1/[0-7]\.shard, minishard \d, chunk id"):
            vol[self.CASES[case]].read()
        assert (vol[0:4, 0:4, 0:4].read() == 9).all()
        vol[self.CASES[case]] = 3  # writes treat a missing chunk as zeros
        assert (vol[self.CASES[case]].read() == 3).all()


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def writes_per_shard(kv: KvStore) -> Counter[str]:
    return Counter(key for op, key, _, _ in shard_requests(kv) if op in ("write", "delete"))


def test_transaction_touching_k_shards_writes_exactly_k(memory_store: MemoryKvStore) -> None:
    data = random_data((*SIZE, 1))
    vol = create(memory_store, SIZE, CHUNK, RECT)
    vol[...] = data
    with vol.transaction() as txn:
        # Overlapping partial writes over shards 0, 1, 2 and 3 (x and y halves, z < 8).
        vol[2:10, 3:9, 1:7, :] = 50
        vol[6:14, 1:12, 2:3, :] = 60
        vol[0:1, 0:16, 0:1, :] = 70
        assert txn.dirty_groups() == 4
        assert memory_store.list(SHARD_DIR) == [SHARD_DIR + f"{s}.shard" for s in range(8)]
        memory_store.request_log = []  # count what the commit does
    data[2:10, 3:9, 1:7] = 50
    data[6:14, 1:12, 2:3] = 60
    data[0:1, 0:16, 0:1] = 70
    writes = writes_per_shard(memory_store)
    assert writes == {SHARD_DIR + f"{s}.shard": 1 for s in range(4)}
    reads = Counter(key for op, key, _, _ in shard_requests(memory_store) if op == "read")
    # Read once each: shard 0 too, although every one of its chunks is dirty, since they
    # were written only in part (their other voxels come from the shard as stored at
    # commit time, not from the copy read into the buffer: another writer's are kept).
    assert reads == {SHARD_DIR + f"{s}.shard": 1 for s in range(4)}
    assert txn.last_stats is not None and txn.last_stats.groups_written == 4
    np.testing.assert_array_equal(reopen(memory_store).read(), data)
    # Every chunk of shard 0 written whole: replaced without a read.
    with vol.transaction():
        vol[0:8, 0:8, 0:8, :] = 80
        memory_store.request_log = []
    data[0:8, 0:8, 0:8] = 80
    assert writes_per_shard(memory_store) == {SHARD0: 1}
    assert [key for op, key, _, _ in shard_requests(memory_store) if op == "read"] == []
    np.testing.assert_array_equal(reopen(memory_store).read(), data)


def test_implicit_write_rewrites_each_touched_shard_once(memory_store: MemoryKvStore) -> None:
    data = random_data((*SIZE, 1))
    vol = create(memory_store, SIZE, CHUNK, RECT)
    vol[...] = data
    memory_store.request_log = []
    progress: list[tuple[int, int]] = []
    stats = vol[3:13, 3:13, 3:13, :].write(1, progress=lambda i, n: progress.append((i, n)))
    data[3:13, 3:13, 3:13] = 1
    assert stats is not None and stats.groups_written == 8
    assert progress == [(i, 8) for i in range(1, 9)]
    assert writes_per_shard(memory_store) == {SHARD_DIR + f"{s}.shard": 1 for s in range(8)}
    np.testing.assert_array_equal(reopen(memory_store).read(), data)


def test_write_supplying_every_chunk_of_a_shard_skips_the_read(
    memory_store: MemoryKvStore,
) -> None:
    # TensorStore's FullShardWriteTest: shard 5 holds only 2 (clipped) chunks.
    sharding = sharding_json(1, 2, 3)
    vol = create(memory_store, (4, 6, 10), (2, 2, 2), sharding)
    vol[...] = 1
    memory_store.request_log = []
    vol[0:4, 4:6, 8:10, :] = 2
    assert shard_requests(memory_store) == [("write", SHARD_DIR + "5.shard", None, None)]
    assert (reopen(memory_store)[0:4, 4:6, 8:10].read() == 2).all()


def test_all_zero_chunks_are_dropped_from_the_shard(memory_store: MemoryKvStore) -> None:
    vol = create(memory_store, SIZE, CHUNK, RECT)
    vol[0:8, 0:8, 0:8, :] = 5
    store = store_of(vol)
    spec = sh.ShardingSpec.from_json(RECT)
    before = sh.split_shard(memory_store.read(SHARD_DIR + "0.shard"), spec, "0.shard")
    assert len(before) == 8
    vol[0:4, 0:4, 0:4, :] = 0
    after = sh.split_shard(memory_store.read(SHARD_DIR + "0.shard"), spec, "0.shard")
    (gone,) = set(before) - set(after)
    assert gone == int(store.chunk_ids([(0, 0, 0)])[0]) and len(after) == 7


def test_store_data_equal_to_fill_value_keeps_zero_chunks(memory_store: MemoryKvStore) -> None:
    vol = create(memory_store, SIZE, CHUNK, RECT, store_data_equal_to_fill_value=True)
    vol[0:8, 0:8, 0:8, :] = 0
    spec = sh.ShardingSpec.from_json(RECT)
    assert len(sh.split_shard(memory_store.read(SHARD_DIR + "0.shard"), spec, "k")) == 8


def test_zeroing_a_whole_shard_in_one_write_deletes_it(memory_store: MemoryKvStore) -> None:
    # TensorStore 0.1.86 leaves the old shard in place here (a bug we do not copy).
    vol = create(memory_store, SIZE, CHUNK, RECT)
    vol[...] = 4
    memory_store.request_log = []
    vol[0:8, 0:8, 0:8, :] = 0
    assert shard_requests(memory_store) == [("delete", SHARD_DIR + "0.shard", None, None)]
    assert SHARD_DIR + "0.shard" not in memory_store.list()
    assert not reopen(memory_store)[0:8, 0:8, 0:8].read().any()


def test_shard_left_empty_by_partial_writes_is_deleted(memory_store: MemoryKvStore) -> None:
    vol = create(memory_store, SIZE, CHUNK, RECT)
    vol[1:3, 1:3, 1:3, :] = 4  # one chunk of shard 0
    vol[0:3, 0:3, 0:3, :] = 0  # a partial chunk, now all zero: dropped; shard 0 is empty
    assert memory_store.list(SHARD_DIR) == []
    vol[...] = 0
    assert memory_store.list(SHARD_DIR) == []
    assert not reopen(memory_store).read().any()


def test_writes_to_missing_shards_with_zeros_write_nothing(memory_store: MemoryKvStore) -> None:
    vol = create(memory_store, SIZE, CHUNK, RECT)
    memory_store.request_log = []
    vol[2:6, 2:6, 2:4, :] = 0  # partial chunks of shard 0
    assert writes_per_shard(memory_store) == {}
    assert memory_store.list(SHARD_DIR) == []


# ---------------------------------------------------------------------------------------
# Conditional writes: a concurrent writer between our read and our write is merged
# ---------------------------------------------------------------------------------------


def inject_writer(kv: KvStore, other: precomputed.Volume, box: Any, value: int) -> list[str]:
    """After ``kv``'s next whole-object read with generation, let ``other`` (opened on a
    separate store instance) write ``value`` into ``box`` before we write."""
    original = kv.read_with_generation
    fired: list[str] = []

    def read_with_generation(key: str) -> Any:
        out = original(key)
        if not fired and key.endswith(".shard"):
            fired.append(key)
            other[box] = value
        return out

    kv.read_with_generation = read_with_generation  # type: ignore[method-assign]
    return fired


@pytest.mark.parametrize("kind", ["memory", "file", "s3"])
def test_concurrent_writer_between_read_and_write_is_merged(
    kind: str, memory_store: MemoryKvStore, tmp_path: Any, request: pytest.FixtureRequest
) -> None:
    kv: KvStore
    other_kv: KvStore
    if kind == "memory":
        kv, other_kv = memory_store, MemoryKvStore(memory_store.path)
    elif kind == "file":  # lock file + rename, generation = mtime/inode/size
        kv, other_kv = FileKvStore(tmp_path), FileKvStore(tmp_path)
    else:  # moto: If-Match / If-None-Match on PUT
        bucket = request.getfixturevalue("s3_bucket")
        options = request.getfixturevalue("s3_storage_options")
        kv, other_kv = (
            precomputed.open_kvstore(f"s3://{bucket}/vol/", **options) for _ in range(2)
        )
    vol = create(kv, SIZE, CHUNK, RECT)
    vol[...] = 1
    other = reopen(other_kv)
    fired = inject_writer(kv, other, np.s_[4:8, 0:4, 0:4, :], 2)  # another chunk of shard 0
    stats = vol[0:4, 0:4, 0:4, :].write(3)
    assert fired == [SHARD_DIR + "0.shard"] and stats is not None and stats.retries == 1
    out = reopen(other_kv).read()
    assert (out[0:4, 0:4, 0:4] == 3).all() and (out[4:8, 0:4, 0:4] == 2).all()
    assert (out[8:, :, :] == 1).all()


def test_concurrent_creator_of_a_missing_shard_is_merged(memory_store: MemoryKvStore) -> None:
    vol = create(memory_store, SIZE, CHUNK, RECT)
    other = reopen(MemoryKvStore(memory_store.path))
    inject_writer(memory_store, other, np.s_[4:8, 4:8, 4:8, :], 8)
    stats = vol[0:2, 0:2, 0:2, :].write(6)  # partial chunk: shard 0 read (missing) first
    assert stats is not None and stats.retries == 1
    out = reopen(memory_store).read()
    assert (out[0:2, 0:2, 0:2] == 6).all() and (out[4:8, 4:8, 4:8] == 8).all()


def test_writer_gives_up_after_too_many_conflicts_and_writes_nothing(
    memory_store: MemoryKvStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ShardedIdStore, "MAX_COMMIT_RETRIES", 3)
    vol = create(memory_store, SIZE, CHUNK, RECT)
    vol[...] = 1
    before = memory_store.read(SHARD_DIR + "0.shard")
    monkeypatch.setattr(memory_store, "write_conditional", lambda key, data, gen: None)
    with pytest.raises(ConditionFailedError, match=r'"1_1_1/0\.shard".*3 attempts'):
        vol[0:4, 0:4, 0:4, :] = 2
    assert memory_store.read(SHARD_DIR + "0.shard") == before


def test_gcs_round_trip_with_a_conflicting_concurrent_writer(
    gcs_bucket: str, gcs_storage_options: dict[str, Any]
) -> None:
    kv = precomputed.open_kvstore(f"gs://{gcs_bucket}/vol/", **gcs_storage_options)
    size, chunk = (8, 8, 4), (4, 4, 4)  # 4 chunks, one shard (0/0/0), gzip everything
    vol = create(kv, size, chunk, sharding_json(0, 0, 0, data="gzip", index="gzip"))
    data = random_data((*size, 1))
    vol[...] = data
    other_kv = precomputed.open_kvstore(f"gs://{gcs_bucket}/vol/", **gcs_storage_options)
    other = reopen(other_kv)
    np.testing.assert_array_equal(other.read(), data)

    fired = inject_writer(kv, other, np.s_[4:8, 4:8, 0:4, :], 77)
    kv.request_log = []
    stats = vol[0:4, 0:4, 0:4, :].write(5)
    assert fired == [SHARD0] and stats is not None and stats.retries == 1
    assert [op for op, *_ in shard_requests(kv)] == ["read", "write", "read", "write"]
    data[0:4, 0:4] = 5
    data[4:8, 4:8] = 77
    np.testing.assert_array_equal(reopen(other_kv).read(), data)
    np.testing.assert_array_equal(vol.read(), data)


# ---------------------------------------------------------------------------------------
# Corruption (§7 item 44): clear errors on read and write, nothing written
# ---------------------------------------------------------------------------------------

# 4^3 voxels in 2^3 chunks: chunk id = Morton code of the grid position (ids 0..7);
# preshift 1, minishard 1, shard 1: shard 0 = ids 0-3, minishard 0 = ids 0, 1.
TINY = sharding_json(1, 1, 1)
TINY_GZIP = sharding_json(1, 1, 1, data="gzip", index="gzip")
CHUNK0 = np.s_[0:2, 0:2, 0:2, :]  # id 0, minishard 0
CHUNK1 = np.s_[2:4, 0:2, 0:2, :]  # id 1, minishard 0
CHUNK3 = np.s_[2:4, 2:4, 0:2, :]  # id 3, minishard 1: written whole, so only split_shard


def u64(*values: int) -> bytes:
    return np.array(values, "<u8").tobytes()


def _flip_gzip(blob: bytes, where: str) -> bytes:
    out = bytearray(blob)
    start = int(np.frombuffer(blob[:8], "<u8")[0]) + 32  # minishard 0's index / chunk 0
    if where == "data":
        start = 32
    out[start + 12] ^= 0xFF  # inside the deflate stream, before the crc32
    return bytes(out)


CORRUPT = {
    # name: (sharding, shard bytes from the good shard, chunk read, read error, error when
    # rewriting the shard; None: not an error there)
    "truncated shard": (
        TINY,
        lambda good: good[:3],
        CHUNK0,
        r"chunk 0 in minishard 0 of \"1_1_1/0\.shard\".*Requested byte range \[0, 16\) is not "
        r"valid for value of size 3",
        r"Existing shard has size 3, but expected at least: 32",
    ),
    "truncated before the entry": (
        TINY,
        lambda good: good[:3],
        np.s_[0:2, 2:4, 0:2, :],  # id 2: minishard 1, entry at [16, 32)
        r"chunk 2 in minishard 1 of \"1_1_1/0\.shard\".*\[16, 32\) is not valid for value of "
        r"size 3",
        r"Existing shard has size 3, but expected at least: 32",
    ),
    "reversed range": (
        TINY,
        lambda good: u64(10, 2) + good[16:],
        CHUNK0,
        r"chunk 0.*minishard 0 in \"1_1_1/0\.shard\": Shard index specified invalid byte "
        r"range: \[10, 2\)",
        r"existing shard index entry for minishard 0: Shard index specified invalid byte "
        r"range: \[10, 2\)",
    ),
    "range overflow": (
        TINY,
        lambda good: u64(0, 2**63 - 1) + good[16:],
        CHUNK0,
        r"chunk 0.*minishard 0.*relative to the end of the shard index \(32\) is not valid",
        r"minishard 0.*relative to the end of the shard index \(32\) is not valid",
    ),
    "minishard index out of file": (
        TINY,
        lambda good: u64(0, 48, 0, 0),
        CHUNK0,
        r"chunk 0 in minishard 0 of \"1_1_1/0\.shard\".*Requested byte range \[32, 80\) is not "
        r"valid",
        r"minishard 0: Requested byte range \[32, 80\) is not valid for value of size 32",
    ),
    "bad minishard index length": (
        TINY,
        lambda good: u64(0, 1, 0, 0) + b"\x00",
        CHUNK0,
        r"chunk 0.*minishard 0 in \"1_1_1/0\.shard\": Invalid minishard index length: 1",
        r"minishard 0 in \"1_1_1/0\.shard\": Invalid minishard index length: 1",
    ),
    "minishard entry overflow": (
        TINY,
        lambda good: u64(0, 24, 0, 0) + u64(10, 2**63 - 20, 5),
        CHUNK0,
        r"minishard 0 in \"1_1_1/0\.shard\": Error decoding minishard index entry for chunk 10",
        r"minishard 0 in \"1_1_1/0\.shard\": Error decoding minishard index entry for chunk 10",
    ),
    "chunk out of file": (
        TINY,
        lambda good: u64(0, 24, 0, 0) + u64(1, 0, 100),
        CHUNK1,
        r"chunk 1 in minishard 0 of \"1_1_1/0\.shard\": Requested byte range \[32, 132\) is "
        r"not valid for value of size 56",
        r"Invalid existing byte range for chunk 1: Requested byte range \[32, 132\)",
    ),
    "duplicate chunk id": (
        TINY,
        lambda good: u64(16, 64, 0, 0) + b"A" * 8 + b"B" * 8 + u64(1, 0, 0, 0, 8, 8),
        CHUNK1,  # readable, as in TensorStore: the first entry wins; rewriting is an error
        None,
        r"Chunk 1 occurs more than once in the minishard index for minishard 0",
    ),
    "bad gzip minishard index": (
        TINY_GZIP,
        lambda good: _flip_gzip(good, "index"),
        CHUNK0,
        r"chunk 0.*minishard 0 in \"1_1_1/0\.shard\": Error decoding zlib-compressed data",
        r"minishard 0 in \"1_1_1/0\.shard\": Error decoding zlib-compressed data",
    ),
    "bad gzip chunk data": (
        TINY_GZIP,
        lambda good: _flip_gzip(good, "data"),
        CHUNK0,
        r"chunk 0 in minishard 0 of \"1_1_1/0\.shard\": Error decoding zlib-compressed data",
        None,  # a rewrite keeps other chunks' stored bytes as they are (so does TensorStore)
    ),
}


@pytest.mark.parametrize("case", CORRUPT)
def test_corrupt_shard_read_and_write_errors(memory_store: MemoryKvStore, case: str) -> None:
    sharding, corrupt, read_box, read_error, write_error = CORRUPT[case]
    create(memory_store, (4, 4, 4), (2, 2, 2), sharding)[...] = random_data((4, 4, 4, 1))
    bad = corrupt(memory_store.read(SHARD0))
    memory_store.write(SHARD0, bad)
    vol = reopen(memory_store)
    one_voxel = tuple(slice(s.start, s.start + 1) for s in read_box[:3])
    if read_error is None:
        assert (vol[read_box].read() == ord("A")).all()
        assert (vol.read()[read_box] == ord("A")).all()  # whole-shard read too
    else:
        with pytest.raises(CorruptDataError, match=read_error):
            vol[read_box].read()
        # The whole shard in one request: a structural error names the chunks wanted from
        # it; bad data of one chunk is found when that chunk is decoded, and names it.
        whole_error = (
            read_error
            if case == "bad gzip chunk data"
            else r'chunks 0, 1, 2, 3 of shard "1_1_1/0\.shard"'
        )
        with pytest.raises(CorruptDataError, match=whole_error):
            vol.read()
        with pytest.raises(CorruptDataError, match=read_error):
            vol[one_voxel] = 1  # a partial write reads the chunk first
    assert memory_store.read(SHARD0) == bad
    # A whole-chunk write does not read the chunk: the shard rewrite must parse it all.
    if write_error is None:
        vol[CHUNK3] = 9
        assert (vol[CHUNK3].read() == 9).all()
        chunks = sh.split_shard(memory_store.read(SHARD0), store_of(vol).spec, SHARD0, decode=False)
        assert bytes(chunks[0]) == bytes(
            sh.split_shard(bad, store_of(vol).spec, SHARD0, decode=False)[0]
        )
    else:
        with pytest.raises(
            CorruptDataError,
            match=r'Cannot write chunk 3 to shard "1_1_1/0\.shard" \(nothing was written\): '
            r"the existing shard is corrupt: .*" + write_error,
        ):
            vol[CHUNK3] = 9
        with pytest.raises(CorruptDataError, match=write_error), vol.transaction() as txn:
            vol[CHUNK3] = 9
        assert txn.dirty_chunks == 1  # kept, for a retry once the shard is repaired
        assert memory_store.read(SHARD0) == bad  # byte-identical: nothing was written
    vol[0:4, 0:4, 0:4, :] = 0  # every chunk supplied: replaced (deleted) without a read
    assert memory_store.read(SHARD0) is None


def test_failed_write_leaves_the_shard_file_byte_identical_on_disk(tmp_path: Any) -> None:
    kv = FileKvStore(tmp_path)
    create(kv, (4, 4, 4), (2, 2, 2), TINY)[...] = random_data((4, 4, 4, 1))
    path = tmp_path / "1_1_1" / "0.shard"
    bad = path.read_bytes()[:40]
    path.write_bytes(bad)
    mtime = path.stat().st_mtime_ns
    with pytest.raises(CorruptDataError, match="nothing was written"):
        reopen(kv)[CHUNK3] = 9
    assert path.read_bytes() == bad and path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in path.parent.iterdir()) == ["0.shard", "1.shard"]


# ---------------------------------------------------------------------------------------
# Memory: committing one shard holds about the old and the new shard
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("data_encoding", ["raw", "gzip"])
def test_peak_memory_of_committing_one_shard(tmp_path: Any, data_encoding: str) -> None:
    kv = FileKvStore(tmp_path)
    size, chunk = (128, 128, 128), (32, 32, 32)  # 64 chunks of 32 KiB in one 2 MiB shard
    vol = create(kv, size, chunk, sharding_json(6, 0, 0, data=data_encoding))
    data = np.random.default_rng(3).integers(0, 256, (*size, 1), dtype=np.uint8)
    if data_encoding == "gzip":
        data &= 7  # compressible
    vol[...] = data
    shard_size = (tmp_path / "1_1_1" / "0.shard").stat().st_size
    store = store_of(vol)
    update = {(0, 0, 0): vol._h.encode((0, 0, 0), np.full((1, 32, 32, 32), 9, np.uint8))}

    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        store.commit_group(0, update)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    ratio = peak / shard_size
    print(f"commit of a {shard_size}-byte {data_encoding} shard: peak {peak} B = {ratio:.2f}x")
    assert ratio <= 2.5, ratio  # the old shard (read) + the new one (encoded)
    assert (reopen(kv)[0:32, 0:32, 0:32].read() == 9).all()


def test_commits_run_a_few_shards_at_a_time(
    memory_store: MemoryKvStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from precomputed import transaction

    vol = create(memory_store, SIZE, CHUNK, RECT)
    active = 0
    most = 0
    lock = threading.Lock()
    original = ShardedChunkStore.commit_group

    def commit_group(self: ShardedChunkStore, group: Any, updates: Any) -> Any:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        time.sleep(0.01)
        try:
            return original(self, group, updates)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(ShardedChunkStore, "commit_group", commit_group)
    with vol.transaction():
        vol[...] = 3
    assert 1 < most <= transaction.GROUP_CONCURRENCY
    most = 0
    vol[...] = 4  # implicit transaction: also a few shards at a time
    assert 1 < most <= transaction.GROUP_CONCURRENCY


# ---------------------------------------------------------------------------------------
# Creation and chunk_layout
# ---------------------------------------------------------------------------------------


def test_create_with_explicit_sharding_stores_all_seven_members(
    memory_store: MemoryKvStore,
) -> None:
    vol = create(memory_store, SIZE, CHUNK, {**RECT, "minishard_index_encoding": "gzip"})
    stored = vol.info["scales"][0]["sharding"]
    assert stored == {**RECT, "minishard_index_encoding": "gzip"}
    assert reopen(memory_store).scale.sharding == sh.ShardingSpec.from_json(stored)


@pytest.mark.parametrize(
    "write_chunk, expected_shape",
    [
        ({"elements": 32 * 32 * 16 * 8}, (64, 64, 32)),
        ({"shape": [128, 64, 32, 1]}, (128, 64, 32)),
        ({"shape_soft_constraint": [0, 0, -1, 0]}, None),
    ],
)
def test_automatic_sharding_from_a_write_chunk_target(
    memory_store: MemoryKvStore, write_chunk: dict[str, Any], expected_shape: Any
) -> None:
    size, chunk = (300, 200, 100), (32, 32, 16)
    vol = precomputed.open(
        {
            "driver": "neuroglancer_precomputed",
            "kvstore": {"driver": "memory"},
            "multiscale_metadata": {"data_type": "uint16", "num_channels": 1},
            "scale_metadata": {"size": list(size), "chunk_size": list(chunk)},
            "schema": {"chunk_layout": {"write_chunk": write_chunk}},
        },
        create=True,
        kvstore=memory_store,
        context=precomputed.Context(cache_bytes=0),
    )
    spec = vol.scale.sharding
    assert spec is not None and spec.hash == "identity"
    assert (spec.minishard_index_encoding, spec.data_encoding) == ("gzip", "gzip")
    layout = vol.chunk_layout
    write = layout.write_chunk[:3]
    assert write == sh.write_chunk_shape(spec, size, chunk)
    if expected_shape is not None:
        assert write == expected_shape
    assert layout.read_chunk == (*chunk, 1)
    assert layout.to_json()["write_chunk"] == {"shape": [*write, 1]}
    # One write chunk, aligned to the grid, is exactly one shard: written without a read.
    memory_store.request_log = []
    box = tuple(slice(0, min(w, s)) for w, s in zip(write, size, strict=True))
    vol[box] = 7
    assert [op for op, *_ in shard_requests(memory_store)] == ["write"]


def test_chunk_layout_of_non_rectangular_shards_is_the_whole_volume(
    memory_store: MemoryKvStore, tmp_path: Any
) -> None:
    vol = create(memory_store, (30, 20, 10), CHUNK, MURMUR)
    assert vol.chunk_layout.write_chunk == (32, 20, 12, 1)
    vol = create(FileKvStore(tmp_path), (30, 20, 10), CHUNK, None)
    assert vol.chunk_layout.write_chunk == (*CHUNK, 1)


def test_large_reads_fetch_the_next_batch_while_one_decodes(
    memory_store: MemoryKvStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from precomputed import readpath

    data = random_data((*SIZE, 1))
    create(memory_store, SIZE, CHUNK, MURMUR)[...] = data
    monkeypatch.setattr(readpath, "READ_BATCH", 8)
    vol = reopen(memory_store)
    store = store_of(vol)
    reads: list[int] = []
    second_read_started = threading.Event()
    original_read = store.read_chunks
    original_decode = vol._h.decode

    def read_chunks(positions: Any, **kw: Any) -> Any:
        reads.append(len(positions))
        if len(reads) == 2:
            second_read_started.set()
        return original_read(positions, **kw)

    def decode(pos: Any, blob: Any) -> Any:
        # Decoding the first batch waits for the second batch's fetch to begin: only a
        # pipelined reader can finish (a sequential one would fail here after 10 s).
        assert second_read_started.wait(10)
        return original_decode(pos, blob)

    monkeypatch.setattr(store, "read_chunks", read_chunks)
    monkeypatch.setattr(vol._h, "decode", decode)
    np.testing.assert_array_equal(vol.read(), data)
    assert reads == [8] * 8  # 64 chunks in batches of 8


def test_an_error_in_a_later_batch_is_raised(
    memory_store: MemoryKvStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from precomputed import readpath

    create(memory_store, SIZE, CHUNK, MURMUR)[...] = random_data((*SIZE, 1))
    monkeypatch.setattr(readpath, "READ_BATCH", 8)
    vol = reopen(memory_store)
    original = vol._h.decode
    seen = []

    def decode(pos: Any, blob: Any) -> Any:
        seen.append(pos)
        if len(seen) == 30:
            raise CorruptDataError("bad chunk")
        return original(pos, blob)

    monkeypatch.setattr(vol._h, "decode", decode)
    with pytest.raises(CorruptDataError, match="bad chunk"):
        vol.read()

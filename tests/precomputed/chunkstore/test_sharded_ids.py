"""``ShardedIdStore``: uint64 ids to bytes in shard files, as meshes and segment
properties use it (no chunk grid): batched index lookups, cached minishard indices, one
conditional rewrite per shard."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from precomputed import sharding as sh
from precomputed.chunkstore import ShardedIdStore
from precomputed.errors import CorruptDataError
from precomputed.kvstore import KvStore, MemoryKvStore
from volumes import sharding_json

#: 4 shards of 4 minishards, hashed (ids land in shards in no geometric order).
SPEC = sh.ShardingSpec.from_json(sharding_json(0, 2, 2, "murmurhash3_x86_128", "gzip", "gzip"))
IDS = [1, 2, 3, 10, 77, 1 << 40, (1 << 64) - 1, 123456789]


def blob(i: int) -> bytes:
    return f"value of {i}".encode() * (1 + i % 5)


def store(kv: KvStore) -> ShardedIdStore:
    return ShardedIdStore(kv, "meshes", SPEC)


def shard_writes(kv: KvStore) -> list[str]:
    assert kv.request_log is not None
    return [k for op, k, _, _ in kv.request_log if op == "write"]


def test_round_trip_and_missing_ids(memory_store: MemoryKvStore) -> None:
    s = store(memory_store)
    stats = s.commit({i: blob(i) for i in IDS})
    assert stats.chunks_written == len(IDS)
    got = store(memory_store).read_many([*IDS, 4, 5])
    assert got == [*(blob(i) for i in IDS), None, None]
    # The files are the format's: the chunk-id reader of sharding.py splits them alike.
    found: dict[int, bytes] = {}
    for key in memory_store.list("meshes/"):
        found.update(
            {k: bytes(v) for k, v in sh.split_shard(memory_store.read(key), SPEC, key).items()}
        )
    assert found == {i: blob(i) for i in IDS}


def test_each_shard_is_written_once_per_commit(memory_store: MemoryKvStore) -> None:
    s = store(memory_store)
    memory_store.request_log = []
    s.commit({i: blob(i) for i in IDS})
    shards = {int(x) for x in s.place(IDS).shards}
    writes = shard_writes(memory_store)
    assert sorted(writes) == sorted(s.shard_key(x) for x in shards)  # each once


def test_updates_merge_with_what_is_stored_and_none_deletes(memory_store: MemoryKvStore) -> None:
    s = store(memory_store)
    s.commit({i: blob(i) for i in IDS})
    s.commit({IDS[0]: b"new", IDS[1]: None})
    got = store(memory_store).read_many(IDS)
    assert got[0] == b"new" and got[1] is None
    assert got[2:] == [blob(i) for i in IDS[2:]]
    s.commit(dict.fromkeys(IDS))
    assert memory_store.list("meshes/") == []  # empty shards are deleted


def test_lookups_are_batched_and_indices_cached(memory_store: MemoryKvStore) -> None:
    store(memory_store).commit({i: blob(i) for i in IDS})
    s = store(memory_store)
    memory_store.request_log = []
    s.read_many(IDS)
    cold = memory_store.stats["read_range"]
    shards = len({int(x) for x in s.place(IDS).shards})
    # Per shard: its (small) index whole, the minishard indices, the chunks; ranges of one
    # shard are requested together, so there are at most 3 rounds of requests.
    assert cold <= shards + 2 * len(IDS)
    memory_store.stats.clear()
    assert s.read_many(IDS) == [blob(i) for i in IDS]
    assert memory_store.stats["read_range"] <= len(IDS)  # warm: only the data ranges


def test_a_concurrent_writer_is_merged_not_lost(memory_store: MemoryKvStore) -> None:
    a, b = store(memory_store), store(memory_store)
    start = threading.Barrier(2)

    def write(s: ShardedIdStore, ids: list[int]) -> None:
        start.wait()
        for i in ids:
            s.commit({i: blob(i)})

    # Ids of one shard, split between two writers that rewrite it concurrently.
    same = [i for i in range(2000) if int(shard_of(i)) == 0][:40]
    t = [threading.Thread(target=write, args=(s, same[k::2])) for k, s in enumerate((a, b))]
    for x in t:
        x.start()
    for x in t:
        x.join()
    assert store(memory_store).read_many(same) == [blob(i) for i in same]


def shard_of(i: int) -> int:
    return sh.placement_of_id(i, SPEC)[0]


def test_corrupt_data_names_the_chunk(memory_store: MemoryKvStore) -> None:
    s = store(memory_store)
    s.commit({7: b"x" * 100})
    raw = s.read_many([7], deferred=True)[0]
    assert raw is not None
    with pytest.raises(CorruptDataError, match="chunk 7 in minishard"):
        s.finish(b"not gzip", lambda: 7)
    assert s.finish(raw, lambda: 7) == b"x" * 100


def test_placement_of_few_and_many_ids_agree() -> None:
    s = ShardedIdStore(MemoryKvStore(), "", SPEC)
    many = list(range(0, 3000, 7))
    big = s.place(many)
    for i in range(0, len(many), 8):
        few = s.place(many[i : i + 8])
        assert np.array_equal(few.shards, big.shards[i : i + 8])
        assert np.array_equal(few.minishards, big.minishards[i : i + 8])

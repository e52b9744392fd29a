"""``ShardedIdStore``: uint64 ids to bytes in shard files, as meshes use it (no chunk
grid): batched index lookups, cached minishard indices, one conditional rewrite per shard,
locations without reads and unindexed prefixes.

Oracle: CloudVolume's own shard writer (``synthesize_shard_files``) for what we read, and
CloudVolume's placement (``compute_shard_location``) for where ids go; batching and caching
are proven by the store's request counts."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from precomputed import sharding as sh
from precomputed.chunkstore import Location, ShardedIdStore
from precomputed.errors import CorruptDataError, InvalidArgumentError
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


def cloudvolume_sharding() -> Any:
    return pytest.importorskip("cloudvolume.datasource.precomputed.sharding")


# -- against CloudVolume, and the id-store surface meshes use ----------------------------

SPECS = [
    sharding_json(0, 2, 2, hash="murmurhash3_x86_128"),
    sharding_json(1, 3, 1, hash="identity", data="gzip", index="gzip"),
    sharding_json(0, 0, 0, hash="murmurhash3_x86_128", index="gzip"),
]


def values(n: int, seed: int = 0) -> dict[int, bytes]:
    rng = np.random.default_rng(seed)
    ids = rng.choice(1 << 40, size=n, replace=False).tolist() + [0, (1 << 64) - 1]
    return {int(i): f"value of {i}".encode() * (1 + int(i) % 5) for i in ids}


@pytest.mark.parametrize("spec_json", SPECS)
def test_reads_shards_cloudvolume_wrote(memory_store: MemoryKvStore, spec_json: dict) -> None:
    cv_sharding = cloudvolume_sharding()
    data = values(60)
    cv_spec = cv_sharding.ShardingSpecification.from_dict(dict(spec_json))
    for name, blob in cv_sharding.synthesize_shard_files(cv_spec, data).items():
        memory_store.write(f"mesh/{name}", blob)
    store = ShardedIdStore(memory_store, "mesh/", sh.ShardingSpec.from_json(spec_json))
    ids = list(data) + [12345678901]  # the last one is absent
    got = store.read_many(ids)
    assert got[:-1] == list(data.values())
    assert got[-1] is None
    # Placement agrees with CloudVolume's.
    shards = store.place(ids[:10]).shards
    for i, s in zip(ids[:10], shards.tolist(), strict=True):
        assert (
            store.shard_key(s)
            == "mesh/" + cv_spec.compute_shard_location(i).shard_number + ".shard"
        )


@pytest.mark.parametrize("spec_json", SPECS)
def test_write_then_read_and_cloudvolume_layout(
    memory_store: MemoryKvStore, spec_json: dict
) -> None:
    cv_sharding = cloudvolume_sharding()
    spec = sh.ShardingSpec.from_json(spec_json)
    store = ShardedIdStore(memory_store, "m", spec)
    data = values(40, seed=1)
    stats = store.commit(data)
    assert stats.chunks_written == len(data)
    assert store.read_many(list(data)) == list(data.values())
    # CloudVolume's shard reader finds every value in the files we wrote.
    cv_reader = cv_sharding.ShardReader(
        None, None, cv_sharding.ShardingSpecification.from_dict(dict(spec_json))
    )
    found: dict[int, bytes] = {}
    for key in memory_store.list("m/"):
        found.update(cv_reader.disassemble_shard(memory_store.read(key)))
    assert found == data


def test_merge_keeps_other_entries_and_deletes(memory_store: MemoryKvStore) -> None:
    store = ShardedIdStore(memory_store, "", sh.ShardingSpec.from_json(SPECS[0]))
    data = values(30, seed=2)
    store.commit(data)
    ids = list(data)
    stats = store.commit({ids[0]: b"new", ids[1]: None})
    assert stats.chunks_written == 1 and stats.chunks_deleted == 1
    got = store.read_many(ids)
    assert got[0] == b"new" and got[1] is None and got[2:] == [data[i] for i in ids[2:]]
    # Deleting every id of a shard deletes the shard file.
    store.commit({i: None for i in ids})
    assert not [k for k in memory_store.list() if k.endswith(".shard")]


def test_unindexed_prefixes_are_stored_before_values_and_kept(memory_store: MemoryKvStore) -> None:
    spec = sh.ShardingSpec.from_json(sharding_json(0, 1, 0, hash="identity", data="gzip"))
    store = ShardedIdStore(memory_store, "", spec)
    store.commit({5: b"manifest-5", 6: b"manifest-6"}, prefixes={5: b"FRAGS5", 6: b"F6"})
    loc5, loc6 = store.locate_many([5, 6])
    assert loc5 is not None and loc6 is not None
    shard = memory_store.read(loc5.key)
    assert shard is not None
    assert shard[loc5.start - 6 : loc5.start] == b"FRAGS5"  # raw: never gzipped
    assert shard[loc6.start - 2 : loc6.start] == b"F6"
    # Rewriting 6 keeps 5's prefix when told its size (here: the digit in its manifest).
    store.commit({6: b"manifest-6b"}, prefix_size=lambda i, v: 6 if i == 5 else 0)
    loc5 = store.locate_many([5])[0]
    shard = memory_store.read(loc5.key)
    assert shard[loc5.start - 6 : loc5.start] == b"FRAGS5"
    assert store.read_many([5, 6]) == [b"manifest-5", b"manifest-6b"]


def test_lookups_are_batched_and_cached(memory_store: MemoryKvStore) -> None:
    store = ShardedIdStore(memory_store, "", sh.ShardingSpec.from_json(SPECS[0]))
    data = values(50, seed=3)
    store.commit(data)
    reader = ShardedIdStore(memory_store, "", store.spec)
    memory_store.request_log = []
    reader.read_many(list(data))
    # Three batched steps: shard indices (one per shard: 4 shards), minishard indices, data.
    ranges = [r for r in memory_store.request_log if r[0] == "read_range"]
    shards = {r[1] for r in ranges}
    assert len(shards) == 4
    index_reads = [r for r in ranges if r[2] == 0 and r[3] == store.spec.shard_index_size]
    assert len(index_reads) == 4
    memory_store.request_log = []
    reader.locate_many(list(data))  # all cached: no I/O
    assert memory_store.request_log == []


def test_corrupt_and_hostile_input(memory_store: MemoryKvStore) -> None:
    spec = sh.ShardingSpec.from_json(sharding_json(0, 1, 0, hash="identity"))
    store = ShardedIdStore(memory_store, "", spec)
    store.commit({1: b"a", 2: b"b"})
    key = store.shard_key(0)
    memory_store.write(key, memory_store.read(key)[:20])  # truncated inside the index
    store.invalidate()
    with pytest.raises(CorruptDataError, match=r"0\.shard|minishard"):
        store.read_many([1])
    with pytest.raises(CorruptDataError, match="corrupt"):
        store.commit({3: b"c"})
    with pytest.raises(InvalidArgumentError):
        store.read_many([-1])
    with pytest.raises(InvalidArgumentError):
        store.locate_many(np.array([-5], dtype=np.int64))


def test_check_read_names_the_id() -> None:
    store = ShardedIdStore(MemoryKvStore(), "", sh.ShardingSpec.from_json(SPECS[0]))
    with pytest.raises(CorruptDataError, match="id 7"):
        store.check_read(7, Location("0.shard", 10, 20), b"short")


# -- the two halves together: prefixes under conflicts, concurrent lookups, many shards -------


def test_prefixes_survive_a_conflicting_writer(memory_store: MemoryKvStore) -> None:
    spec = sh.ShardingSpec.from_json(sharding_json(0, 1, 0, hash="identity", data="gzip"))
    ours, theirs = ShardedIdStore(memory_store, "", spec), ShardedIdStore(memory_store, "", spec)
    ours.commit({5: b"5"}, prefixes={5: b"FRAGS5"})
    original = memory_store.read_with_generation
    fired: list[str] = []

    def read_with_generation(key: str) -> Any:
        out = original(key)
        if not fired:  # another writer adds 7 (with its prefix) before we write
            fired.append(key)
            theirs.commit({7: b"7"}, prefixes={7: b"FRAGS7"}, prefix_size=lambda i, v: 6)
        return out

    memory_store.read_with_generation = read_with_generation  # type: ignore[method-assign]
    stats = ours.commit({6: b"6"}, prefixes={6: b"F6"}, prefix_size=lambda i, v: 6)
    assert fired and stats.retries == 1 and stats.chunks_written == 1
    reader = ShardedIdStore(memory_store, "", spec)
    assert reader.read_many([5, 6, 7]) == [b"5", b"6", b"7"]
    locs = reader.locate_many([5, 6, 7])
    shard = memory_store.read(ours.shard_key(0))
    assert shard is not None
    assert all(loc is not None for loc in locs)
    got = [
        shard[loc.start - n : loc.start]  # type: ignore[union-attr]
        for loc, n in zip(locs, (6, 2, 6), strict=True)
    ]
    assert got == [b"FRAGS5", b"F6", b"FRAGS7"]


def test_a_prefix_that_does_not_fit_is_corrupt(memory_store: MemoryKvStore) -> None:
    spec = sh.ShardingSpec.from_json(sharding_json(0, 1, 0, hash="identity"))
    s = ShardedIdStore(memory_store, "", spec)
    s.commit({5: b"5"}, prefixes={5: b"P"})
    before = memory_store.read(s.shard_key(0))
    with pytest.raises(CorruptDataError, match=r"id 5 .*1000 bytes of prefix do not fit"):
        s.commit({6: b"6"}, prefix_size=lambda i, v: 1000)
    assert memory_store.read(s.shard_key(0)) == before  # nothing was written


def test_concurrent_locates_of_one_minishard_load_its_index_once(
    memory_store: MemoryKvStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store(memory_store).commit({i: blob(i) for i in IDS})
    s = store(memory_store)
    slow = memory_store._read_ranges

    def read_ranges(requests: Any) -> Any:
        threading.Event().wait(0.02)  # a remote store: requests take a while
        return slow(requests)

    monkeypatch.setattr(memory_store, "_read_ranges", read_ranges)
    memory_store.request_log = []
    got: list[Any] = []
    threads = [
        threading.Thread(target=lambda: got.append(s.locate_many([IDS[0]]))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and all(g == got[0] and g[0] is not None for g in got)
    assert memory_store.request_log is not None
    assert len(memory_store.request_log) == 2  # the shard index, the minishard index


def test_a_commit_rewrites_its_shards_concurrently(
    memory_store: MemoryKvStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = store(memory_store)
    shards = {int(x) for x in s.place(IDS).shards}
    assert len(shards) > 1
    inside, most = 0, 0
    lock = threading.Lock()
    original = memory_store.read_with_generation

    def read_with_generation(key: str) -> Any:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        threading.Event().wait(0.05)
        with lock:
            inside -= 1
        return original(key)

    monkeypatch.setattr(memory_store, "read_with_generation", read_with_generation)
    stats = s.commit({i: blob(i) for i in IDS})
    assert most > 1 and stats.groups_written == len(shards)
    assert sorted(stats.keys) == sorted(s.shard_key(x) for x in shards)

"""ShardedIdStore: uint64-keyed values in shard files.

Oracle: CloudVolume's own shard writer (``synthesize_shard_files``) for what we read, and
CloudVolume's placement (``compute_shard_location``) for where ids go; batching and caching
are proven by the store's request counts."""

from __future__ import annotations

import numpy as np
import pytest

from precomputed import sharding as sh
from precomputed.errors import CorruptDataError, InvalidArgumentError
from precomputed.kvstore import MemoryKvStore
from precomputed.sharded_ids import Location, ShardedIdStore
from volumes import sharding_json

cv_sharding = pytest.importorskip("cloudvolume.datasource.precomputed.sharding")

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
    shards, _ = store.placement(ids[:10])
    for i, s in zip(ids[:10], shards.tolist(), strict=True):
        assert (
            store.shard_key(s)
            == "mesh/" + cv_spec.compute_shard_location(i).shard_number + ".shard"
        )


@pytest.mark.parametrize("spec_json", SPECS)
def test_write_then_read_and_cloudvolume_layout(
    memory_store: MemoryKvStore, spec_json: dict
) -> None:
    spec = sh.ShardingSpec.from_json(spec_json)
    store = ShardedIdStore(memory_store, "m", spec)
    data = values(40, seed=1)
    stats = store.write(data)
    assert stats.values_written == len(data)
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
    store.write(data)
    ids = list(data)
    stats = store.write({ids[0]: b"new", ids[1]: None})
    assert stats.values_written == 1 and stats.values_deleted == 1
    got = store.read_many(ids)
    assert got[0] == b"new" and got[1] is None and got[2:] == [data[i] for i in ids[2:]]
    # Deleting every id of a shard deletes the shard file.
    store.write({i: None for i in ids})
    assert not [k for k in memory_store.list() if k.endswith(".shard")]


def test_unindexed_prefixes_are_stored_before_values_and_kept(memory_store: MemoryKvStore) -> None:
    spec = sh.ShardingSpec.from_json(sharding_json(0, 1, 0, hash="identity", data="gzip"))
    store = ShardedIdStore(memory_store, "", spec)
    store.write({5: b"manifest-5", 6: b"manifest-6"}, prefixes={5: b"FRAGS5", 6: b"F6"})
    loc5, loc6 = store.locate_many([5, 6])
    assert loc5 is not None and loc6 is not None
    shard = memory_store.read(loc5.key)
    assert shard is not None
    assert shard[loc5.start - 6 : loc5.start] == b"FRAGS5"  # raw: never gzipped
    assert shard[loc6.start - 2 : loc6.start] == b"F6"
    # Rewriting 6 keeps 5's prefix when told its size (here: the digit in its manifest).
    store.write({6: b"manifest-6b"}, prefix_size=lambda i, v: 6 if i == 5 else 0)
    loc5 = store.locate_many([5])[0]
    shard = memory_store.read(loc5.key)
    assert shard[loc5.start - 6 : loc5.start] == b"FRAGS5"
    assert store.read_many([5, 6]) == [b"manifest-5", b"manifest-6b"]


def test_lookups_are_batched_and_cached(memory_store: MemoryKvStore) -> None:
    store = ShardedIdStore(memory_store, "", sh.ShardingSpec.from_json(SPECS[0]))
    data = values(50, seed=3)
    store.write(data)
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
    store.write({1: b"a", 2: b"b"})
    key = store.shard_key(0)
    memory_store.write(key, memory_store.read(key)[:20])  # truncated inside the index
    store.invalidate()
    with pytest.raises(CorruptDataError, match=r"0\.shard|minishard"):
        store.read_many([1])
    with pytest.raises(CorruptDataError, match="corrupt"):
        store.write({3: b"c"})
    with pytest.raises(InvalidArgumentError):
        store.read_many([-1])
    with pytest.raises(InvalidArgumentError):
        store.locate_many(np.array([-5], dtype=np.int64))


def test_check_read_names_the_id() -> None:
    store = ShardedIdStore(MemoryKvStore(), "", sh.ShardingSpec.from_json(SPECS[0]))
    with pytest.raises(CorruptDataError, match="id 7"):
        store.check_read(7, Location("0.shard", 10, 20), b"short")

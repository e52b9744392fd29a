"""The memory store: conformance, plus sharing with fsspec's memory filesystem."""

from __future__ import annotations

import fsspec.config
import pytest
from store_tests import KvStoreTests

from precomputed.kvstore import (
    KvStore,
    MemoryKvStore,
)


class TestMemoryKvStore(KvStoreTests):
    @pytest.fixture
    def store(self, memory_store: MemoryKvStore) -> KvStore:
        return memory_store

    def test_stores_at_different_paths_are_separate(self, memory_store: MemoryKvStore) -> None:
        other = MemoryKvStore(memory_store.path + "-other")
        try:
            memory_store.write("k", b"a")
            assert other.read("k") is None
            assert other.list() == []
        finally:
            other.delete_prefix("")

    def test_data_is_visible_to_fsspec(self, memory_store: MemoryKvStore) -> None:
        memory_store.write("k/v", b"abc")
        assert fsspec.filesystem("memory").cat_file(f"memory://{memory_store.path}/k/v") == b"abc"


def test_pinned_reads_never_mix_versions_while_a_thread_replaces_the_object(
    memory_store: MemoryKvStore,
) -> None:
    import struct
    import threading

    from kv_worker import version_bytes

    from precomputed.errors import GenerationChangedError

    memory_store.write("shard", version_bytes(0))
    stop = threading.Event()
    counts = {"consistent": 0, "changed": 0, "mixed": 0}

    def reader() -> None:
        while not stop.is_set():
            first, gens = memory_store.read_ranges_pinned([("shard", 0, 8)])
            want = struct.unpack("<Q", first[0])[0]  # type: ignore[arg-type]
            try:
                rest, _ = memory_store.read_ranges_pinned(
                    [("shard", 4096, 4104), ("shard", -8, None)], gens
                )
            except GenerationChangedError:
                counts["changed"] += 1
                continue
            seen = {struct.unpack("<Q", b)[0] for b in rest if b}
            counts["consistent" if seen == {want} else "mixed"] += 1

    t = threading.Thread(target=reader)
    t.start()
    try:
        for v in range(1, 3000):
            memory_store.write("shard", version_bytes(v))
    finally:
        stop.set()
        t.join()
    assert counts["mixed"] == 0 and counts["consistent"] > 0, counts

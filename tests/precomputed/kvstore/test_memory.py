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

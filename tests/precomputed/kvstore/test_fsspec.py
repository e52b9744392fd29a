"""The generic fsspec adapter (any other fsspec filesystem): the same contract, best
effort (content-hash generations, check-then-write conditional writes)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import fsspec
import pytest
from store_tests import KvStoreTests

from precomputed.kvstore import FsspecKvStore, KvStore


class TestFsspecKvStore(KvStoreTests):
    @pytest.fixture
    def store(self) -> Iterator[KvStore]:
        store = FsspecKvStore(fsspec.filesystem("memory"), f"/fsspec-{uuid.uuid4().hex[:8]}")
        yield store
        store.delete_prefix("")

    def test_spec_and_url_reopen_the_same_store(self, store: KvStore) -> None:  # type: ignore[override]
        assert store.spec() == {"driver": "fsspec", "url": store.url}  # not a TensorStore driver

    def test_capabilities(self, store: KvStore) -> None:
        assert not store.conditional_writes and not store.cheap_revalidation
        assert store.pinned_reads  # whole reads: one version per call

"""The S3 store against moto: conformance and endpoints."""

from __future__ import annotations

from typing import Any

import pytest
from store_tests import KvStoreTests

from precomputed.kvstore import (
    KvStore,
    S3KvStore,
)


class TestS3KvStore(KvStoreTests):
    @pytest.fixture
    def options(self, s3_storage_options: dict[str, Any]) -> dict[str, Any]:
        return s3_storage_options

    @pytest.fixture
    def store(self, s3_store: KvStore) -> KvStore:
        return s3_store

    def test_spec_names_the_custom_endpoint(self, s3_store: S3KvStore, s3_url: str) -> None:
        assert s3_store.spec() == {
            "driver": "s3",
            "bucket": s3_store.bucket,
            "path": "vol/",
            "endpoint": s3_url,
        }

"""The GCS store against fake-gcs-server: conformance, generations, credentials."""

from __future__ import annotations

from typing import Any

import pytest
from store_tests import KvStoreTests

from precomputed.kvstore import (
    GcsKvStore,
    KvStore,
    open_kvstore,
)


class TestGcsKvStore(KvStoreTests):
    @pytest.fixture
    def options(self, gcs_storage_options: dict[str, Any]) -> dict[str, Any]:
        return gcs_storage_options

    @pytest.fixture
    def store(self, gcs_store: KvStore) -> KvStore:
        return gcs_store

    def test_generation_is_the_gcs_object_generation(self, gcs_store: GcsKvStore) -> None:
        gcs_store.write("g", b"x")
        info = gcs_store.fs.info(f"{gcs_store.bucket}/vol/g")
        assert gcs_store.read_with_generation("g")[1] == str(info["generation"])


def test_gcs_is_anonymous_without_credentials(monkeypatch: Any, tmp_path: Any) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
    assert open_kvstore("gs://bkt/p").fs.credentials.method == "anon"
    store = open_kvstore("gs://bkt/p", token="anon", skip_instance_cache=True)
    assert store.fs.storage_options["token"] == "anon"
    (tmp_path / "application_default_credentials.json").write_text("{}")
    from precomputed.kvstore.open import _have_google_credentials

    assert _have_google_credentials()

"""``open_kvstore``: every spec and URL form, bad specs, fsspec configuration."""

from __future__ import annotations

from typing import Any

import fsspec.config
import pytest

from precomputed.errors import InvalidArgumentError
from precomputed.kvstore import (
    FileKvStore,
    GcsKvStore,
    MemoryKvStore,
    S3KvStore,
    open_kvstore,
)
from servers import RangeServer


def _open_cases(tmp: str, gcs_bucket: str, s3_bucket: str, s3_url: str) -> list[tuple]:
    """(spec or URL, expected class, expected spec())."""
    gcs = {"driver": "gcs", "bucket": gcs_bucket, "path": "p/q/"}
    s3 = {"driver": "s3", "bucket": s3_bucket, "path": "p/", "endpoint": s3_url}
    return [
        (
            {"driver": "file", "path": tmp + "/f"},
            FileKvStore,
            {"driver": "file", "path": tmp + "/f/"},
        ),
        (f"file://{tmp}/f/", FileKvStore, {"driver": "file", "path": tmp + "/f/"}),
        (tmp + "/f", FileKvStore, {"driver": "file", "path": tmp + "/f/"}),
        ({"driver": "memory", "path": "x/"}, MemoryKvStore, {"driver": "memory", "path": "x/"}),
        ("memory://x/y", MemoryKvStore, {"driver": "memory", "path": "x/y/"}),
        ("memory://", MemoryKvStore, {"driver": "memory"}),
        (gcs, GcsKvStore, gcs),
        ({**gcs, "driver": "gs", "path": "p/q"}, GcsKvStore, gcs),
        (f"gs://{gcs_bucket}/p/q", GcsKvStore, gcs),
        (f"gs://{gcs_bucket}", GcsKvStore, {"driver": "gcs", "bucket": gcs_bucket}),
        ({**s3, "aws_region": "us-west-2"}, S3KvStore, {**s3, "aws_region": "us-west-2"}),
        (f"s3://{s3_bucket}/p/", S3KvStore, s3),
    ]


def test_open_kvstore_every_spec_and_url_form(
    tmp_path: Any,
    gcs_bucket: str,
    gcs_storage_options: dict[str, Any],
    s3_bucket: str,
    s3_storage_options: dict[str, Any],
    s3_url: str,
) -> None:
    for spec_or_url, cls, want in _open_cases(str(tmp_path), gcs_bucket, s3_bucket, s3_url):
        driver = want["driver"]
        opts = {"gcs": gcs_storage_options, "s3": s3_storage_options}.get(driver, {})
        store = open_kvstore(spec_or_url, **opts)
        assert type(store) is cls, spec_or_url
        assert store.spec() == want, spec_or_url
        again = open_kvstore(store.spec(), **opts)
        assert again.spec() == want and again.url == store.url
        # The reopened store reaches the same data.
        store.write("k", repr(spec_or_url).encode())
        assert again.read("k") == repr(spec_or_url).encode()
        store.delete("k")


def test_open_kvstore_http_forms(http_server: RangeServer) -> None:
    http_server.objects["/a/b/k"] = b"v"
    for spec_or_url in [
        f"{http_server.url}/a/b",
        f"{http_server.url}/a/b/",
        {"driver": "http", "base_url": http_server.url, "path": "/a/b"},
        {"driver": "http", "base_url": f"{http_server.url}/a", "path": "b/"},
        {"driver": "https", "base_url": f"{http_server.url}/a/b"},
    ]:
        store = open_kvstore(spec_or_url)
        assert store.spec() == {"driver": "http", "base_url": http_server.url, "path": "/a/b/"}
        assert store.read("k") == b"v"


def test_specs_match_tensorstore() -> None:
    ts = pytest.importorskip("tensorstore")
    for url in [
        "gs://bkt/p/",
        "gs://bkt/",
        "s3://bkt/p/",
        "file:///tmp/some/dir/",
        "memory://x/",
        "https://h.example/x/y/",
    ]:
        assert open_kvstore(url).spec() == ts.KvStore.Spec(url).to_json(), url
        assert open_kvstore(url).url == ts.KvStore.Spec(url).url, url


@pytest.mark.parametrize(
    "bad",
    [
        {"driver": "ftp", "path": "x"},
        {"path": "x"},
        {"driver": "file"},
        {"driver": "file", "path": "/x", "colour": "red"},
        {"driver": "gcs", "path": "x/"},
        {"driver": "s3", "bucket": "a/b"},
        {"driver": "http"},
        "ftp://host/x",
        "file://relative/x",
        42,
    ],
)
def test_open_kvstore_rejects_bad_specs(bad: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        open_kvstore(bad)


def test_open_kvstore_returns_store_unchanged(memory_store: MemoryKvStore) -> None:
    assert open_kvstore(memory_store) is memory_store


def test_fsspec_config_supplies_endpoints(
    monkeypatch: Any,
    gcs_url: str,
    gcs_bucket: str,
    s3_bucket: str,
    s3_storage_options: dict[str, Any],
) -> None:
    monkeypatch.setitem(fsspec.config.conf, "gs", {"endpoint_url": gcs_url, "token": "anon"})
    monkeypatch.setitem(fsspec.config.conf, "s3", dict(s3_storage_options))
    gcs = open_kvstore(f"gs://{gcs_bucket}/c")
    gcs.write("k", b"via conf")
    assert gcs.read("k") == b"via conf"
    s3 = open_kvstore(f"s3://{s3_bucket}/c")
    s3.write("k", b"via conf")
    assert s3.read("k") == b"via conf"
    assert s3.spec()["endpoint"] == s3_storage_options["endpoint_url"]

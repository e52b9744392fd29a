"""THE URL parser (``precomputed.kvstore.url``): every URL form, what it becomes, and the
path rules, in one table (docs/driver.md, "URLs", lists the same forms)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from precomputed.errors import InvalidArgumentError
from precomputed.kvstore import open_kvstore
from precomputed.kvstore.url import join_path, kvstore_spec_from_url, normalize_path, parse_url

GCS = {"driver": "gcs", "bucket": "bucket"}
FILE = {"driver": "file", "path": "/"}
MEMORY = {"driver": "memory"}
HOME = os.path.expanduser("~")

#: (url, root kvstore spec, path inside it, kvstore spec of the directory, what
#: ``open_kvstore(url).spec()`` reports, or None where that needs a server). The kvstore
#: spec is what ``open_kvstore(url)`` and a volume spec's ``"kvstore": url`` start from.
FORMS: list[tuple[str, dict[str, Any], str, dict[str, Any], dict[str, Any] | None]] = [
    ("gs://bucket/a/vol", GCS, "a/vol", {**GCS, "path": "a/vol"}, None),
    ("gs://bucket", GCS, "", {**GCS, "path": ""}, None),
    ("gcs://bucket/a", GCS, "a", {**GCS, "path": "a"}, None),
    ("GS://bucket/a/", GCS, "a/", {**GCS, "path": "a/"}, None),
    ("s3://bkt/p/", {"driver": "s3", "bucket": "bkt"}, "p/", {"driver": "s3", "bucket": "bkt", "path": "p/"}, None),
    ("https://h.org:8080/p/q", {"driver": "http", "base_url": "https://h.org:8080"}, "p/q", {"driver": "http", "base_url": "https://h.org:8080/p/q"}, None),
    # The query stays on every request; the path is decoded (keys are encoded again).
    ("http://h/a%20b/?sig=1", {"driver": "http", "base_url": "http://h?sig=1"}, "a b/", {"driver": "http", "base_url": "http://h/a%20b/?sig=1"}, None),
    ("file:///data/v", FILE, "data/v", {"driver": "file", "path": "/data/v"}, {"driver": "file", "path": "/data/v/"}),
    ("file:///data/a%20b/", FILE, "data/a b/", {"driver": "file", "path": "/data/a b/"}, {"driver": "file", "path": "/data/a b/"}),
    ("/abs/dir", FILE, "abs/dir", {"driver": "file", "path": "/abs/dir"}, {"driver": "file", "path": "/abs/dir/"}),
    ("~/vol", FILE, HOME[1:] + "/vol", {"driver": "file", "path": HOME + "/vol"}, {"driver": "file", "path": HOME + "/vol/"}),
    ("memory://x/y", MEMORY, "x/y", {**MEMORY, "path": "x/y"}, {**MEMORY, "path": "x/y/"}),
    ("memory://", MEMORY, "", {**MEMORY, "path": ""}, MEMORY),
    ("precomputed://gs://bucket/v/", GCS, "v/", {**GCS, "path": "v/"}, None),
    ("precomputed://file:///data/v", FILE, "data/v", {"driver": "file", "path": "/data/v"}, {"driver": "file", "path": "/data/v/"}),
    ("precomputed://http://h", {"driver": "http", "base_url": "http://h"}, "", {"driver": "http", "base_url": "http://h"}, None),
    ("file:///data/v/|neuroglancer-precomputed:", FILE, "data/v/", {"driver": "file", "path": "/data/v/"}, {"driver": "file", "path": "/data/v/"}),
    ("memory://x/|neuroglancer_precomputed:", MEMORY, "x/", {**MEMORY, "path": "x/"}, {**MEMORY, "path": "x/"}),
]  # fmt: skip

BAD = [
    "ftp://x/y",  # no store for the scheme
    "gs:///nobucket",
    "s3://",
    "file://relative",  # file URLs are absolute
    "file://localhost/abs",
    "memory://a|zarr:",  # another driver's pipeline
    "precomputed://ftp://x",
]


@pytest.mark.parametrize(("url", "root", "path", "spec", "opened"), FORMS, ids=[f[0] for f in FORMS])
def test_every_url_form(
    url: str, root: dict[str, Any], path: str, spec: dict[str, Any], opened: dict[str, Any] | None
) -> None:
    assert parse_url(url) == (root, path)
    assert kvstore_spec_from_url(url) == spec
    if opened is not None:
        assert open_kvstore(url).spec() == opened


@pytest.mark.parametrize("url", BAD)
def test_unsupported_url_forms_are_invalid_arguments(url: str) -> None:
    with pytest.raises(InvalidArgumentError):
        parse_url(url)
    with pytest.raises(InvalidArgumentError):
        open_kvstore(url)


def test_relative_paths_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_url("vol/a") == (FILE, str(tmp_path / "vol" / "a")[1:])
    assert open_kvstore("vol").spec() == {"driver": "file", "path": str(tmp_path / "vol") + "/"}


def test_unsupported_urls() -> None:
    for url in ("ftp://x/y", "gs:///nobucket", "file://relative", "memory://a|zarr:"):
        with pytest.raises(InvalidArgumentError):
            parse_url(url)


def test_normalize_and_join_path() -> None:
    assert normalize_path("") == "" and normalize_path("/") == ""
    assert normalize_path("vol") == "vol/" and normalize_path("a/b/") == "a/b/"
    assert join_path("a/b", "c") == "a/b/c" and join_path("a/b/", "/c") == "a/b//c"
    assert join_path("", "c") == "c" and join_path("a", "") == "a"

"""The read-only HTTP store against the loopback Range server."""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Callable
from typing import Any

import pytest
from store_tests import DATA, OTHER, ReadableStoreTests

from precomputed.errors import GenerationChangedError, ReadOnlyError, UnimplementedError
from precomputed.kvstore import (
    NO_VALUE,
    UNVERSIONED,
    FileKvStore,
    HttpKvStore,
    open_kvstore,
)
from servers import RangeServer


class TestHttpConformance(ReadableStoreTests):
    """The read-only part of the store contract, with each kind of validator."""

    @pytest.fixture(params=["both", "etag", "last-modified"])
    def store(self, request: Any, http_server: RangeServer) -> HttpKvStore:
        http_server.validators = request.param
        store = open_kvstore(http_server.url + "/vol/")
        assert isinstance(store, HttpKvStore)
        return store

    @pytest.fixture
    def put(self, http_server: RangeServer) -> Callable[[str, bytes], None]:
        # Last-Modified has one-second resolution: give each version its own second.
        seconds = itertools.count(1)
        return lambda key, data: http_server.put(
            "/vol/" + key, data, modified=http_server.started + next(seconds)
        )

    @pytest.fixture
    def remove(self, http_server: RangeServer) -> Callable[[str], None]:
        return lambda key: http_server.objects.pop("/vol/" + key, None) and None


def test_generations_are_etags_else_last_modified(http_server: RangeServer) -> None:
    http_server.put("/k", DATA, modified=1_700_000_000)
    store = open_kvstore(http_server.url + "/")
    assert store.read_with_generation("k")[1] == '"' + __import__("hashlib").md5(DATA).hexdigest() + '"'
    http_server.validators = "last-modified"
    assert store.read_with_generation("k")[1] == "lm:Tue, 14 Nov 2023 22:13:20 GMT"


def test_pinned_reads_send_preconditions(http_server: RangeServer) -> None:
    http_server.put("/k", DATA)
    store = open_kvstore(http_server.url + "/")
    _, gens = store.read_ranges_pinned([("k", 0, 4)])
    http_server.clear_log()
    store.read_ranges_pinned([("k", 10, 14)], gens)
    assert http_server.request_headers[-1]["If-Match"] == gens["k"]
    http_server.validators = "last-modified"
    _, gens = store.read_ranges_pinned([("k", 0, 4)])
    store.read_ranges_pinned([("k", 10, 14)], gens)
    assert http_server.request_headers[-1]["If-Unmodified-Since"] == gens["k"][3:]


def test_revalidation_is_a_conditional_request(http_server: RangeServer) -> None:
    http_server.put("/k", DATA)
    store = open_kvstore(http_server.url + "/")
    _, gen = store.read_with_generation("k")
    http_server.clear_log()
    assert store.read_if_changed("k", gen) is None
    assert http_server.request_headers[-1]["If-None-Match"] == gen
    assert len(http_server.requests) == 1  # one 304, no body
    http_server.validators = "last-modified"
    _, gen = store.read_with_generation("k")
    assert store.read_if_changed("k", gen) is None
    assert http_server.request_headers[-1]["If-Modified-Since"] == gen[3:]


def test_a_server_without_validators_still_serves_reads_but_cannot_pin(
    http_server: RangeServer,
) -> None:
    http_server.validators = "none"
    http_server.put("/k", DATA)
    store = open_kvstore(http_server.url + "/")
    assert store.pinned_reads  # not known before the first answer
    assert store.read_range("k", 3, 9) == DATA[3:9]
    blobs, gens = store.read_ranges_pinned([("k", 0, 4), ("k", 500, 504)])
    assert blobs == [DATA[:4], DATA[500:504]] and gens == {"k": UNVERSIONED}
    assert not store.pinned_reads  # the capability flag says so
    http_server.put("/k", OTHER)
    # Reads pinned to UNVERSIONED cannot be checked: they just read.
    assert store.read_ranges_pinned([("k", 0, 4)], gens)[0] == [OTHER[:4]]
    # Whole reads use a content hash, so revalidation still works (by downloading).
    data, gen = store.read_with_generation("k")
    assert data == OTHER and gen.startswith("h")
    assert store.read_if_changed("k", gen) is None
    http_server.put("/k", DATA)
    assert store.read_if_changed("k", gen) == (DATA, store.read_with_generation("k")[1])
    assert store.read_if_changed("k", UNVERSIONED) is not None  # never "unchanged"


def test_weak_etags_pin_by_comparing_answers(http_server: RangeServer, monkeypatch: Any) -> None:
    """If-Match never matches a weak ETag (RFC 9110), so none is sent; each answer's
    ETag is compared instead."""
    http_server.put("/k", DATA)
    store = open_kvstore(http_server.url + "/")
    _, gens = store.read_ranges_pinned([("k", 0, 4)])
    weak = {"k": "W/" + gens["k"]}
    http_server.clear_log()
    with pytest.raises(GenerationChangedError):  # the server's strong tag differs
        store.read_ranges_pinned([("k", 10, 14)], weak)
    assert "If-Match" not in http_server.request_headers[-1]


class TestHttpKvStore:
    @pytest.fixture
    def store(self, http_server: RangeServer) -> HttpKvStore:
        http_server.objects.update({"/vol/k": DATA, "/vol/d/e f": b"spaced", "/vol/empty": b""})
        store = open_kvstore(http_server.url + "/vol")
        assert isinstance(store, HttpKvStore)
        return store

    def test_reads_and_404_is_none(self, store: HttpKvStore) -> None:
        assert store.read("k") == DATA
        assert store.read("d/e f") == b"spaced"  # keys are percent-encoded
        assert store.read("missing") is None
        assert store.read_range("missing", 2, 4) is None
        assert store.read_with_generation("missing") == (None, NO_VALUE)
        assert store.exists("empty") and not store.exists("missing")

    def test_ranges_use_range_requests_and_clip(
        self, store: HttpKvStore, http_server: RangeServer
    ) -> None:
        http_server.clear_log()
        assert store.read_range("k", 100, 110) == DATA[100:110]
        assert store.read_range("k", -10, None) == DATA[-10:]
        assert store.read_range("k", 1000, 4000) == DATA[1000:]
        assert store.read_range("k", 1024, 4000) == b""  # 416 from the server
        assert store.read_range("empty", 0, 8) == b""
        assert ("GET", "/vol/k", "bytes=100-109") in http_server.requests
        assert ("GET", "/vol/k", "bytes=-10") in http_server.requests

    def test_is_read_only(self, store: HttpKvStore) -> None:
        assert store.read_only
        with pytest.raises(ReadOnlyError):
            store.write("k", b"x")
        with pytest.raises(ReadOnlyError):
            store.write_if("k", b"x", NO_VALUE)
        with pytest.raises(ReadOnlyError):
            store.delete("k")
        with pytest.raises(ReadOnlyError):
            store.delete_prefix("")
        with pytest.raises(UnimplementedError):
            store.list()
        assert store.read("k") == DATA

    def test_batch_reads_are_concurrent(self, store: HttpKvStore, http_server: RangeServer) -> None:
        http_server.latency = 0.02
        http_server.clear_log()
        store.coalesce_gap = -1  # one request per range
        reqs = [("k", i * 20, i * 20 + 5) for i in range(40)]
        assert store.read_ranges(reqs) == [DATA[a:b] for _, a, b in reqs]
        assert len(http_server.requests) == 40
        # Proof of concurrency without a timing assertion: requests overlapped.
        assert http_server.max_in_flight > 1
        http_server.clear_log()
        assert store.read_many(["k", "missing", "d/e f"] * 5) == [DATA, None, b"spaced"] * 5
        assert http_server.max_in_flight > 1

    def test_nearby_ranges_are_fetched_in_one_request(
        self, store: HttpKvStore, http_server: RangeServer
    ) -> None:
        http_server.clear_log()
        reqs = [("k", i * 20, i * 20 + 20) for i in reversed(range(39))] + [("d/e f", 0, 3)]
        assert store.read_ranges(reqs) == [DATA[a:b] for _, a, b in reqs[:-1]] + [b"spa"]
        assert sorted(r[2] for r in http_server.requests) == ["bytes=0-2", "bytes=0-779"]
        assert store.stats["read_range"] == 2
        http_server.clear_log()
        store.coalesce_gap, store.coalesce_limit = 10, 80
        reqs = [("k", 0, 20), ("k", 30, 50), ("k", 60, 80), ("k", 90, 110), ("k", 300, 320)]
        assert store.read_ranges(reqs) == [DATA[a:b] for _, a, b in reqs]
        # 0-80 merged up to the size limit; 300 is beyond the gap.
        assert sorted(r[2] for r in http_server.requests) == [
            "bytes=0-79",
            "bytes=300-319",
            "bytes=90-109",
        ]

    def test_batch_reads_respect_store_concurrency(
        self, store: HttpKvStore, http_server: RangeServer
    ) -> None:
        http_server.latency = 0.01
        http_server.clear_log()
        store.concurrency = 3
        store.coalesce_gap = -1  # one request per range
        store.read_ranges([("k", i, i + 1) for i in range(12)])
        assert 1 < http_server.max_in_flight <= 3

    def test_server_connection_limit(self, store: HttpKvStore, http_server: RangeServer) -> None:
        http_server.latency = 0.005
        http_server.max_connections = 1
        http_server.clear_log()
        store.coalesce_gap = -1  # one request per range
        assert store.read_ranges([("k", i, i + 1) for i in range(6)]) == [
            DATA[i : i + 1] for i in range(6)
        ]
        assert http_server.max_in_flight == 1

    def test_serves_a_local_directory(self, http_server: RangeServer, tmp_path: Any) -> None:
        local = FileKvStore(tmp_path)
        local.write("info", b'{"type": "image"}')
        local.write("8_8_8/0-64_0-64_0-64", DATA)
        http_server.root = tmp_path
        remote = open_kvstore(http_server.url + "/")
        assert remote.read("info") == b'{"type": "image"}'
        assert remote.read_ranges([("8_8_8/0-64_0-64_0-64", 5, 9), ("nope", 0, 1)]) == [
            DATA[5:9],
            None,
        ]
        assert remote.read("../etc/passwd".replace("../", "x/")) is None

    def test_stats_count_requests(self, store: HttpKvStore, http_server: RangeServer) -> None:
        http_server.clear_log()
        store.stats.clear()
        store.read_many(["k", "d/e f", "missing"])
        store.read_ranges([("k", 0, 1), ("k", 1, 2), ("k", 700, 701)])
        # The adjacent ranges travel as one request: stats count requests made.
        assert store.stats == {"read": 3, "read_range": 2}
        assert len(http_server.requests) == 5

    def test_pickled_store_still_works(self, store: HttpKvStore) -> None:
        clone = pickle.loads(pickle.dumps(store))
        assert clone.read_range("k", 3, 6) == DATA[3:6]

    def test_spec(self, store: HttpKvStore, http_server: RangeServer) -> None:
        spec = {"driver": "http", "base_url": http_server.url, "path": "/vol/"}
        assert store.spec() == spec
        assert store.url == http_server.url + "/vol/"
        assert open_kvstore(spec).read("k") == DATA
        with_query = open_kvstore(
            {"driver": "http", "base_url": http_server.url + "?x=1", "path": "vol"}
        )
        assert with_query.url == http_server.url + "/vol/?x=1"
        assert with_query.read("k") == DATA
        assert http_server.requests[-1][1] == "/vol/k?x=1"


def test_an_unpinned_read_that_straddles_a_replacement_is_reread_from_one_version(
    http_server: RangeServer,
) -> None:
    """Ranges of one call that came from two versions are never returned: the store
    re-reads them, held to one version."""
    import threading

    http_server.put("/k", DATA)
    store = open_kvstore(http_server.url + "/", concurrency=1)  # one range after the other
    store.coalesce_gap = -1
    http_server.latency = 0.2  # the first answer is made at ~0.2 s, the second at ~0.4 s
    timer = threading.Timer(0.3, lambda: http_server.put("/k", OTHER))
    timer.start()
    try:
        blobs, gens = store.read_ranges_pinned([("k", 0, 4), ("k", 500, 504)])
    finally:
        timer.cancel()
    made = len(http_server.requests)
    assert blobs == [OTHER[:4], OTHER[500:504]]
    assert gens == {"k": store.read_with_generation("k")[1]}
    assert made >= 4  # the mixed pair was not the answer: it was read again

"""The read-only HTTP store against the loopback Range server."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from store_tests import DATA

from precomputed.errors import ReadOnlyError, UnimplementedError
from precomputed.kvstore import (
    NO_VALUE,
    FileKvStore,
    HttpKvStore,
    open_kvstore,
)
from servers import RangeServer


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

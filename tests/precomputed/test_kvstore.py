"""Conformance tests every KvStore backend runs, plus backend-specific behaviour."""

from __future__ import annotations

import os
import pickle
import threading
from typing import Any

import fsspec.config
import pytest

from precomputed.errors import InvalidArgumentError, ReadOnlyError, UnimplementedError
from precomputed.kvstore import (
    NO_VALUE,
    FileKvStore,
    GcsKvStore,
    HttpKvStore,
    KvStore,
    MemoryKvStore,
    S3KvStore,
    open_kvstore,
)
from precomputed.kvstore.local import LOCK_SUFFIX
from servers import RangeServer

DATA = bytes(range(256)) * 4  # 1024 bytes, every offset distinguishable


def race(fn: Any, n: int) -> list[Any]:
    """Run ``fn(i)`` for i in range(n) on n threads released at the same instant."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        results[i] = fn(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


class KvStoreTests:
    """The behaviour every writable store must have. Subclasses provide the ``store``
    fixture (a fresh, empty store) and ``options`` (storage options to reopen it)."""

    @pytest.fixture
    def options(self) -> dict[str, Any]:
        return {}

    # -- whole-object reads and writes ----------------------------------------------
    def test_missing_key_reads_as_none(self, store: KvStore) -> None:
        assert store.read("nope") is None
        assert store.read_range("nope", 0, 10) is None
        assert store.read_range("nope", 5, 5) is None
        assert store.read_with_generation("nope") == (None, NO_VALUE)
        assert not store.exists("nope")

    def test_write_then_read_round_trips(self, store: KvStore) -> None:
        store.write("a", DATA)
        store.write("dir/sub/b", b"")
        store.write("c", bytearray(b"xyz"))
        assert store.read("a") == DATA
        assert store.read("dir/sub/b") == b""
        assert store.read("c") == b"xyz"
        assert store.exists("dir/sub/b")
        assert not store.exists("dir")  # a "directory" is not a key

    def test_overwrite_replaces_value(self, store: KvStore) -> None:
        store.write("k", DATA)
        store.write("k", b"short")
        assert store.read("k") == b"short"

    def test_invalid_keys_are_rejected(self, store: KvStore) -> None:
        for key in ["", "/abs", "a//b", "../up", "a/./b"]:
            with pytest.raises(InvalidArgumentError):
                store.write(key, b"x")

    # -- ranges -------------------------------------------------------------------------
    def test_read_range_slices(self, store: KvStore) -> None:
        store.write("k", DATA)
        assert store.read_range("k", 10, 20) == DATA[10:20]
        assert store.read_range("k", 1000, None) == DATA[1000:]
        assert store.read_range("k", 0, None) == DATA
        assert store.read_range("k", -24, None) == DATA[-24:]  # suffix

    def test_read_range_past_end_is_clipped_not_an_error(self, store: KvStore) -> None:
        store.write("k", DATA)
        assert store.read_range("k", 1000, 5000) == DATA[1000:]
        assert store.read_range("k", 1024, 2000) == b""
        assert store.read_range("k", 5000, None) == b""
        assert store.read_range("k", 7, 7) == b""
        store.write("empty", b"")
        assert store.read_range("empty", 0, 10) == b""
        assert store.read_range("empty", 3, None) == b""

    def test_read_many_keeps_order_and_marks_missing(self, store: KvStore) -> None:
        keys = [f"m/{i}" for i in range(20)]
        for i, k in enumerate(keys):
            if i % 3:
                store.write(k, str(i).encode())
        got = store.read_many(keys + ["m/x"])
        assert got == [None if i % 3 == 0 else str(i).encode() for i in range(20)] + [None]
        assert store.read_many([]) == []

    def test_read_ranges_keeps_order(self, store: KvStore) -> None:
        store.write("k", DATA)
        reqs = [("k", i * 30, i * 30 + 7) for i in range(34)]
        reqs += [("missing", 0, 4), ("k", 1020, 1100), ("k", 2000, 2001)]
        want = [DATA[a:b] for _, a, b in reqs[:34]] + [None, DATA[1020:], b""]
        assert store.read_ranges(reqs) == want

    # -- delete and list ------------------------------------------------------------------
    def test_delete(self, store: KvStore) -> None:
        store.write("d/k", b"1")
        store.delete("d/k")
        assert store.read("d/k") is None
        store.delete("d/k")  # missing: not an error
        store.delete("never/was")

    def test_delete_many_and_prefix(self, store: KvStore) -> None:
        for k in ["a/1", "a/2", "a/b/3", "ab", "b/1"]:
            store.write(k, b"x")
        store.delete_many(["a/1", "missing"])
        assert store.list() == ["a/2", "a/b/3", "ab", "b/1"]
        store.delete_prefix("a/")
        assert store.list() == ["ab", "b/1"]
        store.delete_prefix("")
        assert store.list() == []

    def test_list_is_relative_sorted_and_prefix_filtered(self, store: KvStore) -> None:
        keys = ["info", "8_8_8/0-64_0-64_0-64", "8_8_8/64-128_0-64_0-64", "16_16_16/0.shard"]
        for k in keys:
            store.write(k, b"x")
        assert store.list() == sorted(keys)
        assert store.list("8_8_8/") == sorted(keys[1:3])
        assert store.list("8_8_8/6") == [keys[2]]
        assert store.list("1") == [keys[3]]
        assert store.list("in") == ["info"]
        assert store.list("zzz/") == []

    # -- generations and conditional writes ---------------------------------------------
    def test_generation_changes_on_write(self, store: KvStore) -> None:
        store.write("g", b"one")
        data, gen1 = store.read_with_generation("g")
        assert data == b"one" and gen1 != NO_VALUE
        store.write("g", b"two")
        data, gen2 = store.read_with_generation("g")
        assert data == b"two" and gen2 not in (gen1, NO_VALUE)

    def test_write_if_no_value_is_create_only(self, store: KvStore) -> None:
        assert store.write_if("c", b"first", NO_VALUE)
        assert not store.write_if("c", b"second", NO_VALUE)
        assert store.read("c") == b"first"

    def test_write_if_with_stale_generation_does_not_overwrite(self, store: KvStore) -> None:
        store.write("s", b"v1")
        _, stale = store.read_with_generation("s")
        assert store.write_if("s", b"v2", stale)
        assert store.read("s") == b"v2"
        assert not store.write_if("s", b"v3", stale)
        assert store.read("s") == b"v2"
        assert not store.write_if("never", b"x", stale)
        assert store.read("never") is None

    def test_conditional_delete(self, store: KvStore) -> None:
        assert store.write_if("absent", None, NO_VALUE)  # "delete if absent" holds trivially
        store.write("d", b"v1")
        _, gen = store.read_with_generation("d")
        assert not store.write_if("d", None, NO_VALUE)
        store.write("d", b"v2")
        assert not store.write_if("d", None, gen)
        assert store.read("d") == b"v2"
        _, gen = store.read_with_generation("d")
        assert store.write_if("d", None, gen)
        assert store.read("d") is None

    def test_racing_conditional_writers_exactly_one_wins(self, store: KvStore) -> None:
        if not store.supports_conditional_writes:
            pytest.skip("no server-side compare-and-swap")
        store.write("race", b"start")
        _, gen = store.read_with_generation("race")
        results = race(lambda i: store.write_if("race", b"writer %d" % i, gen), 6)
        assert sum(results) == 1
        assert store.read("race") == b"writer %d" % results.index(True)

    # -- bookkeeping, pickling and specs ------------------------------------------------
    def test_stats_and_request_log_count_calls(self, store: KvStore) -> None:
        store.stats.clear()
        store.request_log = []
        store.write("k", b"abc")
        store.read("k")
        store.read_range("k", 1, 2)
        store.read_many(["k", "k"])
        store.read_ranges([("k", 0, 1)])
        store.list("")
        store.delete("k")
        assert store.stats == {"write": 1, "read": 3, "read_range": 2, "list": 1, "delete": 1}
        assert store.request_log[:3] == [
            ("write", "k", None, None),
            ("read", "k", None, None),
            ("read_range", "k", 1, 2),
        ]

    def test_pickled_store_still_works(self, store: KvStore) -> None:
        store.write("p", b"pickled")
        store.read_many(["p", "p"])  # create any pools first: they must not be pickled
        clone = pickle.loads(pickle.dumps(store))
        assert clone.read("p") == b"pickled"
        clone.write("q", b"from clone")
        assert store.read("q") == b"from clone"
        assert clone.spec() == store.spec()

    def test_spec_and_url_reopen_the_same_store(
        self, store: KvStore, options: dict[str, Any]
    ) -> None:
        store.write("x/y", b"z")
        for again in (open_kvstore(store.spec(), **options), open_kvstore(store.url, **options)):
            assert type(again) is type(store)
            assert again.spec() == store.spec()
            assert again.url == store.url
            assert again.read("x/y") == b"z"


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


class TestFileKvStore(KvStoreTests):
    @pytest.fixture
    def store(self, file_store: FileKvStore) -> KvStore:
        return file_store

    def test_spec_is_absolute_directory(self, file_store: FileKvStore) -> None:
        assert file_store.spec() == {"driver": "file", "path": file_store.root + "/"}
        assert file_store.url == "file://" + file_store.root + "/"

    def test_generation_is_mtime_inode_size(self, file_store: FileKvStore) -> None:
        file_store.write("g", b"12345")
        st = os.stat(os.path.join(file_store.root, "g"))
        assert file_store.read_with_generation("g")[1] == f"{st.st_mtime_ns}:{st.st_ino}:5"

    def test_writes_leave_no_temporary_files(self, file_store: FileKvStore) -> None:
        for i in range(20):
            file_store.write("a/k", b"%d" % i)
            file_store.write_if("a/k", b"lost", "0:0:0")
        file_store.write_if("a/new", b"1", NO_VALUE)
        assert sorted(os.listdir(os.path.join(file_store.root, "a"))) == ["k", "new"]

    def test_stale_lock_file_from_a_crash_is_reused(self, file_store: FileKvStore) -> None:
        os.makedirs(file_store.root)
        lock = os.path.join(file_store.root, "k" + LOCK_SUFFIX)
        with open(lock, "wb") as f:
            f.write(b"garbage from a crashed writer, longer than the value")
        assert file_store.list() == []
        file_store.write("k", b"ok")
        assert file_store.read("k") == b"ok"
        assert os.listdir(file_store.root) == ["k"]

    def test_reader_never_sees_a_partial_write(self, file_store: FileKvStore) -> None:
        big_a, big_b = b"a" * (1 << 21), b"b" * (1 << 21)
        file_store.write("big", big_a)
        stop = threading.Event()
        seen: set[bytes] = set()

        def reader() -> None:
            while not stop.is_set():
                data = file_store.read("big")
                seen.add(data[:1] + data[-1:] + (b"ok" if data in (big_a, big_b) else b"torn"))

        t = threading.Thread(target=reader)
        t.start()
        try:
            for i in range(30):
                file_store.write("big", big_b if i % 2 == 0 else big_a)
        finally:
            stop.set()
            t.join()
        assert all(s.endswith(b"ok") for s in seen), seen

    def test_racing_creators_exactly_one_wins(self, file_store: FileKvStore) -> None:
        for round_ in range(10):
            key = f"r/{round_}"
            results = race(lambda i, key=key: file_store.write_if(key, b"%d" % i, NO_VALUE), 4)
            assert sum(results) == 1
            assert file_store.read(key) == b"%d" % results.index(True)

    def test_delete_prefix_prunes_empty_directories(self, file_store: FileKvStore) -> None:
        file_store.write("s/a/1", b"x")
        file_store.write("s/b/2", b"x")
        file_store.write("t", b"x")
        file_store.delete_prefix("s/")
        assert os.listdir(file_store.root) == ["t"]
        file_store.write("s/a/1", b"again")  # and a later write recreates them
        assert file_store.read("s/a/1") == b"again"

    def test_lock_suffix_is_reserved(self, file_store: FileKvStore) -> None:
        with pytest.raises(InvalidArgumentError):
            file_store.write("k" + LOCK_SUFFIX, b"x")

    def test_relative_path_becomes_absolute(self, tmp_path: Any, monkeypatch: Any) -> None:
        monkeypatch.chdir(tmp_path)
        store = open_kvstore("rel/dir")
        assert isinstance(store, FileKvStore)
        assert store.spec() == {"driver": "file", "path": f"{tmp_path}/rel/dir/"}


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


# -- HTTP ------------------------------------------------------------------------------------


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


# -- open_kvstore -------------------------------------------------------------------------


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


def test_gcs_is_anonymous_without_credentials(monkeypatch: Any, tmp_path: Any) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
    assert open_kvstore("gs://bkt/p").fs.credentials.method == "anon"
    store = open_kvstore("gs://bkt/p", token="anon", skip_instance_cache=True)
    assert store.fs.storage_options["token"] == "anon"
    (tmp_path / "application_default_credentials.json").write_text("{}")
    from precomputed.kvstore.open import _have_google_credentials

    assert _have_google_credentials()


def test_coalesce_ranges_merges_only_nearby_ranges_of_one_key() -> None:
    from precomputed.kvstore.base import coalesce_ranges

    reqs = [
        ("a", 100, 200),  # 0
        ("a", 0, 100),  # 1: touches 0
        ("b", 0, 10),  # 2: other key
        ("a", 150, 160),  # 3: inside 0
        ("a", 210, 230),  # 4: gap 10 <= its size 20
        ("a", 240, 245),  # 5: gap 10 > its size 5: not merged
        ("a", -10, None),  # 6: suffix read: passed through
        ("a", 300, None),  # 7: open-ended: passed through
    ]
    merged, parts = coalesce_ranges(reqs, gap=64, limit=1 << 20)
    got = {m: sorted(members) for m, (_, members) in zip(merged, parts, strict=True)}
    assert got == {
        ("a", 0, 230): [0, 1, 3, 4],
        ("a", 240, 245): [5],
        ("b", 0, 10): [2],
        ("a", -10, None): [6],
        ("a", 300, None): [7],
    }
    merged, _ = coalesce_ranges(reqs, gap=-1, limit=1 << 20)
    assert ("a", 0, 100) in merged and ("a", 100, 200) in merged  # -1: never merge
    merged, _ = coalesce_ranges(reqs, gap=64, limit=150)
    assert ("a", 0, 100) in merged and ("a", 100, 230) in merged  # split at the limit


def test_file_store_read_ranges_match_slices(tmp_path: Any) -> None:
    store = FileKvStore(tmp_path)
    blob = bytes(range(256)) * 40
    store.write("x/y", blob)
    reqs = [("x/y", a, b) for a, b in [(0, 10), (5, 20), (9000, 20000), (100, 100), (-5, None)]]
    reqs += [("x/missing", 0, 4), ("x", 0, 4)]  # a directory is not a key
    assert store.read_ranges(reqs) == [blob[0:10], blob[5:20], blob[9000:], b"", blob[-5:], None, None]

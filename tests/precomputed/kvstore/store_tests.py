"""The conformance tests every writable KvStore backend runs (``class TestX(KvStoreTests)``
with a ``store`` fixture), shared by the per-store test modules."""

from __future__ import annotations

import pickle
import threading
from typing import Any

import pytest

from precomputed.errors import InvalidArgumentError
from precomputed.kvstore import (
    NO_VALUE,
    KvStore,
    open_kvstore,
)

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
        if not store.conditional_writes:
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

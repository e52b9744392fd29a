"""The conformance tests every KvStore backend runs, like zarr-python's ``StoreTests``.

``ReadableStoreTests`` is what every store must do, read-only HTTP included; its
subclasses provide the fixtures ``store`` (a fresh, empty store), ``put(key, data)`` and
``remove(key)`` (change the stored objects *as another writer would*: for HTTP on the
server, elsewhere through a second store object). ``KvStoreTests`` adds what writable
stores must do (writes, conditional writes and deletes, listing, pickling, specs).
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable
from typing import Any

import pytest

from precomputed.errors import GenerationChangedError, InvalidArgumentError
from precomputed.kvstore import NO_VALUE, KvStore, open_kvstore

DATA = bytes(range(256)) * 4  # 1024 bytes, every offset distinguishable
OTHER = bytes(reversed(DATA))  # another version of the same size

#: Keys that resolve outside the root, or alias another key, on every store.
BAD_KEYS = ["", "/abs", "a//b", "../up", "a/./b", "a/..", "..", ".", "a/", "nul\x00", "back\\slash", "a/../../b"]


def race(fn: Any, n: int) -> list[Any]:
    """Run ``fn(i)`` for i in range(n) on n threads released at the same instant."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(i)
        except BaseException as e:  # re-raised on the test's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


class ReadableStoreTests:
    """Reads, ranges, generations, pinned reads, revalidation, key containment."""

    @pytest.fixture
    def put(self, store: KvStore) -> Callable[[str, bytes], None]:
        """Replace an object as another writer would (default: a second store object)."""
        other = pickle.loads(pickle.dumps(store))
        return lambda key, data: other.write(key, data) and None

    @pytest.fixture
    def remove(self, store: KvStore) -> Callable[[str], None]:
        other = pickle.loads(pickle.dumps(store))
        return other.delete

    # -- reads ----------------------------------------------------------------------------
    def test_missing_key_reads_as_none(self, store: KvStore) -> None:
        assert store.read("nope") is None
        assert store.read_range("nope", 0, 10) is None
        assert store.read_range("nope", 5, 5) is None
        assert store.read_range("nope", -5, None) is None
        assert store.read_with_generation("nope") == (None, NO_VALUE)
        assert store.read_range_with_generation("nope", 0, 4) == (None, NO_VALUE)
        assert store.read_many(["nope"]) == [None]
        assert store.read_ranges([("nope", 0, 1)]) == [None]
        assert store.current_generation("nope") == NO_VALUE
        assert not store.exists("nope")

    def test_read_range_slices(self, store: KvStore, put: Any) -> None:
        put("k", DATA)
        assert store.read("k") == DATA
        assert store.read_range("k", 10, 20) == DATA[10:20]
        assert store.read_range("k", 1000, None) == DATA[1000:]
        assert store.read_range("k", 0, None) == DATA
        assert store.read_range("k", -24, None) == DATA[-24:]  # suffix
        assert store.read_range("k", -5000, None) == DATA  # suffix longer than the object

    def test_read_range_past_end_is_clipped_not_an_error(self, store: KvStore, put: Any) -> None:
        put("k", DATA)
        put("empty", b"")
        assert store.read_range("k", 1000, 5000) == DATA[1000:]
        assert store.read_range("k", 1024, 2000) == b""
        assert store.read_range("k", 5000, None) == b""
        assert store.read_range("k", 7, 7) == b""
        assert store.read("empty") == b""
        assert store.read_range("empty", 0, 10) == b""
        assert store.read_range("empty", 3, None) == b""
        assert store.read_range("empty", -3, None) == b""
        assert store.exists("empty")

    def test_read_many_and_ranges_keep_order(self, store: KvStore, put: Any) -> None:
        put("k", DATA)
        for i in range(1, 6):
            put(f"m/{i}", str(i).encode())
        assert store.read_many([f"m/{i}" for i in range(7)]) == [None, b"1", b"2", b"3", b"4", b"5", None]
        reqs = [("k", i * 30, i * 30 + 7) for i in range(34)]
        reqs += [("missing", 0, 4), ("k", 1020, 1100), ("k", 2000, 2001), ("m/3", 0, None)]
        want = [DATA[a:b] for _, a, b in reqs[:34]] + [None, DATA[1020:], b"", b"3"]
        assert store.read_ranges(reqs) == want
        assert store.read_many([]) == [] and store.read_ranges([]) == []

    def test_streamed_reads_deliver_what_batch_reads_return(self, store: KvStore, put: Any) -> None:
        """read_ranges_each hands over each answer once, the same bytes read_ranges
        (and, pinned, read_ranges_pinned with its generations) returns."""
        put("k", DATA)
        put("m/3", b"3")
        reqs = [("k", i * 30, i * 30 + 7) for i in range(34)]
        reqs += [("missing", 0, 4), ("k", 1020, 1100), ("k", 2000, 2001), ("m/3", 0, None)]
        got: dict[int, tuple[bytes | None, str | None]] = {}
        lock = threading.Lock()

        def deliver(i: int, blob: bytes | None, gen: str | None) -> None:
            with lock:
                assert i not in got, f"request {i} delivered twice"
                got[i] = (blob, gen)

        assert store.read_ranges_each(reqs, deliver) == {}
        assert [got[i] for i in range(len(reqs))] == [(b, None) for b in store.read_ranges(reqs)]
        got.clear()
        gens = store.read_ranges_each(reqs, deliver, pinned=True)
        blobs, want = store.read_ranges_pinned(reqs)
        assert gens == want and want["missing"] == NO_VALUE
        assert [got[i] for i in range(len(reqs))] == [
            (b, want[k]) for (k, _, _), b in zip(reqs, blobs, strict=True)
        ]
        assert store.read_ranges_each([], deliver) == {}

    def test_streamed_pinned_read_detects_a_replacement(self, store: KvStore, put: Any) -> None:
        """Pinned to an older generation: nothing of the new version is delivered, the
        other keys are, and GenerationChangedError names the key that changed."""
        put("shard", DATA)
        put("other", b"unchanged")
        _, gens = store.read_ranges_pinned([("shard", 0, 16), ("other", 0, None)])
        put("shard", OTHER)
        got: dict[int, tuple[bytes | None, str | None]] = {}
        reqs = [("shard", 100, 200), ("other", 0, 4), ("shard", 0, 1)]
        with pytest.raises(GenerationChangedError) as info:
            store.read_ranges_each(reqs, lambda i, b, g: got.__setitem__(i, (b, g)), generations=gens)
        assert set(info.value.changed) == {"shard"}
        assert got == {1: (b"unch", gens["other"])}

    def test_streamed_read_raises_what_deliver_raises(self, store: KvStore, put: Any) -> None:
        put("k", DATA)

        class Stop(Exception):
            pass

        def deliver(i: int, blob: bytes | None, gen: str | None) -> None:
            raise Stop(i)

        with pytest.raises(Stop):
            store.read_ranges_each([("k", 0, 1), ("k", 900, 901)], deliver)

    def test_sized_range_reads_report_every_object_size(self, store: KvStore, put: Any) -> None:
        put("k", DATA)
        put("small", b"abc")
        put("empty", b"")
        reqs = [
            ("k", 10, 20), ("missing", 0, 4), ("k", 900, 1100), ("small", 1, 2),
            ("empty", 0, 8), ("k", 2000, 2002), ("small", -2, None), ("k", 500, 510),
        ]
        blobs, sizes = store.read_ranges_sized(reqs)
        assert blobs == [DATA[10:20], None, DATA[900:], b"b", b"", b"", b"bc", DATA[500:510]]
        assert sizes == {"k": len(DATA), "small": 3, "empty": 0}
        assert store.read_ranges_sized([]) == ([], {})

    def test_pinned_range_reads_report_the_size_of_the_version_read(
        self, store: KvStore, put: Any
    ) -> None:
        put("k", DATA)
        put("small", b"abc")
        put("empty", b"")
        reqs = [
            ("k", 10, 20), ("missing", 0, 4), ("k", 900, 1100), ("small", 1, 2),
            ("empty", 0, 8), ("small", -2, None), ("k", 500, 510),
        ]
        sizes: dict[str, int] = {}
        blobs, gens = store.read_ranges_pinned(reqs, sizes=sizes)
        assert blobs == [DATA[10:20], None, DATA[900:], b"b", b"", b"bc", DATA[500:510]]
        assert sizes == {"k": len(DATA), "small": 3, "empty": 0}
        # pinned to the generation just read, after a replacement: a changed key has no size
        put("small", b"abcdef")
        sizes = {}
        with pytest.raises(GenerationChangedError):
            store.read_ranges_pinned([("small", 0, 2), ("k", 0, 4)], gens, sizes=sizes)
        assert "small" not in sizes
        sizes = {}
        store.read_ranges_pinned([("small", 0, 2)], sizes=sizes)
        assert sizes == {"small": 6}

    def test_sized_range_reads_cost_only_the_range_requests(self, store: KvStore, put: Any) -> None:
        put("k", DATA)
        store.request_log = []
        store.read_ranges_sized([("k", 0, 16), ("k", 512, 600)])
        # the sizes come with the answers: no metadata request, no probe of the size
        assert [op for op, *_ in store.request_log] == ["read_range", "read_range"]

    # -- generations -----------------------------------------------------------------------
    def test_generation_changes_with_the_bytes(self, store: KvStore, put: Any) -> None:
        put("g", DATA)
        data, gen1 = store.read_with_generation("g")
        assert data == DATA and gen1 != NO_VALUE
        assert store.read_range_with_generation("g", 5, 9) == (DATA[5:9], gen1)
        assert store.current_generation("g") == gen1
        put("g", OTHER)
        data, gen2 = store.read_with_generation("g")
        assert data == OTHER and gen2 not in (gen1, NO_VALUE)
        assert store.current_generation("g") == gen2

    def test_pinned_read_returns_one_generation_per_key(self, store: KvStore, put: Any) -> None:
        put("a", DATA)
        put("b", OTHER)
        reqs = [("a", 0, 10), ("b", -4, None), ("a", 500, 600), ("missing", 0, 1), ("a", 1020, None)]
        blobs, gens = store.read_ranges_pinned(reqs)
        assert blobs == [DATA[:10], OTHER[-4:], DATA[500:600], None, DATA[1020:]]
        assert gens == {
            "a": store.read_with_generation("a")[1],
            "b": store.read_with_generation("b")[1],
            "missing": NO_VALUE,
        }
        # Pinned again to what the first call saw: the same bytes.
        assert store.read_ranges_pinned([("a", 100, 110), ("b", 0, 3)], gens) == (
            [DATA[100:110], OTHER[:3]],
            {"a": gens["a"], "b": gens["b"]},
        )

    def test_pinned_read_detects_a_replacement_between_calls(
        self, store: KvStore, put: Any
    ) -> None:
        """The sharded reader's case: index read first, data later; another writer
        replaced the shard in between. No byte of the new version is returned."""
        put("shard", DATA)
        put("other", b"unchanged")
        _, gens = store.read_ranges_pinned([("shard", 0, 16), ("other", 0, None)])
        put("shard", OTHER)
        with pytest.raises(GenerationChangedError) as info:
            store.read_ranges_pinned([("shard", 100, 200), ("other", 0, 4), ("shard", 0, 1)], gens)
        err = info.value
        assert err.key == "shard" and err.expected == gens["shard"]
        assert err.actual in (None, store.read_with_generation("shard")[1])
        assert set(err.changed) == {"shard"}
        assert err.results is not None
        assert err.results[0] == [None, b"unch", None]  # the other key's bytes survive
        assert err.results[1] == {"other": gens["other"]}
        # Unpinned, the new version reads normally.
        assert store.read_ranges_pinned([("shard", 100, 104)])[0] == [OTHER[100:104]]

    def test_pinned_read_detects_deletion_and_creation(
        self, store: KvStore, put: Any, remove: Any
    ) -> None:
        put("gone", DATA)
        _, gens = store.read_ranges_pinned([("gone", 0, 1), ("new", 0, 1)])
        assert gens["new"] == NO_VALUE
        remove("gone")
        put("new", DATA)
        with pytest.raises(GenerationChangedError) as info:
            store.read_ranges_pinned([("gone", 0, 1), ("new", 0, 1)], gens)
        assert set(info.value.changed) == {"gone", "new"}
        assert info.value.changed["gone"][1] in (None, NO_VALUE)

    def test_revalidation(self, store: KvStore, put: Any, remove: Any) -> None:
        put("r", DATA)
        data, gen = store.read_with_generation("r")
        assert store.read_if_changed("r", gen) is None  # unchanged
        put("r", OTHER)
        got = store.read_if_changed("r", gen)
        assert got is not None and got[0] == OTHER and got[1] not in (gen, NO_VALUE)
        assert store.read_if_changed("r", got[1]) is None
        remove("r")
        assert store.read_if_changed("r", got[1]) == (None, NO_VALUE)
        assert store.read_if_changed("r", NO_VALUE) is None  # still absent
        put("r", DATA)
        again = store.read_if_changed("r", NO_VALUE)
        assert again is not None and again[0] == DATA

    # -- keys ---------------------------------------------------------------------------------
    @pytest.mark.parametrize("key", BAD_KEYS)
    def test_keys_outside_the_root_are_rejected_before_any_io(self, store: KvStore, key: str) -> None:
        store.request_log = []
        calls = [
            lambda: store.read(key),
            lambda: store.read_range(key, 0, 1),
            lambda: store.read_many(["ok", key]),
            lambda: store.read_ranges([("ok", 0, 1), (key, 0, 1)]),
            lambda: store.read_with_generation(key),
            lambda: store.read_ranges_pinned([(key, 0, 1)]),
            lambda: store.read_if_changed(key, NO_VALUE),
            lambda: store.current_generation(key),
            lambda: store.exists(key),
        ]
        if not store.read_only:
            calls += [
                lambda: store.write(key, b"x"),
                lambda: store.write_if(key, b"x", NO_VALUE),
                lambda: store.write_conditional(key, None, NO_VALUE),
                lambda: store.delete(key),
                lambda: store.delete_many(["ok", key]),
            ]
        for call in calls:
            with pytest.raises(InvalidArgumentError):
                call()
        assert store.request_log == []

    @pytest.mark.parametrize("prefix", ["../", "a/../../", "/abs/", "a//", "x\x00", "..\\"])
    def test_prefixes_outside_the_root_are_rejected(self, store: KvStore, prefix: str) -> None:
        with pytest.raises(InvalidArgumentError):
            store.list(prefix)
        with pytest.raises(InvalidArgumentError):
            store.delete_prefix(prefix)


class KvStoreTests(ReadableStoreTests):
    """The behaviour every writable store must have. Subclasses provide the ``store``
    fixture (a fresh, empty store) and ``options`` (storage options to reopen it)."""

    @pytest.fixture
    def options(self) -> dict[str, Any]:
        return {}

    # -- whole-object reads and writes ----------------------------------------------
    def test_write_then_read_round_trips(self, store: KvStore) -> None:
        store.write("a", DATA)
        store.write("dir/sub/b", b"")
        store.write("c", bytearray(b"xyz"))
        assert store.read("a") == DATA
        assert store.read("dir/sub/b") == b""
        assert store.read("c") == b"xyz"
        assert store.exists("dir/sub/b")
        assert not store.exists("dir")  # a "directory" is not a key
        assert store.read_with_generation("dir") == (None, NO_VALUE)

    def test_overwrite_replaces_value(self, store: KvStore) -> None:
        store.write("k", DATA)
        store.write("k", b"short")
        assert store.read("k") == b"short"

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

    # -- generations of writes ---------------------------------------------------------------
    def test_every_write_returns_the_generation_reads_report(self, store: KvStore) -> None:
        seen = set()
        for i in range(5):
            gen = store.write("g", b"version %d" % i)
            assert gen not in seen and gen != NO_VALUE
            seen.add(gen)
            assert store.read_with_generation("g") == (b"version %d" % i, gen)
            assert store.current_generation("g") == gen
        new = store.write_conditional("g", b"conditional", gen)
        assert new is not None and new not in seen
        assert store.read_with_generation("g") == (b"conditional", new)
        assert store.read_if_changed("g", new) is None  # a cache can store it as is

    # -- conditional writes --------------------------------------------------------------
    def test_write_if_no_value_is_create_only(self, store: KvStore) -> None:
        assert store.write_if("c", b"first", NO_VALUE)
        assert not store.write_if("c", b"second", NO_VALUE)
        assert store.write_conditional("c", b"third", NO_VALUE) is None
        assert store.read("c") == b"first"

    def test_write_if_with_stale_generation_does_not_overwrite(self, store: KvStore) -> None:
        store.write("s", b"v1")
        _, stale = store.read_with_generation("s")
        assert store.write_if("s", b"v2", stale)
        assert store.read("s") == b"v2"
        assert not store.write_if("s", b"v3", stale)
        assert store.write_conditional("s", b"v3", stale) is None
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
        assert store.write_conditional("d", None, gen) == NO_VALUE
        assert store.read("d") is None
        assert store.write_conditional("d", None, gen) is None  # gone: the generation is stale

    def test_racing_conditional_writers_exactly_one_wins(self, store: KvStore) -> None:
        if not store.conditional_writes:
            pytest.skip("no server-side compare-and-swap")
        store.write("race", b"start")
        _, gen = store.read_with_generation("race")
        results = race(lambda i: store.write_if("race", b"writer %d" % i, gen), 6)
        assert sum(results) == 1
        assert store.read("race") == b"writer %d" % results.index(True)

    def test_racing_read_modify_write_loses_no_update(self, store: KvStore) -> None:
        """Threads incrementing one counter with conditional writes: every increment
        survives (the losers re-read and retry)."""
        if not store.conditional_writes:
            pytest.skip("no server-side compare-and-swap")
        store.write("counter", b"0")

        def increment(_: int) -> int:
            tries = 0
            for _ in range(4):
                while True:
                    tries += 1
                    data, gen = store.read_with_generation("counter")
                    assert data is not None
                    if store.write_if("counter", b"%d" % (int(data) + 1), gen):
                        break
            return tries

        tries = race(increment, 4)
        assert store.read("counter") == b"16"
        assert sum(tries) >= 16

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

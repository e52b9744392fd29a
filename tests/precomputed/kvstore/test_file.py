"""The local-file store: conformance, atomic and conditional writes, ranged reads."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
from store_tests import KvStoreTests, race

from precomputed.errors import InvalidArgumentError
from precomputed.kvstore import (
    NO_VALUE,
    FileKvStore,
    KvStore,
    open_kvstore,
)
from precomputed.kvstore.file import LOCK_SUFFIX


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


def test_file_store_read_ranges_match_slices(tmp_path: Any) -> None:
    store = FileKvStore(tmp_path)
    blob = bytes(range(256)) * 40
    store.write("x/y", blob)
    reqs = [("x/y", a, b) for a, b in [(0, 10), (5, 20), (9000, 20000), (100, 100), (-5, None)]]
    reqs += [("x/missing", 0, 4), ("x", 0, 4)]  # a directory is not a key
    assert store.read_ranges(reqs) == [blob[0:10], blob[5:20], blob[9000:], b"", blob[-5:], None, None]


def test_os_errors_are_library_errors_naming_the_key(file_store: FileKvStore) -> None:
    from precomputed.errors import StorageError

    file_store.write("a", b"x")
    with pytest.raises(StorageError, match=r"writing file://.*/a/b: "):
        file_store.write("a/b", b"y")  # "a" is a file, not a directory
    assert file_store.read("a/b") is None  # ...and reading there is just a missing key
    file_store.write("d/e", b"x")
    with pytest.raises(StorageError, match=r"writing file://.*/d: "):
        file_store.write("d", b"y")  # "d" is a directory
    assert file_store.read("d") is None and file_store.read("d/e") == b"x"

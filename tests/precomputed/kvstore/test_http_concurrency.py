"""Reads through the HTTP store from many threads overlap on the server: nothing in the
store serialises them (counted in flight by the server, never timed)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

import precomputed
from precomputed import Context
from precomputed.kvstore import HttpKvStore, open_kvstore
from servers import RangeServer
from volumes import volume_spec

DATA = bytes(range(256)) * 4  # 1024 bytes, every offset distinguishable


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


@pytest.fixture
def store(http_server: RangeServer) -> HttpKvStore:
    http_server.objects.update({f"/vol/k{i}": DATA[i:] for i in range(32)})
    http_server.objects["/vol/empty"] = b""
    store = open_kvstore(http_server.url + "/vol")
    assert isinstance(store, HttpKvStore)
    return store


# -- concurrency -----------------------------------------------------------------------------


def test_threads_reading_single_keys_overlap_on_the_server(
    store: HttpKvStore, http_server: RangeServer
) -> None:
    http_server.latency = 0.2  # long enough that every thread's request starts in time
    http_server.clear_log()
    n = 16
    got = race(lambda i: store.read(f"k{i}"), n)
    assert got == [DATA[i:] for i in range(n)]
    assert len(http_server.requests) == n
    # Counted on the server, no timing assertion: requests really were in flight together.
    assert http_server.max_in_flight >= 12


def test_threads_reading_ranges_overlap_on_the_server(
    store: HttpKvStore, http_server: RangeServer
) -> None:
    http_server.latency = 0.2
    http_server.clear_log()
    got = race(lambda i: store.read_ranges([(f"k{i}", 1, 5)]), 16)
    assert got == [[DATA[i + 1 : i + 5]] for i in range(16)]
    assert http_server.max_in_flight >= 12


def test_volume_read_from_many_threads_keeps_requests_in_flight(
    tmp_path: Any, http_server: RangeServer
) -> None:
    """The benchmark's pattern: threads each reading one whole chunk of an unsharded volume."""
    chunk = 8
    data = np.arange(32 * 32 * 16, dtype=np.uint32).reshape(32, 32, 16, 1, order="F")
    spec = volume_spec(
        {"driver": "file", "path": str(tmp_path) + "/"}, "uint32",
        size=[32, 32, 16], chunk_size=[chunk] * 3, resolution=[1, 1, 1], encoding="raw",
    )  # fmt: skip
    precomputed.open(spec, create=True)[...] = data
    http_server.root = tmp_path
    vol = precomputed.open(f"{http_server.url}/", context=Context(cache_bytes=0))
    http_server.latency = 0.2
    http_server.clear_log()
    boxes = [(x, y, 0) for x in range(0, 32, chunk) for y in range(0, 32, chunk)]  # 16
    got = race(lambda i: vol[(*(slice(a, a + chunk) for a in boxes[i]), 0)].read(), 16)
    for (x, y, z), arr in zip(boxes, got, strict=True):
        np.testing.assert_array_equal(arr, data[x : x + chunk, y : y + chunk, z : z + chunk, 0])
    assert len(http_server.requests) == 16
    assert http_server.max_in_flight >= 12

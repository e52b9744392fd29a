"""Reads over a network decode each chunk as its answer arrives (``readpath.fetch`` on
``ChunkStore.read_chunks_each``): with one chunk's answer held back by the server, every
other chunk is decoded (and cached) before it arrives, and the read then completes with
the right voxels. Order is proven with events (what the server holds, what has been
decoded), never with timings."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import precomputed
from precomputed import Context, NotFoundError
from servers import RangeServer
from volumes import sharding_json, volume_spec

SIZE, CHUNK = (64, 64, 16), (16, 16, 16)  # 16 chunks in one z layer
POSITIONS = [(x, y, 0) for x in range(4) for y in range(4)]


class GatedServer(RangeServer):
    """A RangeServer that holds back the requests ``hold(path, range)`` picks until
    ``gate`` is set (``held`` is set once one arrived), then answers them normally."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hold: Callable[[str, str | None], bool] = lambda path, rng: False
        self.gate = threading.Event()
        self.held = threading.Event()

    def _intercept(self, h: Any, body: bool) -> bool:
        if h.command == "GET" and self.hold(h.path, h.headers.get("Range")):
            self.held.set()
            self.gate.wait(60)
        return False


def build(root: Path, encoding: str, dtype: str, sharding: Any = None) -> np.ndarray:
    scale: dict[str, Any] = {"size": list(SIZE), "chunk_size": list(CHUNK), "encoding": encoding}
    if encoding == "compressed_segmentation":
        scale["compressed_segmentation_block_size"] = [8, 8, 8]
    if sharding:
        scale["sharding"] = sharding
    vol = precomputed.open(
        volume_spec({"driver": "file", "path": str(root)}, dtype, **scale), create=True
    )
    data = np.random.default_rng(3).integers(1, 50, (*SIZE, 1)).astype(dtype)
    vol[...] = data
    return data


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Wait (at most a minute, polling) for ``condition``: an event, not a timing."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


def start_read(vol: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["data"] = vol.read()
        except BaseException as e:  # handed to the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


@pytest.mark.parametrize("encoding, dtype", [("compressed_segmentation", "uint64"), ("raw", "uint16")])
def test_unsharded_chunks_are_decoded_while_one_is_still_on_the_way(
    tmp_path: Path, encoding: str, dtype: str
) -> None:
    """Versioned reads (the cache on, as by default): 15 of 16 chunks are decoded and
    cached, each with its generation, while the server still holds the 16th."""
    root = tmp_path / "vol"
    data = build(root, encoding, dtype)
    with GatedServer(root=root) as srv:
        vol = precomputed.open(srv.url + "/", context=Context(cache_bytes=64 << 20))
        h = vol.handle
        slow = (1, 2, 0)
        name = h.store.key(slow).rsplit("/", 1)[-1]
        srv.hold = lambda path, rng: path.endswith("/" + name)
        cache = h.context.cache
        t, out = start_read(vol)
        others = [p for p in POSITIONS if p != slow]
        wait_for(lambda: all((h.cache_id, p) in cache for p in others), "the other chunks decoded")
        assert srv.held.is_set() and t.is_alive()
        assert (h.cache_id, slow) not in cache
        srv.gate.set()
        t.join(60)
        assert "error" not in out, out.get("error")
        np.testing.assert_array_equal(out["data"], data)
        stamps = cache.stale(h.cache_id, POSITIONS, time.time() + 1)
        assert {p for p, g in stamps} == set(POSITIONS)
        assert all(g not in (None, "") for _, g in stamps)  # stamped with real generations


def test_sharded_chunks_are_decoded_while_one_range_is_still_on_the_way(tmp_path: Path) -> None:
    """Hashed shards (read through their indices, data ranges pinned to the index's
    generation), the cache off: every chunk outside the held data request is finished
    and decoded before it arrives."""
    root = tmp_path / "vol"
    sharding = sharding_json(0, 1, 2, hash="murmurhash3_x86_128", data="gzip", index="gzip")
    data = build(root, "compressed_segmentation", "uint64", sharding)
    with GatedServer(root=root) as srv:
        url = srv.url + "/"
        probe = precomputed.open(url, context=Context()).handle
        ids = probe.store.chunk_ids(POSITIONS).tolist()
        locs = dict(zip(POSITIONS, probe.store.ids.locate_many(ids), strict=True))
        slow = (2, 1, 0)
        key, start, stop = locs[slow]  # type: ignore[misc]

        def hold(path: str, rng: str | None) -> bool:
            if not path.endswith("/" + key.rsplit("/", 1)[-1]) or not rng:
                return False
            a, b = (int(v) for v in rng.removeprefix("bytes=").split("-"))
            return a <= start and stop - 1 <= b  # the request that carries the slow chunk

        vol = precomputed.open(url, context=Context(cache_bytes=0))
        h = vol.handle
        finished: list[Any] = []
        lock = threading.Lock()
        finish = h.store.finish

        def observed(pos: Any, blob: bytes) -> bytes:
            with lock:
                finished.append(tuple(pos))
            return finish(pos, blob)

        h.store.finish = observed  # type: ignore[method-assign]
        srv.hold = hold
        t, out = start_read(vol)
        elsewhere = [p for p in POSITIONS if locs[p] is not None and locs[p].key != key]  # type: ignore[union-attr]
        assert elsewhere
        wait_for(lambda: set(elsewhere) <= set(finished), "the chunks of other shards decoded")
        assert srv.held.is_set() and t.is_alive()
        assert slow not in finished
        srv.gate.set()
        t.join(60)
        assert "error" not in out, out.get("error")
        np.testing.assert_array_equal(out["data"], data)
        assert finished.count(slow) == 1


@pytest.mark.parametrize("sharding", [None, sharding_json(0, 1, 2, data="gzip")])
def test_a_missing_chunk_in_a_streamed_read_follows_the_one_rule(
    tmp_path: Path, http_server: RangeServer, sharding: Any
) -> None:
    """404 (or an id absent from its shard) is a missing chunk: NOT_FOUND naming it
    unless fill_missing_data_reads, then zeros; the other chunks are read as stored."""
    root = tmp_path / "vol"
    data = build(root, "compressed_segmentation", "uint64", sharding)
    vol = precomputed.open(str(root), context=Context(cache_bytes=0))
    vol[16:32, 0:16, 0:16, :] = 0  # chunk (1, 0, 0) all fill value: deleted
    data[16:32, 0:16, 0:16, :] = 0
    http_server.root = root
    strict = precomputed.open(
        http_server.url + "/", context=Context(cache_bytes=0), fill_missing_data_reads=False
    )
    with pytest.raises(NotFoundError, match=r"chunk \{1, 0, 0\} stored at .* is missing"):
        strict.read()
    filled = precomputed.open(http_server.url + "/", context=Context(cache_bytes=0))
    np.testing.assert_array_equal(filled.read(), data)

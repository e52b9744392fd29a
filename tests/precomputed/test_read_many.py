"""precomputed.read_many: many regions in one batched read, identical to read() each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import precomputed
from precomputed import Context, InvalidArgumentError, NotFoundError
from precomputed.kvstore import MemoryKvStore
from servers import RangeServer
from volumes import sharding_json, volume_spec

SIZE, CHUNK = (40, 36, 20), (16, 16, 8)
SHARDED = sharding_json(0, 1, 1, data="gzip", index="gzip")


def spec(kv: Any, encoding: str, dtype: str, channels: int = 1, sharding: Any = None) -> dict:
    scale: dict[str, Any] = {"size": list(SIZE), "chunk_size": list(CHUNK), "encoding": encoding}
    if encoding == "compressed_segmentation":
        scale["compressed_segmentation_block_size"] = [4, 4, 4]
    if sharding:
        scale["sharding"] = sharding
    return volume_spec(kv, dtype, channels, **scale)


def filled(kv: Any, encoding: str, dtype: str, channels: int = 1, sharding: Any = None):
    vol = precomputed.open(spec(kv, encoding, dtype, channels, sharding), create=True)
    rng = np.random.default_rng(1)
    data = rng.integers(0, 200, (*SIZE, channels)).astype(dtype)
    data[:16, :16, :8] = 0  # chunk (0, 0, 0) all fill value: never stored
    vol[...] = data
    return data


def views_of(vol: Any) -> list[Any]:
    return [
        vol[0:16, 0:16, 0:8, :],  # exactly one chunk (missing)
        vol[16:32, 16:32, 8:16, :],  # exactly one chunk
        vol[3:29, 5:36, 2:19, :],  # many chunks, cut
        vol[10:20, 10:20, 5:15, :],  # overlaps the previous one
        vol[:, :, 7, :],  # a z-plane, z dropped
        vol[4, :, :, 0],  # an x-plane of one channel
        vol[39:40, 35:36, 19:20, :],  # one voxel in the corner edge chunk
        vol[5:5, :, :, :],  # empty
        vol[16:32, 16:32, 8:16, :],  # a repeat
    ]


@pytest.mark.parametrize(
    "encoding, dtype, channels, sharding",
    [
        ("raw", "uint8", 1, None),
        ("raw", "uint16", 3, None),
        ("compressed_segmentation", "uint64", 1, None),
        ("compressed_segmentation", "uint32", 2, None),
        ("compressed_segmentation", "uint64", 1, SHARDED),
        ("raw", "float32", 1, SHARDED),
    ],
)
@pytest.mark.parametrize("cache_bytes", [0, 1 << 24])
@pytest.mark.parametrize("order", ["F", "C"])
def test_equals_reading_each_view(
    memory_store: MemoryKvStore, encoding: str, dtype: str, channels: int, sharding: Any,
    cache_bytes: int, order: str,
) -> None:  # fmt: skip
    data = filled(memory_store.spec(), encoding, dtype, channels, sharding)
    vol = precomputed.open(spec(memory_store.spec(), encoding, dtype, channels, sharding),
                           context=Context(cache_bytes=cache_bytes))  # fmt: skip
    views = views_of(vol)
    got = precomputed.read_many(views, order=order)
    assert len(got) == len(views)
    for view, arr in zip(views, got, strict=True):
        want = view.read(order=order)
        assert arr.shape == want.shape and arr.dtype == want.dtype
        np.testing.assert_array_equal(arr, want)
        assert arr.flags.c_contiguous if order == "C" else arr.flags.f_contiguous
    np.testing.assert_array_equal(got[2], data[3:29, 5:36, 2:19, :])


def test_each_chunk_is_fetched_once_in_one_batch(memory_store: MemoryKvStore) -> None:
    filled(memory_store.spec(), "compressed_segmentation", "uint64")
    vol = precomputed.open(spec(memory_store.spec(), "compressed_segmentation", "uint64"),
                           context=Context(cache_bytes=0))  # fmt: skip
    store = vol.kvstore
    store.request_log = []
    views = views_of(vol)
    precomputed.read_many(views)
    reads = [key for op, key, _, _ in store.request_log if op.startswith("read")]
    # Every chunk of every view, the missing one included, requested exactly once
    # (repeated and overlapping views share their chunks).
    wanted = {key for v in views for key in _chunk_keys(v)}
    assert len(wanted) > 10
    twins = (".gz", ".br", ".zstd")
    assert sorted(k for k in reads if not k.endswith(twins)) == sorted(wanted)
    # A missing chunk is also looked for compressed, under CloudVolume's names.
    missing = _chunk_keys(views[0])[0]
    assert [k for k in reads if k.endswith(twins)] == [missing + s for s in twins]


def _chunk_keys(view: Any) -> list[str]:
    box, _ = view._box()
    h = view._h
    return [h.store.key(pos) for pos in h.grid.cells(box)] if 0 not in box.shape else []


def test_views_of_several_volumes_and_transactions(memory_store: MemoryKvStore, tmp_path: Path) -> None:
    a = filled(memory_store.spec(), "raw", "uint8")
    other = {"driver": "file", "path": str(tmp_path / "b")}
    b = filled(other, "compressed_segmentation", "uint32")
    va = precomputed.open(spec(memory_store.spec(), "raw", "uint8"))
    vb = precomputed.open(spec(other, "compressed_segmentation", "uint32"))
    txn = precomputed.Transaction()
    staged = vb.with_transaction(txn)
    staged[0:4, 0:4, 0:4, :] = 7  # buffered, not yet committed
    got = precomputed.read_many(
        [va[1:30, :, 3:9, :], vb[0:8, 0:8, 0:8, :], staged[0:8, 0:8, 0:8, :], va[2, 3, 4, 0]]
    )
    np.testing.assert_array_equal(got[0], a[1:30, :, 3:9, :])
    np.testing.assert_array_equal(got[1], b[0:8, 0:8, 0:8, :])
    want = b[0:8, 0:8, 0:8, :].copy()
    want[0:4, 0:4, 0:4] = 7
    np.testing.assert_array_equal(got[2], want)
    assert got[3] == a[2, 3, 4, 0] and got[3].shape == ()
    txn.abort()


def test_missing_chunks_follow_fill_missing_data_reads(memory_store: MemoryKvStore) -> None:
    filled(memory_store.spec(), "raw", "uint8")
    strict = precomputed.open(
        spec(memory_store.spec(), "raw", "uint8") | {"fill_missing_data_reads": False},
        context=Context(cache_bytes=0),
    )
    with pytest.raises(NotFoundError, match="0-16_0-16_0-8"):
        precomputed.read_many([strict[16:32, 0:16, 0:8, :], strict[0:16, 0:16, 0:8, :]])


def test_rejects_what_it_cannot_read(memory_store: MemoryKvStore) -> None:
    filled(memory_store.spec(), "raw", "uint8")
    vol = precomputed.open(spec(memory_store.spec(), "raw", "uint8"))
    with pytest.raises(InvalidArgumentError, match="item 1 is ndarray"):
        precomputed.read_many([vol, np.zeros(2)])  # type: ignore[list-item]
    with pytest.raises(InvalidArgumentError, match="order"):
        precomputed.read_many([vol], order="K")
    assert precomputed.read_many([]) == []


def test_over_http_all_chunk_requests_are_in_flight_together(
    tmp_path: Path, http_server: RangeServer
) -> None:
    """One read_many of 12 single-chunk views keeps (nearly) all 12 requests in flight at
    once; read() one after another never has more than one."""
    root = tmp_path / "vol"
    filled({"driver": "file", "path": str(root)}, "compressed_segmentation", "uint64")
    http_server.root = root
    http_server.latency = 0.05
    vol = precomputed.open(http_server.url + "/", context=Context(cache_bytes=0))
    cells = [(x, y, z) for x in (0, 16) for y in (0, 16) for z in (0, 8, 16)]
    views = [vol[x : x + 16, y : y + 16, z : min(z + 8, 20), :] for x, y, z in cells]
    http_server.clear_log()
    for v in views:
        v.read()
    assert http_server.max_in_flight == 1
    http_server.clear_log()
    got = precomputed.read_many(views)
    assert http_server.max_in_flight >= 8
    for v, arr in zip(views, got, strict=True):
        np.testing.assert_array_equal(arr, v.read())


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_whole_raw_chunks_are_read_straight_into_the_results(
    tmp_path: Path, dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from precomputed import readpath

    kv = {"driver": "file", "path": str(tmp_path / "v")}
    data = filled(kv, "raw", dtype, channels=2)
    direct: list[bool] = []
    original = readpath._read_raw_into

    def spy(self: Any, pos: Any, dst: Any) -> bool:
        direct.append(original(self, pos, dst))
        return direct[-1]

    monkeypatch.setattr(readpath, "_read_raw_into", spy)
    vol = precomputed.open(spec(kv, "raw", dtype, 2), context=Context(cache_bytes=0))
    # Whole chunks (the edge one clipped to 8 x 16 x 4), (0, 0, 0) missing, and one cut.
    boxes = [(16, 32, 0, 16, 0, 8), (0, 16, 16, 32, 8, 16), (32, 40, 16, 32, 16, 20),
             (0, 16, 0, 16, 0, 8), (20, 36, 16, 32, 0, 8)]  # fmt: skip
    views = [vol[x0:x1, y0:y1, z0:z1, :] for x0, x1, y0, y1, z0, z1 in boxes]
    got = precomputed.read_many(views)
    for (x0, x1, y0, y1, z0, z1), arr in zip(boxes, got, strict=True):
        np.testing.assert_array_equal(arr, data[x0:x1, y0:y1, z0:z1, :])
    # The three stored whole chunks went straight into their results; the missing one and
    # the two the last view cuts did not.
    assert direct.count(True) == 3

"""``Volume`` and ``ZyxArray``: lazy views, memory layout, which I/O happens (and which
does not), the decoded-chunk cache, and transactions on unsharded volumes."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import tensorstore as ts

import precomputed
from precomputed import Context, Transaction, Volume, ZyxArray, readpath
from precomputed.errors import InvalidArgumentError, OutOfRangeError
from precomputed.kvstore import MemoryKvStore
from precomputed.scale import OpenedScale

SIZE = (37, 29, 11)
OFFSET = (-5, 3, -2)
CHUNK = (16, 16, 8)  # grid 3 x 2 x 2 = 12 chunks, edge chunks clipped
NCHUNKS = 12


def spec(kv: MemoryKvStore, channels: int = 2, **scale: Any) -> dict[str, Any]:
    return {
        "driver": "neuroglancer_precomputed",
        "kvstore": kv.spec(),
        "multiscale_metadata": {"type": "image", "data_type": "uint16", "num_channels": channels},
        "scale_metadata": {
            "size": list(SIZE),
            "voxel_offset": list(OFFSET),
            "chunk_size": list(CHUNK),
            "encoding": "raw",
            "resolution": [4, 4, 40],
            **scale,
        },
    }


def data_for(channels: int) -> np.ndarray:
    """Every voxel distinct and nonzero: value = 1 + linear index, x fastest."""
    n = int(np.prod(SIZE)) * channels
    return (np.arange(n, dtype=np.uint16) + 1).reshape((*SIZE, channels), order="F")


@pytest.fixture
def filled(memory_store: MemoryKvStore) -> tuple[MemoryKvStore, np.ndarray]:
    """A 2-channel volume with every chunk stored; returns (store, data)."""
    data = data_for(2)
    precomputed.open(spec(memory_store), create=True, context=Context())[...] = data
    return memory_store, data


def reopen(kv: MemoryKvStore, **kw: Any) -> Volume:
    """Open afresh with its own cache, and start counting its store's requests."""
    kw.setdefault("context", Context())
    vol = precomputed.open(kv.url, **kw)
    vol.kvstore.stats.clear()
    vol.kvstore.request_log = []
    return vol


def chunk_reads(vol: Volume) -> list[str]:
    """Chunk names read so far (the last key component: ``x0-x1_y0-y1_z0-z1``)."""
    log = vol.kvstore.request_log
    return [k.rsplit("/", 1)[-1] for op, k, *_ in log if op.startswith("read") and "4_4_40/" in k]


# ---------------------------------------------------------------------------------------
# Views
# ---------------------------------------------------------------------------------------


def test_indexing_returns_lazy_views_in_absolute_coordinates(filled: Any) -> None:
    kv, data = filled
    vol = reopen(kv)
    view = vol[0:20, 10:12, -2:3, :]
    assert isinstance(view, Volume)
    assert view.shape == (20, 2, 5, 2)
    assert view.domain.inclusive_min == (0, 10, -2, 0)
    assert view.domain.exclusive_max == (20, 12, 3, 2)
    assert vol.kvstore.stats["read"] == 0  # no I/O until read()
    np.testing.assert_array_equal(view.read(), data[5:25, 7:9, 0:5, :])
    # a view of a view keeps absolute coordinates
    np.testing.assert_array_equal(view[3:4, 11, ...].read(), data[8:9, 8, 0:5, :])


def test_int_indices_drop_dimensions_and_ellipsis_fills(filled: Any) -> None:
    kv, data = filled
    vol = reopen(kv)
    assert vol[0].shape == (29, 11, 2)
    assert vol[0].domain.labels == ("y", "z", "channel")
    assert vol[..., 1].shape == (37, 29, 11)
    assert vol[0, ..., 1].shape == (29, 11)
    assert vol[..., 4, :].domain.labels == ("x", "y", "channel")
    assert vol[-5, 3, -2, 0].shape == ()
    assert vol[-5, 3, -2, 0].read() == data[0, 0, 0, 0]
    np.testing.assert_array_equal(vol[..., 4, :].read(), data[:, :, 6, :])
    np.testing.assert_array_equal(vol[2, 5:9].read(), data[7, 2:6])
    np.testing.assert_array_equal(vol[:, 10, 0, 1].read(), data[:, 7, 2, 1])
    with pytest.raises(InvalidArgumentError, match="single ellipsis"):
        vol[..., ...]
    with pytest.raises(InvalidArgumentError, match="too many indices"):
        vol[0, 0, 0, 0, 0]
    with pytest.raises(InvalidArgumentError, match="strided"):
        vol[::2]
    with pytest.raises(OutOfRangeError):
        vol[-6]  # absolute coordinates: -6 is below the voxel offset, not "from the end"


def test_asarray_reads_the_view(filled: Any) -> None:
    kv, data = filled
    vol = reopen(kv)
    np.testing.assert_array_equal(np.asarray(vol[0:3, 3:5, 1, :]), data[5:8, 0:2, 3, :])
    assert np.asarray(vol[..., 0], dtype=np.float64).dtype == np.float64
    np.testing.assert_array_equal(np.asarray(vol), data)


def _spy_reads(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Record every array ``readpath.read_box`` returns."""
    got: list[np.ndarray] = []
    original = readpath.read_box

    def spy(self: OpenedScale, *args: Any, **kwargs: Any) -> np.ndarray:
        out = original(self, *args, **kwargs)
        got.append(out)
        return out

    monkeypatch.setattr(readpath, "read_box", spy)
    return got


def test_read_is_fortran_order_and_zyx_is_c_order_without_copies(
    filled: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    kv, data = filled
    vol = reopen(kv)
    reads = _spy_reads(monkeypatch)
    arr = vol.read()
    assert arr.shape == (*SIZE, 2)
    assert arr.flags.f_contiguous and not arr.flags.c_contiguous  # x fastest: storage order
    assert np.shares_memory(arr, reads[-1])  # a transposed view of the buffer, no copy
    c = vol.read(order="C")
    assert c.flags.c_contiguous
    np.testing.assert_array_equal(c, data)

    z = vol.zyx()  # 2 channels: (c, z, y, x)
    assert isinstance(z, ZyxArray)
    assert z.shape == (2, 11, 29, 37)
    zarr = np.asarray(z)
    assert zarr.flags.c_contiguous
    assert np.shares_memory(zarr, reads[-1])
    np.testing.assert_array_equal(zarr, data.transpose(3, 2, 1, 0))
    # single channel: (z, y, x), still the read buffer itself
    z1 = vol[..., 1:2].zyx()
    assert z1.shape == (11, 29, 37)
    plane = np.asarray(z1[4])
    assert plane.flags.c_contiguous and np.shares_memory(plane, reads[-1])
    np.testing.assert_array_equal(plane, data[:, :, 4, 1].T)
    assert vol.zyx(squeeze_channel=False)[0].shape == (11, 29, 37)


def test_zyx_is_zero_based_with_steps_and_negative_indices(filled: Any) -> None:
    kv, data = filled
    vol = reopen(kv)
    ref = data[..., 0].transpose(2, 1, 0)  # (z, y, x), 0-based
    z = vol[..., 0:1].zyx()
    assert z.shape == ref.shape and z.dtype == np.uint16 and z.ndim == 3
    cases = [
        (slice(None, None, 2), -1, slice(1, 5)),
        (-1, slice(None, None, 3), slice(None, None, 4)),
        (slice(2, -2), slice(-10, None), -37),
        (Ellipsis, 5),
        (3,),
        (slice(1, 9, 3), slice(None), slice(30, 10)),  # empty in x
    ]
    for key in cases:
        view = z[key]
        assert isinstance(view, ZyxArray)
        assert view.shape == ref[key].shape, key
        np.testing.assert_array_equal(np.asarray(view), ref[key])
    # views of views compose
    np.testing.assert_array_equal(np.asarray(z[1:10:2][::2, 3, -5:]), ref[1:10:2][::2, 3, -5:])
    with pytest.raises(IndexError, match="negative steps"):
        z[::-1]
    with pytest.raises(IndexError, match="out of bounds"):
        z[11]
    with pytest.raises(IndexError, match="out of bounds"):
        z[-12]


def test_zyx_only_reads_chunks_of_the_view(filled: Any) -> None:
    kv, _ = filled
    vol = reopen(kv)
    z = vol.zyx()
    sub = z[:, 9, 0:10, 0:10]  # z = 9 -> absolute 7: second z chunk, first x/y chunk
    assert vol.kvstore.stats["read"] == 0
    np.asarray(sub)
    # One ranged read per channel of the one chunk, each only the z-plane's bytes; the
    # chunk's size (16 x 16 x 3 voxels x 2 channels x 2 bytes) comes with the answers.
    assert chunk_reads(vol) == ["-5-11_3-19_6-9"] * 2
    ranges = [(a, b) for op, _, a, b in vol.kvstore.request_log if op == "read_range"]
    assert sorted(b - a for a, b in ranges) == [16 * 16 * 2, 16 * 16 * 2]


def test_zyx_setitem_writes_through(filled: Any) -> None:
    kv, data = filled
    vol = reopen(kv)
    want = data[..., 1].transpose(2, 1, 0).copy()  # (z, y, x)
    z = vol[..., 1:2].zyx()
    z[3, 2:5, 4:9] = 7
    want[3, 2:5, 4:9] = 7
    z[::4, -1, ::5] = np.arange(3 * 8, dtype=np.uint16).reshape(3, 8)  # strided
    want[::4, -1, ::5] = np.arange(3 * 8).reshape(3, 8)
    z[-1] = 9  # negative int
    want[-1] = 9
    z[np.array([0, 5]), np.array([1, 2]), np.array([3, 36])] = 11  # napari's fancy index
    want[[0, 5], [1, 2], [3, 36]] = 11
    fresh = reopen(kv)
    np.testing.assert_array_equal(fresh[..., 1].read(), want.transpose(2, 1, 0))
    np.testing.assert_array_equal(fresh[..., 0].read(), data[..., 0])  # other channel intact
    # a 4-D zyx view writes one channel through a squeezed index
    z4 = vol.zyx()
    z4[0, 0, 0, 0] = 123
    assert reopen(kv)[-5, 3, -2, 0].read() == 123


def test_spec_of_a_view_reopens_in_tensorstore(memory_store: MemoryKvStore, tmp_path: Any) -> None:
    # TensorStore cannot see our memory store: use files.
    path = str(tmp_path / "v") + "/"
    base = {**spec(memory_store), "kvstore": {"driver": "file", "path": path}}
    vol = precomputed.open(base, create=True, context=Context())
    data = data_for(2)
    vol[...] = data
    coarse = precomputed.open(
        {**base, "scale_metadata": {**base["scale_metadata"], "resolution": [8, 8, 40]}},
        create=True,
    )
    coarse[...] = 5
    for view, want in [
        (vol, data),
        (vol[0:20, 10:12, -2:3, :], data[5:25, 7:9, 0:5, :]),
        (vol[:, 10, 0, 1], data[:, 7, 2, 1]),
        (vol[3, ..., 0], data[8, :, :, 0]),
        (coarse[1:4], np.full((3, 29, 11, 2), 5)),
    ]:
        t = ts.open(view.spec()).result()
        assert t.domain.labels == view.domain.labels
        assert t.domain.inclusive_min == view.domain.inclusive_min
        assert t.domain.exclusive_max == view.domain.exclusive_max
        assert ts.open(view.spec(minimal=True)).result().domain == t.domain
        assert t.spec().to_json()["scale_index"] == view.scale_index
        np.testing.assert_array_equal(t.read().result(), want)
    assert coarse.spec()["scale_metadata"]["key"] == "8_8_40"
    # box views also reopen here
    again = precomputed.open(vol[0:20, 10:12, -2:3, :].spec(), context=Context())
    assert again.domain == vol[0:20, 10:12, -2:3, :].domain
    np.testing.assert_array_equal(again.read(), data[5:25, 7:9, 0:5, :])


def test_chunk_layout(filled: Any) -> None:
    kv, _ = filled
    layout = reopen(kv).chunk_layout
    assert layout.grid_origin == (*OFFSET, 0)
    assert layout.read_chunk == layout.write_chunk == (*CHUNK, 2)
    assert layout.inner_order == (3, 2, 1, 0)
    assert layout.codec_chunk is None


# ---------------------------------------------------------------------------------------
# Which I/O happens
# ---------------------------------------------------------------------------------------


def test_open_and_metadata_fetch_no_chunks(filled: Any) -> None:
    kv, _ = filled
    root = MemoryKvStore()  # the store open() uses, so we see every request it makes
    root.request_log = []
    vol = precomputed.open(kv.url, kvstore=root, context=Context())
    _ = (vol.shape, vol.dtype, vol.domain, vol.chunk_layout, vol.spec(), vol.zyx().shape)
    _ = vol[0:3, 4, ...].shape
    assert [(op, k) for op, k, *_ in root.request_log] == [("read", f"{kv.path}/info")]


@pytest.mark.parametrize("z", [-2, 5, 6, 8])
def test_z_plane_read_touches_only_intersecting_chunks(filled: Any, z: int) -> None:
    kv, data = filled
    vol = reopen(kv)
    plane = vol[:, :, z, :].read()
    np.testing.assert_array_equal(plane, data[:, :, z + 2, :])
    zc = (z - OFFSET[2]) // CHUNK[2]
    zr = f"{OFFSET[2] + 8 * zc}-{min(OFFSET[2] + 8 * zc + 8, 9)}"
    want = {f"{x}_{y}_{zr}" for x in ("-5-11", "11-27", "27-32") for y in ("3-19", "19-32")}
    # 6 of 12 chunks; from each, one ranged read per channel of just the plane's bytes
    # (a raw chunk stores x fastest, so one z-plane of one channel is contiguous), and no
    # request for its size: the range reads report it.
    assert sorted(chunk_reads(vol)) == sorted(list(want) * 2)
    assert vol.kvstore.stats["read"] == 0
    sizes = [b - a for op, _, a, b in vol.kvstore.request_log if op == "read_range"]
    xs = {"-5-11": 16, "11-27": 16, "27-32": 5}
    ys = {"3-19": 16, "19-32": 13}
    planes = [2 * xs[x] * ys[y] for x in xs for y in ys]
    assert sorted(sizes) == sorted(planes * 2)


def test_missing_chunks_cost_no_extra_requests_on_remote_like_stores(
    memory_store: MemoryKvStore,
) -> None:
    vol = precomputed.open(spec(memory_store), create=True, context=Context())
    vol.kvstore.request_log = []
    assert not vol[:, :, 0, :].read().any()
    reads = chunk_reads(vol)
    # Each of the 6 chunks is looked up once per channel (a ranged read of the plane),
    # plus (memory/file only) one probe of each CloudVolume twin (.gz, .br, .zstd);
    # nothing else.
    twins = (".gz", ".br", ".zstd")
    assert len({k.removesuffix(s) for k in reads for s in twins if k.endswith(s)}) == 6
    for suffix in twins:
        assert sum(k.endswith(suffix) for k in reads) == 6
    assert len(reads) == 6 * 2 + 6 * 3  # 2 channels' slabs, 3 twins
    vol.kvstore.request_log = []
    assert not vol[:, :, 0, :].read().any()  # absence is cached
    assert chunk_reads(vol) == []


def test_second_read_is_served_from_cache(filled: Any) -> None:
    kv, data = filled
    vol = reopen(kv)
    a = vol[0:20, :, -2:6, :].read()  # whole chunks in z: whole-chunk reads
    first = vol.kvstore.stats["read"]
    assert first == 4
    b = vol[0:20, :, -2:6, :].read()
    c = vol[1:2, 5, 1, 0].read()  # inside cached chunks
    assert vol.kvstore.stats["read"] == first  # zero new reads
    assert vol.kvstore.stats["read_range"] == 0
    np.testing.assert_array_equal(a, b)
    assert c == data[6, 2, 3, 0]
    assert vol.context.cache.hits >= 5


def test_writes_invalidate_the_cache(filled: Any) -> None:
    kv, _ = filled
    vol = reopen(kv)
    vol[0:3, 5:8, 1, 0].read()
    vol[0:3, 5:8, 1, 0] = 42
    assert (vol[0:3, 5:8, 1, 0].read() == 42).all()


def test_cache_byte_limit_is_respected(filled: Any) -> None:
    kv, data = filled
    chunk_bytes = 16 * 16 * 8 * 2 * 2  # a full chunk, 2 channels of uint16
    vol = reopen(kv, context=Context(cache_bytes=3 * chunk_bytes))
    np.testing.assert_array_equal(vol.read(), data)
    assert 0 < vol.context.cache.nbytes <= 3 * chunk_bytes
    reads = vol.kvstore.stats["read"]
    vol.read()
    assert vol.kvstore.stats["read"] > reads  # most chunks were evicted: read again
    assert vol.context.cache.nbytes <= 3 * chunk_bytes


@pytest.mark.parametrize(
    "context",
    [
        {"context": Context(cache_bytes=0)},
        {"context": Context({"cache_pool": {"total_bytes_limit": 0}})},
    ],
    ids=["cache_bytes", "tensorstore-json"],
)
def test_zero_byte_cache_disables_caching(filled: Any, context: dict[str, Any]) -> None:
    kv, data = filled
    vol = reopen(kv, **context)
    vol.read()
    vol.read()
    assert vol.kvstore.stats["read"] == 2 * NCHUNKS
    assert vol.context.cache.nbytes == 0


def test_context_in_the_spec_json(filled: Any) -> None:
    kv, _ = filled
    vol = precomputed.open(
        {
            "driver": "neuroglancer_precomputed",
            "kvstore": kv.spec(),
            "context": {"cache_pool": {"total_bytes_limit": 0}},
        }
    )
    assert vol.context.cache.total_bytes_limit == 0
    assert vol.context is not precomputed.default_context()


# ---------------------------------------------------------------------------------------
# Transactions (unsharded)
# ---------------------------------------------------------------------------------------


def test_transaction_writes_are_visible_inside_and_committed_once(filled: Any) -> None:
    kv, data = filled
    vol = reopen(kv)
    other = reopen(kv)  # an independent handle: sees only committed data
    want = data.copy()
    with vol.transaction() as txn:
        vol[0:3, 3:6, -2:1, :] = 1  # chunk (0, 0, 0)
        vol[1:2, 4:5, -1:0, 0] = 2  # the same chunk again
        vol[20:30, 3:19, 0:8, :] = 3  # chunks x 1, 2 / y 0 / z 0, 1
        want[5:8, 0:3, 0:3] = 1
        want[6, 1, 1, 0] = 2
        want[25:35, 0:16, 2:10] = 3
        assert vol.kvstore.stats["write"] == 0  # nothing stored yet
        np.testing.assert_array_equal(vol.read(), want)  # reads see the writes
        np.testing.assert_array_equal(vol[1, 4, -1, :].read(), [2, 1])
        np.testing.assert_array_equal(other.read(), data)
        assert txn.dirty_chunks == 5
    assert vol.kvstore.stats["write"] == 5  # each dirty chunk written exactly once
    written = [k for op, k, *_ in vol.kvstore.request_log if op == "write"]
    assert len(set(written)) == 5
    np.testing.assert_array_equal(reopen(kv).read(), want)
    assert txn.empty
    # the transaction is detached: later writes go straight to storage
    vol[0, 3, -2, 0] = 77
    assert vol.kvstore.stats["write"] == 6


def test_transaction_is_discarded_on_exception(filled: Any) -> None:
    kv, data = filled
    vol = reopen(kv)
    with pytest.raises(RuntimeError, match="boom"), vol.transaction():
        vol[...] = 0
        assert not vol.read().any()
        raise RuntimeError("boom")
    assert vol.kvstore.stats["write"] == 0
    assert vol.kvstore.stats["delete"] == 0
    np.testing.assert_array_equal(vol.read(), data)
    np.testing.assert_array_equal(reopen(kv).read(), data)


def test_transaction_zeroing_deletes_chunks_once(filled: Any) -> None:
    kv, _ = filled
    vol = reopen(kv)
    with vol.transaction():
        vol[...] = 5
        vol[...] = 0
    assert vol.kvstore.stats["write"] == 0
    assert vol.kvstore.stats["delete"] >= NCHUNKS
    assert kv.list("4_4_40/") == []


def test_only_one_with_block_transaction_at_a_time(filled: Any) -> None:
    kv, _ = filled
    vol = reopen(kv)
    with vol.transaction():
        with pytest.raises(InvalidArgumentError, match="already active"):
            vol.transaction()


def test_explicit_transaction_via_with_transaction(filled: Any) -> None:
    kv, data = filled
    vol = reopen(kv)
    txn = Transaction()
    tv = vol.with_transaction(txn)
    tv[0:20, 3:5, 0, :] = 9
    tv[..., 1][0, 3, 0] = 8  # views of a transactional view stay in the transaction
    want = data.copy()
    want[5:25, 0:2, 2, :] = 9
    want[5, 0, 2, 1] = 8
    np.testing.assert_array_equal(tv.read(), want)
    np.testing.assert_array_equal(vol.read(), data)  # the plain view reads storage
    assert vol.kvstore.stats["write"] == 0
    assert txn.dirty_chunks == 2
    stats = txn.commit()
    assert stats.chunks_written == 2
    assert vol.kvstore.stats["write"] == 2
    np.testing.assert_array_equal(reopen(kv).read(), want)
    # an aborted explicit transaction stores nothing
    txn2 = Transaction()
    vol.with_transaction(txn2)[...] = 0
    txn2.abort()
    np.testing.assert_array_equal(reopen(kv).read(), want)
    assert vol.kvstore.stats["write"] == 2


# ---------------------------------------------------------------------------------------
# Concurrency
# ---------------------------------------------------------------------------------------


def test_concurrent_partial_writes_to_one_chunk_lose_nothing(memory_store: MemoryKvStore) -> None:
    s = spec(
        memory_store, channels=1, size=[64, 16, 8], voxel_offset=[0, 0, 0], chunk_size=[64, 16, 8]
    )
    vols = [precomputed.open(s, create=True, context=Context())]
    vols.append(precomputed.open(memory_store.url, context=Context()))  # a second handle
    n = 16
    barrier = threading.Barrier(n)

    def paint(i: int) -> None:
        barrier.wait()
        for k in range(4):  # 4 rows each, all in the single chunk
            vols[i % 2][i * 4 + k, :, :, 0] = i + 1

    threads = [threading.Thread(target=paint, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = precomputed.open(memory_store.url, context=Context()).read()[:, 0, 0, 0]
    np.testing.assert_array_equal(got, np.repeat(np.arange(1, n + 1), 4))


def test_a_read_racing_a_write_does_not_cache_the_old_chunk(
    filled: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    kv, data = filled
    vol = reopen(kv)
    store = vol._h.store
    original = store.read_chunks

    def read_then_concurrent_write(positions: Any, **kw: Any) -> Any:
        blobs = original(positions, **kw)  # the old bytes are in flight ...
        monkeypatch.setattr(store, "read_chunks", original)
        vol[-5:11, 3:19, -2:6, :] = 0  # ... when a write replaces the chunk
        return blobs

    monkeypatch.setattr(store, "read_chunks", read_then_concurrent_write)
    stale = vol[-5:11, 3:19, -2:6, :].read()
    np.testing.assert_array_equal(stale, data[0:16, 0:16, 0:8])  # read began before the write
    assert not vol[-5:11, 3:19, -2:6, :].read().any()  # but the old chunk was not cached


def test_spec_of_view_with_dropped_dimensions_reopens_to_the_same_data(tmp_path) -> None:
    spec = {
        "driver": "neuroglancer_precomputed",
        "kvstore": {"driver": "file", "path": str(tmp_path) + "/"},
        "multiscale_metadata": {"type": "image", "data_type": "uint8", "num_channels": 2},
        "scale_metadata": {
            "size": [20, 30, 10],
            "voxel_offset": [1, 2, 3],
            "chunk_size": [8, 8, 4],
        },
    }
    vol = precomputed.open(spec, create=True)
    vol[...] = np.random.default_rng(0).integers(0, 255, vol.shape, dtype=np.uint8)
    view = vol[2:10, 5, 4:8, 1]
    again = precomputed.open(view.spec())
    assert again.domain == view.domain
    np.testing.assert_array_equal(again.read(), view.read())
    theirs = ts.open(view.spec()).result()
    np.testing.assert_array_equal(theirs.read().result(), view.read())


def test_thin_reads_of_raw_chunks_are_cached_and_invalidated_by_writes(filled: Any) -> None:
    kv, data = filled
    vol = reopen(kv)
    np.testing.assert_array_equal(vol[:, :, 1, :].read(), data[:, :, 3, :])
    ranged = vol.kvstore.stats["read_range"]
    assert ranged == 6 * 2 and vol.kvstore.stats["read"] == 0  # 2 slabs per chunk, no probe
    vol[:, :, 1, :].read()  # the same plane again: served from the cache
    assert vol.kvstore.stats["read_range"] == ranged
    vol[0:3, 4:6, 1, 0] = 42  # a write drops the cached slabs of the chunk it touched
    got = vol[:, :, 1, :].read()
    assert (got[5:8, 1:3, 0] == 42).all()
    np.testing.assert_array_equal(got[8:, :, :], data[8:, :, 3, :])


def test_implicit_writes_commit_a_few_chunks_at_a_time_reporting_on_the_caller_thread(
    memory_store: MemoryKvStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from precomputed import transaction
    from precomputed.chunkstore import UnshardedChunkStore

    vol = precomputed.open(spec(memory_store), create=True, context=Context())
    active = most = 0
    lock = threading.Lock()
    original = UnshardedChunkStore.commit_group

    def commit_group(self: Any, group: Any, updates: Any) -> Any:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        threading.Event().wait(0.01)  # hold the commit open so overlaps are observable
        try:
            return original(self, group, updates)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(UnshardedChunkStore, "commit_group", commit_group)
    seen: list[tuple[int, int, str]] = []
    data = data_for(2)
    vol.write(data, progress=lambda i, n: seen.append((i, n, threading.current_thread().name)))
    np.testing.assert_array_equal(reopen(memory_store).read(), data)
    assert 1 < most <= transaction.GROUP_CONCURRENCY
    assert [(i, n) for i, n, _ in seen] == [(i, NCHUNKS) for i in range(1, NCHUNKS + 1)]
    assert {name for *_, name in seen} == {threading.current_thread().name}


def test_a_failing_chunk_commit_raises_and_later_chunks_are_not_started(
    memory_store: MemoryKvStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from precomputed.chunkstore import UnshardedChunkStore

    vol = precomputed.open(spec(memory_store), create=True, context=Context())
    started: list[Any] = []
    original = UnshardedChunkStore.commit_group

    def commit_group(self: Any, group: Any, updates: Any) -> Any:
        started.append(group)
        if len(started) == 1:
            raise OSError("disk full")
        threading.Event().wait(0.05)
        return original(self, group, updates)

    monkeypatch.setattr(UnshardedChunkStore, "commit_group", commit_group)
    with pytest.raises(OSError, match="disk full"):
        vol[...] = 1
    assert len(started) < NCHUNKS  # the queued rest was cancelled


@pytest.mark.parametrize("cache_bytes", [0, 1 << 20])
def test_reading_exactly_one_chunk_returns_an_array_of_its_own(
    memory_store: MemoryKvStore, cache_bytes: int
) -> None:
    vol = precomputed.open(
        spec(memory_store, encoding="compressed_segmentation", channels=1)
        | {"multiscale_metadata": {"type": "segmentation", "data_type": "uint32", "num_channels": 1}},
        create=True,
        context=Context(),
    )
    data = (np.arange(int(np.prod(SIZE)), dtype=np.uint32) % 7).reshape((*SIZE, 1), order="F")
    vol[...] = data
    vol = reopen(memory_store, context=Context(cache_bytes=cache_bytes))
    one = (slice(-5, 11), slice(3, 19), slice(-2, 6), slice(None))  # chunk (0, 0, 0) exactly
    a = vol[one].read()
    np.testing.assert_array_equal(a, data[0:16, 0:16, 0:8])
    assert a.flags.writeable and a.flags.f_contiguous
    a[...] = 99  # the caller's own array: the cache and later reads are unaffected
    np.testing.assert_array_equal(vol[one].read(), data[0:16, 0:16, 0:8])
    vol[one] = 0  # an all-zero chunk is deleted: reads as zeros
    assert not vol[one].read().any()
    with vol.transaction():  # a chunk buffered in a transaction is copied out
        vol[one] = 5
        b = vol[one].read()
        b[...] = 6
        assert (vol[one].read() == 5).all()
    assert (vol[one].read() == 5).all()

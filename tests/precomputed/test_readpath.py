"""Local-file read paths that avoid work: chunks read into a reused per-thread buffer when
the cache will not keep them, rows copied as opaque items, and the store's ``read_into``."""

from __future__ import annotations

import gzip
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import precomputed
from precomputed import Context, readpath
from precomputed.kvstore import FileKvStore
from precomputed.readpath import copy_rows
from precomputed.scale import OpenedScale

SIZE = (37, 29, 11)
OFFSET = (-5, 3, -2)
CHUNK = (16, 16, 8)


def make(root: Path, channels: int = 2, dtype: str = "uint16") -> np.ndarray:
    n = int(np.prod(SIZE)) * channels
    data = (np.arange(n) % 60000 + 1).astype(dtype).reshape((*SIZE, channels), order="F")
    precomputed.open(
        {
            "driver": "neuroglancer_precomputed",
            "kvstore": {"driver": "file", "path": str(root)},
            "multiscale_metadata": {"type": "image", "data_type": dtype, "num_channels": channels},
            "scale_metadata": {
                "size": list(SIZE),
                "voxel_offset": list(OFFSET),
                "chunk_size": list(CHUNK),
                "encoding": "raw",
                "resolution": [4, 4, 40],
            },
        },
        create=True,
    )[...] = data
    return data


def test_file_store_read_into_fills_only_an_exact_size(tmp_path: Path) -> None:
    store = FileKvStore(tmp_path)
    store.write("a/b", b"0123456789")
    buf = bytearray(10)
    assert store.read_into("a/b", buf) is True and bytes(buf) == b"0123456789"
    assert store.stats["read"] == 1
    assert store.read_into("a/b", bytearray(9)) is False  # size differs: caller reads
    assert store.read_into("a/b", bytearray(11)) is False
    assert store.stats["read"] == 1  # a refusal is not a request
    assert store.read_into("a/missing", bytearray(10)) is None
    assert store.read_into("a", bytearray(10)) is None  # a directory is not a key
    arr = np.zeros(10, np.uint8)
    assert store.read_into("a/b", arr) is True and arr.tobytes() == b"0123456789"


def test_uncached_reads_use_scratch_buffers_and_stay_correct(tmp_path: Path) -> None:
    data = make(tmp_path)
    vol = precomputed.open(str(tmp_path), context=Context(cache_bytes=0))
    vol.kvstore.stats.clear()
    got = vol.read()
    np.testing.assert_array_equal(got, data)
    assert got.flags.writeable and got.flags.f_contiguous
    assert vol.kvstore.stats["read"] == 12  # every chunk read once, in place
    # Concurrent readers of different regions (each with their own scratch per thread).
    results: dict[int, np.ndarray] = {}

    def read(i: int) -> None:
        results[i] = vol[-5 + i : 32, 3:32, -2 + i % 3 : 9, :].read()

    threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, arr in results.items():
        np.testing.assert_array_equal(arr, data[i:, :, i % 3 :, :])


def test_scratch_path_is_taken_only_when_the_cache_would_not_keep_the_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make(tmp_path)
    calls: list[bool] = []
    real = readpath._read_raw_into_scratch

    def spy(self: OpenedScale, pos: Any, consume: Any) -> bool:
        calls.append(r := real(self, pos, consume))
        return r

    monkeypatch.setattr(readpath, "_read_raw_into_scratch", spy)
    np.testing.assert_array_equal(
        precomputed.open(str(tmp_path), context=Context(cache_bytes=0)).read(), data
    )
    assert calls and all(calls)
    calls.clear()
    cached = precomputed.open(str(tmp_path), context=Context())
    np.testing.assert_array_equal(cached.read(), data)
    assert not any(calls)  # chunks went to the cache, which keeps its own arrays
    assert cached.context.cache.nbytes > 0


def test_cloudvolume_gzip_chunks_fall_back_from_the_scratch_path(tmp_path: Path) -> None:
    data = make(tmp_path, channels=1, dtype="uint8")
    scale = tmp_path / "4_4_40"
    names = sorted(os.listdir(scale))
    assert len(names) == 12
    for i, name in enumerate(names[:6]):
        path = scale / name
        raw = path.read_bytes()
        if i % 2:
            (scale / (name + ".gz")).write_bytes(gzip.compress(raw))  # .gz suffix
            path.unlink()
        else:
            path.write_bytes(gzip.compress(raw))  # gzip bytes under the plain key
    vol = precomputed.open(str(tmp_path), context=Context(cache_bytes=0))
    np.testing.assert_array_equal(vol.read(), data)


@pytest.mark.parametrize(
    "dst_index, src_index",
    [
        ((slice(None), slice(1, 5), slice(2, 9)), (slice(None), slice(0, 4), slice(0, 7))),
        ((slice(None), slice(None), slice(0, 1)), (slice(None), slice(None), slice(3, 4))),
        ((slice(None, None, 2), slice(None), slice(None)), (slice(None), slice(None), slice(None))),
        ((slice(None), slice(None), slice(None, None, 2)), (slice(None), slice(None), slice(0, 5))),
    ],
)
def test_copy_rows_equals_assignment(dst_index: Any, src_index: Any) -> None:
    rng = np.random.default_rng(1)
    src = rng.integers(0, 2**63, (6, 7, 10), dtype=np.uint64)
    dst = np.zeros((12, 7, 10), np.uint64)
    want = dst.copy()
    d, s = dst[dst_index], src[src_index]
    s = s[: d.shape[0], : d.shape[1], : d.shape[2]]
    d = d[: s.shape[0], : s.shape[1], : s.shape[2]]
    want[dst_index][: s.shape[0], : s.shape[1], : s.shape[2]] = s
    copy_rows(d, s)
    np.testing.assert_array_equal(dst, want)


def test_copy_rows_converts_dtypes_like_assignment() -> None:
    src = np.arange(24, dtype=">u2").reshape(2, 3, 4)  # big-endian: values, not bytes
    dst = np.zeros((2, 3, 4), "<u2")
    copy_rows(dst, src)
    np.testing.assert_array_equal(dst, np.arange(24).reshape(2, 3, 4))
    empty = np.zeros((0, 3, 4), np.uint8)
    copy_rows(empty, np.zeros((0, 3, 4), np.uint8))


def test_one_whole_chunk_is_read_straight_into_the_returned_array(tmp_path: Path) -> None:
    data = make(tmp_path, channels=2)
    vol = precomputed.open(str(tmp_path), context=Context(cache_bytes=0))
    one = (slice(-5, 11), slice(3, 19), slice(-2, 6), slice(None))  # chunk (0, 0, 0)
    a = vol[one].read()
    np.testing.assert_array_equal(a, data[0:16, 0:16, 0:8])
    assert a.flags.writeable
    a[...] = 0
    np.testing.assert_array_equal(vol[one].read(), data[0:16, 0:16, 0:8])
    name = "-5-11_3-19_-2-6"
    raw = (tmp_path / "4_4_40" / name).read_bytes()
    (tmp_path / "4_4_40" / name).unlink()
    assert not vol[one].read().any()  # missing: zeros
    (tmp_path / "4_4_40" / (name + ".gz")).write_bytes(gzip.compress(raw))
    np.testing.assert_array_equal(vol[one].read(), data[0:16, 0:16, 0:8])  # CloudVolume twin


@pytest.mark.parametrize("cache_bytes", [0, 1 << 22])
def test_thin_raw_reads_equal_numpy_for_random_boxes(tmp_path: Path, cache_bytes: int) -> None:
    """Slab reads (byte ranges of z-planes per channel): random thin boxes, channel
    subsets, edge chunks, a missing chunk, a CloudVolume .gz chunk and buffered writes."""
    data = make(tmp_path / "v", channels=3)
    root = tmp_path / "v" / "4_4_40"
    os.remove(root / "11-27_3-19_-2-6")  # missing: reads as zeros
    expected = data.copy()
    expected[16:32, 0:16, 0:8, :] = 0
    gz = root / "-5-11_19-32_6-9"  # edge chunk stored gzip-compressed, as CloudVolume does
    gz.with_name(gz.name + ".gz").write_bytes(gzip.compress(gz.read_bytes()))
    os.remove(gz)
    vol = precomputed.open(str(tmp_path / "v"), context=Context(cache_bytes=cache_bytes))
    (x0, y0, z0), (sx, sy, sz) = OFFSET, SIZE
    rng = np.random.default_rng(3)
    for _ in range(60):
        lo = [int(rng.integers(0, n)) for n in (sx, sy, sz)]
        hi = [int(rng.integers(a + 1, n + 1)) for a, n in zip(lo, (sx, sy, sz), strict=True)]
        hi[2] = min(hi[2], lo[2] + int(rng.integers(1, 4)))  # thin in z
        c0 = int(rng.integers(0, 3))
        c1 = int(rng.integers(c0 + 1, 4))
        view = vol[x0 + lo[0] : x0 + hi[0], y0 + lo[1] : y0 + hi[1], z0 + lo[2] : z0 + hi[2], c0:c1]
        want = expected[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2], c0:c1]
        np.testing.assert_array_equal(view.read(), want)
    assert vol.kvstore.stats["read_range"] > 0  # the slab path really ran
    with vol.transaction():  # buffered chunks are read whole, merged with the stored ones
        vol[x0 : x0 + 4, y0 : y0 + 4, z0 + 1, 0] = 7
        got = vol[:, :, z0 + 1, :].read()
    want = expected[:, :, 1, :].copy()
    want[0:4, 0:4, 0] = 7
    np.testing.assert_array_equal(got, want)


def test_file_store_ranges_of_a_directory_are_missing(tmp_path: Path) -> None:
    store = FileKvStore(tmp_path)
    store.write("dir/key", b"abc")
    assert store.read_ranges([("dir", 0, 2), ("dir", 1, None), ("dir/key", 1, 3)]) == [
        None,
        None,
        b"bc",
    ]
    assert store.read_ranges([("dir/key", 2, 10)]) == [b"c"]  # clipped at the end

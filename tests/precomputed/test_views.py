"""``views.ZyxArray``: napari-order lazy views, over a volume view's box or a padded window."""

from __future__ import annotations

import numpy as np
import pytest

import precomputed
from precomputed import Context
from precomputed.kvstore import MemoryKvStore
from precomputed.views import ZyxArray
from volumes import volume_spec

SIZE, OFFSET = (20, 12, 6), (3, -2, 1)


def volume(kv: MemoryKvStore, channels: int) -> tuple[precomputed.Volume, np.ndarray]:
    spec = volume_spec(
        kv.spec(), "uint16", channels, size=list(SIZE), voxel_offset=list(OFFSET),
        chunk_size=[8, 8, 4], resolution=[1, 1, 1], encoding="raw",
    )  # fmt: skip
    vol = precomputed.open(spec, create=True, context=Context(cache_bytes=0))
    data = np.random.default_rng(0).integers(1, 999, (*SIZE, channels)).astype(np.uint16)
    vol[...] = data
    return vol, data


@pytest.mark.parametrize(("layout", "channels"), [("zyx", 1), ("czyx", 2), ("zyxc", 3)])
def test_a_padded_window_reads_zeros_outside_the_volume(
    memory_store: MemoryKvStore, layout: str, channels: int
) -> None:
    vol, data = volume(memory_store, channels)
    origin, extent = (OFFSET[0] - 5, OFFSET[1] - 1, OFFSET[2]), (SIZE[0] + 9, SIZE[1] + 4, SIZE[2] + 2)
    arr = ZyxArray(vol, layout=layout, origin=origin, extent=extent, writable=False)
    padded = np.zeros((*extent, channels), np.uint16)  # x, y, z, c
    padded[5 : 5 + SIZE[0], 1 : 1 + SIZE[1], 0 : SIZE[2]] = data
    want = {"zyx": padded[..., 0].transpose(2, 1, 0), "czyx": padded.transpose(3, 2, 1, 0),
            "zyxc": padded.transpose(2, 1, 0, 3)}[layout]  # fmt: skip
    assert arr.shape == want.shape
    np.testing.assert_array_equal(np.asarray(arr), want)
    key = (slice(1, None, 2), 3) if layout != "czyx" else (1, slice(0, 7), slice(2, None, 3))
    np.testing.assert_array_equal(np.asarray(arr[key]), want[key])
    with pytest.raises(TypeError, match="does not support item assignment"):
        arr[0] = 1


def test_the_default_window_is_the_views_box_and_writes_through(memory_store: MemoryKvStore) -> None:
    vol, data = volume(memory_store, 1)
    view = vol[5:15, 0:8, 2:5, :]
    z = ZyxArray(view)
    assert z.layout == "zyx" and z.origin == (5, 0, 2) and z.extent == (10, 8, 3)
    np.testing.assert_array_equal(np.asarray(z), data[2:12, 2:10, 1:4, 0].transpose(2, 1, 0))
    z[1, 2:4, ::3] = 7  # z = 3, y = 2, 3, x = 5, 8, 11, 14 (strided: read-modify-write)
    want = data[2:12, 2:10, 2, 0].copy()  # x, y of z = 3
    want[::3, 2:4] = 7
    np.testing.assert_array_equal(vol[5:15, 0:8, 3, 0].read(), want)


def test_chunks_follow_storage_chunks_in_presented_coordinates(memory_store: MemoryKvStore) -> None:
    vol, _ = volume(memory_store, 1)
    arr = ZyxArray(vol, layout="zyx", origin=(OFFSET[0] - 5, OFFSET[1], OFFSET[2]), extent=(30, 12, 6))
    # x: grid origin 3, chunks of 8 from there; index 0 is x = -2.
    assert arr.chunks == ((4, 2), (8, 4), (5, 8, 8, 8, 1))

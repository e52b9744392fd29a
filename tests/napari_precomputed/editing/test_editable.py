"""The edit layer's data: a lazy view that indexes (and writes) like numpy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from edit_cases import labels_xyz
from napari_volumes import ts_read

from napari_precomputed import edit_labels


def test_the_edit_array_indexes_like_numpy(seg: Callable[..., Path]) -> None:
    path = seg(sharded=False)
    session = edit_labels(None, str(path), region=((8, 56), (4, 60), (2, 14)))
    data = session.data
    ref = np.array(data)
    assert ref.shape == data.shape == (12, 56, 48)
    assert data[3, 7, 9] == ref[3, 7, 9] and np.asarray(data[3, 7, 9]).ndim == 0
    np.testing.assert_array_equal(np.asarray(data[2:9, ::3, 5]), ref[2:9, ::3, 5])
    zs, ys, xs = np.array([0, 11, 5, 5]), np.array([0, 55, 20, 21]), np.array([47, 0, 30, 30])
    np.testing.assert_array_equal(data[zs, ys, xs], ref[zs, ys, xs])  # across chunks
    np.testing.assert_array_equal(data[4, ys, 3:9], ref[4, ys, 3:9])  # mixed
    mask = ref == ref[6, 30, 30]
    np.testing.assert_array_equal(data[mask], ref[mask])
    for key, value in [
        ((zs, ys, xs), np.array([101, 102, 103, 104])),
        ((4, ys, slice(3, 9)), 105),
        ((slice(1, 3), slice(10, 20), slice(40, 48)), 106),
        ((7, slice(0, 56, 5), 11), 107),
    ]:
        data[key] = value
        ref[key] = value
    np.testing.assert_array_equal(np.array(data), ref)
    assert session.dirty_chunks > 4
    session.commit()
    stored, _ = ts_read(path, 0)
    np.testing.assert_array_equal(stored[8:56, 4:60, 2:14, 0], ref.transpose(2, 1, 0))


def test_a_zyx_view_of_one_voxel_reads_as_a_0d_array(seg: Callable[..., Path]) -> None:
    import precomputed

    vol = precomputed.open(str(seg(sharded=False)))
    value = np.asarray(vol.zyx()[3, 7, 9])
    assert value.shape == () and value == labels_xyz()[9, 7, 3, 0]

"""``create.blocks``: blocks aligned to write chunks, and writing arrays block by block."""

from __future__ import annotations

import numpy as np
import pytest

from create_cases import (
    IMAGE,
    ODD,
    SEG,
    SHARDING,
    image_data,
    ts_read,
)
from precomputed import create as C
from precomputed.errors import (
    InvalidArgumentError,
)

ts = pytest.importorskip("tensorstore")


def test_blocks_tile_the_scale_exactly_and_never_straddle_a_write_chunk():
    plan = C.plan_scale(SEG, {"size": [37, 29, 6], "chunk_size": [4, 4, 2], "sharding": SHARDING})
    write = plan.write_chunk_shape
    for budget in (8, 400, 3000, 10**9):
        groups = C.blocks.plan_blocks(plan.scale, (4, 4, 2), 8.0, budget)
        covered = np.zeros((37, 29, 6), int)
        for group in groups:
            shards = set()
            for lo, hi in group:
                covered[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] += 1
                if len(group) > 1:
                    assert np.prod(np.subtract(hi, lo)) * 8 <= max(budget, 4 * 4 * 2 * 8)
                shards.add(tuple(a // w for a, w in zip(lo, write, strict=True)))
                last = tuple((b - 1) // w for b, w in zip(hi, write, strict=True))
                if len(group) > 1:
                    assert last == tuple(a // w for a, w in zip(lo, write, strict=True))
            if len(group) > 1:
                assert len(shards) == 1  # the pieces of one shard share a transaction
        assert (covered == 1).all()


# -- write_array -------------------------------------------------------------------------------


def test_write_array_accepts_napari_axis_orders(tmp_path):
    data = image_data()  # x, y, z, c
    vol = C.create_volume(str(tmp_path / "a"), IMAGE, {**ODD, "chunk_size": [8, 8, 2]})
    C.write_array(vol, data.transpose(3, 2, 1, 0), axes="czyx", block_bytes=3000)
    np.testing.assert_array_equal(ts_read(tmp_path / "a"), data)
    one = {**IMAGE, "num_channels": 1}
    plane = C.create_volume(str(tmp_path / "b"), one, {"size": [7, 5, 1], "chunk_size": [4, 4, 1]})
    yx = np.arange(35, dtype=np.uint16).reshape(5, 7)
    C.write_array(plane, yx, axes="yx")
    np.testing.assert_array_equal(ts_read(tmp_path / "b")[:, :, 0, 0], yx.T)


def test_write_array_never_wraps_or_truncates_values(tmp_path):
    seg = {**SEG, "data_type": "uint32"}
    vol = C.create_volume(str(tmp_path / "s"), seg, {"size": [4, 4, 1]})
    with pytest.raises(InvalidArgumentError, match="do not fit"):
        C.write_array(vol, np.full((4, 4, 1, 1), -1, np.int64))
    with pytest.raises(InvalidArgumentError, match="convert it first"):
        C.write_array(vol, np.full((4, 4, 1, 1), 1.5))
    with pytest.raises(InvalidArgumentError, match="axes"):
        C.write_array(vol, np.zeros((4, 4)), axes="xx")
    C.write_array(vol, np.full((4, 4, 1, 1), 7, np.int64))
    assert (ts_read(tmp_path / "s") == 7).all()

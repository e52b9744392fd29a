"""``create.pyramid``: new volumes, added scales and pyramids with CloudVolume's geometry,
checked against numpy and TensorStore."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import precomputed
from create_cases import (
    IMAGE,
    ODD,
    SEG,
    SHARDING,
    cloudvolume_add_scale,
    files,
    image_data,
    info,
    label_data,
    ts_read,
    ts_spec,
)
from precomputed import create as C
from precomputed.downsample import downsample as downsample_array
from precomputed.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
)
from precomputed.internal.geometry import Box

ts = pytest.importorskip("tensorstore")


# -- create_volume -----------------------------------------------------------------------------


def test_created_volume_has_tensorstores_info_and_reads_back_in_tensorstore(tmp_path):
    data = image_data()
    sm = {**ODD, "chunk_size": [16, 8, 4], "encoding": "raw"}
    vol = C.create_volume(str(tmp_path / "ours"), IMAGE, sm, data=data, block_bytes=4096)
    assert vol.scale.key == "4_4_30"
    ts.open(
        ts_spec(tmp_path / "theirs", multiscale_metadata=IMAGE, scale_metadata=sm), create=True
    ).result()
    assert info(tmp_path / "ours") == info(tmp_path / "theirs")
    np.testing.assert_array_equal(ts_read(tmp_path / "ours"), data)
    assert "INCOMPLETE" not in files(tmp_path / "ours")


def test_sharded_segmentation_with_pyramid_matches_numpy_and_tensorstore(tmp_path):
    labels = label_data()
    sm = {
        **ODD,
        "chunk_size": [8, 8, 4],
        "encoding": "compressed_segmentation",
        "compressed_segmentation_block_size": [4, 4, 2],
        "sharding": SHARDING,
    }
    C.create_volume(
        str(tmp_path / "seg"), SEG, sm, data=labels, levels=[(2, 2, 1), (2, 2, 2)], block_bytes=2000
    )
    scales = info(tmp_path / "seg")["scales"]
    assert [s["key"] for s in scales] == ["4_4_30", "8_8_30", "16_16_60"]
    level = labels.transpose(3, 2, 1, 0)  # czyx
    np.testing.assert_array_equal(ts_read(tmp_path / "seg", 0), labels)
    for i, f in enumerate([(2, 2, 1), (2, 2, 2)], start=1):
        level = downsample_array(level, f, "mode")
        np.testing.assert_array_equal(ts_read(tmp_path / "seg", i), level.transpose(3, 2, 1, 0))
        assert scales[i]["sharding"]["hash"] == "identity"  # sharded like the source
        assert scales[i]["encoding"] == "compressed_segmentation"


def test_existing_volume_is_not_overwritten_unless_asked(tmp_path):
    sm = {**ODD, "encoding": "raw"}
    C.create_volume(str(tmp_path / "v"), IMAGE, sm)
    before = info(tmp_path / "v")
    with pytest.raises(AlreadyExistsError, match="already exists"):
        C.create_volume(str(tmp_path / "v"), IMAGE, {**sm, "resolution": [8, 8, 8]})
    assert info(tmp_path / "v") == before
    C.create_volume(str(tmp_path / "v"), SEG, {**sm, "encoding": "raw"}, delete_existing=True)
    assert info(tmp_path / "v")["type"] == "segmentation"


def test_data_of_the_wrong_shape_is_rejected_before_anything_is_written(tmp_path):
    with pytest.raises(InvalidArgumentError, match="but the scale is"):
        C.create_volume(str(tmp_path / "v"), IMAGE, {**ODD}, data=np.zeros((5, 5, 5, 2), np.uint16))
    assert files(tmp_path / "v") == []


# -- add_scale / downsample: CloudVolume's geometry, data by mean and mode ----------------------


def test_added_scales_have_cloudvolumes_size_offset_resolution_and_key(tmp_path):
    path = tmp_path / "v"
    data = image_data()
    vol = C.create_volume(str(path), IMAGE, {**ODD, "chunk_size": [8, 8, 4]}, data=data)
    scale0 = info(path)["scales"][0]
    total = np.array([1, 1, 1])
    for f in [(2, 2, 1), (2, 2, 1), (3, 3, 2)]:
        new = C.add_scale(str(path), factor=f, block_bytes=3000)
        total = total * f
        want = cloudvolume_add_scale(scale0, tuple(total))
        got = info(path)["scales"][-1]
        assert {k: got[k] for k in want} == want
        assert new.scale.key == want["key"]
    assert vol.scale_index == 0


def test_downsampled_data_matches_numpy_on_odd_sizes_and_offsets(tmp_path):
    path = tmp_path / "v"
    data = image_data()
    vol = C.create_volume(str(path), IMAGE, {**ODD, "chunk_size": [8, 8, 4]}, data=data)
    s1 = C.downsample(vol, (2, 2, 2), block_bytes=2500)
    s2 = C.downsample(s1, (3, 1, 1), scale_metadata={"chunk_size": [4, 4, 4]})
    lv1 = downsample_array(data.transpose(3, 2, 1, 0), (2, 2, 2), "mean")
    lv2 = downsample_array(lv1, (3, 1, 1), "mean")
    np.testing.assert_array_equal(ts_read(path, 1), lv1.transpose(3, 2, 1, 0))
    np.testing.assert_array_equal(ts_read(path, 2), lv2.transpose(3, 2, 1, 0))
    assert s2.scale.chunk_sizes == [(4, 4, 4)]
    assert C.default_method("image") == "mean" and C.default_method("segmentation") == "mode"


def test_sharded_scale_is_written_shard_by_shard_in_bounded_blocks(tmp_path):
    path = tmp_path / "v"
    labels = label_data((64, 64, 16, 1))
    sm = {"size": [64, 64, 16], "chunk_size": [8, 8, 4], "encoding": "raw", "sharding": None}
    vol = C.create_volume(str(path), SEG, sm, data=labels)
    # Destination: shards of 2x2x2 chunks (16x16x8 voxels); blocks of ~1 chunk of source.
    dest_sharding = {**SHARDING, "preshift_bits": 3, "minishard_bits": 0, "shard_bits": 4}
    kv = vol.kvstore
    kv.request_log = []
    C.downsample(
        vol,
        (2, 2, 1),
        scale_metadata={"sharding": dest_sharding},
        block_bytes=8 * 8 * 4 * 8 * 4 * 3,
    )
    writes = [k for op, k, *_ in kv.request_log if op == "write" and k.endswith(".shard")]
    assert len(writes) == len(set(writes)) == 8  # 32x32x16 voxels = 2x2x2 shards, once each
    got = ts_read(path, 1)
    np.testing.assert_array_equal(
        got, downsample_array(labels.transpose(3, 2, 1, 0), (2, 2, 1), "mode").transpose(3, 2, 1, 0)
    )


def test_add_scale_from_metadata_alone_and_its_errors(tmp_path):
    path = str(tmp_path / "v")
    C.create_volume(path, IMAGE, {**ODD})
    empty = C.add_scale(path, {"size": [10, 10, 3], "resolution": [9, 9, 9]})
    assert empty.scale.key == "9_9_9" and not empty.read().any()
    with pytest.raises(AlreadyExistsError):
        C.add_scale(path, {"size": [10, 10, 3], "resolution": [9, 9, 9]})
    with pytest.raises(InvalidArgumentError, match="cannot hold"):
        C.add_scale(path, {"size": [1, 1, 1]}, factor=(2, 2, 1), source=0)
    with pytest.raises(InvalidArgumentError, match="factor"):
        C.add_scale(path, factor=(0, 2, 1))
    with pytest.raises(FailedPreconditionError, match="does not exist"):
        C.add_scale(str(tmp_path / "nothing"), factor=(2, 2, 1))
    assert len(info(Path(path))["scales"]) == 2


# -- after an edit: update_coarser_scales ------------------------------------------------------


def test_coarser_scales_chain_follows_integer_factors(tmp_path):
    path = str(tmp_path / "v")
    vol = C.create_volume(path, SEG, {**ODD}, levels=[(2, 2, 1), (2, 2, 1)])
    C.add_scale(path, {"size": [12, 10, 6], "resolution": [12, 12, 30]})  # 3x: from scale 0
    meta = precomputed.open(path).metadata
    assert C.coarser_scales(meta, 0) == [(1, 0, (2, 2, 1)), (3, 0, (3, 3, 1)), (2, 1, (2, 2, 1))]
    assert C.coarser_scales(meta, 1) == [(2, 1, (2, 2, 1))]
    assert C.coarser_scales(meta, 2) == []
    assert vol.scale_index == 0


def test_update_coarser_scales_after_an_edit_matches_a_fresh_downsampling(tmp_path):
    path = str(tmp_path / "v")
    labels = label_data()
    sm = {**ODD, "encoding": "compressed_segmentation", "sharding": SHARDING}
    vol = C.create_volume(path, SEG, sm, data=labels, levels=2)
    edit = (slice(9, 20), slice(4, 11), slice(3, 5))  # absolute x, y, z of scale 0
    vol[(*edit, slice(None))] = 77
    done: list[tuple[int, int]] = []
    box = Box((9, 4, 3), (20, 11, 5))
    stats = C.update_coarser_scales(vol, [box], progress=lambda i, n: done.append((i, n)))
    assert sorted(stats) == [1, 2] and done and done[-1][0] == done[-1][1]
    # Each coarser scale equals the mode downsampling of the edited finer scale.
    scales = precomputed.open_scales(path)
    for fine, coarse in zip(scales, scales[1:], strict=False):
        want = downsample_array(fine.read_czyx(), (2, 2, 1), "mode")
        np.testing.assert_array_equal(coarse.read_czyx(), want)


def test_update_coarser_scales_rewrites_each_touched_shard_once(tmp_path):
    path = str(tmp_path / "v")
    sm = {**ODD, "encoding": "compressed_segmentation", "sharding": SHARDING}
    vol = C.create_volume(path, SEG, sm, data=label_data(), levels=1)
    vol[5:42, 3:32, 2:8, :] = 3  # everything
    kv = vol.kvstore
    kv.request_log = []
    box = Box((5, 3, 2), (42, 32, 8))
    C.update_coarser_scales(vol, [box, box])
    writes = [k for op, k, *_ in kv.request_log if op == "write" and k.endswith(".shard")]
    assert writes and len(writes) == len(set(writes))
    assert (precomputed.open(path, scale_index=1).read() == 3).all()

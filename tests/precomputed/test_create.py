"""Creating volumes and scales, writing arrays and building pyramids (precomputed.create).

TensorStore is the reference: volumes created here must carry the ``info`` TensorStore
writes for the same spec and read back identically; added scales must have CloudVolume's
geometry and key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import precomputed
from precomputed import create as C
from precomputed.downsample import downsample as downsample_array
from precomputed.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
)

ts = pytest.importorskip("tensorstore")

SHARDING = {
    "@type": "neuroglancer_uint64_sharded_v1",
    "preshift_bits": 2,
    "hash": "identity",
    "minishard_bits": 1,
    "shard_bits": 3,
    "minishard_index_encoding": "gzip",
    "data_encoding": "gzip",
}
IMAGE = {"type": "image", "data_type": "uint16", "num_channels": 2}
SEG = {"type": "segmentation", "data_type": "uint64", "num_channels": 1}
ODD = {"size": [37, 29, 6], "voxel_offset": [5, 3, 2], "resolution": [4, 4, 30]}


def ts_spec(path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "driver": "neuroglancer_precomputed",
        "kvstore": {"driver": "file", "path": str(path) + "/"},
        **extra,
    }


def ts_read(path: Path, scale_index: int = 0) -> np.ndarray:
    return ts.open(ts_spec(path, scale_index=scale_index), open=True).result().read().result()


def info(path: Path) -> dict[str, Any]:
    return json.loads((path / "info").read_bytes())


def files(path: Path) -> list[str]:
    if not path.exists():
        return []
    return sorted(
        os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs
    )


def image_data(shape=(37, 29, 6, 2), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 60000, shape, dtype=np.uint16)


def label_data(shape=(37, 29, 6, 1), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 4, shape) * 2**40 + 7).astype(np.uint64)


def cloudvolume_add_scale(scale0: dict[str, Any], factor: tuple[int, int, int]) -> dict[str, Any]:
    """The geometry CloudVolume's ``add_scale(factor)`` computes from scale 0 (factor
    relative to scale 0): float32 division, ceil for size, floor for the offset."""
    f = np.array(factor, np.float32)
    res = [r * k for r, k in zip(scale0["resolution"], factor, strict=True)]
    return {
        "size": [int(v) for v in np.ceil(np.array(scale0["size"], np.float32) / f)],
        "voxel_offset": [
            int(v) for v in np.floor(np.array(scale0["voxel_offset"], np.float32) / f)
        ],
        "resolution": [float(r) for r in res],
        "key": "_".join(str(int(r)) for r in res),  # integral resolutions
    }


# -- plan_scale: the driver's validation and the info TensorStore writes --------------------


@pytest.mark.parametrize(
    "mm, sm",
    [
        (IMAGE, {**ODD, "chunk_size": [16, 16, 4], "encoding": "raw"}),
        ({**IMAGE, "data_type": "uint8", "num_channels": 3}, {**ODD, "encoding": "jpeg"}),
        ({**IMAGE, "data_type": "uint8"}, {**ODD, "encoding": "png", "png_level": 3}),
        (
            SEG,
            {
                **ODD,
                "chunk_size": [8, 8, 4],
                "encoding": "compressed_segmentation",
                "compressed_segmentation_block_size": [4, 4, 2],
                "sharding": SHARDING,
            },
        ),
        (SEG, {"size": [100, 100, 10], "encoding": "compressed_segmentation", "key": "s0"}),
    ],
)
def test_plan_is_the_info_tensorstore_writes(tmp_path, mm, sm):
    plan = C.plan_scale(mm, sm)
    ts.open(ts_spec(tmp_path, multiscale_metadata=mm, scale_metadata=sm), create=True).result()
    assert plan.info == info(tmp_path)
    assert plan.key == info(tmp_path)["scales"][0]["key"]


@pytest.mark.parametrize(
    "mm, sm, error",
    [
        ({**IMAGE, "num_channels": 1}, {**ODD, "encoding": "jpeg"}, "only supported for uint8"),
        ({**IMAGE, "data_type": "uint8", "num_channels": 5}, {**ODD, "encoding": "png"}, "1 to 4"),
        (IMAGE, {"voxel_offset": [1, 2, 3]}, 'cannot be specified without "size"'),
        (IMAGE, {"resolution": [1, 1, 1]}, "domain must be specified"),
        (
            IMAGE,
            {"size": [2**22] * 3, "chunk_size": [1, 1, 1], "sharding": SHARDING},
            "exceed 64 bits",
        ),
        (IMAGE, {**ODD, "jpeg_quality": 50}, 'Only valid for "jpeg" encoding'),
    ],
)
def test_plan_rejects_what_the_driver_rejects(mm, sm, error):
    with pytest.raises(InvalidArgumentError, match=error) as e:
        C.plan_scale(mm, sm)
    with pytest.raises(type(e.value), match=error):
        precomputed.open(
            {"driver": "neuroglancer_precomputed", "kvstore": "memory://plan_rejects/"},
            multiscale_metadata=mm,
            scale_metadata=sm,
            create=True,
        )


def test_plan_against_an_existing_volume_checks_key_and_resolution():
    plan = C.plan_scale(IMAGE, {**ODD, "encoding": "raw"})
    with pytest.raises(AlreadyExistsError, match='key "4_4_30"'):
        C.plan_scale(None, {**ODD, "encoding": "raw"}, plan.metadata)
    custom = C.plan_scale(IMAGE, {**ODD, "key": "s0"})
    with pytest.raises(AlreadyExistsError, match="Scale with resolution"):
        C.plan_scale(None, {**ODD}, custom.metadata)
    added = C.plan_scale(None, {**ODD, "resolution": [8, 8, 30]}, plan.info)
    assert added.scale_index == 1 and added.key == "8_8_30"


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


def test_blocks_tile_the_scale_exactly_and_never_straddle_a_write_chunk():
    plan = C.plan_scale(SEG, {"size": [37, 29, 6], "chunk_size": [4, 4, 2], "sharding": SHARDING})
    write = plan.write_chunk_shape
    for budget in (8, 400, 3000, 10**9):
        groups = C._plan_blocks(plan.scale, (4, 4, 2), 8.0, budget)
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


def test_next_scale_keeps_encoding_parameters_and_chooses_sharding():
    plan = C.plan_scale(
        {**IMAGE, "data_type": "uint8", "num_channels": 1},
        {
            "size": [1000, 1000, 100],
            "encoding": "jpeg",
            "jpeg_quality": 90,
            "chunk_size": [64, 64, 16],
            "sharding": {**SHARDING, "preshift_bits": 6, "minishard_bits": 3, "shard_bits": 6},
        },
    )
    sm = C.next_scale_metadata(plan.scale, (2, 2, 1))
    assert sm["encoding"] == "jpeg" and sm["jpeg_quality"] == 90
    assert sm["size"] == [500, 500, 100] and sm["chunk_size"] == [64, 64, 16]
    spec = sm["sharding"]
    assert (
        spec["preshift_bits"] + spec["minishard_bits"] == 9
    )  # 512 chunks per shard, as the source
    assert C.plan_scale(None, sm, plan.metadata).key == "2_2_1"


# -- cancellation and failure leave nothing half-written ---------------------------------------


class Counter:
    """A cancel callable that says yes after ``n`` checks."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls > self.n


def test_cancelled_new_volume_leaves_nothing(tmp_path):
    path = tmp_path / "v"
    cancel = Counter(5)
    seen = []
    with pytest.raises(C.Cancelled):
        C.create_volume(
            str(path),
            IMAGE,
            {**ODD, "chunk_size": [8, 8, 2]},
            data=image_data(),
            levels=2,
            block_bytes=1000,
            cancel=cancel,
            progress=lambda done, total: seen.append((done, total)),
        )
    assert files(path) == []
    assert seen and seen[-1][0] < seen[-1][1]


def test_cancelled_or_failed_added_scale_leaves_the_volume_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "v"
    C.create_volume(str(path), IMAGE, {**ODD, "chunk_size": [8, 8, 2]}, data=image_data())
    before_info, before_files = (path / "info").read_bytes(), files(path)
    with pytest.raises(C.Cancelled):
        C.add_scale(str(path), factor=(2, 2, 1), block_bytes=500, cancel=Counter(3))
    assert (path / "info").read_bytes() == before_info and files(path) == before_files

    calls = []

    def broken(arr, factor, method):
        calls.append(1)
        if len(calls) > 2:
            raise OSError("disk on fire")
        return downsample_array(arr, factor, method)

    monkeypatch.setattr(C, "downsample_array", broken)
    with pytest.raises(OSError, match="disk on fire"):
        C.add_scale(str(path), factor=(2, 2, 1), block_bytes=500)
    assert (path / "info").read_bytes() == before_info and files(path) == before_files


def test_failed_cleanup_leaves_a_marked_volume_that_discard_removes(tmp_path, monkeypatch):
    path = tmp_path / "v"
    vol = C.create_volume(str(path), IMAGE, {**ODD, "chunk_size": [8, 8, 2]}, data=image_data())
    before_info, before_files = (path / "info").read_bytes(), files(path)

    def broken(arr, factor, method):
        raise OSError("network down")

    monkeypatch.setattr(C, "downsample_array", broken)
    monkeypatch.setattr(
        C, "_remove_scales", lambda *a: (_ for _ in ()).throw(OSError("still down"))
    )
    with pytest.raises(C.IncompleteVolumeError, match="discard_incomplete") as e:
        C.build_pyramid(vol, 2)
    assert isinstance(e.value.__cause__, OSError)
    marker = C.find_incomplete(str(path))
    assert marker is not None and marker["scales"] == ["8_8_30"] and not marker["delete_info"]
    assert len(info(path)["scales"]) == 2  # the half-made scale is still listed...
    monkeypatch.undo()
    assert C.discard_incomplete(str(path))  # ...until the marker's instructions are run
    assert (path / "info").read_bytes() == before_info and files(path) == before_files
    assert C.find_incomplete(str(path)) is None and not C.discard_incomplete(str(path))


def test_failed_new_volume_is_removed_entirely(tmp_path, monkeypatch):
    path = tmp_path / "v"

    def broken(block, dtype):
        raise RuntimeError("bad block")

    monkeypatch.setattr(C, "_cast", broken)
    with pytest.raises(RuntimeError, match="bad block"):
        C.create_volume(str(path), IMAGE, {**ODD}, data=image_data())
    assert files(path) == []


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


@pytest.mark.parametrize(
    "dtype, segmentation, expected",
    [
        ("uint8", False, "uint8"),
        ("float32", False, "float32"),
        ("float64", False, "float32"),
        ("bool", False, "uint8"),
        ("int32", True, "uint32"),
        ("int64", True, "uint64"),
        ("uint8", True, "uint32"),
        ("uint64", True, "uint64"),
    ],
)
def test_layer_dtypes_map_to_supported_data_types(dtype, segmentation, expected):
    assert C.supported_data_type(dtype, segmentation)[0] == expected


@pytest.mark.parametrize(
    "dtype, segmentation", [("int64", False), ("complex64", False), ("float32", True)]
)
def test_unsupported_dtypes_get_a_clear_message(dtype, segmentation):
    with pytest.raises(InvalidArgumentError, match=f"{dtype}.*(convert|label ids)"):
        C.supported_data_type(dtype, segmentation)

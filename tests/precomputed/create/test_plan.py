"""``create.plan``: validation without I/O (the info TensorStore writes), the next scale's
metadata, and which data types a layer's data gets."""

from __future__ import annotations

import pytest

import precomputed
from create_cases import (
    IMAGE,
    ODD,
    SEG,
    SHARDING,
    info,
    ts_spec,
)
from precomputed import create as C
from precomputed.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
)

ts = pytest.importorskip("tensorstore")


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

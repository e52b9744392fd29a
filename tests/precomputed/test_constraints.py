"""What a spec asks of an ``info``: constraints, scale selection, scale creation and the
re-read compatibility check (metadata_test.cc port, compared with TensorStore 0.1.86)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from metadata_cases import (
    MM8,
    MM32,
    SHARDING,
    SHARDING_FULL,
    info_with,
    my_create,
    ts_create,
)
from precomputed.constraints import (
    MultiscaleConstraints,
    ScaleConstraints,
    create_scale,
    select_scale,
    validate_metadata_compatibility,
)
from precomputed.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from precomputed.metadata import (
    MultiscaleMetadata,
)
from precomputed.schema import Schema, Unit
from precomputed.sharding import ShardingSpec
from precomputed.spec import parse_spec

ts = pytest.importorskip("tensorstore")


# ---------------------------------------------------------------------------------------
# Constraints (MultiscaleMetadataConstraintsTest, ScaleMetadataConstraintsTest, ...)
# ---------------------------------------------------------------------------------------


def test_constraints_parse_empty_and_valid() -> None:
    assert MultiscaleConstraints.from_json({}) == MultiscaleConstraints()
    assert ScaleConstraints.from_json({}) == ScaleConstraints()
    mc = MultiscaleConstraints.from_json({"type": "img", "data_type": "uint8", "num_channels": 3})
    assert mc.to_json() == {"type": "img", "data_type": "uint8", "num_channels": 3}
    sc = ScaleConstraints.from_json(
        {
            "key": "k",
            "size": [1, 2, 3],
            "voxel_offset": [4, 5, 6],
            "chunk_size": [1, 1, 1],
            "resolution": [5, 6, 7],
            "encoding": "jpeg",
            "jpeg_quality": 50,
            "sharding": SHARDING,
        }
    )
    assert sc.sharding == ShardingSpec(1, "identity", 2, 3, "raw", "raw")
    assert sc.to_json()["sharding"] == SHARDING_FULL
    assert sc.resolution == (5.0, 6.0, 7.0) and sc.voxel_offset == (4, 5, 6)


def test_scale_constraints_null_sharding_is_explicitly_unsharded() -> None:
    absent = ScaleConstraints.from_json({})
    null = ScaleConstraints.from_json({"sharding": None})
    assert (absent.sharding, absent.sharding_specified) == (None, False)
    assert (null.sharding, null.sharding_specified) == (None, True)
    assert null.to_json() == {"sharding": None} and absent.to_json() == {}
    assert ScaleConstraints.from_json({"size": [1, 2, 3]}).voxel_offset == (0, 0, 0)


@pytest.mark.parametrize(
    ("obj", "kwargs", "fragment"),
    [
        ({"encoding": "jpeg"}, {"data_type": "uint16"}, '"jpeg" encoding only supported for uint8, not for uint16'),
        ({"encoding": "jpeg"}, {"num_channels": 2}, '"jpeg" encoding only supports 1 or 3 channels, not 2'),
        ({"encoding": "png"}, {"num_channels": 5}, '"png" encoding only supports 1 to 4 channels, not 5'),
        ({"encoding": "compressed_segmentation"}, {"data_type": "uint8"}, "compressed_segmentation encoding only supported for uint32 and uint64"),
        ({"encoding": "raw", "compressed_segmentation_block_size": [8, 8, 8]}, {}, 'Only valid for "compressed_segmentation" encoding'),
        ({"compressed_segmentation_block_size": [8, 8, 8]}, {}, 'Only valid for "compressed_segmentation" encoding'),
        ({"encoding": "raw", "jpeg_quality": 5}, {}, 'Only valid for "jpeg" encoding'),
        ({"jpeg_quality": 5}, {}, 'Only valid for "jpeg" encoding'),
        ({"key": None}, {}, '"key": Expected string, but received: null'),
        ({"size": None}, {}, '"size": Expected array, but received: null'),
        ({"extra": 1}, {}, 'Object includes extra members: "extra"'),
        ({"chunk_sizes": [[1, 1, 1]]}, {}, 'Object includes extra members: "chunk_sizes"'),
        ({"voxel_offset": [1, 2, 3]}, {}, '"voxel_offset": cannot be specified without "size"'),
        ({"size": [10, 10, 10], "voxel_offset": [4611686018427387902, 0, 0]}, {}, "do not specify a valid region"),
        ({"sharding": "invalid"}, {}, '"sharding": Expected object, but received: "invalid"'),
        ({"sharding": {**SHARDING, "@type": "neuroglancer_uint64_sharded_v2"}}, {}, '"neuroglancer_uint64_sharded_v2"'),
        ({"size": [1 << 40, 1 << 40, 2], "chunk_size": [1, 1, 1], "sharding": SHARDING}, {}, "would exceed 64 bits"),
    ],
)  # fmt: skip
def test_scale_constraints_parse_invalid(obj: dict, kwargs: dict, fragment: str) -> None:
    with pytest.raises(InvalidArgumentError) as e:
        ScaleConstraints.from_json(obj, **kwargs)
    assert fragment in str(e.value)


def test_64_bit_check_only_when_sharded() -> None:
    big = {"size": [1 << 40, 1 << 40, 2], "chunk_size": [1, 1, 1]}
    ScaleConstraints.from_json(big)
    ScaleConstraints.from_json({**big, "sharding": None})


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ({"type": None}, '"type": Expected string, but received: null'),
        ({"data_type": None}, '"data_type": Expected string, but received: null'),
        ({"num_channels": None}, '"num_channels": Expected integer in the range [1, 2147483647], but received: null'),
        ({"num_channels": 0}, "but received: 0"),
        ({"extra": 1, "extra2": 2}, 'Object includes extra members: "extra","extra2"'),
        ({"data_type": "UINT8"}, 'Unsupported data type: "UINT8"'),
    ],
)  # fmt: skip
def test_multiscale_constraints_parse_invalid(obj: dict, fragment: str) -> None:
    with pytest.raises(InvalidArgumentError) as e:
        MultiscaleConstraints.from_json(obj)
    assert fragment in str(e.value)


def test_multiscale_constraints_dtype_feeds_data_type() -> None:
    assert MultiscaleConstraints.from_json(None, dtype="uint16").data_type == "uint16"
    with pytest.raises(
        InvalidArgumentError, match="Expected data type of uint16 but received: uint8"
    ):
        MultiscaleConstraints.from_json({"data_type": "uint8"}, dtype="uint16")


# ---------------------------------------------------------------------------------------
# Scale selection (OpenScaleTest)
# ---------------------------------------------------------------------------------------

TWO_SCALES = MultiscaleMetadata.from_json(
    {
        "@type": "neuroglancer_multiscale_volume",
        "type": "image",
        "data_type": "uint8",
        "num_channels": 1,
        "scales": [
            {"key": "a", "size": [100, 100, 100], "resolution": [5, 6, 7],
             "chunk_sizes": [[10, 10, 10], [5, 5, 5]], "encoding": "raw"},
            {"key": "b", "size": [50, 50, 50], "resolution": [10, 12, 7], "voxel_offset": [1, 2, 3],
             "chunk_sizes": [[8, 8, 8]], "encoding": "jpeg", "sharding": SHARDING},
        ],
    }
)  # fmt: skip


def sel(scale: dict | None = None, index: int | None = None, units: list | None = None, **mc: Any):
    units_ = None if units is None else [None if u is None else Unit.parse(u) for u in units]
    return select_scale(
        TWO_SCALES,
        MultiscaleConstraints(**mc),
        ScaleConstraints.from_json(scale or {}),
        index,
        units_,
    )


def test_select_scale_success() -> None:
    assert sel() == (0, (10, 10, 10))
    assert sel(index=1) == (1, (8, 8, 8))
    assert sel({"key": "b"}) == (1, (8, 8, 8))
    assert sel({"resolution": [10, 12, 7]}) == (1, (8, 8, 8))
    assert sel({"key": "b", "resolution": [10, 12, 7]}) == (1, (8, 8, 8))
    assert sel({"chunk_size": [5, 5, 5]}) == (0, (5, 5, 5))
    assert sel(units=["10nm", None, None, None]) == (1, (8, 8, 8))
    assert sel(units=[None, None, "7nm", None]) == (0, (10, 10, 10))
    # size/encoding never select: they are checked after selection.
    assert sel({"encoding": "raw"}) == (0, (10, 10, 10))
    assert sel(data_type="uint8") == (0, (10, 10, 10))
    assert select_scale(TWO_SCALES, None, None, None, Schema.from_json({"dimension_units": ["10nm", None, None, None]})) == (1, (8, 8, 8))  # fmt: skip


def test_select_scale_errors() -> None:
    with pytest.raises(
        FailedPreconditionError, match="^Scale 2 does not exist, number of scales is 2$"
    ):
        sel(index=2)
    with pytest.raises(NotFoundError, match='^No scale found matching key="invalidkey"$'):
        sel({"key": "invalidkey"})
    with pytest.raises(
        NotFoundError,
        match=r'^No scale found matching dimension_units=\["41 nm", "42 nm", "43 nm", null\]$',
    ):
        sel({"resolution": [41, 42, 43]})
    with pytest.raises(
        NotFoundError, match=r'dimension_units=\["5 nm", "6 nm", "7 nm", null\], key="b"$'
    ):
        sel({"key": "b", "resolution": [5, 6, 7]})
    with pytest.raises(NotFoundError, match="^No scale found matching $"):
        select_scale(MultiscaleMetadata("image", "uint8", 1, []), None, None)
    with pytest.raises(
        FailedPreconditionError, match='^Expected "num_channels" of 2 but received: 1$'
    ):
        sel(num_channels=2)
    with pytest.raises(
        FailedPreconditionError,
        match='Expected "size" of \\[3,3,3\\] but received: \\[100,100,100\\]',
    ):
        sel({"size": [3, 3, 3]})
    with pytest.raises(InvalidArgumentError, match='requires a base unit of "nm"'):
        sel(units=["4um", None, None, None])
    with pytest.raises(
        InvalidArgumentError, match='do not match "resolution" in metadata: \\{5, 6, 7\\}'
    ):
        sel({"resolution": [5, 6, 7]}, units=["4nm", None, None, None])


@pytest.mark.parametrize(
    ("scale", "index", "message"),
    [
        ({"key": "b"}, 0, 'Expected "key" of "b" but received: "a"'),
        ({"encoding": "png"}, 1, 'Expected "encoding" of "png" but received: "jpeg"'),
        ({"encoding": "jpeg", "jpeg_quality": 10}, 1, 'Expected "jpeg_quality" of 10 but received: 75'),
        ({"resolution": [4, 4, 41]}, 0, 'Expected "resolution" of [4.0,4.0,41.0] but received: [5.0,6.0,7.0]'),
        ({"sharding": None}, 1, 'Expected "sharding" of null but received: {"@type":"neuroglancer_uint64_sharded_v1","data_encoding":"raw","hash":"identity","minishard_bits":2,"minishard_index_encoding":"raw","preshift_bits":1,"shard_bits":3}'),
        ({"sharding": SHARDING}, 0, 'but received: null'),
        ({"size": [50, 50, 50], "voxel_offset": [0, 0, 0]}, 1, 'Expected "voxel_offset" of [0,0,0] but received: [1,2,3]'),
        ({"chunk_size": [10, 10, 2]}, 0, 'Expected "chunk_size" of [10,10,2] but received: [[10,10,10],[5,5,5]]'),
    ],
)  # fmt: skip
def test_select_scale_metadata_mismatch(scale: dict, index: int, message: str) -> None:
    with pytest.raises(FailedPreconditionError) as e:
        sel(scale, index)
    assert str(e.value).endswith(message) and str(e.value).startswith("Expected")


def test_png_level_mismatch_reports_unset_as_minus_one() -> None:
    meta = MultiscaleMetadata.from_json(info_with(encoding="png"))
    with pytest.raises(FailedPreconditionError, match='Expected "png_level" of 5 but received: -1'):
        select_scale(meta, None, ScaleConstraints.from_json({"encoding": "png", "png_level": 5}))


# ---------------------------------------------------------------------------------------
# Creating scales (CreateScaleTest) — compared with TensorStore
# ---------------------------------------------------------------------------------------

CREATE_CASES: dict[str, list[dict[str, Any]]] = {
    "explicit_key": [{"multiscale_metadata": {**MM8, "type": "image"}, "scale_metadata": {"key": "scale_key", "size": [10, 11, 12], "chunk_size": [1, 2, 3], "resolution": [5, 6, 7], "voxel_offset": [1, 2, 3]}}],
    "generated_key": [{"multiscale_metadata": MM8, "scale_metadata": {"size": [10, 11, 12], "resolution": [5, 6, 7]}}],
    "key_formatting": [{"multiscale_metadata": MM8, "scale_metadata": {"size": [1, 1, 1], "resolution": [1234567, 12345678.9, 3]}}],
    "cseg_default_block": [{"multiscale_metadata": MM32, "scale_metadata": {"size": [100, 100, 100], "encoding": "compressed_segmentation"}, "scale_index": 0}],
    "cseg_small_chunk": [{"multiscale_metadata": MM32, "scale_metadata": {"size": [100, 100, 100], "chunk_size": [4, 100, 100], "encoding": "compressed_segmentation"}}],
    "cseg_codec_chunk": [{"multiscale_metadata": MM32, "scale_metadata": {"size": [1000, 2000, 3000], "encoding": "compressed_segmentation"}, "schema": {"chunk_layout": {"codec_chunk": {"shape": [16, 0, 0, 0]}}}}],
    "chooser_2_channels": [{"schema": {"dtype": "uint16", "domain": {"shape": [1000, 2000, 3000, 2]}}}],
    "chooser_capped": [{"schema": {"dtype": "uint16", "domain": {"shape": [100, 200, 300, 1]}}}],
    "chooser_fits": [{"schema": {"dtype": "uint16", "domain": {"shape": [100, 100, 100, 1]}}}],
    "chooser_aspect": [{"schema": {"dtype": "uint16", "domain": {"shape": [1000, 2000, 3000, 2]}, "chunk_layout": {"read_chunk": {"aspect_ratio": [2, 1, 1, 0], "elements": 2000000}}}}],
    "chooser_full_extent": [{"schema": {"dtype": "uint8", "domain": {"shape": [1000, 2000, 3000, 1]}, "chunk_layout": {"read_chunk": {"shape": [-1, 0, 0, 0]}}}}],
    "chooser_soft_shape": [{"schema": {"dtype": "uint8", "domain": {"inclusive_min": [1, 2, 3, 0], "exclusive_max": [1000, 2000, 3000, 1]}, "chunk_layout": {"chunk": {"shape_soft_constraint": [50, 0, 0, 0]}}}}],
    "auto_sharding_elements": [{"schema": {"dtype": "uint8", "domain": {"shape": [1000, 1000, 1000, 1]}, "chunk_layout": {"read_chunk": {"shape": [30, 40, 50, 0]}, "write_chunk": {"elements": 30 * 40 * 50 * 8}}}}],
    "auto_sharding_round_down": [{"schema": {"dtype": "uint8", "domain": {"shape": [1000, 1000, 1000, 1]}, "chunk_layout": {"read_chunk": {"shape": [30, 40, 50, 0]}, "write_chunk": {"elements": 30 * 40 * 50 * 9}}}}],
    "auto_sharding_whole_z": [{"schema": {"dtype": "uint8", "domain": {"shape": [1000, 1000, 1000, 1]}, "chunk_layout": {"read_chunk": {"shape": [30, 40, 50, 0]}, "write_chunk": {"shape_soft_constraint": [0, 0, -1, 0]}}}}],
    "auto_sharding_doc_example": [{"schema": {"dtype": "uint8", "domain": {"shape": [34432, 39552, 51508, 1]}, "chunk_layout": {"read_chunk": {"shape": [64, 64, 64, 0]}, "write_chunk": {"elements": 8000000000}}}}],
    "png_sharded_raw_data": [{"scale_metadata": {"encoding": "png"}, "schema": {"dtype": "uint8", "domain": {"shape": [100, 100, 100, 1]}, "chunk_layout": {"read_chunk": {"shape": [10, 10, 10, 0]}, "write_chunk": {"shape": [20, 20, 20, 0]}}}}],
    "jpeg_sharded_quality": [{"scale_metadata": {"encoding": "jpeg", "jpeg_quality": 90}, "schema": {"dtype": "uint8", "domain": {"shape": [100, 100, 100, 3]}, "chunk_layout": {"write_chunk": {"elements": 10000000}}}}],
    "shard_data_encoding_only": [{"schema": {"dtype": "uint8", "domain": {"shape": [100, 100, 100, 1]}, "codec": {"driver": "neuroglancer_precomputed", "shard_data_encoding": "raw"}}}],
    "codec_from_schema": [{"schema": {"dtype": "uint8", "domain": {"shape": [10, 10, 10, 1]}, "codec": {"driver": "neuroglancer-precomputed", "encoding": "jpeg", "jpeg_quality": 60}}}],
    "units": [{"schema": {"dtype": "uint8", "domain": {"shape": [10, 10, 10, 1]}, "dimension_units": ["8nm", "10nm", None, None]}}],
    "explicit_unsharded": [{"multiscale_metadata": MM8, "scale_metadata": {"size": [100, 100, 100], "sharding": None}, "schema": {"chunk_layout": {"write_chunk": {"elements": 10000000}}}}],
    "second_scale": [{"multiscale_metadata": MM32, "scale_metadata": {"size": [64, 64, 64]}},
                     {"scale_metadata": {"size": [32, 32, 32], "resolution": [2, 2, 1]}},
                     {"scale_metadata": {"size": [16, 16, 16], "resolution": [41, 42, 43]}, "scale_index": 2}],
    "multiple_scales_units": [{"schema": {"dtype": "uint8", "domain": {"shape": [10, 10, 10, 1]}, "dimension_units": ["8nm", "10nm", "30nm", None]}},
                              {"schema": {"domain": {"shape": [5, 5, 10, 1]}, "dimension_units": ["16nm", "20nm", "30nm", None]}}],
}  # fmt: skip


@pytest.mark.parametrize("name", CREATE_CASES)
def test_create_scale_matches_tensorstore(tmp_path: Path, name: str) -> None:
    theirs = ts_create(tmp_path, CREATE_CASES[name])
    assert not any(t.startswith("ERROR") for t in theirs), theirs
    assert my_create(CREATE_CASES[name]) == theirs


def test_create_scale_results() -> None:
    """Spot checks of the values the TensorStore comparisons above pin down."""
    chunk = {n: json.loads(my_create(CREATE_CASES[n])[-1])["scales"][-1] for n in CREATE_CASES}
    assert chunk["chooser_2_channels"]["chunk_sizes"] == [[80, 80, 80]]
    assert chunk["chooser_capped"]["chunk_sizes"] == [[100, 102, 102]]
    assert chunk["chooser_aspect"]["chunk_sizes"] == [[159, 79, 79]]
    assert chunk["generated_key"]["key"] == "5_6_7"
    assert chunk["key_formatting"]["key"] == "1.23457e+06_1.23457e+07_3"
    assert chunk["cseg_default_block"]["compressed_segmentation_block_size"] == [8, 8, 8]
    assert chunk["cseg_small_chunk"]["compressed_segmentation_block_size"] == [4, 11, 11]
    doc = chunk["auto_sharding_doc_example"]["sharding"]
    assert (doc["preshift_bits"], doc["minishard_bits"], doc["shard_bits"]) == (9, 6, 15)
    assert doc["minishard_index_encoding"] == "gzip" and doc["data_encoding"] == "gzip"
    assert chunk["png_sharded_raw_data"]["sharding"]["data_encoding"] == "raw"
    assert "png_level" not in chunk["png_sharded_raw_data"]
    assert chunk["jpeg_sharded_quality"]["jpeg_quality"] == 90
    one = chunk["shard_data_encoding_only"]["sharding"]
    assert (one["preshift_bits"], one["minishard_bits"]) == (0, 0)
    assert "sharding" not in chunk["explicit_unsharded"]
    assert chunk["units"]["resolution"] == [8.0, 10.0, 1.0]
    assert json.loads(my_create(CREATE_CASES["cseg_default_block"])[0])["type"] == "segmentation"


def test_create_scale_returns_new_index() -> None:
    req = parse_spec(
        {"kvstore": "memory://", "multiscale_metadata": MM8, "scale_metadata": {"size": [4, 4, 4]}}
    )
    meta, index = create_scale(None, req.multiscale, req.scale, None, req.schema)
    assert index == 0
    req2 = parse_spec({"kvstore": "memory://", "scale_metadata": {"size": [2, 2, 2], "key": "x"}})
    meta2, index2 = create_scale(meta, req2.multiscale, req2.scale, None, req2.schema)
    assert index2 == 1 and [s.key for s in meta2.scales] == ["1_1_1", "x"]
    assert len(meta.scales) == 1


def test_create_scale_assume_metadata_pads_scales(tmp_path: Path) -> None:
    spec = {
        "kvstore": "memory://",
        "multiscale_metadata": MM8,
        "scale_metadata": {"size": [4, 4, 4]},
    }
    req = parse_spec({**spec, "scale_index": 2}, assume_metadata=True)
    meta, index = create_scale(None, req.multiscale, req.scale, 2, req.schema, assume_metadata=True)
    assert index == 2 and len(meta.scales) == 3 and meta.scales[2].key == "1_1_1"
    theirs = ts.open(
        {"driver": "neuroglancer_precomputed", "kvstore": {"driver": "memory"}, **{k: v for k, v in spec.items() if k != "kvstore"}, "scale_index": 2},
        assume_metadata=True,
    ).result()  # fmt: skip
    assert theirs.spec().to_json()["scale_index"] == 2
    with pytest.raises(FailedPreconditionError, match="Cannot create scale 2"):
        create_scale(None, req.multiscale, req.scale, 2, req.schema)


E = {"multiscale_metadata": MM8, "scale_metadata": {"size": [10, 10, 10], "key": "a"}}
CREATE_ERRORS: dict[str, tuple[list[dict[str, Any]], type, str]] = {
    "27_no_domain": ([{"multiscale_metadata": MM8}], InvalidArgumentError, "domain must be specified"),
    "27_no_channels": ([{"multiscale_metadata": {"data_type": "uint8"}, "scale_metadata": {"size": [1, 1, 1]}}], InvalidArgumentError, "domain must be specified"),
    "28_no_dtype": ([{"multiscale_metadata": {"num_channels": 1}, "scale_metadata": {"size": [1, 1, 1]}}], InvalidArgumentError, "dtype must be specified"),
    "29_index_in_new_volume": ([{"scale_index": 1, **E}], FailedPreconditionError, "Cannot create scale 1 in new multiscale volume"),
    "30_index_exists": ([E, {"scale_index": 0, "scale_metadata": {"size": [10, 10, 10], "key": "b"}}], AlreadyExistsError, "Scale index 0 already exists"),
    "30_index_gap": ([E, {"scale_index": 2, "scale_metadata": {"size": [10, 10, 10]}}], FailedPreconditionError, "Scale index to create (2) must equal the existing number of scales (1)"),
    "31_key_exists": ([E, E], AlreadyExistsError, 'Scale with key "a" already exists'),
    "31_key_collision_by_formatting": ([{**E, "scale_metadata": {"size": [1, 1, 1], "resolution": [1234567, 1, 1]}}, {"scale_metadata": {"size": [1, 1, 1], "resolution": [1234568, 1, 1]}}], AlreadyExistsError, 'Scale with key "1.23457e+06_1_1" already exists'),
    "32_resolution_exists": ([{**E, "scale_metadata": {**E["scale_metadata"], "resolution": [5, 6, 7]}}, {"scale_metadata": {"size": [5, 5, 5], "resolution": [5, 6, 7]}}], AlreadyExistsError, "Scale with resolution [5.0,6.0,7.0] already exists"),
    "33_data_type": ([E, {"multiscale_metadata": {"data_type": "uint16"}, "scale_metadata": {"size": [1, 1, 1], "key": "b"}}], FailedPreconditionError, 'Expected "data_type" of "uint16" but received: "uint8"'),
    "33_num_channels": ([E, {"multiscale_metadata": {"num_channels": 3}, "scale_metadata": {"size": [1, 1, 1], "key": "b"}}], FailedPreconditionError, 'Expected "num_channels" of 3 but received: 1'),
    "33_type": ([E, {"multiscale_metadata": {"type": "segmentation"}, "scale_metadata": {"size": [1, 1, 1], "key": "b"}}], FailedPreconditionError, 'Expected "type" of "segmentation" but received: "image"'),
    "34_encoding": ([E, {"scale_metadata": {"size": [1, 1, 1], "key": "b", "encoding": "compressed_segmentation"}}], FailedPreconditionError, "compressed_segmentation encoding only supported for uint32 and uint64, not for uint8"),
    "35_write_chunk": ([{**E, "scale_metadata": {"size": [10, 10, 10], "chunk_size": [5, 5, 5]}, "schema": {"chunk_layout": {"write_chunk": {"shape": [4, 0, 0, 0]}}}}], InvalidArgumentError, "Cannot satisfy write chunk shape constraint"),
    "read_chunk_conflict": ([{**E, "scale_metadata": {"size": [10, 10, 10], "chunk_size": [5, 5, 5]}, "schema": {"chunk_layout": {"read_chunk": {"shape": [4, 0, 0, 0]}}}}], InvalidArgumentError, "Error setting read_chunk shape: New hard constraint (5) for dimension 0 does not match existing hard constraint (4)"),
    "channel_chunking": ([{**E, "schema": {"chunk_layout": {"read_chunk": {"shape": [0, 0, 0, 3]}}}}], InvalidArgumentError, "Chunking of channel dimension is not supported"),
    "inner_order": ([{**E, "schema": {"chunk_layout": {"inner_order": [0, 1, 2, 3]}}}], InvalidArgumentError, "Only lexicographic {channel, z, y, x} inner order is supported"),
    "grid_origin": ([{**E, "scale_metadata": {"size": [10, 10, 10], "voxel_offset": [1, 2, 3]}, "schema": {"chunk_layout": {"grid_origin": [0, 0, 0, 0]}}}], InvalidArgumentError, "Chunk grid origin must match domain origin"),
    "codec_chunk_raw": ([{**E, "schema": {"chunk_layout": {"codec_chunk": {"shape": [8, 0, 0, 0]}}}}], InvalidArgumentError, "codec_chunk_shape not supported by raw encoding"),
    "codec_conflict": ([{**E, "scale_metadata": {"size": [10, 10, 10], "encoding": "jpeg"}, "schema": {"codec": {"driver": "neuroglancer_precomputed", "encoding": "raw"}}}], InvalidArgumentError, 'Cannot merge codec spec {"driver":"neuroglancer_precomputed","encoding":"jpeg"} with {"driver":"neuroglancer_precomputed","encoding":"raw"}: "encoding" mismatch'),
    "shard_data_encoding_mismatch": ([{**E, "scale_metadata": {"size": [10, 10, 10], "sharding": SHARDING}, "schema": {"codec": {"driver": "neuroglancer_precomputed", "shard_data_encoding": "gzip"}}}], InvalidArgumentError, '"shard_data_encoding" mismatch'),
    "shard_data_encoding_unsharded": ([{**E, "scale_metadata": {"size": [10, 10, 10], "sharding": None}, "schema": {"codec": {"driver": "neuroglancer_precomputed", "shard_data_encoding": "gzip"}}}], InvalidArgumentError, "shard_data_encoding requires sharded format"),
    "fill_value": ([{**E, "schema": {"fill_value": 0}}], InvalidArgumentError, "fill_value not supported by neuroglancer_precomputed format"),
    "units_base": ([{**E, "schema": {"dimension_units": ["1um", None, None, None]}}], InvalidArgumentError, 'Invalid dimension units ["um", null, null, null]: neuroglancer_precomputed format requires a base unit of "nm"'),
    "units_channel": ([{**E, "schema": {"dimension_units": ["1um", None, None, "1nm"]}}], InvalidArgumentError, "does not allow units to be specified for channel dimension"),
    "units_resolution": ([{**E, "scale_metadata": {"size": [1, 1, 1], "resolution": [1, 2, 3]}, "schema": {"dimension_units": ["2nm", None, None, None]}}], InvalidArgumentError, 'Dimension units ["2 nm", null, null, null] do not match "resolution" in metadata: {1, 2, 3}'),
}  # fmt: skip


@pytest.mark.parametrize("name", CREATE_ERRORS)
def test_create_scale_errors_match_tensorstore(tmp_path: Path, name: str) -> None:
    specs, cls, message = CREATE_ERRORS[name]
    mine = my_create(specs)
    theirs = ts_create(tmp_path, specs)
    assert mine[-1].startswith("ERROR ") and message in mine[-1]
    assert theirs[-1].startswith("ERROR") and message in theirs[-1]
    assert mine[:-1] == theirs[:-1]
    req = [parse_spec({"kvstore": "memory://", **s}) for s in specs]
    meta = None
    for r in req[:-1]:
        meta, _ = create_scale(meta, r.multiscale, r.scale, r.scale_index, r.schema)
    with pytest.raises(cls):
        create_scale(meta, req[-1].multiscale, req[-1].scale, req[-1].scale_index, req[-1].schema)


def test_validate_metadata_compatibility() -> None:
    old = TWO_SCALES
    validate_metadata_compatibility(old, copy.deepcopy(old), 1, (8, 8, 8))

    def changed(f: Any, index: int = 0, chunk: tuple = (10, 10, 10)) -> None:
        new = copy.deepcopy(old)
        f(new)
        validate_metadata_compatibility(old, new, index, chunk)

    # Allowed: type, resolution, jpeg quality, other scales, extra members.
    changed(lambda m: setattr(m, "type", "segmentation"))
    changed(lambda m: setattr(m.scales[0], "resolution", (1.0, 1.0, 1.0)))
    changed(lambda m: setattr(m.scales[1], "jpeg_quality", 10), 1, (8, 8, 8))
    changed(lambda m: m.scales.pop(1))
    changed(lambda m: m.extra.update(mesh="m"))
    # Not allowed:
    for f, fragment in [
        (lambda m: setattr(m, "num_channels", 2), '"num_channels"'),
        (lambda m: setattr(m, "data_type", "uint16"), '"data_type"'),
        (lambda m: setattr(m.scales[0], "key", "z"), '"key"'),
        (lambda m: setattr(m.scales[0], "size", (1, 1, 1)), '"size"'),
        (lambda m: setattr(m.scales[0], "voxel_offset", (1, 1, 1)), '"voxel_offset"'),
        (lambda m: setattr(m.scales[0], "encoding", "png"), '"encoding"'),
        (
            lambda m: setattr(m.scales[0], "sharding", ShardingSpec(0, "identity", 0, 0)),
            '"sharding"',
        ),
        (
            lambda m: setattr(m.scales[0], "chunk_sizes", [(5, 5, 5)]),
            "missing chunk size [10,10,10] for scale 0",
        ),
        (lambda m: m.scales.clear(), "Updated metadata is missing scale 0"),
    ]:
        with pytest.raises(FailedPreconditionError, match=re.escape(fragment)):
            changed(f)

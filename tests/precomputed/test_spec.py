"""Spec parsing, URLs, schema validation and bound specs (driver_test.cc spec/error parts).

TensorStore 0.1.86 is the oracle: most tables run the same input through TensorStore
and check that the message we produce is the one it produces.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from precomputed.constraints import create_scale, select_scale
from precomputed.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from precomputed.metadata import MultiscaleMetadata
from precomputed.schema import (
    CodecSpec,
    GridConstraints,
    Schema,
    Unit,
    choose_chunk_shape,
    scale_codec,
    scale_domain,
)
from precomputed.spec import OpenRequest, bound_spec, parse_spec

ts = pytest.importorskip("tensorstore")

DRIVER = "neuroglancer_precomputed"
MEM = {"driver": "memory"}
SHARDING = {
    "@type": "neuroglancer_uint64_sharded_v1",
    "preshift_bits": 0,
    "hash": "identity",
    "minishard_bits": 0,
    "shard_bits": 0,
}


def spec_of(**members: Any) -> dict[str, Any]:
    return {"driver": DRIVER, "kvstore": MEM, **members}


def ts_parse_error(spec: dict[str, Any]) -> str | None:
    """TensorStore's spec-parse message for ``spec`` (None if it parses)."""
    try:
        ts.Spec(spec)
    except ValueError as e:
        return str(e)
    return None


# ---------------------------------------------------------------------------------------
# §7 items 1-15: spec parsing errors (all INVALID_ARGUMENT)
# ---------------------------------------------------------------------------------------

SPEC_ERRORS: dict[str, tuple[dict[str, Any], str]] = {
    "01_extra_member": (spec_of(extra_member=1), 'Object includes extra members: "extra_member"'),
    "03_null_kvstore": (spec_of(kvstore=None), 'Error parsing object member "kvstore": Expected object, but received: null'),
    "03_null_path": (spec_of(path=None), 'Error parsing object member "path": Expected string, but received: null'),
    "03_null_scale_metadata": (spec_of(scale_metadata=None), 'Error parsing object member "scale_metadata": Expected object, but received: null'),
    "03_null_multiscale_metadata": (spec_of(multiscale_metadata=None), 'Error parsing object member "multiscale_metadata": Expected object, but received: null'),
    "03_null_scale_index": (spec_of(scale_index=None), 'Error parsing object member "scale_index": Expected 64-bit unsigned integer, but received: null'),
    "03_bool_open": (spec_of(open=5), 'Error parsing object member "open": Expected boolean, but received: 5'),
    "04_dtype_string": (spec_of(dtype="string"), "string data type is not one of the supported data types: uint8, uint16, uint32, int8, int16, int32, uint64, float32"),
    "04_dtype_int64": (spec_of(dtype="int64"), "int64 data type is not one of the supported data types"),
    "04_dtype_bool": (spec_of(dtype="bool"), "bool data type is not one of the supported data types"),
    "04_dtype_unknown": (spec_of(dtype="UINT8"), 'Error parsing object member "dtype": Unsupported data type: "UINT8"'),
    "05_dtype_mismatch": (spec_of(dtype="uint16", multiscale_metadata={"data_type": "uint8"}), 'Error parsing object member "multiscale_metadata": Error parsing object member "data_type": Expected data type of uint16 but received: uint8'),
    "05_schema_dtype_mismatch": (spec_of(dtype="uint8", schema={"dtype": "uint16"}), "Specified dtype (uint8) does not match existing value (uint16)"),
    "06_rank_3": (spec_of(rank=3), "Rank specified by rank (4) does not match existing rank specified by schema (3)"),
    "06_rank_5": (spec_of(schema={"rank": 5}), "Rank specified by rank (4) does not match existing rank specified by schema (5)"),
    "06_domain_rank": (spec_of(schema={"domain": {"shape": [1, 2, 3]}}), "Rank specified by rank (4) does not match existing rank specified by schema (3)"),
    "07_multiscale_extra": (spec_of(multiscale_metadata={"extra": 1}), 'Error parsing object member "multiscale_metadata": Object includes extra members: "extra"'),
    "07_scale_extra": (spec_of(scale_metadata={"extra": 1}), 'Error parsing object member "scale_metadata": Object includes extra members: "extra"'),
    "07_chunk_sizes": (spec_of(scale_metadata={"chunk_sizes": [[1, 1, 1]]}), 'Object includes extra members: "chunk_sizes"'),
    "08_voxel_offset_without_size": (spec_of(scale_metadata={"voxel_offset": [1, 2, 3]}), 'Error parsing object member "scale_metadata": Error parsing object member "voxel_offset": cannot be specified without "size"'),
    "09_jpeg_quality": (spec_of(scale_metadata={"jpeg_quality": 5}), 'Error parsing object member "jpeg_quality": Only valid for "jpeg" encoding'),
    "09_png_level": (spec_of(scale_metadata={"encoding": "raw", "png_level": 5}), 'Error parsing object member "png_level": Only valid for "png" encoding'),
    "09_block_size": (spec_of(scale_metadata={"compressed_segmentation_block_size": [1, 1, 1]}), 'Only valid for "compressed_segmentation" encoding'),
    "10_jpeg_quality_range": (spec_of(scale_metadata={"encoding": "jpeg", "jpeg_quality": 101}), "Expected integer in the range [0, 100], but received: 101"),
    "10_png_level_range": (spec_of(scale_metadata={"encoding": "png", "png_level": 10}), "Expected integer in the range [0, 9], but received: 10"),
    "10_chunk_size_range": (spec_of(scale_metadata={"chunk_size": [0, 1, 1]}), '"chunk_size": Error parsing value at position 0: Expected integer in the range [1, 9223372036854775806], but received: 0'),
    "10_block_size_range": (spec_of(scale_metadata={"encoding": "compressed_segmentation", "compressed_segmentation_block_size": [0, 1, 1]}), "Expected integer in the range [1, 2147483647], but received: 0"),
    "10_num_channels_range": (spec_of(multiscale_metadata={"num_channels": 0}), '"num_channels": Expected integer in the range [1, 2147483647], but received: 0'),
    "10_scale_index_negative": (spec_of(scale_index=-1), 'Error parsing object member "scale_index": Expected 64-bit unsigned integer, but received: -1'),
    "11_jpeg_channels": (spec_of(scale_metadata={"encoding": "jpeg"}, multiscale_metadata={"num_channels": 2}), 'Error parsing object member "scale_metadata": "jpeg" encoding only supports 1 or 3 channels, not 2'),
    "11_jpeg_dtype": (spec_of(scale_metadata={"encoding": "jpeg"}, dtype="uint16"), '"jpeg" encoding only supported for uint8, not for uint16'),
    "11_png_dtype_schema": (spec_of(scale_metadata={"encoding": "png"}, schema={"dtype": "int8"}), '"png" encoding only supported for uint8 and uint16, not for int8'),
    "11_cseg_dtype": (spec_of(scale_metadata={"encoding": "compressed_segmentation"}, multiscale_metadata={"data_type": "uint8"}), "compressed_segmentation encoding only supported for uint32 and uint64, not for uint8"),
    "12_64_bits": (spec_of(scale_metadata={"size": [1 << 40, 1 << 40, 2], "chunk_size": [1, 1, 1], "sharding": SHARDING}), '"size" of [1099511627776,1099511627776,2] with "chunk_size" of [1,1,1] is not compatible with sharded format because the chunk keys would exceed 64 bits'),
    "13_bounds": (spec_of(scale_metadata={"size": [-1, 1, 1]}), '"size" of [-1,1,1] and "voxel_offset" of [0,0,0] do not specify a valid region'),
    "13_bounds_offset": (spec_of(scale_metadata={"size": [10, 10, 10], "voxel_offset": [4611686018427387902, 0, 0]}), "do not specify a valid region"),
    "14_sharding_not_object": (spec_of(scale_metadata={"sharding": "invalid"}), 'Error parsing object member "sharding": Expected object, but received: "invalid"'),
    "14_sharding_type": (spec_of(scale_metadata={"sharding": {**SHARDING, "@type": "neuroglancer_uint64_sharded_v2"}}), 'Expected "neuroglancer_uint64_sharded_v1", but received: "neuroglancer_uint64_sharded_v2"'),
    "14_sharding_hash": (spec_of(scale_metadata={"sharding": {**SHARDING, "hash": "md5"}}), '"hash": Expected one of "identity", "murmurhash3_x86_128", but received: "md5"'),
    "14_sharding_bits": (spec_of(scale_metadata={"sharding": {**SHARDING, "minishard_bits": 33}}), '"minishard_bits": Expected integer in the range [0, 32], but received: 33'),
    "15_codec_parse_jpeg_quality": (spec_of(schema={"codec": {"driver": DRIVER, "jpeg_quality": 5}}), 'Error parsing object member "schema": Error parsing object member "codec": Error parsing object member "jpeg_quality": Only valid for "jpeg" encoding'),
    "15_codec_parse_shard_encoding": (spec_of(schema={"codec": {"driver": DRIVER, "shard_data_encoding": "x"}}), '"shard_data_encoding": Expected one of "raw", "gzip", but received: "x"'),
    "15_codec_no_driver": (spec_of(schema={"codec": {"encoding": "raw"}}), '"driver": Expected string, but member is missing'),
    "domain_labels": (spec_of(schema={"domain": {"labels": ["a", "b", "c", "d"]}}), "Mismatch in dimension 0: Dimension labels do not match"),
    "domain_channels": (spec_of(schema={"domain": {"shape": [1, 1, 1, 2]}}, multiscale_metadata={"num_channels": 3}), 'Error applying domain constraints from "multiscale_metadata" and "scale_metadata": Cannot merge index domain { [0, 1), [0, 1), [0, 1), [0, 2) } with index domain { "x": (-inf*, +inf*), "y": (-inf*, +inf*), "z": (-inf*, +inf*), "channel": [0, 3) }: Mismatch in dimension 3: Upper bounds do not match'),
}  # fmt: skip


@pytest.mark.parametrize("name", SPEC_ERRORS)
def test_spec_errors(name: str) -> None:
    spec, message = SPEC_ERRORS[name]
    with pytest.raises(InvalidArgumentError) as e:
        parse_spec(spec)
    assert message in str(e.value)
    theirs = ts_parse_error(spec)
    assert theirs is not None and str(e.value) in theirs


def test_02_missing_kvstore() -> None:
    with pytest.raises(InvalidArgumentError, match='^"kvstore" must be specified$'):
        parse_spec({"driver": DRIVER})
    with pytest.raises(ValueError, match='"kvstore" must be specified'):
        ts.open({"driver": DRIVER}).result()


def test_15_codec_merge_errors() -> None:
    a = CodecSpec.from_json({"driver": DRIVER, "encoding": "raw"})
    with pytest.raises(InvalidArgumentError, match='"encoding" mismatch$'):
        a.merge(CodecSpec(encoding="jpeg"))
    with pytest.raises(InvalidArgumentError, match='"jpeg_quality" mismatch$'):
        CodecSpec("jpeg", 5).merge(CodecSpec("jpeg", 6))
    with pytest.raises(InvalidArgumentError, match='"png_level" mismatch$'):
        CodecSpec("png", png_level=1).merge(CodecSpec("png", png_level=2))
    with pytest.raises(InvalidArgumentError, match='"shard_data_encoding" mismatch$'):
        CodecSpec(shard_data_encoding="raw").merge(CodecSpec(shard_data_encoding="gzip"))
    with pytest.raises(InvalidArgumentError, match=r'^Cannot merge codec spec \{"driver":"zarr"\}'):
        CodecSpec.from_json({"driver": "zarr"}).merge(a)
    merged = CodecSpec("jpeg").merge(CodecSpec.from_json({"driver": "neuroglancer-precomputed", "encoding": "jpeg", "jpeg_quality": 3}))  # fmt: skip
    assert merged.to_json() == {"driver": DRIVER, "encoding": "jpeg", "jpeg_quality": 3}


@pytest.mark.parametrize(
    "spec",
    [
        spec_of(driver="neuroglancer-precomputed"),
        spec_of(rank=4, dtype="uint8", schema={"rank": 4, "dtype": "uint8"}),
        spec_of(scale_metadata={"sharding": None}),
        spec_of(scale_metadata={"resolution": ["4", 1, 1], "encoding": "compressed_segmentation"}),
        spec_of(scale_metadata={"size": [1 << 40, 1 << 40, 2], "chunk_size": [1, 1, 1]}),
        spec_of(transform={"input_rank": 4}, context={}, cache_pool={"total_bytes_limit": 1}),
        spec_of(recheck_cached_metadata="open", recheck_cached_data=False),
        spec_of(fill_missing_data_reads=False, store_data_equal_to_fill_value=True),
        spec_of(schema={"fill_value": 0, "dimension_units": ["1um", None, None, "nm"]}),
        spec_of(schema={"codec": {"driver": "zarr"}}),
        spec_of(scale_metadata={"key": "k", "size": [1, 2, 3], "voxel_offset": [1, 2, 3], "chunk_size": [1, 1, 1], "resolution": [1, 2, 3], "encoding": "jpeg", "jpeg_quality": 5, "sharding": SHARDING}),
    ],
)  # fmt: skip
def test_valid_specs_parse_like_tensorstore(spec: dict[str, Any]) -> None:
    assert ts_parse_error(spec) is None
    parse_spec(spec)


# ---------------------------------------------------------------------------------------
# §7 items 16-26: opening an existing volume
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], MultiscaleMetadata]:
    """Two scales written by TensorStore: sharded cseg uint32 at 4,4,40 and raw at 8,8,40."""
    d = tmp_path_factory.mktemp("vol")
    base = {"driver": DRIVER, "kvstore": {"driver": "file", "path": str(d)}}
    ts.open({**base, "multiscale_metadata": {"data_type": "uint32", "num_channels": 1}, "scale_metadata": {"size": [100, 100, 100], "encoding": "compressed_segmentation", "compressed_segmentation_block_size": [8, 8, 8], "chunk_size": [30, 40, 50], "resolution": [4, 4, 40], "sharding": SHARDING}}, create=True).result()  # fmt: skip
    ts.open({**base, "scale_metadata": {"size": [100, 100, 100], "chunk_size": [30, 40, 50], "resolution": [8, 8, 40]}}, create=True).result()  # fmt: skip
    return base, MultiscaleMetadata.loads((d / "info").read_bytes())


def my_open(meta: MultiscaleMetadata, spec: dict[str, Any]) -> tuple[int, tuple]:
    req = parse_spec(spec)
    index, chunk = select_scale(meta, req.multiscale, req.scale, req.scale_index, req.schema)
    req.schema.validate_against(meta, index, chunk)
    return index, chunk


OPEN_ERRORS: dict[str, tuple[dict[str, Any], type, str]] = {
    "18_scale_index": ({"scale_index": 2}, FailedPreconditionError, "Scale 2 does not exist, number of scales is 2"),
    "19_key": ({"scale_metadata": {"key": "invalidkey"}}, NotFoundError, 'No scale found matching key="invalidkey"'),
    "19_resolution": ({"scale_metadata": {"resolution": [41, 42, 43]}}, NotFoundError, 'No scale found matching dimension_units=["41 nm", "42 nm", "43 nm", null]'),
    "19_units_and_key": ({"scale_metadata": {"key": "4_4_40"}, "schema": {"dimension_units": ["8nm", None, None, None]}}, NotFoundError, 'dimension_units=["8 nm", null, null, null], key="4_4_40"'),
    "20_data_type": ({"dtype": "uint8"}, FailedPreconditionError, 'Expected "data_type" of "uint8" but received: "uint32"'),
    "20_num_channels": ({"multiscale_metadata": {"num_channels": 2}}, FailedPreconditionError, 'Expected "num_channels" of 2 but received: 1'),
    "20_type": ({"multiscale_metadata": {"type": "image"}}, FailedPreconditionError, 'Expected "type" of "image" but received: "segmentation"'),
    "20_encoding": ({"scale_metadata": {"encoding": "raw"}}, FailedPreconditionError, 'Expected "encoding" of "raw" but received: "compressed_segmentation"'),
    "20_block_size": ({"scale_metadata": {"encoding": "compressed_segmentation", "compressed_segmentation_block_size": [8, 8, 9]}}, FailedPreconditionError, 'Expected "compressed_segmentation_block_size" of [8,8,9] but received: [8,8,8]'),
    "20_resolution": ({"scale_index": 0, "scale_metadata": {"resolution": [4, 4, 41]}}, FailedPreconditionError, 'Expected "resolution" of [4.0,4.0,41.0] but received: [4.0,4.0,40.0]'),
    "20_sharding": ({"scale_index": 1, "scale_metadata": {"sharding": SHARDING}}, FailedPreconditionError, 'but received: null'),
    "20_size": ({"scale_metadata": {"size": [3, 3, 3]}}, FailedPreconditionError, 'Expected "size" of [3,3,3] but received: [100,100,100]'),
    "20_voxel_offset": ({"scale_metadata": {"size": [100, 100, 100], "voxel_offset": [1, 0, 0]}}, FailedPreconditionError, 'Expected "voxel_offset" of [1,0,0] but received: [0,0,0]'),
    "20_chunk_size": ({"scale_metadata": {"chunk_size": [10, 10, 2]}}, FailedPreconditionError, 'Expected "chunk_size" of [10,10,2] but received: [[30,40,50]]'),
    "22_domain": ({"schema": {"domain": {"shape": [100, 100, 101, 1]}}}, InvalidArgumentError, 'domain from metadata does not match domain in schema: Cannot merge index domain { "x": [0, 100), "y": [0, 100), "z": [0, 100), "channel": [0, 1) } with index domain { [0, 100), [0, 100), [0, 101), [0, 1) }: Mismatch in dimension 2: Upper bounds do not match'),
    "22_domain_lower": ({"schema": {"domain": {"inclusive_min": [1, 0, 0, 0]}}}, InvalidArgumentError, "Mismatch in dimension 0: Lower bounds do not match"),
    "23_read_chunk": ({"schema": {"chunk_layout": {"chunk": {"shape": [31, 40, 50, 1]}}}}, InvalidArgumentError, "chunk layout from metadata does not match chunk layout in schema: Error setting read_chunk shape: New hard constraint (30) for dimension 0 does not match existing hard constraint (31)"),
    "23_write_chunk": ({"scale_index": 1, "schema": {"chunk_layout": {"write_chunk": {"shape": [1, 0, 0, 0]}}}}, InvalidArgumentError, "Error setting write_chunk shape: New hard constraint (30) for dimension 0 does not match existing hard constraint (1)"),
    "23_inner_order": ({"schema": {"chunk_layout": {"inner_order": [0, 1, 2, 3]}}}, InvalidArgumentError, "chunk layout from metadata does not match chunk layout in schema: Only lexicographic {channel, z, y, x} inner order is supported: Error setting inner_order: New hard constraint ({3, 2, 1, 0}) does not match existing hard constraint ({0, 1, 2, 3})"),
    "23_grid_origin": ({"schema": {"chunk_layout": {"grid_origin": [0, 0, 0, 1]}}}, InvalidArgumentError, "Chunk grid origin must match domain origin: Error setting grid_origin: New hard constraint (0) for dimension 3 does not match existing hard constraint (1)"),
    "23_channel": ({"schema": {"chunk_layout": {"read_chunk": {"shape": [0, 0, 0, 2]}}}}, InvalidArgumentError, "Chunking of channel dimension is not supported: Error setting read_chunk shape: New hard constraint (1) for dimension 3 does not match existing hard constraint (2)"),
    "23_codec_chunk_raw": ({"scale_index": 1, "schema": {"chunk_layout": {"codec_chunk": {"shape": [8, 8, 8, 1]}}}}, InvalidArgumentError, "codec_chunk_shape not supported by raw encoding"),
    "23_codec_chunk_cseg": ({"scale_index": 0, "schema": {"chunk_layout": {"codec_chunk": {"shape": [8, 8, 9, 1]}}}}, InvalidArgumentError, "Error setting codec_chunk shape: New hard constraint (8) for dimension 2 does not match existing hard constraint (9)"),
    "24_codec": ({"scale_index": 1, "schema": {"codec": {"driver": DRIVER, "encoding": "jpeg"}}}, InvalidArgumentError, 'codec from metadata does not match codec in schema: Cannot merge codec spec {"driver":"neuroglancer_precomputed","encoding":"raw"} with {"driver":"neuroglancer_precomputed","encoding":"jpeg"}: "encoding" mismatch'),
    "24_shard_data_encoding": ({"scale_index": 0, "schema": {"codec": {"driver": DRIVER, "shard_data_encoding": "gzip"}}}, InvalidArgumentError, '"shard_data_encoding" mismatch'),
    "24_shard_data_encoding_unsharded": ({"scale_index": 1, "schema": {"codec": {"driver": DRIVER, "shard_data_encoding": "gzip"}}}, InvalidArgumentError, "shard_data_encoding requires sharded format"),
    "25_fill_value": ({"schema": {"fill_value": 0}}, InvalidArgumentError, "fill_value not supported by neuroglancer_precomputed format"),
    "26_base_unit": ({"schema": {"dimension_units": ["8um", None, None, None]}}, InvalidArgumentError, 'Invalid dimension units ["8 um", null, null, null]: neuroglancer_precomputed format requires a base unit of "nm" for the "x", "y", and "z" dimensions'),
    "26_channel_unit": ({"schema": {"dimension_units": [None, None, None, "8nm"]}}, InvalidArgumentError, "does not allow units to be specified for channel dimension"),
    "26_resolution": ({"scale_index": 0, "schema": {"dimension_units": ["5nm", None, None, None]}}, InvalidArgumentError, 'Dimension units ["5 nm", null, null, null] do not match "resolution" in metadata: {4, 4, 40}'),
    "26_resolution_constraint": ({"scale_metadata": {"resolution": [4, 4, 40]}, "schema": {"dimension_units": ["5nm", None, None, None]}}, InvalidArgumentError, 'do not match "resolution" in metadata: {4, 4, 40}'),
}  # fmt: skip


@pytest.mark.parametrize("name", OPEN_ERRORS)
def test_open_errors_match_tensorstore(volume: tuple, name: str) -> None:
    base, meta = volume
    extra, cls, message = OPEN_ERRORS[name]
    with pytest.raises(cls) as e:
        my_open(meta, {**base, **extra})
    assert message in str(e.value)
    with pytest.raises(ValueError) as theirs:
        ts.open({**base, **extra}).result()
    assert str(e.value) in str(theirs.value)


def test_21_schema_dtype_mismatch_direct(volume: tuple) -> None:
    _, meta = volume
    with pytest.raises(
        FailedPreconditionError,
        match=r"^data_type from metadata \(uint32\) does not match dtype in schema \(uint8\)$",
    ):
        Schema(dtype="uint8").validate_against(meta, 0, (30, 40, 50))


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"scale_index": 1},
        {"schema": {"dimension_units": ["8nm", None, None, None]}},
        {"schema": {"dimension_units": [None, None, "40nm", None]}},
        {"scale_metadata": {"key": "8_8_40", "encoding": "raw", "sharding": None}},
        {"schema": {"domain": {"labels": ["x", "y", "z", "channel"], "exclusive_max": [100, 100, 100, 1]}}},
        {"schema": {"chunk_layout": {"read_chunk": {"shape": [-1, 0, 0, 0], "shape_soft_constraint": [7, 0, 0, 0], "elements": 5}}}},
        {"scale_index": 0, "schema": {"chunk_layout": {"write_chunk": {"shape": [128, 160, 100, 1]}, "codec_chunk": {"shape": [8, 8, 8, 1]}}}},
        {"scale_index": 0, "schema": {"codec": {"driver": DRIVER, "shard_data_encoding": "raw", "encoding": "compressed_segmentation"}}},
        {"schema": {"chunk_layout": {"grid_origin": [0, 0, 0, 0], "inner_order": [3, 2, 1, 0]}}},
    ],
)  # fmt: skip
def test_open_selects_same_scale_as_tensorstore(volume: tuple, extra: dict[str, Any]) -> None:
    base, meta = volume
    t = ts.open({**base, **extra}).result().spec().to_json()
    index, chunk = my_open(meta, {**base, **extra})
    assert (index, list(chunk)) == (t["scale_index"], t["scale_metadata"]["chunk_size"])


def test_16_missing_info_reported_with_path() -> None:
    precomputed = pytest.importorskip("precomputed")
    req = parse_spec({"driver": DRIVER, "kvstore": {"driver": "memory", "path": "prefix/"}})
    assert req.info_key == "prefix/info"
    with pytest.raises(NotFoundError, match='Metadata at "prefix/info" does not exist'):
        precomputed.open({"driver": DRIVER, "kvstore": {"driver": "memory", "path": "prefix/"}})


def test_17_invalid_stored_info() -> None:
    with pytest.raises(FailedPreconditionError, match='Error reading "prefix/info": Invalid JSON'):
        MultiscaleMetadata.loads(b"{", "prefix/info")
    with pytest.raises(FailedPreconditionError, match="Expected object"):
        MultiscaleMetadata.loads(b"[1]", "prefix/info")


# ---------------------------------------------------------------------------------------
# §7 item 36 and open modes
# ---------------------------------------------------------------------------------------

MODE_ERRORS = {
    "delete_without_create": ({"delete_existing": True}, "Cannot specify an open mode of `delete_existing` without `create`"),
    "delete_with_open": ({"delete_existing": True, "open": True, "create": True}, "Cannot specify an open mode of `delete_existing` with `open`"),
    "delete_with_assume": ({"delete_existing": True, "create": True, "assume_metadata": True}, "Cannot specify an open mode of `delete_existing` with `assume_metadata`"),
    "delete_with_assume_cached": ({"delete_existing": True, "create": True, "assume_cached_metadata": True}, "Cannot specify an open mode of `delete_existing` with `assume_cached_metadata`"),
    "assume_without_open": ({"create": True, "assume_metadata": True}, "Cannot specify an open mode of `assume_metadata` without `open`"),
}  # fmt: skip
M = {
    "multiscale_metadata": {"data_type": "uint8", "num_channels": 1},
    "scale_metadata": {"size": [10, 10, 10]},
}


@pytest.mark.parametrize("name", MODE_ERRORS)
def test_36_open_mode_errors(name: str) -> None:
    flags, message = MODE_ERRORS[name]
    with pytest.raises(InvalidArgumentError, match=f"^{message}$"):
        parse_spec(spec_of(**M, **flags))
    with pytest.raises(ValueError, match=message):
        ts.open(spec_of(**M, **flags)).result()


def test_open_mode_defaults_and_keyword_overrides() -> None:
    r = parse_spec(spec_of())
    assert (r.open, r.create, r.delete_existing) == (True, False, False)
    r = parse_spec(spec_of(create=True))
    assert (r.open, r.create) == (False, True)
    r = parse_spec(spec_of(create=True), open=True)  # open/create keywords replace
    assert (r.open, r.create) == (True, False)
    r = parse_spec(spec_of(create=True), delete_existing=True)  # others add
    assert (r.create, r.delete_existing) == (True, True)
    r = parse_spec(spec_of(open=True), create=True, open=True)
    assert (r.open, r.create) == (True, True)
    r = parse_spec(spec_of(), assume_metadata=True)
    assert (r.open, r.assume_metadata) == (True, True)
    with pytest.raises(InvalidArgumentError, match="without `create`"):
        parse_spec(spec_of(open=True), delete_existing=True)


def test_keyword_options() -> None:
    r = parse_spec(
        "memory://kw/",
        scale_index=1,
        dtype="uint16",
        shape=[10, 20, 30, 2],
        chunk_layout={"read_chunk": {"shape": [5, 5, 5, 0]}},
        dimension_units=["4nm", None, None, None],
        fill_missing_data_reads=False,
        store_data_equal_to_fill_value=True,
        recheck_cached_data="open",
        storage_options={"token": "anon"},
        context={"cache_pool": {"total_bytes_limit": 1000}},
    )
    assert r.scale_index == 1 and r.dtype == "uint16" and r.multiscale.data_type == "uint16"
    assert r.schema.domain is not None and r.schema.domain.exclusive_max == [10, 20, 30, 2]
    assert r.schema.chunk_layout.read.shape == [5, 5, 5, 0]
    assert r.schema.dimension_units == [Unit(4.0, "nm"), None, None, None]
    assert (r.fill_missing_data_reads, r.store_data_equal_to_fill_value) == (False, True)
    assert r.recheck_cached_data == "open" and r.storage_options == {"token": "anon"}
    assert r.context == {"cache_pool": {"total_bytes_limit": 1000}}
    r2 = parse_spec(r, scale_index=0)  # an OpenRequest can be re-parsed with overrides
    assert r2.scale_index == 0 and r2.storage_options == {"token": "anon"}
    assert parse_spec(spec_of(), schema=Schema(dtype="uint8")).dtype == "uint8"
    with pytest.raises(InvalidArgumentError, match="Unexpected option"):
        parse_spec(spec_of(), bogus=1)
    with pytest.raises(InvalidArgumentError, match="does not match"):
        parse_spec(spec_of(schema={"dtype": "uint8"}), schema={"dtype": "uint16"})


def test_for_scale() -> None:
    r = parse_spec(spec_of(create=True, scale_metadata={"key": "a"}))
    s = r.for_scale(2)
    assert (s.scale_index, s.open, s.create, s.scale.key) == (2, True, False, None)
    assert parse_spec(s.spec_json) == s  # the JSON says the same thing
    assert parse_spec(s, fill_missing_data_reads=False).scale_index == 2


# ---------------------------------------------------------------------------------------
# URLs and kvstore paths
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "root", "path", "full"),
    [
        ("gs://bucket/a/vol", {"driver": "gcs", "bucket": "bucket"}, "a/vol/", {"driver": "gcs", "bucket": "bucket", "path": "a/vol/"}),
        ("precomputed://gs://bucket/v/", {"driver": "gcs", "bucket": "bucket"}, "v/", {"driver": "gcs", "bucket": "bucket", "path": "v/"}),
        ("s3://bkt/p", {"driver": "s3", "bucket": "bkt"}, "p/", {"driver": "s3", "bucket": "bkt", "path": "p/"}),
        ("https://h.org:8080/p/q", {"driver": "http", "base_url": "https://h.org:8080"}, "p/q/", {"driver": "http", "base_url": "https://h.org:8080", "path": "/p/q/"}),
        ("precomputed://http://h", {"driver": "http", "base_url": "http://h"}, "", {"driver": "http", "base_url": "http://h"}),
        ("file:///data/v", {"driver": "file", "path": "/"}, "data/v/", {"driver": "file", "path": "/data/v/"}),
        ("file:///data/v/|neuroglancer-precomputed:", {"driver": "file", "path": "/"}, "data/v/", {"driver": "file", "path": "/data/v/"}),
        ("memory://x/|neuroglancer-precomputed:", {"driver": "memory"}, "x/", {"driver": "memory", "path": "x/"}),
        ("memory://", {"driver": "memory"}, "", {"driver": "memory"}),
        ("/abs/dir", {"driver": "file", "path": "/"}, "abs/dir/", {"driver": "file", "path": "/abs/dir/"}),
    ],
)  # fmt: skip
def test_url_specs(url: str, root: dict, path: str, full: dict) -> None:
    r = parse_spec(url)
    assert (r.kvstore, r.path, r.kvstore_spec()) == (root, path, full)
    if url.startswith(("file", "memory")) and "|" in url:
        assert ts.Spec(url).to_json()["kvstore"] == full  # TensorStore's own reading


def test_relative_local_path_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    r = parse_spec("vol")
    assert r.kvstore_spec() == {"driver": "file", "path": str(tmp_path / "vol") + "/"}
    assert r.info_key == str(tmp_path / "vol" / "info")[1:]


@pytest.mark.parametrize(
    ("kvstore", "path", "expected"),
    [
        ("memory://a/b", "c", {"driver": "memory", "path": "a/b/c/"}),
        ({"driver": "memory", "path": "a/b"}, "c/", {"driver": "memory", "path": "a/b/c/"}),
        ({"driver": "memory", "path": "a/b/"}, "/c", {"driver": "memory", "path": "a/b//c/"}),
        ({"driver": "memory", "path": "/"}, "", {"driver": "memory"}),
        ({"driver": "memory", "path": ""}, "/", {"driver": "memory"}),
        ({"driver": "memory", "path": "a"}, "//c//", {"driver": "memory", "path": "a//c//"}),
        ({"driver": "file", "path": "/tmp/x"}, "", {"driver": "file", "path": "/tmp/x/"}),
        ({"driver": "http", "base_url": "http://h/a", "path": "b"}, "", {"driver": "http", "base_url": "http://h", "path": "/a/b/"}),
        ({"driver": "gcs", "bucket": "my-bucket", "path": "a"}, "b", {"driver": "gcs", "bucket": "my-bucket", "path": "a/b/"}),
    ],
)  # fmt: skip
def test_kvstore_path_combination_matches_tensorstore(
    kvstore: Any, path: str, expected: dict
) -> None:
    spec = {"driver": DRIVER, "kvstore": kvstore, "path": path}
    assert parse_spec(spec).kvstore_spec() == expected
    if not (isinstance(kvstore, dict) and kvstore["driver"] == "gcs"):
        assert ts.Spec(spec).to_json()["kvstore"] == expected


def test_transform_index() -> None:
    r = parse_spec(spec_of(transform={"input_inclusive_min": [1, 2, 3, 0], "input_exclusive_max": [5, 6, 7, ["+inf"]]}))  # fmt: skip
    assert r.transform_index() == [slice(1, 5), slice(2, 6), slice(3, 7), slice(0, None)]
    assert parse_spec(spec_of()).transform_index() is None
    dropped = {
        "input_inclusive_min": [2, 4, 1],
        "input_exclusive_max": [10, 8, 2],
        "output": [{"input_dimension": 0}, {"offset": 5}, {"input_dimension": 1}, {"input_dimension": 2}],
    }  # fmt: skip
    assert parse_spec(spec_of(transform=dropped)).transform_index() == [
        slice(2, 10), 5, slice(4, 8), slice(1, 2)
    ]  # fmt: skip
    transposed = [{"input_dimension": d} for d in (1, 0, 2, 3)]
    for output in (
        transposed,
        [{"input_dimension": 0, "stride": 2}] + transposed[2:] + [{"offset": 0}],
    ):
        with pytest.raises(InvalidArgumentError, match="Only transforms"):
            parse_spec(spec_of(transform={"output": output}))


# ---------------------------------------------------------------------------------------
# Schema pieces
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["4nm", "4 nm", "nm", "4", "4.5nm", "1e3nm", "+4nm", ".5nm", "4 um", [8, "nm"], [8.5, "nm"],
     "  4nm", "0nm", "", "1e-7nm", "1234567nm", "4e", "inf nm", 5],
)  # fmt: skip
def test_unit_parsing_matches_tensorstore(value: Any) -> None:
    theirs = ts.Schema({"dimension_units": [value, None, None, None]})
    assert Unit.parse(value).to_json() == theirs.to_json()["dimension_units"][0]
    assert str(Unit.parse(value)) == str(theirs.dimension_units[0])


@pytest.mark.parametrize(
    "schema",
    [
        {"chunk_layout": {"read_chunk": {"shape": [1, 2, 3, -2]}}},
        {"chunk_layout": {"read_chunk": {"foo": 1}}},
        {"chunk_layout": {"foo": {}}},
        {"chunk_layout": {"read_chunk": {"elements": -1}}},
        {"chunk_layout": {"read_chunk": {"aspect_ratio": [1, 2, -1, 0]}}},
        {"chunk_layout": {"inner_order": [0, 1, 2, 2]}},
        {"chunk_layout": {"chunk": {"shape": [1, 2, 3, 4]}, "read_chunk": {"shape": [2, 0, 0, 0]}}},
        {"domain": {"labels": ["x", "x", "", ""]}},
        {"domain": {"inclusive_min": [1, 2, 3, None]}},
        {"domain": {"shape": [1, 2, 3, -1]}},
        {"codec": None},
        {"dimension_units": None},
        {"dimension_units": [[5], None, None, None]},
        {"dtype": None},
        {"foo": 1},
    ],
)
def test_schema_parse_errors_match_tensorstore(schema: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgumentError) as e:
        Schema.from_json(schema)
    with pytest.raises(ValueError) as theirs:
        ts.Schema(schema)
    first_member = str(theirs.value).split(":")[0]
    assert str(e.value).startswith(first_member)


def test_schema_round_trip() -> None:
    j = {
        "dtype": "uint8",
        "domain": {"labels": ["x", "y", "z", "channel"], "inclusive_min": [1, 2, 3, 0], "exclusive_max": [4, 5, 6, 1]},
        "chunk_layout": {
            "grid_origin": [1, 2, 3, 0],
            "inner_order": [3, 2, 1, 0],
            "read_chunk": {"shape": [1, None, None, None], "shape_soft_constraint": [None, 2, None, None], "elements": 5},
            "write_chunk": {"aspect_ratio": [1.0, 2.0, None, None]},
            "codec_chunk": {"elements_soft_constraint": 64},
        },
        "codec": {"driver": DRIVER, "encoding": "png", "png_level": 3},
        "dimension_units": [[4.0, "nm"], None, None, None],
    }  # fmt: skip
    s = Schema.from_json(j)
    assert s.to_json() == j
    assert Schema.from_json(s.to_json()) == s


def test_chunk_chooser_examples() -> None:
    def choose(extent: list[int], **grid: Any) -> list[int]:
        g = GridConstraints(**grid)
        return choose_chunk_shape(extent, g, {3: extent[3]}, 1 << 20)[:3]

    assert choose([1000, 2000, 3000, 2]) == [80, 80, 80]
    assert choose([100, 200, 300, 1]) == [100, 102, 102]
    assert choose([100, 100, 100, 1]) == [100, 100, 100]
    assert choose([1000, 2000, 3000, 2], aspect_ratio=[2, 1, 1, 0], elements=2_000_000) == [159, 79, 79]  # fmt: skip
    assert choose([1000, 2000, 3000, 2], elements=1) == [1, 1, 1]
    assert choose([1000, 2000, 3000, 1], elements=1000) == [10, 10, 10]
    assert choose([1000, 2000, 3000, 1], shape=[-1, 0, 0, 0]) == [1000, 32, 32]
    assert choose([0, 10, 10, 1]) == [1, 10, 10]


# ---------------------------------------------------------------------------------------
# Bound spec (§2.8): equal to TensorStore's spec() and reopenable by TensorStore
# ---------------------------------------------------------------------------------------

BOUND_CASES: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {
    "raw": ([{"multiscale_metadata": {"data_type": "uint16", "num_channels": 4}, "scale_metadata": {"size": [10, 99, 98], "voxel_offset": [1, 2, 3], "chunk_size": [3, 2, 2]}}], {}),
    "jpeg_options": ([{"multiscale_metadata": {"data_type": "uint8", "num_channels": 3}, "scale_metadata": {"size": [20, 20, 20], "encoding": "jpeg", "jpeg_quality": 85, "resolution": [4, 4, 40]}}],
                     {"fill_missing_data_reads": False, "store_data_equal_to_fill_value": True, "recheck_cached_metadata": False, "recheck_cached_data": "open"}),
    "png": ([{"multiscale_metadata": {"data_type": "uint8", "num_channels": 1}, "scale_metadata": {"size": [20, 20, 20], "encoding": "png", "png_level": 2}}], {}),
    "cseg_sharded": ([{"multiscale_metadata": {"data_type": "uint64", "num_channels": 1}, "scale_metadata": {"size": [64, 64, 64], "encoding": "compressed_segmentation", "chunk_size": [16, 16, 16], "sharding": {**SHARDING, "preshift_bits": 3, "minishard_bits": 2, "shard_bits": 1}}}], {}),
    "second_scale": ([{"multiscale_metadata": {"data_type": "uint8", "num_channels": 1}, "scale_metadata": {"size": [64, 64, 64], "key": "s0"}},
                      {"scale_metadata": {"size": [32, 32, 32], "key": "s1", "resolution": [2, 2, 2]}}], {"scale_index": 1}),
    "path": ([{"path": "sub/vol", "multiscale_metadata": {"data_type": "float32", "num_channels": 1}, "scale_metadata": {"size": [5, 5, 5]}}], {"path": "sub/vol"}),
}  # fmt: skip


@pytest.mark.parametrize("name", BOUND_CASES)
def test_bound_spec_equals_tensorstore_and_reopens(tmp_path: Path, name: str) -> None:
    creates, open_opts = BOUND_CASES[name]
    base = {"driver": DRIVER, "kvstore": {"driver": "file", "path": str(tmp_path)}}
    for c in creates:
        ts.open({**base, **c}, create=True).result()
    opened = ts.open({**base, **open_opts}).result()

    req = parse_spec({**base, **open_opts})
    info_path = tmp_path / req.path.split(str(tmp_path)[1:], 1)[1].lstrip("/") / "info"
    meta = MultiscaleMetadata.loads(info_path.read_bytes())
    index, chunk = select_scale(meta, req.multiscale, req.scale, req.scale_index, req.schema)
    mine = bound_spec(meta, index, chunk, req.kvstore, req)
    assert mine == opened.spec().to_json()

    reopened = ts.open(mine).result()
    assert reopened.domain == opened.domain and reopened.dtype == opened.dtype
    assert reopened.spec().to_json()["scale_metadata"]["key"] == meta.scales[index].key

    minimal = bound_spec(meta, index, chunk, req.kvstore, req, minimal=True)
    assert minimal == opened.spec(minimal_spec=True).to_json()

    # The codec and domain we report for the scale are TensorStore's (CodecSpecTest).
    assert scale_codec(meta.scales[index]).to_json() == opened.codec.to_json()
    dom = scale_domain(meta.scales[index], meta.num_channels)
    assert dom.inclusive_min == list(opened.domain.inclusive_min)
    assert dom.exclusive_max == list(opened.domain.exclusive_max)
    assert dom.labels == list(opened.domain.labels)


def test_bound_spec_from_path_and_options_dict() -> None:
    meta, _ = create_scale(None, *_constraints({"multiscale_metadata": {"data_type": "uint8", "num_channels": 1}, "scale_metadata": {"size": [2, 3, 4]}}))  # fmt: skip
    out = bound_spec(
        meta,
        0,
        (2, 3, 4),
        {"driver": "http", "base_url": "https://h/a", "path": "b"},
        "c/",
        {"fill_missing_data_reads": False, "transform": {"input_rank": 4}},
    )
    assert out["kvstore"] == {"driver": "http", "base_url": "https://h", "path": "/a/b/c/"}
    assert out["fill_missing_data_reads"] is False and out["transform"] == {"input_rank": 4}
    assert out["scale_metadata"]["sharding"] is None


def _constraints(spec: dict[str, Any]) -> tuple:
    r = parse_spec({"kvstore": "memory://", **spec})
    return r.multiscale, r.scale, r.scale_index, r.schema


def test_open_request_kvstore_spec_is_tensorstore_reopenable(tmp_path: Path) -> None:
    vol = tmp_path / "v"
    ts.open(
        {"driver": DRIVER, "kvstore": {"driver": "file", "path": str(vol)}, **M}, create=True
    ).result()
    req = parse_spec(f"precomputed://file://{vol}")
    t = ts.open({"driver": DRIVER, "kvstore": req.kvstore_spec()}).result()
    assert t.domain.shape == (10, 10, 10, 1)
    assert isinstance(req, OpenRequest) and os.path.isfile("/" + req.info_key)


def test_spec_json_kept_unmodified() -> None:
    spec = spec_of(path="x", scale_metadata={"key": "k"})
    before = copy.deepcopy(spec)
    r = parse_spec(spec, create=True)
    assert spec == before and r.spec_json == {**before, "create": True}
    assert json.dumps(r.scale.to_json()) == '{"key": "k"}'
    again = parse_spec(r)  # no options: the same request, not a re-parse
    assert again == r and again is not r

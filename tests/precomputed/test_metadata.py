"""The ``info`` model: parsing stored info, serialization, scale keys (metadata_test.cc port).

Expected texts come from TensorStore 0.1.86; where practical the test runs TensorStore on
the same input and compares (info bytes, created metadata, messages).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from metadata_cases import (
    BASE_INFO,
    MM8,
    MM32,
    SHARDING,
    info_with,
    my_create,
    parse_error,
    ts_create,
    without,
)
from precomputed.constraints import (
    create_scale,
)
from precomputed.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
)
from precomputed.metadata import (
    SUPPORTED_DTYPES,
    MultiscaleMetadata,
    ScaleMetadata,
    resolve_scale_key,
    scale_key_from_resolution,
)
from precomputed.sharding import ShardingSpec
from precomputed.spec import parse_spec

ts = pytest.importorskip("tensorstore")


# ---------------------------------------------------------------------------------------
# Parsing stored info (MetadataTest.*)
# ---------------------------------------------------------------------------------------


def test_parse_unsharded_two_scales_jpeg() -> None:
    info = {
        "@type": "neuroglancer_multiscale_volume",
        "data_type": "uint8",
        "num_channels": 3,
        "scales": [
            {
                "chunk_sizes": [[64, 65, 66], [32, 33, 34]],
                "encoding": "jpeg",
                "key": "8_8_8",
                "resolution": [5.40, 5.41, 5.42],
                "size": [6446, 6643, 8090],
                "voxel_offset": [2, -3, 4],
            },
            {
                "chunk_sizes": [[8, 9, 10]],
                "encoding": "jpeg",
                "jpeg_quality": 50,
                "key": "16_16_16",
                "resolution": [10.0, 11.0, 12.0],
                "size": [3223, 3321, 4045],
                "voxel_offset": [0, 0, 0],
            },
        ],
        "type": "image",
    }
    m = MultiscaleMetadata.from_json(info)
    assert (m.type, m.data_type, m.num_channels, m.extra) == ("image", "uint8", 3, {})
    s0, s1 = m.scales
    assert s0.key == "8_8_8"
    assert s0.chunk_sizes == [(64, 65, 66), (32, 33, 34)]
    assert s0.voxel_offset == (2, -3, 4)
    assert s0.resolution == (5.40, 5.41, 5.42)
    assert s0.jpeg_quality == 75 and s1.jpeg_quality == 50
    assert s0.sharding is None and s0.extra == {}
    assert s1.size == (3223, 3321, 4045)
    enc = s1.chunk_encoding() if _have_codecs() else None
    if enc is not None:
        assert enc.encoding == "jpeg" and enc.jpeg_quality == 50


def _have_codecs() -> bool:
    try:
        import precomputed.codecs  # noqa: F401
    except ImportError:
        return False
    return True


def test_parse_sharded_with_extra_attributes() -> None:
    info = {
        "@type": "neuroglancer_multiscale_volume",
        "data_type": "uint64",
        "num_channels": 2,
        "type": "segmentation",
        "mesh": "mesh_dir",
        "scales": [
            {
                "chunk_sizes": [[64, 65, 66]],
                "encoding": "compressed_segmentation",
                "compressed_segmentation_block_size": [8, 9, 10],
                "key": "8_8_8",
                "resolution": [5.40, 5.41, 5.42],
                "size": [6446, 6643, 8090],
                "voxel_offset": [2, -3, 4],
                "sharding": SHARDING,
                "hidden": False,
            }
        ],
    }
    m = MultiscaleMetadata.from_json(info)
    s = m.scales[0]
    assert m.extra == {"mesh": "mesh_dir"} and s.extra == {"hidden": False}
    assert s.sharding == ShardingSpec(1, "identity", 2, 3)
    assert s.compressed_segmentation_block_size == (8, 9, 10)

    bad = copy.deepcopy(info)
    bad["scales"][0]["chunk_sizes"] = [[64, 65, 66], [1, 1, 1]]
    assert "Sharded format does not support more than one chunk size" in parse_error(bad)


@pytest.mark.parametrize(
    ("info", "fragment"),
    [
        (info_with(chunk_sizes=[[0, 1, 1]]), "Expected integer in the range [1, 9223372036854775806], but received: 0"),
        (info_with(chunk_sizes=[]), "At least one chunk size must be specified"),
        (info_with(compressed_segmentation_block_size=[8, 8, 8]), 'Only valid for "compressed_segmentation" encoding'),
        (info_with({"data_type": "uint32"}, encoding="compressed_segmentation"), '"compressed_segmentation_block_size": Expected array, but member is missing'),
        (info_with({"data_type": "uint32"}, encoding="compressed_segmentation", compressed_segmentation_block_size=[0, 1, 1]), "Expected integer in the range [1, 2147483647], but received: 0"),
        (info_with({"data_type": "uint32"}, encoding="compressed_segmentation", compressed_segmentation_block_size=[1, 1, 1, 1]), "Array has length 4 but should have length 3"),
    ],
    ids=["chunk_size_0", "no_chunk_sizes", "block_size_with_raw", "block_size_missing", "block_size_0", "block_size_4"],
)  # fmt: skip
def test_parse_sharded_errors(info: dict[str, Any], fragment: str) -> None:
    assert fragment in parse_error(info)


def test_parse_default_voxel_offset() -> None:
    m = MultiscaleMetadata.from_json(BASE_INFO)
    assert m.scales[0].voxel_offset == (0, 0, 0)


ALL_TS_DTYPES = ["int64", "float64", "bool", "string", "ustring", "json", "float16"]


@pytest.mark.parametrize(
    ("info", "fragment"),
    [
        (info_with({"data_type": 5}), '"data_type": Expected string, but received: 5'),
        (info_with({"data_type": "UINT8"}), 'Unsupported data type: "UINT8"'),
        *[
            (info_with({"data_type": t}), f"{t} data type is not one of the supported data types: uint8, uint16, uint32, int8, int16, int32, uint64, float32")
            for t in ALL_TS_DTYPES
        ],
        (info_with(encoding=5), 'Expected one of "raw", "png", "jpeg", "compressed_segmentation", but received: 5'),
        (info_with(encoding="RAW"), 'but received: "RAW"'),
        (info_with(encoding="compresso"), 'but received: "compresso"'),
        (info_with(jpeg_quality=50), '"jpeg_quality": Only valid for "jpeg" encoding'),
        (info_with(encoding="jpeg", jpeg_quality=101), '"jpeg_quality": Expected integer in the range [0, 100], but received: 101'),
        (info_with(encoding="jpeg", jpeg_quality=-1), "Expected integer in the range [0, 100], but received: -1"),
        (info_with({"num_channels": 2}, encoding="jpeg"), '"jpeg" encoding only supports 1 or 3 channels, not 2'),
        (info_with({"data_type": "uint16"}, encoding="jpeg"), '"jpeg" encoding only supported for uint8, not for uint16'),
        (info_with(png_level=1), '"png_level": Only valid for "png" encoding'),
        (info_with(encoding="png", png_level=10), "Expected integer in the range [0, 9], but received: 10"),
        (info_with(encoding="png", png_level=-1), "Expected integer in the range [0, 9], but received: -1"),
        (info_with({"num_channels": 5}, encoding="png"), '"png" encoding only supports 1 to 4 channels, not 5'),
        (info_with({"data_type": "float32"}, encoding="png"), '"png" encoding only supported for uint8 and uint16, not for float32'),
        (info_with({"data_type": "int32"}, encoding="compressed_segmentation", compressed_segmentation_block_size=[8, 8, 8]), "compressed_segmentation encoding only supported for uint32 and uint64, not for int32"),
    ],
)  # fmt: skip
def test_parse_encodings_and_data_types_errors(info: dict[str, Any], fragment: str) -> None:
    assert fragment in parse_error(info)


@pytest.mark.parametrize("dtype", SUPPORTED_DTYPES)
def test_raw_accepts_every_supported_dtype(dtype: str) -> None:
    assert MultiscaleMetadata.from_json(info_with({"data_type": dtype})).data_type == dtype


@pytest.mark.parametrize(
    ("encoding", "dtype", "channels", "extra"),
    [
        ("jpeg", "uint8", 1, {}),
        ("jpeg", "uint8", 3, {"jpeg_quality": 0}),
        ("png", "uint8", 4, {"png_level": 9}),
        ("png", "uint16", 1, {}),
        ("compressed_segmentation", "uint32", 7, {"compressed_segmentation_block_size": [2, 3, 4]}),
        ("compressed_segmentation", "uint64", 1, {"compressed_segmentation_block_size": [8, 8, 8]}),
    ],
)
def test_valid_encoding_combinations(
    encoding: str, dtype: str, channels: int, extra: dict[str, Any]
) -> None:
    m = MultiscaleMetadata.from_json(
        info_with({"data_type": dtype, "num_channels": channels}, encoding=encoding, **extra)
    )
    s = m.scales[0]
    assert s.jpeg_quality == (extra.get("jpeg_quality", 75) if encoding == "jpeg" else None)
    assert s.png_level == extra.get("png_level")


@pytest.mark.parametrize(
    ("info", "fragment"),
    [
        ([1], "Expected object, but received: [1]"),
        (info_with({"@type": None}), '"@type": Expected "neuroglancer_multiscale_volume", but received: null'),
        (info_with({"@type": "x"}), 'but received: "x"'),
        (info_with({"num_channels": None}), '"num_channels": Expected integer in the range [1, 2147483647], but received: null'),
        (info_with({"num_channels": 0}), '"num_channels": Expected integer in the range [1, 2147483647], but received: 0'),
        (info_with({"num_channels": 1.5}), "but received: 1.5"),
        (info_with({"num_channels": "1"}), 'but received: "1"'),
        (info_with({"type": None}), '"type": Expected string, but received: null'),
        (info_with({"scales": None}), '"scales": Expected array, but received: null'),
        (info_with({"data_type": None}), '"data_type": Expected string, but received: null'),
        (without(BASE_INFO, "type"), '"type": Expected string, but member is missing'),
        (without(BASE_INFO, "data_type"), '"data_type": Expected string, but member is missing'),
        (without(BASE_INFO, "num_channels"), '"num_channels": Expected integer in the range [1, 2147483647], but member is missing'),
        (without(BASE_INFO, "scales"), '"scales": Expected array, but member is missing'),
        (info_with({"scales": ["x"]}), 'Error parsing value at position 0: Expected object, but received: "x"'),
        (info_with(key=5), '"key": Expected string, but received: 5'),
        (without(BASE_INFO, "key", scale=True), '"key": Expected string, but member is missing'),
        (info_with(key=None), '"key": Expected string, but received: null'),
        (info_with(size=None), '"size": Expected array, but received: null'),
        (info_with(voxel_offset=None), '"voxel_offset": Expected array, but received: null'),
        (info_with(resolution=None), '"resolution": Expected array, but received: null'),
        (info_with(chunk_sizes=None), '"chunk_sizes": Expected array, but received: null'),
        (info_with(encoding=None), '"encoding": Expected one of'),
        (info_with(sharding="invalid_string"), '"sharding": Expected object, but received: "invalid_string"'),
        (info_with(resolution=["4", "a", 1]), 'Error parsing value at position 1: Expected 64-bit floating-point number, but received: "a"'),
        (info_with(resolution=[1, 1]), '"resolution": Array has length 2 but should have length 3'),
        (info_with(size=[1, 1]), '"size": Array has length 2 but should have length 3'),
        (info_with(voxel_offset=[1, 1]), '"voxel_offset": Array has length 2 but should have length 3'),
        (info_with(chunk_sizes=[[1, 1]]), '"chunk_sizes": Error parsing value at position 0: Array has length 2 but should have length 3'),
        (info_with(size=[10.5, 1, 1]), "Expected 64-bit signed integer, but received: 10.5"),
        (info_with(size=["1", 1, 1]), 'Expected 64-bit signed integer, but received: "1"'),
        (info_with(size=[True, 1, 1]), "Expected 64-bit signed integer, but received: true"),
        (info_with(size=[-1, 1, 1]), '"size" of [-1,1,1] and "voxel_offset" of [0,0,0] do not specify a valid region'),
        (info_with(voxel_offset=[4611686018427387902, 0, 0]), 'do not specify a valid region'),
        (info_with(voxel_offset=[-4611686018427387903, 0, 0]), 'do not specify a valid region'),
        (info_with(size=[1099511627776, 1099511627776, 2], chunk_sizes=[[1, 1, 1]], sharding={**SHARDING, "preshift_bits": 0, "minishard_bits": 0, "shard_bits": 0}), '"size" of [1099511627776,1099511627776,2] with "chunk_size" of [1,1,1] is not compatible with sharded format because the chunk keys would exceed 64 bits'),
    ],
)  # fmt: skip
def test_parse_invalid(info: Any, fragment: str) -> None:
    msg = parse_error(info)
    assert fragment in msg and msg.startswith('Error reading "info"')


@pytest.mark.parametrize(
    ("info", "first", "others"),
    [
        (info_with({"type": None, "data_type": "x", "num_channels": 0}), '"type"', ('"data_type"', '"num_channels"')),
        (info_with({"data_type": "x", "num_channels": 0}), '"data_type"', ('"num_channels"',)),
        (info_with({"num_channels": 0, "scales": None}), '"num_channels"', ('"scales"',)),
        (info_with(key=5, size=[1], encoding="x"), '"key"', ('"size"', '"encoding"')),
        (info_with(resolution=None, sharding=5), '"resolution"', ('"sharding"',)),
        (info_with(encoding=None, sharding=5), '"sharding"', ('"encoding"',)),
        (info_with(encoding="jpeg", jpeg_quality=500, png_level=1), '"jpeg_quality"', ('"png_level"',)),
        (info_with(size=None, voxel_offset=None), '"size"', ('"voxel_offset"',)),
        (info_with(size=[-1, 1, 1], chunk_sizes=[]), "At least one chunk size", ("valid region",)),
        (info_with({"data_type": "int64"}, encoding="x"), '"data_type"', ('"encoding"',)),
    ],
)  # fmt: skip
def test_parse_reports_errors_in_tensorstore_order(
    info: dict[str, Any], first: str, others: tuple[str, ...]
) -> None:
    msg = parse_error(info)
    assert first in msg and not any(o in msg for o in others)


def test_loose_values_accepted() -> None:
    m = MultiscaleMetadata.from_json(
        info_with(
            {"num_channels": 1.0, "type": "anything"},
            resolution=["4", " 1e3", 2.5],
            size=[10.0, 1, 1],
            sharding=None,
        )
    )
    s = m.scales[0]
    assert s.resolution == (4.0, 1000.0, 2.5) and s.size == (10, 1, 1) and s.sharding is None
    assert m.type == "anything"


def test_boundary_regions_accepted() -> None:
    ok = [
        info_with(voxel_offset=[-4611686018427387902, 0, 0]),
        info_with(voxel_offset=[4611686018427387893, 0, 0]),  # offset + size == 2**62 - 1
        info_with(size=[0, 0, 0]),
        info_with({"scales": []}),
    ]
    for info in ok:
        MultiscaleMetadata.from_json(info)


def test_loads_invalid_json_and_non_object() -> None:
    with pytest.raises(FailedPreconditionError, match='Error reading "vol/info": Invalid JSON'):
        MultiscaleMetadata.loads(b"not json", "vol/info")
    with pytest.raises(FailedPreconditionError, match="Invalid JSON"):
        MultiscaleMetadata.loads(b'{"a": NaN}')
    with pytest.raises(FailedPreconditionError, match=r"Expected object, but received: \[1\]"):
        MultiscaleMetadata.loads(b"[1]")


def test_scale_from_json_names_position() -> None:
    with pytest.raises(FailedPreconditionError, match="position 3: Error parsing object member"):
        ScaleMetadata.from_json({"key": 1}, 3)


def test_stored_errors_match_tensorstore(tmp_path: Path) -> None:
    """The message text after TensorStore's file prefix is the same as ours."""
    cases = [
        info_with({"num_channels": 0}),
        info_with(encoding="jpeg", jpeg_quality=101),
        info_with(size=[-1, 1, 1]),
        info_with({"num_channels": 2}, encoding="jpeg"),
    ]
    for i, info in enumerate(cases):
        d = tmp_path / str(i)
        d.mkdir()
        (d / "info").write_text(json.dumps(info))
        with pytest.raises(ValueError) as e:
            ts.open(
                {
                    "driver": "neuroglancer_precomputed",
                    "kvstore": {"driver": "file", "path": str(d)},
                }
            ).result()
        theirs = str(e.value).split(" [tensorstore_spec=")[0].split('/info": ', 1)[1]
        assert parse_error(info).endswith(theirs)


# ---------------------------------------------------------------------------------------
# Serialization: byte-identical to what TensorStore writes
# ---------------------------------------------------------------------------------------

SERIALIZATION_CASES: dict[str, list[dict[str, Any]]] = {
    "raw": [{"multiscale_metadata": {**MM8, "num_channels": 2}, "scale_metadata": {"size": [10, 11, 12], "voxel_offset": [1, -2, 3], "chunk_size": [3, 4, 5], "resolution": [4.5, 0.1, 1e-7]}}],
    "jpeg": [{"multiscale_metadata": MM8, "scale_metadata": {"size": [10, 10, 10], "encoding": "jpeg", "jpeg_quality": 85}}],
    "png": [{"multiscale_metadata": MM8, "scale_metadata": {"size": [10, 10, 10], "encoding": "png"}},
            {"scale_metadata": {"size": [5, 5, 5], "encoding": "png", "png_level": 3, "resolution": [2, 2, 2]}}],
    "cseg_sharded": [{"multiscale_metadata": {"data_type": "uint64", "num_channels": 2}, "scale_metadata": {"size": [100, 100, 10], "encoding": "compressed_segmentation", "compressed_segmentation_block_size": [4, 5, 6], "sharding": SHARDING, "resolution": [1234567, 12345678.9, 3]}}],
    "two_scales": [{"multiscale_metadata": MM32, "scale_metadata": {"size": [64, 64, 64], "resolution": [8, 8, 40]}},
                   {"scale_metadata": {"size": [32, 32, 32], "resolution": [16, 16, 40], "key": "custom/key"}}],
}  # fmt: skip


@pytest.mark.parametrize("name", SERIALIZATION_CASES)
def test_info_round_trips_byte_identically(tmp_path: Path, name: str) -> None:
    theirs = ts_create(tmp_path, SERIALIZATION_CASES[name])[-1]
    assert not theirs.startswith("ERROR"), theirs
    assert MultiscaleMetadata.loads(theirs.encode()).dumps() == theirs.encode()


@pytest.mark.parametrize("name", SERIALIZATION_CASES)
def test_create_scale_writes_what_tensorstore_writes(tmp_path: Path, name: str) -> None:
    assert my_create(SERIALIZATION_CASES[name]) == ts_create(tmp_path, SERIALIZATION_CASES[name])


def test_extra_members_preserved_when_tensorstore_adds_a_scale(tmp_path: Path) -> None:
    stored = {
        "@type": "neuroglancer_multiscale_volume",
        "type": "image",
        "data_type": "uint8",
        "num_channels": 1,
        "mesh": "mesh_dir",
        "segment_properties": {"x": [1.5, 2]},
        "scales": [
            {"key": "s0", "size": [8, 8, 8], "resolution": [4, 4, 40], "chunk_sizes": [[8, 8, 8]],
             "encoding": "raw", "hidden": False, "sharding": None},
        ],
    }  # fmt: skip
    (tmp_path / "info").write_text(json.dumps(stored))
    add = {"scale_metadata": {"size": [4, 4, 4], "resolution": [8, 8, 40]}}
    theirs = ts_create(tmp_path, [add])[0]
    meta = MultiscaleMetadata.from_json(stored)
    req = parse_spec({"kvstore": "memory://", **add})
    mine, index = create_scale(meta, req.multiscale, req.scale, req.scale_index, req.schema)
    assert index == 1
    assert mine.dumps().decode() == theirs
    assert '"hidden":false' in theirs and '"mesh":"mesh_dir"' in theirs
    assert len(meta.scales) == 1  # the input is not modified


# ---------------------------------------------------------------------------------------
# Keys, paths, compatibility, encodings
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resolution", "key"),
    [
        ([4, 4, 40], "4_4_40"),
        ([4.5, 0.1, 1e-7], "4.5_0.1_1e-07"),
        ([1234567, 12345678.9, 3], "1.23457e+06_1.23457e+07_3"),
        ([1, 1, 1], "1_1_1"),
    ],
)
def test_scale_key_from_resolution(resolution: list[float], key: str) -> None:
    assert scale_key_from_resolution(resolution) == key


@pytest.mark.parametrize(
    ("path", "key", "resolved"),
    [
        ("a/b/c", "d", "a/b/c/d"),
        ("a/b/c/", "d", "a/b/c/d"),
        ("a/b/c", "d/../e", "a/b/c/e"),  # inside the volume: as TensorStore resolves it
        ("/", "k", "k"),
        ("a/", "./k", "a/./k"),
    ],
)
def test_resolve_scale_key(path: str, key: str, resolved: str) -> None:
    assert resolve_scale_key(path, key) == resolved


@pytest.mark.parametrize(
    ("path", "key", "tensorstore"),
    [  # TensorStore 0.1.86's resolution (§3.1) of keys that leave the volume directory
        ("a/b/c", "../d", "a/b/d"),
        ("a/b/c", "../../d", "a/d"),
        ("a/b/c", "../../../d", "d"),
        ("a/b/c", "../../../../d", "../d"),
        ("", "../x", "../x"),
    ],
)
def test_keys_leaving_the_volume_are_refused_unlike_tensorstore(
    path: str, key: str, tensorstore: str
) -> None:
    with pytest.raises(InvalidArgumentError, match="leaves the volume directory"):
        resolve_scale_key(path, key)


def test_scale_metadata_defaults_and_to_json() -> None:
    s = ScaleMetadata("k", (1, 2, 3), (0, 0, 0), (1, 1, 1), [(1, 1, 1)], "jpeg")
    assert s.jpeg_quality == 75
    j = s.to_json()
    assert j["jpeg_quality"] == 75 and j["resolution"] == [1.0, 1.0, 1.0] and "sharding" not in j

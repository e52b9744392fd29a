"""Unsharded volumes are interchangeable with TensorStore 0.1.86, in both directions.

For every data type x encoding x valid channel count: what TensorStore writes we read
identically (jpeg within a small error), what we create and write TensorStore reads
identically, and the ``info`` we write is byte-for-byte the one TensorStore writes for the
same create spec. Volumes are small and not multiples of the chunk size, with negative and
positive voxel offsets, so edge chunks and negative chunk keys are always exercised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorstore as ts

import precomputed

SIZE = (37, 29, 11)  # x, y, z: no dimension is a multiple of the chunk size
CHUNK = (16, 16, 8)
RES = (4.0, 4.0, 40.0)
OFFSETS = [(-5, 3, -2), (7, -9, 4)]  # negative and positive, mixed per dimension

ALL_DTYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32"]
CASES = (
    [("raw", dt, c) for dt in ALL_DTYPES for c in (1, 3)]
    + [("png", dt, c) for dt in ("uint8", "uint16") for c in (1, 2, 3, 4)]
    + [("jpeg", "uint8", c) for c in (1, 3)]
    + [("compressed_segmentation", dt, c) for dt in ("uint32", "uint64") for c in (1, 2)]
)
CASE_IDS = [f"{e}-{dt}-{c}ch" for e, dt, c in CASES]


def case_offset(i: int) -> tuple[int, int, int]:
    return OFFSETS[i % 2]


def scale_metadata(encoding: str, **extra: Any) -> dict[str, Any]:
    sm: dict[str, Any] = {
        "size": list(SIZE),
        "chunk_size": list(CHUNK),
        "resolution": list(RES),
        "encoding": encoding,
    }
    if encoding == "compressed_segmentation":
        sm["compressed_segmentation_block_size"] = [8, 8, 4]
    if encoding == "jpeg":
        sm["jpeg_quality"] = 90
    sm.update(extra)
    return sm


def create_spec(
    path: Path, encoding: str, dtype: str, channels: int, offset: tuple[int, int, int]
) -> dict[str, Any]:
    return {
        "driver": "neuroglancer_precomputed",
        "kvstore": {"driver": "file", "path": str(path) + "/"},
        "multiscale_metadata": {
            "type": "segmentation" if encoding == "compressed_segmentation" else "image",
            "data_type": dtype,
            "num_channels": channels,
        },
        "scale_metadata": scale_metadata(encoding, voxel_offset=list(offset)),
    }


def make_data(encoding: str, dtype: str, channels: int, seed: int = 0) -> np.ndarray:
    """Test data of shape (x, y, z, channel) suited to the encoding."""
    rng = np.random.default_rng(seed)
    shape = (*SIZE, channels)
    if encoding == "jpeg":  # smooth ramps: lossy coding stays within a few levels
        x, y, z, c = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
        return (20 + 2 * x + 3 * y + 5 * z + 40 * c).clip(0, 255).astype(np.uint8)
    if encoding == "compressed_segmentation":  # labels constant over small blocks
        ids = rng.integers(0, 2**63 if dtype == "uint64" else 2**32, 64, dtype=np.uint64)
        ids[0] = 0
        blocks = rng.integers(0, 64, (*(-(-n // 3) for n in SIZE), channels))
        lab = ids[blocks].astype(dtype)
        return lab.repeat(3, 0).repeat(3, 1).repeat(3, 2)[: SIZE[0], : SIZE[1], : SIZE[2]]
    if dtype == "float32":
        return rng.standard_normal(shape).astype(np.float32) * 1e3
    info = np.iinfo(dtype)
    data = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    data[:5, :4, :3] = 0  # an all-zero corner never hurts
    return data


def assert_close(encoding: str, got: np.ndarray, want: np.ndarray) -> None:
    if encoding == "jpeg":
        err = np.sqrt(np.mean((got.astype(float) - want.astype(float)) ** 2))
        assert err < (3 if want.shape[-1] == 1 else 9), f"RMS error {err}"
    else:
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------
# TensorStore writes, we read
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("encoding", "dtype", "channels"), CASES, ids=CASE_IDS)
def test_we_read_what_tensorstore_writes(
    tmp_path: Path, encoding: str, dtype: str, channels: int
) -> None:
    offset = case_offset(CASES.index((encoding, dtype, channels)))
    spec = create_spec(tmp_path / "v", encoding, dtype, channels, offset)
    data = make_data(encoding, dtype, channels)
    t = ts.open(spec, create=True).result()
    t[...] = data
    ts_read = t.read().result()

    vol = precomputed.open(str(tmp_path / "v"))
    assert vol.dtype == np.dtype(dtype)
    assert vol.shape == (*SIZE, channels)
    assert vol.domain.inclusive_min == (*offset, 0)
    got = vol.read()
    assert got.dtype == np.dtype(dtype)
    if encoding == "jpeg":
        # Different JPEG decoders (libjpeg-turbo vs Pillow's) may differ by a level or so.
        assert np.abs(got.astype(int) - ts_read.astype(int)).max() <= 2
    else:
        np.testing.assert_array_equal(got, ts_read)
    assert_close(encoding, got, data)
    # A sub-box crossing chunk boundaries, addressed in absolute coordinates.
    x0, y0, z0 = offset
    sub = vol[x0 + 10 : x0 + 33, y0 + 14 : y0 + 20, z0 + 7, :].read()
    np.testing.assert_array_equal(sub, got[10:33, 14:20, 7, :])


# ---------------------------------------------------------------------------------------
# We create and write, TensorStore reads
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("encoding", "dtype", "channels"), CASES, ids=CASE_IDS)
def test_tensorstore_reads_what_we_write(
    tmp_path: Path, encoding: str, dtype: str, channels: int
) -> None:
    offset = case_offset(CASES.index((encoding, dtype, channels)) + 1)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    data = make_data(encoding, dtype, channels, seed=1)

    vol = precomputed.open(create_spec(ours, encoding, dtype, channels, offset), create=True)
    t_ref = ts.open(create_spec(theirs, encoding, dtype, channels, offset), create=True).result()
    # The info file is byte-identical to the one TensorStore writes for the same spec.
    assert (ours / "info").read_bytes() == (theirs / "info").read_bytes()

    vol[...] = data
    t_ref[...] = data
    t = ts.open({"driver": "neuroglancer_precomputed", "kvstore": f"file://{ours}/"}).result()
    assert t.domain.inclusive_min == (*offset, 0)
    assert t.domain.shape == (*SIZE, channels)
    got = t.read().result()
    assert_close(encoding, got, data)
    if encoding != "jpeg":
        np.testing.assert_array_equal(got, data)
    # Same chunk keys as TensorStore (all-zero chunks are not stored by either).
    scale_dir = "4_4_40"
    keys = sorted(p.name for p in (ours / scale_dir).iterdir())
    assert keys == sorted(p.name for p in (theirs / scale_dir).iterdir())
    if encoding in ("raw", "compressed_segmentation"):  # deterministic encodings: same bytes
        for k in keys:
            assert (ours / scale_dir / k).read_bytes() == (theirs / scale_dir / k).read_bytes(), k


def test_tensorstore_reads_our_partial_writes(tmp_path: Path) -> None:
    """Read-modify-write of partial chunks across chunk boundaries, then TS reads it."""
    spec = create_spec(tmp_path / "v", "raw", "uint16", 2, (-5, 3, -2))
    vol = precomputed.open(spec, create=True)
    want = np.zeros((*SIZE, 2), np.uint16)
    rng = np.random.default_rng(3)
    for x0, x1, y0, y1, z0, z1 in [
        (0, 20, 5, 17, 0, 9),
        (12, 37, 0, 29, 6, 11),
        (3, 4, 3, 4, 3, 4),
    ]:
        block = rng.integers(1, 60000, (x1 - x0, y1 - y0, z1 - z0, 2), dtype=np.uint16)
        vol[x0 - 5 : x1 - 5, y0 + 3 : y1 + 3, z0 - 2 : z1 - 2, :] = block
        want[x0:x1, y0:y1, z0:z1] = block
    vol[-5:32, 3:32, -2:9, 1] = 7  # one channel only
    want[..., 1] = 7
    got = ts.open({"driver": "neuroglancer_precomputed", "kvstore": f"file://{tmp_path}/v/"})
    np.testing.assert_array_equal(got.result().read().result(), want)


# ---------------------------------------------------------------------------------------
# Several scales
# ---------------------------------------------------------------------------------------

SCALES = [
    # (resolution, size, voxel_offset, chunk, key or None)
    ((4.0, 4.0, 40.0), (37, 29, 11), (-5, 3, -2), (16, 16, 8), None),
    ((8.0, 8.0, 40.0), (19, 15, 11), (-3, 1, -2), (8, 8, 8), None),
    ((16.0, 16.0, 40.0), (10, 8, 11), (-2, 0, -2), (8, 8, 4), "custom/s2"),
]


def multiscale_spec(path: Path, i: int) -> dict[str, Any]:
    res, size, off, chunk, key = SCALES[i]
    sm: dict[str, Any] = {
        "resolution": list(res),
        "size": list(size),
        "voxel_offset": list(off),
        "chunk_size": list(chunk),
        "encoding": "compressed_segmentation",
        "compressed_segmentation_block_size": [4, 4, 4],
    }
    if key:
        sm["key"] = key
    return {
        "driver": "neuroglancer_precomputed",
        "kvstore": {"driver": "file", "path": str(path) + "/"},
        "multiscale_metadata": {"type": "segmentation", "data_type": "uint64", "num_channels": 1},
        "scale_metadata": sm,
    }


def scale_data(i: int) -> np.ndarray:
    size = SCALES[i][1]
    rng = np.random.default_rng(10 + i)
    return rng.integers(0, 5, (*size, 1)).astype(np.uint64) * (2**40 + i)


def selectors(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(expected scale index, open spec) for index, key and resolution selection."""
    base = {"driver": "neuroglancer_precomputed", "kvstore": f"file://{path}/"}
    return [
        (1, {**base, "scale_index": 1}),
        (1, {**base, "scale_metadata": {"key": "8_8_40"}}),
        (1, {**base, "scale_metadata": {"resolution": [8, 8, 40]}}),
        (2, {**base, "scale_metadata": {"key": "custom/s2"}}),
        (2, {**base, "scale_metadata": {"resolution": [16, 16, 40]}}),
        (0, base),
    ]


def test_we_open_scales_tensorstore_created(tmp_path: Path) -> None:
    path = tmp_path / "ms"
    for i in range(len(SCALES)):
        t = ts.open(multiscale_spec(path, i), create=True).result()
        t[...] = scale_data(i)
    for index, spec in selectors(path):
        vol = precomputed.open(spec)
        res, size, off, _, _ = SCALES[index]
        assert vol.scale_index == index
        assert vol.resolution == res
        assert vol.domain.inclusive_min == (*off, 0)
        assert vol.shape == (*size, 1)
        np.testing.assert_array_equal(vol.read(), scale_data(index))
        # The same selection through TensorStore gives the same array.
        np.testing.assert_array_equal(ts.open(spec).result().read().result(), vol.read())
    assert len(precomputed.open_scales(f"file://{path}/")) == 3


def test_tensorstore_opens_scales_we_created(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for i in range(len(SCALES)):
        vol = precomputed.open(multiscale_spec(ours, i), create=True)
        assert vol.scale_index == i
        vol[...] = scale_data(i)
        ts.open(multiscale_spec(theirs, i), create=True).result()
    assert (ours / "info").read_bytes() == (theirs / "info").read_bytes()
    for index, spec in selectors(ours):
        t = ts.open(spec).result()
        res, size, off, _, _ = SCALES[index]
        assert t.domain.inclusive_min == (*off, 0)
        assert t.domain.shape == (*size, 1)
        np.testing.assert_array_equal(t.read().result(), scale_data(index))
    # Our chunk keys for the keyed scale live under the resolved key directory.
    assert any((ours / "custom" / "s2").iterdir())


@pytest.mark.parametrize(
    "extra",
    [
        {"encoding": "png", "png_level": 3},
        {"encoding": "png"},
        {"encoding": "jpeg", "jpeg_quality": 42},
        {"encoding": "jpeg"},
        {"encoding": "raw", "key": "my scale"},
        {"encoding": "raw", "resolution": [4.5, 0.1, 1e-7]},
        {"encoding": "raw", "resolution": [1234567, 12345678.9, 3]},
        {"encoding": "raw", "sharding": None},
    ],
    ids=lambda e: "-".join(f"{k}={v}" for k, v in e.items()),
)
def test_info_bytes_match_tensorstore_for_scale_options(
    tmp_path: Path, extra: dict[str, Any]
) -> None:
    def spec(path: Path) -> dict[str, Any]:
        sm = {"size": [5, 6, 7], "chunk_size": [3, 3, 3], **extra}
        return {
            "driver": "neuroglancer_precomputed",
            "kvstore": {"driver": "file", "path": str(path) + "/"},
            "multiscale_metadata": {"data_type": "uint8", "num_channels": 1},
            "scale_metadata": sm,
        }

    precomputed.open(spec(tmp_path / "ours"), create=True)
    ts.open(spec(tmp_path / "theirs"), create=True).result()
    assert (tmp_path / "ours" / "info").read_bytes() == (tmp_path / "theirs" / "info").read_bytes()

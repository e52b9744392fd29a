"""Encodings and test chunks shared by the codec tests."""

from __future__ import annotations

import struct
import zlib

import numpy as np

from precomputed.codecs import (
    ChunkEncoding,
)

RAW = ChunkEncoding("raw")
PNG = ChunkEncoding("png")
JPEG = ChunkEncoding("jpeg")
ALL_DTYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32"]
CSEG_MESSAGE = "Corrupted Neuroglancer compressed segmentation"


def cseg(*block_xyz: int) -> ChunkEncoding:
    return ChunkEncoding("compressed_segmentation", block_size=tuple(block_xyz))


def deflate(data: bytes, level: int, wbits: int) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, wbits)
    return c.compress(data) + c.flush()


def words(*values: int) -> bytes:
    return np.array(values, "<u4").tobytes()


def random_chunk(rng, dtype, shape, nlabels: int | None = None) -> np.ndarray:
    dtype = np.dtype(dtype)
    if nlabels is not None:  # a segmentation-like chunk with a few large labels
        info = np.iinfo(dtype)
        labels = rng.integers(0, int(info.max), nlabels, dtype=np.uint64, endpoint=True)
        out = labels.astype(dtype)[rng.integers(0, nlabels, shape)]
        return np.ascontiguousarray(np.sort(out, axis=-1) if nlabels > 2 else out)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def ramp(shape, channels: int) -> np.ndarray:
    """A smooth (c, z, y, x) uint8 test image."""
    c, z, y, x = np.indices((channels, *shape))
    return (20 + 3 * x + 2 * y + 5 * z + 30 * c).clip(0, 255).astype(np.uint8)


def rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a.astype(np.float64) - b) ** 2)))


def assert_fresh_array(arr: np.ndarray, shape, dtype) -> None:
    assert arr.shape == tuple(shape)
    assert arr.dtype == np.dtype(dtype)
    assert arr.flags.c_contiguous and arr.flags.writeable


def _jpeg_segments(data: bytes) -> dict[int, bytes]:
    """Marker -> payload of the segments before the scan."""
    out, pos = {}, 2
    while pos < len(data):
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        out.setdefault(marker, data[pos + 4 : pos + 2 + length])
        if marker == 0xDA:
            break
        pos += 2 + length
    return out

"""Chunk files written by TensorStore 0.1.86 decode here, and ours decode in TensorStore."""

from __future__ import annotations

import os

import numpy as np
import pytest

from codec_cases import (
    ALL_DTYPES,
    CSEG_MESSAGE,
    RAW,
    _jpeg_segments,
    cseg,
    ramp,
    random_chunk,
    rms,
)
from precomputed.codecs import (
    ChunkEncoding,
    decode_chunk,
    encode_chunk,
)
from precomputed.errors import CorruptDataError

# ---------------------------------------------------------------------------------------------
# Interoperability with TensorStore 0.1.86: chunk files on a file:// kvstore.


@pytest.fixture(scope="module")
def ts():
    return pytest.importorskip("tensorstore")


def ts_create(ts, path, dtype, channels, size, chunk, encoding, **scale):
    spec = {
        "driver": "neuroglancer_precomputed",
        "kvstore": {"driver": "file", "path": str(path)},
        "multiscale_metadata": {"data_type": dtype, "num_channels": channels, "type": "image"},
        "scale_metadata": {
            "resolution": [1, 1, 1],
            "size": list(size),
            "chunk_size": list(chunk),
            "encoding": encoding,
            **scale,
        },
    }
    return ts.open(spec, create=True).result()


def ts_reopen(ts, path):
    return ts.open(
        {"driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": str(path)}}
    ).result()


def chunk_files(path) -> dict[tuple, tuple[str, bytes]]:
    """Chunk files of scale 1_1_1 as {((x0, x1), (y0, y1), (z0, z1)): (path, bytes)}."""
    out = {}
    folder = os.path.join(str(path), "1_1_1")
    for name in sorted(os.listdir(folder)):
        bounds = [tuple(int(v) for v in part.split("-")) for part in name.split("_")]
        with open(os.path.join(folder, name), "rb") as f:
            out[tuple(bounds)] = (os.path.join(folder, name), f.read())
    return out


def box_slices(box) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in box)


def swap_axes(array: np.ndarray) -> np.ndarray:
    """xyzc <-> czyx (as a C-contiguous copy)."""
    return np.ascontiguousarray(np.asarray(array).transpose(3, 2, 1, 0))


def check_interop(
    ts, tmp_path, volume_xyzc, enc, dtype, size, chunk, encoding, exact_bytes, **scale
):
    """TensorStore writes; we decode (and re-encode); then we write; TensorStore reads."""
    channels = volume_xyzc.shape[3]
    store = ts_create(ts, tmp_path, dtype, channels, size, chunk, encoding, **scale)
    store[...] = volume_xyzc
    files = chunk_files(tmp_path)
    assert files
    for box, (_, data) in files.items():
        expected = swap_axes(volume_xyzc[box_slices(box)])
        out = decode_chunk(data, expected.shape, dtype, enc, key="1_1_1")
        np.testing.assert_array_equal(out, expected)
        if exact_bytes:
            assert encode_chunk(expected, enc) == data
    # Conversely: our chunk files (with different data) read by TensorStore.
    flipped = np.ascontiguousarray(volume_xyzc[::-1, :, ::-1])
    for box, (file_path, _) in files.items():
        with open(file_path, "wb") as f:
            f.write(encode_chunk(swap_axes(flipped[box_slices(box)]), enc))
    np.testing.assert_array_equal(ts_reopen(ts, tmp_path).read().result(), flipped)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_interop_raw(ts, tmp_path, dtype):
    size, chunk = (7, 5, 3), (3, 3, 2)
    volume = random_chunk(np.random.default_rng(5), dtype, (*size, 2))
    check_interop(ts, tmp_path, volume, RAW, dtype, size, chunk, "raw", exact_bytes=True)


@pytest.mark.parametrize("dtype", ["uint32", "uint64"])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize(
    ("size", "chunk", "block"),
    [
        ((9, 7, 5), (4, 4, 3), (4, 3, 2)),
        ((21, 17, 9), (16, 16, 8), (8, 8, 8)),
        ((5, 5, 5), (5, 5, 5), (8, 3, 9)),
    ],
)
def test_interop_compressed_segmentation_byte_identical(
    ts, tmp_path, dtype, channels, size, chunk, block
):
    rng = np.random.default_rng(channels)
    volume = random_chunk(rng, dtype, (*size, channels), nlabels=7)
    check_interop(
        ts,
        tmp_path,
        volume,
        cseg(*block),
        dtype,
        size,
        chunk,
        "compressed_segmentation",
        exact_bytes=True,
        compressed_segmentation_block_size=list(block),
    )


def test_interop_compressed_segmentation_32_bit_block(ts, tmp_path):
    size = (64, 64, 20)
    volume = (
        np.arange(np.prod(size), dtype=np.uint64).reshape(size[::-1]).T[..., None] * 5 + 2**33
    ).copy()
    check_interop(
        ts,
        tmp_path,
        volume,
        cseg(*size),
        "uint64",
        size,
        size,
        "compressed_segmentation",
        exact_bytes=True,
        compressed_segmentation_block_size=list(size),
    )


@pytest.mark.parametrize(
    "chunk, block",
    [((4, 3, 2), (2, 2, 1)), ((4, 4, 4), (2, 2, 2))],  # partial blocks; whole blocks only
)
def test_interop_compressed_segmentation_corrupt_chunks_fail_like_tensorstore(
    ts, tmp_path, chunk, block
):
    """Mutated chunk files: TensorStore and we must agree on failure, and on data if read."""
    size = (chunk[0] * 6, chunk[1] * 6, chunk[2])
    base = random_chunk(np.random.default_rng(0), "uint64", (*chunk, 1), nlabels=5)
    store = ts_create(
        ts,
        tmp_path,
        "uint64",
        1,
        size,
        chunk,
        "compressed_segmentation",
        compressed_segmentation_block_size=list(block),
    )
    store[...] = np.tile(base, (6, 6, 1, 1))
    files = chunk_files(tmp_path)
    _, original = next(iter(files.values()))
    words32 = np.frombuffer(original, "<u4")
    rng = np.random.default_rng(1)
    for k, (file_path, _) in enumerate(files.values()):
        m = words32.copy()
        i = int(rng.integers(1, len(m)))
        m[i] = [
            int(rng.integers(0, 2**32)),
            int(rng.integers(0, 40)),
            int(m[i]) ^ (1 << int(rng.integers(0, 32))),
        ][k % 3]
        data = m.tobytes() if k % 7 else m.tobytes()[: int(rng.integers(0, len(original)))]
        with open(file_path, "wb") as f:
            f.write(data)
    reopened = ts_reopen(ts, tmp_path)
    agree = {"ok": 0, "corrupt": 0}
    for box, (_, data) in chunk_files(tmp_path).items():
        try:
            expected = swap_axes(reopened[box_slices(box)].read().result())
        except Exception as e:  # TensorStore raises ValueError
            assert CSEG_MESSAGE in str(e)
            with pytest.raises(CorruptDataError, match=CSEG_MESSAGE):
                decode_chunk(data, (1, *reversed(chunk)), np.uint64, cseg(*block))
            agree["corrupt"] += 1
        else:
            np.testing.assert_array_equal(
                decode_chunk(data, (1, *reversed(chunk)), np.uint64, cseg(*block)), expected
            )
            agree["ok"] += 1
    assert agree["ok"] and agree["corrupt"]


@pytest.mark.parametrize("channels", [1, 3])
def test_interop_jpeg(ts, tmp_path, channels):
    size, chunk = (37, 21, 5), (16, 16, 4)
    volume = swap_axes(ramp(size[::-1], channels))  # xyzc, smooth
    store = ts_create(ts, tmp_path, "uint8", channels, size, chunk, "jpeg", jpeg_quality=80)
    store[...] = volume
    enc = ChunkEncoding("jpeg", jpeg_quality=80)
    ts_read = store.read().result()
    limit = 3 if channels == 1 else 9
    for box, (file_path, data) in chunk_files(tmp_path).items():
        expected = swap_axes(volume[box_slices(box)])
        out = decode_chunk(data, expected.shape, np.uint8, enc)
        assert rms(out, expected) < limit
        assert np.abs(out.astype(int) - swap_axes(ts_read[box_slices(box)])).max() <= 1
        ours = encode_chunk(expected, enc)
        # Same libjpeg settings: SOF (baseline, sampling factors) and quantization tables.
        assert _jpeg_segments(ours)[0xC0] == _jpeg_segments(data)[0xC0]
        assert _jpeg_segments(ours)[0xDB] == _jpeg_segments(data)[0xDB]
        with open(file_path, "wb") as f:
            f.write(ours)
    ts_ours = ts_reopen(ts, tmp_path).read().result()
    assert rms(swap_axes(ts_ours), swap_axes(volume)) < limit
    for box, (_, data) in chunk_files(tmp_path).items():
        out = decode_chunk(data, swap_axes(volume[box_slices(box)]).shape, np.uint8, enc)
        assert np.abs(out.astype(int) - swap_axes(ts_ours[box_slices(box)])).max() <= 1


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_interop_png(ts, tmp_path, dtype, channels):
    size, chunk = (13, 9, 5), (8, 8, 3)
    rng = np.random.default_rng(channels)
    volume = random_chunk(rng, dtype, (*size, channels))
    volume[:6] = swap_axes(ramp(size[::-1], channels))[:6].astype(dtype) * (
        1 if dtype == "uint8" else 250
    )
    level = {1: None, 2: 1, 3: 6, 4: 9}[channels]
    scale = {} if level is None else {"png_level": level}
    enc = ChunkEncoding("png", png_level=level)
    check_interop(ts, tmp_path, volume, enc, dtype, size, chunk, "png", exact_bytes=False, **scale)

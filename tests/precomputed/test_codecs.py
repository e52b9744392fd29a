"""Chunk codecs: round trips, the reference byte vectors, error messages, and interoperability
with TensorStore 0.1.86 (chunk files written by one are read by the other)."""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from precomputed import codecs as _codecs
from precomputed.codecs import (
    ChunkEncoding,
    decode_chunk,
    encode_chunk,
    gzip_compress,
    gzip_decompress,
)
from precomputed.errors import CorruptDataError, InvalidArgumentError

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


# ---------------------------------------------------------------------------------------------
# ChunkEncoding


def test_chunk_encoding_validates_members():
    assert ChunkEncoding("raw").jpeg_quality == 75
    assert cseg(8, 8, 8).block_size == (8, 8, 8)
    with pytest.raises(InvalidArgumentError, match="Invalid encoding"):
        ChunkEncoding("jxl")
    with pytest.raises(InvalidArgumentError, match="block_size"):
        ChunkEncoding("compressed_segmentation")
    with pytest.raises(InvalidArgumentError, match="positive"):
        cseg(8, 0, 8)
    with pytest.raises(InvalidArgumentError, match="jpeg_quality"):
        ChunkEncoding("jpeg", jpeg_quality=101)
    with pytest.raises(InvalidArgumentError, match="png_level"):
        ChunkEncoding("png", png_level=10)


@pytest.mark.parametrize(
    ("enc", "dtype", "channels", "message"),
    [
        (JPEG, "uint16", 1, '"jpeg" encoding only supported for uint8, not for uint16'),
        (JPEG, "uint8", 2, '"jpeg" encoding only supports 1 or 3 channels, not 2'),
        (PNG, "int16", 1, '"png" encoding only supported for uint8 and uint16, not for int16'),
        (PNG, "uint8", 5, '"png" encoding only supports 1 to 4 channels, not 5'),
        (
            cseg(8, 8, 8),
            "int32",
            1,
            "compressed_segmentation encoding only supported for uint32 and uint64, not for int32",
        ),
        (RAW, "float64", 1, "float64 data type is not one of the supported data types"),
    ],
)
def test_encoding_rejects_incompatible_dtype_or_channels(enc, dtype, channels, message):
    chunk = np.zeros((channels, 2, 2, 2), dtype)
    with pytest.raises(InvalidArgumentError, match=message):
        encode_chunk(chunk, enc)
    with pytest.raises(InvalidArgumentError, match=message):
        decode_chunk(b"", chunk.shape, dtype, enc)


def test_encode_requires_a_4d_chunk():
    with pytest.raises(InvalidArgumentError, match="4-d"):
        encode_chunk(np.zeros((2, 2, 2), np.uint8), RAW)


# ---------------------------------------------------------------------------------------------
# gzip (reference §5.6)


def test_gzip_compress_writes_tensorstore_header_and_round_trips():
    data = b"neuroglancer" * 100
    out = gzip_compress(data)
    assert out[:10] == bytes.fromhex("1f8b0800000000000203")
    assert gzip.decompress(out) == data
    assert gzip_decompress(out) == data
    reference = deflate(data, 9, 31)
    assert out == reference[:9] + b"\x03" + reference[10:]
    assert gzip_decompress(gzip_compress(b"")) == b""


def test_gzip_decompress_accepts_memoryview():
    assert gzip_decompress(memoryview(gzip_compress(b"abc"))) == b"abc"


@pytest.mark.parametrize(
    "data",
    [
        zlib.compress(b"abc"),  # zlib wrapper, not gzip
        deflate(b"abc", 6, -15),  # raw deflate
        gzip_compress(b"abc") + b"\x00",  # trailing bytes
        gzip_compress(b"abc") + gzip_compress(b"def"),  # a second member
        gzip_compress(b"abc" * 100)[:-5],  # truncated
        b"",
        b"not gzip at all",
    ],
    ids=["zlib", "raw-deflate", "trailing", "two-members", "truncated", "empty", "garbage"],
)
def test_gzip_decompress_rejects_non_gzip_and_trailing_data(data):
    with pytest.raises(CorruptDataError, match="Error decoding zlib-compressed data in shard 0"):
        gzip_decompress(data, "shard 0")


# ---------------------------------------------------------------------------------------------
# raw (reference §4.1, A.5)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("shape", [(5, 4, 3), (1, 1, 1), (2, 7, 5)])
def test_raw_round_trip_is_little_endian_c_order(dtype, channels, shape):
    chunk = random_chunk(np.random.default_rng(0), dtype, (channels, *shape))
    data = encode_chunk(chunk, RAW)
    assert data == chunk.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    out = decode_chunk(data, chunk.shape, dtype, RAW)
    assert_fresh_array(out, chunk.shape, dtype)
    np.testing.assert_array_equal(out, chunk)


def test_raw_appendix_a5_vector():
    # uint8 size [2,3,1]; v[x][y] = [[1,2,3],[4,5,6]] -> bytes 01 04 02 05 03 06
    v = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)  # [x][y]
    chunk = v.T[None, None].copy()  # (c, z, y, x)
    assert encode_chunk(chunk, RAW) == bytes.fromhex("010402050306")
    np.testing.assert_array_equal(
        decode_chunk(bytes.fromhex("010402050306"), (1, 1, 3, 2), "uint8", RAW), chunk
    )


def test_raw_tensorstore_uint16_four_channel_example():
    # Chunk 7-10_8-10_7-9 of a 4-channel uint16 volume, value 0x9871 at x=9, y=8, z=7, c=1.
    chunk = np.zeros((4, 2, 2, 3), np.uint16)
    chunk[1, 0, 0, 2] = 0x9871
    data = encode_chunk(chunk, RAW)
    assert len(data) == 96
    assert data[28:30] == b"\x71\x98" and data.count(0) == 94


def test_raw_encodes_big_endian_input_as_little_endian():
    chunk = np.arange(24, dtype=">u2").reshape(2, 3, 2, 2)
    assert encode_chunk(chunk, RAW) == chunk.astype("<u2").tobytes()


def test_raw_decode_is_zero_copy_for_writeable_buffers():
    chunk = np.arange(60, dtype=np.uint32).reshape(1, 3, 4, 5)
    buf = bytearray(chunk.tobytes())
    out = decode_chunk(buf, chunk.shape, np.uint32, RAW)
    assert np.shares_memory(out, np.frombuffer(buf, np.uint8))
    assert out.flags.writeable
    out2 = decode_chunk(memoryview(buf), chunk.shape, np.uint32, RAW)
    assert np.shares_memory(out2, np.frombuffer(buf, np.uint8))


@pytest.mark.parametrize("kind", [bytes, lambda b: memoryview(b).toreadonly()])
def test_raw_decode_copies_read_only_buffers(kind):
    chunk = np.arange(60, dtype=np.int16).reshape(1, 3, 4, 5)
    out = decode_chunk(kind(chunk.tobytes()), chunk.shape, np.int16, RAW)
    assert_fresh_array(out, chunk.shape, np.int16)
    out[...] = 0  # writeable


def test_raw_wrong_length_names_key():
    with pytest.raises(CorruptDataError) as e:
        decode_chunk(b"abc", (1, 2, 2, 2), "uint16", RAW, key="1_1_1/0-2_0-2_0-2")
    assert str(e.value) == (
        'Error reading "1_1_1/0-2_0-2_0-2": Expected chunk length to be 16, but received 3 bytes'
    )


# ---------------------------------------------------------------------------------------------
# compressed_segmentation (reference §4.4, A.4)

_A4_BLOCKS = [[4, 3, 5, 4], [1, 3, 3, 3], [3, 1, 1, 1], [5, 5, 3, 4]]


def _blocks_along_z(values, dtype) -> np.ndarray:
    """Chunk (1, n, 2, 2) whose z-slices are the given 2x2 blocks (x fastest)."""
    return np.array(values, dtype).reshape(1, len(values), 2, 2)


CSEG_VECTORS = {
    "one-block-uint64": (
        _blocks_along_z(_A4_BLOCKS[:1], np.uint64),
        (2, 2, 1),
        words(1, 3 | 2 << 24, 2, 0b01100001, 3, 0, 4, 0, 5, 0),
    ),
    "two-blocks-uint64": (
        _blocks_along_z(_A4_BLOCKS[:2], np.uint64),
        (2, 2, 1),
        words(
            1, 5 | 2 << 24, 4, 12 | 1 << 24, 11, 0b01100001, 3, 0, 4, 0, 5, 0, 0b1110, 1, 0, 3, 0
        ),
    ),
    "table-reuse-uint64": (
        _blocks_along_z(_A4_BLOCKS, np.uint64),
        (2, 2, 1),
        words(
            1,
            *(9 | 2 << 24, 8, 16 | 1 << 24, 15, 16 | 1 << 24, 20, 9 | 2 << 24, 21),
            *(0b01100001, 3, 0, 4, 0, 5, 0, 0b1110, 1, 0, 3, 0, 0b00000001, 0b01001010),
        ),
    ),
    "table-reuse-uint32": (
        _blocks_along_z(_A4_BLOCKS, np.uint32),
        (2, 2, 1),
        words(
            1,
            *(9 | 2 << 24, 8, 13 | 1 << 24, 12, 13 | 1 << 24, 15, 9 | 2 << 24, 16),
            *(0b01100001, 3, 4, 5, 0b1110, 1, 3, 0b00000001, 0b01001010),
        ),
    ),
    "constant-uint64": (
        np.full((1, 4, 2, 2), 3, np.uint64),
        (2, 2, 1),
        words(1, 8, 8, 8, 10, 8, 10, 8, 10, 3, 0),
    ),
    "multichannel-header": (
        np.array([4, 0, 4, 0], np.uint64).reshape(1, 1, 2, 2),
        (2, 2, 1),
        bytes.fromhex("0100000003000001020000000500000000000000000000000400000000000000"),
    ),
    # TensorStore driver test: block [3,2,1], chunk [3,4,2], each block constant 1..4.
    "ts-driver-test": (
        np.repeat(np.array([[1, 2], [3, 4]], np.uint32), 2, axis=1)[None, :, :, None].repeat(
            3, axis=3
        ),
        (3, 2, 1),
        words(1, 8, 8, 9, 9, 10, 10, 11, 11, 1, 2, 3, 4),
    ),
    # ... and its edge chunk 0-3_0-4_2-3 (z clipped to 1) holding 5 and 6.
    "ts-driver-test-edge": (
        np.repeat(np.array([5, 6], np.uint32), 2)[None, None, :, None].repeat(3, axis=3),
        (3, 2, 1),
        words(1, 4, 4, 5, 5, 5, 6),
    ),
}


@pytest.mark.parametrize("name", list(CSEG_VECTORS))
def test_cseg_reference_vectors(name):
    chunk, block, expected = CSEG_VECTORS[name]
    assert encode_chunk(chunk, cseg(*block)) == expected
    out = decode_chunk(expected, chunk.shape, chunk.dtype, cseg(*block))
    assert_fresh_array(out, chunk.shape, chunk.dtype)
    np.testing.assert_array_equal(out, chunk)


@pytest.mark.parametrize("dtype", ["uint32", "uint64"])
@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("shape", [(5, 4, 3), (1, 1, 1), (9, 7, 13)])
@pytest.mark.parametrize("block", [(1, 1, 1), (4, 3, 2), (8, 8, 8), (2, 5, 3)])
def test_cseg_round_trip(dtype, channels, shape, block):
    rng = np.random.default_rng(sum(shape) + sum(block))
    chunk = random_chunk(rng, dtype, (channels, *shape), nlabels=5)
    data = encode_chunk(chunk, cseg(*block))
    out = decode_chunk(data, chunk.shape, dtype, cseg(*block))
    assert_fresh_array(out, chunk.shape, dtype)
    np.testing.assert_array_equal(out, chunk)


def test_cseg_numpy_encoder_and_library_agree_byte_for_byte():
    """The vectorised fallback encoder (used for blocks > 65536 voxels) and the C++ library
    (used otherwise) must produce identical bytes; so must both decoders."""
    rng = np.random.default_rng(42)
    for _ in range(60):
        dtype = np.dtype(rng.choice(["uint32", "uint64"]))
        shape = tuple(int(s) for s in rng.integers(1, 14, 3))
        block = tuple(int(b) for b in rng.integers(1, 9, 3))
        nlabels = int(rng.choice([1, 2, 3, 5, 17, 300]))
        chan = random_chunk(rng, dtype, shape, nlabels=nlabels)
        lib = _codecs._cseg_encode_channel(chan, block)
        ours = _codecs._cseg_encode_channel_numpy(chan, block)
        np.testing.assert_array_equal(ours, lib)
        channel = _codecs._CsegChannel(np.asarray(lib, np.uint32), shape, block, dtype)
        out = np.empty(shape, dtype)
        channel.decode_into(out)
        np.testing.assert_array_equal(out, chan)
        np.testing.assert_array_equal(channel.decode_with_library(), chan)


def test_cseg_table_deduplication_matches_reference():
    rng = np.random.default_rng(9)
    for _ in range(20):
        pool = [rng.integers(0, 5, int(rng.integers(1, 4))) for _ in range(4)]
        segments = [np.unique(pool[int(i)]) for i in rng.integers(0, 4, int(rng.integers(1, 30)))]
        length = np.array([len(seg) for seg in segments])
        start = np.concatenate([[0], np.cumsum(length)[:-1]])
        pos = np.concatenate([np.arange(n) for n in length])
        flat = np.concatenate(segments)
        np.testing.assert_array_equal(
            _codecs._first_identical_segment(flat, start, length, pos),
            _codecs._first_identical_segment_exact(flat, start, length),
        )


def test_cseg_accepts_any_buffer_type_and_byte_order():
    chunk, data = _valid_cseg()
    for buf in (bytearray(data), memoryview(data), memoryview(bytearray(data))):
        np.testing.assert_array_equal(
            decode_chunk(buf, chunk.shape, chunk.dtype, cseg(4, 3, 2)), chunk
        )
    single = chunk[:1].copy()
    encoded = encode_chunk(single, cseg(4, 3, 2))
    assert encode_chunk(single.astype(">u8"), cseg(4, 3, 2)) == encoded
    np.testing.assert_array_equal(
        decode_chunk(bytearray(encoded), single.shape, "uint64", cseg(4, 3, 2)), single
    )


@pytest.mark.parametrize("block", [(4, 3, 2), (64, 64, 20)], ids=["library", "numpy"])
def test_cseg_refuses_chunks_whose_offsets_exceed_24_bits(monkeypatch, block):
    monkeypatch.setattr(_codecs, "_CSEG_MAX_OFFSET", 64)
    chunk = np.arange(20 * 64 * 64, dtype=np.uint32).reshape(1, 20, 64, 64)
    with pytest.raises(InvalidArgumentError, match="too large to encode"):
        encode_chunk(chunk, cseg(*block))


def test_cseg_large_block_with_32_bit_indices():
    # > 65536 distinct values in one block: 32-bit indices, encoded by the numpy fallback.
    chunk = np.arange(20 * 64 * 64, dtype=np.uint64).reshape(1, 20, 64, 64) * 3 + 2**40
    data = encode_chunk(chunk, cseg(64, 64, 20))
    w = np.frombuffer(data, "<u4")
    assert w[0] == 1 and w[1] >> 24 == 32 and w[2] == 2  # bits 32, values right after header
    np.testing.assert_array_equal(
        decode_chunk(data, chunk.shape, np.uint64, cseg(64, 64, 20)), chunk
    )


def test_cseg_block_larger_than_chunk():
    chunk = np.array([[[[7, 9, 7]]]], np.uint32)
    data = encode_chunk(chunk, cseg(4, 2, 2))
    # 1 block; encoded area sized for the full 16-voxel block (1 word at 1 bit).
    assert data == words(1, 3 | 1 << 24, 2, 0b010, 7, 9)
    np.testing.assert_array_equal(decode_chunk(data, (1, 1, 1, 3), np.uint32, cseg(4, 2, 2)), chunk)


def _valid_cseg(dtype=np.uint64, channels=2) -> tuple[np.ndarray, bytes]:
    chunk = random_chunk(np.random.default_rng(3), dtype, (channels, 3, 5, 6), nlabels=6)
    return chunk, encode_chunk(chunk, cseg(4, 3, 2))


def test_cseg_every_truncation_is_rejected():
    chunk, data = _valid_cseg()
    for n in range(len(data)):
        with pytest.raises(CorruptDataError, match=CSEG_MESSAGE):
            decode_chunk(data[:n], chunk.shape, chunk.dtype, cseg(4, 3, 2))


def test_cseg_corruption_never_crashes():
    chunk, data = _valid_cseg()
    rng = np.random.default_rng(7)
    w = np.frombuffer(data, "<u4")
    outcomes = {"ok": 0, "corrupt": 0}
    for _ in range(400):
        m = w.copy()
        i = int(rng.integers(0, len(m)))
        m[i] = rng.choice(
            [rng.integers(0, 2**32), rng.integers(0, 64), m[i] ^ (1 << rng.integers(0, 32))]
        )
        try:
            out = decode_chunk(m.tobytes(), chunk.shape, chunk.dtype, cseg(4, 3, 2))
        except CorruptDataError as e:
            assert CSEG_MESSAGE in str(e)
            outcomes["corrupt"] += 1
        else:
            assert out.shape == chunk.shape
            outcomes["ok"] += 1
    assert outcomes["corrupt"] > 50 and outcomes["ok"] > 50


def _one_block(
    header0: int, header1: int, *rest: int, dtype=np.uint32, shape=(1, 1, 1, 2), block=(2, 1, 1)
):
    return decode_chunk(words(1, header0, header1, *rest), shape, dtype, cseg(*block), key="k")


@pytest.mark.parametrize(
    ("header", "rest"),
    [
        ((3 | 3 << 24, 2), (0, 7, 8)),  # 3 bits is not a valid width
        ((3 | 1 << 24, 2), ()),  # encoded values run past the end
        ((9 | 1 << 24, 2), (0b10, 7, 8)),  # table offset beyond the buffer
        ((3 | 1 << 24, 9), (0b10, 7, 8)),  # value offset beyond the buffer
        ((3 | 1 << 24, 2), (0b10, 7)),  # index 1 but only one table entry
        ((2 | 0 << 24, 2), ()),  # 0 bits and an empty table
    ],
)
def test_cseg_rejects_invalid_headers(header, rest):
    with pytest.raises(CorruptDataError) as e:
        _one_block(*header, *rest)
    assert str(e.value) == f'Error reading "k": {CSEG_MESSAGE}'


@pytest.mark.parametrize(
    "data",
    [b"\x01\x00\x00", words(), words(5, 0, 0), words(1)],
    ids=["not-multiple-of-4", "no-channel-offset", "channel-offset-past-end", "no-block-headers"],
)
def test_cseg_rejects_bad_container(data):
    with pytest.raises(CorruptDataError, match=CSEG_MESSAGE):
        decode_chunk(data, (1, 1, 1, 2), np.uint32, cseg(2, 1, 1))


def test_cseg_accepts_what_tensorstore_accepts():
    # Valid: index 1 and two entries.
    np.testing.assert_array_equal(_one_block(3 | 1 << 24, 2, 0b10, 7, 8), [[[[7, 8]]]])
    # The high byte of the values offset is ignored (TensorStore reads 24 bits).
    np.testing.assert_array_equal(_one_block(3 | 1 << 24, 2 | 0xAB << 24, 0b10, 7, 8), [[[[7, 8]]]])
    # An index outside the table at a padding position (outside the chunk) is never read.
    out = _one_block(3 | 1 << 24, 2, 0b10, 7, shape=(1, 1, 1, 1))
    np.testing.assert_array_equal(out, [[[[7]]]])
    # Channel data may overlap (tables are found relative to each channel's start) and
    # trailing words are allowed.
    data = words(2, 4, 5, 4, 4, 4, 0, 5, 99, 77)
    out = decode_chunk(data, (2, 1, 1, 1), np.uint32, cseg(1, 1, 1))
    np.testing.assert_array_equal(out.ravel(), [5, 99])


# ---------------------------------------------------------------------------------------------
# jpeg (reference §4.2)


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


@pytest.mark.parametrize(("channels", "limit"), [(1, 3), (3, 9)])
@pytest.mark.parametrize("shape", [(4, 16, 32), (3, 5, 7)])
def test_jpeg_round_trip_within_rms_bound(channels, limit, shape):
    chunk = ramp(shape, channels)
    data = encode_chunk(chunk, JPEG)
    assert data[:3] == b"\xff\xd8\xff"
    out = decode_chunk(data, chunk.shape, np.uint8, JPEG)
    assert_fresh_array(out, chunk.shape, np.uint8)
    assert rms(out, chunk) < limit


def test_jpeg_layout_is_baseline_width_x_height_yz_with_420_subsampling():
    chunk = ramp((4, 16, 32), 3)
    segments = _jpeg_segments(encode_chunk(chunk, JPEG))
    assert 0xE0 in segments and segments[0xE0][:5] == b"JFIF\x00"
    sof = segments[0xC0]  # SOF0 = baseline
    height, width, ncomp = struct.unpack(">HHB", sof[1:6])
    assert (width, height, ncomp) == (32, 64, 3)
    assert [sof[7 + 3 * i] for i in range(3)] == [0x22, 0x11, 0x11]
    gray = _jpeg_segments(encode_chunk(ramp((4, 16, 32), 1), JPEG))[0xC0]
    assert gray[5] == 1 and gray[7] == 0x11


def test_jpeg_quality_increases_size():
    rng = np.random.default_rng(0)
    chunk = (ramp((2, 32, 32), 3).astype(int) + rng.integers(0, 40, (3, 2, 32, 32))).clip(0, 255)
    chunk = chunk.astype(np.uint8)
    sizes = [
        len(encode_chunk(chunk, ChunkEncoding("jpeg", jpeg_quality=q))) for q in (0, 50, 75, 100)
    ]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4
    assert encode_chunk(chunk, JPEG) == encode_chunk(chunk, ChunkEncoding("jpeg", jpeg_quality=75))


def test_jpeg_decode_accepts_any_factorization_of_the_voxel_count():
    img = np.arange(24, dtype=np.uint8).reshape(2, 12) * 10
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=100)
    out = decode_chunk(buf.getvalue(), (1, 2, 2, 6), np.uint8, JPEG)
    assert rms(out.ravel(), img.ravel()) < 3


def test_jpeg_dimension_mismatch_message():
    data = encode_chunk(ramp((2, 4, 3), 3), JPEG)
    with pytest.raises(CorruptDataError) as e:
        decode_chunk(data, (1, 2, 4, 3), np.uint8, JPEG, key="1_1_1/0-3_0-4_0-2")
    assert str(e.value) == (
        'Error reading "1_1_1/0-3_0-4_0-2": Image dimensions (3, 8, 3) are not compatible with '
        "expected chunk shape {1, 2, 4, 3}"
    )
    with pytest.raises(CorruptDataError, match=r"Image dimensions \(3, 8, 3\)"):
        decode_chunk(data, (3, 2, 4, 4), np.uint8, JPEG)


def test_jpeg_rejects_non_jpeg_and_truncated_data():
    with pytest.raises(CorruptDataError, match='Error reading "k": Not a JPEG file'):
        decode_chunk(b"hello world", (1, 1, 1, 1), np.uint8, JPEG, key="k")
    with pytest.raises(CorruptDataError, match="Not a JPEG file"):
        decode_chunk(encode_chunk(ramp((1, 2, 2), 1), PNG), (1, 1, 2, 2), np.uint8, JPEG)
    data = encode_chunk(ramp((4, 16, 32), 1), JPEG)
    with pytest.raises(CorruptDataError):
        decode_chunk(data[: len(data) // 2], (1, 4, 16, 32), np.uint8, JPEG)


def test_jpeg_rejects_images_taller_than_65500():
    chunk = np.zeros((1, 300, 300, 2), np.uint8)
    with pytest.raises(
        InvalidArgumentError, match=r"JPEG image dimensions of \(2, 90000\) exceed maximum size"
    ):
        encode_chunk(chunk, JPEG)


# ---------------------------------------------------------------------------------------------
# png (reference §4.3)

_ADAM7 = [
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
]


def make_png(
    pixels: np.ndarray,
    color_type: int,
    interlace: bool = False,
    depth: int | None = None,
    width: int | None = None,
) -> bytes:
    """A minimal unfiltered PNG (optionally Adam7-interlaced) for decoder tests."""
    h, w = pixels.shape[0], width or pixels.shape[1]
    depth = depth or pixels.dtype.itemsize * 8
    px = pixels.astype(">u2") if pixels.dtype.itemsize == 2 else pixels

    def scanlines(sub):
        rows = np.ascontiguousarray(sub).view(np.uint8).reshape(sub.shape[0], -1)
        return np.concatenate([np.zeros((len(rows), 1), np.uint8), rows], axis=1).tobytes()

    if interlace:
        raw = b"".join(
            scanlines(px[y0::dy, x0::dx]) for x0, y0, dx, dy in _ADAM7 if px[y0::dy, x0::dx].size
        )
    else:
        raw = scanlines(px)

    def chunk(kind, payload):
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, int(interlace))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        out.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]))
        pos += 12 + n
    return out


def png_filter_types(data: bytes) -> np.ndarray:
    kinds = png_chunks(data)
    w, h, depth, ctype = struct.unpack(">IIBB", kinds[0][1][:10])
    raw = zlib.decompress(b"".join(p for k, p in kinds if k == b"IDAT"))
    return np.frombuffer(raw, np.uint8).reshape(h, -1)[:, 0]


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("level", [None, 0, 2, 3, 9])
def test_png_round_trip_is_lossless(dtype, channels, level):
    rng = np.random.default_rng(channels)
    enc = ChunkEncoding("png", png_level=level)
    scale = 257 if dtype == "uint16" else 1
    smooth = ramp((3, 6, 10), channels).astype(dtype) * scale
    for chunk in (random_chunk(rng, dtype, (channels, 5, 4, 3)), smooth):
        out = decode_chunk(encode_chunk(chunk, enc), chunk.shape, dtype, enc)
        assert_fresh_array(out, chunk.shape, dtype)
        np.testing.assert_array_equal(out, chunk)


@pytest.mark.parametrize(("channels", "color_type"), [(1, 0), (2, 4), (3, 2), (4, 6)])
@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_png_header_and_chunks(channels, color_type, dtype):
    data = encode_chunk(ramp((3, 4, 5), channels).astype(dtype), PNG)
    kinds = png_chunks(data)
    assert [k for k, _ in kinds] == [b"IHDR", b"IDAT", b"IEND"]
    assert struct.unpack(">IIBBBBB", kinds[0][1]) == (
        5,
        12,
        8 * np.dtype(dtype).itemsize,
        color_type,
        0,
        0,
        0,
    )


def test_png_16_bit_samples_are_big_endian():
    chunk = np.array([[[[0x1234, 0xABCD]]]], np.uint16)
    data = encode_chunk(chunk, ChunkEncoding("png", png_level=0))
    raw = zlib.decompress(b"".join(p for k, p in png_chunks(data) if k == b"IDAT"))
    assert raw == b"\x00\x12\x34\xab\xcd"


def test_png_level_controls_filtering_and_zlib_level():
    chunk = ramp((4, 16, 32), 3)
    for level in (0, 1, 2):
        data = encode_chunk(chunk, ChunkEncoding("png", png_level=level))
        assert not png_filter_types(data).any()
    adaptive = encode_chunk(chunk, PNG)
    assert png_filter_types(adaptive).any()
    assert len(adaptive) < len(encode_chunk(chunk, ChunkEncoding("png", png_level=2)))
    # zlib header: FLEVEL 2 for the default level 6, 3 for level 9, 0 for level 1
    idat = [p for k, p in png_chunks(adaptive) if k == b"IDAT"][0]
    assert idat[:2] == b"\x78\x9c"
    for level, head in ((9, b"\x78\xda"), (1, b"\x78\x01")):
        data = encode_chunk(chunk, ChunkEncoding("png", png_level=level))
        assert [p for k, p in png_chunks(data) if k == b"IDAT"][0][:2] == head


@pytest.mark.parametrize(
    ("mode", "channels", "dtype"),
    [
        ("L", 1, np.uint8),
        ("LA", 2, np.uint8),
        ("RGB", 3, np.uint8),
        ("RGBA", 4, np.uint8),
        ("I;16", 1, np.uint16),
    ],
)
def test_png_decodes_pillow_written_files(mode, channels, dtype):
    chunk = ramp((2, 3, 7), channels).astype(dtype) * (257 if dtype == np.uint16 else 1)
    pixels = chunk.transpose(1, 2, 3, 0).reshape(6, 7, channels)
    img = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels)
    assert img.mode == mode
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    np.testing.assert_array_equal(decode_chunk(buf.getvalue(), chunk.shape, dtype, PNG), chunk)


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
@pytest.mark.parametrize(("channels", "color_type"), [(1, 0), (2, 4), (3, 2), (4, 6)])
def test_png_decodes_interlaced_files(dtype, channels, color_type):
    chunk = random_chunk(np.random.default_rng(1), dtype, (channels, 1, 11, 13))
    data = make_png(
        chunk.transpose(1, 2, 3, 0).reshape(11, 13, channels), color_type, interlace=True
    )
    np.testing.assert_array_equal(decode_chunk(data, chunk.shape, dtype, PNG), chunk)


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_png_decodes_low_bit_depth_gray_scaled_to_8_bits(depth):
    levels = np.arange(16, dtype=np.uint8).reshape(2, 8) % (1 << depth)
    per_byte = 8 // depth
    packed = np.zeros((2, 8 // per_byte), np.uint8)
    for i in range(per_byte):  # pack pixel i of each byte, most significant bits first
        packed |= levels[:, i::per_byte] << (8 - depth * (i + 1))
    data = make_png(packed, 0, depth=depth, width=8)
    expected = levels.astype(np.uint8) * (255 // ((1 << depth) - 1))
    out = decode_chunk(data, (1, 1, 2, 8), np.uint8, PNG)
    np.testing.assert_array_equal(out[0, 0], expected)


def test_png_decodes_palette_images_as_rgb_or_rgba():
    rgb = ramp((1, 4, 6), 3)
    img = Image.fromarray(rgb[:, 0].transpose(1, 2, 0)).quantize(256)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    expected = np.asarray(img.convert("RGB")).transpose(2, 0, 1)[:, None]
    np.testing.assert_array_equal(
        decode_chunk(buf.getvalue(), (3, 1, 4, 6), np.uint8, PNG), expected
    )
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=0)
    out = decode_chunk(buf.getvalue(), (4, 1, 4, 6), np.uint8, PNG)
    np.testing.assert_array_equal(out[:3], expected)
    assert set(np.unique(out[3])) <= {0, 255}


def test_png_rejects_bit_depth_mismatch():
    chunk16 = np.full((1, 1, 2, 2), 300, np.uint16)
    with pytest.raises(
        CorruptDataError, match="bit depth 16 is not compatible with data type uint8"
    ):
        decode_chunk(encode_chunk(chunk16, PNG), chunk16.shape, np.uint8, PNG)
    chunk8 = np.full((1, 1, 2, 2), 3, np.uint8)
    with pytest.raises(
        CorruptDataError, match="bit depth 8 is not compatible with data type uint16"
    ):
        decode_chunk(encode_chunk(chunk8, PNG), chunk8.shape, np.uint16, PNG)


def test_png_dimension_mismatch_message():
    data = encode_chunk(ramp((2, 4, 3), 2), PNG)
    with pytest.raises(CorruptDataError) as e:
        decode_chunk(data, (1, 2, 4, 3), np.uint8, PNG, key="k")
    assert str(e.value) == (
        'Error reading "k": Image dimensions (3, 8, 2) are not compatible with expected chunk shape {1, 2, 4, 3}'
    )


def test_png_rejects_corrupt_data():
    good = encode_chunk(ramp((2, 8, 8), 1), PNG)
    idat = good.index(b"IDAT")
    flipped = bytearray(good)
    flipped[idat + 10] ^= 0xFF  # CRC no longer matches
    bad_zlib = make_png(np.zeros((2, 2), np.uint8), 0)
    bad_zlib = bad_zlib.replace(zlib.compress(b"\x00\x00\x00" * 2), b"\x78\x9c\xff\xff\xff\xff")
    cases = [b"not a png", good[:20], good[: idat + 20], bytes(flipped), b"\x89PNG\r\n\x1a\n"]
    for data in cases:
        with pytest.raises(CorruptDataError, match='Error reading "k": Failed to decode PNG'):
            decode_chunk(data, (1, 2, 8, 8), np.uint8, PNG, key="k")


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

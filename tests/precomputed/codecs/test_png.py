"""The png encoding."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from codec_cases import (
    PNG,
    assert_fresh_array,
    ramp,
    random_chunk,
)
from precomputed.codecs import (
    ChunkEncoding,
    decode_chunk,
    encode_chunk,
)
from precomputed.errors import CorruptDataError

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

"""The jpeg encoding."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from codec_cases import (
    JPEG,
    PNG,
    _jpeg_segments,
    assert_fresh_array,
    ramp,
    rms,
)
from precomputed.codecs import (
    ChunkEncoding,
    decode_chunk,
    encode_chunk,
)
from precomputed.errors import CorruptDataError, InvalidArgumentError

# ---------------------------------------------------------------------------------------------
# jpeg (reference §4.2)


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

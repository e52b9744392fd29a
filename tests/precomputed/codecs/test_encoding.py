"""``ChunkEncoding`` and the dispatch of ``codecs``: members, the encoding table at encode time."""

from __future__ import annotations

import numpy as np
import pytest

from codec_cases import (
    JPEG,
    PNG,
    RAW,
    cseg,
)
from precomputed.codecs import (
    ChunkEncoding,
    decode_chunk,
    encode_chunk,
)
from precomputed.errors import InvalidArgumentError

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

"""The raw encoding."""

from __future__ import annotations

import numpy as np
import pytest

from codec_cases import (
    ALL_DTYPES,
    RAW,
    assert_fresh_array,
    random_chunk,
)
from precomputed.codecs import (
    decode_chunk,
    encode_chunk,
)
from precomputed.errors import CorruptDataError

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

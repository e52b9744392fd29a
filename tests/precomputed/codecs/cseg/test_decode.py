"""compressed_segmentation: the reference vectors, round trips, validation of corrupt data."""

from __future__ import annotations

import numpy as np
import pytest

from codec_cases import (
    CSEG_MESSAGE,
    assert_fresh_array,
    cseg,
    random_chunk,
    words,
)
from precomputed.codecs import (
    decode_chunk,
    encode_chunk,
)
from precomputed.codecs.cseg import decode as _decode
from precomputed.codecs.cseg import encode as _codecs
from precomputed.errors import CorruptDataError, InvalidArgumentError

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
        channel = _decode.CsegChannel(np.asarray(lib, np.uint32), shape, block, dtype)
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

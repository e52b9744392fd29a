"""The vectorised compressed_segmentation encoder (``_cseg_encode_channel_fast``) must write
exactly the bytes the C++ library writes (which match TensorStore's, see test_codecs.py)."""

from __future__ import annotations

import sys
import zlib
from concurrent.futures import ThreadPoolExecutor

import compressed_segmentation as cseg_lib
import numpy as np
import pytest

from precomputed.codecs import ChunkEncoding, decode_chunk, encode_chunk
from precomputed.codecs.cseg import encode as _codecs
from precomputed.errors import InvalidArgumentError


def library_words(chan: np.ndarray, block_xyz) -> np.ndarray:
    """The library's encoding of a (z, y, x) channel, without its channel-offset word."""
    data = cseg_lib.compress(chan.T, block_size=tuple(block_xyz), order="F")
    return np.frombuffer(data, "<u4")[1:]


def library_decode(words: np.ndarray, shape_zyx, dtype, block_xyz) -> np.ndarray:
    data = b"\x01\x00\x00\x00" + np.asarray(words, "<u4").tobytes()
    z, y, x = shape_zyx
    return cseg_lib.decompress(data, (x, y, z), dtype, block_size=tuple(block_xyz), order="F").T


def fast(chan: np.ndarray, block_xyz) -> np.ndarray:
    """The fast encoder's output; fails if it declined the chunk."""
    words = _codecs._cseg_encode_channel_fast(chan, tuple(block_xyz))
    assert words is not None, "fast path declined the chunk"
    assert words.dtype == np.uint32
    return words


def assert_same_as_library(chan: np.ndarray, block_xyz, *, require_fast: bool = True) -> None:
    expected = library_words(chan, block_xyz)
    words = _codecs._cseg_encode_channel_fast(chan, tuple(block_xyz))
    if require_fast:
        assert words is not None, "fast path declined the chunk"
    if words is not None:
        np.testing.assert_array_equal(words, expected)
    # Whatever path the dispatcher picks, the result is the same.
    np.testing.assert_array_equal(_codecs._cseg_encode_channel(chan, tuple(block_xyz)), expected)


def pool_values(rng, dtype, n: int, kind: str = "spread") -> np.ndarray:
    """``n`` distinct labels.  "spread": anywhere in the dtype's range (including 0, the
    maximum and, for uint64, values above 2**63); "lowbyte": all different in their lowest
    byte (n <= 256); "clash": every byte 0 or 1, so any 3 of them share a byte in each
    position (n <= 2**itemsize)."""
    dtype = np.dtype(dtype)
    top = int(np.iinfo(dtype).max)
    if kind == "clash":
        size = dtype.itemsize
        picks = rng.choice(2**size, n, replace=False)
        vals = [sum(((int(p) >> j) & 1) << (8 * j) for j in range(size)) for p in picks]
        return np.array(vals, np.uint64).astype(dtype)
    if kind == "lowbyte":
        high = rng.integers(0, top >> 8, n, dtype=np.uint64, endpoint=True)
        low = rng.choice(256, n, replace=False).astype(np.uint64)
        return ((high << np.uint64(8)) | low).astype(dtype)
    vals = {0, top}
    if dtype.itemsize == 8:
        vals |= {2**63, 2**63 + 1, 2**64 - 2}
    while len(vals) < n:
        vals |= {int(v) for v in rng.integers(0, top, n, dtype=np.uint64, endpoint=True)}
    out = np.array(sorted(vals), np.uint64)
    return rng.permutation(out)[:n].astype(dtype)


def blocky_chunk(
    rng, dtype, shape_zyx, block_xyz, per_block: int, pool: np.ndarray, uniform: float = 0.0
):
    """A (z, y, x) chunk whose full blocks hold exactly ``per_block`` distinct values each
    (drawn from ``pool``), except a fraction ``uniform`` of them that hold one value; the chunk
    is cut from a block-aligned volume, so edge blocks may hold fewer."""
    bz, by, bx = reversed(block_xyz)
    grid = [-(-s // b) for s, b in zip(shape_zyx, (bz, by, bx), strict=True)]
    nb, bvol = int(np.prod(grid)), bz * by * bx
    assert per_block <= min(bvol, len(pool))
    sets = rng.random((nb, len(pool))).argsort(axis=1)[:, :per_block]
    local = rng.permuted(np.tile(np.arange(bvol) % per_block, (nb, 1)), axis=1)
    local[rng.random(nb) < uniform] = 0
    labels = pool[np.take_along_axis(sets, local, axis=1)]
    gz, gy, gx = grid
    vol = labels.reshape(gz, gy, gx, bz, by, bx).transpose(0, 3, 1, 4, 2, 5)
    vol = vol.reshape(gz * bz, gy * by, gx * bx)
    z, y, x = shape_zyx
    return np.ascontiguousarray(vol[:z, :y, :x])


BLOCKS = [(8, 8, 8), (4, 4, 4), (8, 4, 2), (16, 16, 16), (2, 2, 2), (3, 5, 7), (16, 8, 40)]
SHAPES = [(64, 64, 64), (17, 65, 63), (1, 8, 8), (1, 1, 1), (30, 2, 9)]  # z, y, x


@pytest.mark.parametrize("dtype", ["uint32", "uint64"])
@pytest.mark.parametrize("block", BLOCKS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_library_few_values_per_block(dtype, block, shape):
    rng = np.random.default_rng(zlib.crc32(repr((dtype, block, shape)).encode()))
    pool = pool_values(rng, dtype, 12)
    bvol = int(np.prod(block))
    grid = [-(-s // b) for s, b in zip(shape, reversed(block), strict=True)]
    # The fast path declines tiny and large blocks and chunks that padding would blow up.
    suited = (
        _codecs._CSEG_FAST_MIN_BLOCK_VOLUME <= bvol <= _codecs._CSEG_FAST_MAX_BLOCK_VOLUME
        and int(np.prod(grid)) * bvol <= 8 * int(np.prod(shape)) + (1 << 15)
    )
    for per_block in (1, 2, 3, 5):
        chan = blocky_chunk(rng, dtype, shape, block, min(per_block, bvol), pool)
        assert_same_as_library(chan, block, require_fast=suited)


@pytest.mark.parametrize("dtype", ["uint32", "uint64"])
@pytest.mark.parametrize("per_block", [17, 200, 256])
@pytest.mark.parametrize("shape", [(64, 64, 64), (17, 65, 63)], ids=str)
def test_matches_library_many_values_per_block(dtype, per_block, shape):
    # Labels distinct in their lowest byte: the table look-up serves every block.
    rng = np.random.default_rng(per_block)
    pool = pool_values(rng, dtype, 256, "lowbyte")
    chan = blocky_chunk(rng, dtype, shape, (8, 8, 8), per_block, pool)
    assert_same_as_library(chan, (8, 8, 8))
    words = fast(chan, (8, 8, 8))
    assert words[0] >> 24 == (8 if per_block > 16 else 4)


@pytest.mark.parametrize("dtype", ["uint32", "uint64"])
@pytest.mark.parametrize("per_block", [17, 200, 512])
def test_random_labels_in_every_byte_match_library(dtype, per_block):
    # Labels that clash in every byte: many blocks need comparisons, so the fast path may
    # decline (512 values is beyond its 8-bit indices); the output is the library's anyway.
    rng = np.random.default_rng(per_block + 7)
    pool = pool_values(rng, dtype, 600)
    chan = blocky_chunk(rng, dtype, (32, 32, 32), (8, 8, 8), per_block, pool)
    assert_same_as_library(chan, (8, 8, 8), require_fast=False)
    if per_block > 256:
        assert _codecs._cseg_encode_channel_fast(chan, (8, 8, 8)) is None


@pytest.mark.parametrize("dtype", ["uint32", "uint64"])
@pytest.mark.parametrize("shape", [(64, 64, 64), (13, 21, 40)], ids=str)
@pytest.mark.parametrize("block", [(8, 8, 8), (3, 5, 7)], ids=str)
def test_blocks_whose_values_clash_in_every_byte_use_comparisons(monkeypatch, dtype, shape, block):
    calls = []
    compare = _codecs._cseg_rank_by_comparison

    def spy(vals, table, counts):
        calls.append(len(vals))
        return compare(vals, table, counts)

    monkeypatch.setattr(_codecs, "_cseg_rank_by_comparison", spy)
    rng = np.random.default_rng(3)
    pool = pool_values(rng, dtype, 16, "clash")
    for per_block, uniform in ((3, 0.0), (5, 0.6)):  # within the fast path's budget
        chan = blocky_chunk(rng, dtype, shape, block, per_block, pool, uniform)
        np.testing.assert_array_equal(fast(chan, block), library_words(chan, block))
    assert calls and min(calls) > 0


def alike_pools(rng, dtype):
    """Labels alike in their lowest byte, and labels alike in all bytes but the lowest."""
    size = np.dtype(dtype).itemsize
    top = (1 << (8 * size - 16)) - 1
    base = rng.integers(0, top, 64, dtype=np.uint64, endpoint=True) << np.uint64(16)
    low_alike = (base | np.arange(64, dtype=np.uint64) << np.uint64(8)).astype(dtype)
    others_alike = (base[:1] | np.arange(64, dtype=np.uint64)).astype(dtype)
    return low_alike, others_alike


@pytest.mark.parametrize("dtype", ["uint32", "uint64"])
def test_byte_for_table_lookups_adapts_to_the_labels(monkeypatch, dtype):
    # The encoder looks values up by one byte, the one that served the thread's last chunk
    # (at first the lowest-order one); when labels are alike in it, it picks another rather
    # than compare values.
    calls = []
    monkeypatch.setattr(_codecs, "_cseg_rank_by_comparison", lambda *a: calls.append(a))
    rng = np.random.default_rng(21)
    size = np.dtype(dtype).itemsize
    lowest, second = (0, 1) if sys.byteorder == "little" else (size - 1, size - 2)
    low_alike, others_alike = alike_pools(rng, dtype)

    def run():
        lanes = []
        for pool in (low_alike, low_alike, others_alike):
            chan = blocky_chunk(rng, dtype, (64, 64, 64), (8, 8, 8), 6, pool)
            np.testing.assert_array_equal(fast(chan, (8, 8, 8)), library_words(chan, (8, 8, 8)))
            lanes.append(_codecs._cseg_scratch_local.__dict__.get("lane"))
        return lanes

    with ThreadPoolExecutor(1) as ex:  # a fresh thread: no byte remembered
        assert ex.submit(run).result() == [second, second, lowest]
    assert not calls


@pytest.mark.parametrize("dtype", ["uint32", "uint64"])
def test_segmentation_like_data(dtype):
    # Smooth labels (a few per block, shared by neighbouring blocks) with a fixed seed.
    rng = np.random.default_rng(2024)
    coarse = pool_values(rng, dtype, 300)[rng.integers(0, 300, (9, 9, 9))]
    chan = np.repeat(np.repeat(np.repeat(coarse, 7, 0), 7, 1), 7, 2)[:64, :61, :59]
    chan = np.ascontiguousarray(chan)
    for block in [(8, 8, 8), (4, 4, 4), (16, 8, 4)]:
        assert_same_as_library(chan, block)


@pytest.mark.parametrize("dtype", ["uint32", "uint64"])
@pytest.mark.parametrize("uniform", [0.3, 0.7, 0.98, 1.0])
@pytest.mark.parametrize("shape", [(64, 64, 64), (17, 65, 63)], ids=str)
def test_chunks_with_many_single_valued_blocks(dtype, uniform, shape):
    # Past half the blocks single-valued, only the others get indices looked up.
    rng = np.random.default_rng(int(uniform * 100))
    pool = pool_values(rng, dtype, 30)
    for per_block in (2, 3, 6):
        chan = blocky_chunk(rng, dtype, shape, (8, 8, 8), per_block, pool, uniform)
        assert_same_as_library(chan, (8, 8, 8))
    pool = pool_values(rng, dtype, 16, "clash")  # with comparisons
    chan = blocky_chunk(rng, dtype, shape, (8, 8, 8), 3, pool, uniform)
    assert_same_as_library(chan, (8, 8, 8))


def test_declines_too_many_values_or_comparisons():
    rng = np.random.default_rng(6)
    chan = np.zeros((64, 64, 64), np.uint64)
    chan[:8, :8, 8:16] = rng.permutation(2**40 + np.arange(512, dtype=np.uint64)).reshape(8, 8, 8)
    assert _codecs._cseg_encode_channel_fast(chan, (8, 8, 8)) is None  # 512 values
    np.testing.assert_array_equal(
        _codecs._cseg_encode_channel(chan, (8, 8, 8)), library_words(chan, (8, 8, 8))
    )
    # 40 values alike in every byte in each of many blocks: too many comparisons.
    pool = pool_values(rng, "uint64", 256, "clash")
    chan = blocky_chunk(rng, "uint64", (64, 64, 64), (8, 8, 8), 40, pool)
    chan.reshape(8, 8, 8, 8, 8, 8)[..., ::2, :] = 7  # half the blocks single-valued
    assert _codecs._cseg_encode_channel_fast(chan, (8, 8, 8)) is None
    np.testing.assert_array_equal(
        _codecs._cseg_encode_channel(chan, (8, 8, 8)), library_words(chan, (8, 8, 8))
    )


def test_random_data_with_fixed_seed():
    rng = np.random.default_rng(12345)
    for _ in range(40):
        dtype = np.dtype(rng.choice(["uint32", "uint64"]))
        shape = tuple(int(s) for s in rng.integers(1, 40, 3))
        block = tuple(int(b) for b in rng.integers(2, 10, 3))
        pool = pool_values(rng, dtype, int(rng.choice([1, 2, 3, 5, 17, 300])))
        chan = pool[rng.integers(0, len(pool), shape)]
        assert_same_as_library(chan, block, require_fast=False)


def test_identical_tables_are_written_once():
    rng = np.random.default_rng(5)
    pool = pool_values(rng, "uint64", 3)
    chan = blocky_chunk(rng, "uint64", (64, 64, 64), (8, 8, 8), 2, pool)
    words = fast(chan, (8, 8, 8))
    np.testing.assert_array_equal(words, library_words(chan, (8, 8, 8)))
    table_offsets = words[0 : 2 * 512 : 2] & 0xFFFFFF
    assert len(np.unique(table_offsets)) == 3  # 3 possible 2-value tables
    # The first block using a table owns it: its table follows its encoded values.
    first = np.unique(table_offsets, return_index=True)[1]
    encoded_end = words[1 : 2 * 512 : 2][first] + 512 // 32
    np.testing.assert_array_equal(table_offsets[first], encoded_end)


def test_hash_collisions_fall_back_to_exact_table_comparison(monkeypatch):
    # With a degenerate hash every table collides; reuse must still be exact.
    monkeypatch.setattr(_codecs, "_CSEG_TABLE_MIX", np.zeros_like(_codecs._CSEG_TABLE_MIX))
    rng = np.random.default_rng(11)
    pool = pool_values(rng, "uint64", 6)
    for per_block in (1, 2, 3):
        chan = blocky_chunk(rng, "uint64", (40, 40, 40), (8, 8, 8), per_block, pool)
        np.testing.assert_array_equal(fast(chan, (8, 8, 8)), library_words(chan, (8, 8, 8)))


@pytest.mark.parametrize("dtype", ["uint32", "uint64"])
@pytest.mark.parametrize("value", [0, 1, "max"])
def test_uniform_chunks(dtype, value):
    value = np.iinfo(dtype).max if value == "max" else value
    chan = np.full((64, 64, 64), value, dtype)
    words = fast(chan, (8, 8, 8))
    np.testing.assert_array_equal(words, library_words(chan, (8, 8, 8)))
    wpv = np.dtype(dtype).itemsize // 4
    assert len(words) == 2 * 512 + wpv  # headers and one shared table


@pytest.mark.parametrize("dtype", ["uint32", "uint64"])
@pytest.mark.parametrize("shape", [(64, 64, 64), (17, 65, 63), (1, 8, 8), (5, 1, 3)], ids=str)
def test_library_decodes_our_output(dtype, shape):
    rng = np.random.default_rng(8)
    pool = pool_values(rng, dtype, 40)
    for per_block in (1, 4, 9):
        chan = blocky_chunk(rng, dtype, shape, (4, 4, 4), per_block, pool)
        words = fast(chan, (4, 4, 4))
        np.testing.assert_array_equal(library_decode(words, shape, dtype, (4, 4, 4)), chan)


def test_dispatcher_uses_fast_path_for_ordinary_chunks(monkeypatch):
    def no_library(*args, **kwargs):
        raise AssertionError("library called")

    monkeypatch.setattr(_codecs._cseg_lib, "compress", no_library)
    rng = np.random.default_rng(1)
    pool = pool_values(rng, "uint64", 50)
    chunk = blocky_chunk(rng, "uint64", (64, 64, 64), (8, 8, 8), 4, pool)[None]
    enc = ChunkEncoding("compressed_segmentation", block_size=(8, 8, 8))
    data = encode_chunk(chunk, enc)
    np.testing.assert_array_equal(decode_chunk(data, chunk.shape, chunk.dtype, enc), chunk)
    assert encode_chunk(chunk.astype(">u8"), enc) == data


def test_small_chunks_and_tiny_blocks_use_the_library():
    chan = np.arange(4 * 4 * 4, dtype=np.uint32).reshape(4, 4, 4) % 3
    assert chan.size < _codecs._CSEG_FAST_MIN_VOXELS
    np.testing.assert_array_equal(
        _codecs._cseg_encode_channel(chan, (2, 2, 2)), library_words(chan, (2, 2, 2))
    )
    big = np.zeros((64, 64, 64), np.uint32)
    assert _codecs._cseg_encode_channel_fast(big, (1, 1, 1)) is None
    assert _codecs._cseg_encode_channel_fast(big, (32, 32, 32)) is None
    assert _codecs._cseg_encode_channel_fast(big.astype(">u4"), (8, 8, 8)) is None


def test_concurrent_encoding_matches_library():
    # Scratch buffers are per thread: concurrent calls must not disturb each other.
    rng = np.random.default_rng(4)
    pool = pool_values(rng, "uint64", 80)
    chans = [
        blocky_chunk(rng, "uint64", shape, (8, 8, 8), k, pool)
        for shape, k in [((64, 64, 64), 3), ((33, 64, 50), 6), ((64, 20, 64), 1), ((8, 8, 8), 9)]
    ] * 4
    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda c: fast(c, (8, 8, 8)), chans))
    for chan, words in zip(chans, results, strict=True):
        np.testing.assert_array_equal(words, library_words(chan, (8, 8, 8)))


def test_offsets_beyond_24_bits_are_refused(monkeypatch):
    monkeypatch.setattr(_codecs, "_CSEG_MAX_OFFSET", 1000)
    rng = np.random.default_rng(2)
    chan = blocky_chunk(rng, "uint64", (64, 64, 64), (8, 8, 8), 2, pool_values(rng, "uint64", 9))
    with pytest.raises(InvalidArgumentError, match="too large to encode"):
        _codecs._cseg_encode_channel_fast(chan, (8, 8, 8))
    with pytest.raises(InvalidArgumentError, match="too large to encode"):
        encode_chunk(chan[None], ChunkEncoding("compressed_segmentation", block_size=(8, 8, 8)))

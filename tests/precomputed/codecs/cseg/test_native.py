"""compressed_segmentation decoding through the library's C++ function without the GIL
(``_cseg_native``), in place into strided destinations, and its fallbacks."""

from __future__ import annotations

import threading

import compressed_segmentation as cseg_lib
import numpy as np
import pytest

import precomputed
from precomputed import Context, codecs
from precomputed.codecs import ChunkEncoding, decode_chunk, decode_chunk_into, encode_chunk
from precomputed.codecs.cseg import native as _cseg_native
from precomputed.errors import CorruptDataError
from precomputed.kvstore import MemoryKvStore
from volumes import sharding_json, volume_spec

pytestmark = pytest.mark.skipif(
    not _cseg_native.AVAILABLE,
    reason="this compressed_segmentation build does not export DecompressChannel",
)


def labels(shape: tuple[int, ...], distinct: int, dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, np.iinfo(dtype).max, distinct, dtype=dtype, endpoint=True)
    return values[rng.integers(0, distinct, shape)]


def library_decode(data: bytes, shape: tuple[int, int, int, int], dtype: str, block) -> np.ndarray:
    """The package's own Python API, channel by channel: the reference."""
    c, z, y, x = shape
    arr = cseg_lib.decompress(data, (x, y, z, c), np.dtype(dtype), block_size=block, order="F")
    return np.ascontiguousarray(arr.reshape(x, y, z, c).transpose(3, 2, 1, 0))


CASES = [
    ((1, 16, 16, 16), (8, 8, 8)),
    ((2, 13, 11, 9), (4, 4, 4)),  # edge chunk: partial blocks everywhere
    ((1, 7, 5, 6), (3, 2, 4)),  # block x, y, z differ
    ((3, 4, 4, 4), (1, 1, 1)),
    ((1, 64, 64, 64), (8, 8, 8)),
]


@pytest.mark.parametrize("dtype", ["uint32", "uint64"])
@pytest.mark.parametrize("shape, block", CASES)
@pytest.mark.parametrize("distinct", [1, 2, 5, 17, 300])
def test_native_decode_equals_the_library_and_the_source(
    dtype: str, shape: tuple[int, int, int, int], block: tuple[int, int, int], distinct: int
) -> None:
    chunk = labels(shape, distinct, dtype)
    enc = ChunkEncoding("compressed_segmentation", block_size=block)
    data = encode_chunk(chunk, enc)
    got = decode_chunk(data, shape, np.dtype(dtype), enc)
    np.testing.assert_array_equal(got, chunk)
    np.testing.assert_array_equal(got, library_decode(data, shape, dtype, block))
    assert got.flags.c_contiguous and got.flags.writeable


@pytest.mark.parametrize("dtype", ["uint32", "uint64"])
@pytest.mark.parametrize("shape, block", CASES[:4])
def test_decode_into_a_view_of_a_larger_array_touches_only_the_view(
    dtype: str, shape: tuple[int, int, int, int], block: tuple[int, int, int]
) -> None:
    chunk = labels(shape, 9, dtype, seed=3)
    enc = ChunkEncoding("compressed_segmentation", block_size=block)
    data = encode_chunk(chunk, enc)
    c, z, y, x = shape
    sentinel = np.iinfo(dtype).max
    big = np.full((c + 1, z + 3, y + 2, x + 5), sentinel, dtype)
    view = big[1:, 2 : 2 + z, 1 : 1 + y, 3 : 3 + x]
    decode_chunk_into(data, view, enc)
    np.testing.assert_array_equal(view, chunk)
    outside = np.ones(big.shape, bool)
    outside[1:, 2 : 2 + z, 1 : 1 + y, 3 : 3 + x] = False
    assert (big[outside] == sentinel).all()


def test_decode_into_a_transposed_view() -> None:
    """Any non-negative strides: here x is the slowest axis of the destination."""
    chunk = labels((1, 10, 12, 14), 6, "uint64", seed=4)
    enc = ChunkEncoding("compressed_segmentation", block_size=(4, 4, 4))
    data = encode_chunk(chunk, enc)
    xyz = np.zeros((1, 14, 12, 10), np.uint64)
    decode_chunk_into(data, xyz.transpose(0, 3, 2, 1), enc)
    np.testing.assert_array_equal(xyz.transpose(0, 3, 2, 1), chunk)


def test_unaligned_input_is_copied_not_misread() -> None:
    chunk = labels((1, 8, 8, 8), 7, "uint64", seed=6)
    enc = ChunkEncoding("compressed_segmentation", block_size=(4, 4, 4))
    data = encode_chunk(chunk, enc)
    shifted = memoryview(b"\x00" + data)[1:]  # one byte past a word boundary
    np.testing.assert_array_equal(decode_chunk(shifted, chunk.shape, np.uint64, enc), chunk)


def test_corrupt_input_is_rejected_before_the_native_decoder_runs() -> None:
    chunk = labels((1, 8, 8, 8), 7, "uint32", seed=7)
    enc = ChunkEncoding("compressed_segmentation", block_size=(4, 4, 4))
    data = bytearray(encode_chunk(chunk, enc))
    data[4 + 4 * 1 + 2] = 0xFF  # first block's encoded-values offset far past the end
    out = np.zeros(chunk.shape, np.uint32)
    with pytest.raises(CorruptDataError, match='Error reading "some/key"'):
        decode_chunk_into(bytes(data), out, enc, key="some/key")
    with pytest.raises(CorruptDataError):
        decode_chunk(bytes(data), chunk.shape, np.uint32, enc)


def test_rejects_destinations_it_cannot_address() -> None:
    out = np.zeros((4, 4, 4), ">u8")
    with pytest.raises(ValueError, match="native-order"):
        _cseg_native.decode_channel_into(np.zeros(200, np.uint32), (4, 4, 4), out)


def test_without_the_native_symbol_the_python_api_decodes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cseg_native, "AVAILABLE", False)
    for shape in [(1, 13, 11, 9), (2, 13, 11, 9)]:
        chunk = labels(shape, 12, "uint64", seed=8)
        enc = ChunkEncoding("compressed_segmentation", block_size=(4, 4, 4))
        data = encode_chunk(chunk, enc)
        np.testing.assert_array_equal(decode_chunk(data, shape, np.uint64, enc), chunk)
        out = np.zeros(shape, np.uint64)
        decode_chunk_into(data, out, enc)
        np.testing.assert_array_equal(out, chunk)


def test_decoding_runs_in_parallel_threads_with_identical_results() -> None:
    chunks = [labels((1, 32, 32, 32), 40, "uint64", seed=s) for s in range(8)]
    enc = ChunkEncoding("compressed_segmentation", block_size=(8, 8, 8))
    blobs = [encode_chunk(c, enc) for c in chunks]
    results: dict[int, list[np.ndarray]] = {}

    def work(t: int) -> None:
        results[t] = [decode_chunk(b, (1, 32, 32, 32), np.uint64, enc) for b in blobs * 5]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for got in results.values():
        for i, arr in enumerate(got):
            np.testing.assert_array_equal(arr, chunks[i % 8])


@pytest.mark.parametrize("sharded", [False, True])
def test_volume_reads_decode_whole_chunks_in_place(
    sharded: bool, memory_store: MemoryKvStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read covering whole chunks decodes them into the output (decode_chunk_into, not
    decode_chunk); chunks cut by the box, or kept by the cache, are decoded whole."""
    data = labels((1, 40, 48, 56), 30, "uint64", seed=9)
    sharding = sharding_json(0, 1, 1, data="gzip", index="gzip") if sharded else None
    spec = volume_spec(
        memory_store.spec(), "uint64", type="segmentation",
        size=[56, 48, 40], encoding="compressed_segmentation",
        compressed_segmentation_block_size=[8, 8, 8], chunk_size=[16, 16, 16],
        **({"sharding": sharding} if sharding else {}),
    )  # fmt: skip
    vol = precomputed.open(spec, create=True, context=Context(cache_bytes=0))
    vol[...] = data.transpose(3, 2, 1, 0)
    calls = {"into": 0, "whole": 0}
    real_into, real_whole = codecs.decode_chunk_into, codecs.decode_chunk

    def count_into(*a, **k):
        calls["into"] += 1
        return real_into(*a, **k)

    def count_whole(*a, **k):
        calls["whole"] += 1
        return real_whole(*a, **k)

    import precomputed.readpath as readpath_module
    import precomputed.scale as scale_module

    monkeypatch.setattr(readpath_module, "decode_chunk_into", count_into)
    monkeypatch.setattr(scale_module, "decode_chunk", count_whole)
    fresh = precomputed.open(spec, context=Context(cache_bytes=0))
    np.testing.assert_array_equal(fresh.read(), data.transpose(3, 2, 1, 0))
    assert calls == {"into": 4 * 3 * 3, "whole": 0}
    calls.update(into=0, whole=0)
    # x 8:40 covers chunk x 16:32 whole, cuts two others; y 0:48 and z 0:40 as stored.
    np.testing.assert_array_equal(
        fresh[8:40, :, :, :].read(), data.transpose(3, 2, 1, 0)[8:40]
    )
    assert calls == {"into": 1 * 3 * 3, "whole": 2 * 3 * 3}
    calls.update(into=0, whole=0)
    # With a cache that keeps chunks, they are decoded whole (and cached) instead.
    cached = precomputed.open(spec, context=Context(cache_bytes=64 << 20))
    np.testing.assert_array_equal(cached.read(), data.transpose(3, 2, 1, 0))
    assert calls == {"into": 0, "whole": 36}

"""compressed_segmentation encoding through the library's C++ ``CompressChannel`` without
the GIL (``native.encode_channel``): the same words as the package's Python API and the
numpy encoders, strided input read in place, the 24-bit limit, threads, fallbacks."""

from __future__ import annotations

import threading

import compressed_segmentation as cseg_lib
import numpy as np
import pytest
import tensorstore as ts

from precomputed.codecs import ChunkEncoding, decode_chunk, encode_chunk
from precomputed.codecs.cseg import encode as _encode
from precomputed.codecs.cseg import native as _native
from precomputed.errors import InvalidArgumentError

pytestmark = pytest.mark.skipif(
    not _native.ENCODER_AVAILABLE,
    reason="this compressed_segmentation build does not export CompressChannel",
)


def labels(shape: tuple[int, ...], distinct: int, dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, np.iinfo(dtype).max, distinct, dtype=dtype, endpoint=True)
    return values[rng.integers(0, distinct, shape)]


def library_words(chan: np.ndarray, block_xyz: tuple[int, int, int]) -> np.ndarray:
    """The package's Python API (holds the GIL): the reference."""
    data = cseg_lib.compress(np.ascontiguousarray(chan).T, block_size=block_xyz, order="F")
    return np.frombuffer(data, "<u4")[1:]


@pytest.mark.parametrize("dtype", ["uint32", "uint64"])
@pytest.mark.parametrize(
    "shape, block",
    [((64, 64, 64), (8, 8, 8)), ((13, 11, 9), (4, 4, 4)), ((7, 5, 6), (3, 2, 4)), ((4, 4, 4), (1, 1, 1))],
)
@pytest.mark.parametrize("distinct", [1, 2, 5, 300])
def test_native_encoding_equals_the_library_and_the_numpy_encoder(
    dtype: str, shape: tuple[int, int, int], block: tuple[int, int, int], distinct: int
) -> None:
    chan = labels(shape, distinct, dtype, seed=distinct)
    want = library_words(chan, block)
    np.testing.assert_array_equal(_native.encode_channel(chan, block), want)
    np.testing.assert_array_equal(_encode._cseg_encode_channel_numpy(chan, block), want)


@pytest.mark.parametrize("dtype", ["uint32", "uint64"])
def test_strided_views_are_encoded_in_place(dtype: str) -> None:
    vol = labels((2, 40, 70, 66), 6, dtype, seed=3)
    for view in (vol[1], vol[0, 3:35, ::2, 5:], vol[1].transpose(2, 1, 0), vol[0, ::3, ::5, ::7]):
        assert not (view.flags.c_contiguous and view.base is None)
        np.testing.assert_array_equal(
            _native.encode_channel(view, (8, 8, 8)), library_words(view, (8, 8, 8))
        )
    # encode_chunk takes a non-contiguous czyx view (no copy) and writes the same bytes
    enc = ChunkEncoding("compressed_segmentation", block_size=(8, 8, 8))
    view = vol[:, 3:35, ::2, 5:]
    assert encode_chunk(view, enc) == encode_chunk(np.ascontiguousarray(view), enc)
    np.testing.assert_array_equal(decode_chunk(encode_chunk(view, enc), view.shape, dtype, enc), view)


def test_the_native_path_is_what_encode_chunk_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []
    real = _native.encode_channel

    def spy(chan: np.ndarray, block: tuple[int, int, int]) -> np.ndarray:
        calls.append(chan.shape)
        return real(chan, block)

    def no_other(*args: object, **kwargs: object) -> None:
        raise AssertionError("another encoder was used")

    monkeypatch.setattr(_native, "encode_channel", spy)
    monkeypatch.setattr(_encode, "_cseg_encode_channel_fast", no_other)
    monkeypatch.setattr(_encode._cseg_lib, "compress", no_other)
    chunk = labels((2, 64, 64, 64), 9, "uint64")
    enc = ChunkEncoding("compressed_segmentation", block_size=(8, 8, 8))
    data = encode_chunk(chunk, enc)
    assert calls == [(64, 64, 64), (64, 64, 64)]
    np.testing.assert_array_equal(decode_chunk(data, chunk.shape, np.uint64, enc), chunk)


def test_without_the_native_encoder_the_numpy_path_writes_the_same_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    enc = ChunkEncoding("compressed_segmentation", block_size=(8, 8, 8))
    chunks = [labels((1, 64, 64, 64), 5, "uint64", seed=1), labels((1, 17, 9, 30), 40, "uint32")]
    native = [encode_chunk(c, enc) for c in chunks]
    monkeypatch.setattr(_native, "ENCODER_AVAILABLE", False)
    assert [encode_chunk(c, enc) for c in chunks] == native


def test_block_volumes_beyond_2_16_never_reach_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_native(*args: object) -> None:
        raise AssertionError("the library's 32-bit index arithmetic is wrong here")

    monkeypatch.setattr(_native, "encode_channel", no_native)
    chan = labels((1, 300, 300), 70000, "uint64")  # one block of 90000 voxels
    words = _encode._cseg_encode_channel(chan, (300, 300, 1))
    assert words.dtype == np.uint32
    np.testing.assert_array_equal(_encode._cseg_encode_channel_numpy(chan, (300, 300, 1)), words)


def test_offsets_beyond_24_bits_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_encode, "_CSEG_MAX_OFFSET", 1000)
    chan = labels((64, 64, 64), 4, "uint64")
    with pytest.raises(InvalidArgumentError, match="too large to encode"):
        encode_chunk(chan[None], ChunkEncoding("compressed_segmentation", block_size=(8, 8, 8)))


def test_the_library_error_is_an_encoding_overflow() -> None:
    # 2 x 2^22 blocks of 1 voxel need more than 2^24 header words.
    chan = np.zeros((1, 1 << 11, 1 << 12), np.uint32)
    with pytest.raises(InvalidArgumentError, match="too large to encode"):
        encode_chunk(chan[None], ChunkEncoding("compressed_segmentation", block_size=(1, 1, 1)))


def test_threads_encode_at_once_with_identical_results() -> None:
    chans = [labels((64, 64, 64), k, "uint64", seed=k) for k in (1, 3, 6, 40)] * 3
    want = [library_words(c, (8, 8, 8)) for c in chans]
    results: dict[int, list[np.ndarray]] = {}

    def work(t: int) -> None:
        results[t] = [_native.encode_channel(c, (8, 8, 8)) for c in chans]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for got in results.values():
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)


def test_tensorstore_reads_what_the_native_encoder_writes(tmp_path: object) -> None:
    import precomputed
    from precomputed import Context

    data = labels((70, 64, 33, 1), 7, "uint64", seed=5)
    spec = {
        "driver": "neuroglancer_precomputed",
        "kvstore": f"file://{tmp_path}/",
        "multiscale_metadata": {"type": "segmentation", "data_type": "uint64", "num_channels": 1},
        "scale_metadata": {
            "size": [70, 64, 33], "chunk_size": [32, 32, 16], "resolution": [1, 1, 1],
            "encoding": "compressed_segmentation", "compressed_segmentation_block_size": [8, 8, 8],
        },
    }  # fmt: skip
    vol = precomputed.open(spec, create=True, context=Context())
    vol[...] = data
    theirs = ts.open({k: v for k, v in spec.items() if k != "scale_metadata"}).result()
    np.testing.assert_array_equal(theirs.read().result(), data)

"""Plane reads of compressed_segmentation volumes decode only the planes asked for."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import precomputed
from precomputed import Context
from precomputed.codecs import ChunkEncoding, decode_chunk, encode_chunk
from precomputed.codecs.cseg.region import decode_cseg_region, decode_cseg_z_range
from precomputed.errors import CorruptDataError, NotFoundError
from precomputed.kvstore import MemoryKvStore


def labels(shape: tuple[int, ...], distinct: int, dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, np.iinfo(dtype).max, distinct, dtype=dtype, endpoint=True)
    return values[rng.integers(0, distinct, shape)]


@pytest.mark.parametrize("dtype", ["uint32", "uint64"])
@pytest.mark.parametrize(
    "shape, block",
    [
        ((1, 16, 16, 16), (8, 8, 8)),
        ((2, 13, 11, 9), (4, 4, 4)),  # edge chunk: partial blocks everywhere
        ((1, 7, 5, 6), (3, 2, 4)),  # block x, y, z differ
        ((1, 4, 4, 4), (1, 1, 1)),
    ],
)
@pytest.mark.parametrize("distinct", [1, 2, 3, 17, 300])
def test_planes_equal_the_whole_chunk_decode(
    dtype: str, shape: tuple[int, int, int, int], block: tuple[int, int, int], distinct: int
) -> None:
    chunk = labels(shape, distinct, dtype)
    enc = ChunkEncoding("compressed_segmentation", block_size=block)
    data = encode_chunk(chunk, enc)
    whole = decode_chunk(data, shape, np.dtype(dtype), enc)
    np.testing.assert_array_equal(whole, chunk)
    z = shape[1]
    for z0, z1 in [(0, 1), (z - 1, z), (1, z - 1), (0, z), (z // 2, z // 2 + 1)]:
        for chans in [(0, shape[0]), (shape[0] - 1, shape[0])]:
            got = decode_cseg_z_range(data, shape, np.dtype(dtype), block, z0, z1, chans)
            np.testing.assert_array_equal(got, chunk[chans[0] : chans[1], z0:z1])
            assert got.flags.c_contiguous


@pytest.mark.parametrize(
    "shape, block", [((1, 16, 16, 16), (8, 8, 8)), ((2, 13, 11, 9), (4, 4, 4)), ((1, 7, 9, 6), (3, 2, 4))]
)
def test_regions_of_planes_and_rows_equal_the_whole_chunk_decode(
    shape: tuple[int, int, int, int], block: tuple[int, int, int]
) -> None:
    chunk = labels(shape, 11, "uint64", seed=5)
    data = encode_chunk(chunk, ChunkEncoding("compressed_segmentation", block_size=block))
    _, z, y, _ = shape
    for zs in [(0, z), (1, 2), (z - 3, z)]:
        for ys in [(0, y), (y // 2, y // 2 + 1), (1, y - 1), (y - 1, y)]:
            got = decode_cseg_region(data, shape, np.dtype(np.uint64), block, zs, ys)
            np.testing.assert_array_equal(got, chunk[:, zs[0] : zs[1], ys[0] : ys[1]])


def test_32_bit_blocks_are_decoded() -> None:
    shape, block = (1, 17, 64, 64), (64, 64, 17)  # one block of 69632 > 2**16 distinct labels
    rng = np.random.default_rng(2)
    chunk = (rng.permutation(17 * 64 * 64).astype(np.uint64) * 1000003 + 2**40).reshape(shape)
    data = encode_chunk(chunk, ChunkEncoding("compressed_segmentation", block_size=block))
    assert np.frombuffer(data, "<u4")[1] >> 24 == 32
    got = decode_cseg_z_range(data, shape, np.dtype(np.uint64), block, 1, 3)
    np.testing.assert_array_equal(got, chunk[:, 1:3])


def test_corrupt_data_raises_naming_the_key() -> None:
    shape, block = (1, 8, 8, 8), (8, 8, 8)
    data = encode_chunk(labels(shape, 5, "uint64"), ChunkEncoding("compressed_segmentation", block_size=block))
    words = np.frombuffer(data, "<u4").copy()
    words[1] = (words[1] & 0xFFFFFF) | (7 << 24)  # block 0: 7 bits is not a valid width
    for bad in (words.tobytes(), data[:-4], data[:5]):
        with pytest.raises(CorruptDataError, match='"k/1"'):
            decode_cseg_z_range(bad, shape, np.dtype(np.uint64), block, 0, 1, key="k/1")


SIZE, CHUNK = (40, 36, 20), (16, 16, 8)


def volume(kv: MemoryKvStore, sharding: dict[str, Any] | None = None, **kw: Any) -> Any:
    scale: dict[str, Any] = {
        "size": list(SIZE), "chunk_size": list(CHUNK), "resolution": [8, 8, 8],
        "encoding": "compressed_segmentation", "compressed_segmentation_block_size": [8, 8, 8],
    }  # fmt: skip
    if sharding:
        scale["sharding"] = sharding
    return precomputed.open(
        {
            "driver": "neuroglancer_precomputed",
            "kvstore": kv.spec(),
            "multiscale_metadata": {"type": "segmentation", "data_type": "uint64", "num_channels": 1},
            "scale_metadata": scale,
        },
        create=True,
        **kw,
    )


SHARDED = {
    "@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": 1, "hash": "murmurhash3_x86_128",
    "minishard_bits": 1, "shard_bits": 2, "minishard_index_encoding": "gzip",
    "data_encoding": "gzip",
}  # fmt: skip


@pytest.mark.parametrize("sharding", [None, SHARDED], ids=["unsharded", "sharded"])
def test_plane_reads_decode_planes_and_cache_the_encoded_chunk(
    memory_store: MemoryKvStore, sharding: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = labels((*SIZE, 1), 9, "uint64", seed=3)
    volume(memory_store, sharding)[...] = data
    vol = precomputed.open(memory_store.url, context=Context())
    whole_decodes: list[Any] = []
    real = vol._h.decode
    monkeypatch.setattr(vol._h, "decode", lambda *a: whole_decodes.append(a) or real(*a))
    np.testing.assert_array_equal(vol[:, :, 3, :].read(), data[:, :, 3, :])
    np.testing.assert_array_equal(vol[5:30, 2:20, 9:11, :].read(), data[5:30, 2:20, 9:11, :])
    np.testing.assert_array_equal(vol[:, 21, :, :].read(), data[:, 21, :, :])  # xz-plane
    np.testing.assert_array_equal(vol[3:9, 30:32, :, :].read(), data[3:9, 30:32, :, :])
    assert whole_decodes == []  # only planes and rows were decoded
    np.testing.assert_array_equal(vol[0:16, 0:16, 0:8, :].read(), data[0:16, 0:16, 0:8, :])
    assert len(whole_decodes) == 1  # a whole chunk is decoded whole
    memory_store.stats.clear()
    np.testing.assert_array_equal(vol[:, :, 4, :].read(), data[:, :, 4, :])
    assert sum(memory_store.stats.values()) == 0  # same chunks: encoded bytes were cached
    vol[0:16, 0:16, 0:8, :] = 77  # a write drops the cached bytes of that chunk
    data[0:16, 0:16, 0:8, :] = 77
    np.testing.assert_array_equal(vol[:, :, 4, :].read(), data[:, :, 4, :])
    np.testing.assert_array_equal(
        precomputed.open(memory_store.url, context=Context(cache_bytes=0))[:, :, 17, :].read(),
        data[:, :, 17, :],
    )


def test_plane_reads_of_missing_chunks(memory_store: MemoryKvStore) -> None:
    vol = volume(memory_store)
    vol[0:16, 0:16, 0:8, :] = 5
    got = precomputed.open(memory_store.url, context=Context(cache_bytes=0))[:, :, 2, :].read()
    assert (got[0:16, 0:16] == 5).all() and not got[16:].any() and not got[:, 16:].any()
    strict = precomputed.open(memory_store.url, fill_missing_data_reads=False, context=Context())
    with pytest.raises(NotFoundError, match="missing"):
        strict[:, :, 2, :].read()


def test_a_plane_of_a_chunk_buffered_in_a_transaction_reads_the_buffer(
    memory_store: MemoryKvStore,
) -> None:
    vol = volume(memory_store)
    vol[...] = 3
    with vol.transaction():
        vol[0:16, 0:16, 0:8, :] = 4
        plane = vol[:, :, 2, :].read()
        assert (plane[0:16, 0:16] == 4).all() and (plane[16:] == 3).all()

"""Chunks other tools wrote, and chunks written to hurt: CloudVolume's gzip/brotli/zstd
chunk files (its own writer is the oracle), compressed bytes under the plain key as
CloudVolume uploads them to buckets, raw chunks of the wrong size, and decompression
bombs in chunk files, shard data and minishard indices. Thin reads (planes, rows,
voxels) must give the same voxels as whole reads, or a CorruptDataError naming the key;
never the compressed bytes as voxels."""

from __future__ import annotations

import gzip
import os
import tracemalloc
from pathlib import Path
from typing import Any

import brotli
import numpy as np
import pytest
import zstandard

import precomputed
from precomputed import Context
from precomputed import sharding as sh
from precomputed.codecs.compression import inflate_limited
from precomputed.errors import CorruptDataError
from servers import RangeServer

SIZE = (40, 30, 20)
CHUNK = (16, 16, 8)
SUFFIX = {"gzip": ".gz", "br": ".br", "zstd": ".zstd"}
COMPRESS = {
    "gzip": lambda b: gzip.compress(b, 6),
    "br": lambda b: brotli.compress(b, quality=5),
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
}


def cloudvolume_volume(root: Path, compress: str, encoding: str) -> np.ndarray:
    """A volume CloudVolume writes with ``compress`` (its ``.gz``/``.br``/``.zstd`` files)."""
    cloudvolume = pytest.importorskip("cloudvolume")
    dtype = "uint32" if encoding == "compressed_segmentation" else "uint16"
    info = cloudvolume.CloudVolume.create_new_info(
        num_channels=1,
        layer_type="segmentation" if encoding != "raw" else "image",
        data_type=dtype,
        encoding=encoding,
        resolution=[4, 4, 40],
        voxel_offset=[0, 0, 0],
        volume_size=list(SIZE),
        chunk_size=list(CHUNK),
    )
    cv = cloudvolume.CloudVolume(f"file://{root}", info=info, compress=compress, progress=False)
    cv.commit_info()
    data = (np.random.default_rng(0).integers(0, 50, (*SIZE, 1))).astype(dtype)
    cv[:, :, :] = data
    names = os.listdir(root / "4_4_40")
    assert names and all(n.endswith(SUFFIX[compress]) for n in names)
    return data


def to_plain_keys(root: Path) -> None:
    """Move CloudVolume's compressed files to the plain chunk keys, as its bucket uploads
    store them (the compression then only in the object's Content-Encoding)."""
    for name in os.listdir(root / "4_4_40"):
        stem = name.rsplit(".", 1)[0]
        os.rename(root / "4_4_40" / name, root / "4_4_40" / stem)


def thin_reads(vol: Any, data: np.ndarray) -> None:
    """Whole, plane, row and voxel reads all equal ``data``."""
    np.testing.assert_array_equal(vol.read(), data)
    for z in (0, 3, 7, 8, 19):
        np.testing.assert_array_equal(vol[:, :, z, :].read(), data[:, :, z, :])
    np.testing.assert_array_equal(vol[5:30, 17, 9, :].read(), data[5:30, 17, 9, :])
    np.testing.assert_array_equal(vol[33, 21, 12, :].read(), data[33, 21, 12, :])
    np.testing.assert_array_equal(vol.zyx()[11], data[:, :, 11, 0].T)


@pytest.mark.parametrize("compress", ["gzip", "br", "zstd"])
@pytest.mark.parametrize("encoding", ["raw", "compressed_segmentation"])
@pytest.mark.parametrize("cache_bytes", [0, 1 << 24])
def test_cloudvolume_compressed_chunk_files_are_read(
    tmp_path: Path, compress: str, encoding: str, cache_bytes: int
) -> None:
    data = cloudvolume_volume(tmp_path, compress, encoding)
    thin_reads(precomputed.open(str(tmp_path), context=Context(cache_bytes=cache_bytes)), data)


@pytest.mark.parametrize(
    ("compress", "encoding"),
    [("gzip", "raw"), ("gzip", "compressed_segmentation"), ("zstd", "raw"),
     ("zstd", "compressed_segmentation"), ("br", "raw")],
)  # fmt: skip
def test_compressed_bytes_under_the_plain_key_are_read(
    tmp_path: Path, compress: str, encoding: str
) -> None:
    data = cloudvolume_volume(tmp_path, compress, encoding)
    to_plain_keys(tmp_path)
    for cache_bytes in (0, 1 << 24):
        thin_reads(precomputed.open(str(tmp_path), context=Context(cache_bytes=cache_bytes)), data)


def test_brotli_segmentation_under_the_plain_key_is_corrupt_not_zeros(tmp_path: Path) -> None:
    # Brotli has no magic bytes: only raw chunks (by their wrong length) are tried as brotli,
    # so a brotli segmentation chunk under the plain key is refused, never read as voxels.
    data = cloudvolume_volume(tmp_path, "br", "compressed_segmentation")
    to_plain_keys(tmp_path)
    for cache_bytes in (0, 1 << 24):
        with pytest.raises(CorruptDataError, match="compressed segmentation"):
            thin_reads(precomputed.open(str(tmp_path), context=Context(cache_bytes=cache_bytes)), data)


@pytest.mark.parametrize("compress", ["gzip", "zstd", "br"])
def test_plain_key_compressed_raw_chunks_over_http_read_right_in_planes(
    tmp_path: Path, http_server: RangeServer, compress: str
) -> None:
    """napari reads planes: a plane of a compressed raw chunk served under its plain key
    used to come back as the compressed bytes."""
    data = cloudvolume_volume(tmp_path / "vol", compress, "raw")
    to_plain_keys(tmp_path / "vol")
    http_server.root = tmp_path
    vol = precomputed.open(f"{http_server.url}/vol", context=Context(cache_bytes=0))
    thin_reads(vol, data)


def raw_volume(root: Path) -> tuple[Any, np.ndarray]:
    spec = {
        "driver": "neuroglancer_precomputed",
        "kvstore": f"file://{root}/",
        "multiscale_metadata": {"type": "image", "data_type": "uint8", "num_channels": 1},
        "scale_metadata": {"size": list(SIZE), "chunk_size": list(CHUNK), "encoding": "raw"},
    }
    vol = precomputed.open(spec, create=True, context=Context(cache_bytes=0))
    data = np.random.default_rng(1).integers(1, 255, (*SIZE, 1), dtype=np.uint8)
    vol[...] = data
    return vol, data


@pytest.mark.parametrize("change", ["longer", "shorter", "empty"])
def test_raw_chunks_of_the_wrong_size_are_corrupt_in_thin_reads_too(
    tmp_path: Path, change: str
) -> None:
    _, data = raw_volume(tmp_path)
    key = tmp_path / "1_1_1" / "16-32_0-16_0-8"
    good = key.read_bytes()
    key.write_bytes({"longer": good + b"\0", "shorter": good[:-1], "empty": b""}[change])
    for cache_bytes in (0, 1 << 24):
        vol = precomputed.open(str(tmp_path), context=Context(cache_bytes=cache_bytes))
        for view in (vol, vol[:, :, 3, :], vol[20, 5:9, 2, :], vol[20, 5, 2, :]):
            with pytest.raises(CorruptDataError, match="1_1_1/16-32_0-16_0-8.*Expected chunk length"):
                view.read()
        # the other chunks still read
        np.testing.assert_array_equal(vol[:16, :, 3, :].read(), data[:16, :, 3, :])


@pytest.mark.parametrize("change", ["longer", "shorter", "empty"])
def test_raw_chunks_of_the_wrong_size_over_http_are_corrupt_in_thin_reads_without_a_probe(
    tmp_path: Path, http_server: RangeServer, change: str
) -> None:
    """The size check travels with the slab reads (``Content-Range``): a plane costs one
    ranged GET per chunk, and a wrong-size chunk is still refused."""
    _, data = raw_volume(tmp_path / "vol")
    key = tmp_path / "vol" / "1_1_1" / "16-32_0-16_0-8"
    good = key.read_bytes()
    key.write_bytes({"longer": good + b"\0", "shorter": good[:-1], "empty": b""}[change])
    http_server.root = tmp_path
    vol = precomputed.open(f"{http_server.url}/vol", context=Context(cache_bytes=0))
    for view in (vol[:, :, 3, :], vol[20, 5:9, 2, :], vol[20, 5, 2, :]):
        with pytest.raises(CorruptDataError, match="1_1_1/16-32_0-16_0-8.*Expected chunk length"):
            view.read()
    http_server.clear_log()
    np.testing.assert_array_equal(vol[:16, :, 3, :].read(), data[:16, :, 3, :])
    chunk_gets = [r for m, p, r in http_server.requests if m == "GET" and not p.endswith("/info")]
    assert len(chunk_gets) == 2 and all(r is not None for r in chunk_gets)  # 2 chunks, 1 range each
    assert not [m for m, _, _ in http_server.requests if m == "HEAD"]


def test_a_raw_chunk_of_the_right_size_is_raw_whatever_it_starts_with(tmp_path: Path) -> None:
    vol, data = raw_volume(tmp_path)
    vol[0:16, 0:16, 0:8, :] = 0
    part = np.frombuffer(gzip.compress(b"\0" * 100) + b"\7" * 2048, np.uint8)[: 16 * 16 * 8]
    block = part.reshape(1, 8, 16, 16).transpose(3, 2, 1, 0)  # czyx bytes, x fastest
    vol[0:16, 0:16, 0:8, :] = block
    data[0:16, 0:16, 0:8, :] = block
    assert (tmp_path / "1_1_1" / "0-16_0-16_0-8").read_bytes()[:2] == b"\x1f\x8b"
    thin_reads(precomputed.open(str(tmp_path), context=Context(cache_bytes=0)), data)


# ---------------------------------------------------------------------------------------
# Bombs (small, in process; the memory-limited ones are in test_bombs.py)
# ---------------------------------------------------------------------------------------


def bomb(method: str, size: int) -> bytes:
    return COMPRESS[method](bytes(size))


@pytest.mark.parametrize("method", ["gzip", "br", "zstd"])
@pytest.mark.parametrize("where", ["plain", "sibling"])
def test_a_chunk_bomb_is_corrupt_and_inflates_no_further_than_the_chunk(
    tmp_path: Path, method: str, where: str
) -> None:
    raw_volume(tmp_path)
    key = tmp_path / "1_1_1" / "16-32_0-16_0-8"
    payload = bomb(method, 64 << 20)
    if where == "plain" and method != "br":
        key.write_bytes(payload)
    else:
        key.unlink()
        key.with_name(key.name + SUFFIX[method]).write_bytes(payload)
    vol = precomputed.open(str(tmp_path), context=Context(cache_bytes=0))
    for view in (vol, vol[:, :, 3, :], vol[20, 5, 2, :]):
        tracemalloc.start()
        try:
            with pytest.raises(CorruptDataError, match=r"16-32_0-16_0-8.*more than 2048 bytes"):
                view.read()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 4 << 20  # not 64 MiB


@pytest.mark.parametrize("method", ["gzip", "br", "zstd"])
def test_inflate_limited_stops_at_the_limit(method: str) -> None:
    data = bytes(range(256)) * 40
    packed = COMPRESS[method](data)
    assert inflate_limited(packed, method, len(data)) == (data, None)
    out, why = inflate_limited(packed, method, len(data) - 1)
    assert out is None and why is not None and "more than" in why
    out, why = inflate_limited(packed[: len(packed) // 2], method, len(data))
    assert out is None and why


def sharded_volume(root: Path) -> Any:
    spec = {
        "driver": "neuroglancer_precomputed",
        "kvstore": f"file://{root}/",
        "multiscale_metadata": {"type": "image", "data_type": "uint8", "num_channels": 1},
        "scale_metadata": {
            "size": [32, 32, 16],
            "chunk_size": [16, 16, 8],
            "encoding": "raw",
            "sharding": {
                "@type": "neuroglancer_uint64_sharded_v1",
                "preshift_bits": 1,
                "minishard_bits": 1,
                "shard_bits": 1,
                "hash": "identity",
                "minishard_index_encoding": "gzip",
                "data_encoding": "gzip",
            },
        },
    }
    vol = precomputed.open(spec, create=True, context=Context(cache_bytes=0))
    vol[...] = 5
    return vol


def test_a_bomb_in_shard_data_is_corrupt(tmp_path: Path) -> None:
    vol = sharded_volume(tmp_path)
    shard = tmp_path / "1_1_1" / "0.shard"
    spec = vol.scale.sharding
    chunks = dict(sh.split_shard(shard.read_bytes(), spec, "0.shard", decode=False))
    chunks[0] = sh.gzip_compress(bytes(64 << 20))  # chunk 0 is 2048 bytes
    shard.write_bytes(sh.encode_shard(chunks, spec, data_encoded=True))
    fresh = precomputed.open(str(tmp_path), context=Context(cache_bytes=0))
    with pytest.raises(CorruptDataError, match=r"chunk 0 .*0\.shard.*more than 2048 bytes"):
        fresh[0:16, 0:16, 0:8, :].read()
    with pytest.raises(CorruptDataError, match=r"0\.shard.*more than 2048 bytes"):
        fresh.read()  # whole shards are split in one piece
    np.testing.assert_array_equal(fresh[16:32, 0:16, 0:8, :].read(), 5)  # its neighbour is fine


def test_a_bomb_in_a_minishard_index_is_corrupt(tmp_path: Path) -> None:
    sharded_volume(tmp_path)
    # The grid has 2 x 2 x 2 chunks; a minishard holds 2 of them (48 bytes of index).
    index = sh.gzip_compress(bytes(24 << 20))  # "a million entries"
    shard = sh.encode_shard_index(np.array([[0, len(index)], [0, 0]], np.uint64)) + index
    (tmp_path / "1_1_1" / "0.shard").write_bytes(shard)
    fresh = precomputed.open(str(tmp_path), context=Context(cache_bytes=0))
    with pytest.raises(CorruptDataError, match=r"minishard 0 in .*0\.shard.*more than 48 bytes"):
        fresh[0:16, 0:16, 0:8, :].read()
    with pytest.raises(CorruptDataError, match=r"more than 48 bytes"):
        fresh[0:4, 0:4, 0:4, :] = 1  # a partial rewrite reads the shard first: refused
    assert (tmp_path / "1_1_1" / "0.shard").read_bytes() == shard


def test_cloudvolume_twins_are_removed_when_a_chunk_is_zeroed(tmp_path: Path) -> None:
    data = cloudvolume_volume(tmp_path, "br", "raw")
    vol = precomputed.open(str(tmp_path), context=Context(cache_bytes=0))
    vol[0:16, 0:16, 0:8, :] = 0
    assert not (tmp_path / "4_4_40" / "0-16_0-16_0-8.br").exists()
    data[0:16, 0:16, 0:8, :] = 0
    np.testing.assert_array_equal(vol.read(), data)

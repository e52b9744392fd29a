"""Decompression bombs under a memory limit: a chunk file or minishard index of about a
megabyte (gzip; brotli and zstd: less) that inflates to 1 GiB or 10 GiB must end in a
CorruptDataError, quickly, in a process whose address space is capped at 1 GiB
(``RLIMIT_AS``): expanding first and checking afterwards would die of MemoryError.

The bombs are built without ever holding their expansion: gzip from one full-flushed
deflate segment repeated, zstd from hand-made RLE blocks, brotli streamed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import brotli
import numpy as np
import pytest

import precomputed
from precomputed import Context
from precomputed import sharding as sh

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS is Linux's")

GiB = 1 << 30
LIMIT = GiB  # the child's address space


def gzip_zeros(n: int) -> bytes:
    """A gzip member inflating to ``n`` zero bytes (its CRC is not checked before the
    bound stops the inflation, so it is left zero)."""
    seg = 64 << 20
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = c.compress(bytes(seg)) + c.flush(zlib.Z_FULL_FLUSH)  # byte-aligned, no history
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    last = tail.compress(bytes(n % seg)) + tail.flush()
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03"
    return header + body * (n // seg) + last + bytes(4) + (n & 0xFFFFFFFF).to_bytes(4, "little")


def zstd_zeros(n: int, declared: bool) -> bytes:
    """A zstd frame of RLE blocks inflating to ``n`` zero bytes, with or without the
    content size in its header."""
    block = 1 << 17
    if declared:
        header = b"\x28\xb5\x2f\xfd" + bytes([0xC0, (17 - 10) << 3]) + n.to_bytes(8, "little")
    else:
        header = b"\x28\xb5\x2f\xfd" + bytes([0x00, (17 - 10) << 3])
    full, rest = divmod(n, block)
    sizes = [block] * full + ([rest] if rest else [])

    def rle(size: int, last: bool) -> bytes:
        return (int(last) | (1 << 1) | (size << 3)).to_bytes(3, "little") + b"\0"

    return header + b"".join(rle(s, i == len(sizes) - 1) for i, s in enumerate(sizes))


def brotli_zeros(n: int) -> bytes:
    c = brotli.Compressor(quality=1)
    seg = bytes(64 << 20)
    out = [c.process(seg) for _ in range(n // len(seg))]
    out.append(c.process(bytes(n % len(seg))))
    out.append(c.finish())
    return b"".join(out)


CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    import precomputed
    from precomputed import Context
    from precomputed.errors import CorruptDataError
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    url, reads = sys.argv[1], json.loads(sys.argv[2])
    vol = precomputed.open(url, context=Context(cache_bytes=0, decode_threads=1, io_concurrency=2))
    out = []
    for index in reads:
        t = time.perf_counter()
        try:
            vol[tuple(slice(*s) for s in index)].read()
            out.append(["no error", 0])
        except CorruptDataError as e:
            out.append([str(e), time.perf_counter() - t])
        except MemoryError:
            out.append(["MemoryError", 0])
    print(json.dumps(out))
    """
)


def run_child(url: str, reads: list[list[list[int]]]) -> list[tuple[str, float]]:
    env = {
        **os.environ,
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MALLOC_ARENA_MAX": "2",
    }
    proc = subprocess.run(
        [sys.executable, "-c", CHILD.format(limit=LIMIT), url, json.dumps(reads)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [tuple(r) for r in json.loads(proc.stdout.splitlines()[-1])]


WHOLE = [[0, 64], [0, 64], [0, 64], [None]]
PLANE = [[0, 64], [0, 64], [5, 6], [None]]
VOXEL = [[3, 4], [9, 10], [5, 6], [None]]


def raw_volume(root: Path, sharding: dict | None = None) -> None:
    scale: dict = {"size": [64, 64, 64], "chunk_size": [64, 64, 64], "encoding": "raw"}
    if sharding:
        scale["sharding"] = sharding
    spec = {
        "driver": "neuroglancer_precomputed",
        "kvstore": f"file://{root}/",
        "multiscale_metadata": {"type": "image", "data_type": "uint8", "num_channels": 1},
        "scale_metadata": scale,
    }
    precomputed.open(spec, create=True, context=Context())[...] = 1


@pytest.mark.parametrize("size", [GiB, 10 * GiB], ids=["1GiB", "10GiB"])
@pytest.mark.parametrize("method", ["gzip", "br", "zstd", "zstd-declared"])
def test_a_chunk_bomb_ends_in_corrupt_data_within_the_memory_limit(
    tmp_path: Path, method: str, size: int
) -> None:
    raw_volume(tmp_path)
    key = tmp_path / "1_1_1" / "0-64_0-64_0-64"
    if method == "gzip":
        payload, name = gzip_zeros(size), key.name
    elif method == "br":
        payload, name = brotli_zeros(size), key.name + ".br"
        key.unlink()
    else:
        payload, name = zstd_zeros(size, method == "zstd-declared"), key.name
    assert len(payload) < 12 << 20
    (key.parent / name).write_bytes(payload)
    for message, seconds in run_child(str(tmp_path), [WHOLE, PLANE, VOXEL]):
        assert "0-64_0-64_0-64" in message and "more than 262144 bytes" in message, message
        assert seconds < 10


@pytest.mark.parametrize("size", [GiB, 10 * GiB], ids=["1GiB", "10GiB"])
@pytest.mark.parametrize("where", ["minishard index", "chunk data"])
def test_a_shard_bomb_ends_in_corrupt_data_within_the_memory_limit(
    tmp_path: Path, where: str, size: int
) -> None:
    sharding = {
        "@type": "neuroglancer_uint64_sharded_v1",
        "preshift_bits": 0,
        "hash": "identity",
        "minishard_bits": 0,
        "shard_bits": 0,
        "minishard_index_encoding": "gzip",
        "data_encoding": "gzip",
    }
    raw_volume(tmp_path, sharding)
    spec = sh.ShardingSpec.from_json(sharding)
    bomb = gzip_zeros(size)
    if where == "chunk data":
        shard = sh.encode_shard({0: bomb}, spec, data_encoded=True)
    else:
        shard = sh.encode_shard_index(np.array([[0, len(bomb)]], np.uint64)) + bomb
    assert shard is not None
    (tmp_path / "1_1_1" / "0.shard").write_bytes(shard)
    bound = "more than 262144 bytes" if where == "chunk data" else "more than 24 bytes"
    for message, seconds in run_child(str(tmp_path), [WHOLE, PLANE]):
        assert "0.shard" in message and bound in message, message
        assert seconds < 10


def test_the_child_would_die_of_an_unbounded_inflation(tmp_path: Path) -> None:
    """The limit is real: inflating the 1 GiB bomb with plain zlib in the child fails."""
    bomb = tmp_path / "bomb.gz"
    bomb.write_bytes(gzip_zeros(GiB))
    code = (
        f"import resource, zlib; resource.setrlimit(resource.RLIMIT_AS, ({LIMIT}, {LIMIT}))\n"
        "data = open(__import__('sys').argv[1], 'rb').read()\n"
        "try:\n    zlib.decompress(data, 31)\nexcept MemoryError:\n    print('MemoryError')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(bomb)], capture_output=True, text=True, timeout=120
    )
    assert "MemoryError" in proc.stdout, (proc.stdout, proc.stderr[-2000:])

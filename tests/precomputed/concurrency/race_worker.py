"""Writers and a checking reader of one sharded volume, run as processes (local files) or
threads (memory, GCS, S3) by test_shard_races.py.

The volume: 8^3 uint32 voxels in 4^3 chunks, all 8 chunks in one shard. Every voxel
holds ``value(chunk, round) = (chunk + 1) * 1000 + round``, so a read tells which chunk's
bytes it got and from which round: zeros, another chunk's number, a round from the future
or an older round than this reader saw before are all wrong reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

import precomputed
from precomputed.errors import CorruptDataError

SIZE = (8, 8, 8)
CHUNK = (4, 4, 4)
#: Chunk number -> grid origin (voxels), x fastest.
ORIGINS = [(x, y, z) for z in (0, 4) for y in (0, 4) for x in (0, 4)]
#: Writer A owns the chunks with x = 0, writer B those with x = 4: disjoint, one shard.
OWNED = {"a": [i for i, o in enumerate(ORIGINS) if o[0] == 0], "b": [i for i, o in enumerate(ORIGINS) if o[0] == 4]}


def value(chunk: int, rnd: int) -> int:
    return (chunk + 1) * 1000 + rnd


def lost_chunks(vol: Any, rnd: int) -> list[str]:
    """Chunks of ``vol`` that do not hold their round-``rnd`` value everywhere."""
    data = np.asarray(vol.read())
    out = []
    for i, (x, y, z) in enumerate(ORIGINS):
        got = data[x : x + 4, y : y + 4, z : z + 4]
        if not (got == value(i, rnd)).all():
            out.append(f"round {rnd}, chunk {i}: {sorted(set(got.ravel().tolist()))[:4]}")
    return out


def sharding() -> dict[str, Any]:
    """One shard holding every chunk, one minishard per chunk pair (rectangular)."""
    return {
        "@type": "neuroglancer_uint64_sharded_v1",
        "preshift_bits": 1,
        "hash": "identity",
        "minishard_bits": 2,
        "shard_bits": 0,
        "minishard_index_encoding": "gzip",
        "data_encoding": "gzip",
    }


def spec(kvstore: dict[str, Any], sharded: bool = True) -> dict[str, Any]:
    out = {
        "driver": "neuroglancer_precomputed",
        "kvstore": kvstore,
        "multiscale_metadata": {"data_type": "uint32", "num_channels": 1, "type": "segmentation"},
        "scale_metadata": {
            "size": list(SIZE),
            "chunk_size": list(CHUNK),
            "encoding": "raw",
            "resolution": [1, 1, 1],
            "sharding": sharding(),
        },
    }
    if not sharded:
        del out["scale_metadata"]["sharding"]  # type: ignore[attr-defined]
    return out


def initial() -> np.ndarray:
    """The volume at round 0 (x, y, z, c)."""
    out = np.zeros((*SIZE, 1), np.uint32)
    for i, (x, y, z) in enumerate(ORIGINS):
        out[x : x + 4, y : y + 4, z : z + 4] = value(i, 0)
    return out


def open_file_volume(path: str) -> precomputed.Volume:
    """A fresh handle in its own context with no chunk cache (a separate reader/writer)."""
    return precomputed.open(f"file://{path}", context=precomputed.Context(cache_bytes=0))


def open_remote_volume(url: str, storage_options: dict[str, Any]) -> precomputed.Volume:
    """A fresh handle on a bucket volume with its own store instance and no chunk cache."""
    kv = precomputed.open_kvstore(url, **storage_options)
    return precomputed.open(
        {"driver": "neuroglancer_precomputed", "kvstore": {"driver": "memory"}},
        kvstore=kv,
        context=precomputed.Context(cache_bytes=0),
    )


def check_chunk(i: int, arr: np.ndarray, newest: int, seen: dict[int, int]) -> str | None:
    """What is wrong with a read of chunk ``i`` (``None``: nothing). ``newest``: the
    highest round any writer may have reached; ``seen[i]``: the newest round this reader
    saw of the chunk before (reads must not go back in time)."""
    chunks = arr // 1000 - 1
    rounds = arr % 1000
    if not (chunks == i).all():
        return f"chunk {i}: bytes of chunk(s) {sorted(set(chunks.ravel().tolist()))}"
    lo, hi = int(rounds.min()), int(rounds.max())
    if hi > newest:
        return f"chunk {i}: round {hi} read, but no writer reached past {newest}"
    if hi < seen.get(i, 0):
        return f"chunk {i}: round {hi} read after round {seen[i]} was seen"
    seen[i] = max(seen.get(i, 0), lo)
    return None


def write_rounds(
    open_volume: Callable[[], precomputed.Volume],
    who: str,
    rounds: int,
    barrier: Any,
    results: Any,
    mode: str = "halves",
) -> None:
    """Writer ``who`` ("a"/"b"): each round, every owned chunk written as two partial
    writes (z halves: each a read-modify-write of the shard), then two barrier waits (the
    round is checked in between). ``mode="voxels"``: the writers share every chunk, each
    writing its own x half of it (partial writes of one chunk by both).
    ``mode="replace"``: writes the whole volume each round (a whole-shard replacement,
    nothing read), no barriers."""
    vol = open_volume()
    rng = np.random.default_rng(0)
    errors: list[str] = []
    retries = 0
    try:
        for r in range(1, rounds + 1):
            try:
                if mode == "replace":
                    data = initial()
                    if r < rounds:
                        # Rounds r - 0..9 in random voxels (one voxel of each chunk at r):
                        # compressed sizes, so every chunk's place in the shard, change
                        # from version to version.
                        data += np.uint32(r)
                        data -= rng.integers(0, min(r, 9) + 1, data.shape, dtype=np.uint32)
                        data[::4, ::4, ::4] = initial()[::4, ::4, ::4] + np.uint32(r)
                    else:
                        data += np.uint32(r)
                    vol[...] = data
                    continue
                if mode == "voxels":  # x-halves of every chunk: a 0..1, b 2..3
                    boxes = [
                        (i, x + (0 if who == "a" else 2), 2, y, z)
                        for i, (x, y, z) in enumerate(ORIGINS)
                    ]
                else:
                    boxes = [(i, *ORIGINS[i][:1], 4, *ORIGINS[i][1:]) for i in OWNED[who]]
                for i, x, nx, y, z in boxes:
                    for z0 in (z, z + 2):
                        stats = vol[x : x + nx, y : y + 4, z0 : z0 + 2, :].write(value(i, r))
                        retries += 0 if stats is None else stats.retries
            except Exception as e:  # reported, never hidden: the test fails on any
                errors.append(f"round {r}: {type(e).__name__}: {e}")
            if mode != "replace":
                barrier.wait()  # round written
                barrier.wait()  # round checked
    finally:
        results.put({"who": who, "errors": errors, "retries": retries})


def read_until(
    open_volume: Callable[[], precomputed.Volume], stop: Any, newest: Any, results: Any
) -> None:
    """Read single chunks (and a thin plane of one) until ``stop`` is set; count reads,
    wrong reads and corruption errors."""
    vol = open_volume()
    seen: dict[int, int] = {}
    reads = 0
    wrong: list[str] = []
    corrupt: list[str] = []
    other: list[str] = []
    try:
        while not stop.is_set():
            for i, (x, y, z) in enumerate(ORIGINS):
                try:
                    if reads % 5 == 4:  # a plane of the chunk: the same pinned read path
                        arr = vol[x : x + 4, y : y + 4, z + 1 : z + 2, :].read()
                    else:
                        arr = vol[x : x + 4, y : y + 4, z : z + 4, :].read()
                except CorruptDataError as e:
                    corrupt.append(str(e))
                    continue
                except Exception as e:
                    other.append(f"{type(e).__name__}: {e}")
                    continue
                finally:
                    reads += 1
                # After the read: what it returned was written by then, when writers were
                # at most one round past the last one checked.
                limit = newest.value + 1
                why = check_chunk(i, np.asarray(arr), limit, seen)
                if why is not None:
                    wrong.append(why)
            time.sleep(0)
    finally:
        results.put(
            {"who": "reader", "reads": reads, "wrong": wrong, "corrupt": corrupt, "other": other}
        )

"""What cache revalidation (``recheck_cached_data``) costs on local reads.

    .venv/bin/python benchmarks/bench_recheck.py [--repeats 15]

bench.py times every library with the cache off, where nothing is revalidated; this
times the cases the cache serves: cold reads with the cache on (chunks read together with
their generation) and warm reads (every chunk in the cache: ``true`` revalidates each
chunk key or shard with a ``stat``, ``"open"``/``false`` check nothing). Volumes (built by
TensorStore): a 512x512x128 uint8 raw image and a 256x256x128 uint64 compressed
segmentation, sharded, both in 64^3 chunks. Median of alternating runs, in ms. Run it
with ``PYTHONPATH=<other checkout>/src`` to time another version of the driver (one
without revalidation takes ``recheck_cached_data`` as ``false``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tensorstore as ts

import precomputed

SHARDING = {
    "@type": "neuroglancer_uint64_sharded_v1",
    "preshift_bits": 3,
    "hash": "identity",
    "minishard_bits": 0,
    "shard_bits": 2,
    "minishard_index_encoding": "gzip",
    "data_encoding": "gzip",
}


def build(root: Path) -> dict[str, Path]:
    out = {}
    rng = np.random.default_rng(0)
    for name, size, dtype, encoding, sharding in [
        ("raw", (512, 512, 128), "uint8", "raw", None),
        ("cseg", (256, 256, 128), "uint64", "compressed_segmentation", SHARDING),
    ]:
        scale: dict[str, Any] = {"size": list(size), "chunk_size": [64, 64, 64], "encoding": encoding}
        if encoding == "compressed_segmentation":
            scale["compressed_segmentation_block_size"] = [8, 8, 8]
        if sharding:
            scale["sharding"] = sharding
        path = root / name
        store = ts.open(
            {
                "driver": "neuroglancer_precomputed",
                "kvstore": {"driver": "file", "path": str(path) + "/"},
                "multiscale_metadata": {"type": "image", "data_type": dtype, "num_channels": 1},
                "scale_metadata": scale,
            },
            create=True,
        ).result()
        coarse = rng.integers(0, 200, (size[0] // 16, size[1] // 16, size[2] // 16, 1))
        store[...] = np.kron(coarse, np.ones((16, 16, 16, 1), dtype=np.int64)).astype(dtype)
        out[name] = path
    return out


def spec(path: Path, recheck: Any) -> dict[str, Any]:
    return {
        "driver": "neuroglancer_precomputed",
        "kvstore": {"driver": "file", "path": str(path) + "/"},
        "recheck_cached_data": recheck,
    }


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = build(Path(tmp))
        rows: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for name, path in paths.items():
                for recheck in (True, "open", False):
                    ctx = precomputed.Context(cache_bytes=1 << 30)
                    vol = precomputed.open(spec(path, recheck), context=ctx)
                    rows.setdefault(f"{name}: cold full read, cache on, {recheck!r}", []).append(
                        timed(vol.read)
                    )
                    rows.setdefault(f"{name}: warm full read, {recheck!r}", []).append(timed(vol.read))
                    plane = vol[:, :, 70, :]
                    plane.read()
                    rows.setdefault(f"{name}: warm z-plane, {recheck!r}", []).append(timed(plane.read))
        width = max(len(k) for k in rows)
        print(f"precomputed {precomputed.__file__}; median of {args.repeats} (ms)")
        for k, v in rows.items():
            print(f"{k:<{width}}  {statistics.median(v):8.2f}")


if __name__ == "__main__":
    main()

"""What the generation checks of issue 14 cost on local reads and writes, in CPU time.

    .venv/bin/python benchmarks/bench_generations.py                 # this checkout
    PYTHONPATH=/path/to/other/src .venv/bin/python benchmarks/bench_generations.py

Run it once per source tree (the second form imports another checkout's ``precomputed``,
e.g. ``git archive main src | tar -x -C /tmp/main``) and compare the medians. CPU time
(``time.process_time``), not wall time: on a shared machine the wall clock measures the
neighbours; the workloads below run on the calling thread, so CPU time is their cost.

Workloads (compressed_segmentation uint64, 32^3 chunks, 256x256x128 voxels, local files,
``cache_bytes=0`` so every read reaches the store; the shard index caches are warm):

* sharded, one chunk per call: 200 random chunks, each a pinned ranged read
* sharded, z planes: 32 planes of 64 chunks each
* unsharded, one chunk per call / z planes: the same reads of an unsharded copy
* unsharded raw uint8 full write: 128 chunk files of 256 KiB (checks for compressed twins)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import precomputed
from precomputed import Context

SHARDING = {
    "@type": "neuroglancer_uint64_sharded_v1",
    "preshift_bits": 3,
    "hash": "murmurhash3_x86_128",
    "minishard_bits": 3,
    "shard_bits": 2,
    "minishard_index_encoding": "gzip",
    "data_encoding": "gzip",
}


def _spec(path: str, dtype: str, size: list[int], chunk: int, encoding: str, sharding: Any) -> dict[str, Any]:
    scale: dict[str, Any] = {
        "size": size,
        "chunk_size": [chunk] * 3,
        "encoding": encoding,
        "resolution": [1, 1, 1],
    }
    if encoding == "compressed_segmentation":
        scale["compressed_segmentation_block_size"] = [8, 8, 8]
    if sharding:
        scale["sharding"] = sharding
    kind = "segmentation" if encoding == "compressed_segmentation" else "image"
    return {
        "driver": "neuroglancer_precomputed",
        "kvstore": {"driver": "file", "path": path},
        "multiscale_metadata": {"data_type": dtype, "num_channels": 1, "type": kind},
        "scale_metadata": scale,
    }


def cpu_ms(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm: index caches, page cache, imports
    times = []
    for _ in range(repeats):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="bench-generations-")
    labels = np.random.default_rng(0).integers(0, 50, (256, 256, 128, 1)).astype(np.uint64)
    seg = "compressed_segmentation"
    for name, sharding in (("sharded", SHARDING), ("unsharded", None)):
        spec = _spec(f"{root}/{name}", "uint64", [256, 256, 128], 32, seg, sharding)
        precomputed.open(spec, create=True)[...] = labels
    cells = [tuple(int(v) for v in c) for c in np.random.default_rng(1).integers(0, (8, 8, 4), (200, 3))]
    results: dict[str, float] = {}
    for name in ("sharded", "unsharded"):
        vol = precomputed.open(f"file://{root}/{name}", context=Context(cache_bytes=0))

        def chunks(vol: precomputed.Volume = vol) -> None:
            for x, y, z in cells:
                vol[32 * x : 32 * x + 32, 32 * y : 32 * y + 32, 32 * z : 32 * z + 32].read()

        def planes(vol: precomputed.Volume = vol) -> None:
            for z in range(0, 128, 4):
                vol[:, :, z : z + 1].read()

        results[f"{name}: one chunk per call (ms / 200 chunks)"] = cpu_ms(chunks, args.repeats)
        results[f"{name}: z planes (ms / 32 planes)"] = cpu_ms(planes, args.repeats)
    raw = np.random.default_rng(2).integers(0, 255, (512, 512, 128, 1), dtype=np.uint8)
    out = precomputed.open(
        _spec(f"{root}/raw", "uint8", [512, 512, 128], 64, "raw", None),
        create=True,
        context=Context(cache_bytes=0),
    )

    def write() -> None:
        out[...] = raw

    results["unsharded raw: full write (ms / 128 chunks)"] = cpu_ms(write, max(3, args.repeats // 3))
    for k, v in results.items():
        print(f"{k:55s} {v:9.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

"""Micro-benchmark of the store layer: the per-call cost of local-file reads (and of
HTTP reads on loopback, where retries, checks and generations add work per request).

    .venv/bin/python benchmarks/kvstore_bench.py                 # this checkout
    .venv/bin/python benchmarks/kvstore_bench.py --src /tmp/base/src   # another tree's src/

Each row is the median over ``--repeats`` runs of the time per call, in microseconds,
on files in the page cache (so it measures our overhead, not the disk). ``--src`` puts
another checkout's ``src/`` first on ``sys.path``, to compare before/after a change on
the same machine in one sitting. docs/stores.md quotes the numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(fn: Callable[[], object], calls: int, repeats: int) -> float:
    """Median microseconds per call of ``fn`` over ``repeats`` runs of ``calls`` calls."""
    fn()  # warm: page cache, path memo, pools
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", help="a src/ directory to import precomputed from")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-http", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, args.src or str(ROOT / "src"))
    sys.path.insert(0, str(ROOT / "tests"))
    import numpy as np

    import precomputed
    from precomputed.kvstore import FileKvStore, open_kvstore

    print(f"precomputed from {Path(precomputed.__file__).parent}")
    rng = np.random.default_rng(0)
    chunk = rng.integers(0, 255, 32 * 32 * 32, dtype=np.uint8).tobytes()  # a 32^3 raw chunk
    shard = rng.integers(0, 255, 4 << 20, dtype=np.uint8).tobytes()  # a 4 MiB shard
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = FileKvStore(tmp)
        keys = [f"8_8_8/{i * 32}-{i * 32 + 32}_0-32_0-32" for i in range(256)]
        for k in keys:
            store.write(k, chunk)
        store.write("8_8_8/0.shard", shard)
        buf = bytearray(len(chunk))
        it = iter(range(1 << 62))

        def key() -> str:
            return keys[next(it) % len(keys)]

        n, r = 2000, args.repeats
        rows.append(("read (32 KiB)", timed(lambda: store.read(key()), n, r)))
        rows.append(("read_with_generation", timed(lambda: store.read_with_generation(key()), n, r)))
        rows.append(("read_into (32 KiB)", timed(lambda: store.read_into(key(), buf), n, r)))
        rows.append(("read_range (4 KiB)", timed(lambda: store.read_range(key(), 0, 4096), n, r)))
        reqs = [("8_8_8/0.shard", a, a + 64) for a in (0, 1 << 20, 2 << 20)]
        rows.append(("read_ranges (3 of a shard)", timed(lambda: store.read_ranges(reqs), n, r)))
        batch = keys[:64]
        rows.append(("read_many (64 x 32 KiB) per key", timed(lambda: store.read_many(batch), 50, r) / 64))
        pinned = getattr(store, "read_ranges_pinned", None)
        if pinned is not None:
            rows.append(("read_ranges_pinned (3 of a shard)", timed(lambda: pinned(reqs), n, r)))
        if not args.no_http:
            from servers import RangeServer

            with RangeServer(root=tmp) as srv:
                http = open_kvstore(srv.url + "/")
                m = 300
                rows.append(("HTTP read (32 KiB)", timed(lambda: http.read(key()), m, r)))
                rows.append(("HTTP read_range (4 KiB)", timed(lambda: http.read_range(key(), 0, 4096), m, r)))
                rows.append(("HTTP read_many (64) per key", timed(lambda: http.read_many(batch), 10, r) / 64))
    width = max(len(name) for name, _ in rows)
    for name, us in rows:
        print(f"{name:<{width}}  {us:9.2f} us")
    os.sys.stdout.flush()


if __name__ == "__main__":
    main()

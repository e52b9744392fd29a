"""Micro-benchmark of the store layer: the per-call cost of local-file reads, and of HTTP
reads on loopback (where retries, answer checks and generations add work per request).

    .venv/bin/python benchmarks/kvstore_bench.py                       # this checkout
    .venv/bin/python benchmarks/kvstore_bench.py --baseline cae4991    # side by side

``--baseline REV`` extracts ``src/precomputed/{kvstore,errors.py,internal}`` of a git
revision into a temporary package and times both stores in the same process, alternating
between them on every repeat, so machine noise hits both alike. Each number is the
*minimum* over ``--repeats`` runs of the mean time per call in microseconds (the least
disturbed run), on files in the page cache: it measures our overhead, not the disk. The
HTTP server runs in a child process (benchmarks/server_process.py), as in bench.py.
docs/stores.md quotes the numbers.

``--clients`` compares HTTP clients instead, side by side on 200 reads of 64 KiB objects
from the same server (``--latency``, default 20 ms): our ``HttpKvStore`` (fsspec's
aiohttp), obstore's ``HTTPStore`` (Rust object_store; only if ``obstore`` is installed,
it is not a dependency) and TensorStore's http kvstore, each from 32 threads (one read
per call) and as one batch (ours: ``read_many``/``read_ranges``; obstore: its async API
gathered on one asyncio loop; TensorStore: 200 futures). Wall time and the process's CPU
time per request, medians of ``--repeats`` runs; docs/performance.md quotes them.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def baseline_package(rev: str, into: Path) -> Any:
    """``precomputed.kvstore`` as of ``rev``, importable as ``kvbaseline.kvstore``."""
    pkg = into / "kvbaseline"
    pkg.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "src/precomputed/kvstore",
         "src/precomputed/errors.py", "src/precomputed/internal"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    for item in (into / "src" / "precomputed").iterdir():
        item.rename(pkg / item.name)
    (pkg / "__init__.py").write_text("")
    sys.path.insert(0, str(into))
    return importlib.import_module("kvbaseline.kvstore")


def per_call(fn: Callable[[], object], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def compare_clients(repeats: int, latency: float, n: int = 200, threads: int = 32) -> None:
    """The HTTP clients side by side (see the module docstring)."""
    import asyncio
    import resource
    import statistics
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import tensorstore as ts

    import precomputed.kvstore as kv
    from server_process import ServerProcess

    try:
        import obstore
        from obstore.store import HTTPStore
    except ImportError:
        obstore = None

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    blob = np.random.default_rng(0).integers(0, 255, 64 * 1024, dtype=np.uint8).tobytes()
    with tempfile.TemporaryDirectory() as tmp:
        keys = [f"k/{i}" for i in range(n)]
        writer = kv.FileKvStore(tmp)
        for k in keys:
            writer.write(k, blob)
        srv = ServerProcess(tmp, latency)
        loop = asyncio.new_event_loop()
        try:
            ours = kv.open_kvstore(srv.url + "/")
            theirs = ts.KvStore.open({"driver": "http", "base_url": srv.url, "path": "/"}).result()
            pool = ThreadPoolExecutor(threads)
            rows: list[tuple[str, Callable[[], object]]] = [
                (f"ours, {threads} threads, read", lambda: list(pool.map(ours.read, keys))),
                ("ours, batch, read_many", lambda: ours.read_many(keys)),
                (
                    "ours, batch, read_ranges (4 KiB)",
                    lambda: ours.read_ranges([(k, 0, 4096) for k in keys]),
                ),
            ]
            if obstore is not None:
                store = HTTPStore.from_url(srv.url + "/", client_options={"allow_http": True})

                # At most 32 requests in flight, as for ours and TensorStore (obstore
                # itself sets no limit).
                async def gathered() -> list[Any]:
                    sem = asyncio.Semaphore(threads)

                    async def one(k: str) -> Any:
                        async with sem:
                            return await (await obstore.get_async(store, k)).bytes_async()

                    return await asyncio.gather(*(one(k) for k in keys))

                async def gathered_ranges() -> list[Any]:
                    sem = asyncio.Semaphore(threads)

                    async def one(k: str) -> Any:
                        async with sem:
                            return await obstore.get_range_async(store, k, start=0, end=4096)

                    return await asyncio.gather(*(one(k) for k in keys))

                rows += [
                    (f"obstore, {threads} threads, get", lambda: list(pool.map(lambda k: obstore.get(store, k).bytes(), keys))),
                    ("obstore, batch, asyncio get", lambda: loop.run_until_complete(gathered())),
                    ("obstore, batch, asyncio get_range (4 KiB)", lambda: loop.run_until_complete(gathered_ranges())),
                ]  # fmt: skip
            rows.append(
                (
                    "TensorStore, batch, 200 futures",
                    lambda: [f.result() for f in [theirs.read(k) for k in keys]],
                )
            )
            width = max(len(name) for name, _ in rows)
            print(
                f"{n} reads of 64 KiB, {latency * 1e3:g} ms per request, median of {repeats} runs"
            )
            print(f"{'':<{width}}  {'wall ms':>8}  {'CPU us/request':>14}")
            for name, fn in rows:
                fn()  # warm: connections, pools
                walls, cpus = [], []
                for _ in range(repeats):
                    c0, t0 = cpu(), time.perf_counter()
                    fn()
                    walls.append(time.perf_counter() - t0)
                    cpus.append(cpu() - c0)
                wall, per = statistics.median(walls) * 1e3, statistics.median(cpus) / n * 1e6
                print(f"{name:<{width}}  {wall:8.1f}  {per:14.0f}")
            if obstore is None:
                print("(obstore not installed: pip install obstore for its rows)")
        finally:
            loop.close()
            srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", metavar="REV", help="also time the store of this git revision")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--no-http", action="store_true")
    ap.add_argument("--clients", action="store_true", help="compare HTTP clients (see above)")
    ap.add_argument("--latency", type=float, default=0.02, help="seconds per request (--clients)")
    args = ap.parse_args()
    if args.clients:
        compare_clients(min(args.repeats, 7), args.latency)
        return
    import numpy as np

    import precomputed.kvstore as current

    rng = np.random.default_rng(0)
    chunk = rng.integers(0, 255, 32 * 32 * 32, dtype=np.uint8).tobytes()  # a 32^3 raw chunk
    shard = rng.integers(0, 255, 4 << 20, dtype=np.uint8).tobytes()  # a 4 MiB shard
    with tempfile.TemporaryDirectory() as tmp:
        impls: dict[str, Any] = {"after": current}
        if args.baseline:
            impls = {"before": baseline_package(args.baseline, Path(tmp) / "pkg"), **impls}
        data = Path(tmp) / "data"
        writer = current.FileKvStore(data)
        keys = [f"8_8_8/{i * 32}-{i * 32 + 32}_0-32_0-32" for i in range(256)]
        for k in keys:
            writer.write(k, chunk)
        writer.write("8_8_8/0.shard", shard)
        buf = bytearray(len(chunk))
        reqs = [("8_8_8/0.shard", a, a + 64) for a in (0, 1 << 20, 2 << 20)]
        batch = keys[:64]
        counter = iter(range(1 << 62))

        def key() -> str:
            return keys[next(counter) % len(keys)]

        rows: list[tuple[str, int, int, Callable[[Any], Callable[[], object]]]] = [
            # (name, calls per run, keys per call, store -> call)
            ("read (32 KiB)", 2000, 1, lambda s: lambda: s.read(key())),
            (
                "read_with_generation (32 KiB)",
                2000,
                1,
                lambda s: lambda: s.read_with_generation(key()),
            ),
            ("read_into (32 KiB)", 2000, 1, lambda s: lambda: s.read_into(key(), buf)),
            ("read_range (4 KiB)", 2000, 1, lambda s: lambda: s.read_range(key(), 0, 4096)),
            ("read_ranges (3 x 64 B of a shard)", 2000, 1, lambda s: lambda: s.read_ranges(reqs)),
            ("read_many (64 x 32 KiB), per key", 40, 64, lambda s: lambda: s.read_many(batch)),
            (
                "read_ranges_pinned (3 x 64 B)",
                2000,
                1,
                lambda s: lambda: s.read_ranges_pinned(reqs),
            ),
        ]
        stores = {name: mod.FileKvStore(data) for name, mod in impls.items()}
        results: list[tuple[str, dict[str, float | None]]] = []
        for name, calls, per, make in rows:
            best: dict[str, float | None] = {}
            fns = {n: make(s) for n, s in stores.items() if name.split(" ")[0] in dir(s)}
            for f in fns.values():
                f()  # warm: page cache, memos, pools
            for r in range(args.repeats):
                order = list(fns) if r % 2 == 0 else list(reversed(fns))
                for n in order:
                    t = per_call(fns[n], calls) / per
                    best[n] = t if best.get(n) is None else min(t, best[n])  # type: ignore[type-var]
            results.append((name, {n: best.get(n) for n in impls}))
        if not args.no_http:
            from server_process import ServerProcess

            srv = ServerProcess(data, 0.0)
            try:
                http = {n: mod.open_kvstore(srv.url + "/") for n, mod in impls.items()}
                for name, calls, per, make in [
                    ("HTTP read (32 KiB)", 200, 1, lambda s: lambda: s.read(key())),
                    (
                        "HTTP read_range (4 KiB)",
                        200,
                        1,
                        lambda s: lambda: s.read_range(key(), 0, 4096),
                    ),
                    (
                        "HTTP read_many (64 x 32 KiB), per key",
                        5,
                        64,
                        lambda s: lambda: s.read_many(batch),
                    ),
                ]:
                    best = {}
                    fns = {n: make(s) for n, s in http.items()}
                    for f in fns.values():
                        f()
                    for r in range(max(3, args.repeats // 3)):
                        order = list(fns) if r % 2 == 0 else list(reversed(fns))
                        for n in order:
                            t = per_call(fns[n], calls) / per
                            best[n] = t if best.get(n) is None else min(t, best[n])  # type: ignore[type-var]
                    results.append((name, dict(best)))
            finally:
                srv.stop()
    width = max(len(name) for name, _ in results)
    names = list(impls)
    print(
        f"{'':<{width}}  "
        + "  ".join(f"{n:>9}" for n in names)
        + ("      ratio" if len(names) == 2 else "")
    )
    for name, times in results:
        cells = "  ".join(
            "        -" if times.get(n) is None else f"{times[n]:9.2f}" for n in names
        )
        ratio = ""
        if len(names) == 2 and all(times.get(n) for n in names):
            ratio = f"  {times[names[1]] / times[names[0]]:9.3f}"  # type: ignore[operator]
        print(f"{name:<{width}}  {cells}{ratio}")
    print("microseconds per call (per key for read_many); minimum over repeats")


if __name__ == "__main__":
    main()

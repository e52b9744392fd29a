"""Side-by-side timing of ``precomputed`` against TensorStore (and CloudVolume, if installed).

    .venv/bin/python benchmarks/bench.py            # full sizes, ~7 minutes on 2 cores
    .venv/bin/python benchmarks/bench.py --quick    # smaller, 3 repeats, no CloudVolume: < 60 s
    .venv/bin/python benchmarks/bench.py --only "c (" --no-http --profile "full read"
    .venv/bin/python benchmarks/bench.py --malloc-tuned   # see docs/performance.md

See docs/performance.md for the measured table and what the numbers mean.

TensorStore builds every volume in a temporary directory; then each workload runs on
every library in turn, alternating the order between repeats, each run on a freshly
opened handle with the decoded-chunk cache disabled (``Context(cache_bytes=0)`` here,
``{"cache_pool": {"total_bytes_limit": 0}}`` for TensorStore, no cache for CloudVolume).
Handle opening and volume creation are not timed, except in the HTTP "first plane"
workloads, which time open + read as a viewer would experience them. The table reports
the ratio of median times ours/TensorStore (< 1 means faster). Before timing, each
workload's results are checked to be identical across libraries (written volumes are
read back with TensorStore and compared with the source array).

Workloads:

a. 1024x1024x256 uint8 raw image (64^3 chunks, unsharded; 3 scales for the HTTP part)
b. 512x512x256 uint64 compressed_segmentation (block 8^3), 64^3 chunks, unsharded
c. the same segmentation sharded: murmurhash3_x86_128, gzip minishard index and data,
   8 shards; plus request counts and the peak memory of a transaction commit
d. the same volumes served over HTTP by ``tests/servers.py``'s RangeServer on 127.0.0.1
   (in a child process, see ``server_process.py``)
   with injected latency (20 ms), read through each library's HTTP store
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorstore as ts

import precomputed
from precomputed import Context

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from server_process import ServerProcess  # noqa: E402

try:  # optional third column
    # CloudVolume keeps secrets and caches under ~/.cloudvolume: keep this run's in /tmp.
    os.environ.setdefault(
        "CLOUD_VOLUME_DIR", os.path.join(tempfile.gettempdir(), "precomputed-bench-cloudvolume")
    )
    from cloudvolume import CloudVolume
except Exception:  # any import problem just drops the column
    CloudVolume = None

DRIVER = "neuroglancer_precomputed"
#: Keep freed memory in the process instead of returning it to the OS after every large
#: free: on VMs where page faults are expensive this speeds up both libraries a lot.
MALLOC_TUNING = {"MALLOC_MMAP_THRESHOLD_": "268435456", "MALLOC_TRIM_THRESHOLD_": "1073741824"}

# -- configuration ---------------------------------------------------------------------------


@dataclass
class Config:
    image_size: tuple[int, int, int] = (1024, 1024, 256)
    seg_size: tuple[int, int, int] = (512, 512, 256)
    chunk: tuple[int, int, int] = (64, 64, 64)
    repeats: int = 5
    random_chunks: int = 200
    threads: int = os.cpu_count() or 2  # our concurrent random-chunk reads, local files
    # ... over HTTP, where latency rather than CPU is the limit: as many threads as
    # TensorStore keeps requests in flight (its http_request_concurrency, 32), so both
    # sides may have as many requests under way (16 threads capped ours at half)
    http_threads: int = 32
    latency: float = 0.02
    http_sequential_chunks: int = 20
    shard_bits: int = 3
    minishard_bits: int = 2
    preshift_bits: int = 1
    plane_z: int = 100
    plane_y: int = 500
    image_scales: int = 3


def make_config(args: argparse.Namespace) -> Config:
    cfg = Config()
    if args.quick:
        cfg.image_size, cfg.seg_size = (512, 512, 128), (256, 256, 128)
        cfg.repeats, cfg.random_chunks, cfg.http_sequential_chunks = 3, 50, 10
        cfg.shard_bits, cfg.minishard_bits, cfg.preshift_bits = 3, 1, 0
    if args.smoke:
        cfg.image_size, cfg.seg_size, cfg.chunk = (128, 128, 64), (96, 64, 64), (32, 32, 32)
        cfg.repeats, cfg.random_chunks, cfg.threads, cfg.http_threads = 1, 8, 2, 4
        cfg.latency, cfg.http_sequential_chunks = 0.001, 4
        cfg.shard_bits, cfg.minishard_bits, cfg.preshift_bits = 2, 1, 0
        cfg.image_scales = 2
    if args.repeats:
        cfg.repeats = args.repeats
    if args.http_threads:
        cfg.http_threads = args.http_threads
    cfg.plane_z = min(cfg.plane_z, cfg.image_size[2] - 1, cfg.seg_size[2] - 1)
    cfg.plane_y = min(cfg.plane_y, cfg.image_size[1] - 1, cfg.seg_size[1] - 1)
    return cfg


# -- data and volumes (built with TensorStore) -----------------------------------------------


def image_data(size: tuple[int, int, int]) -> np.ndarray:
    """Noise: raw chunks do not compress, so this is the plain byte-moving case."""
    rng = np.random.default_rng(0)
    out = np.empty((*size, 1), np.uint8, order="F")
    for z in range(size[2]):
        out[:, :, z, 0] = rng.integers(0, 256, size[:2], dtype=np.uint8)
    return out


def segmentation_data(size: tuple[int, int, int]) -> np.ndarray:
    """Cells ~12 voxels across with wavy boundaries that drift with z: ~5 labels per
    8^3 block (compressed_segmentation keeps ~7% of the uint64 bytes), like real
    segmentations, with label values spread over 64 bits."""
    x = np.arange(size[0], dtype=np.int64)[:, None]
    y = np.arange(size[1], dtype=np.int64)[None, :]
    out = np.empty((*size, 1), np.uint64, order="F")
    for z in range(size[2]):
        wx = x + (5 * np.sin((y + 2 * z) / 9.0)).astype(np.int64) + z // 3
        wy = y + (4 * np.cos((x + z) / 7.0)).astype(np.int64)
        lab = wx // 11 + 1000 * (wy // 13) + 1000000 * ((z + (x // 17) % 3) // 9) + 1
        out[:, :, z, 0] = lab.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15 >> 8)
    return out


def ts_context() -> ts.Context:
    return ts.Context({"cache_pool": {"total_bytes_limit": 0}})


def file_spec(path: Path) -> dict[str, Any]:
    return {"driver": DRIVER, "kvstore": {"driver": "file", "path": str(path) + "/"}}


@dataclass
class VolumeDef:
    name: str
    data: np.ndarray
    create: dict[str, Any]  # multiscale + scale metadata for scale 0 (TensorStore JSON)
    sharded: bool = False
    extra_scales: list[tuple[dict[str, Any], np.ndarray]] = field(default_factory=list)


def volume_defs(cfg: Config) -> dict[str, VolumeDef]:
    img = image_data(cfg.image_size)
    seg = segmentation_data(cfg.seg_size)
    chunk = list(cfg.chunk)
    image_md = {"type": "image", "data_type": "uint8", "num_channels": 1}
    seg_md = {"type": "segmentation", "data_type": "uint64", "num_channels": 1}
    cseg = {"encoding": "compressed_segmentation", "compressed_segmentation_block_size": [8] * 3}
    a = VolumeDef(
        "a",
        img,
        {
            "multiscale_metadata": image_md,
            "scale_metadata": {
                "size": list(cfg.image_size), "resolution": [8, 8, 8], "encoding": "raw",
                "chunk_size": chunk,
            },
        },
    )  # fmt: skip
    for level in range(1, cfg.image_scales):
        f = 2**level
        down = np.asfortranarray(img[::f, ::f, ::f])
        a.extra_scales.append(
            (
                {"size": list(down.shape[:3]), "resolution": [8 * f] * 3, "encoding": "raw",
                 "chunk_size": chunk},
                down,
            )
        )  # fmt: skip
    b = VolumeDef(
        "b",
        seg,
        {
            "multiscale_metadata": seg_md,
            "scale_metadata": {"size": list(cfg.seg_size), "resolution": [8, 8, 8],
                               "chunk_size": chunk, **cseg},
        },
    )  # fmt: skip
    sharding = {
        "@type": "neuroglancer_uint64_sharded_v1",
        "hash": "murmurhash3_x86_128",
        "preshift_bits": cfg.preshift_bits,
        "minishard_bits": cfg.minishard_bits,
        "shard_bits": cfg.shard_bits,
        "minishard_index_encoding": "gzip",
        "data_encoding": "gzip",
    }
    c = VolumeDef(
        "c",
        seg,
        {
            "multiscale_metadata": seg_md,
            "scale_metadata": {**b.create["scale_metadata"], "sharding": sharding},
        },
        sharded=True,
    )
    return {"a": a, "b": b, "c": c}


def ts_create(path: Path, vdef: VolumeDef) -> ts.TensorStore:
    return ts.open(
        {**file_spec(path), **vdef.create}, create=True, delete_existing=True, context=ts_context()
    ).result()


def build(root: Path, vdef: VolumeDef) -> Path:
    path = root / vdef.name
    vol = ts_create(path, vdef)
    if vdef.sharded:
        with ts.Transaction() as txn:
            vol.with_transaction(txn)[...] = vdef.data
    else:
        vol[...] = vdef.data
    for scale_md, down in vdef.extra_scales:
        ts.open({**file_spec(path), "scale_metadata": scale_md}, create=True).result()[...] = down
    return path


# -- handles ---------------------------------------------------------------------------------


def open_ours(spec: dict[str, Any] | str, **kw: Any) -> precomputed.Volume:
    return precomputed.open(spec, context=Context(cache_bytes=0), **kw)


def open_ts(spec: dict[str, Any], **kw: Any) -> ts.TensorStore:
    return ts.open(spec, context=ts_context(), **kw).result()


def open_cv(url: str, **kw: Any) -> Any:
    return CloudVolume(url, fill_missing=True, progress=False, **kw)


def cv_url(path_or_url: Path | str) -> str:
    s = str(path_or_url)
    return s if "://" in s else "file://" + s


# -- timing ----------------------------------------------------------------------------------


@dataclass
class Side:
    """One library's run of a workload: ``setup() -> state`` (untimed), ``run(state) ->
    value`` (timed), ``teardown(state)`` (untimed)."""

    setup: Callable[[], Any]
    run: Callable[[Any], Any]
    teardown: Callable[[Any], None] | None = None


@dataclass
class Result:
    group: str
    name: str
    times: dict[str, list[float]]
    target: float | None = None
    note: str = ""
    skipped: dict[str, str] = field(default_factory=dict)
    #: Process CPU time of each timed run (every thread of ours and of TensorStore's
    #: pools; the HTTP server runs in a child process): a measure the load barely moves.
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def median(self, lib: str) -> float | None:
        t = self.times.get(lib)
        return statistics.median(t) if t else None

    def ratio(self, lib: str = "ours") -> float | None:
        a, b = self.median(lib), self.median("ts")
        return None if a is None or not b else a / b


class Bench:
    def __init__(self, cfg: Config, args: argparse.Namespace) -> None:
        self.cfg = cfg
        self.args = args
        self.results: list[Result] = []
        self.facts: dict[str, Any] = {}
        # CloudVolume's sharded reads are slow enough to break --quick's time budget.
        self.use_cv = CloudVolume is not None and (args.cv if args.quick else not args.no_cv)

    def selected(self, group: str, name: str) -> bool:
        only = self.args.only
        return not only or any(o in f"{group}: {name}" for o in only)

    def workload(
        self,
        group: str,
        name: str,
        sides: dict[str, Side | None],
        verify: Callable[[dict[str, Any], dict[str, Any]], None],
        target: float | None = None,
        note: str = "",
    ) -> Result | None:
        """Check the sides agree once, then time them alternately ``repeats`` times."""
        if not self.selected(group, name):
            return None
        label = f"{group}: {name}"
        active = {k: v for k, v in sides.items() if v is not None}
        if not self.use_cv:
            active.pop("cv", None)
        res = Result(group, name, {k: [] for k in active}, target, note)
        # Warm-up run of every side; results must agree.
        values: dict[str, Any] = {}
        states: dict[str, Any] = {}
        for lib in list(active):
            side = active[lib]
            try:
                states[lib] = side.setup()
                values[lib] = side.run(states[lib])
            except Exception as e:
                if lib != "cv":
                    raise
                res.skipped[lib] = f"{type(e).__name__}: {e}"[:200]
                del active[lib], res.times[lib]
                states.pop(lib, None)
        try:
            verify(values, states)
        except AssertionError as e:
            if "cv" in values and "cv" in str(e):
                res.skipped["cv"] = f"wrong result: {e}"[:200]
                del active["cv"], res.times["cv"]
            else:
                raise AssertionError(f"{label}: results differ: {e}") from None
        for lib, side in sides.items():
            if side is not None and side.teardown is not None and lib in states:
                side.teardown(states[lib])
        del values, states
        if self.args.profile and any(p in label for p in self.args.profile):
            self.profile(label, active["ours"])
        order = list(active)
        for r in range(self.cfg.repeats):
            shift = r % len(order)
            for lib in order[shift:] + order[:shift]:
                side = active[lib]
                state = side.setup()
                gc.collect()
                c0, t0 = time.process_time(), time.perf_counter()
                out = side.run(state)
                res.times[lib].append(time.perf_counter() - t0)
                res.cpu.setdefault(lib, []).append(time.process_time() - c0)
                del out
                if side.teardown is not None:
                    side.teardown(state)
                del state
        self.results.append(res)
        self.print_row(res)
        return res

    def profile(self, label: str, side: Side) -> None:
        """cProfile ours on every thread started during the run (pools of a fresh handle
        are new threads), merged: tottime shows where CPU time goes, cumtime the stages."""
        state = side.setup()
        profiles: list[cProfile.Profile] = []

        def start_in_thread(*_: Any) -> None:
            prof = cProfile.Profile()
            profiles.append(prof)
            prof.enable()  # replaces this hook for the rest of the thread's life

        main = cProfile.Profile()
        threading.setprofile(start_in_thread)
        try:
            main.enable()
            side.run(state)
            main.disable()
        finally:
            threading.setprofile(None)  # type: ignore[arg-type]
        if side.teardown is not None:
            side.teardown(state)
        stats = pstats.Stats(main)
        for prof in profiles:
            try:
                stats.add(prof)
            except TypeError:  # a thread that recorded nothing
                pass
        print(f"\n--- cProfile of ours, {label}: main + {len(profiles)} new threads ---")
        stats.strip_dirs().sort_stats("tottime").print_stats(self.args.profile_lines)
        stats.sort_stats("cumulative").print_stats(self.args.profile_lines)

    # -- output ----------------------------------------------------------------------------
    HEADER = (
        f"{'workload':<58} {'ours ms':>9} {'TS ms':>9} {'ours/TS':>8} {'target':>7} "
        f"{'':>4} {'CV/TS':>7}"
    )

    def print_row(self, r: Result) -> None:
        if not getattr(self, "_header_done", False):
            print(self.HEADER)
            print("-" * len(self.HEADER))
            self._header_done = True
        ours, tsm, ratio = r.median("ours"), r.median("ts"), r.ratio()
        target = f"<={r.target:g}" if r.target else ""
        status = "" if not r.target or ratio is None else ("ok" if ratio <= r.target else "MISS")
        cv = r.ratio("cv")
        cvs = f"{cv:7.2f}" if cv is not None else ("    n/a" if "cv" in r.skipped else "      -")
        print(
            f"{r.group + ': ' + r.name:<58} {1e3 * ours:9.1f} {1e3 * tsm:9.1f} {ratio:8.2f} "
            f"{target:>7} {status:>4} {cvs}",
            flush=True,
        )

    def summary(self) -> None:
        notes = dict.fromkeys(f"{r.name}: {r.note}" for r in self.results if r.note)
        if notes:
            print("\nnotes:")
            for n in notes:
                print(f"  {n}")
        skipped = [(r, lib, why) for r in self.results for lib, why in r.skipped.items()]
        if skipped:
            print("\nCloudVolume column n/a:")
            for r, _lib, why in skipped:
                print(f"  {r.group}: {r.name}: {why}")
        http = [r for r in self.results if r.group.startswith("d") and "ts" in r.cpu]
        if http:
            print("\nCPU time per run (median ms, this process; the server is another), ours / TS:")
            for r in http:
                ours, theirs = (statistics.median(r.cpu[k]) for k in ("ours", "ts"))
                print(f"  {r.group}: {r.name}: {1e3 * ours:.0f} / {1e3 * theirs:.0f}")
        if self.facts:
            print()
            for k, v in self.facts.items():
                print(f"{k}: {v}")
        misses = [r for r in self.results if r.target and (r.ratio() or 0) > r.target]
        print(
            f"\ntargets missed: {len(misses)}" + "".join(f"\n  {r.group}: {r.name}" for r in misses)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.cfg.__dict__,
            "results": [
                {
                    "group": r.group, "name": r.name, "target": r.target,
                    "median_s": {k: r.median(k) for k in r.times},
                    "ratio": r.ratio(), "cv_ratio": r.ratio("cv"), "skipped": r.skipped,
                    "cpu_median_s": {k: statistics.median(v) for k, v in r.cpu.items() if v},
                }
                for r in self.results
            ],
            "facts": self.facts,
        }  # fmt: skip


# -- verification helpers ----------------------------------------------------------------------


def same_arrays(values: dict[str, Any], expected: np.ndarray | None = None) -> None:
    ref = values["ts"] if expected is None else expected
    for lib, v in values.items():
        if isinstance(v, list):
            assert len(v) == len(ref), f"{lib}: {len(v)} results, expected {len(ref)}"
            for i, (a, b) in enumerate(zip(v, ref, strict=True)):
                _same(lib, np.asarray(a).reshape(np.shape(b)), b, f"[{i}]")
        else:
            _same(lib, np.asarray(v).reshape(np.shape(ref)), ref, "")


def _same(lib: str, a: np.ndarray, b: np.ndarray, what: str) -> None:
    assert a.dtype == b.dtype, f"{lib}{what}: dtype {a.dtype} != {b.dtype}"
    assert np.array_equal(a, b), f"{lib}{what}: {np.count_nonzero(a != b)} voxels differ"


def written_matches(expected: np.ndarray) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    def verify(values: dict[str, Any], states: dict[str, Any]) -> None:
        for lib, state in states.items():
            back = open_ts(file_spec(state["path"])).read(order="F").result()
            _same(lib, back, expected, " (read back by TensorStore)")

    return verify


# -- workloads -------------------------------------------------------------------------------


def chunk_boxes(
    size: tuple[int, int, int], chunk: tuple[int, int, int], n: int, seed: int = 1
) -> list[tuple[slice, slice, slice]]:
    grid = [-(-s // c) for s, c in zip(size, chunk, strict=True)]
    total = int(np.prod(grid))
    rng = np.random.default_rng(seed)
    flat = rng.choice(total, size=n, replace=n > total)
    out = []
    for f in flat:
        g = np.unravel_index(int(f), grid, order="F")
        out.append(
            tuple(
                slice(int(i) * c, min((int(i) + 1) * c, s))
                for i, c, s in zip(g, chunk, size, strict=True)
            )
        )
    return out


def reading_workloads(
    bench: Bench,
    group: str,
    vdef: VolumeDef,
    ours_target: str | dict[str, Any],
    ts_spec: dict[str, Any],
    cv_target: str,
    *,
    planes: bool = True,
    targets: dict[str, float] | None = None,
    note: str = "",
    threads: int | None = None,
) -> None:
    cfg = bench.cfg
    threads = threads or cfg.threads
    targets = targets or {}
    size = tuple(vdef.data.shape[:3])
    z, y = cfg.plane_z, cfg.plane_y

    def sides(
        ours: Callable[[Any], Any], tsf: Callable[[Any], Any], cvf: Callable[[Any], Any] | None
    ) -> dict[str, Side | None]:
        return {
            "ours": Side(lambda: open_ours(ours_target), ours),
            "ts": Side(lambda: open_ts(ts_spec), tsf),
            "cv": None if cvf is None else Side(lambda: open_cv(cv_target), cvf),
        }

    def check(values: dict[str, Any], states: dict[str, Any]) -> None:
        same_arrays(values)

    full = vdef.data
    bench.workload(
        group, "full read",
        sides(lambda v: v.read(), lambda t: t.read(order="F").result(), lambda c: c[:, :, :]),
        lambda values, states: same_arrays(values, full),
        targets.get("full read"), note,
    )  # fmt: skip
    if planes:
        bench.workload(
            group, f"z-plane (z={z})",
            sides(lambda v: v[:, :, z, :].read(),
                  lambda t: t[:, :, z, :].read(order="F").result(),
                  lambda c: c[:, :, z : z + 1]),
            check, targets.get("z-plane"),
        )  # fmt: skip
        bench.workload(
            group, f"xz-plane (y={y})",
            sides(lambda v: v[:, y, :, :].read(),
                  lambda t: t[:, y, :, :].read(order="F").result(),
                  lambda c: c[:, y : y + 1, :]),
            check, targets.get("xz-plane"),
        )  # fmt: skip
    boxes = chunk_boxes(size, cfg.chunk, cfg.random_chunks)
    n = len(boxes)

    def ours_seq(v: Any) -> list[np.ndarray]:
        return [v[bx, by, bz, :].read() for bx, by, bz in boxes]

    def ts_seq(t: Any) -> list[np.ndarray]:
        return [t[bx, by, bz, :].read(order="F").result() for bx, by, bz in boxes]

    def cv_seq(c: Any) -> list[np.ndarray]:
        return [c[bx, by, bz] for bx, by, bz in boxes]

    def ours_conc(v: Any) -> list[np.ndarray]:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(lambda b: v[b[0], b[1], b[2], :].read(), boxes))

    def ts_conc(t: Any) -> list[np.ndarray]:
        futures = [t[bx, by, bz, :].read(order="F") for bx, by, bz in boxes]
        return [f.result() for f in futures]

    if not group.startswith("d"):
        bench.workload(
            group, f"{n} random chunks, one call each",
            sides(ours_seq, ts_seq, cv_seq), check, targets.get("random"),
        )  # fmt: skip
    bench.workload(
        group, f"{n} random chunks, concurrent",
        sides(ours_conc, ts_conc, None), check, targets.get("random"),
        note=f"ours: {threads} threads calling read(); TensorStore: {n} futures at once",
    )  # fmt: skip

    def ours_batch(v: Any) -> list[np.ndarray]:
        return precomputed.read_many([v[bx, by, bz, :] for bx, by, bz in boxes])

    bench.workload(
        group, f"{n} random chunks, batched",
        sides(ours_batch, ts_conc, None), check, targets.get("random"),
        note=f"ours: one precomputed.read_many of {n} views; TensorStore: {n} futures at once",
    )  # fmt: skip


def write_workload(
    bench: Bench, group: str, root: Path, vdef: VolumeDef, transaction: bool, target: float
) -> None:
    counter = iter(range(10**6))

    def fresh(lib: str) -> Callable[[], dict[str, Any]]:
        def setup() -> dict[str, Any]:
            path = root / f"write-{vdef.name}-{lib}-{next(counter)}"
            handle: Any
            if lib == "ours":
                handle = precomputed.open(
                    {**file_spec(path), **vdef.create}, create=True, context=Context(cache_bytes=0)
                )
            elif lib == "ts":
                handle = ts_create(path, vdef)
            else:
                ts_create(path, vdef)
                handle = CloudVolume(
                    cv_url(path), progress=False, compress=False, delete_black_uploads=True
                )
            return {"path": path, "handle": handle}

        return setup

    def teardown(state: dict[str, Any]) -> None:
        shutil.rmtree(state["path"], ignore_errors=True)

    data = vdef.data

    def ours(state: dict[str, Any]) -> None:
        vol = state["handle"]
        if transaction:
            with vol.transaction():
                vol[...] = data
        else:
            vol[...] = data

    def tsw(state: dict[str, Any]) -> None:
        vol = state["handle"]
        if transaction:
            with ts.Transaction() as txn:
                vol.with_transaction(txn)[...] = data
        else:
            vol[...] = data

    def cvw(state: dict[str, Any]) -> None:
        state["handle"][:, :, :] = data

    name = "full write" + (" (one transaction)" if transaction else "")
    bench.workload(
        group,
        name,
        {
            "ours": Side(fresh("ours"), ours, teardown),
            "ts": Side(fresh("ts"), tsw, teardown),
            "cv": None if vdef.sharded else Side(fresh("cv"), cvw, teardown),
        },
        written_matches(data),
        target,
    )


def request_counts(bench: Bench, path: Path, vdef: VolumeDef) -> None:
    """Requests for a cold and a warm single-chunk read of the sharded volume."""
    cfg = bench.cfg
    box = chunk_boxes(tuple(vdef.data.shape[:3]), cfg.chunk, 2, seed=7)
    bx, by, bz = box[0]
    vol = open_ours(file_spec(path))
    stats = vol.kvstore.stats
    before = sum(stats.values())
    chunk = vol[bx, by, bz, :].read()
    cold = sum(stats.values()) - before
    before = sum(stats.values())
    again = vol[bx, by, bz, :].read()
    warm = sum(stats.values()) - before
    assert np.array_equal(chunk, vdef.data[bx, by, bz, :]) and np.array_equal(chunk, again)
    bench.facts["c: requests, cold single-chunk read (ours)"] = f"{cold} (expect <= 3)"
    bench.facts["c: requests, warm single-chunk read (ours, cache_bytes=0)"] = f"{warm} (expect 1)"


def commit_memory(bench: Bench, root: Path, vdef: VolumeDef, shard_dir: Path) -> None:
    """Peak Python/numpy memory allocated by a transaction commit, vs the largest shard."""
    path = root / "memory-c"
    vol = precomputed.open(
        {**file_spec(path), **vdef.create}, create=True, context=Context(cache_bytes=0)
    )
    txn = precomputed.Transaction()
    vol.with_transaction(txn)[...] = vdef.data  # buffered: decoded chunks held by txn
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    txn.commit()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    back = open_ts(file_spec(path)).read(order="F").result()
    assert np.array_equal(back, vdef.data), "transaction commit wrote wrong data"
    shards = [p for p in (path / vol.scale.key).iterdir() if p.suffix == ".shard"]
    largest = max(p.stat().st_size for p in shards)
    # Decoded bytes of the largest shard: its chunk count times a chunk's bytes.
    store = vol._h.store  # geometry only
    per_shard = np.bincount(store.placement(list(vol._h.grid.cells(vol._h.grid.bounds)))[1])
    decoded = int(per_shard.max()) * int(np.prod(bench.cfg.chunk)) * vdef.data.itemsize
    bench.facts["c: shards"] = (
        f"{len(shards)} files, largest {largest / 2**20:.2f} MiB stored, "
        f"{decoded / 2**20:.0f} MiB decoded "
        f"(reference volume: {len(list((shard_dir / vol.scale.key).iterdir()))} files)"
    )
    bench.facts["c: transaction commit peak memory"] = (
        f"{peak / 2**20:.1f} MiB = {peak / largest:.1f}x the largest shard file = "
        f"{peak / decoded:.2f}x its decoded size (tracemalloc, allocations during commit(); "
        f"the {vdef.data.nbytes / 2**20:.0f} MiB of buffered decoded chunks are not counted)"
    )
    shutil.rmtree(path, ignore_errors=True)


# -- HTTP ------------------------------------------------------------------------------------


def http_workloads(bench: Bench, root: Path, defs: dict[str, VolumeDef]) -> None:
    cfg = bench.cfg
    # In a child process, as a real server would be: see server_process.py.
    server = ServerProcess(root, cfg.latency)
    try:
        base = server.url
        group = f"d (HTTP {cfg.latency * 1e3:g} ms"

        def ts_http(name: str, **extra: Any) -> dict[str, Any]:
            return {
                "driver": DRIVER,
                "kvstore": {"driver": "http", "base_url": base, "path": f"/{name}/"},
                **extra,
            }

        a = defs["a"]
        z = cfg.plane_z
        last = len(a.extra_scales)
        for label, index, data in [
            ("finest", 0, a.data),
            ("coarsest", last, a.extra_scales[-1][1] if last else a.data),
        ]:
            zi = min(z // 2**index, data.shape[2] - 1)

            def ours(_: Any, index: int = index, zi: int = zi) -> np.ndarray:
                return open_ours(f"{base}/a/", scale_index=index)[:, :, zi, :].read()

            def tsr(_: Any, index: int = index, zi: int = zi) -> np.ndarray:
                t = open_ts(ts_http("a", scale_index=index))
                return t[:, :, zi, :].read(order="F").result()

            def cvr(_: Any, index: int = index, zi: int = zi) -> np.ndarray:
                return open_cv(f"precomputed://{base}/a", mip=index)[:, :, zi : zi + 1]

            want = data[:, :, zi, :]
            bench.workload(
                f"{group}, a)", f"open + first z-plane, {label} ({'x'.join(map(str, data.shape[:3]))})",
                {"ours": Side(lambda: None, ours), "ts": Side(lambda: None, tsr),
                 "cv": Side(lambda: None, cvr)},
                lambda values, states, want=want: same_arrays(values, want),
            )  # fmt: skip
        for name in ("b", "c"):
            reading_workloads(
                bench, f"{group}, {name})", defs[name], f"{base}/{name}/", ts_http(name),
                f"precomputed://{base}/{name}", planes=False, threads=cfg.http_threads,
            )  # fmt: skip
        c = defs["c"]
        boxes = chunk_boxes(tuple(c.data.shape[:3]), cfg.chunk, cfg.http_sequential_chunks, 3)
        bench.workload(
            f"{group}, c)", f"{len(boxes)} random chunks, one call each",
            {"ours": Side(lambda: open_ours(f"{base}/c/"),
                          lambda v: [v[x, y, z, :].read() for x, y, z in boxes]),
             "ts": Side(lambda: open_ts(ts_http("c")),
                        lambda t: [t[x, y, z, :].read(order="F").result() for x, y, z in boxes]),
             "cv": Side(lambda: open_cv(f"precomputed://{base}/c"),
                        lambda v: [v[x, y, z] for x, y, z in boxes])},
            lambda values, states: same_arrays(values),
        )  # fmt: skip
        http_request_counts(bench, server, base, c, ts_http)
    finally:
        server.stop()


def http_request_counts(
    bench: Bench, server: ServerProcess, base: str, c: VolumeDef, ts_http: Callable[..., Any]
) -> None:
    box = chunk_boxes(tuple(c.data.shape[:3]), bench.cfg.chunk, 1, seed=11)[0]
    want = c.data[box[0], box[1], box[2], :]

    def gets() -> int:
        return sum(
            1 for method, p, _ in server.requests if method == "GET" and p.endswith(".shard")
        )

    rows = {
        "ours (cache_bytes=0)": lambda: open_ours(f"{base}/c/"),
        "TensorStore (cache 0)": lambda: open_ts(ts_http("c")),
        # TensorStore revalidates cached data on every read unless told otherwise.
        "TensorStore (64 MiB cache, recheck_cached_data=open)": lambda: ts.open(
            ts_http("c", recheck_cached_data="open"),
            context=ts.Context({"cache_pool": {"total_bytes_limit": 64 << 20}}),
        ).result(),
    }
    for label, opener in rows.items():
        vol = opener()
        counts = []
        for _ in range(2):
            server.clear_log()
            view = vol[box[0], box[1], box[2], :]
            out = view.read() if label.startswith("ours") else view.read(order="F").result()
            assert np.array_equal(out, want)
            counts.append(gets())
        bench.facts[f"d: shard requests, single chunk cold/warm, {label}"] = "/".join(
            map(str, counts)
        )


# -- main ------------------------------------------------------------------------------------


@contextmanager
def workdir(keep: str | None) -> Iterator[Path]:
    if keep:
        path = Path(keep)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="precomputed-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller volumes, 3 repeats (< 60 s)")
    p.add_argument("--smoke", action="store_true", help="tiny volumes, 1 repeat (for tests)")
    p.add_argument("--repeats", type=int, help="timed runs per library and workload")
    p.add_argument("--only", action="append", help="substring of 'group: workload' (repeatable)")
    p.add_argument("--no-http", action="store_true", help="skip the HTTP workloads (d)")
    p.add_argument(
        "--http-threads", type=int, help="threads calling read() in the HTTP concurrent rows"
    )
    p.add_argument("--no-cv", action="store_true", help="leave CloudVolume out")
    p.add_argument("--cv", action="store_true", help="include CloudVolume with --quick")
    p.add_argument(
        "--malloc-tuned",
        action="store_true",
        help=f"rerun under {' '.join(f'{k}={v}' for k, v in MALLOC_TUNING.items())}",
    )
    p.add_argument("--profile", action="append", help="cProfile ours on matching workloads")
    p.add_argument("--profile-lines", type=int, default=25, help="rows of each profile table")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--workdir", help="build volumes here (kept) instead of a temp dir")
    args = p.parse_args(argv)
    if args.malloc_tuned and any(os.environ.get(k) != v for k, v in MALLOC_TUNING.items()):
        # glibc reads these at start-up only: re-execute with them set.
        env = {**os.environ, **MALLOC_TUNING}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    cfg = make_config(args)
    bench = Bench(cfg, args)
    t_start = time.perf_counter()
    load = os.getloadavg()[0]
    tuned = all(os.environ.get(k) == v for k, v in MALLOC_TUNING.items())
    print(
        f"precomputed {precomputed.__version__}, tensorstore {_version('tensorstore')}, "
        f"cloud-volume {'not installed' if CloudVolume is None else _version('cloud-volume')}, "
        f"{os.cpu_count()} cores; image {cfg.image_size} uint8, segmentation {cfg.seg_size} "
        f"uint64, chunks {cfg.chunk}; median of {cfg.repeats} alternating runs; "
        f"load average {load:.2f}; glibc malloc {'tuned' if tuned else 'default'}"
    )
    if load > 0.5:
        print("warning: the machine is busy; ratios are noisier than usual")
    defs = volume_defs(cfg)
    with workdir(args.workdir) as root:
        paths = {k: build(root, v) for k, v in defs.items()}
        c_shard = sum(1 for f in (paths["c"] / scale_key(paths["c"])).iterdir())
        print(f"built volumes in {time.perf_counter() - t_start:.1f} s under {root}\n")
        unsharded_targets = {"full read": 1.5, "z-plane": 2.0}
        for name, group in [("a", "a (raw uint8)"), ("b", "b (cseg uint64)")]:
            path = paths[name]
            reading_workloads(
                bench, group, defs[name], file_spec(path), file_spec(path), cv_url(path),
                targets=unsharded_targets,
            )  # fmt: skip
            write_workload(bench, group, root, defs[name], False, 1.5)
        group = f"c (cseg sharded, {c_shard} shards)"
        reading_workloads(
            bench, group, defs["c"], file_spec(paths["c"]), file_spec(paths["c"]),
            cv_url(paths["c"]), planes=True, targets={"full read": 1.5},
        )  # fmt: skip
        write_workload(bench, group, root, defs["c"], True, 1.5)
        if bench.selected("c", "requests") or not args.only:
            request_counts(bench, paths["c"], defs["c"])
        if bench.selected("c", "memory") or not args.only:
            commit_memory(bench, root, defs["c"], paths["c"])
        if not args.no_http:
            http_workloads(bench, root, defs)
    bench.summary()
    print(
        f"\ntotal {time.perf_counter() - t_start:.1f} s, "
        f"load average {load:.2f} at start, {os.getloadavg()[0]:.2f} at end"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(bench.to_json(), indent=2))
    return 0


def scale_key(path: Path) -> str:
    return json.loads((path / "info").read_text())["scales"][0]["key"]


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    sys.exit(main())

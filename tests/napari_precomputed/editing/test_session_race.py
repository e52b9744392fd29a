"""Two edit sessions committing at the same moment, round after round (workers in
session_worker.py): disjoint edits of one chunk both survive, edits of the same voxels
are reported as a conflict by exactly one side (the later commit, whose values win), and
nothing is left dirty. Two processes on local files; two threads on the memory store
(each session with its own context, or both in the default one); a round each on the
GCS emulator and moto S3, with their real preconditions."""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import session_worker as w
from edit_cases import labels_xyz
from napari_volumes import SHARDING, ts_read

import precomputed

pytestmark = pytest.mark.timeout(240)

#: Rounds of each kind: a 5% rate of lost edits would show in ~(1 - 0.95**40) = 87% of
#: runs per layout, in ~98% over both.
ROUNDS = 20


def race(
    path: Path | str,
    rounds: list[str],
    open_options: dict[str, Any] | None = None,
    *,
    threads: bool = False,
    stored: Callable[[], np.ndarray] | None = None,
) -> list[str]:
    """Run the two workers (processes, or threads) over ``rounds``; check storage
    (``stored()``: x, y, z, c; default TensorStore's read) after every round. Returns
    one line per round that went wrong."""
    if threads:
        # napari's units (pint) load lazily and not thread-safely: load them here first,
        # as a napari session would on its UI thread.
        from napari.components import ViewerModel
        from napari.layers import Labels

        ViewerModel().add_layer(Labels(np.zeros((2, 2, 2), np.uint8), units=("nm",) * 3))
        barrier: Any = threading.Barrier(3)
        results: Any = queue.Queue()
        procs: list[Any] = [
            threading.Thread(target=w.run, args=(str(path), who, rounds, barrier, results, open_options))
            for who in (0, 1)
        ]
    else:
        ctx = mp.get_context("spawn")
        barrier = ctx.Barrier(3)
        results = ctx.Queue()
        procs = [
            ctx.Process(target=w.run, args=(str(path), who, rounds, barrier, results, open_options))
            for who in (0, 1)
        ]
    if stored is None:
        stored = lambda: ts_read(Path(path), 0)[0]  # noqa: E731
    for p in procs:
        p.start()
    failures: list[str] = []
    stored_before = stored()
    try:
        for rnd, mode in enumerate(rounds):
            barrier.wait(120)  # round starts
            barrier.wait(60)  # both painted
            reports = dict(results.get(timeout=60)[::2] for _ in (0, 1))
            now = stored()
            zyx = now[..., 0].transpose(2, 1, 0)
            expected = stored_before[..., 0].transpose(2, 1, 0).copy()
            problems = [f"{who}: {r['error']}" for who, r in reports.items() if "error" in r]
            problems += [f"{who}: {r['dirty']} chunks left dirty" for who, r in reports.items() if r.get("dirty")]
            for who in (0, 1):
                expected[w.OWN[who]] = w.value(who, rnd)
            if mode == "overlap":
                winners = [
                    who
                    for who, r in reports.items()
                    if [v for _, v in r.get("conflicts", [])] == [w.BOTH_VOXELS]
                ]
                if len(winners) != 1:
                    problems.append(f"conflicts reported: {reports}")
                else:
                    expected[w.BOTH] = w.value(winners[0], rnd)
                    told = f"{w.BOTH_VOXELS} voxels both changed keep this commit's labels"
                    if told not in reports[winners[0]].get("summary", ""):
                        problems.append(f"the dock is not told: {reports[winners[0]].get('summary')!r}")
            else:
                conflicting = [r["conflicts"] for r in reports.values() if any(v for _, v in r.get("conflicts", []))]
                if conflicting:
                    problems.append(f"disjoint edits reported conflicting voxels: {conflicting}")
            lost = {
                who: int(np.count_nonzero(zyx[w.OWN[who]] != w.value(who, rnd))) for who in (0, 1)
            }
            if any(lost.values()):
                problems.append(f"voxels lost: {lost}")
            if not np.array_equal(zyx, expected):
                problems.append(f"{int(np.count_nonzero(zyx != expected))} voxels not as expected")
            if problems:
                failures.append(f"round {rnd} ({mode}): " + "; ".join(problems))
            stored_before = now
            barrier.wait(60)  # checked: next round
    finally:
        for p in procs:
            p.join(60)
            if not threads and p.is_alive():
                p.kill()
    if not threads:
        assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return failures


def make_volume(url: str, sharded: bool, **open_options: Any) -> Callable[[], np.ndarray]:
    """A labels volume like the ``seg`` fixture's scale 0, made by this driver at
    ``url``; returns a reader of what is stored (a fresh context each time)."""
    data = labels_xyz()
    scale: dict[str, Any] = {
        "size": list(data.shape[:3]),
        "chunk_size": [16, 16, 4],
        "encoding": "raw",
        "resolution": [4, 4, 40],
    }
    if sharded:
        scale["sharding"] = SHARDING
    vol = precomputed.open(
        url,
        create=True,
        multiscale_metadata={"type": "segmentation", "data_type": "uint64", "num_channels": 1},
        scale_metadata=scale,
        context=precomputed.Context(),
        **open_options,
    )
    vol[...] = data
    return lambda: precomputed.open(url, context=precomputed.Context(), **open_options).read()


@pytest.mark.parametrize("sharded", [True, False], ids=["sharded", "unsharded"])
def test_two_sessions_in_two_processes_committing_at_once_lose_nothing(
    seg: Callable[..., Path], sharded: bool
) -> None:
    path = seg(sharded)
    rounds = ["disjoint", "overlap"] * ROUNDS
    failures = race(path, rounds)
    assert not failures, f"{len(failures)} of {len(rounds)} rounds failed:\n" + "\n".join(failures)


@pytest.mark.parametrize("shared", [False, True], ids=["own-contexts", "default-context"])
@pytest.mark.parametrize("sharded", [True, False], ids=["sharded", "unsharded"])
def test_two_sessions_in_two_threads_on_the_memory_store_lose_nothing(
    memory_store: Any, sharded: bool, shared: bool
) -> None:
    url = memory_store.url + "seg"
    stored = make_volume(url, sharded)
    rounds = ["disjoint", "overlap"] * (ROUNDS // 2)
    options = None if shared else {"context": "own"}
    failures = race(url, rounds, options, threads=True, stored=stored)
    assert not failures, f"{len(failures)} of {len(rounds)} rounds failed:\n" + "\n".join(failures)


@pytest.mark.parametrize("backend", ["gcs", "s3"])
def test_two_sessions_committing_at_once_on_gcs_and_s3(
    request: pytest.FixtureRequest, backend: str
) -> None:
    bucket = request.getfixturevalue(f"{backend}_bucket")
    options = {"storage_options": request.getfixturevalue(f"{backend}_storage_options")}
    url = f"{'gs' if backend == 'gcs' else 's3'}://{bucket}/seg"
    stored = make_volume(url, sharded=True, **options)
    failures = race(url, ["disjoint", "overlap"], {**options, "context": "own"}, threads=True, stored=stored)
    assert not failures, "\n".join(failures)

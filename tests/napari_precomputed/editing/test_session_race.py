"""Two edit sessions in two processes committing at the same moment, round after round
(workers in session_worker.py): disjoint edits of one chunk both survive, edits of the
same voxels are reported as a conflict by exactly one side (the later commit, whose
values win), and nothing is left dirty."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import session_worker as w
from napari_volumes import ts_read

pytestmark = pytest.mark.timeout(240)

#: Rounds of each kind: a 5% rate of lost edits would show in ~(1 - 0.95**40) = 87% of
#: runs per layout, in ~98% over both.
ROUNDS = 20


def race(path: Path, rounds: list[str], open_options: dict[str, Any] | None = None) -> list[str]:
    """Run the two workers over ``rounds``; check storage after every round. Returns
    one line per round that went wrong."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(3)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=w.run, args=(str(path), who, rounds, barrier, results, open_options))
        for who in (0, 1)
    ]
    for p in procs:
        p.start()
    failures: list[str] = []
    stored_before, _ = ts_read(path, 0)
    try:
        for rnd, mode in enumerate(rounds):
            barrier.wait(120)  # round starts
            barrier.wait(60)  # both painted
            reports = dict(results.get(timeout=60)[::2] for _ in (0, 1))
            stored, _ = ts_read(path, 0)
            zyx = stored[..., 0].transpose(2, 1, 0)
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
            stored_before = stored
            barrier.wait(60)  # checked: next round
    finally:
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return failures


@pytest.mark.parametrize("sharded", [True, False], ids=["sharded", "unsharded"])
def test_two_sessions_in_two_processes_committing_at_once_lose_nothing(
    seg: Callable[..., Path], sharded: bool
) -> None:
    path = seg(sharded)
    rounds = ["disjoint", "overlap"] * ROUNDS
    failures = race(path, rounds)
    assert not failures, f"{len(failures)} of {len(rounds)} rounds failed:\n" + "\n".join(failures)

"""Keep ``benchmarks/bench.py`` from rotting: run it on tiny volumes (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorstore")

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"


def test_bench_smoke_runs_every_workload_and_checks_results(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ours/TS" in proc.stdout
    results = json.loads(out.read_text())
    names = {f"{r['group']}: {r['name']}" for r in results["results"]}
    for expected in ("full read", "z-plane", "full write", "one transaction", "HTTP"):
        assert any(expected in n for n in names), (expected, sorted(names))
    assert all(r["ratio"] is not None for r in results["results"])
    facts = results["facts"]
    assert facts["c: requests, cold single-chunk read (ours)"].startswith(("1 ", "2 ", "3 "))
    assert facts["c: requests, warm single-chunk read (ours, cache_bytes=0)"].startswith("1 ")

"""Keep ``benchmarks/bench_meshes.py`` from rotting: run it on a tiny segmentation (no
timing asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("igneous")
pytest.importorskip("DracoPy")

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_meshes.py"


def test_bench_meshes_smoke(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--size", "48", "--keep", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for line in ("ratio ours/igneous", "round trips", "ratio ours/cloudvolume"):
        assert line in proc.stdout, proc.stdout

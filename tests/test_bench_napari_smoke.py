"""Keep ``benchmarks/bench_napari.py`` from rotting: its ``--smoke`` mode (tiny data, one
run, one napari process) in a real window under Xvfb. No timing is asserted: only that
the table is printed and every action of every case completed with data on screen."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("napari")
pytest.importorskip("napari_ome_zarr")
pytest.importorskip("zarr")

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_napari.py"
ACTIONS = ("first view", "z-step, same chunk", "z-step, new chunk", "zoom across a level", "pan",
           "first view, warm")  # fmt: skip


@pytest.mark.qt
@pytest.mark.skipif(
    not os.environ.get("DISPLAY") and shutil.which("Xvfb") is None,
    reason="needs an X display or Xvfb (OpenGL for a real viewer)",
)
def test_napari_bench_smoke_completes_every_action_with_data_on_screen(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = dict(os.environ)
    if env.get("QT_QPA_PLATFORM") == "offscreen":  # the conftest's fallback: no GL there
        del env["QT_QPA_PLATFORM"]
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--workdir", str(tmp_path / "work"),
         "--json", str(out)],
        capture_output=True, text=True, timeout=240, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "| where | slicing | action | ours (s) | napari-ome-zarr (s) | ours/ome-zarr" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("| local", "| remote"))]
    assert len(rows) == 2 * 2 * len(ACTIONS), rows
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[3] != "–" and cells[4] != "–", row  # both readers timed
    assert "info reads per open" in proc.stdout

    results = json.loads(out.read_text())
    assert not any(results["problems"].values()), results["problems"]
    runs = results["runs"]
    cases = {(r["case"]["reader"], r["case"]["location"], r["case"]["mode"]) for r in runs}
    assert len(cases) == 8, cases
    for run in runs:
        result = run["result"]
        assert [a["action"] for a in result["actions"]] == list(ACTIONS)
        for action in result["actions"]:
            assert action["ok"] and action["data_nonzero"], (run["case"], action)
            assert all(action["updates"].values()), (run["case"], action)
        assert result["screenshot"]["ok"], (run["case"], result["screenshot"])
        if run["case"]["location"] == "remote":
            first = run["requests"]["first view"]
            assert first["requests"] > 0 and first["rounds"] > 0
            assert max(first["needed_rounds"].values()) >= 2

"""The ``precomputed`` command line: ``info`` and ``demo --no-viewer``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorstore as ts

import precomputed
from precomputed.cli import main
from servers import RangeServer

DRIVER = "neuroglancer_precomputed"


@pytest.fixture
def two_scale_volume(tmp_path: Path) -> Path:
    path = tmp_path / "vol"
    base = {
        "driver": DRIVER,
        "kvstore": {"driver": "file", "path": str(path) + "/"},
        "multiscale_metadata": {"type": "segmentation", "data_type": "uint32", "num_channels": 1},
    }
    ts.open(
        {
            **base,
            "scale_metadata": {
                "size": [37, 29, 11],
                "voxel_offset": [-5, 3, -2],
                "resolution": [4, 4, 40],
                "chunk_size": [16, 16, 8],
                "encoding": "compressed_segmentation",
                "compressed_segmentation_block_size": [8, 8, 8],
            },
        },
        create=True,
    ).result()
    ts.open(
        {
            **base,
            "scale_metadata": {
                "key": "coarse/s1",
                "size": [19, 15, 11],
                "resolution": [8, 8, 40],
                "chunk_size": [8, 8, 8],
                "encoding": "raw",
            },
        },
        create=True,
    ).result()
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("form", ["path", "file-url", "precomputed-url"])
def test_info_prints_a_table_of_scales(
    two_scale_volume: Path, capsys: pytest.CaptureFixture[str], form: str
) -> None:
    target = {
        "path": str(two_scale_volume),
        "file-url": f"file://{two_scale_volume}",
        "precomputed-url": f"precomputed://file://{two_scale_volume}",
    }[form]
    code, out, err = run(capsys, "info", target)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == target
    assert "type: segmentation" in lines[1] and "data_type: uint32" in lines[1]
    assert "scales: 2" in lines[1]
    header = lines[2].split()
    assert header[:2] == ["#", "key"] and "encoding" in header
    rows = [line.split() for line in lines[3:]]
    assert [r[:2] for r in rows] == [["0", "4_4_40"], ["1", "coarse/s1"]]
    assert rows[0][2:6] == ["37x29x11", "-5,3,-2", "4,4,40", "16x16x8"]
    assert "cseg" in lines[3] and "8x8x8" in lines[3]
    assert rows[1][-2:] == ["raw", "-"]


def test_info_json_prints_the_info_file(
    two_scale_volume: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "info", "--json", str(two_scale_volume))
    assert code == 0
    assert json.loads(out) == json.loads((two_scale_volume / "info").read_text())


def test_info_over_http(
    two_scale_volume: Path, http_server: RangeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    http_server.root = two_scale_volume.parent
    code, out, _ = run(capsys, "info", f"precomputed://{http_server.url}/vol")
    assert code == 0
    assert "4_4_40" in out and "coarse/s1" in out


def test_info_errors_are_messages_not_tracebacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "info", str(tmp_path / "missing"))
    assert code == 1 and out == ""
    assert err.startswith("error:") and "missing" in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "info").write_text("{not json")
    code, _, err = run(capsys, "info", str(tmp_path / "bad"))
    assert code == 1
    assert err.startswith("error:") and "Invalid JSON" in err


def test_console_script_is_installed(two_scale_volume: Path) -> None:
    exe = Path(sys.executable).with_name("precomputed")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "precomputed.cli"]
    res = subprocess.run(
        [*cmd, "info", str(two_scale_volume)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert "coarse/s1" in res.stdout


def test_version_is_the_installed_distribution_version(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from importlib.metadata import version

    assert precomputed.__version__ == version("napari-precomputed")
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"precomputed {precomputed.__version__}\n"
    exe = Path(sys.executable).with_name("precomputed")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "precomputed.cli"]
    res = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"precomputed {precomputed.__version__}\n"


def test_info_on_gcs_with_the_endpoint_from_the_environment(
    gcs_bucket: str, gcs_storage_options: dict[str, Any]
) -> None:
    """fsspec reads ``FSSPEC_GS`` (JSON options): how a shell user points at an emulator."""
    url = f"gs://{gcs_bucket}/vol"
    precomputed.open(
        url, create=True, dtype="uint8", shape=[4, 5, 6, 1], storage_options=gcs_storage_options
    )
    env = {**os.environ, "FSSPEC_GS": json.dumps(gcs_storage_options)}
    exe = Path(sys.executable).with_name("precomputed")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "precomputed.cli"]
    res = subprocess.run([*cmd, "info", url], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert "1_1_1" in res.stdout and "4x5x6" in res.stdout


def test_demo_without_viewer_writes_a_sample_tensorstore_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "sample"
    code, out, err = run(capsys, "demo", "--no-viewer", "--dir", str(root))
    assert code == 0, err
    assert f"sample image:        {root / 'image'}" in out
    assert f"sample segmentation: {root / 'segmentation'}" in out
    assert out.count("z=32 plane: shape (256, 256)") == 2
    for name, kind in [("image", "image"), ("segmentation", "segmentation")]:
        ours = precomputed.open_scales(str(root / name))
        assert len(ours) == 3
        assert ours[0].metadata.type == kind
        for i, vol in enumerate(ours):
            t = ts.open(
                {"driver": DRIVER, "kvstore": f"file://{root / name}/", "scale_index": i}
            ).result()
            assert t.domain.shape == vol.shape
            assert t.dtype.numpy_dtype == vol.dtype
            theirs: Any = t.read().result()
            mine = vol.read()
            if name == "image":  # jpeg: two decoders may differ by a level here and there
                assert np.abs(theirs.astype(int) - mine.astype(int)).max() <= 2
                assert mine.std() > 10  # not blank
            else:
                np.testing.assert_array_equal(theirs, mine)
                assert len(np.unique(mine)) > 10
    assert ours[0].scale.sharding is not None  # the finest segmentation scale is sharded
    # running again reuses the sample
    before = (root / "image" / "info").stat().st_mtime_ns
    code, _, _ = run(capsys, "demo", "--no-viewer", "--dir", str(root))
    assert code == 0
    assert (root / "image" / "info").stat().st_mtime_ns == before


def test_the_command_line_imports_no_napari_until_a_viewer_opens() -> None:
    # The plugin's commands are loaded (entry point) to build the parser; napari is not.
    code = (
        "import sys, contextlib, io, precomputed.cli as c\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    c.main(['--version'])\n"
        "print('napari_precomputed.cli' in sys.modules, 'napari' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["True", "False"]


@pytest.mark.parametrize("command", ["view", "demo"])
def test_plugin_commands_without_the_plugin_say_what_to_install(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import precomputed.cli as cli

    monkeypatch.setattr(cli, "entry_points", lambda group: [])
    code, out, err = run(capsys, command, "some/url")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "needs the napari plugin" in err
    assert "pip install 'napari-precomputed[napari]'" in err


def test_plugin_commands_arrive_through_the_entry_point_group() -> None:
    from importlib.metadata import entry_points

    import precomputed.cli as cli

    (ep,) = [e for e in entry_points(group=cli.ENTRY_POINT_GROUP) if e.name == "napari"]
    assert ep.value == "napari_precomputed.cli:register"

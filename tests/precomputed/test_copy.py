"""``precomputed copy`` / ``precomputed.copy.copy`` between stores (local, memory, the
loopback fake-gcs and moto servers), re-encoding and resharding; ``precomputed
downsample`` and ``precomputed create``."""

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
from precomputed.convert import from_array
from precomputed.copy import copy

DRIVER = "neuroglancer_precomputed"


@pytest.fixture
def seg_volume(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A sharded compressed_segmentation volume with two scales (x, y, z data)."""
    rng = np.random.default_rng(3)
    data = rng.integers(0, 6, size=(30, 22, 9)).astype(np.uint64)  # x, y, z
    path = tmp_path / "seg"
    from_array(
        data, str(path), axes="xyz", type="segmentation", encoding="compressed_segmentation",
        chunk_size=(8, 8, 4), sharding="auto", levels=1, resolution=(4, 4, 40),
        voxel_offset=(-3, 5, 2),
    )
    (path / "segment_properties").mkdir()
    (path / "segment_properties" / "info").write_text(
        json.dumps({"@type": "neuroglancer_segment_properties",
                    "inline": {"ids": ["1"], "properties": []}})
    )
    info = json.loads((path / "info").read_text())
    info["segment_properties"] = "segment_properties"
    (path / "info").write_text(json.dumps(info))
    return path, data


def same_scales(a: list[precomputed.Volume], b: list[precomputed.Volume]) -> None:
    assert len(a) == len(b)
    for va, vb in zip(a, b, strict=True):
        assert va.domain == vb.domain
        np.testing.assert_array_equal(va.read(), vb.read())


def test_byte_copy_to_memory_is_identical(seg_volume: tuple[Path, np.ndarray]) -> None:
    path, _ = seg_volume
    result = copy(str(path), "memory://test_copy/seg")
    files = [p for p in path.rglob("*") if p.is_file()]
    assert result["objects"] == len(files)
    assert result["bytes"] == sum(p.stat().st_size for p in files)
    same_scales(precomputed.open_scales(str(path)), precomputed.open_scales("memory://test_copy/seg"))


def test_copy_local_to_gcs_on_the_command_line(
    seg_volume: tuple[Path, np.ndarray], gcs_bucket: str, gcs_storage_options: dict[str, Any]
) -> None:
    """fsspec reads ``FSSPEC_GS`` (JSON options): how a shell user points at an emulator."""
    path, data = seg_volume
    url = f"gs://{gcs_bucket}/seg"
    env = {**os.environ, "FSSPEC_GS": json.dumps(gcs_storage_options)}
    exe = Path(sys.executable).with_name("precomputed")
    res = subprocess.run(
        [str(exe), "copy", str(path), url], capture_output=True, text=True, timeout=120, env=env
    )
    assert res.returncode == 0, res.stderr
    assert "copied" in res.stdout
    remote = precomputed.open_scales(url, storage_options=gcs_storage_options)
    same_scales(precomputed.open_scales(str(path)), remote)
    np.testing.assert_array_equal(remote[0].read()[..., 0], data)
    info = subprocess.run(
        [str(exe), "info", url], capture_output=True, text=True, timeout=120, env=env
    )
    assert info.returncode == 0, info.stderr
    assert "shard file" in info.stdout


def test_copy_to_s3_resharded_and_reencoded(
    seg_volume: tuple[Path, np.ndarray], s3_bucket: str, s3_storage_options: dict[str, Any]
) -> None:
    path, data = seg_volume
    url = f"s3://{s3_bucket}/seg"
    result = copy(str(path), url, encoding="raw", sharding="none",
                  destination_options=s3_storage_options)
    assert result["scales"] == 2 and result["objects"] == 1  # segment_properties/info
    ours = precomputed.open_scales(url, storage_options=s3_storage_options)
    assert [v.scale.encoding for v in ours] == ["raw", "raw"]
    assert all(v.scale.sharding is None for v in ours)
    same_scales(precomputed.open_scales(str(path)), ours)
    assert ours[0].metadata.extra["segment_properties"] == "segment_properties"
    np.testing.assert_array_equal(ours[0].read()[..., 0], data)


def test_copy_locally_resharded_reads_back_with_tensorstore(
    seg_volume: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, data = seg_volume
    dst = tmp_path / "unsharded"
    assert main(["copy", str(path / "info"), str(dst), "--sharding", "none", "-q"]) == 0
    info = json.loads((dst / "info").read_text())
    assert all("sharding" not in s for s in info["scales"])
    t = ts.open({"driver": DRIVER, "kvstore": f"file://{dst}/"}).result()
    np.testing.assert_array_equal(np.asarray(t.read().result())[..., 0], data)
    # a second copy to the same place is refused in one line
    code = main(["copy", str(path), str(dst)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "already holds a volume" in err


def test_downsample_adds_levels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = np.arange(16 * 12 * 3, dtype=np.uint8).reshape(16, 12, 3)  # x, y, z
    from_array(data, str(tmp_path / "v"), axes="xyz", chunk_size=(8, 8, 3))
    code = main(["downsample", str(tmp_path / "v"), "--levels", "2", "--factor", "2,2,1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "added scale 1 (2_2_1): size 8x6x3" in out and "added scale 2 (4_4_1)" in out
    t = ts.open({"driver": DRIVER, "kvstore": f"file://{tmp_path / 'v'}/", "scale_index": 1}).result()
    got = np.asarray(t.read().result())[..., 0]
    want = data.reshape(8, 2, 6, 2, 3).astype(float).mean(axis=(1, 3))
    assert np.abs(got - want).max() <= 1
    # mode for labels
    labels = np.full((4, 4, 1), 7, np.uint32)
    labels[0, 0] = 3  # the mode of its 2x2 block is still 7 (a mean would not be)
    from_array(labels, str(tmp_path / "l"), axes="xyz", type="segmentation")
    assert main(["downsample", str(tmp_path / "l"), "--method", "mode", "-q"]) == 0
    assert precomputed.open(str(tmp_path / "l"), scale_index=1).read()[:, :, 0, 0].tolist() == [
        [7, 7], [7, 7]
    ]


def test_create_from_flags_and_from_a_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main([
        "create", str(tmp_path / "a"), "--size", "100,80,20", "--data-type", "uint64",
        "--type", "segmentation", "--encoding", "compressed_segmentation",
        "--resolution", "8,8,40", "--sharding", "auto", "--levels", "2",
    ])
    assert code == 0, capsys.readouterr().err
    t = ts.open({"driver": DRIVER, "kvstore": f"file://{tmp_path / 'a'}/"}).result()
    assert t.domain.shape == (100, 80, 20, 1) and t.dtype.numpy_dtype == np.uint64
    info = json.loads((tmp_path / "a" / "info").read_text())
    assert len(info["scales"]) == 3 and "sharding" in info["scales"][0]
    spec = {
        "multiscale_metadata": {"type": "image", "data_type": "uint8", "num_channels": 3},
        "scale_metadata": {"size": [10, 10, 1], "resolution": [1, 1, 1], "encoding": "jpeg"},
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert main(["create", str(tmp_path / "b"), "--spec", str(tmp_path / "spec.json"), "-q"]) == 0
    vol = precomputed.open(str(tmp_path / "b"))
    assert vol.shape == (10, 10, 1, 3) and vol.scale.encoding == "jpeg"
    # a bad spec member is named, in one line
    spec["scale_metadata"]["encoding"] = "webp"
    (tmp_path / "bad.json").write_text(json.dumps(spec))
    code = main(["create", str(tmp_path / "c"), "--spec", str(tmp_path / "bad.json")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "encoding" in err and "webp" in err
    assert not (tmp_path / "c" / "info").exists()

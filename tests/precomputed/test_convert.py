"""``precomputed convert`` and ``precomputed.convert``: TIFF, zarr / OME-Zarr and .npy into
new volumes (read back by TensorStore, the oracle), a scale out to zarr, and failures
that leave nothing that opens as complete."""

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
from precomputed.convert import from_array, open_source, source_kind, to_zarr
from precomputed.create import find_incomplete
from servers import RangeServer

tifffile = pytest.importorskip("tifffile", reason="the convert extra (tifffile) is not installed")
zarr = pytest.importorskip("zarr", reason="the convert extra (zarr) is not installed")


def ts_read(path: Path, scale: int = 0) -> np.ndarray:
    """The scale as TensorStore reads it, x, y, z, c."""
    t = ts.open(
        {"driver": "neuroglancer_precomputed", "kvstore": f"file://{path}/", "scale_index": scale}
    ).result()
    return np.asarray(t.read().result())


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def stack(shape: tuple[int, int, int] = (13, 37, 29), dtype: Any = np.uint16) -> np.ndarray:
    rng = np.random.default_rng(5)
    return rng.integers(0, 4000, size=shape).astype(dtype)  # z, y, x


def test_convert_a_multipage_tiff_with_levels_and_auto_sharding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = stack()
    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, data, photometric="minisblack", compression="zlib")
    dst = tmp_path / "vol"
    code, out, err = run(
        capsys, "convert", str(tif), str(dst), "--chunk-size", "16,16,4", "--sharding", "auto",
        "--levels", "2", "--resolution", "4,4,40", "--encoding", "raw",
    )
    assert code == 0, err
    assert "tiff" in out and "(13, 37, 29) (zyx)" in out
    got = ts_read(dst)
    np.testing.assert_array_equal(got[..., 0], data.transpose(2, 1, 0))
    info = json.loads((dst / "info").read_text())
    assert [s["resolution"] for s in info["scales"]] == [[4, 4, 40], [8, 8, 40], [16, 16, 40]]
    assert info["scales"][0]["sharding"]["@type"] == "neuroglancer_uint64_sharded_v1"
    # the coarser scales are block means of the finer ones (TensorStore reads them too)
    s1 = ts_read(dst, 1)[..., 0]
    want = data.transpose(2, 1, 0)[:28, :36].reshape(14, 2, 18, 2, 13).mean(axis=(1, 3))
    assert np.abs(s1[:14, :18].astype(float) - want).max() <= 1
    assert not (dst / "INCOMPLETE").exists()


def test_info_counts_the_shard_files_a_conversion_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = stack((40, 70, 90), np.uint8)
    np.save(tmp_path / "a.npy", data)
    dst = tmp_path / "vol"
    src = open_source(tmp_path / "a.npy")
    from_array(src, str(dst), chunk_size=(8, 8, 8), sharding="auto", shard_voxels=8**3 * 16)
    shards = sorted(p.name for p in (dst / "1_1_1").iterdir())
    assert len(shards) > 4 and all(n.endswith(".shard") for n in shards)
    code, out, _ = run(capsys, "info", str(dst), "--sizes")
    assert code == 0
    row = out.splitlines()[3]
    assert f"{len(shards)} shard files x " in row
    assert f"  {len(shards)}  " in row  # the objects column
    assert "voxels" in out.splitlines()[2] and f"{90 * 70 * 40:,}" in row
    assert "sharding: chunks are packed into shard files" in out


def test_convert_a_folder_of_tiff_files_in_name_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = stack((6, 20, 24), np.uint8)
    folder = tmp_path / "planes"
    folder.mkdir()
    for z in range(6):
        tifffile.imwrite(folder / f"plane_{z:03d}.tif", data[z], photometric="minisblack")
    assert source_kind(folder) == "tiff-stack"
    dst = tmp_path / "vol"
    code, _, err = run(capsys, "convert", str(folder), str(dst), "--chunk-size", "8,8,2")
    assert code == 0, err
    np.testing.assert_array_equal(ts_read(dst)[..., 0], data.transpose(2, 1, 0))


def test_convert_a_zarr_array_to_a_segmentation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = stack((9, 17, 21), np.uint32) // 500
    src = tmp_path / "labels.zarr"
    z = zarr.create_array(str(src), shape=labels.shape, chunks=(4, 8, 8), dtype="uint32")
    z[:] = labels
    dst = tmp_path / "seg"
    code, _, err = run(
        capsys, "convert", str(src), str(dst), "--type", "segmentation",
        "--encoding", "compressed_segmentation", "--chunk-size", "8,8,8", "--levels", "1",
    )
    assert code == 0, err
    info = json.loads((dst / "info").read_text())
    assert info["type"] == "segmentation" and info["data_type"] == "uint32"
    np.testing.assert_array_equal(ts_read(dst)[..., 0], labels.transpose(2, 1, 0))
    assert len(info["scales"]) == 2


def test_ome_zarr_multiscales_give_resolution_and_offset(tmp_path: Path) -> None:
    data = stack((5, 12, 10), np.uint8)
    root = tmp_path / "image.ome.zarr"
    group = zarr.open_group(str(root), mode="w", zarr_format=3)
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [
                    {"name": "t", "type": "time"},
                    {"name": "z", "type": "space", "unit": "micrometer"},
                    {"name": "y", "type": "space", "unit": "micrometer"},
                    {"name": "x", "type": "space", "unit": "micrometer"},
                ],
                "datasets": [
                    {
                        "path": "0",
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [1.0, 0.04, 0.008, 0.008]},
                            {"type": "translation", "translation": [0.0, 0.4, 0.08, 0.016]},
                        ],
                    }
                ],
            }
        ],
    }
    arr = group.create_array("0", shape=(1, *data.shape), chunks=(1, 5, 12, 10), dtype="uint8")
    arr[0] = data
    src = open_source(root)
    assert src.axes == "zyx"
    assert src.resolution == pytest.approx((8.0, 8.0, 40.0))
    assert src.voxel_offset == (2, 10, 10)
    vol = from_array(src, str(tmp_path / "vol"))
    assert vol.resolution == pytest.approx((8.0, 8.0, 40.0))
    assert vol.domain.inclusive_min[:3] == (2, 10, 10)
    np.testing.assert_array_equal(ts_read(tmp_path / "vol")[..., 0], data.transpose(2, 1, 0))


def test_convert_a_npy_file_with_channels(tmp_path: Path) -> None:
    data = stack((3, 10, 11, 12), np.uint8)  # c, z, y, x
    np.save(tmp_path / "a.npy", data)
    code = main(["convert", str(tmp_path / "a.npy"), str(tmp_path / "vol"), "-q"])
    assert code == 0
    np.testing.assert_array_equal(ts_read(tmp_path / "vol"), data.transpose(3, 2, 1, 0))


def test_a_scale_out_to_zarr_v3_and_ome_metadata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = stack((7, 19, 23), np.uint16)
    vol = from_array(data, str(tmp_path / "vol"), axes="zyx", resolution=(4, 4, 40),
                     voxel_offset=(3, 2, 1), chunk_size=(8, 8, 4))
    code, out, err = run(capsys, "convert", str(tmp_path / "vol"), str(tmp_path / "out.zarr"))
    assert code == 0, err
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert group.metadata.zarr_format == 3
    arr = group["0"]
    assert arr.shape == (1, 7, 19, 23) and arr.chunks == (1, 4, 8, 8)
    np.testing.assert_array_equal(arr[0], data)
    ms = group.attrs["ome"]["multiscales"][0]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 40.0, 4.0, 4.0]
    assert ms["datasets"][0]["coordinateTransformations"][1]["translation"] == [0.0, 40.0, 8.0, 12.0]
    # and it comes back in through the OME-Zarr reader, in place
    back = open_source(tmp_path / "out.zarr")
    assert back.resolution == pytest.approx(vol.resolution)
    assert back.voxel_offset == (3, 2, 1)
    # zarr v2, plain array
    to_zarr(vol, tmp_path / "v2.zarr", zarr_format=2, ome=False)
    v2 = zarr.open_array(str(tmp_path / "v2.zarr"), mode="r")
    assert v2.metadata.zarr_format == 2
    np.testing.assert_array_equal(v2[0], data)
    assert v2.attrs["precomputed"]["voxel_offset"] == [3, 2, 1]


def test_a_failed_convert_leaves_no_volume(tmp_path: Path) -> None:
    data = np.zeros((8, 32, 32), np.uint16)
    data[-1, -1, -1] = 300  # fits uint16, not the uint8 asked for; found in the last block
    np.save(tmp_path / "a.npy", data)
    dst = tmp_path / "vol"
    with pytest.raises(precomputed.InvalidArgumentError, match="do not fit"):
        from_array(open_source(tmp_path / "a.npy"), str(dst), data_type="uint8",
                   chunk_size=(8, 8, 8), block_bytes=4096)
    assert not (dst / "info").exists() and not (dst / "INCOMPLETE").exists()
    with pytest.raises(precomputed.NotFoundError):
        precomputed.open(str(dst))
    assert not any(p.is_file() for p in dst.rglob("*")) if dst.exists() else True


def test_a_killed_convert_is_marked_incomplete_and_info_says_so(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", stack((16, 32, 32), np.uint8))
    dst = tmp_path / "vol"
    code = (
        "import os, sys\n"
        "from precomputed.convert import from_source\n"
        "def die(done, total):\n"
        "    if done == 2: os._exit(3)\n"  # a crash: no cleanup runs
        f"from_source({str(tmp_path / 'a.npy')!r}, {str(dst)!r}, chunk_size=(8, 8, 8),"
        " block_bytes=4096, progress=die)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 3, res.stderr
    assert find_incomplete(str(dst)) is not None
    exe = Path(sys.executable).with_name("precomputed")
    info = subprocess.run([str(exe), "info", str(dst)], capture_output=True, text=True, timeout=60)
    assert info.returncode == 1
    assert "INCOMPLETE" in info.stderr and "discard_incomplete" in info.stderr
    # converting again over it is refused; --overwrite replaces it
    again = subprocess.run(
        [str(exe), "convert", str(tmp_path / "a.npy"), str(dst)], capture_output=True,
        text=True, timeout=60,
    )
    assert again.returncode == 1 and again.stderr.count("\n") == 1
    assert "already holds a volume" in again.stderr and "Traceback" not in again.stderr
    assert main(["convert", str(tmp_path / "a.npy"), str(dst), "--overwrite", "-q"]) == 0
    assert find_incomplete(str(dst)) is None


def test_an_interrupted_convert_removes_what_it_wrote(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) in the middle of writing: exit status 130, one line, no volume."""
    np.save(tmp_path / "a.npy", stack((16, 32, 32), np.uint8))
    dst = tmp_path / "vol"
    code = (
        "import os, signal, sys\n"
        "import precomputed.create.blocks as blocks\n"
        "from precomputed.cli import main\n"
        "step = blocks.Tracker.step\n"
        "def interrupt(self):\n"
        "    step(self)\n"
        "    if self.done == 1: os.kill(os.getpid(), signal.SIGINT)\n"  # a block is written
        "blocks.Tracker.step = interrupt\n"
        f"sys.exit(main(['convert', {str(tmp_path / 'a.npy')!r}, {str(dst)!r}, '--chunk-size', '8,8,8']))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 130, res.stderr
    assert res.stderr.strip().splitlines() == [
        "error: interrupted (what this command had written has been removed)"
    ]
    assert not (dst / "info").exists() and not (dst / "INCOMPLETE").exists()
    assert not [p for p in dst.rglob("*") if p.is_file()] if dst.exists() else True


def test_conversion_streams_block_by_block(tmp_path: Path) -> None:
    """A 48 MiB memory-mapped source converts with Python allocations far below its size."""
    import tracemalloc

    data = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.uint8,
                                     shape=(48, 1024, 1024))
    data[:] = 7
    data.flush()
    del data
    src = open_source(tmp_path / "big.npy")
    tracemalloc.start()
    try:
        from_array(src, str(tmp_path / "vol"), chunk_size=(64, 64, 16), block_bytes=2 * 2**20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB for a 48 MiB source"
    vol = precomputed.open(str(tmp_path / "vol"))
    assert vol[512:520, 0:4, 47, 0].read().tolist() == [[7] * 4] * 8


def test_convert_with_dask_threads(tmp_path: Path) -> None:
    data = stack((8, 24, 20), np.uint16)
    np.save(tmp_path / "a.npy", data)
    code = main(["convert", str(tmp_path / "a.npy"), str(tmp_path / "vol"), "-q",
                 "--chunk-size", "8,8,4", "--scheduler", "threads"])
    assert code == 0
    np.testing.assert_array_equal(ts_read(tmp_path / "vol")[..., 0], data.transpose(2, 1, 0))


def test_convert_with_a_dask_distributed_local_cluster(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")
    data = stack((12, 40, 36), np.uint16)
    np.save(tmp_path / "a.npy", data)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        host="127.0.0.1",
    ) as cluster:
        code = main([
            "convert", str(tmp_path / "a.npy"), str(tmp_path / "vol"), "-q",
            "--chunk-size", "8,8,4", "--sharding", "auto", "--levels", "1",
            "--scheduler", "distributed", cluster.scheduler_address,
        ])
    assert code == 0
    np.testing.assert_array_equal(ts_read(tmp_path / "vol")[..., 0], data.transpose(2, 1, 0))


def test_progress_bar_on_stderr(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", stack((4, 16, 16), np.uint8))
    exe = Path(sys.executable).with_name("precomputed")
    res = subprocess.run(
        [str(exe), "convert", str(tmp_path / "a.npy"), str(tmp_path / "vol"), "--progress",
         "--chunk-size", "8,8,4"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "TQDM_DISABLE": "1"},
    )  # --progress asks for the bar, whatever tqdm's environment says
    assert res.returncode == 0, res.stderr
    assert "convert" in res.stderr and "100%" in res.stderr


@pytest.mark.parametrize(
    "argv, words",
    [
        (["convert", "{tmp}/nothing.tif", "{tmp}/v"], ["no such file", "nothing.tif"]),
        (["convert", "{tmp}/notes.txt", "{tmp}/v"], ["unknown file type", "notes.txt"]),
        (["convert", "{tmp}/a.npy", "{tmp}/v", "--axes", "zy"], ["axes", "a.npy"]),
        (["convert", "{tmp}/a.npy", "{tmp}/v", "--encoding", "jpeg", "--data-type", "uint16"],
         ["jpeg", "uint16"]),
        (["info", "{http}/no/volume"], ["no volume at", "/no/volume"]),
        (["copy", "{tmp}/none", "{tmp}/v"], ["no volume at", "none"]),
    ],
)
def test_bad_input_is_one_line_without_a_traceback(
    tmp_path: Path, argv: list[str], words: list[str], http_server: RangeServer
) -> None:
    np.save(tmp_path / "a.npy", stack((4, 8, 8), np.uint16))
    (tmp_path / "notes.txt").write_text("hello")
    exe = Path(sys.executable).with_name("precomputed")
    http_server.root = tmp_path
    args = [a.format(tmp=tmp_path, http=http_server.url) for a in argv]
    res = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in res.stderr
    for w in words:
        assert w in lines[0]
    assert not (tmp_path / "v").exists() or not (tmp_path / "v" / "info").exists()
    debug = subprocess.run([str(exe), "--debug", *args], capture_output=True, text=True, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_bad_flags_are_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["convert", "a.npy", str(tmp_path / "v"), "--chunk-size", "0,1,1"])
    assert exc.value.code == 2
    assert "--chunk-size must be positive integers" in capsys.readouterr().err

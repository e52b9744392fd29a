"""Issue 14 item 6: writing chunk ``KEY`` over a CloudVolume-made volume removes its
compressed twins ``KEY.gz``/``.br``/``.zstd``, which CloudVolume's local reader prefers over
the plain key (a stale twin would be read forever after). CloudVolume, freshly opened, is
the oracle: after our writes it must read exactly what we wrote."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import precomputed
from precomputed import Context

cloudvolume = pytest.importorskip("cloudvolume")

SIZE = (32, 32, 16)
CHUNK = (16, 16, 8)
SCALE = "4_4_40"
SUFFIX = {"gzip": ".gz", "br": ".br", "zstd": ".zstd"}


def cloudvolume_volume(root: Path, compress: str) -> np.ndarray:
    info = cloudvolume.CloudVolume.create_new_info(
        num_channels=1,
        layer_type="segmentation",
        data_type="uint32",
        encoding="raw",
        resolution=[4, 4, 40],
        voxel_offset=[0, 0, 0],
        volume_size=list(SIZE),
        chunk_size=list(CHUNK),
    )
    cv = cloudvolume.CloudVolume(f"file://{root}", info=info, compress=compress, progress=False)
    cv.commit_info()
    data = np.random.default_rng(0).integers(1, 50, (*SIZE, 1)).astype(np.uint32)
    cv[:, :, :] = data
    assert all(n.endswith(SUFFIX[compress]) for n in os.listdir(root / SCALE))
    return data


def cloudvolume_reads(root: Path) -> np.ndarray:
    cv = cloudvolume.CloudVolume(f"file://{root}", progress=False, cache=False)
    return np.asarray(cv[:, :, :])


@pytest.mark.parametrize("compress", ["gzip", "br", "zstd"])
def test_our_writes_drop_compressed_twins_and_cloudvolume_reads_them(
    tmp_path: Path, compress: str
) -> None:
    data = cloudvolume_volume(tmp_path, compress)
    vol = precomputed.open(str(tmp_path), context=Context(cache_bytes=0))
    vol[0:16, 0:16, 0:8, :] = 7  # a whole chunk: written without reading it
    data[0:16, 0:16, 0:8] = 7
    vol[20:24, 0:16, 0:8, :] = 9  # part of a chunk: read-modify-write from its twin
    data[20:24, 0:16, 0:8] = 9
    names = set(os.listdir(tmp_path / SCALE))
    suffix = SUFFIX[compress]
    for key in ("0-16_0-16_0-8", "16-32_0-16_0-8"):
        assert key in names and key + suffix not in names
    # Chunks we did not write keep CloudVolume's files.
    assert "0-16_16-32_0-8" + suffix in names and "0-16_16-32_0-8" not in names
    np.testing.assert_array_equal(cloudvolume_reads(tmp_path), data)
    np.testing.assert_array_equal(
        precomputed.open(str(tmp_path), context=Context(cache_bytes=0)).read(), data
    )


def test_a_stale_twin_next_to_a_plain_key_is_removed_by_the_next_write(tmp_path: Path) -> None:
    """A plain key written by a tool that leaves twins alone (the stale ``.gz`` next to it
    shadows it for CloudVolume): our next write of the chunk removes the twin."""
    data = cloudvolume_volume(tmp_path, "gzip")
    scale = tmp_path / SCALE
    key = "0-16_0-16_0-8"
    (scale / key).write_bytes(np.full((8, 16, 16), 3, "<u4").tobytes())  # the newer plain key
    data[0:16, 0:16, 0:8] = 3
    assert (scale / (key + ".gz")).exists()
    vol = precomputed.open(str(tmp_path), context=Context(cache_bytes=0))
    vol[0:1, 0:1, 0:1, :] = 5  # partial: based on the plain key, which readers prefer
    data[0, 0, 0] = 5
    assert not (scale / (key + ".gz")).exists()
    np.testing.assert_array_equal(cloudvolume_reads(tmp_path), data)


def test_deleting_a_chunk_removes_its_twins_too(tmp_path: Path) -> None:
    data = cloudvolume_volume(tmp_path, "gzip")
    vol = precomputed.open(str(tmp_path), context=Context(cache_bytes=0))
    vol[0:16, 0:16, 0:8, :] = 0  # all fill value: the chunk is deleted, not stored
    data[0:16, 0:16, 0:8] = 0
    names = set(os.listdir(tmp_path / SCALE))
    assert "0-16_0-16_0-8" not in names and "0-16_0-16_0-8.gz" not in names
    np.testing.assert_array_equal(vol.read(), data)

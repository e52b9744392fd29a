"""dask integration: storage-aligned to_dask and a shard-aligned store on a real cluster."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tensorstore as ts

import precomputed
from precomputed.dask import aligned_chunks, store, to_dask

SHARDED = {
    "@type": "neuroglancer_uint64_sharded_v1",
    "preshift_bits": 3,
    "hash": "identity",
    "minishard_bits": 2,
    "shard_bits": 4,
    "minishard_index_encoding": "gzip",
    "data_encoding": "gzip",
}


def _spec(path: Path, sharding: dict | None = SHARDED) -> dict:
    scale = {
        "size": [100, 90, 40],
        "voxel_offset": [-5, 3, 7],
        "chunk_size": [16, 16, 8],
        "resolution": [8, 8, 40],
        "encoding": "compressed_segmentation",
        "sharding": sharding,
    }
    return {
        "driver": "neuroglancer_precomputed",
        "kvstore": {"driver": "file", "path": str(path) + "/"},
        "multiscale_metadata": {"type": "segmentation", "data_type": "uint64", "num_channels": 1},
        "scale_metadata": scale,
    }


def _labels(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(7).integers(0, 5, shape).astype(np.uint64)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_to_dask_chunks_follow_storage_chunks_from_the_voxel_offset(tmp_path: Path) -> None:
    vol = precomputed.open(_spec(tmp_path), create=True)
    data = _labels(vol.shape)
    vol.write(data)
    arr = to_dask(vol)
    # x: [-5, 95) with 16-voxel chunks anchored at -5; z: [7, 47) with 8-voxel chunks.
    assert arr.chunks[0] == (16, 16, 16, 16, 16, 16, 4)
    assert arr.chunks[2] == (8, 8, 8, 8, 8)
    np.testing.assert_array_equal(arr.compute(scheduler="threads"), data)
    view = vol[0:40, 10:20, 9:30, :]
    sub = to_dask(view)
    assert sub.chunks[0] == (11, 16, 13)  # cut at the grid lines x = 11 and 27
    np.testing.assert_array_equal(sub.compute(scheduler="threads"), data[5:45, 7:17, 2:23])
    assert to_dask(vol, chunks="write").chunks[0] == (64, 36)


def test_store_rechunks_to_whole_shards(tmp_path: Path) -> None:
    vol = precomputed.open(_spec(tmp_path), create=True)
    data = _labels(vol.shape)
    store(da.from_array(data, chunks=(37, 41, 13, 1)), vol, scheduler="threads")
    np.testing.assert_array_equal(vol.read(), data)
    assert aligned_chunks(vol, vol.chunk_layout.write_chunk)[0] == (64, 36)


def test_store_rejects_a_mismatched_shape(tmp_path: Path) -> None:
    vol = precomputed.open(_spec(tmp_path), create=True)
    with pytest.raises(precomputed.InvalidArgumentError, match="does not match"):
        store(da.zeros((3, 3, 3, 1), dtype=np.uint64), vol)


def test_store_on_a_process_cluster_matches_a_single_process_write(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    data = _labels((100, 90, 40, 1))
    single = precomputed.open(_spec(tmp_path / "single"), create=True)
    single.write(data)
    clustered = precomputed.open(_spec(tmp_path / "cluster"), create=True)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        store(da.from_array(data, chunks=(50, 45, 20, 1)), clustered)
    assert _files(tmp_path / "cluster") == _files(tmp_path / "single")
    theirs = ts.open(
        {"driver": "neuroglancer_precomputed", "kvstore": _spec(tmp_path / "cluster")["kvstore"]}
    ).result()
    np.testing.assert_array_equal(theirs.read().result(), data)

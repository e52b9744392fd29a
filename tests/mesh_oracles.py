"""Mesh test data made by the real tools: a small labelled segmentation written with
CloudVolume and meshed by Igneous' own tasks (run with its LocalTaskQueue), and helpers to
compare meshes (importable like tests/volumes.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

RESOLUTION = (4.0, 5.0, 6.0)
OFFSET = (10, 20, 30)
SHAPE = (64, 64, 48)
#: Segment ids of the objects in :func:`segmentation` (one above 2**32).
IDS = (7, 12345678901, 3, 4, 5, 6, 8, 9)


def segmentation() -> np.ndarray:
    """An (x, y, z) uint64 array: a sphere (7), a box (12345678901) and six small cubes."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    seg = np.zeros(SHAPE, dtype=np.uint64)
    seg[(x - 20) ** 2 + (y - 30) ** 2 + (z - 20) ** 2 < 12**2] = 7
    seg[40:60, 10:30, 5:40] = 12345678901
    for k, sid in enumerate(IDS[2:]):
        x0 = 4 + 10 * k
        seg[x0 : x0 + 6, 50:58, 36:44] = sid
    return seg


def write_segmentation(path: Path, seg: np.ndarray | None = None) -> str:
    """The segmentation as a raw, unsharded CloudVolume at ``path``; returns its URL."""
    from cloudvolume import CloudVolume

    seg = segmentation() if seg is None else seg
    info = CloudVolume.create_new_info(
        num_channels=1,
        layer_type="segmentation",
        data_type="uint64",
        encoding="raw",
        resolution=list(RESOLUTION),
        voxel_offset=list(OFFSET),
        chunk_size=[32, 32, 16],
        volume_size=list(seg.shape),
    )
    url = "file://" + str(path)
    vol = CloudVolume(url, info=info, compress=False, progress=False)
    vol.commit_info()
    vol[:, :, :] = seg
    return url


def igneous_meshes(path: Path, kind: str) -> str:
    """Mesh the test segmentation at ``path`` with Igneous: ``kind`` is ``"legacy"``,
    ``"unsharded"`` (multi-resolution) or ``"sharded"`` (multi-resolution)."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    import igneous.task_creation as tc
    from taskqueue import LocalTaskQueue

    url = write_segmentation(path)
    tq = LocalTaskQueue(parallel=1, progress=False)
    tq.insert(
        tc.create_meshing_tasks(
            url, mip=0, shape=(32, 32, 32), mesh_dir="mesh", sharded=kind == "sharded"
        )
    )
    tq.execute(progress=False)
    if kind == "legacy":
        tq.insert(tc.create_mesh_manifest_tasks(url, magnitude=1))
    elif kind == "unsharded":
        tq.insert(
            tc.create_unsharded_multires_mesh_tasks(
                url, num_lod=2, min_chunk_size=(8, 8, 8), magnitude=1
            )
        )
    else:
        tq.insert(
            tc.create_sharded_multires_mesh_tasks(
                url, num_lod=2, min_chunk_size=(8, 8, 8), progress=False
            )
        )
    tq.execute(progress=False)
    return url


def triangles(vertices: np.ndarray, faces: np.ndarray, decimals: int = 3) -> np.ndarray:
    """The triangles as sorted rows of 9 rounded coordinates, each rotated to start at
    its smallest vertex (orientation kept): equal for two meshes of the same surface
    whatever their vertex and face order."""
    tri = np.round(
        np.asarray(vertices, np.float64)[np.asarray(faces, np.int64)], decimals
    )  # (m, 3, 3)
    keys = tri.reshape(-1, 3)
    order = np.lexsort(keys.T[::-1]).argsort().reshape(-1, 3)  # rank of each corner
    first = order.argmin(axis=1)
    corner = (first[:, None] + np.arange(3)) % 3
    rolled = tri[np.arange(tri.shape[0])[:, None], corner]
    flat = rolled.reshape(-1, 9)
    return flat[np.lexsort(flat.T[::-1])]


# -- geometry checks of generated meshes ------------------------------------------------


def voxel_coords(mesh: Any, resolution: Any = RESOLUTION, offset: Any = OFFSET) -> np.ndarray:
    """Vertices in the segmentation array's voxel coordinates (voxel i spans [i, i+1))."""
    return mesh.vertices / np.asarray(resolution) - np.asarray(offset)


def near_boundary(seg: np.ndarray, label: int, p: np.ndarray) -> np.ndarray:
    """For each point, whether both the label and something else lie within one voxel
    (27 samples of the cube of half-width 0.99 voxel around it)."""
    steps = np.array([-0.99, 0.0, 0.99])
    offs = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), -1).reshape(-1, 3)
    idx = np.floor(p[:, None, :] + offs[None]).astype(np.int64)  # (n, 27, 3)
    inside_vol = ((idx >= 0) & (idx < np.array(seg.shape))).all(-1)
    clipped = np.clip(idx, 0, np.array(seg.shape) - 1)
    labels = np.where(inside_vol, seg[clipped[..., 0], clipped[..., 1], clipped[..., 2]], 0)
    return (labels == label).any(1) & (labels != label).any(1)


def enclosed_volume(mesh: Any) -> float:
    t = mesh.vertices.astype(np.float64)[mesh.faces]
    return float(np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6)


def watertight(mesh: Any) -> bool:
    m = mesh.deduplicated()
    e = np.sort(
        np.concatenate([m.faces[:, [0, 1]], m.faces[:, [1, 2]], m.faces[:, [2, 0]]]), axis=1
    )
    _, counts = np.unique(e, axis=0, return_counts=True)
    return bool((counts == 2).all())

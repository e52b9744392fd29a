"""A segmentation with meshes and segment properties for the segment tests: the labelled
sphere, box and cubes of tests/mesh_oracles.py (voxel offset and anisotropic resolution),
written by TensorStore, meshed and given properties by the library (importable like
edit_cases.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from napari_volumes import write_ts_volume

import precomputed
from mesh_oracles import OFFSET, RESOLUTION, near_boundary, segmentation
from napari_precomputed._reader import read_volume
from precomputed import meshes
from precomputed import segment_properties as sp

__all__ = [
    "BOX",
    "OFFSET",
    "RESOLUTION",
    "SPHERE",
    "NAMES",
    "TAGS",
    "add_reader_layer",
    "labels_xyz",
    "make_segmentation",
    "near_boundary",
    "world_to_voxels",
]

SPHERE = 7
BOX = 12345678901  # above 2**32
#: Labels of some segments (the cubes 3..6, 8, 9 have none, except 3).
NAMES = {SPHERE: "Pyramidal cell", BOX: "Box interneuron", 3: "cube three", 4: "Basket cell"}
TAGS = {SPHERE: ["soma", "excitatory"], BOX: ["soma", "inhibitory"], 3: [], 4: ["inhibitory"]}


def labels_xyz() -> np.ndarray:
    return segmentation()


def make_segmentation(
    path: Path,
    *,
    with_meshes: bool = True,
    with_properties: bool = True,
    sharded: bool = False,
    two_scales: bool = False,
    chunk_voxels: float = 64.0,
    seg: np.ndarray | None = None,
) -> Path:
    """Write the segmentation (x, y, z) at ``path`` (TensorStore), its meshes (the
    library: multi-resolution, LOD 0 nodes of ``chunk_voxels``) and properties."""
    seg = labels_xyz() if seg is None else seg
    levels: list[tuple[np.ndarray, Any, Any]] = [(seg[..., None], OFFSET, RESOLUTION)]
    if two_scales:
        from edit_cases import mode_xyz

        o = tuple(a // f for a, f in zip(OFFSET, (2, 2, 1), strict=True))
        assert all(a % f == 0 for a, f in zip(OFFSET, (2, 2, 1), strict=True))
        coarse = mode_xyz(seg[..., None], (2, 2, 1))
        res = tuple(r * f for r, f in zip(RESOLUTION, (2, 2, 1), strict=True))
        levels.append((coarse, o, res))
    write_ts_volume(path, levels, kind="segmentation", chunk=(32, 32, 16))
    vol = precomputed.open(str(path))
    if with_meshes:
        meshes.write(
            vol,
            sharding="auto" if sharded else None,
            options=meshes.LodOptions(chunk_voxels=chunk_voxels),
        )
    if with_properties:
        ids = list(NAMES)
        sp.write(
            vol,
            sp.SegmentProperties(
                ids,
                (
                    sp.Property.label([NAMES[i] for i in ids]),
                    sp.Property.tag_sets([TAGS[i] for i in ids]),
                    sp.Property.number("volume_um3", [1.5, 2.0, 0.25, 0.5], "float32"),
                ),
            ),
        )
    return path


def add_reader_layer(viewer: Any, path: Path) -> Any:
    (data, kwargs, kind), = read_volume(str(path))  # fmt: skip
    assert kind == "labels"
    return viewer.add_labels(data, **kwargs)


def world_to_voxels(labels: Any, world: np.ndarray) -> np.ndarray:
    """World points (z, y, x) as positions (x, y, z) in the Labels layer's finest data
    array, in Neuroglancer's convention (voxel ``i`` spans ``[i, i + 1)``): napari draws
    data index ``d`` over ``[d - 0.5, d + 0.5)``, so the position is ``d + 0.5``."""
    d = np.array([labels.world_to_data(w) for w in np.asarray(world)])
    return (d + 0.5)[:, ::-1]

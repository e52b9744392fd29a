"""Re-meshing the segments a commit touched (no Qt).

After an edit session's commit stored the edits, :func:`remesh_touched` regenerates the
multi-resolution meshes of the touched labels (the old and new values of the voxels that
changed) with :func:`precomputed.meshes.remesh`, in the commit's worker thread. It never
raises: a failure is reported in its :class:`~.results.RemeshResult`, and the committed
edits stay committed.

Which meshes: those of the volume's ``mesh`` directory when it holds multi-resolution
meshes (``neuroglancer_multilod_draco``, the format :mod:`precomputed.meshes` writes) in
a writable store (:func:`remesh_target`). They are made from the scale the mesh ``info``
names in ``"mip"`` (default 0, as Igneous and :func:`precomputed.meshes.write` record it).

Where: not the whole scale but the box that holds each touched segment whole, before and
after the edit: a segment after the edit lies in its voxels before it plus the edited
voxels, and before it within its old mesh's LOD 0 octree nodes (read from the manifest,
no fragment data). The box is padded by :data:`PAD_VOXELS` and clipped to the scale, so
the meshes are not cut by it. A segment without an old mesh (a new label) lies in the
edited voxels.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from precomputed import NotFoundError, Volume
from precomputed.info_members import read_json, resolve_subdir, volume_location
from precomputed.internal.geometry import Box

from .results import RemeshResult, plural

__all__ = [
    "PAD_VOXELS",
    "MeshTarget",
    "remesh_target",
    "remesh_region",
    "remesh_touched",
    "touched_labels",
]

log = logging.getLogger("napari_precomputed")

#: Voxels (of the mesh scale) added around the re-meshed box on every side.
PAD_VOXELS = 2


@dataclass(frozen=True)
class MeshTarget:
    """A volume's multi-resolution meshes, as a re-mesh rewrites them."""

    #: The scale the meshes are made from (the mesh info's ``mip``, default 0).
    scale_index: int
    #: The mesh directory.
    url: str
    sharded: bool


def remesh_target(volume: Volume) -> tuple[MeshTarget | None, str]:
    """``(target, "")`` when the volume's meshes can be rewritten, else ``(None, why
    not)``. Reads the volume's ``info`` (as stored now) and the mesh ``info``."""
    from precomputed.meshes import MULTILOD_TYPE, parse_mesh_info

    kv, path = volume_location(volume)
    info = read_json(kv, path + "info")
    if not isinstance(info, dict) or "mesh" not in info:
        return None, "the volume has no meshes"
    mkv, prefix = resolve_subdir(kv, path, info["mesh"], "mesh")
    raw = read_json(mkv, prefix + "info", required=False)
    if raw is None:
        return None, "its meshes are legacy meshes (no mesh info), which are not rewritten"
    mesh_info = parse_mesh_info(raw, mkv.url + prefix + "info")
    if mesh_info.type != MULTILOD_TYPE:
        return None, "its meshes are legacy meshes, which are not rewritten"
    if mkv.read_only:
        return None, f'the mesh directory "{mkv.url}{prefix}" is read-only'
    try:
        import DracoPy  # noqa: F401
        import zmesh  # noqa: F401
    except ImportError:
        return None, 're-meshing needs the meshes extra: pip install "napari-precomputed[meshes]"'
    mip = mesh_info.extra.get("mip", 0)
    n = len(volume.metadata.scales)
    scale = mip if isinstance(mip, int) and not isinstance(mip, bool) and 0 <= mip < n else 0
    return MeshTarget(scale, mkv.url + prefix, mesh_info.sharding is not None), ""


def touched_labels(new: np.ndarray, base: np.ndarray | None) -> np.ndarray:
    """The labels (not 0) of the voxels where ``new`` differs from ``base`` (None: all
    zero, an absent chunk), old and new values both: the segments an edit changed."""
    if base is None:
        changed = new[new != 0]
        return np.unique(changed)
    diff = new != base
    if not diff.any():
        return np.empty(0, new.dtype)
    labels = np.unique(np.concatenate([new[diff], base[diff]]))
    return labels[labels != 0]


def _old_extent(source: Any, segment_id: int, resolution: np.ndarray) -> Box | None:
    """Voxels holding a segment's current mesh: its LOD 0 octree nodes (the manifest
    only), or None when it has no mesh."""
    try:
        manifest = source.manifest(segment_id)
    except NotFoundError:
        return None
    positions = np.asarray(manifest.fragment_positions[0], np.float64).reshape(-1, 3)
    if not positions.shape[0]:
        return None
    node = manifest.node_size(0)
    base = manifest.grid_origin.astype(np.float64) + manifest.vertex_offsets[0]
    lo = base + node * positions.min(axis=0)
    hi = base + node * (positions.max(axis=0) + 1)
    corners = np.array([[(lo, hi)[(k >> d) & 1][d] for d in range(3)] for k in range(8)])
    m = source.info.matrix
    nm = corners @ m[:, :3].T + m[:, 3]
    vox = nm / resolution
    a = np.floor(vox.min(axis=0)).astype(np.int64)
    b = np.ceil(vox.max(axis=0)).astype(np.int64)
    return Box(tuple(int(v) for v in a), tuple(int(v) for v in b))  # type: ignore[arg-type]


def remesh_region(
    volume: Volume,
    source: Any,
    segment_ids: Iterable[int],
    edited: Sequence[Box],
    *,
    pad: int = PAD_VOXELS,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The box (absolute voxels of ``volume``'s scale) to re-mesh ``segment_ids`` in:
    the ``edited`` boxes (same scale) and the segments' old meshes (``source``, a
    multi-resolution mesh source), padded by ``pad`` and clipped to the scale."""
    res = np.array(volume.resolution, np.float64)
    boxes = list(edited)
    for sid in segment_ids:
        old = _old_extent(source, int(sid), res)
        if old is not None:
            boxes.append(old)
    origin = np.array(volume.origin[:3], np.int64)
    stop = origin + np.array(volume.shape[:3], np.int64)
    if not boxes:
        return tuple(int(v) for v in origin), tuple(int(v) for v in stop)
    lo = np.min([np.array(b.start, np.int64) for b in boxes], axis=0) - pad
    hi = np.max([np.array(b.stop, np.int64) for b in boxes], axis=0) + pad
    lo, hi = np.clip(lo, origin, stop), np.clip(hi, origin, stop)
    return tuple(int(v) for v in lo), tuple(int(v) for v in hi)


def _to_scale(box: Box, src: Volume, dst: Volume) -> Box:
    """A box of ``src``'s voxels as the voxels of ``dst``'s scale that cover it."""
    f = np.array(src.resolution, np.float64) / np.array(dst.resolution, np.float64)
    a = np.floor(np.array(box.start) * f + 1e-9).astype(np.int64)
    b = np.ceil(np.array(box.stop) * f - 1e-9).astype(np.int64)
    return Box(tuple(int(v) for v in a), tuple(int(v) for v in b))  # type: ignore[arg-type]


def remesh_touched(
    volume_of: Callable[[int], Volume],
    scale_index: int,
    segment_ids: Iterable[int],
    edited: Sequence[Box],
    *,
    coarser_updated: bool = True,
    target: MeshTarget | None = None,
) -> RemeshResult:
    """Regenerate the meshes of ``segment_ids`` after their edits at scale
    ``scale_index`` (``edited``: the boxes of changed voxels, absolute voxels of that
    scale) were stored. ``volume_of(i)`` is the volume of scale ``i``;
    ``coarser_updated``: whether the commit also updated the coarser scales. Never
    raises: errors are in the result."""
    t0 = time.perf_counter()
    ids = sorted({int(i) for i in segment_ids if int(i) != 0})
    result = RemeshResult(segment_ids=ids, scale_index=scale_index)
    if not ids:
        return result
    try:
        from precomputed import meshes

        edited_vol = volume_of(scale_index)
        if target is None:
            target, why = remesh_target(edited_vol)
            if target is None:
                result.skipped = why
                return result
        m = target.scale_index
        result.scale_index = m
        if m < scale_index:
            result.skipped = (
                f"the meshes are made from scale {m}, finer than the edited scale {scale_index}"
            )
            return result
        if m > scale_index and not coarser_updated:
            result.skipped = (
                f"the meshes are made from scale {m}, which this commit did not update "
                "(Update coarser scales is off)"
            )
            return result
        vol = volume_of(m)
        boxes = [_to_scale(b, edited_vol, vol) if m != scale_index else b for b in edited]
        source = meshes.open(vol)
        region = remesh_region(vol, source, ids, boxes)
        result.region = region
        result.stats = meshes.remesh(vol, ids, region=region)
        log.info(
            "napari-precomputed: re-meshed %d segment%s in %s of scale %d", len(ids),
            plural(len(ids)), region, m,
        )  # fmt: skip
    except Exception as e:  # the edits are stored: report, never undo
        log.warning("napari-precomputed: re-meshing %s failed: %s", ids, e)
        result.error = e
    finally:
        result.seconds = time.perf_counter() - t0
    return result

"""The region an edit session opens: a checked box of absolute voxels of one scale, or
what the viewer shows, in whole chunks, capped at a voxel budget."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from precomputed import InvalidArgumentError, OutOfRangeError, Volume
from precomputed.internal.geometry import Box

__all__ = ["DEFAULT_VOXEL_BUDGET", "Region", "check_region", "view_region"]

Region = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

#: Default cap on the voxels of a default ("in view") region: 16 Mi voxels.
DEFAULT_VOXEL_BUDGET = 16 * 1024 * 1024


def _domain(volume: Volume) -> tuple[tuple[int, ...], tuple[int, ...]]:
    d = volume.domain
    return tuple(d.inclusive_min[:3]), tuple(d.exclusive_max[:3])


def check_region(volume: Volume, region: Any) -> Box:
    """``((x0, x1), (y0, y1), (z0, z1))`` as a Box inside ``volume``; raises otherwise."""
    try:
        pairs = [(int(a), int(b)) for a, b in region]
        ok = len(pairs) == 3 and all(
            a == x and b == y for (a, b), (x, y) in zip(region, pairs, strict=True)
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InvalidArgumentError(
            f"region must be ((x0, x1), (y0, y1), (z0, z1)) in voxels, not {region!r}"
        )
    lo, hi = _domain(volume)
    for name, (a, b), vlo, vhi in zip("xyz", pairs, lo, hi, strict=True):
        if not (vlo <= a < b <= vhi):
            raise OutOfRangeError(
                f"region [{a}, {b}) on {name} is not a non-empty range inside the scale's "
                f"domain [{vlo}, {vhi})"
            )
    return Box(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))  # type: ignore[arg-type]


def view_region(viewer: Any, volume: Volume, budget: int = DEFAULT_VOXEL_BUDGET) -> Box:
    """The region of ``volume`` (one scale) that is in view, as absolute voxels.

    What the camera shows along the displayed axes; along a non-displayed axis the
    storage chunk holding the current plane. Extended to whole chunks, clipped to the
    volume and then shrunk around its centre to at most ``budget`` voxels. Without a
    3-D view (no viewer, nothing shown) it is the centre of the volume.
    """
    lo, hi = _domain(volume)
    res = np.array(volume.resolution, float)
    chunk = np.array(volume.chunk_layout.read_chunk[:3])
    grid0 = np.array(volume.scale.voxel_offset)
    start = np.array(lo, float)
    stop = np.array(hi, float)
    centre = (start + stop) / 2
    dims = getattr(viewer, "dims", None)
    if dims is not None and dims.ndim >= 3 and len(viewer.layers):
        n = dims.ndim
        point = np.array(dims.point[-3:], float)[::-1] / res  # x, y, z voxels
        scene = getattr(viewer, "scene", None)  # napari >= 0.9; viewer.camera before
        camera = scene.camera if scene is not None else viewer.camera
        zoom = float(camera.zoom) or 1.0
        h, w = (float(v) for v in viewer.canvas.size)
        displayed = [d - (n - 3) for d in dims.displayed if d >= n - 3]  # world z,y,x index
        cam = list(camera.center)[-len(dims.displayed) :]
        for world_axis, c in zip(dims.displayed, cam, strict=False):
            a = world_axis - (n - 3)
            if a < 0:
                continue
            point[2 - a] = float(c) / res[2 - a]
        if len(displayed) >= 2 and dims.ndisplay == 2:
            half_world = {displayed[-2]: h / 2 / zoom, displayed[-1]: w / 2 / zoom}
        else:
            half_world = {a: max(h, w) / 2 / zoom for a in displayed}
        start = np.floor(point).astype(float)
        stop = start + 1
        for a, half in half_world.items():
            x = 2 - a  # z,y,x index -> x,y,z index
            start[x] = math.floor(point[x] - half / res[x])
            stop[x] = math.ceil(point[x] + half / res[x]) + 1
        centre = point
        # Whole chunks (a non-displayed axis: the chunk of the current plane).
        start = grid0 + np.floor((start - grid0) / chunk) * chunk
        stop = grid0 + np.ceil((stop - grid0) / chunk) * chunk
        start = np.maximum(start, lo)
        stop = np.minimum(stop, hi)
        if np.any(stop <= start):  # the view is outside the volume: its centre instead
            start, stop = np.array(lo, float), np.array(hi, float)
            centre = (start + stop) / 2
    return _fit_budget(start.astype(int), stop.astype(int), centre, lo, hi, budget)


def _fit_budget(
    start: np.ndarray,
    stop: np.ndarray,
    centre: np.ndarray,
    lo: Sequence[int],
    hi: Sequence[int],
    budget: int,
) -> Box:
    budget = max(1, int(budget))
    ext = (stop - start).astype(float)
    if np.prod(ext) > budget:
        # Shrink x and y first (the painted plane), z only when x and y reach 1.
        k = math.sqrt(budget / np.prod(ext))
        ext[:2] = np.maximum(1, np.floor(ext[:2] * k))
        if np.prod(ext) > budget:
            ext[2] = max(1, budget // int(ext[0] * ext[1]))
        while np.prod(ext) > budget:  # rounding: trim the largest axis
            ext[int(np.argmax(ext))] -= 1
        new_start = np.round(np.clip(centre, start, stop) - ext / 2)
        new_start = np.clip(new_start, start, stop - ext)
        start, stop = new_start, new_start + ext
    start = np.maximum(start, lo).astype(int)
    stop = np.minimum(stop, hi).astype(int)
    return Box(tuple(int(v) for v in start), tuple(int(v) for v in stop))  # type: ignore[arg-type]

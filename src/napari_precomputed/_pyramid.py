"""Line the scales of a Precomputed volume up as one napari multiscale pyramid.

napari places level ``k`` by the factors ``shape[0] / shape[k]`` (per axis) and gives all
levels the layer's one ``scale`` and ``translate``; presented index ``j`` of level ``k``
lands at level-0 index ``j * f_k``. Precomputed scales are placed by their own
``voxel_offset`` and ``resolution``, with sizes rounded up. To make both agree exactly:

* ``f_k`` is the scale's resolution over the finest resolution (must be an integer);
* all levels share a window that starts at absolute level-0 voxel ``P``, a multiple of
  ``L = lcm(f_k)``, at or before the finest ``voxel_offset``, and spans ``N`` voxels,
  a multiple of ``L`` that covers the finest scale;
* level ``k`` presents the ``N / f_k`` voxels of its own grid starting at ``P / f_k``
  (padded with zeros where the scale has no voxels, cropped where it has more).

Then presented voxel ``j`` of level ``k`` is absolute voxel ``P / f_k + j`` of scale
``k``, which covers level-0 voxels ``[P + j f_k, P + (j + 1) f_k)``, exactly where napari
draws it; the layer's ``translate`` is ``P * resolution_0``. Scales whose resolution is
not an integer multiple of the finest one cannot be placed and are left out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from precomputed.downsample import integer_factor
from precomputed.internal.geometry import Vec3

__all__ = ["Level", "Pyramid", "plan_pyramid"]

log = logging.getLogger("napari_precomputed")


@dataclass(frozen=True)
class Level:
    """Where one scale sits in the pyramid (all vectors x, y, z)."""

    scale_index: int
    factor: Vec3  # resolution / finest resolution
    origin: Vec3  # absolute voxel (this scale's grid) at presented index 0
    extent: Vec3  # presented size


@dataclass(frozen=True)
class Pyramid:
    levels: list[Level]  # finest first
    resolution: tuple[float, float, float]  # of level 0, nm
    origin: Vec3  # P: absolute level-0 voxel at presented index 0

    @property
    def translate(self) -> tuple[float, float, float]:
        """World position (nm, x y z) of presented index 0."""
        return tuple(p * r for p, r in zip(self.origin, self.resolution, strict=True))  # type: ignore[return-value]


def plan_pyramid(scales: Sequence[object]) -> Pyramid:
    """Choose the scales to show and their windows (``scales``: ScaleMetadata list)."""
    if not scales:
        raise ValueError("the volume has no scales")
    # The finest scale: smallest voxel volume, first one on ties.
    base_i = min(range(len(scales)), key=lambda i: (math.prod(scales[i].resolution), i))  # type: ignore[attr-defined]
    base = scales[base_i]
    res0 = tuple(float(r) for r in base.resolution)  # type: ignore[attr-defined]
    candidates: list[tuple[Vec3, int]] = []
    for i, s in enumerate(scales):
        f = integer_factor(s.resolution, res0)  # type: ignore[attr-defined]
        if f is None:
            log.warning(
                "scale %d (key %r, resolution %s) is not an integer multiple of the finest "
                "resolution %s: left out of the pyramid",
                i, s.key, list(s.resolution), list(res0),  # type: ignore[attr-defined]
            )  # fmt: skip
            continue
        candidates.append((f, i))
    candidates.sort(key=lambda c: (math.prod(c[0]), c[0], c[1] != base_i, c[1]))
    chosen: list[tuple[Vec3, int]] = []
    for f, i in candidates:
        if chosen:
            prev = chosen[-1][0]
            if f == prev or any(a < b for a, b in zip(f, prev, strict=True)):
                # napari needs factors that grow on every axis; a duplicate resolution
                # (another chunking of the same data) adds nothing.
                log.info("scale %d (key %r) left out of the pyramid", i, scales[i].key)  # type: ignore[attr-defined]
                continue
        chosen.append((f, i))
    lcm = tuple(math.lcm(*(f[d] for f, _ in chosen)) for d in range(3))
    o0 = base.voxel_offset  # type: ignore[attr-defined]
    n0 = base.size  # type: ignore[attr-defined]
    start = tuple((o // m) * m for o, m in zip(o0, lcm, strict=True))
    stop = tuple(-(-(o + n) // m) * m for o, n, m in zip(o0, n0, lcm, strict=True))
    extent = tuple(b - a for a, b in zip(start, stop, strict=True))
    levels = [
        Level(
            scale_index=i,
            factor=f,
            origin=tuple(a // k for a, k in zip(start, f, strict=True)),
            extent=tuple(n // k for n, k in zip(extent, f, strict=True)),
        )
        for f, i in chosen
    ]
    return Pyramid(levels=levels, resolution=res0, origin=start)  # type: ignore[arg-type]

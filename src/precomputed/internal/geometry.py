"""Geometry in voxels and chunk-grid cells: the one ``Vec3``, ``Box`` and ``ChunkGrid``.

No I/O, no encoding. A scale's grid origin is its ``voxel_offset``; the last cell of each
dimension is clipped to the volume (chunks on disk have the clipped shape, never padding).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["Vec3", "ChunkGrid", "Box", "zyx_slices"]

#: An x, y, z triple of integers (a voxel, a size, a chunk grid position).
Vec3 = tuple[int, int, int]


@dataclass(frozen=True)
class Box:
    """A half-open box ``[start, stop)`` in absolute x, y, z voxel coordinates."""

    start: Vec3
    stop: Vec3

    def __iter__(self) -> Iterator[Vec3]:
        """``lo, hi = box``: the two corners."""
        yield self.start
        yield self.stop

    # Written out per axis: these run for every chunk of every read (a z-plane of a
    # terabyte volume touches thousands), where generator expressions cost several times more.
    @property
    def shape(self) -> Vec3:
        (a0, a1, a2), (b0, b1, b2) = self.start, self.stop
        return (max(0, b0 - a0), max(0, b1 - a1), max(0, b2 - a2))

    @property
    def empty(self) -> bool:
        (a0, a1, a2), (b0, b1, b2) = self.start, self.stop
        return b0 <= a0 or b1 <= a1 or b2 <= a2

    def intersect(self, other: Box) -> Box:
        (a0, a1, a2), (b0, b1, b2) = self.start, self.stop
        (c0, c1, c2), (d0, d1, d2) = other.start, other.stop
        return Box(
            (max(a0, c0), max(a1, c1), max(a2, c2)), (min(b0, d0), min(b1, d1), min(b2, d2))
        )


def zyx_slices(part: Box, origin: Box) -> tuple[slice, slice, slice]:
    """The (z, y, x) slices of ``part`` in an array laid out over ``origin``."""
    (a0, a1, a2), (b0, b1, b2), (o0, o1, o2) = part.start, part.stop, origin.start
    return slice(a2 - o2, b2 - o2), slice(a1 - o1, b1 - o1), slice(a0 - o0, b0 - o0)


@dataclass(frozen=True)
class ChunkGrid:
    """Geometry of a scale's chunk grid: ``size``, ``voxel_offset`` and ``chunk`` (xyz)."""

    size: Vec3
    voxel_offset: Vec3
    chunk: Vec3

    @property
    def shape(self) -> Vec3:
        """Number of chunks along x, y, z."""
        return tuple(-(-s // c) for s, c in zip(self.size, self.chunk, strict=True))  # type: ignore[return-value]

    @property
    def num_chunks(self) -> int:
        return math.prod(self.shape)  # Python ints: no int64 overflow for huge grids

    @property
    def bounds(self) -> Box:
        o = self.voxel_offset
        return Box(o, tuple(a + s for a, s in zip(o, self.size, strict=True)))  # type: ignore[arg-type]

    def chunk_box(self, pos: Vec3) -> Box:
        """Absolute voxel box of grid cell ``pos`` (clipped at the volume edge)."""
        (o0, o1, o2), (c0, c1, c2), (s0, s1, s2) = self.voxel_offset, self.chunk, self.size
        g0, g1, g2 = pos
        return Box(
            (o0 + g0 * c0, o1 + g1 * c1, o2 + g2 * c2),
            (o0 + min((g0 + 1) * c0, s0), o1 + min((g1 + 1) * c1, s1), o2 + min((g2 + 1) * c2, s2)),
        )

    def chunk_shape(self, pos: Vec3) -> Vec3:
        return self.chunk_box(pos).shape

    def chunk_name(self, pos: Vec3) -> str:
        """Unsharded chunk file name ``x0-x1_y0-y1_z0-z1`` (absolute coordinates)."""
        (o0, o1, o2), (c0, c1, c2), (s0, s1, s2) = self.voxel_offset, self.chunk, self.size
        g0, g1, g2 = pos
        return (
            f"{o0 + g0 * c0}-{o0 + min((g0 + 1) * c0, s0)}_"
            f"{o1 + g1 * c1}-{o1 + min((g1 + 1) * c1, s1)}_"
            f"{o2 + g2 * c2}-{o2 + min((g2 + 1) * c2, s2)}"
        )

    def cell_range(self, box: Box) -> tuple[Vec3, Vec3]:
        """Grid cells ``[lo, hi)`` that intersect ``box`` (absolute voxel coordinates)."""
        lo = tuple(
            max(0, (a - o) // c)
            for a, o, c in zip(box.start, self.voxel_offset, self.chunk, strict=True)
        )
        hi = tuple(
            min(g, -(-(b - o) // c))
            for b, o, c, g in zip(box.stop, self.voxel_offset, self.chunk, self.shape, strict=True)
        )
        return lo, hi  # type: ignore[return-value]

    def cells(self, box: Box) -> Iterator[Vec3]:
        """Grid cells intersecting ``box``, x fastest."""
        if box.empty:
            return
        lo, hi = self.cell_range(box)
        for z, y, x in itertools.product(
            range(lo[2], hi[2]), range(lo[1], hi[1]), range(lo[0], hi[0])
        ):
            yield (x, y, z)

    def axis_spans(self, box: Box) -> list[list[tuple[int, int, int, int, int]]]:
        """Per axis (x, y, z), the grid cells ``box`` touches as ``(index, chunk start,
        chunk stop, start, stop)``: the chunk's clipped extent and the box's part of it.
        A cell's geometry is then three look-ups, with no per-cell box arithmetic."""
        if box.empty:
            return [[], [], []]
        lo, hi = self.cell_range(box)
        spans = []
        for d in range(3):
            o, c, size, a, b = self.voxel_offset[d], self.chunk[d], self.size[d], box.start[d], box.stop[d]
            axis = []
            for i in range(lo[d], hi[d]):
                cs, ce = o + i * c, o + min((i + 1) * c, size)
                axis.append((i, cs, ce, max(a, cs), min(b, ce)))
            spans.append(axis)
        return spans

    def cells_array(self, box: Box) -> np.ndarray:
        """Grid cells intersecting ``box`` as an ``(n, 3)`` int64 array, x fastest."""
        if box.empty:
            return np.zeros((0, 3), np.int64)
        lo, hi = self.cell_range(box)
        axes = [np.arange(a, b, dtype=np.int64) for a, b in zip(lo, hi, strict=True)]
        zz, yy, xx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
        return np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1)

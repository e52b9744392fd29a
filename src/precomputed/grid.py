"""Chunk-grid geometry of one scale: no I/O, no encoding.

The grid origin is the scale's ``voxel_offset``; the last cell of each dimension is
clipped to the volume (chunks on disk have the clipped shape, never padding).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["ChunkGrid", "Box"]

Vec3 = tuple[int, int, int]


@dataclass(frozen=True)
class Box:
    """A half-open box ``[start, stop)`` in absolute x, y, z voxel coordinates."""

    start: Vec3
    stop: Vec3

    @property
    def shape(self) -> Vec3:
        return tuple(max(0, b - a) for a, b in zip(self.start, self.stop, strict=True))  # type: ignore[return-value]

    @property
    def empty(self) -> bool:
        return any(b <= a for a, b in zip(self.start, self.stop, strict=True))

    def intersect(self, other: Box) -> Box:
        return Box(
            tuple(max(a, c) for a, c in zip(self.start, other.start, strict=True)),  # type: ignore[arg-type]
            tuple(min(b, d) for b, d in zip(self.stop, other.stop, strict=True)),  # type: ignore[arg-type]
        )


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
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def bounds(self) -> Box:
        o = self.voxel_offset
        return Box(o, tuple(a + s for a, s in zip(o, self.size, strict=True)))  # type: ignore[arg-type]

    def chunk_box(self, pos: Vec3) -> Box:
        """Absolute voxel box of grid cell ``pos`` (clipped at the volume edge)."""
        start = tuple(o + g * c for o, g, c in zip(self.voxel_offset, pos, self.chunk, strict=True))
        stop = tuple(
            o + min((g + 1) * c, s)
            for o, g, c, s in zip(self.voxel_offset, pos, self.chunk, self.size, strict=True)
        )
        return Box(start, stop)  # type: ignore[arg-type]

    def chunk_shape(self, pos: Vec3) -> Vec3:
        return self.chunk_box(pos).shape

    def chunk_name(self, pos: Vec3) -> str:
        """Unsharded chunk file name ``x0-x1_y0-y1_z0-z1`` (absolute coordinates)."""
        b = self.chunk_box(pos)
        return "_".join(f"{a}-{e}" for a, e in zip(b.start, b.stop, strict=True))

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

    def cells_array(self, box: Box) -> np.ndarray:
        """Grid cells intersecting ``box`` as an ``(n, 3)`` int64 array, x fastest."""
        if box.empty:
            return np.zeros((0, 3), np.int64)
        lo, hi = self.cell_range(box)
        axes = [np.arange(a, b, dtype=np.int64) for a, b in zip(lo, hi, strict=True)]
        zz, yy, xx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
        return np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1)

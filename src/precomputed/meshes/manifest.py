"""The multi-resolution mesh manifest (``<id>.index``): octree nodes and byte sizes.

Layout (all little-endian): ``chunk_shape`` f32[3], ``grid_origin`` f32[3], ``num_lods``
u32, ``lod_scales`` f32[num_lods], ``vertex_offsets`` f32[num_lods, 3], ``num_fragments_per_lod``
u32[num_lods], then per LOD ``fragment_positions`` u32[3, n] (x row, y row, z row) and
``fragment_offsets`` u32[n] (the *sizes* in bytes of the fragments, whose data follow each
other in the data file, LOD 0 first).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CorruptDataError, InvalidArgumentError

__all__ = ["MultiLodManifest", "MAX_LODS"]

#: Neuroglancer computes node sizes as ``1 << lod`` in 32-bit integers.
MAX_LODS = 32
_HEADER = 28  # chunk_shape, grid_origin, num_lods


@dataclass(frozen=True, eq=False)
class MultiLodManifest:
    """A decoded manifest. Per LOD ``fragment_positions[lod]`` is ``(n, 3)`` uint32 grid
    positions (Morton order) and ``fragment_sizes[lod]`` their byte sizes (0: empty)."""

    chunk_shape: np.ndarray
    grid_origin: np.ndarray
    lod_scales: np.ndarray
    vertex_offsets: np.ndarray
    fragment_positions: tuple[np.ndarray, ...]
    fragment_sizes: tuple[np.ndarray, ...]

    @property
    def num_lods(self) -> int:
        return int(self.lod_scales.shape[0])

    @property
    def data_size(self) -> int:
        """Total bytes of fragment data (all LODs)."""
        return int(sum(int(s.sum(dtype=np.uint64)) for s in self.fragment_sizes))

    def lod_range(self, lod: int) -> tuple[int, int]:
        """``[start, stop)`` of LOD ``lod``'s fragments in the data, relative to its start."""
        start = sum(int(s.sum(dtype=np.uint64)) for s in self.fragment_sizes[:lod])
        return start, start + int(self.fragment_sizes[lod].sum(dtype=np.uint64))

    def node_size(self, lod: int) -> np.ndarray:
        """Extent of a LOD ``lod`` octree node in stored model units (float64)."""
        return self.chunk_shape.astype(np.float64) * float(1 << lod)

    @classmethod
    def decode(cls, data: bytes, what: str) -> MultiLodManifest:
        """Parse manifest bytes, checking sizes as Neuroglancer does and that every number
        is usable (finite, positive chunk shape); ``what`` names it in errors."""
        n = len(data)
        if n < _HEADER or n % 4:
            raise CorruptDataError(f"Error decoding mesh manifest {what}: Invalid size: {n} bytes")
        head = np.frombuffer(data, "<f4", 6, 0).astype(np.float32)
        num_lods = int(np.frombuffer(data, "<u4", 1, 24)[0])
        if not 1 <= num_lods <= MAX_LODS:
            raise CorruptDataError(
                f"Error decoding mesh manifest {what}: num_lods {num_lods} is not in [1, {MAX_LODS}]"
            )
        fixed = _HEADER + 20 * num_lods
        if n < fixed:
            raise CorruptDataError(
                f"Error decoding mesh manifest {what}: Invalid size for {num_lods} lods: {n} bytes"
            )
        off = _HEADER
        lod_scales = np.frombuffer(data, "<f4", num_lods, off).astype(np.float32)
        off += 4 * num_lods
        vertex_offsets = (
            np.frombuffer(data, "<f4", 3 * num_lods, off).astype(np.float32).reshape(-1, 3)
        )
        off += 12 * num_lods
        counts = np.frombuffer(data, "<u4", num_lods, off).astype(np.int64)
        off += 4 * num_lods
        total = int(counts.sum())
        if n != fixed + 16 * total:
            raise CorruptDataError(
                f"Error decoding mesh manifest {what}: Invalid size for {num_lods} lods and "
                f"{total} fragments: {n} bytes"
            )
        chunk_shape, grid_origin = head[:3], head[3:]
        floats = np.concatenate([head, lod_scales, vertex_offsets.reshape(-1)])
        if not np.isfinite(floats).all() or not (chunk_shape > 0).all():
            raise CorruptDataError(
                f"Error decoding mesh manifest {what}: non-finite values or a chunk_shape "
                f"that is not positive: chunk_shape={chunk_shape.tolist()}"
            )
        positions, sizes = [], []
        for k in counts.tolist():
            positions.append(
                np.frombuffer(data, "<u4", 3 * k, off).astype(np.uint32).reshape(3, k).T.copy()
            )
            off += 12 * k
            sizes.append(np.frombuffer(data, "<u4", k, off).astype(np.uint32))
            off += 4 * k
        return cls(
            chunk_shape, grid_origin, lod_scales, vertex_offsets, tuple(positions), tuple(sizes)
        )

    def encode(self) -> bytes:
        """The manifest bytes."""
        num_lods = self.num_lods
        if not 1 <= num_lods <= MAX_LODS:
            raise InvalidArgumentError(f"num_lods must be in [1, {MAX_LODS}], got {num_lods}")
        parts = [
            np.asarray(self.chunk_shape, "<f4").reshape(3).tobytes(),
            np.asarray(self.grid_origin, "<f4").reshape(3).tobytes(),
            np.uint32(num_lods).astype("<u4").tobytes(),
            np.asarray(self.lod_scales, "<f4").reshape(num_lods).tobytes(),
            np.asarray(self.vertex_offsets, "<f4").reshape(num_lods, 3).tobytes(),
            np.array([len(p) for p in self.fragment_positions], "<u4").tobytes(),
        ]
        for pos, size in zip(self.fragment_positions, self.fragment_sizes, strict=True):
            parts.append(np.ascontiguousarray(np.asarray(pos, "<u4").reshape(-1, 3).T).tobytes())
            parts.append(np.asarray(size, "<u4").reshape(-1).tobytes())
        return b"".join(parts)

"""Meshes from a segmentation: zmesh marching cubes and simplification, block by block.

The region is meshed in blocks (default 256³ voxels) that overlap by one voxel plane, so
the pieces of a segment from neighbouring blocks share their boundary vertices exactly
(zmesh's simplifier keeps open-boundary vertices in place); a segment's pieces are joined
and identical vertices merged when its last block is done. The region's faces are closed
(as if the segmentation were zero outside), so every mesh is watertight.

Memory stays bounded by the blocks of one z-slab plus the meshes of segments still open:
when the region has several z-slabs a first pass notes the last slab each segment
appears in, and each segment is finished (yielded) right after that slab.

Vertices are in nm, in Neuroglancer's world frame: voxel ``i`` of the scale spans
``[i, i + 1) * resolution`` (voxel_offset included), so a label boundary between voxels
``i`` and ``i + 1`` lies at ``(i + 1) * resolution``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from .mesh import Mesh

__all__ = ["generate", "Progress", "import_zmesh"]

#: ``progress(stage, done, total)``: stage ``"scan"`` (first pass) or ``"mesh"`` (blocks).
Progress = Callable[[str, int, int], None]


def import_zmesh() -> Any:
    """The ``zmesh`` module (an ``ImportError`` naming the ``meshes`` extra without it)."""
    try:
        import zmesh
    except ImportError:  # pragma: no cover
        raise ImportError(
            'generating meshes needs zmesh: pip install "napari-precomputed[meshes]"'
        ) from None
    return zmesh


class _Segmentation:
    """A box of labels readable by sub-box: a Volume view or an (x, y, z) array."""

    def __init__(
        self, source: Any, resolution: Sequence[float] | None, voxel_offset: Sequence[int] | None
    ) -> None:
        if hasattr(source, "read") and hasattr(source, "domain"):
            if len(source.shape) != 4 or source.shape[3] != 1:
                raise InvalidArgumentError(
                    f"meshes need a one-channel volume view with x, y, z, channel dimensions, got shape {source.shape}"
                )
            self.volume = source
            self.array = None
            self.origin = np.array(source.origin[:3], np.int64)
            self.shape = np.array(source.shape[:3], np.int64)
            self.resolution = np.array(
                resolution if resolution is not None else source.resolution, np.float64
            )
            dtype = source.dtype
        else:
            arr = np.asarray(source)
            if arr.ndim != 3:
                raise InvalidArgumentError(
                    f"expected an (x, y, z) label array, got shape {arr.shape}"
                )
            if resolution is None:
                raise InvalidArgumentError(
                    "meshing an array needs its resolution (nm per voxel, xyz)"
                )
            self.volume = None
            self.array = arr
            self.origin = np.array(
                voxel_offset if voxel_offset is not None else (0, 0, 0), np.int64
            )
            self.shape = np.array(arr.shape, np.int64)
            self.resolution = np.array(resolution, np.float64)
            dtype = arr.dtype
        if np.dtype(dtype).kind not in "iu":
            raise InvalidArgumentError(f"meshes are made from integer labels, got dtype {dtype}")
        if self.resolution.shape != (3,) or not (self.resolution > 0).all():
            raise InvalidArgumentError(
                f"resolution must be 3 positive numbers, got {self.resolution.tolist()}"
            )

    def read(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Labels of absolute voxels ``[lo, hi)`` as an (x, y, z) unsigned array."""
        if self.volume is not None:
            arr = self.volume[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2], 0].read()
        else:
            a, b = lo - self.origin, hi - self.origin
            arr = self.array[a[0] : b[0], a[1] : b[1], a[2] : b[2]]  # type: ignore[index]
        arr = np.asarray(arr)
        if arr.dtype.kind == "i":
            arr = arr.view(arr.dtype.str.replace("i", "u"))
        return arr


def _blocks(
    lo: np.ndarray, hi: np.ndarray, block: np.ndarray
) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Blocks of ``[lo, hi)`` grouped into z-slabs (in z order)."""
    starts = [np.arange(lo[d], hi[d], block[d]) for d in range(3)]
    slabs = []
    for z in starts[2]:
        slab = []
        for y in starts[1]:
            for x in starts[0]:
                b0 = np.array([x, y, z], np.int64)
                slab.append((b0, np.minimum(b0 + block, hi)))
        slabs.append(slab)
    return slabs


def _filtered(arr: np.ndarray, ids: np.ndarray | None) -> np.ndarray:
    if ids is None:
        return arr
    return np.where(np.isin(arr, ids), arr, 0).astype(arr.dtype, copy=False)


def generate(
    source: Any,
    *,
    resolution: Sequence[float] | None = None,
    voxel_offset: Sequence[int] | None = None,
    region: tuple[Sequence[int], Sequence[int]] | None = None,
    segment_ids: Sequence[int] | np.ndarray | None = None,
    reduction_factor: int = 10,
    max_error: float | None = None,
    block_shape: Sequence[int] = (256, 256, 256),
    progress: Progress | None = None,
) -> Iterator[tuple[int, Mesh]]:
    """Yield ``(segment id, Mesh)`` for every non-zero label of ``source`` (a one-channel
    :class:`~precomputed.Volume` or view, or an (x, y, z) array with ``resolution`` and
    ``voxel_offset``), within ``region`` (absolute ``(start, stop)`` voxels; default:
    all of ``source``) and among ``segment_ids`` if given.

    zmesh simplifies each block's meshes by ``reduction_factor`` with vertices moving at
    most ``max_error`` nm (default: half the smallest voxel edge, so vertices stay within
    one voxel of the label boundary).
    """
    zmesh = import_zmesh()
    seg = _Segmentation(source, resolution, voxel_offset)
    lo, hi = seg.origin, seg.origin + seg.shape
    if region is not None:
        r0, r1 = (np.array(v, np.int64).reshape(3) for v in region)
        if (r0 < lo).any() or (r1 > hi).any() or (r0 >= r1).any():
            raise InvalidArgumentError(
                f"region {r0.tolist()}-{r1.tolist()} is not a non-empty box inside "
                f"{lo.tolist()}-{hi.tolist()}"
            )
        lo, hi = r0, r1
    block = np.array(block_shape, np.int64).reshape(3)
    if (block < 2).any():
        raise InvalidArgumentError(f"block_shape must be at least 2 voxels, got {block.tolist()}")
    ids = None if segment_ids is None else np.unique(np.asarray(segment_ids, dtype=np.uint64))
    res = seg.resolution
    error = float(0.5 * res.min()) if max_error is None else float(max_error)
    tolerance = float(res.min()) / 1024
    slabs = _blocks(lo, hi, block)
    total = sum(len(s) for s in slabs)

    # First pass (several slabs only): the last slab each segment appears in.
    last: dict[int, int] | None = None
    if len(slabs) > 1:
        last = {}
        done = 0
        for k, slab in enumerate(slabs):
            for b0, b1 in slab:
                labels = np.unique(_filtered(seg.read(b0, b1), ids))
                last.update(dict.fromkeys(labels[labels != 0].tolist(), k))
                done += 1
                if progress is not None:
                    progress("scan", done, total)

    mesher = zmesh.Mesher(tuple(res.tolist()))
    pieces: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    done = 0
    for k, slab in enumerate(slabs):
        for b0, b1 in slab:
            top = np.minimum(b1 + 1, hi)  # one plane of overlap with the next block
            arr = _filtered(seg.read(b0, top), ids)
            pad_lo = (b0 == lo).astype(np.int64)
            pad_hi = (b1 >= hi).astype(np.int64)
            if pad_lo.any() or pad_hi.any():  # close the region's faces
                arr = np.pad(arr, list(zip(pad_lo.tolist(), pad_hi.tolist(), strict=True)))
            shift = (b0 - pad_lo + 0.5) * res  # array sample 0 -> world nm (voxel centre)
            mesher.mesh(np.asfortranarray(arr), close=False)
            for label in mesher.ids():
                m = mesher.get(
                    label, normals=False, reduction_factor=reduction_factor, max_error=error
                )
                if not np.isfinite(m.vertices).all():  # the simplifier failed: unsimplified
                    m = mesher.get(label, normals=False, reduction_factor=0)
                if len(m.faces):
                    pieces.setdefault(int(label), []).append(
                        ((m.vertices + shift).astype(np.float64), np.asarray(m.faces, np.int64))
                    )
            mesher.clear()
            done += 1
            if progress is not None:
                progress("mesh", done, total)
        finished = [i for i in pieces if last is None or last.get(i, k) <= k]
        for i in sorted(finished):
            yield i, _join(pieces.pop(i), tolerance)
    for i in sorted(pieces):  # pragma: no cover - every segment was finished above
        yield i, _join(pieces.pop(i), tolerance)


def _join(parts: list[tuple[np.ndarray, np.ndarray]], tolerance: float) -> Mesh:
    """One mesh of a segment's block pieces, their shared boundary vertices (equal up to
    float rounding, ``tolerance`` nm) merged."""
    counts = np.cumsum([0] + [p[0].shape[0] for p in parts[:-1]])
    v = np.concatenate([p[0] for p in parts])
    f = np.concatenate([p[1] + c for p, c in zip(parts, counts, strict=True)])
    keys = np.round(v / tolerance).astype(np.int64)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    f = inverse.reshape(-1)[f]
    ok = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    return Mesh(v[first], f[ok])

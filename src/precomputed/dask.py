"""dask integration: ``to_dask`` aligned to storage chunks, and a shard-aligned ``store``.

Both travel to workers as specs: a :class:`Volume` pickles as its TensorStore spec and the
worker reopens it with its own cache, so nothing process-local (caches, pools, locks) is
ever shipped. ``store`` rechunks to the scale's write chunks (whole shards for sharded
scales, storage chunks otherwise), aligned to the voxel-offset grid, so no two tasks ever
write the same shard or chunk; it is safe on a ``dask.distributed`` cluster of processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import InvalidArgumentError

#: A 4-D ``precomputed.Volume`` view (typed loosely: this module sits below volume.py,
#: which calls it, and uses only a view's public surface).
Volume = Any

__all__ = ["to_dask", "store", "aligned_chunks"]


def aligned_chunks(vol: Volume, block: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """dask chunk sizes for ``vol`` (a 4-D view) whose boundaries fall on the grid of
    ``block`` (x, y, z, channel) anchored at the scale's voxel offset."""
    origin = vol.chunk_layout.grid_origin
    lo, hi = vol.domain.inclusive_min, vol.domain.exclusive_max  # a 4-D view: every dimension
    out = []
    for d in range(4):
        a, b, step = lo[d], hi[d], int(block[d])
        edges = [a]
        k = (a - origin[d]) // step + 1
        while origin[d] + k * step < b:
            edges.append(origin[d] + k * step)
            k += 1
        edges.append(b)
        out.append(
            tuple(e1 - e0 for e0, e1 in zip(edges, edges[1:], strict=False) if e1 > e0) or (0,)
        )
    return tuple(out)


class _Window:
    """0-based array-like over a 4-D volume view, as dask's getter and setter expect."""

    def __init__(self, vol: Volume) -> None:
        self.vol = vol
        self.shape = vol.shape
        self.dtype = vol.dtype
        self.ndim = 4

    def _absolute(self, key: tuple[slice, ...]) -> tuple[slice, ...]:
        o = self.vol.origin
        return tuple(
            slice(o[d] + (k.start or 0), o[d] + (self.shape[d] if k.stop is None else k.stop))
            for d, k in enumerate(key)
        )

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        return self.vol[self._absolute(key)].read()

    def __setitem__(self, key: tuple[slice, ...], value: np.ndarray) -> None:
        self.vol[self._absolute(key)] = value


def _require_4d(vol: Volume) -> None:
    if vol.ndim != 4:
        raise InvalidArgumentError(
            "dask integration needs a 4-D (x, y, z, channel) view; index with slices, not integers"
        )


def to_dask(vol: Volume, chunks: Any = None) -> Any:
    """A dask array over ``vol`` (x, y, z, channel) whose chunks are storage chunks.

    ``chunks`` may be ``None`` (storage chunks), ``"write"`` (write chunks: whole shards
    for sharded scales) or a multiple per dimension of the storage chunk (x, y, z).
    """
    import dask.array as da

    _require_4d(vol)
    layout = vol.chunk_layout
    block: tuple[int, ...]
    if chunks is None:
        block = layout.read_chunk
    elif chunks == "write":
        block = layout.write_chunk
    else:
        mult = [int(m) for m in (chunks if isinstance(chunks, Sequence) else (chunks,) * 3)]
        block = (
            *(c * m for c, m in zip(layout.read_chunk[:3], mult, strict=True)),
            layout.read_chunk[3],
        )
    return da.from_array(
        _Window(vol),
        chunks=aligned_chunks(vol, block),
        asarray=False,
        fancy=False,
        lock=False,
        name=f"precomputed-{vol.handle.cache_id!r}-{vol.domain.inclusive_min}-{vol.domain.exclusive_max}",
    )


def store(array: Any, vol: Volume, *, compute: bool = True, **compute_kwargs: Any) -> Any:
    """Write a dask (or numpy) array of ``vol``'s shape into ``vol``, shard-aligned.

    The array is rechunked so that every task writes whole write chunks (shards when
    sharded, storage chunks otherwise); tasks never share a shard, so no locks are needed
    and processes on a cluster can write concurrently. ``compute=False`` returns the
    delayed object.
    """
    import dask.array as da

    _require_4d(vol)
    if not isinstance(array, da.Array):
        array = da.from_array(np.asarray(array))
    if tuple(array.shape) != tuple(vol.shape):
        raise InvalidArgumentError(
            f"array shape {tuple(array.shape)} does not match volume view shape {vol.shape}"
        )
    array = array.astype(vol.dtype).rechunk(aligned_chunks(vol, vol.chunk_layout.write_chunk))
    # dask annotates targets as numpy array-likes; it only needs __setitem__ (as _Window has).
    target = _Window(vol)
    return da.store(array, target, lock=False, compute=compute, **compute_kwargs)  # type: ignore[arg-type]

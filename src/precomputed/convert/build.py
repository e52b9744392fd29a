"""Arrays into new Precomputed volumes: :func:`from_array` and its file-reading forms
(:func:`from_tiff`, :func:`from_zarr`, :func:`from_npy`, :func:`from_source`).

The volume is written block by block through ``create.write_array`` (or, with a dask
``scheduler``, shard-aligned dask tasks through ``precomputed.dask.store``), then its
pyramid levels with ``create.build_pyramid``. Until everything is written the
destination carries the ``INCOMPLETE`` marker; a failure or a cancellation removes what
was written (and the new ``info``), so a failed conversion never leaves a volume that
opens as complete.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..create import (
    DEFAULT_BLOCK_BYTES,
    build_pyramid,
    supported_data_type,
    write_array,
)
from ..create.blocks import Cancel, Progress, check_axes, data_shape_xyzc
from ..create.plan import plan_scale
from ..create.recovery import Marker, claim_new_volume, cleanup, open_destination
from ..errors import InvalidArgumentError
from ..kvstore import KvStore
from ..sharding import choose_sharding
from ..volume import Volume
from .sources import Source, open_npy, open_source, open_tiff, open_zarr

__all__ = [
    "DEFAULT_SHARD_VOXELS",
    "from_array",
    "from_source",
    "from_tiff",
    "from_zarr",
    "from_npy",
    "auto_sharding",
]

#: ``sharding="auto"``: the write chunk (shard) TensorStore is asked for, in voxels.
DEFAULT_SHARD_VOXELS = 2**27


def auto_sharding(
    size: Sequence[int],
    chunk_size: Sequence[int],
    encoding: str = "raw",
    shard_voxels: int = DEFAULT_SHARD_VOXELS,
) -> dict[str, Any] | None:
    """TensorStore's automatic sharding for a scale whose write chunks should hold about
    ``shard_voxels`` voxels (what ``open(..., create=True)`` chooses for
    ``schema.chunk_layout.write_chunk.elements``); ``None`` when the whole scale is at
    most one chunk (TensorStore then leaves it unsharded)."""
    spec = choose_sharding(size, chunk_size, write_chunk_elements=shard_voxels, encoding=encoding)
    return None if spec is None else spec.to_json()


def _default_chunk(size: Sequence[int]) -> list[int]:
    """64³ (or the size, where smaller): Neuroglancer's and Igneous' usual chunk."""
    return [max(1, min(64, int(n))) for n in size]


def from_array(
    data: Any,
    destination: str | Mapping[str, Any],
    *,
    axes: str = "xyzc",
    type: str = "image",
    data_type: str | None = None,
    resolution: Sequence[float] | None = None,
    voxel_offset: Sequence[int] | None = None,
    chunk_size: Sequence[int] | None = None,
    encoding: str = "raw",
    jpeg_quality: int | None = None,
    compressed_segmentation_block_size: Sequence[int] | None = None,
    sharding: str | Mapping[str, Any] | None = None,
    shard_voxels: int = DEFAULT_SHARD_VOXELS,
    levels: int | Sequence[Sequence[int]] = 0,
    factor: Sequence[int] = (2, 2, 1),
    method: str | None = None,
    overwrite: bool = False,
    scheduler: Any = None,
    progress: Progress | None = None,
    cancel: Cancel = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    kvstore: KvStore | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Volume:
    """Write ``data`` (numpy, dask, zarr, a :class:`Source`: anything with ``shape``,
    ``dtype`` and basic slicing) into a new volume at ``destination``; returns scale 0.

    ``axes`` names the data's dimensions (``"zyx"``, ``"czyx"``, ``"yx"``, ...; absent
    ones have extent 1). ``sharding``: ``None``/``"none"`` (one file per chunk),
    ``"auto"`` (:func:`auto_sharding`) or a sharding spec. ``levels``: pyramid levels
    downsampled by ``factor`` each (mean for images, mode for segmentations). With
    ``scheduler`` (``"threads"``, ``"processes"`` or a ``dask.distributed.Client``) the
    base scale is written by dask tasks, one per shard. ``overwrite`` replaces a volume
    already there. Only a block at a time is in memory. On failure nothing is left.
    """
    if isinstance(data, Source):
        axes = data.axes
        resolution = resolution or data.resolution
        voxel_offset = voxel_offset if voxel_offset is not None else data.voxel_offset
        data = data.array
    if not hasattr(data, "shape"):
        data = np.asarray(data)
    shape = tuple(int(n) for n in data.shape)
    axes = check_axes(axes, shape)
    x, y, z, c = data_shape_xyzc(axes, shape)
    if type not in ("image", "segmentation"):
        raise InvalidArgumentError(f'type must be "image" or "segmentation", not {type!r}')
    if data_type is None:
        data_type, _note = supported_data_type(data.dtype, segmentation=type == "segmentation")
    size = [x, y, z]
    chunk = list(chunk_size) if chunk_size is not None else _default_chunk(size)
    sm: dict[str, Any] = {
        "size": size,
        "voxel_offset": [int(v) for v in (voxel_offset or (0, 0, 0))],
        "resolution": [float(r) for r in (resolution or (1.0, 1.0, 1.0))],
        "chunk_size": [int(n) for n in chunk],
        "encoding": encoding,
    }
    if jpeg_quality is not None:
        sm["jpeg_quality"] = int(jpeg_quality)
    if encoding == "compressed_segmentation":
        sm["compressed_segmentation_block_size"] = list(
            compressed_segmentation_block_size or (8, 8, 8)
        )
    if isinstance(sharding, str):
        if sharding == "auto":
            spec = auto_sharding(size, sm["chunk_size"], encoding, shard_voxels)
            if spec is not None:
                sm["sharding"] = spec
        elif sharding != "none":
            raise InvalidArgumentError(
                f'sharding must be "none", "auto" or a sharding spec, not {sharding!r}'
            )
    elif sharding is not None:
        sm["sharding"] = dict(sharding)
    mm = {"type": type, "data_type": data_type, "num_channels": c}
    plan = plan_scale(mm, sm)  # every member checked before anything is written

    dest = open_destination(destination, kvstore, None, storage_options)
    claim_new_volume(dest, overwrite)
    marker = Marker(dest, new_volume=True)
    try:
        marker.add(plan.key)
        vol = dest.open(multiscale_metadata=mm, scale_metadata=sm, create=True)
        if scheduler is None:
            write_array(
                vol, data, axes=axes, progress=progress, cancel=cancel, block_bytes=block_bytes
            )
        else:
            _dask_write(vol, data, axes, scheduler)
        if levels:
            build_pyramid(
                vol, levels, factor, method=method, progress=progress, cancel=cancel,
                block_bytes=block_bytes,
            )
        marker.done()
    except BaseException as e:
        cleanup(marker, e)
        raise
    return vol


def _dask_write(vol: Volume, data: Any, axes: str, scheduler: Any) -> None:
    """The base scale by dask tasks, one per write chunk (shard)."""
    import dask.array as da

    from ..dask import store

    arr = data if isinstance(data, da.Array) else da.from_array(data, chunks="auto", asarray=True)
    missing = [a for a in "xyzc" if a not in axes]
    for _ in missing:
        arr = arr[..., None]
    order = axes + "".join(missing)
    arr = arr.transpose([order.index(a) for a in "xyzc"])
    store(arr, vol.whole(), scheduler=scheduler)  # a name, or a dask.distributed Client


def from_source(source: Source | str | Path, destination: str | Mapping[str, Any], **kw: Any) -> Volume:
    """:func:`from_array` of a :class:`Source` or a path (:func:`sources.open_source`)."""
    src = source if isinstance(source, Source) else open_source(source, kw.pop("axes", None))
    return from_array(src, destination, **kw)


def from_tiff(path: str | Path, destination: str | Mapping[str, Any], *, axes: str | None = None, **kw: Any) -> Volume:
    """A TIFF file or a folder of TIFF files (z planes) into a new volume."""
    return from_array(open_tiff(path, axes), destination, **kw)


def from_zarr(path: str | Path, destination: str | Mapping[str, Any], *, axes: str | None = None, **kw: Any) -> Volume:
    """A zarr array or OME-Zarr image (its finest dataset, with its voxel size and
    offset) into a new volume."""
    return from_array(open_zarr(path, axes), destination, **kw)


def from_npy(path: str | Path, destination: str | Mapping[str, Any], *, axes: str | None = None, **kw: Any) -> Volume:
    """A numpy ``.npy`` file (memory-mapped) into a new volume."""
    return from_array(open_npy(path, axes), destination, **kw)

"""Other formats in and out: TIFF stacks, zarr / OME-Zarr and numpy files into new
Precomputed volumes, and a Precomputed scale out to zarr. What ``precomputed convert``
runs; Jupyter users call the same functions.

* :mod:`.sources` -- :func:`open_source` and its kinds: a file opened as a lazy array
  with its axes and (OME-Zarr) voxel size and offset.
* :mod:`.build` -- :func:`from_array`, :func:`from_tiff`, :func:`from_zarr`,
  :func:`from_npy`, :func:`from_source`: a new volume written block by block (or by dask
  tasks), with sharding (``"auto"``: TensorStore's choice) and pyramid levels; the
  ``INCOMPLETE`` marker until done, nothing left on failure.
* :mod:`.export` -- :func:`to_zarr`: one scale to a zarr v3 (OME-Zarr) or v2 array.
"""

from . import build, export, sources
from .build import (
    DEFAULT_SHARD_VOXELS,
    auto_sharding,
    from_array,
    from_npy,
    from_source,
    from_tiff,
    from_zarr,
)
from .export import to_zarr
from .sources import (
    Source,
    TiffPages,
    describe,
    open_npy,
    open_source,
    open_tiff,
    open_zarr,
    source_kind,
)

__all__ = [
    "DEFAULT_SHARD_VOXELS",
    "Source",
    "TiffPages",
    "auto_sharding",
    "build",
    "describe",
    "export",
    "from_array",
    "from_npy",
    "from_source",
    "from_tiff",
    "from_zarr",
    "open_npy",
    "open_source",
    "open_tiff",
    "open_zarr",
    "source_kind",
    "sources",
    "to_zarr",
]

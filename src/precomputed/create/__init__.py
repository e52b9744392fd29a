"""Create volumes and scales, fill them from arrays, and build pyramids.

Everything here goes through the driver: metadata is validated and assembled by
:func:`precomputed.constraints.create_scale` (via :func:`precomputed.spec.parse_spec`, as
``precomputed.open(spec, create=True)`` does), volumes are created with
:func:`precomputed.open` and written through :class:`~precomputed.Volume` (one
transaction per shard for sharded scales). The modules only add what TensorStore leaves
to its callers:

* :mod:`.plan` -- :func:`plan_scale` validates ``multiscale_metadata`` /
  ``scale_metadata`` without I/O and returns the ``info`` the creation would write (the
  widget's live preview); :func:`plan_pyramid`, :func:`next_scale_metadata`.
* :mod:`.pyramid` -- :func:`create_volume`, :func:`add_scale`, :func:`downsample`,
  :func:`build_pyramid` (the next scale(s) with the size, voxel offset, resolution and
  key that CloudVolume's ``add_scale`` and Igneous compute, filled by block mean or mode
  in blocks aligned to the destination's write chunks) and :func:`update_coarser_scales`
  (after an edit of a finer scale).
* :mod:`.blocks` -- :func:`write_array` writes an array-like (numpy, dask, a lazy napari
  level) into a scale block by block, so memory stays bounded.
* :mod:`.recovery` -- the ``INCOMPLETE`` marker: a cancelled or failed operation removes
  what it wrote, and :func:`discard_incomplete` cleans up after a crash.

Long operations take ``progress(done, total)`` and ``cancel`` (a ``threading.Event`` or a
callable returning ``True`` to stop).
"""

from . import blocks, plan, pyramid, recovery
from .blocks import DEFAULT_BLOCK_BYTES, Cancelled, write_array
from .plan import (
    ScalePlan,
    default_method,
    next_scale_metadata,
    plan_pyramid,
    plan_scale,
    supported_data_type,
)
from .pyramid import (
    add_scale,
    build_pyramid,
    coarser_scales,
    create_volume,
    downsample,
    update_coarser_scales,
)
from .recovery import MARKER, IncompleteVolumeError, discard_incomplete, find_incomplete

__all__ = [
    "Cancelled",
    "IncompleteVolumeError",
    "ScalePlan",
    "plan_scale",
    "plan_pyramid",
    "next_scale_metadata",
    "create_volume",
    "add_scale",
    "downsample",
    "build_pyramid",
    "coarser_scales",
    "update_coarser_scales",
    "write_array",
    "supported_data_type",
    "default_method",
    "find_incomplete",
    "discard_incomplete",
    "MARKER",
    "DEFAULT_BLOCK_BYTES",
    "blocks",
    "plan",
    "pyramid",
    "recovery",
]

"""Segments of segmentation layers: search by properties, show only some, show their
meshes. No Qt here: the dock widget (:mod:`napari_precomputed.widgets.segments`) drives it.

* :mod:`.background` -- work off the UI thread, results back on it (a Qt poster or a queue).
* :mod:`.search` -- :class:`SegmentTable`: the layer's ``features`` searched by label and tag.
* :mod:`.selection` -- show only some labels of a Labels layer, in their own colours.
* :mod:`.meshes` -- :class:`SegmentMeshes`: Surface layers of selected segments, placed,
  coloured, LOD-refined in workers, cached; :func:`meshes_rewritten` after a re-mesh.
* :mod:`.view` -- :class:`SegmentView`, :func:`segment_view`, :func:`show_segments`.
"""

from .background import Background, register_poster, register_poster_loader
from .meshes import (
    LOD_COARSEST,
    MESH_CACHE,
    MESH_METADATA,
    SegmentMeshes,
    meshes_rewritten,
    surface_placement,
    surface_vertices,
)
from .search import SegmentRow, SegmentTable
from .selection import label_colors, original_colormap, show_all, show_only
from .view import SegmentView, is_segmentation_layer, segment_view, show_segments

__all__ = [
    "LOD_COARSEST",
    "MESH_CACHE",
    "MESH_METADATA",
    "Background",
    "SegmentMeshes",
    "SegmentRow",
    "SegmentTable",
    "SegmentView",
    "is_segmentation_layer",
    "label_colors",
    "meshes_rewritten",
    "original_colormap",
    "register_poster",
    "register_poster_loader",
    "segment_view",
    "show_all",
    "show_only",
    "show_segments",
    "surface_placement",
    "surface_vertices",
]

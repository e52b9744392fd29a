"""One pyramid level as napari sees it: a lazy, 0-based array that may pad the volume.

napari needs every level of a multiscale layer to be an exact downsampling of level 0
(it infers the factors from shape ratios and has no per-level offset), so a level is
presented over a window of the scale's voxel grid that can start before the volume and
end after it. :class:`LevelArray` maps that window onto a :class:`precomputed.Volume`:
voxels outside the volume read as the fill value (0) without any I/O.

Indexing returns another view (napari slices twice before it asks for data);
``np.asarray`` fetches only the chunks the view touches, concurrently and through the
volume's shared chunk cache. Nothing here holds mutable state, so views can be read from
napari's slicing threads at the same time.
"""

from __future__ import annotations

from collections.abc import Sequence

from precomputed import Volume
from precomputed.views import LAYOUTS, ZyxArray

__all__ = ["LevelArray", "LAYOUTS"]


class LevelArray(ZyxArray):
    """A lazy, read-only view of one scale in napari's axis order (see :data:`LAYOUTS`):
    a :class:`precomputed.views.ZyxArray` over a window of the whole scale.

    ``origin`` is the absolute voxel coordinate (x, y, z) of presented index 0 and
    ``extent`` the presented size (x, y, z); both may reach outside the volume.
    """

    def __init__(
        self, volume: Volume, layout: str, origin: Sequence[int], extent: Sequence[int]
    ) -> None:
        super().__init__(volume, layout=layout, origin=origin, extent=extent, writable=False)

    def __repr__(self) -> str:
        return (
            f"<LevelArray {self.layout} shape={self.shape} dtype={self.dtype} "
            f"scale {self.volume.scale_index} of {self.volume.kvstore.url}>"
        )

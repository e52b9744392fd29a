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
from functools import cached_property
from typing import Any

import numpy as np

from precomputed import Volume
from precomputed.internal.arraylike import ArrayLike
from precomputed.internal.selection import compose_selection, selection_length

__all__ = ["LevelArray", "LAYOUTS"]

#: Presented axis order -> the volume dimension (x=0, y=1, z=2, channel=3) of each axis.
LAYOUTS: dict[str, tuple[int, ...]] = {
    "zyx": (2, 1, 0),  # one channel, squeezed
    "czyx": (3, 2, 1, 0),  # a channel axis napari shows as a slider
    "zyxc": (2, 1, 0, 3),  # RGB: napari wants the colour axis last
}

_Sel = tuple[int, int, int]  # start, stop, step in presented coordinates


class LevelArray(ArrayLike):
    """A lazy view of one scale in napari's axis order (see :data:`LAYOUTS`).

    ``origin`` is the absolute voxel coordinate (x, y, z) of presented index 0 and
    ``extent`` the presented size (x, y, z); both may reach outside the volume.
    """

    def __init__(
        self,
        volume: Volume,
        layout: str,
        origin: Sequence[int],
        extent: Sequence[int],
        *,
        _sel: tuple[_Sel, ...] | None = None,
        _kept: tuple[int, ...] | None = None,
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
        self._vol = volume
        self.layout = layout
        self.origin: tuple[int, int, int] = tuple(int(o) for o in origin)  # type: ignore[assignment]
        self.extent: tuple[int, int, int] = tuple(int(n) for n in extent)  # type: ignore[assignment]
        dims = LAYOUTS[layout]
        channels = int(volume.shape[3])
        full = tuple(channels if d == 3 else self.extent[d] for d in dims)
        self._sel: tuple[_Sel, ...] = _sel if _sel is not None else tuple((0, n, 1) for n in full)
        self._kept: tuple[int, ...] = _kept if _kept is not None else tuple(range(len(dims)))

    # -- what napari asks for (no I/O) -------------------------------------------------
    @property
    def volume(self) -> Volume:
        """The whole scale this level reads from."""
        return self._vol

    @property
    def dtype(self) -> np.dtype:
        return self._vol.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(selection_length(*self._sel[a]) for a in self._kept)

    @cached_property
    def chunks(self) -> tuple[tuple[int, ...], ...]:
        """Storage chunk boundaries per axis, dask style, so napari expands the tiles it
        requests to whole chunks (a partly read chunk is decoded whole anyway)."""
        dims = LAYOUTS[self.layout]
        grid_origin = self._vol.scale.voxel_offset
        chunk = self._vol.chunk_layout.read_chunk
        out: list[tuple[int, ...]] = []
        for a in self._kept:
            s0, s1, st = self._sel[a]
            n = selection_length(s0, s1, st)
            d = dims[a]
            if d == 3 or st != 1 or n == 0:
                out.append((n,) if n else (0,))
                continue
            first = self.origin[d] + s0  # absolute coordinate of this axis' index 0
            c = chunk[d]
            k = -((grid_origin[d] - first) // c)  # first boundary at or after `first`
            cuts = [b - first for b in range(grid_origin[d] + k * c, first + n, c) if b > first]
            edges = [0, *cuts, n]
            out.append(tuple(b - a for a, b in zip(edges[:-1], edges[1:], strict=True)))
        return tuple(out)

    def __len__(self) -> int:
        if not self._kept:
            raise TypeError("len() of a 0-d view")
        return self.shape[0]

    def __repr__(self) -> str:
        return (
            f"<LevelArray {self.layout} shape={self.shape} dtype={self.dtype} "
            f"scale {self._vol.scale_index} of {self._vol.kvstore.url}>"
        )

    # -- indexing (no I/O) -------------------------------------------------------------
    def __getitem__(self, key: Any) -> LevelArray:
        sel, kept = compose_selection(self._sel, self._kept, key)
        return LevelArray(self._vol, self.layout, self.origin, self.extent, _sel=sel, _kept=kept)

    # -- I/O ---------------------------------------------------------------------------
    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        arr = self.read()
        return arr if dtype is None else arr.astype(dtype, copy=False)

    def read(self) -> np.ndarray:
        """Fetch this view (only the chunks it touches); padding reads as 0."""
        dims = LAYOUTS[self.layout]
        vol = self._vol
        # Bounding box of the selection in absolute coordinates, per volume dimension.
        lo = [0, 0, 0, 0]
        hi = [1, 1, 1, 1]  # a squeezed channel reads channel 0
        for a, d in enumerate(dims):
            s0, s1, _ = self._sel[a]
            base = 0 if d == 3 else self.origin[d]
            lo[d], hi[d] = base + s0, base + max(s0, s1)
        vmin = (*vol.domain.inclusive_min[:3], 0)
        vmax = (*vol.domain.exclusive_max[:3], vol.shape[3])
        ilo = [max(a, b) for a, b in zip(lo, vmin, strict=True)]
        ihi = [min(a, b) for a, b in zip(hi, vmax, strict=True)]
        # czyx buffer over the bounding box; the part inside the volume is read.
        buf = np.zeros([hi[d] - lo[d] for d in (3, 2, 1, 0)], vol.dtype)
        if all(a < b for a, b in zip(ilo, ihi, strict=True)):
            region = vol[tuple(slice(a, b) for a, b in zip(ilo, ihi, strict=True))]
            dst = tuple(slice(ilo[d] - lo[d], ihi[d] - lo[d]) for d in (3, 2, 1, 0))
            buf[dst] = region.read_czyx()
        # To presented axis order (an absent channel axis goes last and is dropped).
        order = [3 - d for d in dims] + ([0] if 3 not in dims else [])
        buf = buf.transpose(order)
        index: list[slice | int] = [
            slice(None, None, self._sel[a][2]) if a in self._kept else 0 for a in range(len(dims))
        ]
        if 3 not in dims:
            index.append(0)
        return np.ascontiguousarray(buf[tuple(index)])

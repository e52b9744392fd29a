"""0-based, C-order lazy arrays in napari's axis order over a volume view.

A :class:`ZyxArray` presents a window of a 4-D (x, y, z, channel) view in one of the
:data:`LAYOUTS`: (z, y, x) for one channel, (c, z, y, x), or (z, y, x, c) for RGB. The
window defaults to the view's own box; it may also start before the volume and end after
it (``origin``/``extent``), as the plugin's pyramid levels need: voxels outside read as
the fill value (0) without I/O. ``__getitem__`` returns another lazy view (napari slices
twice before it asks for data); only ``__array__`` fetches, and then only the chunks the
view touches. ``__setitem__`` writes through (unless the view is read-only), so a napari
Labels layer backed by it captures every edit.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any, Protocol, TypeVar

import numpy as np

from .errors import InvalidArgumentError
from .internal.arraylike import ArrayLike
from .internal.selection import Selection, compose_selection, is_basic_index, selection_length

__all__ = ["LAYOUTS", "VolumeView", "ZyxArray"]

#: Presented axis order -> the volume dimension (x=0, y=1, z=2, channel=3) of each axis.
LAYOUTS: dict[str, tuple[int, ...]] = {
    "zyx": (2, 1, 0),  # one channel, squeezed
    "czyx": (3, 2, 1, 0),  # a channel axis napari shows as a slider
    "zyxc": (2, 1, 0, 3),  # RGB: napari wants the colour axis last
}
# Selections are kept over (channel, z, y, x); axis a is volume dimension _DIM[a].
_DIM = (3, 2, 1, 0)
_Z = TypeVar("_Z", bound="ZyxArray")


class VolumeView(Protocol):
    """What a :class:`ZyxArray` uses of the view it presents (a ``precomputed.Volume``)."""

    @property
    def dtype(self) -> np.dtype: ...

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def ndim(self) -> int: ...

    @property
    def origin(self) -> tuple[int, ...]: ...

    @property
    def chunk_layout(self) -> Any: ...

    def __getitem__(self, key: Any) -> VolumeView: ...

    def read_czyx(self) -> np.ndarray: ...

    def write(self, value: Any) -> Any: ...


class ZyxArray(ArrayLike):
    """Lazy view; ``np.asarray`` reads. Steps are applied to the fetched region.

    ``layout`` is one of :data:`LAYOUTS` (default: ``"zyx"`` for one channel when
    ``squeeze_channel``, else ``"czyx"``); ``origin`` (x, y, z) is the absolute voxel of
    index 0 and ``extent`` (x, y, z) the presented size, both defaulting to the view's box.
    """

    def __init__(
        self,
        volume: VolumeView,
        squeeze_channel: bool = True,
        *,
        layout: str | None = None,
        origin: Sequence[int] | None = None,
        extent: Sequence[int] | None = None,
        writable: bool = True,
    ) -> None:
        if volume.ndim != 4:
            raise InvalidArgumentError("ZyxArray needs a 4-D volume view")
        channels = int(volume.shape[3])
        if layout is None:
            layout = "zyx" if squeeze_channel and channels == 1 else "czyx"
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
        self._vol = volume
        self.layout = layout
        self.origin: tuple[int, int, int] = tuple(  # type: ignore[assignment]
            int(o) for o in (volume.origin[:3] if origin is None else origin)
        )
        self.extent: tuple[int, int, int] = tuple(  # type: ignore[assignment]
            int(n) for n in (volume.shape[:3] if extent is None else extent)
        )
        self.writable = writable
        # Per (c, z, y, x) axis; the presented axes are ``_kept`` (in presented order). A
        # squeezed channel reads the view's first channel.
        full = (channels, *(self.extent[d] for d in _DIM[1:]))
        kept = tuple(3 - d for d in LAYOUTS[layout])
        self._sel: Selection = tuple(
            (0, n, 1) if a in kept else (0, 1, 1) for a, n in enumerate(full)
        )
        self._kept: tuple[int, ...] = kept

    def _derive(self: _Z, sel: Selection, kept: tuple[int, ...]) -> _Z:
        """The same window with another selection (indexing never does I/O)."""
        out = object.__new__(type(self))
        for name in ("_vol", "layout", "origin", "extent", "writable"):
            setattr(out, name, getattr(self, name))
        out._sel, out._kept = sel, kept
        return out

    # -- what napari asks for (no I/O) -------------------------------------------------
    @property
    def volume(self) -> Any:
        """The view this array presents (for the plugin's levels: the whole scale)."""
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
        layout = self._vol.chunk_layout
        grid_origin, chunk = layout.grid_origin, layout.read_chunk
        out: list[tuple[int, ...]] = []
        for a in self._kept:
            s0, s1, st = self._sel[a]
            n = selection_length(s0, s1, st)
            d = _DIM[a]
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

    def __repr__(self) -> str:
        return f"<ZyxArray shape={self.shape} dtype={self.dtype} of {self._vol!r}>"

    def _repr_html_(self) -> str | None:
        """Jupyter's rich display: the volume it presents (scales, thumbnail)."""
        show = getattr(self._vol, "_repr_html_", None)
        if show is None:
            return None
        text: str = show()
        return f"<div><code>{type(self).__name__} shape={self.shape}</code></div>" + text

    # -- indexing ---------------------------------------------------------------------
    def __getitem__(self: _Z, key: Any) -> _Z:
        sel, kept = compose_selection(self._sel, self._kept, key)
        return self._derive(sel, kept)

    def _bounds(self) -> tuple[list[int], list[int]]:
        """Bounding box of the selection in absolute x, y, z, channel coordinates."""
        base = (*self.origin, self._vol.origin[3])
        lo, hi = [0, 0, 0, 0], [0, 0, 0, 0]
        for a, (s0, s1, _) in enumerate(self._sel):
            d = _DIM[a]
            lo[d], hi[d] = base[d] + s0, base[d] + max(s0, s1)
        return lo, hi

    def _inside(self, lo: Sequence[int], hi: Sequence[int]) -> bool:
        vmin, vshape = self._vol.origin, self._vol.shape
        return all(vmin[d] <= lo[d] and hi[d] <= vmin[d] + vshape[d] for d in range(4))

    def _region(self) -> VolumeView:
        """The view of the selection's bounding box (which lies inside the volume)."""
        lo, hi = self._bounds()
        if not self._inside(lo, hi):
            raise InvalidArgumentError(
                "cannot write outside the volume: this view's window extends beyond it"
            )
        return self._vol[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]

    def _strides(self) -> tuple[slice | int, ...]:
        out: list[slice | int] = []
        for a, (_s0, _s1, st) in enumerate(self._sel):
            out.append(slice(None, None, st) if a in self._kept else 0)
        return tuple(out)

    def _presented(self, czyx_view: np.ndarray) -> np.ndarray:
        """Axes of ``czyx_view`` (the kept axes in c, z, y, x order) in presented order."""
        order = sorted(self._kept)
        perm = [order.index(a) for a in self._kept]
        return czyx_view if perm == sorted(perm) else czyx_view.transpose(perm)

    # -- I/O --------------------------------------------------------------------------
    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        arr = self.read()
        return arr if dtype is None else arr.astype(dtype, copy=False)

    def read(self) -> np.ndarray:
        """Fetch this view (only the chunks it touches); outside the volume reads as 0."""
        vol = self._vol
        lo, hi = self._bounds()
        if self._inside(lo, hi):
            czyx = vol[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))].read_czyx()
        else:
            # czyx buffer over the bounding box; the part inside the volume is read.
            czyx = np.zeros([hi[d] - lo[d] for d in _DIM], vol.dtype)
            vmin, vshape = vol.origin, vol.shape
            ilo = [max(lo[d], vmin[d]) for d in range(4)]
            ihi = [min(hi[d], vmin[d] + vshape[d]) for d in range(4)]
            if all(a < b for a, b in zip(ilo, ihi, strict=True)):
                region = vol[tuple(slice(a, b) for a, b in zip(ilo, ihi, strict=True))]
                dst = tuple(slice(ilo[d] - lo[d], ihi[d] - lo[d]) for d in _DIM)
                czyx[dst] = region.read_czyx()
        arr = self._presented(czyx[self._strides()])
        # np.asarray: with every axis indexed away numpy would hand back a scalar.
        return np.asarray(arr) if np.ndim(arr) == 0 else np.ascontiguousarray(arr)

    def __setitem__(self, key: Any, value: Any) -> None:
        if not self.writable:
            raise TypeError(f"'{type(self).__name__}' object does not support item assignment")
        if is_basic_index(key):
            view = self[key]
            if any(st != 1 for a, (_, _, st) in enumerate(view._sel) if a in view._kept):
                view._write_strided(value)
            else:
                view._write(value)
            return
        # Fancy indexing (napari's data_setitem): read-modify-write the bounding box.
        self._write_fancy(key, value)

    def _czyx(self, value: Any) -> np.ndarray:
        """``value`` (presented order, broadcast to this view) as a (c, z, y, x) block."""
        arr = np.broadcast_to(np.asarray(value, dtype=self.dtype), self.shape)
        order = sorted(self._kept)
        arr = arr.transpose([self._kept.index(a) for a in order]) if self._kept != tuple(order) else arr
        return arr.reshape([selection_length(*self._sel[a]) for a in range(4)])

    def _write(self, value: Any) -> None:
        self._region().write(self._czyx(value).transpose(3, 2, 1, 0))

    def _write_strided(self, value: Any) -> None:
        region = self._region()
        block = region.read_czyx().copy()
        self._presented(block[self._strides()])[...] = value
        region.write(block.transpose(3, 2, 1, 0))

    def _write_fancy(self, key: Any, value: Any) -> None:
        if not isinstance(key, tuple):
            key = (key,)
        idx = [np.asarray(k) for k in key]
        if len(idx) != self.ndim or not all(np.issubdtype(i.dtype, np.integer) for i in idx):
            raise IndexError("fancy writes need one integer index array per axis")
        if idx[0].size == 0:
            return
        shape = self.shape
        idx = [np.where(i < 0, i + n, i) for i, n in zip(idx, shape, strict=True)]
        lo = [int(i.min()) for i in idx]
        hi = [int(i.max()) + 1 for i in idx]
        sub = self[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
        block = np.array(sub)
        block[tuple(i - a for i, a in zip(idx, lo, strict=True))] = value
        sub._write(block)

"""A 0-based, C-order lazy array in napari's axis order over a :class:`Volume`.

Axes are (channel, z, y, x), or (z, y, x) for single-channel volumes. ``__getitem__``
returns another lazy view (napari slices twice before it asks for data); only
``__array__`` fetches, and then only the chunks the view touches. ``__setitem__`` writes
through, so a napari Labels layer backed by it captures every edit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InvalidArgumentError
from .internal.arraylike import ArrayLike
from .internal.selection import compose_selection, is_basic_index, selection_length

if TYPE_CHECKING:
    from .volume import Volume

__all__ = ["ZyxArray"]

# czyx axis i corresponds to volume dimension _DIM[i] (x=0, y=1, z=2, channel=3)
_DIM = (3, 2, 1, 0)


class ZyxArray(ArrayLike):
    """Lazy view; ``np.asarray`` reads. Steps are applied to the fetched region."""

    def __init__(
        self,
        volume: Volume,
        squeeze_channel: bool = True,
        _sel: tuple[tuple[int, int, int], ...] | None = None,
        _kept: tuple[int, ...] | None = None,
    ) -> None:
        if volume.ndim != 4:
            raise InvalidArgumentError("ZyxArray needs a 4-D volume view")
        self._vol = volume
        full = tuple(volume.shape[d] for d in _DIM)  # c, z, y, x extents
        self._full = full
        self._sel = _sel if _sel is not None else tuple((0, n, 1) for n in full)
        if _kept is None:
            _kept = (1, 2, 3) if (squeeze_channel and full[0] == 1) else (0, 1, 2, 3)
            if len(_kept) == 3:
                self._sel = ((0, 1, 1), *self._sel[1:])
        self._kept = _kept

    @property
    def volume(self) -> Volume:
        return self._vol

    @property
    def dtype(self) -> np.dtype:
        return self._vol.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(selection_length(*self._sel[a]) for a in self._kept)

    def __repr__(self) -> str:
        return f"<ZyxArray shape={self.shape} dtype={self.dtype} of {self._vol!r}>"

    # -- indexing ---------------------------------------------------------------------
    def _resolve(self, key: Any) -> tuple[tuple[tuple[int, int, int], ...], tuple[int, ...]]:
        return compose_selection(self._sel, self._kept, key)

    def __getitem__(self, key: Any) -> ZyxArray:
        sel, kept = self._resolve(key)
        return ZyxArray(self._vol, _sel=sel, _kept=kept)

    def _region(self) -> Volume:
        """The volume view covering the bounding box of this selection."""
        origin = self._vol.origin
        key: list[slice] = [slice(None)] * 4
        for a, (s0, s1, _) in enumerate(self._sel):
            d = _DIM[a]
            key[d] = slice(origin[d] + s0, origin[d] + max(s0, s1))
        return self._vol[tuple(key)]

    def _strides(self) -> tuple[slice | int, ...]:
        out: list[slice | int] = []
        for a, (_s0, _s1, st) in enumerate(self._sel):
            out.append(slice(None, None, st) if a in self._kept else 0)
        return tuple(out)

    # -- I/O --------------------------------------------------------------------------
    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        # np.asarray: with every axis indexed away numpy would hand back a scalar.
        arr = np.asarray(self._region().read_czyx()[self._strides()])
        return arr if dtype is None else arr.astype(dtype, copy=False)

    def read(self) -> np.ndarray:
        return self.__array__()

    def __setitem__(self, key: Any, value: Any) -> None:
        if is_basic_index(key):
            view = self[key]
            if any(st != 1 for a, (_, _, st) in enumerate(view._sel) if a in view._kept):
                view._write_strided(value)
            else:
                view._write(value)
            return
        # Fancy indexing (napari's data_setitem): read-modify-write the bounding box.
        self._write_fancy(key, value)

    def _write(self, value: Any) -> None:
        arr = np.broadcast_to(np.asarray(value, dtype=self.dtype), self.shape)
        full = arr.reshape([selection_length(*self._sel[a]) for a in range(4)])
        self._region().write(full.transpose(3, 2, 1, 0))

    def _write_strided(self, value: Any) -> None:
        region = self._region()
        block = region.read_czyx().copy()
        block[self._strides()] = value
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

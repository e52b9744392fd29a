"""A 0-based, C-order lazy array in napari's axis order over a :class:`Volume`.

Axes are (channel, z, y, x), or (z, y, x) for single-channel volumes. ``__getitem__``
returns another lazy view (napari slices twice before it asks for data); only
``__array__`` fetches, and then only the chunks the view touches. ``__setitem__`` writes
through, so a napari Labels layer backed by it captures every edit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._arraylike import ArrayLike
from .errors import InvalidArgumentError

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
        if _is_basic(key):
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


def selection_length(start: int, stop: int, step: int) -> int:
    return max(0, -(-(stop - start) // step))


Selection = tuple[tuple[int, int, int], ...]


def compose_selection(
    sel: Selection, kept: tuple[int, ...], key: Any
) -> tuple[Selection, tuple[int, ...]]:
    """Apply a basic numpy index to a lazy selection without I/O.

    ``sel`` holds ``(start, stop, step)`` per underlying axis and ``kept`` the axes still
    visible; integers drop an axis, slices (positive steps) compose, ``...`` expands.
    Shared by every lazy view here so they all index exactly like numpy.
    """
    ndim = len(kept)
    if not isinstance(key, tuple):
        key = (key,)
    if sum(k is Ellipsis for k in key) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1 :]
    if len(key) > ndim:
        raise IndexError(f"too many indices for array: {len(key)} > {ndim}")
    key = key + (slice(None),) * (ndim - len(key))
    out = list(sel)
    new_kept: list[int] = []
    for a, k in zip(kept, key, strict=True):
        s0, s1, st = out[a]
        n = selection_length(s0, s1, st)
        if isinstance(k, slice):
            a0, a1, ast = k.indices(n)
            if ast <= 0:
                raise IndexError("negative steps are not supported on lazy views")
            m = selection_length(a0, a1, ast)
            p0 = s0 + a0 * st
            out[a] = (p0, p0 + (m - 1) * st * ast + 1 if m else p0, st * ast)
            new_kept.append(a)
        elif isinstance(k, (int, np.integer)):
            i = int(k) + n if int(k) < 0 else int(k)
            if not 0 <= i < n:
                raise IndexError(f"index {int(k)} is out of bounds for axis with size {n}")
            p = s0 + i * st
            out[a] = (p, p + 1, 1)
        else:
            raise IndexError(f"only integers and slices are supported on lazy views, got {k!r}")
    return tuple(out), tuple(new_kept)


def _is_basic(key: Any) -> bool:
    items = key if isinstance(key, tuple) else (key,)
    return all(isinstance(k, (slice, int, np.integer)) or k is Ellipsis for k in items)

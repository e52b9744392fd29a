"""The data of an edit layer: a lazy (z, y, x) view whose writes go into a transaction.

Its ``__setitem__`` is the one place that sees paint, fill, polygon, erase, undo, redo,
``data_setitem`` and programmatic writes alike; after each it calls ``on_write`` (the
edit session's hook that remembers what the edits were based on).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import precomputed

__all__ = ["EditableArray"]


class EditableArray:
    """The data of an edit layer: a lazy (z, y, x) view that writes into a transaction.

    Basic indexing returns views, ``np.asarray`` reads (dirty chunks included), an index
    of integers returns the voxel's value, integer-array ("fancy") indexing reads and
    writes chunk by chunk. Every write ends in ``on_write()``.
    """

    def __init__(
        self,
        view: precomputed.ZyxArray,
        on_write: Callable[[], None],
        grid: tuple[np.ndarray, np.ndarray] | None = None,
        *,
        owner: Any = None,
    ) -> None:
        self._view = view
        self._on_write = on_write
        # What the array belongs to (its edit session), named in the repr.
        self._owner = owner
        # (origin of index 0 relative to the chunk grid, chunk shape), both z, y, x; only
        # for the top-level array: used to split fancy reads/writes by chunk.
        self._grid = grid

    @property
    def dtype(self) -> np.dtype:
        return self._view.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self._view.shape

    @property
    def ndim(self) -> int:
        return self._view.ndim

    @property
    def size(self) -> int:
        return self._view.size

    @property
    def nbytes(self) -> int:
        return self._view.nbytes

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"<EditableArray shape={self.shape} dtype={self.dtype} of {self._owner!r}>"

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return self._view.__array__(dtype)

    def __getitem__(self, key: Any) -> Any:
        if _is_basic(key):
            items = key if isinstance(key, tuple) else (key,)
            if len(items) == self.ndim and all(isinstance(k, (int, np.integer)) for k in items):
                return np.asarray(self._view[key])[()]  # one voxel: its value
            return EditableArray(self._view[key], self._on_write, owner=self._owner)
        idx = self._int_arrays(key)
        if idx is None:
            return self._bbox_read(key)
        shape = np.broadcast_shapes(*(i.shape for i in idx))
        flat = [np.broadcast_to(i, shape).ravel() for i in idx]
        out = np.empty(len(flat[0]), self.dtype)
        for sel in self._by_chunk(flat):
            lo = [int(i[sel].min()) for i in flat]
            hi = [int(i[sel].max()) + 1 for i in flat]
            block = np.asarray(self._view[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))])
            out[sel] = block[tuple(i[sel] - a for i, a in zip(flat, lo, strict=True))]
        return out.reshape(shape)

    def __setitem__(self, key: Any, value: Any) -> None:
        try:
            if _is_basic(key):
                self._view[key] = value
                return
            idx = self._int_arrays(key)
            if idx is None:
                self._bbox_write(key, value)
                return
            shape = np.broadcast_shapes(*(i.shape for i in idx))
            flat = [np.broadcast_to(i, shape).ravel() for i in idx]
            values = np.broadcast_to(np.asarray(value, dtype=self.dtype), shape).ravel()
            for sel in self._by_chunk(flat):
                lo = [int(i[sel].min()) for i in flat]
                hi = [int(i[sel].max()) + 1 for i in flat]
                sub = self._view[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
                block = np.array(sub)
                block[tuple(i[sel] - a for i, a in zip(flat, lo, strict=True))] = values[sel]
                sub[...] = block
        finally:
            self._on_write()

    # -- fancy indexing helpers ---------------------------------------------------------
    def _int_arrays(self, key: Any) -> list[np.ndarray] | None:
        """One in-range integer index array per axis, or None for other fancy keys."""
        items = key if isinstance(key, tuple) else (key,)
        if len(items) != self.ndim:
            return None
        out = []
        for k, n in zip(items, self.shape, strict=True):
            a = np.asarray(k)
            if a.dtype.kind not in "iu":
                return None
            a = np.where(a < 0, a + n, a).astype(np.int64)
            if a.size and (a.min() < 0 or a.max() >= n):
                raise IndexError(f"index out of bounds for axis with size {n}")
            out.append(a)
        return out

    def _by_chunk(self, flat: list[np.ndarray]) -> list[np.ndarray]:
        """Positions of ``flat`` indices grouped by storage chunk (one group if unknown)."""
        n = len(flat[0]) if flat else 0
        if n == 0:
            return []
        if self._grid is None:
            return [np.arange(n)]
        origin, chunk = self._grid
        cells = np.stack([(i + o) // c for i, o, c in zip(flat, origin, chunk, strict=True)], -1)
        _, inverse = np.unique(cells, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        order = np.argsort(inverse, kind="stable")
        bounds = np.flatnonzero(np.diff(inverse[order])) + 1
        return np.split(order, bounds)

    def _bbox_key(self, key: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        """Bounding-box view key and the key relative to it, for any numpy-style index."""
        items = key if isinstance(key, tuple) else (key,)
        if len(items) == 1 and np.asarray(items[0]).dtype == bool and self.ndim > 1:
            items = tuple(np.nonzero(np.asarray(items[0])))
        if any(k is Ellipsis for k in items):
            i = next(i for i, k in enumerate(items) if k is Ellipsis)
            items = items[:i] + (slice(None),) * (self.ndim - len(items) + 1) + items[i + 1 :]
        items = items + (slice(None),) * (self.ndim - len(items))
        view_key: list[Any] = []
        local: list[Any] = []
        for k, n in zip(items, self.shape, strict=True):
            if isinstance(k, slice) or isinstance(k, (int, np.integer)):
                view_key.append(slice(None))
                local.append(k)
                continue
            a = np.asarray(k)
            if a.dtype == bool:
                a = np.nonzero(a)[0]
            a = np.where(a < 0, a + n, a).astype(np.int64)
            lo, hi = (int(a.min()), int(a.max()) + 1) if a.size else (0, 0)
            view_key.append(slice(lo, hi))
            local.append(a - lo)
        return tuple(view_key), tuple(local)

    def _bbox_read(self, key: Any) -> np.ndarray:
        view_key, local = self._bbox_key(key)
        return np.asarray(self._view[view_key])[local]

    def _bbox_write(self, key: Any, value: Any) -> None:
        view_key, local = self._bbox_key(key)
        sub = self._view[view_key]
        block = np.array(sub)
        block[local] = value
        sub[...] = block


def _is_basic(key: Any) -> bool:
    items = key if isinstance(key, tuple) else (key,)
    return all(isinstance(k, (slice, int, np.integer)) or k is Ellipsis for k in items)

"""Index arithmetic of lazy views: normalising numpy-style keys and composing them.

A lazy view holds, per underlying axis, a ``(start, stop, step)`` selection and the axes
still visible; indexing composes a key into that without I/O, exactly like numpy's basic
indexing. Shared by every lazy array of the driver and the plugin.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidArgumentError

__all__ = [
    "Selection",
    "selection_length",
    "compose_selection",
    "is_basic_index",
    "normalize_index",
]

#: ``(start, stop, step)`` per underlying axis.
Selection = tuple[tuple[int, int, int], ...]


def selection_length(start: int, stop: int, step: int) -> int:
    return max(0, -(-(stop - start) // step))


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


def is_basic_index(key: Any) -> bool:
    """True for keys of integers, slices and ``...`` only (no index arrays)."""
    items = key if isinstance(key, tuple) else (key,)
    return all(isinstance(k, (slice, int, np.integer)) or k is Ellipsis for k in items)


def normalize_index(key: Any, ndim: int) -> list[Any]:
    """``key`` as one item per dimension: ``...`` expanded, missing trailing dimensions
    filled with ``slice(None)`` (a volume's absolute-coordinate indexing)."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is None for k in key):
        raise InvalidArgumentError("newaxis (None) indexing is not supported")
    n_ell = sum(1 for k in key if k is Ellipsis)
    if n_ell > 1:
        raise InvalidArgumentError("an index can only have a single ellipsis ('...')")
    if n_ell == 1:
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        fill = ndim - (len(key) - 1)
        key = key[:i] + (slice(None),) * fill + key[i + 1 :]
    if len(key) > ndim:
        raise InvalidArgumentError(f"too many indices: {len(key)} for an array of rank {ndim}")
    return list(key) + [slice(None)] * (ndim - len(key))

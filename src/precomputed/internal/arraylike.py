"""The numpy-like attributes every lazy array here derives from ``shape`` and ``dtype``."""

from __future__ import annotations

import numpy as np

__all__ = ["ArrayLike"]


class ArrayLike:
    """Mixin: ``ndim``, ``size``, ``nbytes`` and ``len()`` from ``shape`` and ``dtype``,
    which subclasses provide as read-only properties."""

    @property
    def shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def dtype(self) -> np.dtype:
        raise NotImplementedError

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        return self.shape[0]

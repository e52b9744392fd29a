"""Chunk-sized result arrays in recycled memory.

Every read returns fresh arrays, typically chunk-sized (2 MiB for a 64^3 uint64 chunk).
glibc serves such sizes with ``mmap`` and returns them to the system when freed, so each
new array page-faults in afresh: 512 faults per 2 MiB, which on virtual machines costs
more than decoding the chunk, and two threads faulting at once contend in the kernel.
TensorStore's allocator keeps freed memory; this module does the same for our results.

:func:`empty` hands out arrays whose memory comes from a pool of buffers. The arrays'
base is a :class:`_Lease`; when the last array or view using it is collected, the lease
gives its buffer back to the pool, so the next result of that size reuses warm pages.
At most :func:`set_recycling_limit` bytes (default 256 MiB) are kept idle; beyond that,
freed buffers are released as usual. Sizes outside ``[MIN_BYTES, MAX_BYTES]`` are
plain ``np.empty``.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

__all__ = ["MAX_BYTES", "MIN_BYTES", "empty", "idle_bytes", "set_recycling_limit", "zeros"]

#: Smaller arrays come from malloc's own free lists, which already reuse memory.
MIN_BYTES = 256 << 10
#: Larger arrays are rare and get transparent huge pages from numpy.
MAX_BYTES = 64 << 20

# Re-entrant: a lease collected by the garbage collector while this thread holds the
# lock (any allocation can trigger a collection) gives its buffer back from inside.
_lock = threading.RLock()
_idle: dict[int, list[np.ndarray]] = {}
_idle_bytes = 0
_limit = 256 << 20


def set_recycling_limit(nbytes: int) -> int:
    """Keep at most ``nbytes`` of freed result memory for reuse (0 turns recycling off
    and releases what is kept). Returns the previous limit."""
    global _limit, _idle_bytes
    if nbytes < 0:
        raise ValueError(f"recycling limit must be >= 0, not {nbytes}")
    with _lock:
        previous, _limit = _limit, int(nbytes)
        while _idle_bytes > _limit and _idle:
            size = max(_idle)
            _idle[size].pop()
            _idle_bytes -= size
            if not _idle[size]:
                del _idle[size]
    return previous


def idle_bytes() -> int:
    """Bytes of freed result memory currently kept for reuse."""
    return _idle_bytes


class _Lease:
    """Owns a pooled buffer while arrays use it (numpy makes it the base of every view),
    and returns the buffer to the pool when it is collected."""

    __slots__ = ("__array_interface__", "_buf")

    def __init__(self, buf: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self._buf = buf
        self.__array_interface__ = {
            "shape": shape,
            "typestr": dtype.str,
            "data": (buf.ctypes.data, False),
            "version": 3,
        }

    def __del__(self) -> None:
        try:
            _give_back(self._buf)
        except Exception:  # interpreter shutdown: nothing to keep
            pass


def _give_back(buf: np.ndarray) -> None:
    global _idle_bytes
    size = buf.nbytes
    with _lock:
        if _idle_bytes + size <= _limit:
            _idle.setdefault(size, []).append(buf)
            _idle_bytes += size


def _take(size: int) -> np.ndarray | None:
    global _idle_bytes
    with _lock:
        bufs = _idle.get(size)
        if not bufs:
            return None
        buf = bufs.pop()
        if not bufs:
            del _idle[size]
        _idle_bytes -= size
        return buf


def empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised C-contiguous array, in recycled memory when its size suits."""
    return _array(shape, dtype, zero=False)


def zeros(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A zero-filled array: recycled memory cleared (a memset of warm pages costs far
    less than faulting in fresh ones), or fresh zero pages from the system."""
    return _array(shape, dtype, zero=True)


def _array(shape: tuple[int, ...], dtype: Any, zero: bool) -> np.ndarray:
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    size = dtype.itemsize
    for s in shape:
        size *= s
    new = np.zeros if zero else np.empty
    if not MIN_BYTES <= size <= MAX_BYTES or _limit == 0 or dtype.hasobject or dtype.fields:
        return new(shape, dtype)
    buf = _take(size)
    if buf is None:
        buf = new(size, np.uint8)  # calloc'd zero pages need no clearing
    elif zero:
        buf.fill(0)
    return np.asarray(_Lease(buf, shape, dtype))

"""The ``raw`` encoding: the chunk's bytes, little-endian, x fastest, channel slowest."""

from __future__ import annotations

import numpy as np

from ..errors import CorruptDataError

__all__ = ["encode", "decode"]

_Bytes = bytes | bytearray | memoryview


def encode(chunk: np.ndarray, dtype: np.dtype) -> bytes:
    """A native-order czyx chunk as stored bytes."""
    return np.ascontiguousarray(chunk, dtype=dtype.newbyteorder("<")).tobytes()


def decode(data: _Bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    received = memoryview(data).nbytes
    if received != expected:
        raise CorruptDataError(f"Expected chunk length to be {expected}, but received {received} bytes")
    if expected == 0:
        return np.zeros(shape, dtype)
    arr = np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(shape)
    if arr.dtype != dtype:  # big-endian host: convert (copies)
        return arr.astype(dtype)
    if not arr.flags.writeable:
        arr = arr.copy()
    return arr

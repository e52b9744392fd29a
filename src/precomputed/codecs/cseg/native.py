"""The compressed_segmentation library's own C++ channel decoder, called without the GIL.

The ``compressed_segmentation`` package decodes in C++ but holds the GIL for the whole
call and always returns a freshly allocated array, so decode threads run one at a time
and every chunk pays for faulting in 2 MiB of new pages. Its extension module also
exports the plain C++ function underneath::

    template <class Label>
    void DecompressChannel(const uint32_t* input, const ptrdiff_t volume_size[3],
                           const ptrdiff_t block_size[3], const ptrdiff_t strides[4],
                           Label* output, ptrdiff_t channel);

It takes only pointers and integers, so ``ctypes`` can call it, and ``ctypes`` releases
the GIL for the call: two threads then decode two chunks at once, straight into any
strided destination (a reused buffer, or the caller's output array).

The symbol is an implementation detail of the wheel, so everything here is optional:
:data:`AVAILABLE` is false when it cannot be found, and callers use the package's
Python API instead. The decoder trusts its input: callers must validate the channel
first (``decode.CsegChannel`` makes TensorStore's checks and sets ``library_safe``).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import numpy as np

__all__ = ["AVAILABLE", "decode_channel_into"]

# Itanium C++ ABI names of DecompressChannel<uint32_t> and DecompressChannel<uint64_t>.
_SYMBOLS = {
    4: "_ZN21compress_segmentation17DecompressChannelIjEEvPKjPKlS4_S4_PT_l",
    8: "_ZN21compress_segmentation17DecompressChannelImEEvPKjPKlS4_S4_PT_l",
}


def _load() -> dict[int, Callable[..., None]]:
    try:
        import compressed_segmentation

        dll = ctypes.CDLL(compressed_segmentation.__file__)
        found: dict[int, Callable[..., None]] = {}
        for itemsize, name in _SYMBOLS.items():
            fn = dll[name]
            fn.restype = None
            fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_ssize_t]
            found[itemsize] = fn
        return found
    except Exception:  # another build, another platform: use the Python API
        return {}


_FUNCTIONS = _load()
AVAILABLE = len(_FUNCTIONS) == 2


def decode_channel_into(
    words: np.ndarray, block_xyz: tuple[int, int, int], out: np.ndarray
) -> None:
    """Decode one validated channel whose encoding starts at ``words[0]`` (native-order
    uint32) into ``out``, a (z, y, x) uint32 or uint64 array of the chunk's shape with any
    non-negative strides (a view into a larger array is fine). Releases the GIL."""
    item = out.dtype.itemsize
    if not out.dtype.isnative or any(s < 0 or s % item for s in out.strides):
        raise ValueError("decode_channel_into needs a native-order, positively strided view")
    if words.ctypes.data % 4 or not words.flags.c_contiguous:
        words = np.ascontiguousarray(words, dtype=np.uint32).copy()
    z, y, x = out.shape
    sz, sy, sx = (s // item for s in out.strides)
    geometry = np.array([x, y, z, *block_xyz, sx, sy, sz, 0], np.intp)
    base = geometry.ctypes.data
    step = geometry.itemsize
    _FUNCTIONS[item](
        words.ctypes.data, base, base + 3 * step, base + 6 * step, out.ctypes.data, 0
    )

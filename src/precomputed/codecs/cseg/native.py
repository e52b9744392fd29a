"""The compressed_segmentation library's own C++ channel codec, called without the GIL.

The ``compressed_segmentation`` package encodes and decodes in C++ but holds the GIL for
the whole call (and decoding always returns a freshly allocated array), so codec threads
run one at a time. Its extension module also exports the plain C++ functions
underneath::

    template <class Label>
    void DecompressChannel(const uint32_t* input, const ptrdiff_t volume_size[3],
                           const ptrdiff_t block_size[3], const ptrdiff_t strides[4],
                           Label* output, ptrdiff_t channel);
    template <class Label>
    int CompressChannel(const Label* input, const ptrdiff_t input_strides[3],
                        const ptrdiff_t volume_size[3], const ptrdiff_t block_size[3],
                        std::vector<uint32_t>* output);

They take pointers and integers (``CompressChannel`` appends to a ``std::vector``, an
empty one of which is three null pointers; its storage is released with the library's
own ``operator delete``), so ``ctypes`` can call them, and ``ctypes`` releases the GIL
for the call: two threads then encode or decode two chunks at once, straight from or
into any strided array.

The symbols are implementation details of the wheel, so everything here is optional:
:data:`AVAILABLE` (decoding) and :data:`ENCODER_AVAILABLE` are false when they cannot be
found, or when the encoder's self-test at import (a small chunk encoded both ways) does
not match the package's Python API; callers then use the Python API. The decoder trusts
its input: callers must validate the channel first (``decode.CsegChannel`` makes
TensorStore's checks and sets ``library_safe``).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import numpy as np

__all__ = ["AVAILABLE", "ENCODER_AVAILABLE", "decode_channel_into", "encode_channel"]

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


# Itanium C++ ABI names of CompressChannel<uint32_t> and CompressChannel<uint64_t>.
_ENCODE_SYMBOLS = {
    4: "_ZN21compress_segmentation15CompressChannelIjEEiPKT_PKlS5_S5_PSt6vectorIjSaIjEE",
    8: "_ZN21compress_segmentation15CompressChannelImEEiPKT_PKlS5_S5_PSt6vectorIjSaIjEE",
}
_OPERATOR_DELETE = "_ZdlPv"  # operator delete(void*), what std::allocator frees with


def _load_encoder() -> tuple[dict[int, Callable[..., int]], Callable[[int], None] | None]:
    try:
        import compressed_segmentation

        dll = ctypes.CDLL(compressed_segmentation.__file__)
        found: dict[int, Callable[..., int]] = {}
        for itemsize, name in _ENCODE_SYMBOLS.items():
            fn = dll[name]
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p] * 5
            found[itemsize] = fn
        free = dll[_OPERATOR_DELETE]  # found in the module or the C++ runtime it links
        free.restype = None
        free.argtypes = [ctypes.c_void_p]
        return found, free
    except Exception:
        return {}, None


_ENCODERS, _FREE = _load_encoder()


class EncodingOverflow(ValueError):
    """The channel needs offsets beyond the format's 24 bits (the library's error)."""


def encode_channel(chan: np.ndarray, block_xyz: tuple[int, int, int]) -> np.ndarray:
    """One (z, y, x) native-order uint32/uint64 channel, with any non-negative element
    strides (a view into a larger array is fine), as the library's uint32 words (offsets
    relative to the channel start). Releases the GIL. Raises :class:`EncodingOverflow`
    when a block header offset does not fit in 24 bits. Blocks of more than 2^16 voxels
    are the caller's to avoid (the library's index arithmetic is 32-bit there)."""
    item = chan.dtype.itemsize
    if not chan.dtype.isnative or any(s < 0 or s % item for s in chan.strides):
        raise ValueError("encode_channel needs a native-order, positively strided array")
    z, y, x = chan.shape
    sz, sy, sx = (s // item for s in chan.strides)
    geometry = np.array([sx, sy, sz, x, y, z, *block_xyz], np.intp)
    base = geometry.ctypes.data
    step = geometry.itemsize
    vector = (ctypes.c_void_p * 3)()  # an empty std::vector<uint32_t>: begin, end, capacity
    try:
        error = _ENCODERS[item](
            chan.ctypes.data, base, base + 3 * step, base + 6 * step, ctypes.addressof(vector)
        )
        begin, end = vector[0] or 0, vector[1] or 0
        words = np.empty((end - begin) // 4, np.uint32)
        if len(words):
            ctypes.memmove(words.ctypes.data, begin, words.nbytes)
    finally:
        if vector[0] and _FREE is not None:
            _FREE(vector[0])
    if error:
        raise EncodingOverflow("compressed_segmentation offsets exceed 24 bits")
    return words


def _self_test() -> bool:
    """Our call against the package's Python API on a small chunk of each type: a
    different C++ runtime layout or calling convention shows up here, not in data."""
    if len(_ENCODERS) != 2 or _FREE is None:
        return False
    try:
        import compressed_segmentation

        rng = np.random.default_rng(7)
        for dtype in (np.uint32, np.uint64):
            chan = rng.integers(0, 5, (9, 10, 11)).astype(dtype) * dtype(2**31 + 3)
            want = np.frombuffer(
                compressed_segmentation.compress(chan.T, block_size=(4, 3, 2), order="F"), "<u4"
            )[1:]
            if not np.array_equal(encode_channel(chan, (4, 3, 2)), want):
                return False
            view = chan[::2, 1:, ::3]  # strided input
            want = np.frombuffer(
                compressed_segmentation.compress(
                    np.ascontiguousarray(view).T, block_size=(4, 3, 2), order="F"
                ),
                "<u4",
            )[1:]
            if not np.array_equal(encode_channel(view, (4, 3, 2)), want):
                return False
        return True
    except Exception:
        return False


ENCODER_AVAILABLE = _self_test()

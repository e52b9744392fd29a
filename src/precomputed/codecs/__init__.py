"""Chunk codecs of the Neuroglancer Precomputed format: raw, jpeg, png and
compressed_segmentation, one module each; this package only dispatches.

Every function is pure (bytes in, array out or the reverse) so the storage layers can call them
from any thread. A chunk in memory is a C-contiguous ``(c, z, y, x)`` array, which is exactly
the byte order of a raw chunk (x fastest, channel slowest); see ``docs/dev/contracts.md``.

The output is meant to be interchangeable with TensorStore's ``neuroglancer_precomputed``
driver: raw and compressed_segmentation chunks are byte-identical to what TensorStore writes,
gzip (:mod:`.gzip`) uses TensorStore's header, and jpeg/png follow its image layout (width X,
height Y*Z, channels interleaved) and decoder checks. Which data types and channel counts each
encoding allows is :mod:`.table`. Corrupt input raises
:class:`~precomputed.errors.CorruptDataError` (TensorStore's FAILED_PRECONDITION) and never reads
out of bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CorruptDataError, InvalidArgumentError
from . import jpeg, png, raw
from .cseg.decode import decode as _cseg_decode
from .cseg.decode import decode_into as _cseg_decode_into
from .cseg.encode import encode as _cseg_encode
from .gzip import gzip_compress, gzip_decompress
from .table import ENCODINGS, check_chunk

__all__ = [
    "ENCODINGS",
    "ChunkEncoding",
    "encode_chunk",
    "decode_chunk",
    "decode_chunk_into",
    "stored_size_bounds",
    "gzip_compress",
    "gzip_decompress",
]


@dataclass(frozen=True)
class ChunkEncoding:
    """How a scale's chunks are encoded: the ``encoding`` member of a scale plus its options.

    ``block_size`` is in x, y, z order (as in the ``info`` JSON) and is required for
    ``compressed_segmentation``. ``png_level=None`` means the zlib default (level 6) with
    adaptive filtering, as libpng does when TensorStore writes no ``png_level``.
    """

    encoding: str
    jpeg_quality: int = 75
    png_level: int | None = None
    block_size: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise InvalidArgumentError(
                f"Invalid encoding {self.encoding!r}, expected one of {', '.join(ENCODINGS)}"
            )
        if self.block_size is not None:
            object.__setattr__(self, "block_size", tuple(int(b) for b in self.block_size))
        if self.encoding == "compressed_segmentation":
            if self.block_size is None or len(self.block_size) != 3:
                raise InvalidArgumentError(
                    f"compressed_segmentation requires a block_size of 3 elements (x, y, z), "
                    f"not {self.block_size!r}"
                )
            if min(self.block_size) < 1:
                raise InvalidArgumentError(
                    f"compressed_segmentation block_size must be positive, not {list(self.block_size)}"
                )
        if not 0 <= self.jpeg_quality <= 100:
            raise InvalidArgumentError(f"jpeg_quality must be in [0, 100], not {self.jpeg_quality}")
        if self.png_level is not None and not 0 <= self.png_level <= 9:
            raise InvalidArgumentError(f"png_level must be in [0, 9], not {self.png_level}")


# ---------------------------------------------------------------------------------------------
# public entry points


def encode_chunk(chunk: np.ndarray, enc: ChunkEncoding) -> bytes:
    """Encode one (edge-clipped) chunk given as a ``(c, z, y, x)`` array.

    The stored bytes depend only on the clipped shape, never on padding, because TensorStore
    and Neuroglancer both store edge chunks clipped to the volume.
    """
    chunk = np.asarray(chunk)
    if chunk.ndim != 4:
        raise InvalidArgumentError(f"Expected a 4-d (c, z, y, x) chunk, got shape {chunk.shape}")
    dtype = chunk.dtype.newbyteorder("=")
    check_chunk(enc.encoding, dtype, chunk.shape[0])
    if enc.encoding == "raw":
        return raw.encode(chunk, dtype)
    if enc.encoding == "compressed_segmentation":
        assert enc.block_size is not None  # required for this encoding (__post_init__)
        return _cseg_encode(chunk, enc.block_size)
    if min(chunk.shape) == 0:
        raise InvalidArgumentError(f"Cannot encode an empty chunk of shape {chunk.shape} as image")
    if enc.encoding == "jpeg":
        return jpeg.encode(chunk, enc.jpeg_quality)
    return png.encode(chunk, enc.png_level)


def decode_chunk(
    data: bytes | bytearray | memoryview,
    shape: tuple[int, int, int, int],
    dtype: np.dtype | str,
    enc: ChunkEncoding,
    key: str = "",
) -> np.ndarray:
    """Decode stored chunk bytes into a writeable, C-contiguous ``(c, z, y, x)`` array.

    ``shape`` is the clipped chunk shape. Raw chunks are decoded without copying when
    ``data`` is writeable (a ``bytearray`` or writeable ``memoryview``): the array then
    shares memory with ``data``. ``bytes`` are immutable, so they are copied once.
    ``key`` only names the chunk in error messages.
    """
    dims = tuple(int(s) for s in shape)
    if len(dims) != 4 or min(dims) < 0:
        raise InvalidArgumentError(f"Expected a (c, z, y, x) chunk shape, got {dims}")
    shape = (dims[0], dims[1], dims[2], dims[3])
    dt = np.dtype(dtype).newbyteorder("=")
    check_chunk(enc.encoding, dt, shape[0])
    try:
        if enc.encoding == "raw":
            return raw.decode(data, shape, dt)
        if enc.encoding == "compressed_segmentation":
            assert enc.block_size is not None  # required for this encoding (__post_init__)
            return _cseg_decode(data, shape, dt, enc.block_size)
        if enc.encoding == "jpeg":
            return jpeg.decode(data, shape)
        return png.decode(data, shape, dt)
    except CorruptDataError as e:
        raise _naming(e, key) from None


def decode_chunk_into(
    data: bytes | bytearray | memoryview,
    out: np.ndarray,
    enc: ChunkEncoding,
    key: str = "",
) -> None:
    """Decode a whole stored chunk into ``out``, a (c, z, y, x) view of the chunk's
    clipped shape (typically the chunk's place in a larger output array).

    compressed_segmentation chunks are decoded in place, with the GIL released where the
    library allows it; other encodings are decoded and copied.
    """
    if enc.encoding != "compressed_segmentation" or out.dtype.newbyteorder("=") != out.dtype:
        out[...] = decode_chunk(data, out.shape, out.dtype, enc, key)
        return
    check_chunk(enc.encoding, out.dtype, out.shape[0])
    assert enc.block_size is not None  # required for this encoding (__post_init__)
    try:
        _cseg_decode_into(data, out, enc.block_size)
    except CorruptDataError as e:
        raise _naming(e, key) from None


def stored_size_bounds(
    shape: tuple[int, int, int, int], dtype: np.dtype | str, enc: ChunkEncoding
) -> tuple[int | None, int]:
    """``(exact, most)``: the exact size of a stored chunk of ``shape`` (c, z, y, x) when
    the encoding fixes it (raw), else None; and the most bytes its encoding can take,
    the bound for inflating a compressed chunk file (CloudVolume's gzip/brotli/zstd, the
    shard ``data_encoding``). O(1), from the geometry only.

    compressed_segmentation: per channel, each block has a 2-word header, an encoded-value
    area sized by the *full* block at the bits its distinct values need (at most the
    block's voxels inside the chunk, so at most 32 bits) and a lookup table of at most
    that many values. jpeg/png: the pixels four times over plus 1 MiB of headers, far
    above any real image file (the decoders check the pixel count themselves).
    """
    c, z, y, x = (int(v) for v in shape)
    itemsize = np.dtype(dtype).itemsize
    voxels = c * z * y * x
    if enc.encoding == "raw":
        return voxels * itemsize, voxels * itemsize
    if enc.encoding == "compressed_segmentation":
        assert enc.block_size is not None
        bx, by, bz = enc.block_size
        blocks = -(-x // bx) * -(-y // by) * -(-z // bz)
        inside = min(bx, x) * min(by, y) * min(bz, z)  # voxels of the largest clipped block
        bits = next((b for b in (0, 1, 2, 4, 8, 16) if (1 << b) >= inside), 32)
        per_block = 2 + -(-bits * bx * by * bz // 32) + inside * (itemsize // 4)
        return None, 4 * (c + c * blocks * per_block)
    return None, 4 * voxels * itemsize + (1 << 20)


def _naming(e: CorruptDataError, key: str) -> CorruptDataError:
    """``e`` with the chunk's key in front of its message (when there is a key)."""
    return CorruptDataError(f'Error reading "{key}": {e}' if key else str(e))

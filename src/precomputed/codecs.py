"""Chunk codecs of the Neuroglancer Precomputed format: raw, jpeg, png, compressed_segmentation
and the gzip wrapper used by sharded volumes.

Every function is pure (bytes in, array out or the reverse) so the storage layers can call them
from any thread. A chunk in memory is a C-contiguous ``(c, z, y, x)`` array, which is exactly
the byte order of a raw chunk (x fastest, channel slowest); see ``docs/dev/contracts.md``.

The output is meant to be interchangeable with TensorStore's ``neuroglancer_precomputed``
driver: raw and compressed_segmentation chunks are byte-identical to what TensorStore writes,
gzip uses TensorStore's header, and jpeg/png follow its image layout (width X, height Y*Z,
channels interleaved) and decoder checks. Corrupt input raises
:class:`~precomputed.errors.CorruptDataError` (TensorStore's FAILED_PRECONDITION) and never reads
out of bounds.
"""

from __future__ import annotations

import io
import math
import struct
import sys
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import compressed_segmentation as _cseg_lib
import numpy as np
import numpy.typing as npt
from PIL import Image

from precomputed import _cseg_native, _deflate
from precomputed.errors import CorruptDataError, InvalidArgumentError

from .internal import recycle

__all__ = [
    "ENCODINGS",
    "ChunkEncoding",
    "encode_chunk",
    "decode_chunk",
    "gzip_compress",
    "gzip_decompress",
]

ENCODINGS = ("raw", "jpeg", "png", "compressed_segmentation")

#: What the decoders accept: stored chunk bytes, possibly a writeable buffer.
_Bytes = bytes | bytearray | memoryview
_Zyx = tuple[int, int, int]

_SUPPORTED_DTYPES = frozenset(
    np.dtype(t)
    for t in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32")
)
_JPEG_MAX_DIMENSION = 65500
# Offsets in compressed_segmentation block headers are 24-bit fields (TensorStore's decoder also
# reads the encoded-values offset as 24 bits), so a channel must stay below 2**24 words.
_CSEG_MAX_OFFSET = 1 << 24
# compressed_segmentation (the C++ library) computes `1 << bits` in 32-bit int arithmetic, which
# is wrong once a block holds more than 2**16 distinct values; larger blocks use our encoder.
_CSEG_LIB_MAX_BLOCK_VOLUME = 1 << 16


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
    _check_dtype_channels(enc, dtype, chunk.shape[0])
    if enc.encoding == "raw":
        return np.ascontiguousarray(chunk, dtype=dtype.newbyteorder("<")).tobytes()
    if enc.encoding == "compressed_segmentation":
        assert enc.block_size is not None  # required for this encoding (__post_init__)
        return _cseg_encode(chunk, enc.block_size)
    if min(chunk.shape) == 0:
        raise InvalidArgumentError(f"Cannot encode an empty chunk of shape {chunk.shape} as image")
    if enc.encoding == "jpeg":
        return _jpeg_encode(chunk, enc.jpeg_quality)
    return _png_encode(chunk, enc.png_level)


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
    _check_dtype_channels(enc, dt, shape[0])
    try:
        if enc.encoding == "raw":
            return _raw_decode(data, shape, dt)
        if enc.encoding == "compressed_segmentation":
            assert enc.block_size is not None  # required for this encoding (__post_init__)
            return _cseg_decode(data, shape, dt, enc.block_size)
        if enc.encoding == "jpeg":
            return _jpeg_decode(data, shape)
        return _png_decode(data, shape, dt)
    except _Corrupt as e:
        raise CorruptDataError(f'Error reading "{key}": {e}' if key else str(e)) from None


def gzip_compress(data: bytes) -> bytes:
    """Gzip ``data`` exactly as TensorStore does (level 9; header ``1f8b0800 00000000 02 03``)."""
    return _deflate.gzip_compress(data)


def gzip_decompress(data: bytes, what: str = "") -> bytes:
    """Inflate one gzip member; like TensorStore, reject zlib/raw streams and trailing bytes.

    ``what`` names the thing being decoded (a key, a minishard index) in the error message.
    """
    out, why = _deflate.gzip_inflate(data)
    if why is not None:
        raise CorruptDataError(_gzip_message(what, why))
    return out


# ---------------------------------------------------------------------------------------------
# shared helpers


class _Corrupt(Exception):
    """Internal: undecodable data; decode_chunk turns it into CorruptDataError naming the key."""


def _gzip_message(what: str, detail: str) -> str:
    where = f" in {what}" if what else ""
    return f"Error decoding zlib-compressed data{where}: {detail}"


def _check_dtype_channels(enc: ChunkEncoding, dtype: np.dtype, channels: int) -> None:
    """Apply TensorStore's encoding / data type / channel-count table (reference §1.5)."""
    if dtype not in _SUPPORTED_DTYPES:
        raise InvalidArgumentError(
            f"{dtype} data type is not one of the supported data types: "
            "uint8, uint16, uint32, int8, int16, int32, uint64, float32"
        )
    name = enc.encoding
    if name == "jpeg":
        if dtype != np.uint8:
            raise InvalidArgumentError(f'"jpeg" encoding only supported for uint8, not for {dtype}')
        if channels not in (1, 3):
            raise InvalidArgumentError(
                f'"jpeg" encoding only supports 1 or 3 channels, not {channels}'
            )
    elif name == "png":
        if dtype not in (np.uint8, np.uint16):
            raise InvalidArgumentError(
                f'"png" encoding only supported for uint8 and uint16, not for {dtype}'
            )
        if not 1 <= channels <= 4:
            raise InvalidArgumentError(
                f'"png" encoding only supports 1 to 4 channels, not {channels}'
            )
    elif name == "compressed_segmentation" and dtype not in (np.uint32, np.uint64):
        raise InvalidArgumentError(
            f"compressed_segmentation encoding only supported for uint32 and uint64, not for {dtype}"
        )


def _image_dims_error(w: int, h: int, c: int, shape: tuple[int, ...]) -> _Corrupt:
    return _Corrupt(
        f"Image dimensions ({w}, {h}, {c}) are not compatible with expected chunk shape "
        f"{{{', '.join(str(s) for s in shape)}}}"
    )


def _pixels_to_chunk(pixels: np.ndarray, shape: tuple[int, int, int, int]) -> np.ndarray:
    """Turn decoded pixels (any w*h factorization, channels last) into a fresh czyx array."""
    c, z, y, x = shape
    p = pixels.reshape(z, y, x, c)
    if c == 1:
        out = p.reshape(shape)
        return out if out.flags.writeable and out.flags.c_contiguous else out.copy()
    return np.ascontiguousarray(p.transpose(3, 0, 1, 2))


def _chunk_to_pixels(chunk: np.ndarray) -> np.ndarray:
    """The (height=Y*Z, width=X, c) pixel array of a czyx chunk: rows run z-major, then y."""
    c, z, y, x = chunk.shape
    return np.ascontiguousarray(chunk.transpose(1, 2, 3, 0)).reshape(z * y, x, c)


# ---------------------------------------------------------------------------------------------
# raw


def _raw_decode(data: _Bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    received = memoryview(data).nbytes
    if received != expected:
        raise _Corrupt(f"Expected chunk length to be {expected}, but received {received} bytes")
    if expected == 0:
        return np.zeros(shape, dtype)
    arr = np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(shape)
    if arr.dtype != dtype:  # big-endian host: convert (copies)
        return arr.astype(dtype)
    if not arr.flags.writeable:
        arr = arr.copy()
    return arr


# ---------------------------------------------------------------------------------------------
# jpeg


def _jpeg_encode(chunk: np.ndarray, quality: int) -> bytes:
    c, z, y, x = chunk.shape
    if x > _JPEG_MAX_DIMENSION or y * z > _JPEG_MAX_DIMENSION:
        raise InvalidArgumentError(f"JPEG image dimensions of ({x}, {y * z}) exceed maximum size")
    pixels = _chunk_to_pixels(chunk)
    img = Image.fromarray(pixels[:, :, 0] if c == 1 else pixels)  # uint8: "L" or "RGB"
    out = io.BytesIO()
    # Pillow calls libjpeg's jpeg_set_quality with force_baseline, like TensorStore; quality 0
    # is clamped to 1 by libjpeg in both.  subsampling=2 is 4:2:0; for grayscale it must not
    # be given, or Pillow would write 2x2 sampling factors where libjpeg (and TS) write 1x1.
    options = {"subsampling": 2} if c == 3 else {}
    img.save(out, format="JPEG", quality=int(quality), optimize=False, **options)
    return out.getvalue()


def _jpeg_decode(data: _Bytes, shape: tuple[int, int, int, int]) -> np.ndarray:
    head = bytes(memoryview(data)[:2])
    if head != b"\xff\xd8":
        padded = head + b"\0\0"
        raise _Corrupt(f"Not a JPEG file: starts with 0x{padded[0]:02x} 0x{padded[1]:02x}")
    try:
        img = Image.open(io.BytesIO(data), formats=["JPEG"])
    except Exception as e:  # any Pillow failure means the bytes are bad
        raise _Corrupt(f"Not a JPEG file: {e}") from None
    w, h = img.size
    ncomp = len(img.getbands())
    c, z, y, x = shape
    if w * h != z * y * x or ncomp != c or img.mode not in ("L", "RGB"):
        raise _image_dims_error(w, h, ncomp, shape)
    try:
        pixels = np.asarray(img)
    except Exception as e:  # truncated or corrupt entropy-coded data
        raise _Corrupt(f"Failed to decode JPEG: {e}") from None
    return _pixels_to_chunk(pixels, shape)


# ---------------------------------------------------------------------------------------------
# png

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> color type (gray, gray+alpha, RGB, RGBA)
_PNG_CHANNELS = {0: 1, 4: 2, 2: 3, 6: 4, 3: 3}
# (color type, bit depth) -> Pillow (mode, rawmode) for Image.frombytes(..., "zip", rawmode),
# i.e. Pillow's C inflate + PNG unfilter.  16-bit colour modes are special-cased below.
_PNG_PILLOW_MODES = {
    (0, 1): ("1", "1"),
    (0, 2): ("L", "L;2"),
    (0, 4): ("L", "L;4"),
    (0, 8): ("L", "L"),
    (0, 16): ("I;16", "I;16B"),
    (4, 8): ("LA", "LA"),
    (2, 8): ("RGB", "RGB"),
    (6, 8): ("RGBA", "RGBA"),
    (3, 1): ("P", "P;1"),
    (3, 2): ("P", "P;2"),
    (3, 4): ("P", "P;4"),
    (3, 8): ("P", "P"),
}


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(payload, zlib.crc32(kind)))
    )


_ABS_SIGNED_BYTE = np.abs(np.arange(256, dtype=np.uint8).view(np.int8).astype(np.int16)).astype(
    np.uint8
)


def _png_filter_rows(rows: np.ndarray, bpp: int) -> np.ndarray:
    """libpng's adaptive filter choice, vectorised: per row, the filter (none, sub, up,
    average, paeth) whose output has the smallest sum of absolute signed bytes."""
    cur = rows
    up = np.zeros_like(cur)
    up[1:] = cur[:-1]
    left = np.zeros_like(cur)
    left[:, bpp:] = cur[:, :-bpp]
    upleft = np.zeros_like(cur)
    upleft[:, bpp:] = up[:, :-bpp]
    a, b, c = (v.astype(np.int16) for v in (left, up, upleft))
    pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
    avg = (left >> 1) + (up >> 1) + (left & up & 1)  # floor((left + up) / 2) in uint8
    candidates = [cur, cur - left, cur - up, cur - avg, cur - paeth]  # uint8 wraps mod 256
    cost = np.stack([_ABS_SIGNED_BYTE[f].sum(axis=1, dtype=np.int64) for f in candidates])
    choice = np.argmin(cost, axis=0)  # first minimum, like libpng
    out = np.empty((rows.shape[0], rows.shape[1] + 1), np.uint8)
    out[:, 0] = choice
    for k, filtered in enumerate(candidates):
        sel = choice == k
        out[sel, 1:] = filtered[sel]
    return out


def _png_encode(chunk: np.ndarray, level: int | None) -> bytes:
    # Written here rather than with Pillow: Pillow cannot write 16-bit gray+alpha/RGB/RGBA and
    # always filters, while TensorStore (libpng) uses no filtering when png_level < 3.
    c, z, y, x = chunk.shape
    depth = 16 if chunk.dtype.itemsize == 2 else 8
    pixels = _chunk_to_pixels(chunk)
    if depth == 16:
        pixels = pixels.astype(">u2")
    rows = pixels.view(np.uint8).reshape(z * y, -1)
    filtered = level is None or level >= 3
    if filtered:
        scanlines = _png_filter_rows(rows, c * depth // 8)
    else:
        scanlines = np.zeros((rows.shape[0], rows.shape[1] + 1), np.uint8)
        scanlines[:, 1:] = rows
    comp = zlib.compressobj(
        6 if level is None else level,
        zlib.DEFLATED,
        15,
        8,
        zlib.Z_FILTERED if filtered else zlib.Z_DEFAULT_STRATEGY,
    )
    idat = comp.compress(scanlines.tobytes()) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", x, z * y, depth, _PNG_COLOR_TYPES[c], 0, 0, 0)
    return (
        _PNG_SIGNATURE
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _png_parse(buf: bytes) -> tuple[tuple[int, ...], bytes, bytes | None, bytes | None]:
    """Split a PNG into (IHDR fields, zlib stream, PLTE, tRNS), checking critical CRCs."""
    if buf[:8] != _PNG_SIGNATURE:
        raise _Corrupt("Failed to decode PNG: not a PNG file")
    pos, n = 8, len(buf)
    ihdr = plte = trns = None
    idat: list[bytes] = []
    while pos < n:
        if pos + 12 > n:
            raise _Corrupt("Failed to decode PNG: truncated chunk")
        length, kind = struct.unpack(">I4s", buf[pos : pos + 8])
        end = pos + 8 + length
        if end + 4 > n:
            raise _Corrupt(f"Failed to decode PNG: truncated {kind!r} chunk")
        payload = buf[pos + 8 : end]
        critical = not kind[0] & 0x20
        if critical and struct.unpack(">I", buf[end : end + 4])[0] != zlib.crc32(
            payload, zlib.crc32(kind)
        ):
            raise _Corrupt(f"Failed to decode PNG: CRC error in {kind.decode('latin-1')} chunk")
        pos = end + 4
        if ihdr is None and kind != b"IHDR":
            raise _Corrupt("Failed to decode PNG: IHDR is not the first chunk")
        if kind == b"IHDR":
            if length != 13:
                raise _Corrupt("Failed to decode PNG: invalid IHDR")
            ihdr = struct.unpack(">IIBBBBB", payload)
        elif kind == b"IDAT":
            idat.append(payload)
        elif kind == b"PLTE":
            plte = payload
        elif kind == b"tRNS":
            trns = payload
        elif kind == b"IEND":
            break
        elif critical:
            raise _Corrupt(f"Failed to decode PNG: unknown critical chunk {kind!r}")
    if ihdr is None or not idat:
        raise _Corrupt("Failed to decode PNG: missing IHDR or IDAT")
    return ihdr, b"".join(idat), plte, trns


def _png_inflate(
    mode: str, rawmode: str, size: tuple[int, int], stream: bytes, interlace: int
) -> np.ndarray:
    try:
        return np.asarray(Image.frombytes(mode, size, stream, "zip", rawmode, interlace))
    except Exception as e:  # any failure of Pillow's decoder means bad data
        raise _Corrupt(f"Failed to decode PNG: {e}") from None


def _png_decode(data: _Bytes, shape: tuple[int, int, int, int], dtype: np.dtype) -> np.ndarray:
    ihdr, stream, plte, trns = _png_parse(bytes(data))
    w, h, depth, ctype, compression, filter_method, interlace = ihdr
    if (ctype, depth) not in _PNG_PILLOW_MODES and not (ctype in (2, 4, 6) and depth == 16):
        raise _Corrupt(f"Failed to decode PNG: invalid bit depth {depth} for color type {ctype}")
    if compression != 0 or filter_method != 0 or interlace > 1 or w == 0 or h == 0:
        raise _Corrupt("Failed to decode PNG: invalid IHDR")
    ncomp = _PNG_CHANNELS[ctype] + (1 if ctype == 3 and trns else 0)
    c, z, y, x = shape
    if w * h != z * y * x or ncomp != c:
        raise _image_dims_error(w, h, ncomp, shape)
    if (depth == 16) != (dtype.itemsize == 2):
        raise _Corrupt(f"PNG bit depth {depth} is not compatible with data type {dtype}")
    size = (w, h)
    if depth == 16 and ctype == 4:
        # 16-bit gray+alpha has 4 bytes per pixel, like 8-bit RGBA: same unfiltering.
        pixels = _png_inflate("RGBA", "RGBA", size, stream, interlace).view(">u2")
    elif depth == 16 and ctype in (2, 6):
        # Pillow keeps only one byte of 16-bit colour samples; decode the high and the low
        # bytes in two passes (both with the correct 6/8-byte unfiltering) and recombine.
        mode = "RGB" if ctype == 2 else "RGBA"
        hi = _png_inflate(mode, mode + ";16B", size, stream, interlace)
        lo = _png_inflate(mode, mode + ";16L", size, stream, interlace)
        pixels = (hi.astype(np.uint16) << 8) | lo
    else:
        mode, rawmode = _PNG_PILLOW_MODES[(ctype, depth)]
        pixels = _png_inflate(mode, rawmode, size, stream, interlace)
        if mode == "1":  # 1-bit gray scales to 0/255, as libpng's expand_gray_1_2_4_to_8
            pixels = pixels.astype(np.uint8) * np.uint8(255)
        elif ctype == 3:
            pixels = _png_expand_palette(pixels, plte, trns)
    return _pixels_to_chunk(pixels.astype(dtype, copy=False), shape)


def _png_expand_palette(indices: np.ndarray, plte: bytes | None, trns: bytes | None) -> np.ndarray:
    if not plte or len(plte) % 3:
        raise _Corrupt("Failed to decode PNG: missing or invalid PLTE chunk")
    table = np.frombuffer(plte, np.uint8).reshape(-1, 3)
    if trns:
        alpha = np.full((len(table), 1), 255, np.uint8)
        t = np.frombuffer(trns, np.uint8)[: len(table)]
        alpha[: len(t), 0] = t
        table = np.concatenate([table, alpha], axis=1)
    if int(indices.max()) >= len(table):
        raise _Corrupt("Failed to decode PNG: palette index out of range")
    return table[indices]


# ---------------------------------------------------------------------------------------------
# compressed_segmentation (reference §4.4)

_CSEG_VALID_BITS = np.zeros(256, bool)
_CSEG_VALID_BITS[[0, 1, 2, 4, 8, 16, 32]] = True


def _cseg_local_positions(
    extent: tuple[int, int, int], block: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Positions inside a block that can hold chunk voxels, as (bit-stream offset, lz, ly, lx).

    ``extent`` is min(block, chunk) per dimension (z, y, x); the offset uses the full block
    size, as the format numbers elements over the whole (possibly padded) block. Cached for
    ordinary block sizes (the same few are used for every chunk of a scale).
    """
    if extent[0] * extent[1] * extent[2] <= 1 << 18:
        return _cseg_local_positions_cached(extent, block)
    return _cseg_local_positions_uncached(extent, block)


def _cseg_local_positions_uncached(
    extent: _Zyx, block: _Zyx
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    _, by, bx = block
    lz, ly, lx = (a.ravel() for a in np.indices(extent, dtype=np.int64))
    loc = (lz * by + ly) * bx + lx
    for a in (loc, lz, ly, lx):
        a.flags.writeable = False
    return loc, lz, ly, lx


_cseg_local_positions_cached = lru_cache(maxsize=16)(_cseg_local_positions_uncached)


def _cseg_geometry(shape_zyx: Sequence[int], block_xyz: Sequence[int]) -> tuple[_Zyx, _Zyx, _Zyx]:
    """(block, grid of blocks, extent of a block's voxels inside the chunk), all z, y, x."""
    bx, by, bz = (int(b) for b in block_xyz)
    z, y, x = shape_zyx
    block = (bz, by, bx)
    grid = (-(-z // bz), -(-y // by), -(-x // bx))
    extent = (min(z, bz), min(y, by), min(x, bx))
    return block, grid, extent


def _cseg_encode(chunk: np.ndarray, block_xyz: tuple[int, int, int]) -> bytes:
    c = chunk.shape[0]
    chunk = np.ascontiguousarray(chunk, dtype=chunk.dtype.newbyteorder("="))
    header = np.empty(c, "<u4")
    parts = []
    offset = c
    for ci in range(c):
        words = _cseg_encode_channel(chunk[ci], block_xyz)
        header[ci] = offset
        offset += len(words)
        parts.append(words.astype("<u4", copy=False).tobytes())
    return header.tobytes() + b"".join(parts)


def _cseg_encode_channel(chan: np.ndarray, block_xyz: tuple[int, int, int]) -> np.ndarray:
    """One channel as uint32 words (offsets relative to the channel start)."""
    if chan.size == 0:
        return np.zeros(0, np.uint32)
    if chan.size >= _CSEG_FAST_MIN_VOXELS:
        words = _cseg_encode_channel_fast(chan, block_xyz)
        if words is not None:
            return words
    bvol = int(np.prod(block_xyz, dtype=object))
    if bvol <= _CSEG_LIB_MAX_BLOCK_VOLUME:
        # The library's encoder follows the same algorithm as TensorStore's (verified byte for
        # byte, see tests).  It writes a one-channel container; strip its header word.  Its 4-d
        # entry point crashes, so channels are always passed one at a time, as x,y,z F-order.
        try:
            encoded = _cseg_lib.compress(chan.T, block_size=tuple(block_xyz), order="F")
        except OverflowError:
            raise _cseg_too_large() from None
        words = np.frombuffer(encoded, "<u4")[1:]
        _cseg_check_value_offsets(words, chan.shape, block_xyz)
        return words
    return _cseg_encode_channel_numpy(chan, block_xyz)


def _cseg_too_large() -> InvalidArgumentError:
    return InvalidArgumentError(
        "compressed_segmentation chunk is too large to encode: a channel needs more than 2^24 "
        "32-bit words (header offsets are 24 bits); use a smaller chunk size"
    )


def _cseg_check_value_offsets(
    words: np.ndarray, shape_zyx: Sequence[int], block_xyz: Sequence[int]
) -> None:
    if len(words) <= _CSEG_MAX_OFFSET:
        return
    _, grid, _ = _cseg_geometry(shape_zyx, block_xyz)
    nb = grid[0] * grid[1] * grid[2]
    if int(words[1 : 2 * nb : 2].max()) >= _CSEG_MAX_OFFSET:
        raise _cseg_too_large()


# Fast vectorised encoder for ordinary chunks.  The C++ library holds the GIL while encoding, so
# a thread pool cannot encode two chunks at once with it; this encoder spends most of its time
# in a few large numpy operations (which release the GIL) and is byte-identical to it.  Its
# small operations (which hold the GIL) are kept few, as they serialise concurrent encoders.
#
# The voxels are regrouped one block per row and every row is sorted: the distinct values of a
# sorted row are the block's lookup table.  A voxel's index is then read from a 256-entry table
# per block addressed by one byte of the value, which is exact for blocks whose table entries
# all differ in that byte (nearly all: a block holds few labels); the others count the table
# entries below each value by comparisons.

# Smallest channel and block (in voxels) for the fast path; below them the library is quicker
# (the fast path has a fixed cost of a few hundred microseconds and a cost per block).  Large
# blocks hold many labels, which the fast path handles poorly; the library is quick there.
_CSEG_FAST_MIN_VOXELS = 1 << 14
_CSEG_FAST_MIN_BLOCK_VOLUME = 32
_CSEG_FAST_MAX_BLOCK_VOLUME = 1 << 12
# Blocks whose labels are alike in the byte used for table look-ups need comparisons instead:
# (labels - 1) passes over the block.  Beyond this many passes over the whole chunk (e.g. 20+
# random labels per block) the library is used.
_CSEG_FAST_MAX_COMPARE_PASSES = 16
# Scratch arrays up to this size are kept per thread between calls (about 5.5 MiB in all for a
# 64^3 uint64 chunk): fresh multi-megabyte temporaries for every chunk cost page faults that
# can double the run time.
_CSEG_SCRATCH_MAX_BYTES = 1 << 22
_cseg_scratch_local = threading.local()
_CSEG_DTYPES = (np.dtype("=u4"), np.dtype("=u8"))
# encoded_bits of a block with n distinct values, at index n (n <= 256).
_CSEG_BITS_FOR_COUNT = np.repeat(np.array([0, 1, 2, 4, 8], np.int64), [2, 1, 2, 12, 240])
# Multipliers of the lookup-table hash, by position in the table and (last) by table length;
# tables with equal hashes are also compared exactly.
_CSEG_TABLE_MIX = np.random.default_rng(0x5E6).integers(1, 2**63, 513, np.uint64) | np.uint64(1)


def _cseg_scratch(name: str, shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
    """An uninitialised array that this thread reuses from call to call (one per ``name``)."""
    dt = np.dtype(dtype)
    nbytes = dt.itemsize * math.prod(shape)
    bufs = _cseg_scratch_local.__dict__
    buf = bufs.get(name)
    if buf is None or len(buf) < nbytes:
        if nbytes > _CSEG_SCRATCH_MAX_BYTES:
            return np.empty(shape, dt)
        buf = bufs[name] = np.empty(max(nbytes, 4096), np.uint8)
    return buf[:nbytes].view(dt).reshape(shape)


def _cseg_encode_channel_fast(
    chan: np.ndarray, block_xyz: tuple[int, int, int]
) -> np.ndarray | None:
    """One channel as uint32 words, byte-identical to the library's output (reference §4.4),
    or None if the chunk does not suit this encoder (tiny or large blocks, far more padding
    than data, blocks with more than 256 values, or too many blocks needing comparisons)."""
    dtype = chan.dtype
    if dtype not in _CSEG_DTYPES or chan.size == 0:
        return None
    bx, by, bz = (int(b) for b in block_xyz)
    z, y, x = chan.shape
    gz, gy, gx = -(-z // bz), -(-y // by), -(-x // bx)
    nb = gz * gy * gx
    bvol = bz * by * bx
    if not _CSEG_FAST_MIN_BLOCK_VOLUME <= bvol <= _CSEG_FAST_MAX_BLOCK_VOLUME:
        return None
    if nb * bvol > 8 * chan.size + (1 << 15):
        return None
    size = dtype.itemsize

    # Blocks as rows, voxels in z, y, x order (the format's bit order).  Edge padding repeats
    # the last voxel, which lies in the same block, so it adds no value to any table.
    pad = ((0, gz * bz - z), (0, gy * by - y), (0, gx * bx - x))
    edge = pad != ((0, 0), (0, 0), (0, 0))
    padded = np.pad(chan, pad, mode="edge") if edge else np.ascontiguousarray(chan)
    blocks = _cseg_scratch("blocks", (nb, bvol), dtype)
    xrow = np.dtype((np.void, bx * size))  # moving whole x-rows of a block is faster
    blocks.view(xrow).reshape(gz, gy, gx, bz, by)[...] = (
        padded.view(xrow).reshape(gz, bz, gy, by, gx).transpose(0, 2, 4, 1, 3)
    )
    # One byte of every voxel, to look values up by: the byte that served this thread's last
    # chunk (chunks of a volume are alike), corrected in _cseg_indices if it serves badly.
    lowest = 0 if sys.byteorder == "little" else size - 1
    lane = min(_cseg_scratch_local.__dict__.get("lane", lowest), size - 1)
    low = _cseg_scratch("low", (nb, bvol), np.uint8)
    np.copyto(low, blocks.view(np.uint8)[:, lane::size])
    blocks.sort(axis=1)

    # flags mark the first copy of each value in the sorted rows: the table entries.  Flag
    # rows are padded with False to a multiple of 8 so that they can be counted 8 at a time.
    lflags = -(-bvol // 8) * 8
    flags = _cseg_scratch("flags", (nb, lflags), bool)
    flags[:, 0] = True
    np.not_equal(blocks[:, 1:], blocks[:, :-1], out=flags[:, 1:bvol])
    if lflags > bvol:
        flags[:, bvol:] = False
    if lflags <= 8 * 255:
        # Byte j of a row's 64-bit sum counts the flags at positions = j (mod 8).
        lanes = np.add.reduce(flags.view(np.uint64), axis=1)
        counts = lanes.view(np.uint8).reshape(nb, 8).sum(axis=1, dtype=np.intp)
    else:
        counts = np.count_nonzero(flags, axis=1)
    kmax = int(counts.max())
    if kmax > 256:
        return None
    # Table entry e: value tval[e], of block trow[e], at position tcol[e] in the table.
    tval = blocks[flags[:, :bvol]]
    trow = np.repeat(np.arange(nb), counts)
    first = counts.cumsum()
    first -= counts
    tcol = np.arange(len(tval))
    tcol -= first[trow]
    bits = _CSEG_BITS_FOR_COUNT[counts]

    if kmax > 1:
        indices = _cseg_indices(padded, chan.shape, (bz, by, bx), tval, trow, tcol, counts, lane)
        if indices is None:
            return None
        rank, rows = indices

    # Layout: headers, then per block its encoded values and (if new) its table.
    owner = _cseg_table_owners(tval, trow, tcol, first, counts)
    writes_table = owner == np.arange(nb)
    enc_words = (np.arange(9) * bvol + 31) >> 5
    enc_words = enc_words[bits]
    sizes = counts * (size // 4)
    sizes *= writes_table
    sizes += enc_words
    start = sizes.cumsum()
    start -= sizes
    start += 2 * nb
    own_table = start + enc_words
    table_offset = own_table[owner]
    if max(int(table_offset.max()), int(start[-1])) >= _CSEG_MAX_OFFSET:
        raise _cseg_too_large()
    out = np.zeros(int(start[-1] + sizes[-1]), np.uint32)
    table_offset |= bits << 24
    out[0 : 2 * nb : 2] = table_offset
    out[1 : 2 * nb : 2] = start
    if kmax > 1:
        # Encoded values, blocks grouped by bit width (widest first).
        order = (-bits).argsort(kind="stable")
        lo = 0
        group_sizes = np.bincount(bits, minlength=9)[[8, 4, 2, 1]].tolist()
        for b, n in zip((8, 4, 2, 1), group_sizes, strict=True):
            if n:
                members = order[lo : lo + n]
                lo += n
                group = _cseg_scratch("group", (n, rank.shape[1]), np.uint8)
                np.take(rank, rows[members], axis=0, out=group, mode="clip")
                words = _cseg_pack(group, b)
                w = -(-b * bvol // 32)
                out[start[members][:, None] + np.arange(w)] = words[:, :w]
    # Tables, each written by the first block using it.
    new = writes_table[trow]
    pos = own_table[trow[new]]
    values = tval[new]
    if size == 4:
        pos += tcol[new]
        out[pos] = values
    else:
        pos += tcol[new] * 2
        out[(pos[:, None] + np.arange(2)).ravel()] = values.astype("<u8").view("<u4")
    return out


def _cseg_indices(
    padded: np.ndarray,
    shape: tuple[int, ...],
    block: _Zyx,
    tval: np.ndarray,
    trow: np.ndarray,
    tcol: np.ndarray,
    counts: np.ndarray,
    lane: int,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Index of every voxel in its block's table, as (rows of uint8 indices padded to a
    multiple of 32, row of each block), or None if too many blocks need comparisons.  ``lane``
    is the byte of the values in the scratch array "low" (blocks as rows)."""
    bz, by, bx = block
    gz, gy, gx = (s // b for s, b in zip(padded.shape, block, strict=True))
    nb = len(counts)
    bvol = bz * by * bx
    size = tval.dtype.itemsize
    # lut[slot[block] * 256 + byte] = index of the block's table entry with that byte, where
    # slot numbers the blocks with 2+ values (the others share a last row of zeros).  Entries
    # that clash in the byte are found by reading them back.
    coded = np.flatnonzero(counts > 1)
    ncoded = len(coded)
    slot = np.full(nb, ncoded, np.intp)
    slot[coded] = np.arange(ncoded)
    tbytes = tval.view(np.uint8).reshape(len(tval), size).T
    for attempt in range(2):
        tslot = slot[trow]
        tslot <<= 8
        tslot += tbytes[lane]
        lut = _cseg_scratch("lut", ((ncoded + 1) * 256,), np.uint8)
        lut.fill(0)
        lut[tslot] = tcol
        clash = lut[tslot] != tcol
        bad = np.flatnonzero(np.bincount(trow[clash], minlength=nb)) if clash.any() else None
        compares = 0 if bad is None else int(counts[bad].sum()) - len(bad)
        if attempt or compares * 8 <= nb:
            break
        # Many clashes: pick the byte in which the fewest blocks have two entries alike (the
        # lowest-order byte wins ties), judged on the first blocks, and remember it.
        keys = (trow[:1024] << 8) | tbytes[:, :1024]
        keys.sort(axis=1)
        repeats = (keys[:, 1:] == keys[:, :-1]).sum(axis=1)
        order = np.arange(size) if sys.byteorder == "little" else np.arange(size)[::-1]
        best = int(order[np.argmin(repeats[order])])
        if best == lane:
            break
        lane = _cseg_scratch_local.lane = best
        flat = _cseg_scratch("low_chunk", padded.shape, np.uint8)
        np.copyto(flat, padded.view(np.uint8)[..., lane::size])
        low = _cseg_scratch("low", (nb, bvol), np.uint8)
        xrow = np.dtype((np.void, bx))
        low.view(xrow).reshape(gz, gy, gx, bz, by)[...] = (
            flat.view(xrow).reshape(gz, bz, gy, by, gx).transpose(0, 2, 4, 1, 3)
        )
    if compares > _CSEG_FAST_MAX_COMPARE_PASSES * nb:
        return None
    # Past half the blocks single-valued, only the others get a row.
    low = _cseg_scratch("low", (nb, bvol), np.uint8)
    if 2 * ncoded > nb:
        rows = np.arange(nb)
        base = slot
    else:
        rows = slot
        rows[coded] = base = np.arange(ncoded)
        low = low[coded]
    idx = _cseg_scratch("idx", low.shape, np.intp)
    np.copyto(idx, low)  # (faster than a mixed-type add)
    idx += (base << 8)[:, None]
    lpad = -(-bvol // 32) * 32  # packing works on rows of 32 indices
    rank = _cseg_scratch("rank", (len(idx), lpad), np.uint8)
    if lpad == bvol:
        np.take(lut, idx, out=rank, mode="clip")
    else:
        rank[:, bvol:] = 0
        rank[:, :bvol] = np.take(lut, idx, mode="clip")
    if bad is not None:
        bad = bad[np.argsort(-counts[bad], kind="stable")]  # most values first
        iz, iy, ix = np.unravel_index(bad, (gz, gy, gx))
        vals = padded.reshape(gz, bz, gy, by, gx, bx)[iz, :, iy, :, ix, :]
        table = np.zeros((len(bad), int(counts[bad[0]])), tval.dtype)
        where = np.full(nb, -1)
        where[bad] = np.arange(len(bad))
        sel = where[trow] >= 0
        table[where[trow[sel]], tcol[sel]] = tval[sel]
        rank[rows[bad], :bvol] = _cseg_rank_by_comparison(
            vals.reshape(len(bad), bvol), table, counts[bad]
        )
    if padded.shape != shape:  # positions outside the chunk hold index 0
        inside = _cseg_inside_mask(shape, block)
        rank[:, :bvol][~(inside if 2 * ncoded > nb else inside[coded])] = 0
    return rank, rows


def _cseg_rank_by_comparison(
    vals: np.ndarray, table: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """Index of each value in its block's table: the number of table entries below it (rows
    by decreasing count, tables zero-padded)."""
    rank = np.zeros(vals.shape, np.uint8)
    ge = np.empty(vals.shape, bool)
    rows = np.searchsorted(-counts, -np.arange(1, int(counts[0]) + 1), side="right")
    for k, n in enumerate(rows.tolist()):  # the first n rows have more than k values
        if k:
            np.greater_equal(vals[:n], table[:n, k : k + 1], out=ge[:n])
            rank[:n] += ge[:n]
    return rank


def _cseg_pack(rank: np.ndarray, bits: int) -> np.ndarray:
    """Rows of indices (uint8, row length a multiple of 32) as rows of 32-bit words holding
    ``bits``-bit fields, first index in the lowest bits."""
    if bits == 1:
        return np.packbits(rank, axis=1, bitorder="little").view("<u4")
    for step in (6, 4) if bits == 2 else (4,) if bits == 4 else ():
        # Merge neighbouring fields: in each 16-bit pair, the low byte gets both.
        pairs = rank.view("<u2")
        merged = _cseg_scratch(f"pack{step}", pairs.shape, pairs.dtype)
        np.right_shift(pairs, step, out=merged)
        merged |= pairs
        rank = _cseg_scratch(f"packed{step}", pairs.shape, np.uint8)
        np.copyto(rank, merged, casting="unsafe")
    return rank.view("<u4")


def _cseg_table_owners(
    tval: np.ndarray, trow: np.ndarray, tcol: np.ndarray, first: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """For each block, the first block with an identical lookup table."""
    nb = len(counts)
    with np.errstate(over="ignore"):
        h = _CSEG_TABLE_MIX[tcol]
        h *= tval
        key = np.add.reduceat(h, first)
        key += _CSEG_TABLE_MIX[256 + counts]
    order = key.argsort(kind="stable")
    skey = key[order]
    new = np.empty(nb, bool)
    new[0] = True
    np.not_equal(skey[1:], skey[:-1], out=new[1:])
    owner = _cseg_group_first(order, new)
    if (counts[owner] == counts).all():
        owned = first[owner][trow]
        owned += tcol
        if (tval[owned] == tval).all():
            return owner
    # A hash collision: group by the tables themselves.
    table = np.zeros((nb, int(counts.max())), tval.dtype)
    table[trow, tcol] = tval
    order = np.lexsort((*table.T[::-1], counts))
    stable = table[order]
    scounts = counts[order]
    new[1:] = (scounts[1:] != scounts[:-1]) | (stable[1:] != stable[:-1]).any(axis=1)
    return _cseg_group_first(order, new)


def _cseg_group_first(order: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Given a stable sort ``order`` and flags of where a group of equal rows starts in it,
    the first (smallest) index of each row's group."""
    group = new.cumsum()
    group -= 1
    owner = np.empty(len(order), np.intp)
    owner[order] = order[new][group]
    return owner


def _cseg_inside_mask(shape: Sequence[int], block: Sequence[int]) -> np.ndarray:
    """(blocks, voxels) mask of the positions of a padded chunk that lie inside the chunk."""
    z, y, x = (
        np.arange(-(-s // b))[:, None] * b + np.arange(b) < s
        for s, b in zip(shape, block, strict=True)
    )
    mask = z[:, None, None, :, None, None] & y[None, :, None, None, :, None]
    mask = mask & x[None, None, :, None, None, :]
    return mask.reshape(len(z) * len(y) * len(x), -1)


def _cseg_encode_channel_numpy(chan: np.ndarray, block_xyz: tuple[int, int, int]) -> np.ndarray:
    """Vectorised encoder following TensorStore's algorithm exactly (reference §4.4).

    Blocks in z, y, x order (x fastest); per block the sorted distinct values form the lookup
    table, indices use the smallest of 0/1/2/4/8/16/32 bits, the encoded area is sized for the
    full block, positions outside the chunk hold index 0, and an identical table already
    written in this channel is reused.
    """
    block, grid, extent = _cseg_geometry(chan.shape, block_xyz)
    gz, gy, gx = grid
    ez, ey, ex = extent
    nb = gz * gy * gx
    loc, lz, ly, lx = _cseg_local_positions(extent, block)
    nloc = len(loc)
    wpv = chan.dtype.itemsize // 4  # 32-bit words per label

    # Edge replication keeps every padded position inside its own block (the padding never
    # exceeds one block), so it adds no new distinct value to any block.
    pad = [(0, g * e - s) for g, e, s in zip(grid, extent, chan.shape, strict=True)]
    padded = np.pad(chan, pad, mode="edge") if any(p[1] for p in pad) else chan
    blocks = padded.reshape(gz, ez, gy, ey, gx, ex).transpose(0, 2, 4, 1, 3, 5).reshape(nb, nloc)

    values, ginv = np.unique(blocks, return_inverse=True)
    ginv = ginv.reshape(nb, nloc)
    nv = len(values)
    block_ids = np.arange(nb, dtype=np.int64)[:, None]
    if nb * nv <= 1 << 22:
        # Few (block, value) pairs: a presence table gives each block's sorted distinct values
        # and every voxel's rank without a second sort.
        present = np.zeros((nb, nv), bool)
        present[block_ids, ginv] = True
        ublock, uvalue = np.nonzero(present)
        counts = present.sum(axis=1)
        rank = (np.cumsum(present, axis=1) - 1)[block_ids, ginv]
        first = np.zeros(nb, np.int64)
        first[1:] = np.cumsum(counts)[:-1]
    else:
        ukey, kinv = np.unique(block_ids * nv + ginv, return_inverse=True)
        ublock, uvalue = ukey // nv, ukey % nv
        counts = np.bincount(ublock, minlength=nb)
        first = np.zeros(nb, np.int64)
        first[1:] = np.cumsum(counts)[:-1]
        rank = kinv.reshape(nb, nloc) - first[:, None]
    block_origin = np.unravel_index(np.arange(nb), grid)
    inside = (
        (block_origin[0][:, None] * block[0] + lz < chan.shape[0])
        & (block_origin[1][:, None] * block[1] + ly < chan.shape[1])
        & (block_origin[2][:, None] * block[2] + lx < chan.shape[2])
    )
    rank[~inside] = 0

    bits = np.array([1, 2, 4, 8, 16, 32])[np.searchsorted([2, 4, 16, 256, 65536], counts)]
    bits[counts == 1] = 0

    # Table reuse: each block's table is its sorted value list (as global ranks); find the
    # first block with an identical list.
    urank = np.arange(len(ublock)) - first[ublock]
    owner = _first_identical_segment(uvalue, first, counts, urank)
    writes_table = owner == np.arange(nb)

    bvol_c = min(int(np.prod(block, dtype=object)), 1 << 57)  # avoid int64 overflow
    enc_words = (bits * bvol_c + 31) // 32
    sizes = enc_words + np.where(writes_table, counts * wpv, 0)
    start = np.empty(nb, np.int64)
    start[0] = 2 * nb
    np.cumsum(sizes[:-1], out=start[1:])
    start[1:] += 2 * nb
    total = int(start[-1] + sizes[-1])
    own_table = start + enc_words
    table_offset = own_table[owner]
    if max(int(table_offset.max()), int(start.max())) >= _CSEG_MAX_OFFSET:
        raise _cseg_too_large()

    out = np.zeros(total, np.uint64)
    out[0 : 2 * nb : 2] = table_offset | (bits << 24)
    out[1 : 2 * nb : 2] = start
    coded = bits > 0
    if coded.any():
        b = bits[coded][:, None]
        p = loc[None, :] * b
        word = start[coded][:, None] + (p >> 5)
        contrib = rank[coded].astype(np.uint64) << (p & 31).astype(np.uint64)
        # Bit fields of one word are disjoint, so summing (exact in float64 below 2**53) is OR.
        out += np.bincount(word.ravel(), weights=contrib.ravel(), minlength=total).astype(np.uint64)
    sel = writes_table[ublock]
    pos = own_table[ublock[sel]] + urank[sel] * wpv
    vals = values[uvalue[sel]].astype(np.uint64)
    out[pos] = vals & 0xFFFFFFFF
    if wpv == 2:
        out[pos + 1] = vals >> 32
    return out.astype(np.uint32)


def _first_identical_segment(
    flat: np.ndarray, start: np.ndarray, length: np.ndarray, pos: np.ndarray
) -> np.ndarray:
    """For consecutive segments ``flat[start[i]:start[i] + length[i]]``, the index of the first
    segment equal to each one.  ``pos`` is each element's position within its segment.

    Segments are grouped by length and two 64-bit hashes, then checked exactly; a hash
    collision (never seen in practice) falls back to comparing bytes block by block.
    """
    mixers = np.random.default_rng(0x5E6).integers(1, 2**63, (2, int(length.max())), np.uint64)
    values = flat.astype(np.uint64) + np.uint64(1)
    with np.errstate(over="ignore"):
        hashes = [np.add.reduceat(values * m[pos], start) for m in mixers]
    keys = np.stack([length.astype(np.uint64), *hashes], axis=1)
    _, first_idx, group = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    owner = first_idx[group.ravel()]
    seg_of = np.repeat(np.arange(len(start)), length)
    if np.array_equal(flat, flat[start[owner[seg_of]] + pos]):
        return owner
    return _first_identical_segment_exact(flat, start, length)  # pragma: no cover


def _first_identical_segment_exact(
    flat: np.ndarray, start: np.ndarray, length: np.ndarray
) -> np.ndarray:
    """Reference for :func:`_first_identical_segment`: one dictionary look-up per segment."""
    seen: dict[bytes, int] = {}
    return np.array(
        [
            seen.setdefault(flat[a : a + n].tobytes(), i)
            for i, (a, n) in enumerate(zip(start, length, strict=True))
        ],
        dtype=np.int64,
    )


def _cseg_decode(
    data: _Bytes, shape: tuple[int, int, int, int], dtype: np.dtype, block_xyz: Sequence[int]
) -> np.ndarray:
    if memoryview(data).nbytes % 4:
        raise _cseg_corrupt()
    words = np.frombuffer(data, "<u4")
    if words.dtype != np.uint32:  # big-endian host
        words = words.astype(np.uint32)
    c, z, y, x = shape
    if len(words) < c:
        raise _cseg_corrupt()
    offsets = words[:c].astype(np.int64)
    if (offsets > len(words)).any():
        raise _cseg_corrupt()
    if z * y * x == 0:
        return np.zeros(shape, dtype)
    channels = [_CsegChannel(words[offsets[ci] :], (z, y, x), block_xyz, dtype) for ci in range(c)]
    if c == 1 and channels[0].library_safe and not _cseg_native.AVAILABLE:
        whole = data if type(data) is bytes and offsets[0] == 1 else None
        return channels[0].decode_with_library(whole).reshape(shape)
    out = recycle.empty(shape, dtype)
    _cseg_channels_into(channels, out)
    return out


def _cseg_channels_into(channels: list[_CsegChannel], out: np.ndarray) -> None:
    for ci, channel in enumerate(channels):
        if channel.library_safe and _cseg_native.AVAILABLE:
            _cseg_native.decode_channel_into(channel.w, channel.block_xyz, out[ci])
        elif channel.library_safe:
            out[ci] = channel.decode_with_library()
        else:
            channel.decode_into(out[ci])


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
    _check_dtype_channels(enc, out.dtype, out.shape[0])
    try:
        if memoryview(data).nbytes % 4:
            raise _cseg_corrupt()
        words = np.frombuffer(data, "<u4").astype(np.uint32, copy=False)
        c, z, y, x = out.shape
        if len(words) < c:
            raise _cseg_corrupt()
        offsets = words[:c].astype(np.int64)
        if (offsets > len(words)).any():
            raise _cseg_corrupt()
        if out.size == 0:
            return
        assert enc.block_size is not None  # required for this encoding (__post_init__)
        channels = [
            _CsegChannel(words[offsets[ci] :], (z, y, x), enc.block_size, out.dtype)
            for ci in range(c)
        ]
        _cseg_channels_into(channels, out)
    except _Corrupt as e:
        raise CorruptDataError(f'Error reading "{key}": {e}' if key else str(e)) from None


@lru_cache(maxsize=64)
def _cseg_encoded_words(bvol: int) -> np.ndarray:
    """Encoded words of a block per bit width 0..32, and 2^62 (never fits) for the
    invalid widths and for index 33 (every width above 32)."""
    words = np.full(34, 1 << 62, np.int64)
    for b in (0, 1, 2, 4, 8, 16, 32):
        words[b] = (b * bvol + 31) // 32
    return words


def _cseg_corrupt() -> _Corrupt:
    return _Corrupt("Corrupted Neuroglancer compressed segmentation")


class _CsegChannel:
    """One validated channel of a compressed_segmentation chunk.

    Construction makes every check TensorStore's decoder makes (reference §4.4), so decoding
    afterwards cannot read out of bounds. ``w`` runs from the channel start to the end of the
    whole buffer, as in TensorStore (tables may lie anywhere after the channel start).
    """

    def __init__(
        self, w: np.ndarray, shape_zyx: _Zyx, block_xyz: Sequence[int], dtype: np.dtype
    ) -> None:
        self.w, self.shape, self.dtype = w, shape_zyx, dtype
        self.block, self.grid, self.extent = _cseg_geometry(shape_zyx, block_xyz)
        bz, by, bx = self.block
        self.block_xyz = (bx, by, bz)
        nb = self.grid[0] * self.grid[1] * self.grid[2]
        n = len(w)
        if n < 2 * nb:
            raise _cseg_corrupt()
        # Few, whole-array numpy steps: this runs for every chunk decoded.
        hdr = w[: 2 * nb].astype(np.int64).reshape(nb, 2)
        first, second = hdr[:, 0], hdr[:, 1]
        self.table_offset = first & 0xFFFFFF
        self.bits = bits = first >> 24
        self.value_offset = second & 0xFFFFFF  # TensorStore reads only 24 bits here
        self.wpv = dtype.itemsize // 4  # 32-bit words per label
        self.bvol = math.prod(self.block)
        self.table_size = table_size = (n - self.table_offset) // self.wpv
        # Valid bit widths map to their encoded words; anything else to 2^62 (never fits).
        enc_words = _cseg_encoded_words(min(self.bvol, 1 << 57))[np.minimum(bits, 33)]
        if (
            int((self.value_offset + enc_words).max()) > n
            or int(self.table_offset.max()) > n
            or (table_size[bits == 0] == 0).any()
        ):
            raise _cseg_corrupt()
        # Indices must be < table_size at positions inside the chunk; only blocks whose bit
        # width can express a larger index need looking at (usually just the last table).
        self.clamp_rows = np.zeros(0, np.int64)
        risky = np.flatnonzero((np.int64(1) << bits) > np.maximum(table_size, 1))
        if len(risky):
            rows = risky
            idx = self._indices(rows)
            bad = idx >= table_size[rows][:, None]
            if bad.any():
                if (bad & self._inside(rows)).any():
                    raise _cseg_corrupt()
                self.clamp_rows = rows
        # The library misdecodes 32-bit blocks (it computes `1 << bits` in int) and reads the
        # encoded-values offset as 32 bits, so those channels take the numpy path.
        self.library_safe = int(bits.max()) < 32 and int(second.max()) < 1 << 24

    def _indices(self, rows: np.ndarray) -> np.ndarray:
        """Lookup-table indices of the chunk-reachable positions of ``rows`` (uint32)."""
        w, bits = self.w, self.bits[rows]
        loc = _cseg_local_positions(self.extent, self.block)[0]
        if len(rows) == 1 and len(loc) == self.bvol and bits[0] > 0:
            # The usual case (only the last table can be short): one block, few steps.
            b = int(bits[0])
            start = int(self.value_offset[rows[0]])
            words = w[start : start + (b * self.bvol + 31) // 32]
            shifts = np.arange(0, 32, b, dtype=np.uint32)
            unpacked = (words[:, None] >> shifts) & np.uint32((1 << b) - 1)
            return unpacked.reshape(1, -1)[:, : self.bvol]
        if len(loc) == self.bvol and (bits > 0).all():
            # Whole blocks lie in the chunk: unpack each block's contiguous encoded words.
            out = np.empty((len(rows), self.bvol), np.uint32)
            for b in np.unique(bits):
                sel = np.nonzero(bits == b)[0]
                b = int(b)
                nwords, per = (b * self.bvol + 31) // 32, 32 // b
                words = w[self.value_offset[rows[sel]][:, None] + np.arange(nwords)]
                shifts = np.arange(per, dtype=np.uint32) * np.uint32(b)
                unpacked = (words[:, :, None] >> shifts) & np.uint32((1 << b) - 1)
                out[sel] = unpacked.reshape(len(sel), nwords * per)[:, : self.bvol]
            return out
        p = loc[None, :] * bits[:, None]
        word = np.where(bits > 0, self.value_offset[rows], 0)[:, None] + (p >> 5)
        mask = ((np.int64(1) << bits) - 1).astype(np.uint32)
        return (w[word] >> (p & 31).astype(np.uint32)) & mask[:, None]

    def _inside(self, rows: np.ndarray) -> np.ndarray:
        _, lz, ly, lx = _cseg_local_positions(self.extent, self.block)
        oz, oy, ox = np.unravel_index(rows, self.grid)
        return (
            (oz[:, None] * self.block[0] + lz < self.shape[0])
            & (oy[:, None] * self.block[1] + ly < self.shape[1])
            & (ox[:, None] * self.block[2] + lx < self.shape[2])
        )

    def decode_with_library(self, data: bytes | None = None) -> np.ndarray:
        """Decode with the C++ library (fast); only valid when ``library_safe``.

        Returns a fresh, writeable, C-contiguous (z, y, x) array.  ``data`` may be the whole
        buffer when it is ``bytes`` whose single channel starts at word 1 (saves a copy).
        """
        if data is None:
            data = b"\x01\x00\x00\x00" + self.w.astype("<u4", copy=False).tobytes()
        z, y, x = self.shape
        arr = _cseg_lib.decompress(
            data, (x, y, z), self.dtype, block_size=self.block_xyz, order="F"
        )
        return arr.T

    def decode_into(self, out: np.ndarray) -> None:
        """Vectorised numpy decoder (any bit width), writing (z, y, x) into ``out``."""
        gz, gy, gx = self.grid
        ez, ey, ex = self.extent
        exact = (gz * ez, gy * ey, gx * ex) == self.shape
        padded = out if exact else np.empty((gz * ez, gy * ey, gx * ex), self.dtype)
        blocks = padded.reshape(gz, ez, gy, ey, gx, ex).transpose(0, 2, 4, 1, 3, 5)
        w, n = self.w, len(self.w)
        if self.wpv == 1:
            table, base = w, self.table_offset
        else:
            # Tables may start at odd word offsets: gather 64-bit labels from an even- and an
            # odd-aligned view of the words (copies only the compressed bytes).
            even = w[: n - n % 2].view("<u8")
            odd = w[1 : n - (n - 1) % 2].view("<u8") if n > 1 else np.zeros(0, "<u8")
            table = np.concatenate([even, odd])
            base = np.where(
                self.table_offset % 2 == 0,
                self.table_offset // 2,
                len(even) + self.table_offset // 2,
            )
        clamp = np.zeros(len(self.bits), bool)
        clamp[self.clamp_rows] = True
        for b in np.unique(self.bits):
            rows = np.nonzero(self.bits == b)[0]
            oz, oy, ox = np.unravel_index(rows, self.grid)
            if b == 0:
                blocks[oz, oy, ox] = table[base[rows]][:, None, None, None]
                continue
            idx = self._indices(rows).astype(np.int64)
            if clamp[rows].any():
                np.minimum(idx, (self.table_size[rows] - 1)[:, None], out=idx)
            idx += base[rows][:, None]
            blocks[oz, oy, ox] = table[idx].reshape(len(rows), ez, ey, ex)
        if not exact:
            out[...] = padded[: self.shape[0], : self.shape[1], : self.shape[2]]

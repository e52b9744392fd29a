"""The ``png`` encoding (uint8/uint16, 1 to 4 channels): written here (libpng's adaptive
filtering, TensorStore's zlib levels), decoded with Pillow's C inflate and unfilter."""

from __future__ import annotations

import struct
import zlib

import numpy as np
from PIL import Image

from ..errors import CorruptDataError
from .image import chunk_to_pixels, image_dims_error, pixels_to_chunk

__all__ = ["encode", "decode"]

_Bytes = bytes | bytearray | memoryview


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


def encode(chunk: np.ndarray, level: int | None) -> bytes:
    # Written here rather than with Pillow: Pillow cannot write 16-bit gray+alpha/RGB/RGBA and
    # always filters, while TensorStore (libpng) uses no filtering when png_level < 3.
    c, z, y, x = chunk.shape
    depth = 16 if chunk.dtype.itemsize == 2 else 8
    pixels = chunk_to_pixels(chunk)
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
        raise CorruptDataError("Failed to decode PNG: not a PNG file")
    pos, n = 8, len(buf)
    ihdr = plte = trns = None
    idat: list[bytes] = []
    while pos < n:
        if pos + 12 > n:
            raise CorruptDataError("Failed to decode PNG: truncated chunk")
        length, kind = struct.unpack(">I4s", buf[pos : pos + 8])
        end = pos + 8 + length
        if end + 4 > n:
            raise CorruptDataError(f"Failed to decode PNG: truncated {kind!r} chunk")
        payload = buf[pos + 8 : end]
        critical = not kind[0] & 0x20
        if critical and struct.unpack(">I", buf[end : end + 4])[0] != zlib.crc32(
            payload, zlib.crc32(kind)
        ):
            raise CorruptDataError(f"Failed to decode PNG: CRC error in {kind.decode('latin-1')} chunk")
        pos = end + 4
        if ihdr is None and kind != b"IHDR":
            raise CorruptDataError("Failed to decode PNG: IHDR is not the first chunk")
        if kind == b"IHDR":
            if length != 13:
                raise CorruptDataError("Failed to decode PNG: invalid IHDR")
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
            raise CorruptDataError(f"Failed to decode PNG: unknown critical chunk {kind!r}")
    if ihdr is None or not idat:
        raise CorruptDataError("Failed to decode PNG: missing IHDR or IDAT")
    return ihdr, b"".join(idat), plte, trns


def _png_inflate(
    mode: str, rawmode: str, size: tuple[int, int], stream: bytes, interlace: int
) -> np.ndarray:
    try:
        return np.asarray(Image.frombytes(mode, size, stream, "zip", rawmode, interlace))
    except Exception as e:  # any failure of Pillow's decoder means bad data
        raise CorruptDataError(f"Failed to decode PNG: {e}") from None


def decode(data: _Bytes, shape: tuple[int, int, int, int], dtype: np.dtype) -> np.ndarray:
    ihdr, stream, plte, trns = _png_parse(bytes(data))
    w, h, depth, ctype, compression, filter_method, interlace = ihdr
    if (ctype, depth) not in _PNG_PILLOW_MODES and not (ctype in (2, 4, 6) and depth == 16):
        raise CorruptDataError(f"Failed to decode PNG: invalid bit depth {depth} for color type {ctype}")
    if compression != 0 or filter_method != 0 or interlace > 1 or w == 0 or h == 0:
        raise CorruptDataError("Failed to decode PNG: invalid IHDR")
    ncomp = _PNG_CHANNELS[ctype] + (1 if ctype == 3 and trns else 0)
    c, z, y, x = shape
    if w * h != z * y * x or ncomp != c:
        raise image_dims_error(w, h, ncomp, shape)
    if (depth == 16) != (dtype.itemsize == 2):
        raise CorruptDataError(f"PNG bit depth {depth} is not compatible with data type {dtype}")
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
    return pixels_to_chunk(pixels.astype(dtype, copy=False), shape)


def _png_expand_palette(indices: np.ndarray, plte: bytes | None, trns: bytes | None) -> np.ndarray:
    if not plte or len(plte) % 3:
        raise CorruptDataError("Failed to decode PNG: missing or invalid PLTE chunk")
    table = np.frombuffer(plte, np.uint8).reshape(-1, 3)
    if trns:
        alpha = np.full((len(table), 1), 255, np.uint8)
        t = np.frombuffer(trns, np.uint8)[: len(table)]
        alpha[: len(t), 0] = t
        table = np.concatenate([table, alpha], axis=1)
    if int(indices.max()) >= len(table):
        raise CorruptDataError("Failed to decode PNG: palette index out of range")
    return table[indices]

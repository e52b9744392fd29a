"""The ``jpeg`` encoding (uint8, 1 or 3 channels) through Pillow, with TensorStore's
parameters (baseline, 4:2:0 for colour) and decoder checks."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ..errors import CorruptDataError, InvalidArgumentError
from .image import chunk_to_pixels, image_dims_error, pixels_to_chunk

__all__ = ["MAX_DIMENSION", "encode", "decode"]

_Bytes = bytes | bytearray | memoryview
#: libjpeg's largest image side.
MAX_DIMENSION = 65500


def encode(chunk: np.ndarray, quality: int) -> bytes:
    c, z, y, x = chunk.shape
    if x > MAX_DIMENSION or y * z > MAX_DIMENSION:
        raise InvalidArgumentError(f"JPEG image dimensions of ({x}, {y * z}) exceed maximum size")
    pixels = chunk_to_pixels(chunk)
    img = Image.fromarray(pixels[:, :, 0] if c == 1 else pixels)  # uint8: "L" or "RGB"
    out = io.BytesIO()
    # Pillow calls libjpeg's jpeg_set_quality with force_baseline, like TensorStore; quality 0
    # is clamped to 1 by libjpeg in both.  subsampling=2 is 4:2:0; for grayscale it must not
    # be given, or Pillow would write 2x2 sampling factors where libjpeg (and TS) write 1x1.
    options = {"subsampling": 2} if c == 3 else {}
    img.save(out, format="JPEG", quality=int(quality), optimize=False, **options)
    return out.getvalue()


def decode(data: _Bytes, shape: tuple[int, int, int, int]) -> np.ndarray:
    head = bytes(memoryview(data)[:2])
    if head != b"\xff\xd8":
        padded = head + b"\0\0"
        raise CorruptDataError(f"Not a JPEG file: starts with 0x{padded[0]:02x} 0x{padded[1]:02x}")
    try:
        img = Image.open(io.BytesIO(data), formats=["JPEG"])
    except Exception as e:  # any Pillow failure means the bytes are bad
        raise CorruptDataError(f"Not a JPEG file: {e}") from None
    w, h = img.size
    ncomp = len(img.getbands())
    c, z, y, x = shape
    if w * h != z * y * x or ncomp != c or img.mode not in ("L", "RGB"):
        raise image_dims_error(w, h, ncomp, shape)
    try:
        pixels = np.asarray(img)
    except Exception as e:  # truncated or corrupt entropy-coded data
        raise CorruptDataError(f"Failed to decode JPEG: {e}") from None
    return pixels_to_chunk(pixels, shape)

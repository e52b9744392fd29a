"""The image layout jpeg and png share, as TensorStore writes it: width X, height Y*Z
(rows run z-major, then y), channels interleaved."""

from __future__ import annotations

import numpy as np

from ..errors import CorruptDataError

__all__ = ["image_dims_error", "pixels_to_chunk", "chunk_to_pixels"]


def image_dims_error(w: int, h: int, c: int, shape: tuple[int, ...]) -> CorruptDataError:
    return CorruptDataError(
        f"Image dimensions ({w}, {h}, {c}) are not compatible with expected chunk shape "
        f"{{{', '.join(str(s) for s in shape)}}}"
    )


def pixels_to_chunk(pixels: np.ndarray, shape: tuple[int, int, int, int]) -> np.ndarray:
    """Turn decoded pixels (any w*h factorization, channels last) into a fresh czyx array."""
    c, z, y, x = shape
    p = pixels.reshape(z, y, x, c)
    if c == 1:
        out = p.reshape(shape)
        return out if out.flags.writeable and out.flags.c_contiguous else out.copy()
    return np.ascontiguousarray(p.transpose(3, 0, 1, 2))


def chunk_to_pixels(chunk: np.ndarray) -> np.ndarray:
    """The (height=Y*Z, width=X, c) pixel array of a czyx chunk: rows run z-major, then y."""
    c, z, y, x = chunk.shape
    return np.ascontiguousarray(chunk.transpose(1, 2, 3, 0)).reshape(z * y, x, c)

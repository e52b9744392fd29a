"""Draco-encoded multi-resolution mesh fragments (DracoPy), in quantized positions."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CorruptDataError, InvalidArgumentError

__all__ = ["decode_fragment", "encode_fragment"]


def _dracopy() -> Any:  # imported on use: the ``meshes`` extra is optional
    try:
        import DracoPy
    except ImportError:  # pragma: no cover
        raise ImportError(
            "reading and writing multi-resolution meshes needs DracoPy: "
            'pip install "napari-precomputed[meshes]"'
        ) from None
    return DracoPy


def decode_fragment(data: bytes, bits: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(positions float64 (n, 3) in [0, 2**bits - 1], faces uint32 (m, 3))``."""
    dracopy = _dracopy()
    try:
        mesh = dracopy.decode(bytes(data))
        points = mesh.points
        faces = mesh.faces
    except Exception as e:  # DracoPy raises its own types (and ValueError/RuntimeError)
        raise CorruptDataError(f"Error decoding Draco mesh fragment {what}: {e}") from None
    if points is None or faces is None or getattr(mesh, "faces", None) is None:
        raise CorruptDataError(f"Error decoding Draco mesh fragment {what}: not a triangle mesh")
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    faces = np.asarray(faces, dtype=np.uint32).reshape(-1, 3)
    top = (1 << bits) - 1
    if points.size and (not np.isfinite(points).all() or points.min() < 0 or points.max() > top):
        raise CorruptDataError(
            f"Error decoding Draco mesh fragment {what}: vertex positions outside [0, {top}]"
        )
    if faces.size and int(faces.max()) >= points.shape[0]:
        raise CorruptDataError(
            f"Error decoding Draco mesh fragment {what}: face index out of range"
        )
    return points, faces


def encode_fragment(positions: np.ndarray, faces: np.ndarray, bits: int, level: int = 7) -> bytes:
    """Encode integer positions (stored as a signed 32-bit integer attribute, which is
    what Neuroglancer's decoder takes as-is; Draco's own quantization is not used)."""
    dracopy = _dracopy()
    try:
        return bytes(
            dracopy.encode(
                np.ascontiguousarray(positions, dtype=np.int32).reshape(-1, 3),
                np.ascontiguousarray(faces, dtype=np.uint32).reshape(-1, 3),
                quantization_bits=bits,
                compression_level=level,
            )
        )
    except Exception as e:  # DracoPy.EncodingFailedException
        raise InvalidArgumentError(
            f"Draco could not encode a fragment of {len(faces)} triangles: {e}"
        ) from None

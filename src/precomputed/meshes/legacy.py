"""The legacy single-resolution mesh format: ``<id>:0`` JSON manifests listing fragment
files, each ``u32 num_vertices``, ``f32[num_vertices, 3]`` positions (nm), ``u32[m, 3]``
triangles."""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import CorruptDataError

__all__ = [
    "decode_legacy_fragment",
    "encode_legacy_fragment",
    "parse_legacy_manifest",
    "maybe_gunzip",
]

#: Largest fragment file accepted (after gunzip) and most fragments per manifest.
MAX_FRAGMENT_BYTES = 1 << 30
MAX_FRAGMENTS = 1 << 20
_GZIP = b"\x1f\x8b"


def maybe_gunzip(data: bytes, what: str, limit: int = MAX_FRAGMENT_BYTES) -> bytes:
    """Inflate gzip bytes (CloudVolume stores legacy fragments gzipped), at most ``limit``."""
    if data[:2] != _GZIP:
        return data
    d = zlib.decompressobj(31)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as e:
        raise CorruptDataError(f"Error decoding gzip-compressed {what}: {e}") from None
    if len(out) > limit:
        raise CorruptDataError(f"Error decoding {what}: more than {limit} bytes once decompressed")
    if not d.eof:
        raise CorruptDataError(f"Error decoding gzip-compressed {what}: truncated gzip stream")
    return out


def decode_legacy_fragment(data: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
    n = len(data)
    if n < 4:
        raise CorruptDataError(f"Error decoding mesh fragment {what}: {n} bytes is too short")
    nv = int(np.frombuffer(data, "<u4", 1, 0)[0])
    end = 4 + 12 * nv
    if end > n or (n - end) % 12:
        raise CorruptDataError(
            f"Error decoding mesh fragment {what}: {nv} vertices and {n} bytes leave "
            f"{n - end} bytes for triangles (need a multiple of 12)"
        )
    vertices = np.frombuffer(data, "<f4", 3 * nv, 4).astype(np.float32).reshape(-1, 3)
    faces = np.frombuffer(data, "<u4", (n - end) // 4, end).astype(np.uint32).reshape(-1, 3)
    if faces.size and int(faces.max()) >= nv:
        raise CorruptDataError(
            f"Error decoding mesh fragment {what}: triangle index {int(faces.max())} is out "
            f"of range for {nv} vertices"
        )
    return vertices, faces


def encode_legacy_fragment(vertices: np.ndarray, faces: np.ndarray) -> bytes:
    v = np.asarray(vertices, "<f4").reshape(-1, 3)
    return (
        np.uint32(v.shape[0]).astype("<u4").tobytes()
        + v.tobytes()
        + np.asarray(faces, "<u4").tobytes()
    )


def parse_legacy_manifest(data: bytes, key: str) -> list[str]:
    """Fragment keys (relative to the mesh directory) of a ``<id>:0`` manifest."""
    try:
        obj: Any = json.loads(data, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise CorruptDataError(f'Error reading mesh manifest "{key}": Invalid JSON') from None
    frags = obj.get("fragments") if isinstance(obj, Mapping) else None
    if not isinstance(frags, list) or not all(isinstance(f, str) for f in frags):
        raise CorruptDataError(
            f'Error reading mesh manifest "{key}": member "fragments": Expected array of strings'
        )
    if len(frags) > MAX_FRAGMENTS:
        raise CorruptDataError(
            f'Error reading mesh manifest "{key}": {len(frags)} fragments is more than {MAX_FRAGMENTS}'
        )
    for f in frags:
        parts = f.split("/")
        if not f or f.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise CorruptDataError(
                f'Error reading mesh manifest "{key}": fragment name {f!r} is not a key '
                "inside the mesh directory"
            )
    return frags

"""Volumes for the plugin tests, written by TensorStore (the reference implementation)
into a file kvstore, so the plugin is tested against data it did not write itself."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

SHARDING = {
    "@type": "neuroglancer_uint64_sharded_v1",
    "preshift_bits": 1,
    "hash": "murmurhash3_x86_128",
    "minishard_bits": 2,
    "shard_bits": 1,
    "minishard_index_encoding": "gzip",
    "data_encoding": "gzip",
}


def ts_spec(path: Path, scale_index: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "driver": "neuroglancer_precomputed",
        "kvstore": {"driver": "file", "path": str(path) + "/"},
    }
    if scale_index is not None:
        spec["scale_index"] = scale_index
    return spec


def ts_read(path: Path, scale_index: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """TensorStore's read of a whole scale: (x, y, z, c) array and its voxel offset."""
    import tensorstore as ts

    store = ts.open(ts_spec(path, scale_index), open=True).result()
    return store.read().result(), tuple(store.domain.inclusive_min[:3])


def write_ts_volume(
    path: Path,
    levels: Sequence[tuple[np.ndarray, Sequence[int], Sequence[float]]],
    *,
    kind: str = "image",
    encoding: str = "raw",
    chunk: Sequence[int] = (16, 16, 4),
    sharded: bool = False,
) -> Path:
    """Write ``levels`` = [(data (x, y, z, c), voxel_offset, resolution), ...] with TensorStore."""
    import tensorstore as ts

    for i, (data, offset, res) in enumerate(levels):
        scale: dict[str, Any] = {
            "size": list(data.shape[:3]),
            "voxel_offset": list(offset),
            "resolution": list(res),
            "encoding": encoding,
            "chunk_size": list(chunk),
        }
        if encoding == "compressed_segmentation":
            scale["compressed_segmentation_block_size"] = [8, 8, 4]
        if sharded:
            scale["sharding"] = SHARDING
        store = ts.open(
            {
                **ts_spec(path),
                "multiscale_metadata": {
                    "type": kind,
                    "data_type": str(data.dtype),
                    "num_channels": int(data.shape[3]),
                },
                "scale_metadata": scale,
            },
            create=True,
            open=i > 0,
        ).result()
        store[...] = data
    return path


def coarse_geometry(
    offset: Sequence[int], size: Sequence[int], factor: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Offset (floored) and size (rounded up) of a coarser scale covering the base."""
    o = tuple(a // f for a, f in zip(offset, factor, strict=True))
    end = tuple(-(-(a + n) // f) for a, n, f in zip(offset, size, factor, strict=True))
    return o, tuple(e - a for a, e in zip(o, end, strict=True))


def field(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """A position-coded value (never 0) of absolute level-0 voxel coordinates."""
    return (1 + (x + 53 * y + 2861 * z) % 60000).astype(np.uint16)


def field_volume(
    offset: Sequence[int], size: Sequence[int], factor: Sequence[int] = (1, 1, 1)
) -> np.ndarray:
    """Scale voxels ``[offset, offset + size)`` (x, y, z, 1) holding ``field`` of the
    level-0 voxel at their corner (voxel ``a`` covers level-0 ``[a f, (a + 1) f)``)."""
    ax = [(np.arange(n) + o) * f for o, n, f in zip(offset, size, factor, strict=True)]
    xx, yy, zz = np.meshgrid(*ax, indexing="ij")
    return field(xx, yy, zz)[..., None]

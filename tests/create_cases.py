"""Volumes, data and TensorStore helpers shared by the tests of precomputed.create."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ts = pytest.importorskip("tensorstore")


SHARDING = {
    "@type": "neuroglancer_uint64_sharded_v1",
    "preshift_bits": 2,
    "hash": "identity",
    "minishard_bits": 1,
    "shard_bits": 3,
    "minishard_index_encoding": "gzip",
    "data_encoding": "gzip",
}
IMAGE = {"type": "image", "data_type": "uint16", "num_channels": 2}
SEG = {"type": "segmentation", "data_type": "uint64", "num_channels": 1}
ODD = {"size": [37, 29, 6], "voxel_offset": [5, 3, 2], "resolution": [4, 4, 30]}


def ts_spec(path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "driver": "neuroglancer_precomputed",
        "kvstore": {"driver": "file", "path": str(path) + "/"},
        **extra,
    }


def ts_read(path: Path, scale_index: int = 0) -> np.ndarray:
    return ts.open(ts_spec(path, scale_index=scale_index), open=True).result().read().result()


def info(path: Path) -> dict[str, Any]:
    return json.loads((path / "info").read_bytes())


def files(path: Path) -> list[str]:
    if not path.exists():
        return []
    return sorted(
        os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs
    )


def image_data(shape=(37, 29, 6, 2), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 60000, shape, dtype=np.uint16)


def label_data(shape=(37, 29, 6, 1), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 4, shape) * 2**40 + 7).astype(np.uint64)


def cloudvolume_add_scale(scale0: dict[str, Any], factor: tuple[int, int, int]) -> dict[str, Any]:
    """The geometry CloudVolume's ``add_scale(factor)`` computes from scale 0 (factor
    relative to scale 0): float32 division, ceil for size, floor for the offset."""
    f = np.array(factor, np.float32)
    res = [r * k for r, k in zip(scale0["resolution"], factor, strict=True)]
    return {
        "size": [int(v) for v in np.ceil(np.array(scale0["size"], np.float32) / f)],
        "voxel_offset": [
            int(v) for v in np.floor(np.array(scale0["voxel_offset"], np.float32) / f)
        ],
        "resolution": [float(r) for r in res],
        "key": "_".join(str(int(r)) for r in res),  # integral resolutions
    }

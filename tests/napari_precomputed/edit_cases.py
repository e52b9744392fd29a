"""Helpers shared by the label-editing tests (editing/ and widgets/): TensorStore-written
segmentations and the mode downsampling their coarse scales hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Labels

from napari_precomputed._reader import read_volume
from precomputed.downsample import downsample_mode

SIZE = (64, 64, 16)  # x, y, z: 4 x 4 x 4 chunks of 16 x 16 x 4
RES = (4.0, 4.0, 40.0)


def labels_xyz(seed: int = 0) -> np.ndarray:
    """Blocky labels 1..6 (never 0, so no chunk ever becomes empty), x, y, z, 1."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(1, 7, size=(8, 8, 4))
    return np.repeat(np.repeat(np.repeat(coarse, 8, 0), 8, 1), 4, 2)[..., None].astype(np.uint64)


def mode_xyz(data: np.ndarray, factor: tuple[int, int, int]) -> np.ndarray:
    return downsample_mode(data.transpose(3, 2, 1, 0), factor).transpose(3, 2, 1, 0)


def add_reader_layer(viewer: Any, path: Path) -> Labels:
    (data, kwargs, kind), = read_volume(str(path))  # fmt: skip
    assert kind == "labels"
    return viewer.add_labels(data, **kwargs)

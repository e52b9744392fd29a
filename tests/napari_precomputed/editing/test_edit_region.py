"""The region an edit session opens: what is in view, within a voxel budget."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from edit_cases import add_reader_layer

from napari_precomputed import edit_labels
from napari_precomputed.editing.region import view_region


def test_default_region_is_what_is_in_view_within_the_budget(
    seg: Callable[..., Path], viewer_model: Any
) -> None:
    path = seg()
    pyramid = add_reader_layer(viewer_model, path)
    viewer_model.dims.set_point(0, 6 * 40.0)  # plane z = 6
    viewer_model.scene.camera.center = (0.0, 30 * 4.0, 20 * 4.0)  # y = 30, x = 20
    viewer_model.scene.camera.zoom = 600 / (24 * 4.0)  # the 600 px canvas shows ~24 voxels
    box = view_region(viewer_model, pyramid.data[0].volume, budget=10**9)
    assert box.start[2] == 4 and box.stop[2] == 8  # the chunk holding plane 6
    assert box.start[:2] == (0, 0) and box.stop[:2] == (48, 48)  # view, in whole chunks
    capped = view_region(viewer_model, pyramid.data[0].volume, budget=16 * 16 * 4)
    assert np.prod(capped.shape) <= 16 * 16 * 4 and capped.shape[2] == 4
    assert capped.start[0] <= 20 < capped.stop[0] and capped.start[1] <= 30 < capped.stop[1]
    session = edit_labels(viewer_model, pyramid, budget=16 * 16 * 4)
    assert session.region == capped

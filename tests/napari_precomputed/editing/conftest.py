"""Fixtures of the label-editing tests: a plain viewer and TensorStore-written
segmentations."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from edit_cases import RES, labels_xyz, mode_xyz
from napari_volumes import write_ts_volume


@pytest.fixture
def viewer_model() -> Any:
    """A plain ViewerModel. These tests add their layers themselves, so they skip the
    shared fixture's plugin registration (which a later ``make_napari_viewer`` teardown
    makes fail when it runs again)."""
    from napari.components import ViewerModel

    return ViewerModel()


@pytest.fixture
def seg(tmp_path: Path) -> Callable[..., Path]:
    """``seg(sharded)``: a 2-scale segmentation written by TensorStore; scale 1 is the
    (2, 2, 1) mode of scale 0."""

    def make(sharded: bool = True, name: str = "seg") -> Path:
        data = labels_xyz()
        levels = [(data, (0, 0, 0), RES), (mode_xyz(data, (2, 2, 1)), (0, 0, 0), (8.0, 8.0, 40.0))]
        return write_ts_volume(
            tmp_path / name, levels, kind="segmentation", chunk=(16, 16, 4), sharded=sharded
        )

    return make

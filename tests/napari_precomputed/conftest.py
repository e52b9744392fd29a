"""Fixtures for the napari plugin: TensorStore-written volumes, the sample, a viewer."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tqdm
from napari_volumes import coarse_geometry, field_volume, write_ts_volume

tqdm.tqdm.monitor_interval = 0  # tqdm's monitor thread and Qt do not mix in tests


@pytest.fixture
def make_volume(tmp_path: Path) -> Callable[..., Path]:
    """``make_volume(name, levels, **kw)``: a TensorStore-written volume in tmp_path."""

    def make(name: str, levels: Any, **kw: Any) -> Path:
        return write_ts_volume(tmp_path / name, levels, **kw)

    return make


@pytest.fixture
def pyramid_volume(make_volume: Callable[..., Path]) -> Callable[..., Path]:
    """A 3-scale uint16 field with an odd voxel offset and rounded-up coarse sizes."""

    def make(name: str = "field", **kw: Any) -> Path:
        o0, n0, res = (5, 3, 2), (37, 29, 6), (4.0, 4.0, 30.0)
        levels = [(field_volume(o0, n0), o0, res)]
        for f in [(2, 2, 1), (4, 4, 2)]:
            o, n = coarse_geometry(o0, n0, f)
            levels.append(
                (field_volume(o, n, f), o, tuple(r * k for r, k in zip(res, f, strict=True)))
            )
        return make_volume(name, levels, **kw)

    return make


@pytest.fixture(scope="session")
def sample_paths(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The generated sample, written once per session into a temporary cache folder."""
    from precomputed.samples import sample_volumes

    root = tmp_path_factory.mktemp("sample")
    old = os.environ.get("PRECOMPUTED_SAMPLE_DIR")
    os.environ["PRECOMPUTED_SAMPLE_DIR"] = str(root)
    try:
        yield sample_volumes()
    finally:
        if old is None:
            os.environ.pop("PRECOMPUTED_SAMPLE_DIR", None)
        else:
            os.environ["PRECOMPUTED_SAMPLE_DIR"] = old


@pytest.fixture
def viewer_model() -> Any:
    """A viewer without Qt, with npe2 plugins (ours included) discovered."""
    from napari.components import ViewerModel
    from napari.plugins import _initialize_plugins

    _initialize_plugins()
    return ViewerModel()

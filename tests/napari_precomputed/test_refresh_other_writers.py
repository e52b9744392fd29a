"""The napari pyramid picks up what other writers committed (another process) when the
layer refreshes: every read revalidates the cached chunks (``recheck_cached_data``
true, the default), so nothing needs to be reopened or forgotten by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from napari_volumes import ts_spec
from test_plugin_viewer import PLUGIN, window_plane


def write_elsewhere(path: Path, scale_index: int, value: int) -> None:
    """Another process (TensorStore) overwrites the whole scale."""
    code = (
        "import sys, json, tensorstore as ts\n"
        "s = ts.open(json.loads(sys.argv[1]), open=True).result()\n"
        f"s[...] = {value}\n"
    )
    spec = json.dumps(ts_spec(path, scale_index))
    subprocess.run([sys.executable, "-c", code, spec], check=True, timeout=60)


def shown_z(layer: Any, level: int, z_abs: int) -> int:
    """The plane of ``layer.data[level]`` napari shows at absolute z ``z_abs``."""
    pz = layer.metadata["precomputed"]["origin"][2]
    fz = int(layer.downsample_factors[level][0])
    return int(np.clip(np.round((z_abs - pz) / fz), 0, layer.data[level].shape[0] - 1))


def test_a_refresh_shows_what_another_process_committed(
    viewer_model: Any, pyramid_volume: Any
) -> None:
    path = pyramid_volume("img")
    (layer,) = viewer_model.open(str(path), plugin=PLUGIN)
    viewer_model.dims.set_point(0, 4 * 30.0)
    shown: dict[int, np.ndarray] = {}
    for level in (0, 1):
        layer.locked_data_level = level
        shown[level] = np.array(layer._slice.image.raw)
        np.testing.assert_array_equal(shown[level], window_plane(path, layer, level, shown_z(layer, level, 4)))
    for level in (0, 1):
        write_elsewhere(path, layer.metadata["precomputed"]["levels"][level]["scale_index"], 7 + level)
    for level in (0, 1):
        layer.locked_data_level = level
        layer.refresh()
        now = np.asarray(layer._slice.image.raw)
        expected = window_plane(path, layer, level, shown_z(layer, level, 4))
        assert (expected[expected != 0] == 7 + level).all() and expected.any()
        np.testing.assert_array_equal(now, expected)

"""A real napari window (Qt + OpenGL under Xvfb) showing the sample."""

from __future__ import annotations

import os

import numpy as np
import pytest

PLUGIN = "napari-precomputed"


@pytest.mark.qt
@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display (Xvfb) for OpenGL")
def test_sample_renders_real_content_with_async_slicing(
    make_napari_viewer, sample_paths, qtbot, monkeypatch
):
    from napari.settings import get_settings

    viewer = make_napari_viewer(show=True)
    settings = get_settings().experimental
    # as NAPARI_ASYNC=1: slicing off the UI thread (napari saves settings: put it back)
    monkeypatch.setattr(settings, "async_", True)
    image_path, seg_path = sample_paths
    viewer.open(image_path, plugin=PLUGIN)
    image_only = viewer.screenshot(canvas_only=True, flash=False)
    viewer.open(seg_path, plugin=PLUGIN)
    image, labels = viewer.layers
    labels.opacity = 0.4

    def sliced() -> None:
        viewer._layer_slicer.wait_until_idle(timeout=10)
        assert all(layer.loaded for layer in viewer.layers)

    qtbot.waitUntil(sliced, timeout=10000)
    qtbot.wait(100)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.ndim == 3 and shot.shape[2] == 4
    rgb = shot[..., :3].astype(np.int16)
    background = rgb[0, 0]
    covered = np.any(np.abs(rgb - background) > 8, axis=-1).mean()
    assert covered > 0.2, f"only {covered:.0%} of the canvas differs from the background"
    assert rgb.std() > 10  # texture, not a flat fill
    colours = np.unique(rgb.reshape(-1, 3), axis=0)
    assert len(colours) > 100  # grey EM levels blended with label colours
    assert not np.array_equal(shot, image_only)  # the segmentation is drawn on top
    if os.environ.get("NAPARI_PRECOMPUTED_SCREENSHOT"):
        from PIL import Image

        Image.fromarray(shot).save(os.environ["NAPARI_PRECOMPUTED_SCREENSHOT"])

"""Issue 17's story end to end: open a segmentation with meshes and segment properties,
search a cell by name, see its Surface over its voxels, paint the labels, commit, and the
re-meshed cell appears where it was painted. Then the same in a real window (Xvfb):
only the selected segments are drawn, and their meshes render in 3-D."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from napari_volumes import ts_read
from segment_cases import SPHERE, labels_xyz, make_segmentation, near_boundary, world_to_voxels

from napari_precomputed.editing.session import open_sessions
from napari_precomputed.segments import MESH_CACHE
from napari_precomputed.segments.selection import showing_only
from napari_precomputed.widgets.labels import EditLabelsWidget
from napari_precomputed.widgets.segments import SegmentsWidget

pytest.importorskip("zmesh")

PLUGIN = "napari-precomputed"


@pytest.fixture(autouse=True)
def fresh() -> Any:
    MESH_CACHE.clear()
    yield
    for s in open_sessions():
        s.close(force=True)


def surface_voxels(labels: Any, surface: Any) -> np.ndarray:
    """The Surface's vertices as positions (x, y, z) in the labels' data array
    (Neuroglancer's convention), through both layers' data-to-world transforms."""
    world = np.array([surface.data_to_world(v) for v in surface.data[0]])
    return world_to_voxels(labels, world)


def _story(viewer: Any, qtbot: Any, path: Path) -> tuple[Any, Any]:
    [labels] = viewer.open(str(path), plugin=PLUGIN)
    assert labels.multiscale and labels.features.shape[0] == 4
    segments = SegmentsWidget(viewer)
    assert segments.layer.value is labels

    # Search the cell by name and pick it.
    segments.text.value = "pyramidal"
    assert segments.search() == [SPHERE]
    segments.select_rows([SPHERE])
    view = segments.view
    qtbot.waitUntil(lambda: SPHERE in view.meshes.layers and not view.meshes.busy, timeout=10000)
    assert showing_only(labels) == (SPHERE,)
    surface = view.meshes.layers[SPHERE]
    seg = labels_xyz()
    p = surface_voxels(labels, surface)
    assert near_boundary(seg, SPHERE, p).all()  # at the right place
    before = p.max(axis=0)
    assert before[0] == pytest.approx(32, abs=0.5)  # the sphere ends at x = 20 + 12

    # Paint the cell's label beyond its end in x, through an edit session.
    edit = EditLabelsWidget(viewer)
    edit.source.value = labels
    edit.region_mode.value = "box"
    edit.box.value = "10, 74, 20, 84, 30, 78"  # the whole volume (absolute voxels)
    session = edit.open_session()
    assert session is not None, edit.result.value
    qtbot.waitUntil(lambda: edit.remesh.enabled and edit.remesh.value, timeout=5000)
    layer = session.layer
    layer.brush_size = 5
    layer.selected_label = SPHERE
    for x in (34, 37, 40):  # a stroke of discs, in the sphere's middle plane (z = 20)
        layer.paint((20, 34, x), SPHERE)
    assert np.asarray(layer.data[20, 34, 40]) == SPHERE

    # Commit: stored, coarser scale updated, re-meshed, the Surface refetched.
    edit.commit_button.native.click()
    qtbot.waitUntil(lambda: not edit.busy, timeout=30000)
    result = edit.last_result
    assert edit.last_error is None and result is not None, edit.result.value
    assert result.touched_ids == [SPHERE] and "1 segment re-meshed" in edit.result.value
    assert ts_read(path, 0)[0][40, 34, 20, 0] == SPHERE
    assert 1 in result.downsampled
    qtbot.waitUntil(
        lambda: not view.meshes.busy and surface_voxels(labels, surface)[:, 0].max() > 40,
        timeout=15000,
    )
    after = surface_voxels(labels, surface)
    stored = ts_read(path, 0)[0][..., 0]
    assert after[:, 0].max() == pytest.approx(43, abs=0.5)  # the disc at x = 40 ends at 42 + 1
    assert near_boundary(stored, SPHERE, after).all()  # still on the labels, now edited
    assert view.meshes.layers[SPHERE] is surface  # refreshed in place
    return labels, view


def test_the_story_with_the_widgets(qtbot: Any, viewer_model: Any, tmp_path: Path) -> None:
    path = make_segmentation(tmp_path / "seg", two_scales=True, sharded=True)
    _story(viewer_model, qtbot, path)


@pytest.mark.qt
@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display (Xvfb) for OpenGL")
def test_real_window_draws_only_the_selection_and_its_meshes(
    make_napari_viewer: Any, qtbot: Any, tmp_path: Path
) -> None:
    viewer = make_napari_viewer(show=True)
    path = make_segmentation(tmp_path / "seg", two_scales=True, sharded=True)
    [labels] = viewer.open(str(path), plugin=PLUGIN)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segments (Precomputed)")
    assert isinstance(widget, SegmentsWidget) and widget.layer.value is labels
    labels.opacity = 1.0
    viewer.dims.set_point(0, (30 + 20) * 6.0)  # the sphere's middle plane
    viewer.reset_view()

    def shot() -> np.ndarray:
        qtbot.wait(200)
        return viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(np.int16)

    def colours(img: np.ndarray) -> set[tuple[int, ...]]:
        values, counts = np.unique(img.reshape(-1, 3), axis=0, return_counts=True)
        return {tuple(v) for v, c in zip(values, counts, strict=True) if c > 30}

    everything = colours(shot())
    widget.text.value = "pyramidal"
    widget.search()
    widget.select_rows([SPHERE])
    view = widget.view
    qtbot.waitUntil(lambda: SPHERE in view.meshes.layers and not view.meshes.busy, timeout=15000)
    view.meshes.layers[SPHERE].visible = False  # 2-D: only the labels
    selected = shot()
    background = tuple(selected[0, 0])
    assert colours(selected) - {background} and len(colours(selected)) < len(everything)
    sphere = np.round(np.asarray(labels.get_color(SPHERE))[:3] * 255).astype(np.int16)
    drawn = np.abs(selected - sphere).max(axis=-1) <= 2
    assert drawn.mean() > 0.02  # the sphere's disc, in its colour
    others = ~drawn & (np.abs(selected - np.array(background)).max(axis=-1) > 2)
    assert others.mean() < 0.01  # and nothing else

    # 3-D: the Surface renders over an otherwise empty canvas (the labels hidden).
    labels.visible = False
    view.meshes.layers[SPHERE].visible = True
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    img = shot()
    lit = np.abs(img - np.array(tuple(img[0, 0]))).max(axis=-1) > 8
    assert lit.mean() > 0.02
    hue = img[lit].mean(axis=0)
    assert np.argmax(hue) == np.argmax(sphere)  # shaded, but the sphere's colour

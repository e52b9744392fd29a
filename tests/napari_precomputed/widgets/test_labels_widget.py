"""The *Edit labels* widget: commits in a worker, reports, asks before edits are lost.

The first tests need only a QApplication (offscreen is fine); the last one drives a real
napari window under Xvfb and is skipped without a display.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edit_cases import RES, add_reader_layer, labels_xyz, mode_xyz
from napari_volumes import ts_read, write_ts_volume

from napari_precomputed.editing.session import open_sessions
from napari_precomputed.widgets import labels as _labels_widget
from napari_precomputed.widgets.labels import EditLabelsWidget

PLUGIN = "napari-precomputed"


@pytest.fixture
def viewer_model() -> Any:
    """A plain ViewerModel. These tests add their layers themselves, so they skip the
    shared fixture's plugin registration (which a later ``make_napari_viewer`` teardown
    makes fail when it runs again)."""
    from napari.components import ViewerModel

    return ViewerModel()


@pytest.fixture
def seg_path(tmp_path: Path) -> Path:
    data = labels_xyz()
    levels = [(data, (0, 0, 0), RES), (mode_xyz(data, (2, 2, 1)), (0, 0, 0), (8.0, 8.0, 40.0))]
    return write_ts_volume(
        tmp_path / "seg", levels, kind="segmentation", chunk=(16, 16, 4), sharded=True
    )


def open_box(widget: EditLabelsWidget, layer: Any, box: str) -> Any:
    widget.source.value = layer
    widget.region_mode.value = "box"
    widget.box.value = box
    session = widget.open_session()
    assert session is not None, widget.result.value
    return session


def commit_and_wait(widget: EditLabelsWidget, qtbot: Any) -> None:
    widget.commit_button.native.click()
    assert widget.busy or widget.last_result is not None or widget.last_error is not None
    qtbot.waitUntil(lambda: not widget.busy, timeout=10000)


def test_widget_commits_in_a_worker_and_keeps_edits_on_failure(
    qtbot: Any, viewer_model: Any, seg_path: Path
) -> None:
    pyramid = add_reader_layer(viewer_model, seg_path)
    widget = EditLabelsWidget(viewer_model)
    assert widget.source.choices == (None, pyramid)
    assert widget.scale.native.itemText(1).startswith("1: 8_8_40")
    session = open_box(widget, pyramid, "0, 64, 0, 64, 0, 16")
    assert widget.sessions.value is session
    session.layer.brush_size = 5
    session.layer.paint((2, 10, 10), 100)
    session.layer.paint((10, 50, 50), 101)
    qtbot.waitUntil(lambda: "edited chunk" in widget.status.value, timeout=2000)
    assert widget.status.value == "2 edited chunks in 2 shards"

    session.volume.kvstore.read_only = True
    commit_and_wait(widget, qtbot)
    assert widget.last_error is not None and widget.result.value.startswith("Failed")
    assert "read-only" in widget.result.value and session.dirty_chunks == 2
    assert ts_read(seg_path, 0)[0][10, 10, 2, 0] != 100

    session.volume.kvstore.read_only = False
    commit_and_wait(widget, qtbot)
    assert widget.last_error is None and session.dirty_chunks == 0
    assert widget.result.value == f"Last commit: {widget.last_result.summary()}"
    assert "2 chunks stored in 2 shards" in widget.result.value
    assert widget.status.value == "No uncommitted edits"
    stored, _ = ts_read(seg_path, 0)
    assert stored[10, 10, 2, 0] == 100 and stored[50, 50, 10, 0] == 101
    assert np.asarray(pyramid.data[0][2, 10, 10]) == 100  # the pyramid sees it too
    session.close()


def test_widget_discard_asks_first(
    qtbot: Any, viewer_model: Any, seg_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pyramid = add_reader_layer(viewer_model, seg_path)
    widget = EditLabelsWidget(viewer_model)
    session = open_box(widget, pyramid, "0, 32, 0, 32, 0, 8")
    session.layer.paint((2, 10, 10), 102)
    answers = iter([False, True])
    monkeypatch.setattr(_labels_widget, "ask_discard", lambda *a: next(answers))
    assert not widget.discard() and session.dirty_chunks == 1
    assert widget.discard() and session.dirty_chunks == 0
    assert np.asarray(session.layer.data[2, 10, 10]) != 102
    session.close()


@pytest.mark.qt
@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display (Xvfb) for OpenGL")
def test_real_viewer_paint_commit_and_guards(
    make_napari_viewer: Callable[..., Any],
    qtbot: Any,
    seg_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    viewer = make_napari_viewer(show=True)
    try:
        _paint_commit_and_guards(viewer, qtbot, seg_path, monkeypatch)
    finally:  # never leave edits behind: closing the viewer would ask about them
        for s in open_sessions():
            s.transaction.discard()


def _paint_commit_and_guards(
    viewer: Any, qtbot: Any, seg_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    viewer.open(str(seg_path), plugin=PLUGIN)
    (pyramid,) = viewer.layers
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Edit labels")
    assert isinstance(widget, EditLabelsWidget) and widget.source.value is pyramid
    viewer.dims.set_point(0, 5 * 40.0)
    session = widget.open_session()  # what is in view (the whole plane), chunk of z = 5
    assert session is not None and session.layer in viewer.layers
    assert session.region.start[2] == 4 and session.region.stop[2] == 8
    layer = session.layer
    layer.mode = "paint"
    layer.brush_size = 4
    layer.selected_label = 103
    z = 5 - session.region.start[2]
    y, x = 24 - session.region.start[1], 24 - session.region.start[0]  # inside one chunk
    layer.paint((z, y, x), layer.selected_label)
    qtbot.waitUntil(lambda: widget.status.value.startswith("1 edited chunk"), timeout=2000)
    commit_and_wait(widget, qtbot)
    assert widget.last_error is None, widget.result.value
    stored, _ = ts_read(seg_path, 0)
    assert stored[24, 24, 5, 0] == 103
    assert (stored == 103).sum() == (np.asarray(layer.data) == 103).sum() > 4
    assert ts_read(seg_path, 1)[0][12, 12, 5, 0] == 103  # the coarser scale followed

    # Removing the layer with uncommitted edits asks: cancel puts it back.
    layer.paint((z, y, x), 104)
    answers: list[str] = []
    monkeypatch.setattr(_labels_widget, "ask_unsaved", lambda v, m: answers.pop(0))
    answers.append("cancel")
    viewer.layers.remove(layer)
    qtbot.waitUntil(lambda: layer in viewer.layers, timeout=2000)
    assert session.dirty_chunks == 1 and not session.closed

    # Closing the window asks too: cancel keeps it open.
    answers.append("cancel")
    assert viewer.window._qt_window.close() is False
    assert viewer.window._qt_window.isVisible() and session.dirty_chunks == 1

    # Commit on removal: the layer is back while the commit runs, then goes for good.
    answers.append("commit")
    viewer.layers.remove(layer)
    qtbot.waitUntil(lambda: session.closed, timeout=10000)
    assert layer not in viewer.layers and session not in open_sessions()
    assert ts_read(seg_path, 0)[0][24, 24, 5, 0] == 104

    # Discard on removal drops the edits and ends the session.
    second = widget.open_session()
    second.layer.paint((z, y, x), 105)
    answers.append("discard")
    viewer.layers.remove(second.layer)
    assert second.closed and second not in open_sessions()
    assert ts_read(seg_path, 0)[0][24, 24, 5, 0] == 104

    # Closing the viewer with edits: commit, then close.
    third = widget.open_session()
    third.layer.paint((z, y, x), 106)
    answers.append("commit")
    viewer.close()
    assert third.dirty_chunks == 0 and ts_read(seg_path, 0)[0][24, 24, 5, 0] == 106
    assert not answers

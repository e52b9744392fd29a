"""The create widget as a new user meets it: it fits the screen, says nothing in red
before any input, flags a destination that already holds a volume while it is typed,
speaks the form's words, and "Pyramid levels = 3" makes 3 scales."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from napari_precomputed.widgets.create import CreateVolumeWidget, gui_terms
from precomputed import create as C

PLUGIN = "napari-precomputed"
MM = {"type": "image", "data_type": "uint8", "num_channels": 1}
SM = {"size": [40, 30, 8], "resolution": [4, 4, 40], "chunk_size": [16, 16, 8]}
SCREEN = (1600, 1000)


@pytest.fixture
def viewer_model() -> Any:
    from napari.components import ViewerModel
    from npe2 import PluginManager

    PluginManager.instance().discover()
    return ViewerModel()


@pytest.fixture
def widget(qtbot: Any, viewer_model: Any) -> CreateVolumeWidget:
    w = CreateVolumeWidget(viewer_model)
    qtbot.addWidget(w.native)
    return w


def wait(qtbot: Any, w: CreateVolumeWidget) -> None:
    qtbot.waitUntil(lambda: not w.busy, timeout=30000)


def red(w: CreateVolumeWidget) -> list[str]:
    """The messages shown in the error colour."""
    return [
        str(label.value)
        for label in w.messages.values()
        if "e05555" in label.native.styleSheet() and str(label.value) and not label.native.isHidden()
    ]


def test_nothing_is_red_before_any_input(widget: CreateVolumeWidget) -> None:
    assert widget.errors == {} and red(widget) == []
    assert "required" in str(widget.messages["size"].value)  # a note, in grey
    assert not widget.can_create
    assert "fix the fields marked in red" not in str(widget.key_label.value)
    widget.set_values(size="10, 20")  # the first input: now errors are errors
    assert "size" in widget.errors and red(widget)


def test_a_destination_that_holds_a_volume_is_flagged_while_typed(
    widget: CreateVolumeWidget, tmp_path: Path
) -> None:
    C.create_volume(str(tmp_path / "taken"), MM, SM)
    widget.set_values(size="40, 30, 8", destination=str(tmp_path / "new"))
    assert widget.can_create and "destination" not in widget.errors
    widget.fields["destination"].value = str(tmp_path / "taken")  # as if typed
    message = widget.errors["destination"]
    assert message.startswith(str(tmp_path / "taken")) and "already holds" in message
    assert "Add scale" in message and "delete_existing" not in message and "=True" not in message
    assert not widget.can_create
    widget.fields["destination"].value = str(tmp_path / "taken" / "info")
    assert "already holds" in widget.errors["destination"]
    widget.fields["destination"].value = str(tmp_path / "fresh")
    assert "destination" not in widget.errors and widget.can_create


def test_a_failure_never_reads_as_if_the_existing_volume_was_deleted(
    widget: CreateVolumeWidget, qtbot: Any
) -> None:
    # A remote destination is not checked per keystroke: creating finds the volume.
    dest = "memory://create-fit/taken"
    C.create_volume(dest, MM, SM)
    widget.set_values(size="40, 30, 8", destination=dest, open_layer=False)
    assert widget.create()
    wait(qtbot, widget)
    status = str(widget.status.value)
    assert isinstance(widget.last_error, FileExistsError)
    assert "already holds a volume, which was left untouched" in status
    assert "removed" not in status and "delete_existing" not in status
    assert C.find_incomplete(dest) is None


def test_pyramid_levels_three_makes_three_scales(
    widget: CreateVolumeWidget, qtbot: Any, tmp_path: Path
) -> None:
    dest = tmp_path / "pyr"
    widget.set_values(size="64, 64, 8", chunk_size="16, 16, 8", destination=str(dest), levels=3)
    assert widget.can_create, widget.errors
    assert widget.create()
    wait(qtbot, widget)
    assert widget.last_error is None, widget.status.value
    assert len(json.loads((dest / "info").read_bytes())["scales"]) == 3


def test_error_texts_speak_the_forms_words(widget: CreateVolumeWidget, tmp_path: Path) -> None:
    widget.set_values(size="40, 30, 8", destination=str(tmp_path / "v"), chunk_size="0, 8, 8")
    text = widget.errors["chunk_size"]
    assert text == "x must be a whole number of at least 1, not 0"
    for leak in ("9223372036854775806", "Expected integer", "position"):
        assert leak not in text
    # A path keeps its leading slash; no Python keyword is suggested.
    missing = tmp_path / "nothing"
    widget.set_values(mode="add", destination=str(missing))
    assert not widget.load_existing()
    assert str(missing) in str(widget.status.value)
    raw = f'Error writing "{str(missing).lstrip("/")}/info": exists (pass delete_existing=True to replace it)'
    assert gui_terms(raw, str(missing)) == f'Error writing "{missing}/info": exists'


@pytest.mark.qt
@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display (Xvfb) for OpenGL")
def test_docked_in_a_1600x1000_window_nothing_is_cut_off(
    make_napari_viewer: Any, qtbot: Any, tmp_path: Path
) -> None:
    from qtpy.QtWidgets import QScrollArea

    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(*SCREEN)
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Create volume")
    qtbot.waitUntil(lambda: widget.native.isVisible(), timeout=5000)
    qtbot.wait(200)
    scroll = widget.form.root_native_widget
    assert isinstance(scroll, QScrollArea) and dock.widget() is widget.native
    hint = dock.minimumSizeHint()
    # The dock asks for no more than the screen; napari's window keeps its own share.
    assert hint.height() <= SCREEN[1] - 200 and hint.width() <= SCREEN[0] // 3, hint
    assert window.height() <= SCREEN[1] and window.width() <= SCREEN[0]
    # Nothing cut off on the right: the view is as wide as the form's widest row.
    assert scroll.viewport().width() >= widget.form.native.minimumSizeHint().width()
    assert dock.geometry().right() <= window.width()
    # The form scrolls vertically to its end (the Create button).
    scroll.ensureWidgetVisible(widget.create_button.native)
    qtbot.wait(50)
    top_left = widget.create_button.native.mapTo(scroll.viewport(), widget.create_button.native.rect().topLeft())
    assert 0 <= top_left.y() <= scroll.viewport().height()
    out = tmp_path / "create-widget.png"
    assert window.grab().save(str(out)) and out.stat().st_size > 0

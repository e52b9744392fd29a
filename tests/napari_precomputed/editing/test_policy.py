"""Uncommitted edits when their layer is removed without a window: the headless policy
(``on_unsaved`` or ``$NAPARI_PRECOMPUTED_UNSAVED_EDITS``) commits or keeps them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from edit_cases import add_reader_layer
from napari_volumes import ts_read

from napari_precomputed import edit_labels
from napari_precomputed.editing import policy
from napari_precomputed.editing.session import open_sessions


def test_removing_the_layer_headless_commits_by_default(
    seg: Callable[..., Path], viewer_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NAPARI_PRECOMPUTED_UNSAVED_EDITS", raising=False)
    path = seg()
    pyramid = add_reader_layer(viewer_model, path)
    session = edit_labels(viewer_model, pyramid, region=((0, 64), (0, 64), (0, 16)))
    session.layer.data[3, 5, 5] = 90
    viewer_model.layers.remove(session.layer)
    assert session.closed and session.dirty_chunks == 0
    assert ts_read(path, 0)[0][5, 5, 3, 0] == 90


def test_removing_the_layer_headless_can_keep_the_edits(
    seg: Callable[..., Path], viewer_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NAPARI_PRECOMPUTED_UNSAVED_EDITS", "keep")
    path = seg()
    pyramid = add_reader_layer(viewer_model, path)
    session = edit_labels(viewer_model, pyramid, region=((0, 64), (0, 64), (0, 16)))
    session.layer.data[3, 5, 5] = 91
    viewer_model.layers.remove(session.layer)
    assert not session.closed and session.dirty_chunks == 1
    assert session in open_sessions()
    assert ts_read(path, 0)[0][5, 5, 3, 0] != 91
    session.commit()
    assert ts_read(path, 0)[0][5, 5, 3, 0] == 91
    assert session.close() and session not in open_sessions()


def test_a_failed_commit_on_removal_keeps_the_session(
    seg: Callable[..., Path], viewer_model: Any
) -> None:
    path = seg()
    pyramid = add_reader_layer(viewer_model, path)
    session = edit_labels(
        viewer_model, pyramid, region=((0, 64), (0, 64), (0, 16)), on_unsaved="commit"
    )
    session.layer.data[3, 5, 5] = 92
    session.volume.kvstore.read_only = True
    viewer_model.layers.remove(session.layer)
    assert not session.closed and session.dirty_chunks == 1
    session.volume.kvstore.read_only = False
    session.commit()
    assert ts_read(path, 0)[0][5, 5, 3, 0] == 92


# -- a user to ask, without Qt: the Prompt interface ------------------------------------------


class FakePrompt:
    """A Prompt that answers from a list and commits on the spot (no Qt, no threads)."""

    def __init__(self) -> None:
        self.answers: list[str] = []
        self.asked: list[str] = []
        self.guarded: list[Any] = []
        self.errors: list[str] = []

    def ask_unsaved(self, viewer: Any, message: str) -> Any:
        self.asked.append(message)
        return self.answers.pop(0)

    def show_error(self, viewer: Any, message: str) -> None:
        self.errors.append(message)

    def commit_in_background(self, session: Any, *, close_after: bool = False) -> None:
        session.commit()
        if close_after and not session.dirty_chunks:
            session.viewer.layers.remove(session.layer)

    def commit_blocking(self, viewer: Any, session: Any) -> None:
        session.commit()

    def later(self, callback: Callable[[], None]) -> None:
        callback()

    def guard_close(self, viewer: Any, may_close: Callable[[], bool]) -> None:
        self.guarded.append(may_close)


class ShownViewer:
    """A ViewerModel behind a stand-in for a window on screen."""

    def __init__(self) -> None:
        from napari.components import ViewerModel

        self.model = ViewerModel()
        self.layers = self.model.layers
        self.dims = self.model.dims
        self.window = SimpleNamespace(_qt_window=SimpleNamespace(isVisible=lambda: True))
        self.window.close = lambda: True
        self.closed = False

    def add_layer(self, layer: Any) -> Any:
        return self.model.add_layer(layer)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def prompt() -> Iterator[FakePrompt]:
    previous = policy.registered_prompt()
    fake = FakePrompt()
    policy.register_prompt(fake)
    try:
        yield fake
    finally:
        policy.register_prompt(previous)


def test_a_registered_prompt_is_asked_when_a_window_is_on_screen(
    seg: Callable[..., Path], prompt: FakePrompt
) -> None:
    path = seg()
    viewer = ShownViewer()
    session = edit_labels(viewer, str(path), region=((0, 64), (0, 64), (0, 16)))
    assert prompt.guarded  # the window's own close is guarded too
    layer = session.layer

    # Cancel: the layer is put back, the edits stay.
    layer.data[3, 5, 5] = 95
    prompt.answers.append("cancel")
    viewer.layers.remove(layer)
    assert layer in viewer.layers and session.dirty_chunks == 1 and not session.closed
    assert "uncommitted edits in 1 chunk." in prompt.asked[-1]

    # The viewer's close asks once for every session; cancel vetoes it.
    prompt.answers.append("cancel")
    viewer.close()
    assert not viewer.closed and session.dirty_chunks == 1

    # Commit: stored, then the layer goes and the session ends.
    prompt.answers.append("commit")
    viewer.layers.remove(layer)
    assert session.closed and layer not in viewer.layers
    assert ts_read(path, 0)[0][5, 5, 3, 0] == 95

    # Discard: nothing stored.
    second = edit_labels(viewer, str(path), region=((0, 64), (0, 64), (0, 16)))
    second.layer.data[3, 5, 5] = 96
    prompt.answers.append("discard")
    viewer.layers.remove(second.layer)
    assert second.closed and ts_read(path, 0)[0][5, 5, 3, 0] == 95

    # Closing the viewer with edits: commit, then close.
    third = edit_labels(viewer, str(path), region=((0, 64), (0, 64), (0, 16)))
    third.layer.data[3, 5, 5] = 97
    prompt.answers.append("commit")
    viewer.close()
    assert viewer.closed and third.dirty_chunks == 0
    assert ts_read(path, 0)[0][5, 5, 3, 0] == 97
    assert not prompt.answers and not prompt.errors


def test_without_a_window_the_prompt_is_not_asked(
    seg: Callable[..., Path], viewer_model: Any, prompt: FakePrompt
) -> None:
    path = seg()
    session = edit_labels(
        viewer_model, str(path), region=((0, 64), (0, 64), (0, 16)), on_unsaved="keep"
    )
    session.layer.data[3, 5, 5] = 98
    viewer_model.layers.remove(session.layer)
    assert not prompt.asked and not session.closed and session in open_sessions()
    session.close(force=True)

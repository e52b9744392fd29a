"""Uncommitted edits when their layer is removed without a window: the headless policy
(``on_unsaved`` or ``$NAPARI_PRECOMPUTED_UNSAVED_EDITS``) commits or keeps them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from edit_cases import add_reader_layer
from napari_volumes import ts_read

from napari_precomputed import edit_labels
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

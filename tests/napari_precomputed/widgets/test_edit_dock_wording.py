"""The edit dock's words: what it says before a commit, after undo and redo, and for a
source that can never be written (with *Save edits as a new volume*).

A QApplication is enough (offscreen); every server is on 127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edit_cases import RES, add_reader_layer, labels_xyz
from napari_volumes import write_ts_volume

from napari_precomputed.editing.readonly import commit_failed_message
from napari_precomputed.editing.results import CommitError
from napari_precomputed.editing.session import edit_labels
from napari_precomputed.widgets.labels import EditLabelsWidget
from precomputed.errors import ReadOnlyError

ts = pytest.importorskip("tensorstore")


@pytest.fixture
def viewer_model() -> Any:
    from napari.components import ViewerModel

    return ViewerModel()


@pytest.fixture
def seg_path(tmp_path: Path) -> Path:
    """A segmentation whose scale starts at voxel (8, 4, 2), not at the origin."""
    return write_ts_volume(
        tmp_path / "seg", [(labels_xyz(), (8, 4, 2), RES)], kind="segmentation", chunk=(16, 16, 4)
    )


def ts_open(path: Path) -> Any:
    spec = {"driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": f"{path}/"}}
    return ts.open(spec, open=True).result()


def test_the_dock_says_nothing_of_commits_before_one_and_follows_undo(
    qtbot: Any, viewer_model: Any, seg_path: Path
) -> None:
    pyramid = add_reader_layer(viewer_model, seg_path)
    widget = EditLabelsWidget(viewer_model)
    assert "commit" not in widget.result.label.lower()  # no "Last commit" row yet
    widget.source.value = pyramid
    widget.region_mode.value = "box"
    widget.box.value = "8, 72, 4, 68, 2, 18"
    session = widget.open_session()
    assert session is not None, widget.result.value
    assert "commit" not in widget.result.value.lower() and widget.commit_button.enabled
    session.layer.brush_size = 3
    session.layer.paint((4, 20, 20), 50)
    qtbot.waitUntil(lambda: "edited chunk" in widget.status.value, timeout=2000)
    assert widget.status.value == "1 edited chunk in 1 chunk file"
    session.layer.undo()
    qtbot.waitUntil(lambda: widget.status.value == "No uncommitted edits", timeout=2000)
    assert session.dirty_chunks == 0 and not widget.discard_button.enabled
    session.layer.redo()
    qtbot.waitUntil(lambda: "edited chunk" in widget.status.value, timeout=2000)
    assert session.dirty_chunks == 1
    widget.commit_button.native.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=10000)
    assert widget.result.value.startswith("Last commit: 1 chunk stored")
    session.close()


def test_commit_failure_words_singular_and_read_only() -> None:
    one = commit_failed_message(OSError("disk full"), 1)
    assert "1 edited chunk remains in the session" in one and "commit again to retry" in one
    assert "2 edited chunks remain" in commit_failed_message(OSError("x"), 2)
    ro = commit_failed_message(ReadOnlyError("http://h/v is read-only"), 3)
    assert "retry" not in ro and "save the edits as a new volume" in ro


def test_read_only_source_says_so_at_once_and_saves_a_new_volume(
    qtbot: Any, viewer_model: Any, http_server: Any, seg_path: Path, tmp_path: Path
) -> None:
    http_server.root = seg_path.parent
    url = f"{http_server.url}/seg"
    widget = EditLabelsWidget(viewer_model)
    widget.url.value = url
    widget.region_mode.value = "box"
    widget.box.value = "8, 40, 4, 36, 2, 10"
    session = widget.open_session()
    assert session is not None, widget.result.value
    # Said when the session opens, before any edit; no commit offered.
    assert widget.result.value.startswith("Read-only source: ")
    assert url in widget.result.value and "save them as a new volume" in widget.result.value
    assert not widget.commit_button.enabled and widget.save_button.enabled
    assert widget.save_path.value  # a suggested new folder
    session.layer.brush_size = 3
    session.layer.paint((3, 10, 10), 77)  # z, y, x of the region: absolute (18, 14, 5)
    # A commit (e.g. the key binding) fails without promising a retry could help.
    with pytest.raises(CommitError) as err:
        session.commit()
    assert "retry" not in str(err.value) and "new volume" in str(err.value)
    assert session.dirty_chunks == 1

    dest = tmp_path / "copy"
    widget.save_path.value = str(dest)
    widget.save_button.native.click()
    qtbot.waitUntil(lambda: widget.last_saved is not None or "Could not" in widget.result.value,
                    timeout=10000)  # fmt: skip
    assert widget.last_saved == str(dest), widget.result.value
    assert str(dest) in widget.result.value and "new volume" in widget.result.value
    got, src = ts_open(dest), ts_open(seg_path)
    assert tuple(got.domain.inclusive_min) == tuple(src.domain.inclusive_min)
    assert tuple(got.domain.exclusive_max) == tuple(src.domain.exclusive_max)
    assert got.schema.dimension_units == src.schema.dimension_units
    region = got[8:40, 4:36, 2:10, 0].read().result()
    np.testing.assert_array_equal(region, np.asarray(session.data).transpose(2, 1, 0))
    assert region[18 - 8, 14 - 4, 5 - 2] == 77  # the edit is in it
    stored = src[8:40, 4:36, 2:10, 0].read().result()
    assert (region != stored).sum() > 0 and (region == stored).mean() > 0.9
    assert session.dirty_chunks == 1  # the edits stay in the session

    # Saving again onto it: flagged, and the existing volume is left alone.
    before = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    widget.last_saved = None
    widget.save_button.native.click()
    qtbot.waitUntil(lambda: widget.save_button.enabled and "already" in widget.result.value,
                    timeout=10000)  # fmt: skip
    assert "left as it is" in widget.result.value
    assert {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()} == before
    session.close(force=True)


def test_headless_read_only_session_commit_names_the_way_out(
    viewer_model: Any, http_server: Any, seg_path: Path
) -> None:
    http_server.root = seg_path.parent
    session = edit_labels(
        viewer_model, f"{http_server.url}/seg", region=((8, 24), (4, 20), (2, 6))
    )
    session.layer.paint((1, 5, 5), 9)
    with pytest.raises(CommitError, match="save the edits as a new volume"):
        session.commit()
    session.close(force=True)

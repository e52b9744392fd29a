"""The *Segments* dock widget (search, pick, show only those, their meshes) and the edit
dock's *Re-mesh edited segments* option. A QApplication is enough (offscreen is fine):
the mesh fetches report through the Qt event loop."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from segment_cases import BOX, SPHERE, add_reader_layer, labels_xyz, make_segmentation

from napari_precomputed.editing.session import open_sessions
from napari_precomputed.segments import MESH_CACHE
from napari_precomputed.segments.meshes import LOD_COARSEST
from napari_precomputed.segments.selection import showing_only
from napari_precomputed.widgets.labels import EditLabelsWidget
from napari_precomputed.widgets.segments import SegmentsWidget
from precomputed.meshes import MultiLodMeshSource

pytest.importorskip("zmesh")


@pytest.fixture(autouse=True)
def fresh() -> Any:
    MESH_CACHE.clear()
    yield
    for s in open_sessions():
        s.close(force=True)


@pytest.fixture
def viewer_model() -> Any:
    from napari.components import ViewerModel

    return ViewerModel()


def rows(widget: SegmentsWidget) -> list[tuple[str, str, str]]:
    t = widget.table
    return [tuple(t.item(r, c).text() for c in range(3)) for r in range(t.rowCount())]  # type: ignore[misc, union-attr]


def test_search_pick_and_show_with_meshes(
    qtbot: Any, viewer_model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    labels = add_reader_layer(viewer_model, make_segmentation(tmp_path / "seg", chunk_voxels=8))
    threads: list[str] = []
    original = MultiLodMeshSource.get_many

    def get_many(self: Any, ids: Any, lod: int = 0, **kw: Any) -> Any:
        threads.append(threading.current_thread().name)
        return original(self, ids, lod, **kw)

    monkeypatch.setattr(MultiLodMeshSource, "get_many", get_many)
    widget = SegmentsWidget(viewer_model)
    assert widget.layer.value is labels and widget.view is not None
    assert widget.tag.choices == ("(any tag)", "excitatory", "inhibitory", "soma")
    assert widget.found.value == "4 segments" and len(rows(widget)) == 4
    widget.text.value = "cell"
    widget.search()
    assert rows(widget) == [
        (str(SPHERE), "Pyramidal cell", "excitatory soma"),
        ("4", "Basket cell", "inhibitory"),
    ]
    widget.text.value = ""
    widget.tag.value = "soma"  # searches by itself
    assert [r[0] for r in rows(widget)] == [str(SPHERE), str(BOX)]
    widget.text.value = "^box"
    widget.regex.value = True
    assert [r[0] for r in rows(widget)] == [str(BOX)]
    widget.text.value = "("
    widget.search()
    assert "regular expression" in widget.found.value and not rows(widget)
    widget.regex.value = False
    widget.text.value = ""
    widget.search()

    # Picking rows in the list (as a click does) shows only them, with their meshes.
    widget.table.selectRow(0)
    qtbot.waitUntil(lambda: widget.view.selected == (SPHERE,), timeout=3000)
    view = widget.view
    qtbot.waitUntil(lambda: view.meshes.shown_lod(SPHERE) == 0 and not view.meshes.busy, timeout=10000)
    assert showing_only(labels) == (SPHERE,)
    surface = view.meshes.layers[SPHERE]
    assert surface in viewer_model.layers
    assert threads and all(t.startswith("precomputed-segments") for t in threads)
    qtbot.waitUntil(lambda: widget.status.value == "1 of 1 meshes shown", timeout=2000)
    widget.select_rows([SPHERE, BOX])
    assert widget.chosen_ids() == [SPHERE, BOX]
    qtbot.waitUntil(lambda: BOX in view.meshes.layers and not view.meshes.busy, timeout=10000)
    assert showing_only(labels) == (SPHERE, BOX)

    widget.lod.value = LOD_COARSEST
    assert view.lod == LOD_COARSEST
    n = view.meshes.cache.lods(view.meshes.key, SPHERE)
    assert view.meshes.shown_lod(SPHERE) == n - 1  # cached: at once
    widget.meshes.value = False
    assert view.meshes.layers == {} and widget.status.value == "Meshes hidden"
    widget.meshes.value = True
    assert sorted(view.meshes.layers) == sorted([SPHERE, BOX])

    widget.show_all_button.native.click()
    assert view.selected == () and showing_only(labels) is None
    assert view.meshes.layers == {} and list(viewer_model.layers) == [labels]
    assert widget.chosen_ids() == []


def test_a_segmentation_without_meshes_or_properties(
    qtbot: Any, viewer_model: Any, tmp_path: Path
) -> None:
    path = make_segmentation(tmp_path / "bare", with_meshes=False, with_properties=False)
    add_reader_layer(viewer_model, path)
    widget = SegmentsWidget(viewer_model)
    assert not widget.meshes.enabled
    assert widget.found.value == "0 segments (this segmentation has no segment properties)"
    widget.text.value = str(BOX)  # an id still finds it
    widget.search()
    assert rows(widget) == [(str(BOX), "", "")]
    widget.select_rows([BOX])
    assert showing_only(widget.view.layer) == (BOX,)
    # No segmentation at all.
    viewer_model.layers.clear()
    assert widget.layer.value is None and widget.view is None
    assert widget.found.value == "No segmentation layer"


def _open_box(widget: EditLabelsWidget, layer: Any) -> Any:
    widget.source.value = layer
    widget.region_mode.value = "box"
    shape = labels_xyz().shape
    widget.box.value = f"10, {10 + shape[0]}, 20, {20 + shape[1]}, 30, {30 + shape[2]}"
    session = widget.open_session()
    assert session is not None, widget.result.value
    return session


def test_edit_dock_remeshes_edited_segments(
    qtbot: Any, viewer_model: Any, tmp_path: Path
) -> None:
    labels = add_reader_layer(viewer_model, make_segmentation(tmp_path / "seg", sharded=True))
    segments = SegmentsWidget(viewer_model)
    segments.text.value = "interneuron"
    segments.search()
    segments.select_rows([BOX])
    view = segments.view
    qtbot.waitUntil(lambda: BOX in view.meshes.layers and not view.meshes.busy, timeout=10000)
    x_before = view.meshes.layers[BOX].data[0][:, 2].max()

    widget = EditLabelsWidget(viewer_model)
    assert widget.remesh.value is False  # no session yet
    session = _open_box(widget, labels)
    qtbot.waitUntil(lambda: widget.remesh.enabled, timeout=5000)
    assert widget.remesh.value is True and session.remesh is True  # on: meshes we can write
    session.layer.data[10:15, 15:20, 60:63] = BOX
    widget.commit_button.native.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=20000)
    assert widget.last_error is None, widget.result.value
    assert "1 segment re-meshed" in widget.result.value
    qtbot.waitUntil(
        lambda: view.meshes.layers[BOX].data[0][:, 2].max() > x_before + 2.5, timeout=10000
    )
    # Turned off: the next commit does not re-mesh.
    widget.remesh.value = False
    assert session.remesh is False
    session.layer.data[10:15, 15:20, 63] = BOX
    widget.commit_button.native.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=20000)
    assert widget.last_result.remesh is None and "re-meshed" not in widget.result.value
    session.close()


def test_edit_dock_remesh_is_off_without_meshes(
    qtbot: Any, viewer_model: Any, tmp_path: Path
) -> None:
    labels = add_reader_layer(viewer_model, make_segmentation(tmp_path / "bare", with_meshes=False))
    widget = EditLabelsWidget(viewer_model)
    session = _open_box(widget, labels)
    qtbot.waitUntil(lambda: id(session) in widget._remesh_checked, timeout=5000)  # noqa: SLF001
    assert not widget.remesh.enabled and widget.remesh.value is False
    assert widget.remesh.tooltip == "Not available: the volume has no meshes"
    assert session.remesh is False
    assert np.asarray(session.layer.data[0, 0, 0]) >= 0
    session.close()

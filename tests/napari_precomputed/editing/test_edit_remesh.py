"""Re-meshing after a commit: the touched labels (old and new values of the changed
voxels) get new meshes in the commit's thread, after the data is stored; a re-mesh
failure never loses the commit; the Surface layers of those segments are refreshed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from napari_volumes import ts_read
from segment_cases import (
    BOX,
    OFFSET,
    RESOLUTION,
    SPHERE,
    add_reader_layer,
    labels_xyz,
    make_segmentation,
)

import precomputed
from napari_precomputed.editing.remesh import remesh_region, remesh_target, touched_labels
from napari_precomputed.editing.session import edit_labels
from napari_precomputed.segments import MESH_CACHE, show_segments
from precomputed import meshes
from precomputed.internal.geometry import Box

pytest.importorskip("zmesh")

OFF = np.array(OFFSET)
WHOLE = tuple((int(a), int(a + n)) for a, n in zip(OFF, labels_xyz().shape, strict=True))


@pytest.fixture(autouse=True)
def empty_cache() -> None:
    MESH_CACHE.clear()


def paint_edits(session: Any) -> None:
    """Extend the box by 3 voxels in x (background -> BOX) and erase part of the sphere
    (SPHERE -> 0). Data indices are z, y, x from the region's start (the volume's)."""
    data = session.layer.data
    data[10:15, 15:20, 60:63] = BOX
    part = np.asarray(data[15:25, 25:35, 8:14])
    assert (part == SPHERE).any()
    data[15:25, 25:35, 8:14] = np.where(part == SPHERE, 0, part)


def test_touched_labels() -> None:
    base = np.array([[0, 7, 7], [5, 5, 0]], np.uint64)
    new = np.array([[9, 7, 0], [5, 5, 0]], np.uint64)
    assert touched_labels(new, base).tolist() == [7, 9]  # 0 -> 9, 7 -> 0
    assert touched_labels(new, None).tolist() == [5, 7, 9]  # an absent chunk was all 0
    assert touched_labels(base, base).tolist() == []


def test_a_commit_remeshes_the_touched_segments(tmp_path: Path) -> None:
    from napari.components import ViewerModel

    path = make_segmentation(tmp_path / "seg", sharded=True)
    viewer = ViewerModel()
    labels = add_reader_layer(viewer, path)
    view = show_segments(viewer, labels, [SPHERE, BOX])
    assert view.wait()
    box_before = view.meshes.layers[BOX].data[0].max(axis=0)  # z, y, x voxels
    session = edit_labels(viewer, labels, region=WHOLE)
    assert session.remesh is None  # automatic: on, as these meshes can be rewritten
    assert remesh_target(session.volume)[0] is not None
    paint_edits(session)
    result = session.commit()
    assert result.touched_ids == [SPHERE, BOX]
    r = result.remesh
    assert r is not None and r.error is None and r.skipped is None
    assert r.segment_ids == [SPHERE, BOX] and r.stats.segments_written == 2
    assert "2 segments re-meshed" in result.summary()
    # Meshed where the segments are (old meshes and the edit, padded), not elsewhere.
    lo, hi = np.array(r.region[0]) - OFF, np.array(r.region[1]) - OFF
    assert (lo <= [8 - 2, 10, 5]).all() and (hi >= [63, 30, 40]).all()
    assert (hi - lo).prod() < np.prod(labels_xyz().shape)
    # Storage: the edit and the new meshes.
    stored, _ = ts_read(path, 0)
    assert (stored[60:63, 15:20, 10:15, 0] == BOX).all()
    vol = precomputed.open(str(path))
    box = meshes.open(vol).get(BOX)
    assert box.vertices[:, 0].max() / RESOLUTION[0] - OFF[0] == pytest.approx(63, abs=0.01)
    sphere = meshes.open(vol).get(SPHERE)
    p = sphere.vertices / np.array(RESOLUTION) - OFF
    hole = (p[:, 0] < 13.5) & (p[:, 1] > 25.5) & (p[:, 1] < 34.5) & (p[:, 2] > 15.5) & (p[:, 2] < 24.5)
    assert not hole.any()  # no surface left inside the erased part
    # The Surface layers were refreshed (refetched in the background) and show it.
    assert view.wait()
    box_after = view.meshes.layers[BOX].data[0].max(axis=0)
    assert box_after[2] == pytest.approx(box_before[2] + 3, abs=0.01)
    session.close()


def test_a_remesh_failure_never_loses_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_segmentation(tmp_path / "seg")
    session = edit_labels(None, str(path), region=WHOLE)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("disk full")

    monkeypatch.setattr(meshes, "remesh", broken)
    paint_edits(session)
    result = session.commit()  # no exception: the edits are stored
    assert session.dirty_chunks == 0 and session.last_error is None
    assert (ts_read(path, 0)[0][60:63, 15:20, 10:15, 0] == BOX).all()
    assert result.remesh is not None and isinstance(result.remesh.error, OSError)
    assert "re-meshing 2 segments failed: disk full" in result.summary()
    assert result.summary().startswith("5 chunks stored in 5 chunk files")  # the commit's own
    session.close()


def test_remesh_off_and_volumes_without_meshes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(meshes, "remesh", lambda *a, **k: calls.append(a))
    # Without meshes, automatic: nothing, quietly (the touched ids are still reported).
    bare = make_segmentation(tmp_path / "bare", with_meshes=False)
    session = edit_labels(None, str(bare), region=WHOLE)
    paint_edits(session)
    result = session.commit()
    assert result.touched_ids == [SPHERE, BOX] and result.remesh is None and not calls
    assert remesh_target(session.volume) == (None, "the volume has no meshes")
    # Asked for explicitly: skipped, with the reason.
    session.remesh = True
    session.layer.data[0:2, 0:2, 0:2] = 3
    result = session.commit()
    assert result.remesh is not None and result.remesh.skipped == "the volume has no meshes"
    assert "not re-meshed: the volume has no meshes" in result.summary()
    session.close()
    # With meshes but turned off.
    path = make_segmentation(tmp_path / "seg")
    session = edit_labels(None, str(path), region=WHOLE)
    session.remesh = False
    paint_edits(session)
    assert session.commit().remesh is None and not calls
    session.close()


def test_which_meshes_can_be_rewritten(tmp_path: Path) -> None:
    path = make_segmentation(tmp_path / "seg")
    vol = precomputed.open(str(path))
    target, why = remesh_target(vol)
    assert target is not None and why == "" and target.scale_index == 0
    assert target.url == f"file://{path}/mesh/" and not target.sharded
    (path / "mesh" / "info").write_text(json.dumps({"@type": "neuroglancer_legacy_mesh"}))
    assert remesh_target(vol) == (None, "its meshes are legacy meshes, which are not rewritten")
    (path / "mesh" / "info").unlink()
    assert remesh_target(vol)[1].startswith("its meshes are legacy meshes (no mesh info)")


def test_edits_at_a_coarser_scale_do_not_remesh_finer_meshes(tmp_path: Path) -> None:
    path = make_segmentation(tmp_path / "seg", two_scales=True)
    coarse = tuple((a // f, b // f) for (a, b), f in zip(WHOLE, (2, 2, 1), strict=True))
    session = edit_labels(None, str(path), region=coarse, scale_index=1)
    session.remesh = True  # automatic would skip quietly
    session.layer.data[10:15, 8:10, 30:32] = BOX
    result = session.commit()
    assert result.touched_ids == [BOX]
    assert result.remesh is not None
    assert result.remesh.skipped == "the meshes are made from scale 0, finer than the edited scale 1"
    session.close()


def test_the_remesh_region(tmp_path: Path) -> None:
    path = make_segmentation(tmp_path / "seg")
    vol = precomputed.open(str(path))
    src = meshes.open(vol)
    edit = Box(tuple(int(v) for v in OFF + [1, 2, 3]), tuple(int(v) for v in OFF + [4, 5, 6]))  # type: ignore[arg-type]
    # A new label: the edited voxels, padded by 2, clipped to the volume.
    got = remesh_region(vol, src, [999], [edit])
    assert got == (tuple(int(v) for v in OFF + [0, 0, 1]), tuple(int(v) for v in OFF + [6, 7, 8]))
    # An existing one: its old mesh's LOD 0 nodes too (the box: x 40-60, y 10-30, z 5-40).
    lo, hi = (np.array(c) - OFF for c in remesh_region(vol, src, [BOX], [edit]))
    assert (lo <= [1, 2, 3]).all() and (hi >= [62, 32, 42]).all() and (hi <= labels_xyz().shape).all()

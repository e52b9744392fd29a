"""Meshes of selected segments as Surface layers: placed exactly over the labels in world
coordinates, in the labels' colours, coarsest LOD first then refined in a worker thread,
cached, and following the selection."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from segment_cases import (
    BOX,
    OFFSET,
    RESOLUTION,
    SPHERE,
    add_reader_layer,
    labels_xyz,
    make_segmentation,
    near_boundary,
    world_to_voxels,
)

from napari_precomputed.segments import MESH_CACHE, meshes_rewritten, segment_view, show_segments
from napari_precomputed.segments.meshes import LOD_COARSEST
from precomputed.meshes import MultiLodMeshSource

pytest.importorskip("zmesh")

RES_ZYX = np.array(RESOLUTION[::-1])


@pytest.fixture(autouse=True)
def empty_cache() -> None:
    MESH_CACHE.clear()


@pytest.fixture
def viewer() -> Any:
    from napari.components import ViewerModel

    return ViewerModel()


@pytest.fixture
def fetches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[int, ...], int, str]]:
    """Every ``get_many`` of a mesh source: (ids, lod, thread name)."""
    calls: list[tuple[tuple[int, ...], int, str]] = []
    original = MultiLodMeshSource.get_many

    def get_many(self: Any, ids: Any, lod: int = 0, **kw: Any) -> Any:
        calls.append((tuple(int(i) for i in ids), lod, threading.current_thread().name))
        return original(self, ids, lod, **kw)

    monkeypatch.setattr(MultiLodMeshSource, "get_many", get_many)
    return calls


def world_vertices(surface: Any) -> np.ndarray:
    """The Surface's vertices in world coordinates (z, y, x), through napari's own
    data-to-world transform of the layer."""
    return np.array([surface.data_to_world(v) for v in surface.data[0]])


@pytest.mark.parametrize("sharded", [False, True])
def test_surfaces_lie_exactly_over_their_labels(
    tmp_path: Path, viewer: Any, sharded: bool
) -> None:
    """The derivation: Neuroglancer's mesh frame puts voxel v at [v, v+1) x resolution;
    napari draws data index d over [d - 0.5, d + 0.5) x scale + translate. With vertices
    in voxels p = nm / resolution, the Surface gets the Labels' scale and the translate
    labels.translate - (origin + 0.5) x scale = -0.5 x resolution (the reader's translate
    is origin x resolution). Checked against the Labels layer's own data-to-world."""
    path = make_segmentation(tmp_path / "seg", sharded=sharded, two_scales=True)
    labels = add_reader_layer(viewer, path)
    assert labels.multiscale
    np.testing.assert_array_equal(labels.translate, np.array(OFFSET[::-1]) * RES_ZYX)
    view = show_segments(viewer, labels, [SPHERE, BOX])
    assert view.wait()
    seg = labels_xyz()
    for sid in (SPHERE, BOX):
        surface = view.meshes.layers[sid]
        assert surface in viewer.layers
        np.testing.assert_array_equal(surface.scale, RES_ZYX)
        np.testing.assert_array_equal(surface.translate, -0.5 * RES_ZYX)
        p = world_to_voxels(labels, world_vertices(surface))  # x, y, z in the data array
        assert near_boundary(seg, sid, p).all(), sid  # within one voxel of the boundary
    # The box's faces lie exactly on the faces of its outer voxels as the Labels layer
    # draws them: data index d covers [d - 0.5, d + 0.5) in its world coordinates (up to
    # the 16-bit vertex quantization, < 0.01 nm here; half a voxel is 2-3 nm).
    world = world_vertices(view.meshes.layers[BOX])
    lo_voxel, hi_voxel = np.array([5, 10, 40]), np.array([39, 29, 59])  # z, y, x indices
    lo = np.array(labels.data_to_world(lo_voxel - 0.5))
    hi = np.array(labels.data_to_world(hi_voxel + 0.5))
    np.testing.assert_allclose(world.min(axis=0), lo, atol=0.02)
    np.testing.assert_allclose(world.max(axis=0), hi, atol=0.02)


def test_surfaces_follow_the_labels_layer_when_it_moves(tmp_path: Path, viewer: Any) -> None:
    labels = add_reader_layer(viewer, make_segmentation(tmp_path / "seg"))
    view = show_segments(viewer, labels, [BOX])
    assert view.wait()
    labels.translate = np.array(labels.translate) + [100.0, -20.0, 7.0]
    labels.scale = np.array(labels.scale) * 2
    labels.rotate = 30
    world = world_vertices(view.meshes.layers[BOX])
    corners = np.array([[5, 10, 40], [39, 29, 59]], float)
    got = np.array([labels.world_to_data(w) for w in world])  # back in labels data index
    np.testing.assert_allclose(got.min(axis=0), corners[0] - 0.5, atol=1e-3)
    np.testing.assert_allclose(got.max(axis=0), corners[1] + 0.5, atol=1e-3)  # voxels


def _colour(surface: Any) -> np.ndarray:
    return np.asarray(surface.colormap.colors)[-1]


def test_surface_colours_match_the_labels(tmp_path: Path, viewer: Any) -> None:
    labels = add_reader_layer(viewer, make_segmentation(tmp_path / "seg"))
    own = labels.colormap
    view = show_segments(viewer, labels, [SPHERE, BOX])
    assert view.wait()
    for sid in (SPHERE, BOX):
        np.testing.assert_allclose(_colour(view.meshes.layers[sid]), own.map(sid))
        np.testing.assert_allclose(labels.get_color(sid), own.map(sid))  # shown, same colour
    labels.new_colormap(seed=3)  # "shuffle colours": the meshes and the selection follow
    new = labels.colormap
    assert new is not own
    from napari_precomputed.segments.selection import original_colormap, showing_only

    assert showing_only(labels) == (SPHERE, BOX)
    shuffled = original_colormap(labels)
    for sid in (SPHERE, BOX):
        np.testing.assert_allclose(_colour(view.meshes.layers[sid]), shuffled.map(sid))
        np.testing.assert_allclose(labels.get_color(sid), shuffled.map(sid))
    assert labels.get_color(3)[3] == 0  # still only the selection


def test_coarsest_lod_first_then_refined_in_a_worker(
    tmp_path: Path, viewer: Any, fetches: list[Any]
) -> None:
    """Fetches run on worker threads while the UI thread goes on; layers are added and
    refined on the UI thread; the coarsest LOD is shown first."""
    path = make_segmentation(tmp_path / "seg", chunk_voxels=8)
    labels = add_reader_layer(viewer, path)
    main = threading.current_thread()
    events: list[tuple[str, int | None, bool]] = []
    gate = threading.Event()
    original = MultiLodMeshSource.get_many

    def slow(self: Any, ids: Any, lod: int = 0, **kw: Any) -> Any:
        gate.wait(10)  # the UI thread must not be waiting for this
        return original(self, ids, lod, **kw)

    def inserted(event: Any) -> None:
        layer = event.value
        events.append(("added", layer.metadata.get("precomputed_mesh", {}).get("lod"),
                       threading.current_thread() is main))  # fmt: skip
        layer.events.data.connect(
            lambda e: events.append(
                ("data", layer.metadata["precomputed_mesh"]["lod"],
                 threading.current_thread() is main)  # fmt: skip
            )
        )

    viewer.layers.events.inserted.connect(inserted)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(MultiLodMeshSource, "get_many", slow)
        view = segment_view(viewer, labels)
        view.select([SPHERE])  # returns at once: the fetch waits for the gate
        assert view.meshes.layers == {} and view.meshes.busy
        view.meshes.process()
        assert view.meshes.layers == {}
        gate.set()
        assert view.wait()
    n = view.meshes.cache.lods(view.meshes.key, SPHERE)
    assert n is not None and n >= 3
    assert [(ids, lod) for ids, lod, _ in fetches] == [((SPHERE,), LOD_COARSEST), ((SPHERE,), 0)]
    assert all(name.startswith("precomputed-segments") for _, _, name in fetches)
    assert events[0] == ("added", n - 1, True)  # the coarsest first, on the UI thread
    assert ("data", 0, True) in events  # then refined in place, on the UI thread
    assert all(on_main for _, _, on_main in events)
    assert view.meshes.shown_lod(SPHERE) == 0
    surface = view.meshes.layers[SPHERE]
    coarsest = view.meshes.cache.get(view.meshes.key, SPHERE, n - 1)
    assert surface.data[0].shape[0] > coarsest.num_vertices
    assert "1 of 1 meshes shown" in view.meshes.status()


def test_lod_setting(tmp_path: Path, viewer: Any, fetches: list[Any]) -> None:
    labels = add_reader_layer(viewer, make_segmentation(tmp_path / "seg", chunk_voxels=8))
    view = show_segments(viewer, labels, [SPHERE, BOX], lod=LOD_COARSEST)
    assert view.wait()
    assert [lod for _, lod, _ in fetches] == [LOD_COARSEST]  # nothing to refine
    n = {sid: view.meshes.cache.lods(view.meshes.key, sid) for sid in (SPHERE, BOX)}
    assert all(view.meshes.shown_lod(sid) == n[sid] - 1 for sid in (SPHERE, BOX))
    view.lod = 1
    assert view.wait()
    assert [lod for _, lod, _ in fetches] == [LOD_COARSEST, 1]  # both segments at once
    assert fetches[-1][0] == (SPHERE, BOX)
    assert all(view.meshes.shown_lod(sid) == 1 for sid in (SPHERE, BOX))
    view.lod = 99  # past every segment's levels: the finest each has ... clamped
    assert view.wait()
    assert all(view.meshes.shown_lod(sid) == n[sid] - 1 for sid in (SPHERE, BOX))
    view.lod = LOD_COARSEST  # cached: no fetch
    view.lod = 1
    assert view.wait() and len(fetches) == 2
    with pytest.raises(Exception, match="lod"):
        view.lod = -2


def test_selection_changes_add_and_remove_surfaces_and_reuse_the_cache(
    tmp_path: Path, viewer: Any, fetches: list[Any]
) -> None:
    path = make_segmentation(tmp_path / "seg")
    (path / "mesh" / "3.index").unlink()  # segment 3 has no mesh
    labels = add_reader_layer(viewer, path)
    view = show_segments(viewer, labels, [SPHERE, BOX, 3])
    assert view.wait()
    surfaces = dict(view.meshes.layers)
    assert sorted(surfaces) == sorted([SPHERE, BOX]) and view.meshes.missing == {3}
    assert "2 of 3 meshes shown, 1 without mesh" == view.meshes.status()
    assert surfaces[SPHERE].name == "seg mesh 7 Pyramidal cell"
    assert viewer.layers.selection.active is labels  # adding surfaces kept the selection
    view.select([BOX])
    assert surfaces[SPHERE] not in viewer.layers and surfaces[BOX] in viewer.layers
    assert view.meshes.missing == set()
    n = len(fetches)
    view.select([BOX, SPHERE])  # from the cache: no fetch, shown at once
    assert len(fetches) == n and SPHERE in view.meshes.layers
    view.show_meshes = False
    assert view.meshes.layers == {} and view.selected == (BOX, SPHERE)
    view.show_meshes = True
    assert sorted(view.meshes.layers) == sorted([SPHERE, BOX]) and len(fetches) == n
    # The user removes one surface: that segment's mesh is no longer shown.
    viewer.layers.remove(view.meshes.layers[BOX])
    assert list(view.meshes.layers) == [SPHERE] and view.meshes.ids == (SPHERE,)
    view.clear()
    assert not [layer for layer in viewer.layers if layer is not labels]
    # At most max_surfaces layers.
    view.meshes.max_surfaces = 1
    view.select([BOX, SPHERE])
    assert list(view.meshes.layers) == [BOX]  # cached
    assert view.meshes.status() == "1 of 1 meshes shown, 1 more selected (at most 1 shown)"
    view.meshes.max_surfaces = 100
    view.clear()
    # Removing the Labels layer removes its surfaces.
    view.select([SPHERE])
    assert SPHERE in view.meshes.layers
    viewer.layers.remove(labels)
    assert len(viewer.layers) == 0 and view.meshes.closed


def test_meshes_rewritten_refetches_the_segments(tmp_path: Path, viewer: Any) -> None:
    import precomputed
    from precomputed import meshes

    path = make_segmentation(tmp_path / "seg")
    labels = add_reader_layer(viewer, path)
    view = show_segments(viewer, labels, [SPHERE, BOX])
    assert view.wait()
    before = world_vertices(view.meshes.layers[BOX]).max(axis=0)
    vol = precomputed.open(str(path))
    data = vol[...].read()
    data[40:70, 10:30, 5:40] = np.where(data[40:70, 10:30, 5:40] == 0, BOX, data[40:70, 10:30, 5:40])
    vol[...] = data
    meshes.remesh(vol, [BOX])
    meshes_rewritten(vol, [BOX])
    assert view.wait()
    after = world_vertices(view.meshes.layers[BOX]).max(axis=0)
    assert after[2] == pytest.approx(before[2] + 4 * RESOLUTION[0], abs=0.02)  # to x = 64


def test_a_volume_without_meshes(tmp_path: Path, viewer: Any) -> None:
    labels = add_reader_layer(viewer, make_segmentation(tmp_path / "seg", with_meshes=False))
    view = show_segments(viewer, labels, [SPHERE])
    assert view.wait()
    assert view.meshes.layers == {} and 'has no "mesh" member' in (view.meshes.error or "")
    assert "error" in view.meshes.status()

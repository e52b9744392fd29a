"""Label editing without Qt: edit sessions over TensorStore-written segmentations.

Every edit goes through napari's own Labels methods (paint, fill, polygon, undo, redo,
data_setitem) on a ``ViewerModel``; the same operations on a numpy-backed Labels layer
give the expected labels, and TensorStore (the reference implementation) reads back
what was committed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edit_cases import RES, add_reader_layer, mode_xyz
from napari.layers import Labels
from napari_volumes import ts_read, ts_spec, write_ts_volume

import napari_precomputed as npc
from napari_precomputed import CommitError, edit_labels
from napari_precomputed.editing.session import COMMIT_KEY


def twin(session: npc.EditSession) -> Labels:
    """A numpy-backed Labels layer with the session's data and placement: the oracle."""
    layer = session.layer
    return Labels(np.array(layer.data), scale=layer.scale, translate=layer.translate)


def both(layers: tuple[Labels, Labels], action: Callable[[Labels], Any]) -> None:
    for layer in layers:
        action(layer)


def as_xyz(zyx: np.ndarray) -> np.ndarray:
    return zyx.transpose(2, 1, 0)[..., None]


def edit_everything(layers: tuple[Labels, Labels]) -> None:
    """Paint, erase, fill, polygon, undo, redo and data_setitem, in several chunks."""
    both(layers, lambda ly: setattr(ly, "brush_size", 7))
    both(layers, lambda ly: ly.paint((1, 10, 10), 9))
    both(layers, lambda ly: ly.paint((6, 40, 50), 10))
    both(layers, lambda ly: ly.paint((6, 42, 52), 0))  # erase
    both(layers, lambda ly: ly.fill((13, 60, 3), 11))
    both(layers, lambda ly: ly.paint_polygon(np.array([[9, 20, 20], [9, 20, 45], [9, 50, 30]]), 12))
    both(layers, lambda ly: ly.paint((14, 5, 60), 13))
    both(layers, Labels.undo)  # the last paint
    both(layers, Labels.undo)  # the polygon
    both(layers, Labels.redo)  # the polygon again
    idx = (np.array([0, 15, 15]), np.array([63, 0, 31]), np.array([0, 63, 31]))
    both(layers, lambda ly: ly.data_setitem(idx, 14))


@pytest.mark.parametrize("sharded", [True, False], ids=["sharded", "unsharded"])
def test_paint_fill_polygon_undo_redo_commit_read_back_by_tensorstore(
    seg: Callable[..., Path], viewer_model: Any, sharded: bool
) -> None:
    path = seg(sharded)
    original, _ = ts_read(path, 0)
    pyramid = add_reader_layer(viewer_model, path)
    session = edit_labels(viewer_model, pyramid, region=((0, 64), (0, 64), (0, 16)))
    assert session.layer in viewer_model.layers and session.layer.editable
    oracle = twin(session)
    edit_everything((session.layer, oracle))
    expected = as_xyz(np.asarray(oracle.data))
    assert np.count_nonzero(expected != original) > 200
    # Reads of the session see the edits at once; storage does not, yet.
    np.testing.assert_array_equal(as_xyz(np.asarray(session.layer.data)), expected)
    np.testing.assert_array_equal(ts_read(path, 0)[0], original)
    assert session.dirty_chunks >= 5
    dirty_groups = session.dirty_shards

    result = session.commit(downsample=False)

    stored, _ = ts_read(path, 0)
    np.testing.assert_array_equal(stored, expected)  # edited voxels changed, nothing else
    assert session.dirty_chunks == 0 and not result.conflicts
    assert result.unchanged == 1  # the chunk of the undone paint is not written
    assert result.shards_written == len(set(result.keys)) == dirty_groups - (not sharded)
    if sharded:
        assert dirty_groups == 2  # both shards touched; their other chunks were kept
    # The read-only pyramid shows the new labels (touched chunks were invalidated).
    np.testing.assert_array_equal(as_xyz(np.asarray(pyramid.data[0])), expected)


def test_edit_layer_lies_over_the_pyramid(seg: Callable[..., Path], viewer_model: Any) -> None:
    path = seg()
    pyramid = add_reader_layer(viewer_model, path)
    for scale_index, res in [(0, RES), (1, (8.0, 8.0, 40.0))]:
        s = edit_labels(viewer_model, pyramid, ((8, 24), (16, 32), (4, 8)), scale_index)
        assert tuple(s.layer.scale) == res[::-1]
        world = s.layer.data_to_world((0, 0, 0))
        np.testing.assert_allclose(world, np.array([4, 16, 8]) * res[::-1])
        # The same voxel in the pyramid's level of that scale lands at the same place.
        f = np.array(res[::-1]) / np.array(RES[::-1])
        np.testing.assert_allclose(pyramid.data_to_world(np.array([4, 16, 8]) * f), world)
        np.testing.assert_array_equal(
            np.asarray(s.layer.data), np.asarray(pyramid.data[scale_index][4:8, 16:32, 8:24])
        )
        s.close()


def test_commit_writes_each_touched_shard_once_and_nothing_else(
    seg: Callable[..., Path], viewer_model: Any
) -> None:
    path = seg(sharded=True)
    pyramid = add_reader_layer(viewer_model, path)
    session = edit_labels(viewer_model, pyramid, region=((0, 64), (0, 64), (0, 16)))
    layer = session.layer
    layer.brush_size = 3
    for z, y, x in [(1, 5, 5), (1, 5, 40), (5, 40, 5), (9, 40, 40), (13, 60, 60), (13, 20, 50)]:
        layer.paint((z, y, x), 20)
    store = session.volume._h.store
    positions = session.transaction.dirty_positions()[session.volume._h]
    shards = {store.group_of(p) for p in positions}
    assert len(positions) == 6 and len(shards) == session.dirty_shards == 2
    kv = session.volume.kvstore
    kv.stats.clear()
    kv.request_log = []
    session.commit(downsample=False)
    writes = [(op, key) for op, key, *_ in kv.request_log if op in ("write", "delete")]
    kv.request_log = None
    assert sorted(k for _, k in writes) == sorted(store.shard_key(s) for s in shards)
    assert kv.stats["write"] == 2 and kv.stats["delete"] == 0

    # With the coarser scale updated too: one more write per touched coarse shard.
    layer.paint((2, 5, 5), 21)
    kv.stats.clear()
    result = session.commit()
    coarse = result.downsampled[1]
    assert kv.stats["write"] == 1 + coarse.groups_written and coarse.groups_written == 1


def test_undo_back_to_original_leaves_storage_untouched(
    seg: Callable[..., Path], viewer_model: Any
) -> None:
    path = seg(sharded=True)
    pyramid = add_reader_layer(viewer_model, path)
    session = edit_labels(viewer_model, pyramid, region=((0, 64), (0, 64), (0, 16)))
    files = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    session.layer.paint((3, 10, 10), 30)
    session.layer.fill((10, 50, 50), 31)
    session.layer.undo()
    session.layer.undo()
    # The dirty state follows undo: chunks equal to what is stored are clean again.
    assert session.dirty_chunks == 0 and session.status() == "No uncommitted edits"
    kv = session.volume.kvstore
    kv.stats.clear()
    result = session.commit()
    assert kv.stats["write"] == kv.stats["delete"] == 0
    assert result.unchanged == 0 and session.dirty_chunks == 0
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == files


def test_failed_commit_keeps_every_edit_and_a_retry_stores_them(
    seg: Callable[..., Path], viewer_model: Any
) -> None:
    path = seg(sharded=True)
    original, _ = ts_read(path, 0)
    pyramid = add_reader_layer(viewer_model, path)
    session = edit_labels(viewer_model, pyramid, region=((0, 64), (0, 64), (0, 16)))
    oracle = twin(session)
    edit_everything((session.layer, oracle))
    expected = as_xyz(np.asarray(oracle.data))
    dirty = session.dirty_chunks
    kv = session.volume.kvstore

    kv.read_only = True
    with pytest.raises(CommitError, match="read-only.*nothing is lost") as info:
        session.commit()
    assert isinstance(info.value.cause, PermissionError)
    # Only the chunk whose paint was undone (identical to storage) is no longer dirty.
    assert session.dirty_chunks == dirty - 1 and session.last_error is info.value
    np.testing.assert_array_equal(as_xyz(np.asarray(session.layer.data)), expected)
    np.testing.assert_array_equal(ts_read(path, 0)[0], original)
    kv.read_only = False

    # A network error on one of the two shards: the other is stored, nothing is lost.
    real = kv._write_if
    failed: list[str] = []

    def flaky(key: str, data: bytes | None, generation: str) -> bool:
        if not failed:
            failed.append(key)
            raise OSError(f"connection reset writing {key}")
        return real(key, data, generation)

    kv._write_if = flaky
    with pytest.raises(CommitError, match="connection reset"):
        session.commit()
    kv._write_if = real
    assert 0 < session.dirty_chunks < dirty
    partly = ts_read(path, 0)[0]
    assert not np.array_equal(partly, original) and not np.array_equal(partly, expected)

    result = session.commit()  # the retry
    assert session.dirty_chunks == 0 and result.shards_written == 1
    np.testing.assert_array_equal(ts_read(path, 0)[0], expected)
    np.testing.assert_array_equal(ts_read(path, 1)[0], mode_xyz(expected, (2, 2, 1)))


def test_edits_made_while_a_commit_runs_are_kept(
    seg: Callable[..., Path], viewer_model: Any
) -> None:
    path = seg(sharded=False)
    pyramid = add_reader_layer(viewer_model, path)
    session = edit_labels(viewer_model, pyramid, region=((0, 64), (0, 64), (0, 16)))
    data = session.layer.data
    data[0, 0:4, 0:4] = 40  # chunk (0, 0, 0)
    store = session.volume._h.store
    real = store.commit_group
    calls: list[Any] = []

    def commit_group(group: Any, updates: Any) -> Any:
        if not calls:  # while the first chunk is being stored, the user paints on
            data[0, 8:12, 8:12] = 41  # the same chunk
            data[8, 40:44, 40:44] = 42  # another chunk
        calls.append(group)
        return real(group, updates)

    store.commit_group = commit_group
    session.commit(downsample=False)
    store.commit_group = real
    assert session.dirty_chunks == 2  # both later edits are still pending
    session.commit(downsample=False)
    stored, _ = ts_read(path, 0)
    assert stored[0, 0, 0, 0] == 40 and stored[8, 8, 0, 0] == 41 and stored[40, 40, 8, 0] == 42


def test_another_writer_changing_the_same_shard_is_merged_and_reported(
    seg: Callable[..., Path], viewer_model: Any
) -> None:
    import tensorstore as ts

    path = seg(sharded=True)
    original, _ = ts_read(path, 0)
    pyramid = add_reader_layer(viewer_model, path)
    session = edit_labels(viewer_model, pyramid, region=((0, 64), (0, 64), (0, 16)))
    store = session.volume._h.store
    session.layer.data[0, 0:4, 0:8] = 50  # z, y, x: chunk (0, 0, 0)
    (pos,) = session.transaction.dirty_positions()[session.volume._h]
    # Another chunk of the same shard, for the other writer.
    other = next(
        p
        for p in [(gx, gy, gz) for gx in range(4) for gy in range(4) for gz in range(4)]
        if p != pos and store.group_of(p) == store.group_of(pos)
    )
    ox, oy, oz = (16 * other[0], 16 * other[1], 4 * other[2])
    theirs = ts.open(ts_spec(path, 0), open=True).result()
    with ts.Transaction() as txn:
        t = theirs.with_transaction(txn)
        t[6:10, 0:2, 0, 0] = np.uint64(60)  # x, y, z: overlaps ours at x 6..7, y 0..1
        t[ox : ox + 2, oy : oy + 2, oz, 0] = np.uint64(61)

    result = session.commit(downsample=False)

    assert [(c.position, c.voxels) for c in result.conflicts] == [(pos, 4)]
    stored, _ = ts_read(path, 0)
    expected = original.copy()
    expected[6:10, 0:2, 0, 0] = 60
    expected[ox : ox + 2, oy : oy + 2, oz, 0] = 61
    expected[0:8, 0:4, 0, 0] = 50  # ours wins where both painted
    np.testing.assert_array_equal(stored, expected)


def test_coarser_scales_reflect_an_edit_after_commit(
    seg: Callable[..., Path], viewer_model: Any
) -> None:
    path = seg(sharded=True)
    pyramid = add_reader_layer(viewer_model, path)
    before = np.asarray(pyramid.data[1]).copy()  # warm the cache of the coarse level
    session = edit_labels(viewer_model, pyramid, region=((16, 48), (16, 48), (4, 8)))
    session.layer.brush_size = 9
    session.layer.paint((1, 10, 10), 70)
    session.layer.fill((2, 25, 25), 71)
    result = session.commit()
    assert 1 in result.downsampled
    s0, _ = ts_read(path, 0)
    s1, _ = ts_read(path, 1)
    np.testing.assert_array_equal(s1, mode_xyz(s0, (2, 2, 1)))
    assert np.any(s1 == 70) and np.any(s1 == 71)
    after = np.asarray(pyramid.data[1])
    np.testing.assert_array_equal(after, s1[..., 0].transpose(2, 1, 0))
    assert not np.array_equal(after, before)

    # Turned off: the coarse scale keeps its old labels.
    session.downsample = False
    session.layer.paint((1, 10, 10), 72)
    session.commit()
    np.testing.assert_array_equal(ts_read(path, 1)[0], s1)


def test_editing_a_coarser_scale_from_a_url(seg: Callable[..., Path], viewer_model: Any) -> None:
    path = seg(sharded=False)
    session = edit_labels(
        viewer_model, str(path), region=((0, 32), (0, 32), (0, 16)), scale_index=1
    )
    assert session.source_layer is None and session.layer.data.shape == (16, 32, 32)
    session.layer.paint((0, 3, 3), 80)
    session.commit()
    s1, _ = ts_read(path, 1)
    assert s1[3, 3, 0, 0] == 80


def test_region_and_source_are_checked(seg: Callable[..., Path], viewer_model: Any) -> None:
    path = seg()
    with pytest.raises(IndexError, match="region"):
        edit_labels(viewer_model, str(path), region=((0, 65), (0, 8), (0, 8)))
    with pytest.raises(ValueError, match="region must be"):
        edit_labels(viewer_model, str(path), region=((0, 8), (0, 8)))
    with pytest.raises(IndexError, match="scale_index"):
        edit_labels(viewer_model, str(path), region=((0, 8), (0, 8), (0, 8)), scale_index=5)
    image = viewer_model.add_image(np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match="not opened by napari-precomputed"):
        edit_labels(viewer_model, image)
    # A URL of a volume the viewer already shows uses that layer (and refreshes it).
    pyramid = add_reader_layer(viewer_model, path)
    session = edit_labels(viewer_model, str(path), region=((0, 8), (0, 8), (0, 8)))
    assert session.source_layer is pyramid


def test_commit_key_binding_and_discard(seg: Callable[..., Path], viewer_model: Any) -> None:
    from app_model.types import KeyBinding

    path = seg()
    pyramid = add_reader_layer(viewer_model, path)
    session = edit_labels(viewer_model, pyramid, region=((0, 64), (0, 64), (0, 16)))
    session.layer.data[3, 5, 5] = 93
    session.layer.keymap[KeyBinding.from_str(COMMIT_KEY)](session.layer)
    assert session.dirty_chunks == 0 and ts_read(path, 0)[0][5, 5, 3, 0] == 93
    session.layer.paint((3, 20, 20), 94)
    session.discard()
    assert session.dirty_chunks == 0 and not session.layer._undo_history
    assert not np.any(np.asarray(session.layer.data) == 94)
    assert ts_read(path, 0)[0][20, 20, 3, 0] != 94


def test_multichannel_volumes_are_refused(tmp_path: Path, viewer_model: Any) -> None:
    data = np.ones((16, 16, 4, 2), np.uint32)
    path = write_ts_volume(tmp_path / "two", [(data, (0, 0, 0), RES)], kind="segmentation")
    with pytest.raises(ValueError, match="single-channel"):
        edit_labels(viewer_model, str(path), region=((0, 8), (0, 8), (0, 4)))


def test_other_layers_of_the_volume_show_the_commit(
    seg: Callable[..., Path], viewer_model: Any
) -> None:
    import precomputed
    from napari_precomputed import read_volume

    path = seg(sharded=True)
    pyramid = add_reader_layer(viewer_model, path)
    layers = [pyramid]
    for name, options in [
        ("same context", {}),
        ("own context", {"context": precomputed.Context()}),
    ]:
        ((data, kwargs, _),) = read_volume(str(path), **options)
        layers.append(viewer_model.add_labels(data, **{**kwargs, "name": name}))
    assert layers[1].data[0].volume.handle is not pyramid.data[0].volume.handle
    # The layers of one context share cached chunks: the one with its own handles reads
    # first (before and after), so its handle, not the pyramid's, uses its shard indices.
    layers.reverse()
    before = [np.asarray(layer.data[0]).copy() for layer in layers]
    session = edit_labels(viewer_model, pyramid, region=((0, 64), (0, 64), (0, 16)))
    # Labels that compress worse than the blocks they replace: every chunk of both shards
    # moves inside its shard file, so stale shard indices would read the wrong bytes.
    expected = before[-1].copy()
    expected[0:4, 0:16, :] = np.random.default_rng(1).integers(1, 1000, (4, 16, 64))
    session.layer.data[0:4, 0:16, :] = expected[0:4, 0:16, :]
    session.commit(downsample=False)
    for layer in layers:
        np.testing.assert_array_equal(np.asarray(layer.data[0]), expected, err_msg=layer.name)

"""Segment properties in napari: the reader gives a segmentation's Labels layer its
properties as ``features`` (names on hover in the status bar), and a missing or broken
properties file leaves the volume openable with a warning naming the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from segment_cases import (
    BOX,
    NAMES,
    OFFSET,
    RESOLUTION,
    SPHERE,
    add_reader_layer,
    make_segmentation,
)

from napari_precomputed._reader import read_volume


@pytest.fixture
def warnings_shown(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """napari's warning notifications, recorded."""
    import napari.utils.notifications as notifications

    shown: list[str] = []
    monkeypatch.setattr(notifications, "show_warning", lambda message: shown.append(message))
    return shown


def test_reader_gives_labels_their_segment_properties_as_features(tmp_path: Path) -> None:
    path = make_segmentation(tmp_path / "seg", with_meshes=False)
    (_, kwargs, kind), = read_volume(str(path))  # fmt: skip
    assert kind == "labels"
    features = kwargs["features"]
    assert list(features) == ["index", "label", "tags", "volume_um3"]
    assert features["index"].dtype == np.uint64
    assert features["index"].tolist() == list(NAMES)
    assert features["label"].tolist() == list(NAMES.values())
    assert features["tags"].tolist() == ["excitatory soma", "inhibitory soma", "", "inhibitory"]
    found = kwargs["metadata"]["precomputed"]["segment_properties"]
    assert found == {
        "key": f"file://{path}/segment_properties/info",
        "count": 4,
        "label": "label",
        "tags": "tags",
    }
    json.dumps(kwargs["metadata"])  # still JSON-compatible


def _hover(viewer: Any, layer: Any, voxel_xyz: tuple[int, int, int]) -> str:
    """What napari's status bar shows with the mouse over an absolute voxel."""
    world = np.array(voxel_xyz[::-1], float) * np.array(RESOLUTION[::-1])
    viewer.layers.selection.active = layer
    viewer.dims.set_point(0, world[0])
    viewer.mouse_over_canvas = True
    viewer.cursor.position = tuple(world)
    viewer.update_status_from_cursor()
    status = viewer.status
    return status["coordinates"] if isinstance(status, dict) else str(status)


def test_hover_shows_the_segment_name_in_the_status_bar(tmp_path: Path) -> None:
    from napari.components import ViewerModel

    viewer = ViewerModel()
    layer = add_reader_layer(viewer, make_segmentation(tmp_path / "seg", with_meshes=False))
    assert layer.features.shape == (4, 4)
    sphere_centre = tuple(np.array([20, 30, 20]) + OFFSET)
    text = _hover(viewer, layer, sphere_centre)  # type: ignore[arg-type]
    assert f": {SPHERE}; label: Pyramidal cell, tags: excitatory soma, volume_um3: 1.5" in text
    box = tuple(np.array([50, 20, 20]) + OFFSET)
    assert "label: Box interneuron, tags: inhibitory soma" in _hover(viewer, layer, box)  # type: ignore[arg-type]
    assert f": {BOX}; " in _hover(viewer, layer, box)  # type: ignore[arg-type]
    # A segment without properties.
    cube = tuple(np.array([4 + 20 + 2, 54, 40]) + OFFSET)  # segment 5
    assert "5; [No Properties]" in _hover(viewer, layer, cube)  # type: ignore[arg-type]


@pytest.mark.parametrize("damage", ["missing", "invalid json", "not properties", "bad member"])
def test_missing_or_broken_properties_never_fail_the_open(
    tmp_path: Path, damage: str, warnings_shown: list[str]
) -> None:
    path = make_segmentation(tmp_path / "seg", with_meshes=False)
    props = path / "segment_properties" / "info"
    key = f"file://{props}"
    if damage == "missing":
        props.unlink()
    elif damage == "invalid json":
        props.write_text('{"@type": "neuroglancer_segment_properties", "inline": {')
    elif damage == "not properties":
        props.write_text(json.dumps({"@type": "neuroglancer_segment_properties",
                                     "inline": {"ids": ["1", "2"], "properties": [
                                         {"id": "label", "type": "label", "values": ["a"]}]}}))  # fmt: skip
    else:
        info = json.loads((path / "info").read_text())
        info["segment_properties"] = 42
        (path / "info").write_text(json.dumps(info))
        key = f'file://{path}/info member "segment_properties"'
    (data, kwargs, kind), = read_volume(str(path))  # fmt: skip
    assert kind == "labels" and "features" not in kwargs
    found = kwargs["metadata"]["precomputed"]["segment_properties"]
    assert found["key"] == key and found["error"]
    assert len(warnings_shown) == 1 and key in warnings_shown[0]
    assert np.asarray(data[0] if isinstance(data, list) else data).shape  # the data is there


def test_volumes_without_properties_have_no_features(tmp_path: Path) -> None:
    path = make_segmentation(tmp_path / "seg", with_meshes=False, with_properties=False)
    (_, kwargs, _), = read_volume(str(path))  # fmt: skip
    assert "features" not in kwargs
    assert kwargs["metadata"]["precomputed"]["segment_properties"] is None


def test_properties_are_read_with_one_request(tmp_path: Path) -> None:
    """The properties cost one small read on top of the volume's info: the volume info
    is not read again."""
    from precomputed.kvstore import FileKvStore

    path = make_segmentation(tmp_path / "seg", with_meshes=False)
    reads: list[str] = []
    original = FileKvStore.read

    def read(self: Any, key: str, *args: Any, **kwargs: Any) -> Any:
        reads.append(key)
        return original(self, key, *args, **kwargs)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(FileKvStore, "read", read)
        read_volume(str(path))
    assert len([k for k in reads if k.endswith("/seg/info")]) <= 1
    assert len([k for k in reads if "segment_properties" in k]) == 1

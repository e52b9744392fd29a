"""The Create Precomputed volume widget, driven by setting values (pytest-qt, no clicks)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from member_path_cases import CASES
from napari_precomputed.widgets import create as _create
from napari_precomputed.widgets.create import CreateVolumeWidget, field_for_error
from precomputed import create as C
from precomputed.downsample import downsample as downsample_array
from precomputed.errors import PrecomputedError
from precomputed.sharding import choose_sharding

ts = pytest.importorskip("tensorstore")

PLUGIN = "napari-precomputed"
VALID = {
    "size": "100, 80, 10",
    "voxel_offset": "3, 0, -2",
    "resolution": "4, 4, 40",
    "chunk_size": "32, 32, 8",
}


@pytest.fixture
def viewer_model() -> Any:
    """A viewer without Qt, with our plugin known to npe2 (reader, writers, widget).

    Deliberately not napari's ``_initialize_plugins()`` (the shared ``viewer_model``
    fixture): that also registers the plugin's commands in napari's app model, and a
    later ``make_napari_viewer`` teardown clears its cache, so the next call registers
    them twice and fails."""
    from napari.components import ViewerModel
    from npe2 import PluginManager

    PluginManager.instance().discover()
    return ViewerModel()


@pytest.fixture
def widget(qtbot, viewer_model) -> CreateVolumeWidget:
    w = CreateVolumeWidget(viewer_model)
    qtbot.addWidget(w.native)
    w.block_bytes = 4000  # many small blocks: progress and cancellation have room to act
    return w


def wait(qtbot, w: CreateVolumeWidget) -> None:
    qtbot.waitUntil(lambda: not w.busy, timeout=30000)


def ts_read(path: Path, scale_index: int = 0) -> np.ndarray:
    spec = {
        "driver": "neuroglancer_precomputed",
        "kvstore": {"driver": "file", "path": str(path) + "/"},
        "scale_index": scale_index,
    }
    return ts.open(spec, open=True).result().read().result()


def files(path: Path) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs
    )


def shown_message(w: CreateVolumeWidget, name: str) -> str:
    label = w.messages[name]
    return "" if label.native.isHidden() else str(label.value)


# -- preview and validation ------------------------------------------------------------------


def test_preview_is_the_info_the_driver_will_write(widget, tmp_path):
    widget.set_values(destination=str(tmp_path / "v"), data_type="uint16", num_channels=2, **VALID)
    assert widget.errors == {} and widget.can_create
    mm = {"type": "image", "data_type": "uint16", "num_channels": 2}
    sm = {
        "size": [100, 80, 10],
        "voxel_offset": [3, 0, -2],
        "resolution": [4.0, 4.0, 40.0],
        "chunk_size": [32, 32, 8],
        "encoding": "raw",
        "sharding": None,
    }
    assert widget.preview_info() == C.plan_scale(mm, sm).info
    assert "key: 4_4_40" in widget.key_label.value
    widget.set_values(
        key="full", encoding="jpeg", data_type="uint8", num_channels=1, jpeg_quality=60
    )
    scale = widget.preview_info()["scales"][0]
    assert scale["key"] == "full" and scale["jpeg_quality"] == 60 and scale["encoding"] == "jpeg"


@pytest.mark.parametrize(
    "values, field, text",
    [
        ({"encoding": "jpeg", "data_type": "uint16"}, "encoding", "only supported for uint8"),
        ({"encoding": "jpeg", "num_channels": 2}, "encoding", "1 or 3 channels"),
        ({"encoding": "png", "num_channels": 5}, "encoding", "1 to 4 channels, not 5"),
        (
            {"encoding": "compressed_segmentation", "data_type": "float32"},
            "encoding",
            "uint32 and uint64",
        ),
        (
            {"sharding": "explicit", "size": "4194304, 4194304, 4194304", "chunk_size": "1,1,1"},
            "sharding",
            "exceed 64 bits",
        ),
        (
            {"sharding": "automatic", "size": "4194304, 4194304, 4194304", "chunk_size": "1,1,1"},
            "sharding",
            "",
        ),
        ({"size": "", "voxel_offset": "1, 2, 3"}, "voxel_offset", 'without "size"'),
        ({"size": "", "voxel_offset": ""}, "size", "required: the volume's size in voxels"),
        ({"size": "10, 20"}, "size", "expected 3 values"),
        ({"resolution": "4, four, 40"}, "resolution", "'four' is not a number"),
        ({"chunk_size": "0, 8, 8"}, "chunk_size", "x must be a whole number of at least 1, not 0"),
        (
            {"sharding": "explicit", "minishard_bits": 4, "shard_bits": 62},
            "shard_bits",
            "must be a whole number from 0 to 60, not 62",
        ),
        ({"encoding": "compressed_segmentation", "block_size": "8, 0, 8"}, "block_size", ""),
    ],
)
def test_invalid_metadata_disables_create_and_shows_the_message(
    widget, tmp_path, values, field, text
):
    widget.set_values(destination=str(tmp_path / "v"), **VALID)
    assert widget.can_create
    widget.set_values(**values)
    assert not widget.can_create
    assert field in widget.errors, widget.errors
    assert text in widget.errors[field]
    assert text in shown_message(widget, field) and shown_message(widget, field)
    assert widget.preview_info() is None
    assert widget.create() is False


def test_fixing_the_field_enables_create_again(widget, tmp_path):
    widget.set_values(destination=str(tmp_path / "v"), encoding="jpeg", data_type="uint16", **VALID)
    assert not widget.can_create
    widget.set_values(data_type="uint8")
    assert widget.can_create and shown_message(widget, "encoding") == ""


def test_only_the_parameters_of_the_chosen_encoding_and_sharding_are_shown(widget):
    params = ("jpeg_quality", "png_level", "block_size")
    expected = {
        "raw": (),
        "jpeg": ("jpeg_quality",),
        "png": ("png_level",),
        "compressed_segmentation": ("block_size",),
    }
    for encoding, visible in expected.items():
        widget.set_values(encoding=encoding)
        assert {p for p in params if widget.is_shown(p)} == set(visible)
    bits = ("preshift_bits", "minishard_bits", "shard_bits", "hash", "data_encoding")
    widget.set_values(sharding="none")
    assert not any(widget.is_shown(b) for b in (*bits, "shard_mib"))
    widget.set_values(sharding="automatic")
    assert widget.is_shown("shard_mib") and not any(widget.is_shown(b) for b in bits)
    widget.set_values(sharding="explicit")
    assert all(widget.is_shown(b) for b in bits) and not widget.is_shown("shard_mib")


def test_automatic_sharding_targets_the_shard_size_and_explicit_starts_from_it(widget, tmp_path):
    widget.set_values(
        destination=str(tmp_path / "v"),
        size="1000, 1000, 200",
        chunk_size="64, 64, 16",
        sharding="automatic",
        shard_mib=16.0,
    )
    expected = choose_sharding(
        (1000, 1000, 200), (64, 64, 16), write_chunk_elements=16 * 2**20, encoding="raw"
    )
    assert widget.preview_info()["scales"][0]["sharding"] == expected.to_json()
    widget.fields["sharding"].value = "explicit"
    assert widget.field_value("preshift_bits") == expected.preshift_bits
    assert widget.field_value("shard_bits") == expected.shard_bits
    assert widget.preview_info()["scales"][0]["sharding"] == expected.to_json()


def test_messages_are_routed_to_the_field_they_name():
    def field(case: str) -> str:
        mm, sm, existing, _ = CASES[case]
        with pytest.raises(PrecomputedError) as e:
            C.plan_scale(mm, sm, existing)
        return field_for_error(e.value)

    # 'Error parsing object member "scale_metadata": Error parsing object member
    # "png_level": Expected integer ...'
    assert field("png_level") == "png_level"
    assert field("existing_key") == "key"  # 'Scale with key "s0" already exists'
    assert field("existing_resolution") == "resolution"  # 'Scale with resolution [...] ...'
    assert field_for_error(PrecomputedError("something else")) == "general"


# -- fill from a layer, create, open ---------------------------------------------------------


def test_labels_layer_fills_the_fields_and_create_writes_a_volume_tensorstore_reads(
    widget, qtbot, viewer_model, tmp_path
):
    labels = np.random.default_rng(0).integers(0, 5, (9, 30, 41)).astype(np.int32)
    layer = viewer_model.add_labels(
        labels, scale=(0.04, 0.008, 0.008), translate=(0.08, 0.024, 0.0), units="um", name="cells"
    )
    widget.fields["layer"].value = layer
    assert widget.field_value("type") == "segmentation"
    assert widget.field_value("data_type") == "uint32"
    assert widget.field_value("encoding") == "compressed_segmentation"
    assert widget.field_value("size") == "41, 30, 9"
    assert widget.field_value("resolution") == "8, 8, 40"  # um -> nm
    assert widget.field_value("voxel_offset") == "0, 3, 2"  # translate / scale
    assert "int32 labels are stored as uint32" in shown_message(widget, "layer")

    dest = tmp_path / "seg"
    widget.set_values(destination=str(dest), levels=2, factor="2, 2, 1")  # 2 scales
    expected_info = widget.preview_info()
    scale_metadata = widget._scale_metadata
    assert widget.create()
    wait(qtbot, widget)
    assert widget.last_error is None, widget.status.value
    info = json.loads((dest / "info").read_bytes())
    assert info["scales"][0] == expected_info["scales"][0] and len(info["scales"]) == 2
    assert "already holds a Precomputed volume" in widget.errors["destination"]  # now it does

    # The library, given the same metadata, writes the same info and data.
    spec_mm = {"type": "segmentation", "data_type": "uint32", "num_channels": 1}
    lib = tmp_path / "lib"
    C.create_volume(str(lib), spec_mm, scale_metadata, data=labels, axes="zyx", levels=1)
    assert (lib / "info").read_bytes() == (dest / "info").read_bytes()
    for i in range(2):
        np.testing.assert_array_equal(ts_read(dest, i), ts_read(lib, i))
    np.testing.assert_array_equal(ts_read(dest)[..., 0], labels.transpose(2, 1, 0))

    opened = viewer_model.layers[-1]
    assert opened is not layer and opened.metadata["precomputed"]["type"] == "segmentation"


def test_layer_dtypes_that_cannot_be_stored_say_so(widget, viewer_model):
    bad = viewer_model.add_image(np.zeros((4, 5, 6), np.int64), name="int64")
    widget.fields["layer"].value = bad
    assert not widget.can_create
    assert "int64 is not a Precomputed data type" in shown_message(widget, "layer")
    ok = viewer_model.add_image(np.zeros((4, 5, 6), np.float64), name="f64")
    widget.set_values(destination="/tmp/unused")
    widget.fields["layer"].value = ok
    assert widget.can_create and widget.field_value("data_type") == "float32"
    assert "precision is reduced" in shown_message(widget, "layer")
    widget.set_values(size="6, 5, 5")
    assert "to hold the layer's data" in widget.errors["size"]


# -- add scale ---------------------------------------------------------------------------------


@pytest.fixture
def image_volume(tmp_path) -> tuple[Path, np.ndarray]:
    data = np.random.default_rng(1).integers(0, 255, (37, 29, 6, 1), dtype=np.uint8)
    path = tmp_path / "img"
    mm = {"type": "image", "data_type": "uint8", "num_channels": 1}
    sm = {
        "size": [37, 29, 6],
        "voxel_offset": [5, 3, 2],
        "resolution": [4, 4, 30],
        "chunk_size": [8, 8, 2],
        "encoding": "raw",
    }
    C.create_volume(str(path), mm, sm, data=data)
    return path, data


def test_add_scale_proposes_cloudvolumes_next_scale_and_fills_it(widget, qtbot, image_volume):
    path, data = image_volume
    widget.set_values(destination=str(path), open_layer=False)
    widget.fields["mode"].value = "add"  # loads the info
    assert widget.field_value("source_scale") == 0
    assert not widget.fields["data_type"].enabled
    widget.fields["factor"].value = "2, 2, 1"
    assert widget.field_value("size") == "19, 15, 6"
    assert widget.field_value("voxel_offset") == "2, 1, 2"
    assert widget.field_value("resolution") == "8, 8, 30"
    assert "key: 8_8_30" in widget.key_label.value and widget.can_create

    assert widget.create()
    wait(qtbot, widget)
    assert widget.last_error is None, widget.status.value
    expected = downsample_array(data.transpose(3, 2, 1, 0), (2, 2, 1), "mean")
    np.testing.assert_array_equal(ts_read(path, 1), expected.transpose(3, 2, 1, 0))
    # The widget moved on: the next proposal downsamples the scale just added.
    assert widget.field_value("source_scale") == 1
    assert widget.field_value("size") == "10, 8, 6"
    assert "key: 16_16_30" in widget.key_label.value


def test_add_scale_geometry_that_does_not_fit_the_factor_is_rejected(widget, image_volume):
    path, _ = image_volume
    widget.set_values(destination=str(path))
    assert widget.load_existing()
    widget.set_values(size="20, 15, 6")
    assert not widget.can_create and "must be 19, 15, 6" in widget.errors["size"]
    widget.set_values(size="19, 15, 6", resolution="4, 4, 30", key="")
    assert "already exists" in widget.errors["key"]


def test_add_scale_needs_an_existing_volume(widget, tmp_path):
    widget.set_values(destination=str(tmp_path / "missing"))
    assert not widget.load_existing()
    widget.fields["mode"].value = "add"
    assert not widget.can_create and "Load info" in shown_message(widget, "destination")


# -- cancel and failure ------------------------------------------------------------------------


def test_cancel_removes_everything(widget, qtbot, viewer_model, tmp_path, monkeypatch):
    layer = viewer_model.add_image(
        np.random.default_rng(2).integers(0, 255, (8, 40, 40), dtype=np.uint8), name="em"
    )
    real = _create.create_volume

    def cancelling(*args: Any, progress: Any, **kw: Any) -> Any:
        def hook(done: int, total: int) -> None:
            progress(done, total)
            if done == 2:
                widget._cancel_event.set()  # the Cancel button, at a known moment

        return real(*args, progress=hook, **kw)

    monkeypatch.setattr(_create, "create_volume", cancelling)
    widget.fields["layer"].value = layer
    widget.set_values(destination=str(tmp_path / "em"), chunk_size="8, 8, 8", levels=3)
    assert widget.create()
    wait(qtbot, widget)
    assert isinstance(widget.last_error, C.Cancelled)
    assert "Cancelled" in widget.status.value
    assert not (tmp_path / "em").exists() or files(tmp_path / "em") == []
    assert len(viewer_model.layers) == 1 and widget.can_create


def test_failed_add_scale_leaves_the_volume_unchanged(widget, qtbot, image_volume, monkeypatch):
    path, _ = image_volume
    before, before_files = (path / "info").read_bytes(), files(path)

    def broken(*a: Any) -> Any:
        raise OSError("disk full")

    monkeypatch.setattr(C.blocks, "downsample_array", broken)
    widget.set_values(destination=str(path))
    assert widget.load_existing() and widget.create()
    wait(qtbot, widget)
    assert isinstance(widget.last_error, OSError) and "disk full" in widget.status.value
    assert (path / "info").read_bytes() == before and files(path) == before_files
    assert not widget.is_shown("delete_button")


def test_when_cleanup_fails_the_widget_offers_to_delete_the_incomplete_scale(
    widget, qtbot, image_volume, monkeypatch
):
    path, _ = image_volume
    before, before_files = (path / "info").read_bytes(), files(path)
    monkeypatch.setattr(C.blocks, "downsample_array", lambda *a: (_ for _ in ()).throw(OSError("io")))
    monkeypatch.setattr(C.recovery, "remove_scales", lambda *a: (_ for _ in ()).throw(OSError("gone")))
    widget.set_values(destination=str(path))
    assert widget.load_existing() and widget.create()
    wait(qtbot, widget)
    assert isinstance(widget.last_error, C.IncompleteVolumeError)
    assert widget.is_shown("delete_button")
    assert (path / "INCOMPLETE").exists()
    monkeypatch.undo()
    assert widget.delete_incomplete()
    assert (path / "info").read_bytes() == before and files(path) == before_files
    assert not widget.is_shown("delete_button")


def test_the_widget_is_contributed_by_the_manifest(viewer_model):
    from npe2 import PluginManager

    manifest = PluginManager.instance().get_manifest(PLUGIN)
    by_name = {w.display_name: w for w in manifest.contributions.widgets}
    contribution = by_name["Create volume"]
    command = PluginManager.instance().get_command(contribution.command)
    assert command.python_name == "napari_precomputed.widgets.create:CreateVolumeWidget"


@pytest.mark.qt
@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display (Xvfb) for OpenGL")
def test_docked_from_the_plugins_menu_it_creates_and_opens_a_layer(
    make_napari_viewer, qtbot, tmp_path
):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Create volume")
    assert isinstance(widget, CreateVolumeWidget)
    viewer.add_labels(np.arange(6 * 20 * 30).reshape(6, 20, 30) % 5, name="cells")
    combo = widget.fields["layer"]
    combo.value = combo.get_choice("cells")  # the choices followed the layer list
    widget.set_values(destination=str(tmp_path / "cells"), levels=2)
    assert widget.create()
    wait(qtbot, widget)
    assert widget.last_error is None, widget.status.value
    assert [layer.name for layer in viewer.layers] == ["cells", "cells [1]"]
    assert viewer.layers[-1].multiscale


def test_independent_problems_are_all_shown_at_once(widget, tmp_path):
    widget.set_values(destination=str(tmp_path / "v"), **VALID)
    widget.set_values(
        voxel_offset="1, 2",
        encoding="jpeg",
        data_type="uint16",
        sharding="explicit",
        minishard_bits=3,
        shard_bits=63,
    )
    assert set(widget.errors) == {"voxel_offset", "encoding", "shard_bits"}
    assert widget.errors["shard_bits"] == "must be a whole number from 0 to 61, not 63"
    assert not widget.can_create

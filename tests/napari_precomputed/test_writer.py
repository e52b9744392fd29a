"""The Precomputed writer: layer.save(path, plugin=...) and File > Save Layers."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from napari.layers import Image, Labels

from napari_precomputed._writer import layer_volume_spec
from precomputed import create as C
from precomputed.errors import AlreadyExistsError

ts = pytest.importorskip("tensorstore")

PLUGIN = "napari-precomputed"


def ts_read(path: Path, scale_index: int = 0) -> np.ndarray:
    spec = {
        "driver": "neuroglancer_precomputed",
        "kvstore": {"driver": "file", "path": str(path) + "/"},
        "scale_index": scale_index,
    }
    return ts.open(spec, open=True).result().read().result()


def ts_spec(path: Path) -> dict:
    return {"driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": f"{path}/"}}


def info(path: Path) -> dict:
    return json.loads((path / "info").read_bytes())


@pytest.fixture
def viewer_model():
    """A viewer without Qt; npe2 knows our writers (see test_create_widget.py for why
    this is not the shared fixture)."""
    from napari.components import ViewerModel

    return ViewerModel()


@pytest.fixture(autouse=True)
def _plugins():
    from npe2 import PluginManager

    PluginManager.instance().discover()


def test_labels_become_a_compressed_segmentation_placed_by_scale_and_translate(tmp_path):
    data = (np.arange(5 * 30 * 41).reshape(5, 30, 41) % 7).astype(np.int32)
    layer = Labels(data, scale=(40, 8, 8), translate=(80, 16, 12), name="seg")
    path = tmp_path / "seg"
    assert layer.save(str(path), plugin=PLUGIN) == [str(path)]
    meta = info(path)
    assert (meta["type"], meta["data_type"], meta["num_channels"]) == ("segmentation", "uint32", 1)
    (scale,) = meta["scales"]
    assert scale["encoding"] == "compressed_segmentation"
    assert scale["size"] == [41, 30, 5]
    assert scale["resolution"] == [8.0, 8.0, 40.0]
    assert scale["voxel_offset"] == [2, 2, 2]  # translate / scale, rounded (12/8 -> 2)
    np.testing.assert_array_equal(ts_read(path)[..., 0], data.transpose(2, 1, 0))


def test_images_keep_their_type_and_length_units_become_nm(tmp_path):
    data = np.random.default_rng(0).normal(size=(3, 20, 30))  # float64
    layer = Image(data, scale=(0.05, 0.004, 0.004), units=("um", "um", "um"))
    path = tmp_path / "img"
    layer.save(str(path), plugin=PLUGIN)
    meta = info(path)
    assert (meta["type"], meta["data_type"]) == ("image", "float32")
    assert meta["scales"][0]["resolution"] == [4.0, 4.0, 50.0]
    assert meta["scales"][0]["encoding"] == "raw"
    np.testing.assert_array_equal(ts_read(path)[..., 0], data.astype(np.float32).transpose(2, 1, 0))


@pytest.mark.parametrize(
    "make, size, channels",
    [
        (lambda: Image(np.zeros((20, 30, 3), np.uint8), rgb=True), [30, 20, 1], 3),
        (lambda: Image(np.zeros((2, 4, 20, 30), np.uint16)), [30, 20, 4], 2),
        (lambda: Image(np.zeros((20, 30), np.int16)), [30, 20, 1], 1),
        (lambda: Labels(np.zeros((20, 30), np.uint64)), [30, 20, 1], 1),
    ],
)
def test_rgb_channel_and_2d_layers(tmp_path, make, size, channels):
    layer = make()
    data = np.random.default_rng(1).integers(0, 200, layer.data.shape).astype(layer.data.dtype)
    layer.data = data
    path = tmp_path / "v"
    layer.save(str(path), plugin=PLUGIN)
    meta = info(path)
    assert meta["scales"][0]["size"] == size and meta["num_channels"] == channels
    got = ts_read(path)
    if getattr(layer, "rgb", False):
        np.testing.assert_array_equal(got[:, :, 0, :], data.transpose(1, 0, 2))
    elif data.ndim == 4:
        np.testing.assert_array_equal(got, data.transpose(3, 2, 1, 0))
    else:
        np.testing.assert_array_equal(got[:, :, 0, 0], data.T)


def test_a_multiscale_layer_is_saved_with_its_pyramid(tmp_path, viewer_model):
    src = tmp_path / "src"
    data = np.random.default_rng(2).integers(0, 255, (40, 36, 8, 1), dtype=np.uint8)
    mm = {"type": "image", "data_type": "uint8", "num_channels": 1}
    sm = {"size": [40, 36, 8], "resolution": [4, 4, 40], "chunk_size": [16, 16, 4]}
    C.create_volume(str(src), mm, sm, data=data, levels=[(2, 2, 1), (2, 2, 2)])
    (layer,) = viewer_model.open(str(src), plugin=PLUGIN)
    assert layer.multiscale
    out = tmp_path / "copy"
    layer.save(str(out), plugin=PLUGIN)
    keys = [s["key"] for s in info(out)["scales"]]
    assert keys == [s["key"] for s in info(src)["scales"]] == ["4_4_40", "8_8_40", "16_16_80"]
    for i in range(3):
        np.testing.assert_array_equal(ts_read(out, i), ts_read(src, i))


def test_save_layers_routes_to_the_precomputed_writer(tmp_path, viewer_model):
    from napari.plugins.io import save_layers

    layer = viewer_model.add_image(np.ones((4, 5, 6), np.uint8), name="ones")
    path = tmp_path / "ones"
    assert save_layers(str(path), [layer], plugin=PLUGIN) == [str(path)]
    assert (ts_read(path) == 1).all()
    # A volume is a directory: a path with a file extension is not ours to write.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert save_layers(str(tmp_path / "ones.tif.d"), [layer], plugin=PLUGIN) == []
    assert any("not a valid writer" in str(w.message) for w in caught)


def test_an_existing_volume_is_never_overwritten(tmp_path):
    layer = Image(np.ones((4, 5, 6), np.uint8))
    path = tmp_path / "v"
    layer.save(str(path), plugin=PLUGIN)
    before = (path / "info").read_bytes()
    with pytest.raises(AlreadyExistsError):
        Image(np.zeros((2, 2, 2), np.uint16)).save(str(path), plugin=PLUGIN)
    assert (path / "info").read_bytes() == before


def test_layers_that_cannot_be_volumes_get_a_clear_error():
    with pytest.raises(ValueError, match="4 dimensions"):
        layer_volume_spec(np.zeros((2, 3, 4, 5), np.uint32), {}, "labels")
    with pytest.raises(ValueError, match="int64 is not a Precomputed data type"):
        layer_volume_spec(np.zeros((3, 4, 5), np.int64), {}, "image")
    with pytest.raises(ValueError, match="only Image and Labels"):
        layer_volume_spec(np.zeros((3, 4)), {}, "points")


def test_an_opened_pyramid_is_saved_with_the_volumes_own_geometry(
    tmp_path, viewer_model, pyramid_volume
):
    # The reader pads every level to whole pyramid steps (offset 5 -> 4, size 37 -> 40);
    # saving must keep the volume's voxel_offset and size, and its voxels.
    src = pyramid_volume("odd")
    (layer,) = viewer_model.open(str(src), plugin=PLUGIN)
    assert layer.multiscale and layer.data[0].shape != (6, 29, 37)  # padded presentation
    out = tmp_path / "saved"
    layer.save(str(out), plugin=PLUGIN)
    scales = info(out)["scales"]
    assert len(scales) == len(info(src)["scales"]) == 3
    assert scales[0]["voxel_offset"] == [5, 3, 2] and scales[0]["size"] == [37, 29, 6]
    got, want = ts.open(ts_spec(out), open=True).result(), ts.open(ts_spec(src), open=True).result()
    assert tuple(got.domain.inclusive_min) == tuple(want.domain.inclusive_min)
    assert tuple(got.domain.exclusive_max) == tuple(want.domain.exclusive_max)
    assert tuple(got.domain.inclusive_min[:3]) == (5, 3, 2)
    np.testing.assert_array_equal(got.read().result(), want.read().result())
    assert scales[0]["resolution"] == info(src)["scales"][0]["resolution"]

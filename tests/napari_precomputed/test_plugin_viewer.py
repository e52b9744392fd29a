"""The plugin inside napari's ViewerModel (no Qt): opening, slicing, laziness, remote."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest
from napari.layers import Image, Labels, Layer
from napari_volumes import coarse_geometry, field_volume, ts_read

import precomputed
from napari_precomputed import LevelArray, read_volume

PLUGIN = "napari-precomputed"


def window_plane(path: Path, layer: Layer, level: int, z: int) -> np.ndarray:
    """TensorStore's read of the scale behind ``layer.data[level]``, placed in the
    layer's presented window (napari's data coordinates at that level), plane ``z``."""
    lv = layer.metadata["precomputed"]["levels"][level]
    arr, offset = ts_read(path, lv["scale_index"])
    origin = lv["origin"]
    shape = layer.data[level].shape[::-1]  # x, y, z
    out = np.zeros((shape[1], shape[0]), arr.dtype)  # y, x
    za = origin[2] + z
    if not offset[2] <= za < offset[2] + arr.shape[2]:
        return out
    lo = [o - w for o, w in zip(offset, origin, strict=True)]
    a = [max(0, v) for v in lo]
    b = [min(e, v + n) for v, n, e in zip(lo, arr.shape[:3], shape, strict=True)]
    out[a[1] : b[1], a[0] : b[0]] = arr[
        a[0] - lo[0] : b[0] - lo[0], a[1] - lo[1] : b[1] - lo[1], za - offset[2], 0
    ].T
    return out


@pytest.fixture
def image_and_segmentation(pyramid_volume, make_volume) -> tuple[Path, Path]:
    """An image pyramid and its segmentation (sharded) on the same odd geometry."""
    img = pyramid_volume("img")
    o0, n0, res = (5, 3, 2), (37, 29, 6), (4.0, 4.0, 30.0)
    levels = [((field_volume(o0, n0) // 1000).astype(np.uint64), o0, res)]
    for f in [(2, 2, 1), (4, 4, 2)]:
        o, n = coarse_geometry(o0, n0, f)
        vals = (field_volume(o, n, f) // 1000).astype(np.uint64)
        levels.append((vals, o, tuple(r * k for r, k in zip(res, f, strict=True))))
    seg = make_volume(
        "seg", levels, kind="segmentation", encoding="compressed_segmentation", sharded=True
    )
    return img, seg


def test_open_and_move_the_z_slider_shows_what_tensorstore_reads(
    viewer_model, image_and_segmentation
):
    img, seg = image_and_segmentation
    layers = viewer_model.open(str(img), plugin=PLUGIN) + viewer_model.open(str(seg), plugin=PLUGIN)
    image, labels = layers
    assert isinstance(image, Image) and isinstance(labels, Labels)
    assert image.multiscale and labels.multiscale
    np.testing.assert_array_equal(image.downsample_factors, [[1, 1, 1], [1, 2, 2], [2, 4, 4]])
    # Image and segmentation share one placement, so they overlay voxel for voxel.
    np.testing.assert_array_equal(image.translate, labels.translate)
    np.testing.assert_array_equal(image.scale, labels.scale)
    assert tuple(viewer_model.dims.axis_labels) == ("z", "y", "x")
    for layer, path in [(image, img), (labels, seg)]:
        meta = layer.metadata["precomputed"]
        pz = meta["origin"][2]
        for z_abs in (2, 5, 7):
            viewer_model.dims.set_point(0, z_abs * 30.0)
            for level, fz in [(0, 1), (2, 2)]:
                layer.locked_data_level = level
                shown = np.asarray(layer._slice.image.raw)
                # napari centres coarse voxel j on level-0 index j * f and rounds.
                z = int(np.clip(np.round((z_abs - pz) / fz), 0, layer.data[level].shape[0] - 1))
                expect = window_plane(path, layer, level, z)
                np.testing.assert_array_equal(shown, expect, err_msg=f"{path.name} z={z_abs}")
        # napari's own world -> data mapping agrees with the volume's voxel coordinates.
        layer.locked_data_level = 0
        viewer_model.dims.set_point(0, 4 * 30.0)
        x, y = 20, 17
        value = layer.get_value((4 * 30.0, y * 4.0, x * 4.0), world=True)
        expected = field_volume((x, y, 4), (1, 1, 1))[0, 0, 0, 0]
        if layer is labels:
            expected //= 1000
        assert value == (0, expected)


def test_sample_data_contribution_opens_image_and_segmentation(viewer_model, sample_paths):
    layers = viewer_model.open_sample(PLUGIN, "em")
    assert [type(layer) for layer in layers] == [Image, Labels]
    image, labels = layers
    assert image.multiscale and labels.multiscale and len(image.data) == 3
    assert image.metadata["precomputed"]["url"] == sample_paths[0]
    assert labels.metadata["precomputed"]["url"] == sample_paths[1]
    assert tuple(image.scale) == tuple(labels.scale) == (40.0, 8.0, 8.0)
    seg = precomputed.open(sample_paths[1])
    assert seg.scale.sharding is not None and seg.scale.encoding == "compressed_segmentation"
    assert np.asarray(image._slice.image.raw).std() > 10  # EM-like texture, not blank
    assert len(np.unique(np.asarray(labels._slice.image.raw))) > 5


_CHUNK = re.compile(r"(\w+)/(\d+)-(\d+)_(\d+)-(\d+)_(\d+)-(\d+)$")


def _chunk_reads(log) -> set[tuple[str, tuple[int, int, int]]]:
    """(scale key, chunk start x, y, z) of every chunk request in a kvstore request log."""
    out = set()
    for _, key, _, _ in log:
        m = _CHUNK.search(key)
        if m:
            out.add((m[1], (int(m[2]), int(m[4]), int(m[6]))))
    return out


def _plane_chunks(key, x0, x1, y0, y1, z, chunk=64) -> set:
    return {
        (key, (x, y, z // chunk * chunk))
        for x in range(x0 // chunk * chunk, x1, chunk)
        for y in range(y0 // chunk * chunk, y1, chunk)
    }


def test_large_volume_fetches_only_the_chunks_of_the_displayed_plane(viewer_model, tmp_path):
    import tensorstore as ts

    path = tmp_path / "big"
    scales = [(4096, 8), (2048, 16), (1024, 32), (512, 64)]  # xy size, xy resolution
    for i, (n, r) in enumerate(scales):
        store = ts.open(
            {
                "driver": "neuroglancer_precomputed",
                "kvstore": {"driver": "file", "path": str(path) + "/"},
                "multiscale_metadata": {"type": "image", "data_type": "uint8", "num_channels": 1},
                "scale_metadata": {
                    "size": [n, n, 1024],
                    "resolution": [r, r, 40],
                    "encoding": "raw",
                    "chunk_size": [64, 64, 64],
                },
            },
            create=True,
            open=i > 0,
        ).result()
        f = 4096 // n  # one bright 128x128x64 block at the same place in every scale
        store[2048 // f : 2176 // f, 2048 // f : 2176 // f, 512:576, :] = 200
    coarsest = "64_64_40"

    # Opening reads the info only: dtype, shape and placement need no chunk.
    kv = precomputed.open_kvstore({"driver": "file", "path": "/"})
    kv.request_log = []
    [(data, kwargs, kind)] = read_volume(str(path), kvstore=kv)
    for level in data:
        level.dtype, level.shape, level.ndim, level.size, level.chunks  # noqa: B018
        level[3, 100:200][5:]  # noqa: B018 - a view
    assert [level.shape for level in data] == [(1024, n, n) for n, _ in scales]
    assert _chunk_reads(kv.request_log) == set()
    assert all(key.endswith("/info") for _, key, _, _ in kv.request_log)
    # A new layer shows its first plane (z = 0) at the coarsest level, and nothing else.
    layer = Layer.create(data, kwargs, kind)
    assert _chunk_reads(kv.request_log) == _plane_chunks(coarsest, 0, 512, 0, 512, 0)

    viewer_model.add_layer(layer)
    viewer_model.dims.set_point(0, 530 * 40.0)

    # Zoomed in on a 300x300-voxel region: napari picks the finest level and asks only
    # for the chunks under the view (plus its thumbnail, the coarsest level's plane).
    kv.request_log = []
    layer._update_draw(
        scale_factor=1.0,
        corner_pixels_displayed=np.array([[2000 * 8.0, 2000 * 8.0], [2300 * 8.0, 2300 * 8.0]]),
        shape_threshold=(600, 800),
    )
    assert layer.data_level == 0
    (_, y0, x0), (_, y1, x1) = layer.corner_pixels
    expected = _plane_chunks("8_8_40", x0, x1 + 1, y0, y1 + 1, 530)
    assert len(expected) <= 36
    reads = _chunk_reads(kv.request_log)
    assert {r for r in reads if r[0] == "8_8_40"} == expected
    # The rest is the thumbnail (already cached chunks are not read again).
    assert reads - expected <= _plane_chunks(coarsest, 0, 512, 0, 512, 530)
    shown = np.asarray(layer._slice.image.raw)
    assert shown.shape == (y1 - y0 + 1, x1 - x0 + 1)
    assert (shown == 200).sum() == 128 * 128 and shown.max() == 200

    # Zoomed out: the coarsest level; a new z-plane reads that level's plane only.
    layer._update_draw(
        scale_factor=64.0,
        corner_pixels_displayed=np.array([[0.0, 0.0], [4096 * 8.0, 4096 * 8.0]]),
        shape_threshold=(300, 400),
    )
    assert layer.data_level == 3
    kv.request_log = []
    viewer_model.dims.set_point(0, 700 * 40.0)
    assert _chunk_reads(kv.request_log) == _plane_chunks(coarsest, 0, 512, 0, 512, 700)
    viewer_model.dims.set_point(0, 540 * 40.0)
    assert (np.asarray(layer._slice.image.raw) == 200).sum() == 16 * 16


def test_async_slicing_reads_on_napari_worker_thread(
    viewer_model, image_and_segmentation, monkeypatch
):
    """With NAPARI_ASYNC=1 napari slices on its own thread; the result is the same."""
    img, seg = image_and_segmentation
    layers = viewer_model.open(str(img), plugin=PLUGIN) + viewer_model.open(str(seg), plugin=PLUGIN)
    for layer in layers:
        layer.locked_data_level = 0
    viewer_model.dims.set_point(0, 5 * 30.0)
    expected = [np.asarray(layer._slice.image.raw).copy() for layer in layers]
    viewer_model.dims.set_point(0, 3 * 30.0)
    threads = set()
    read = LevelArray.read

    def spy(self):
        threads.add(threading.current_thread().name)
        return read(self)

    monkeypatch.setattr(LevelArray, "read", spy)
    slicer = viewer_model._layer_slicer
    slicer._force_sync = False
    try:
        viewer_model.dims.set_point(0, 5 * 30.0)
        task = slicer.submit(layers=layers, dims=viewer_model.dims, force=True)
        assert task is not None
        responses = task.result(timeout=30)
    finally:
        slicer._force_sync = True
    assert threads and threading.main_thread().name not in threads
    got = {ref(): response for ref, response in responses.items()}
    for layer, exp in zip(layers, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(got[layer].image.raw), exp)


def test_remote_volume_opens_through_its_url(viewer_model, http_server, pyramid_volume):
    path = pyramid_volume("remote")
    http_server.root = path.parent
    url = f"{http_server.url}/remote"
    [layer] = viewer_model.open(url, plugin=PLUGIN)
    assert layer.name == "remote" and layer.metadata["precomputed"]["url"] == url
    assert any(p.endswith("/remote/info") for _, p, _ in http_server.requests)
    layer.locked_data_level = 0
    viewer_model.dims.set_point(0, 4 * 30.0)
    expect = window_plane(path, layer, 0, 4 - layer.metadata["precomputed"]["origin"][2])
    np.testing.assert_array_equal(np.asarray(layer._slice.image.raw), expect)
    assert any("/remote/4_4_30/" in p for _, p, _ in http_server.requests)
    # Several napari slicing threads reading over HTTP at once.
    layer.data[0].volume.context.cache.clear()
    http_server.latency = 0.002
    planes: dict[int, np.ndarray] = {}

    def read(z: int) -> None:
        planes[z] = np.asarray(layer.data[0][z])

    threads = [threading.Thread(target=read, args=(z,)) for z in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    full = np.asarray(layer.data[0])
    for z, plane in planes.items():
        np.testing.assert_array_equal(plane, full[z])
    # The same URL with Neuroglancer's prefix, and a URL that is not a volume.
    from napari_precomputed import get_reader

    assert get_reader(f"precomputed://{url}") is not None
    missing = get_reader(f"{http_server.url}/nothing-here")  # a volume URL: says why
    assert missing is not None
    with pytest.raises(FileNotFoundError, match="nothing-here/info does not exist"):
        missing(f"{http_server.url}/nothing-here")

"""The reader on its own: probe and LayerData, no viewer."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
from napari_volumes import coarse_geometry, field_volume, ts_read

import precomputed
from napari_precomputed import LevelArray, get_reader, read_volume


def read_layers(path: Path | str) -> list:
    reader = get_reader(str(path))
    assert reader is not None, f"{path} not recognised"
    return reader(str(path))


def presented(arr: np.ndarray, offset, origin, extent) -> np.ndarray:
    """A scale's (x, y, z, c) data placed in the presented window, as napari (c,)z, y, x."""
    out = np.zeros((*reversed(extent), arr.shape[3]), arr.dtype)
    src = arr.transpose(2, 1, 0, 3)  # z, y, x, c
    lo = [o - w for o, w in zip(offset, origin, strict=True)]  # x, y, z in the window
    a = [max(0, v) for v in lo]
    b = [min(e, v + n) for v, n, e in zip(lo, arr.shape[:3], extent, strict=True)]
    out[a[2] : b[2], a[1] : b[1], a[0] : b[0]] = src[
        a[2] - lo[2] : b[2] - lo[2], a[1] - lo[1] : b[1] - lo[1], a[0] - lo[0] : b[0] - lo[0]
    ]
    return out


# -- images and segmentations -----------------------------------------------------------------


def test_image_pyramid_is_one_lazy_multiscale_image_layer(pyramid_volume):
    path = pyramid_volume("img")
    [(data, kw, kind)] = read_layers(path)
    assert kind == "image"
    assert kw["multiscale"] is True and kw["rgb"] is False
    assert kw["name"] == "img"
    assert all(isinstance(level, LevelArray) for level in data)
    # Shapes are exact multiples, so napari's inferred factors are the real ones.
    assert [level.shape for level in data] == [(6, 32, 40), (6, 16, 20), (3, 8, 10)]
    assert kw["scale"] == (30.0, 4.0, 4.0)
    # Window starts at P = floor(voxel_offset / lcm(factors)) * lcm = (4, 0, 2) (x, y, z).
    assert kw["translate"] == (60.0, 0.0, 16.0)
    assert kw["axis_labels"] == ("z", "y", "x") and kw["units"] == ("nm", "nm", "nm")
    meta = kw["metadata"]["precomputed"]
    assert meta["url"] == str(path) and meta["type"] == "image"
    assert meta["origin"] == [4, 0, 2]
    assert [lv["factor"] for lv in meta["levels"]] == [[1, 1, 1], [2, 2, 1], [4, 4, 2]]
    assert meta["spec"]["driver"] == "neuroglancer_precomputed"


def test_every_level_lines_up_with_the_finest(pyramid_volume):
    """Coarse sizes are rounded up and offsets floored, yet each presented voxel of level k
    holds the value of the level-0 voxel napari draws it over (index * factor)."""
    [(data, kw, _)] = read_layers(pyramid_volume())
    base = np.asarray(data[0])
    o0, n0 = np.array([5, 3, 2]), np.array([37, 29, 6])
    p = np.array(kw["metadata"]["precomputed"]["origin"])
    # Level 0 itself: the field of the absolute voxel, zero in the padding.
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in base.shape), indexing="ij")
    ax, ay, az = xx + p[0], yy + p[1], zz + p[2]
    inside = (
        (ax >= o0[0]) & (ax < o0[0] + n0[0]) & (ay >= o0[1]) & (ay < o0[1] + n0[1])
        & (az >= o0[2]) & (az < o0[2] + n0[2])
    )  # fmt: skip
    expect = field_volume(p, base.shape[::-1])[..., 0].transpose(2, 1, 0)
    np.testing.assert_array_equal(base, np.where(inside, expect, 0))
    for k, f in [(1, (2, 2, 1)), (2, (4, 4, 2))]:
        level = np.asarray(data[k])
        fz, fy, fx = f[2], f[1], f[0]
        assert tuple(s * q for s, q in zip(level.shape, (fz, fy, fx), strict=True)) == base.shape
        at_corner = base[::fz, ::fy, ::fx]  # level-0 voxel under each coarse voxel
        both = (at_corner != 0) & (level != 0)
        assert both.sum() > 0.5 * level.size
        np.testing.assert_array_equal(level[both], at_corner[both])
        # And the coarse voxels napari shows exist exactly where the scale has voxels.
        o, n = coarse_geometry(o0, n0, f)
        origin = np.array(kw["metadata"]["precomputed"]["levels"][k]["origin"])
        assert (level != 0).sum() == np.prod(
            [
                min(a + m, w + e) - max(a, w)
                for a, m, w, e in zip(o, n, origin, level.shape[::-1], strict=True)
            ]
        )


@pytest.mark.parametrize("sharded", [False, True], ids=["unsharded", "sharded"])
def test_segmentation_is_a_labels_layer_matching_tensorstore(make_volume, sharded):
    rng = np.random.default_rng(0)
    base = rng.integers(1, 5, (48, 40, 8, 1)).astype(np.uint64) * np.uint64(2**40)
    coarse = base[::2, ::2]
    path = make_volume(
        "seg",
        [(base, (16, 8, 4), (8, 8, 40)), (coarse, (8, 4, 4), (16, 16, 40))],
        kind="segmentation",
        encoding="compressed_segmentation",
        sharded=sharded,
    )
    [(data, kw, kind)] = read_layers(path)
    assert kind == "labels"
    assert "contrast_limits" not in kw and "rgb" not in kw
    assert kw["translate"] == (160.0, 64.0, 128.0)  # offsets already aligned: no padding
    for k, level in enumerate(data):
        assert level.dtype == np.uint64
        arr, offset = ts_read(path, k)
        np.testing.assert_array_equal(
            np.asarray(level), presented(arr, offset, offset, arr.shape[:3])[..., 0]
        )


def test_multichannel_image_gets_a_channel_axis_and_sampled_contrast(make_volume):
    rng = np.random.default_rng(1)
    base = rng.integers(1000, 3000, (32, 32, 4, 2)).astype(np.uint16)
    path = make_volume(
        "two",
        [(base, (0, 0, 0), (4, 4, 4)), (base[::2, ::2, ::2], (0, 0, 0), (8, 8, 8))],
        chunk=(8, 8, 2),
    )
    [(data, kw, kind)] = read_layers(path)
    assert kind == "image" and kw["rgb"] is False
    assert [level.shape for level in data] == [(2, 4, 32, 32), (2, 2, 16, 16)]
    assert kw["axis_labels"] == ("c", "z", "y", "x")
    assert kw["scale"] == (1.0, 4.0, 4.0, 4.0) and kw["translate"] == (0.0, 0.0, 0.0, 0.0)
    assert kw["units"][0] == "pixel"
    lo, hi = kw["contrast_limits"]
    assert 1000 <= lo < hi <= 3000  # from the data, not uint16's 0..65535
    arr, _ = ts_read(path, 0)
    np.testing.assert_array_equal(np.asarray(data[0]), arr.transpose(3, 2, 1, 0))
    np.testing.assert_array_equal(np.asarray(data[0][1, 2]), arr[:, :, 2, 1].T)


def test_contrast_sample_reads_only_the_coarsest_level(make_volume):
    base = np.full((64, 64, 8, 1), 500, np.uint16)
    path = make_volume(
        "flat", [(base, (0, 0, 0), (1, 1, 1)), (base[::4, ::4], (0, 0, 0), (4, 4, 1))]
    )
    import precomputed

    kv = precomputed.open_kvstore({"driver": "file", "path": "/"})
    kv.request_log = []
    [(_, kw, _)] = read_volume(str(path), kvstore=kv)
    keys = [k for _, k, _, _ in kv.request_log if not k.endswith("/info")]
    assert keys and all("/4_4_1/" in k for k in keys)
    lo, hi = kw["contrast_limits"]
    assert lo < 500 <= hi or lo <= 500 < hi


def test_three_uint8_channels_are_rgb(make_volume):
    base = np.zeros((16, 16, 2, 3), np.uint8)
    base[..., 0] = 255
    path = make_volume("rgb", [(base, (0, 0, 0), (1, 1, 1))], chunk=(8, 8, 2))
    [(data, kw, kind)] = read_layers(path)
    assert kind == "image" and kw["rgb"] is True
    assert kw["multiscale"] is False and isinstance(data, LevelArray)
    assert data.shape == (2, 16, 16, 3)
    assert "contrast_limits" not in kw
    plane = np.asarray(data[1])
    assert plane.shape == (16, 16, 3) and (plane[..., 0] == 255).all() and not plane[..., 1:].any()


def test_one_uint8_channel_is_grayscale_with_dtype_contrast(make_volume):
    base = np.arange(16 * 16 * 2, dtype=np.uint8).reshape(16, 16, 2, 1)
    path = make_volume("gray", [(base, (0, 0, 0), (1, 1, 1))], chunk=(8, 8, 2))
    [(data, kw, _)] = read_layers(path)
    assert data.shape == (2, 16, 16) and kw["contrast_limits"] == (0.0, 255.0)


def test_scale_with_non_integer_factor_is_left_out(make_volume, caplog):
    base = np.ones((24, 24, 2, 1), np.uint8)
    path = make_volume(
        "odd",
        [(base, (0, 0, 0), (4, 4, 4)), (base[:16, :16], (0, 0, 0), (6, 6, 4))],
        chunk=(8, 8, 2),
    )
    with caplog.at_level(logging.WARNING, logger="napari_precomputed"):
        [(data, kw, _)] = read_layers(path)
    assert kw["multiscale"] is False and data.shape == (2, 24, 24)
    assert "not an integer multiple" in caplog.text


# -- the probe ----------------------------------------------------------------------------------


def test_info_file_path_opens_its_volume(pyramid_volume):
    path = pyramid_volume("byinfo")
    [(_, kw, _)] = read_layers(path / "info")
    assert kw["name"] == "byinfo"


def test_not_precomputed_returns_none(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "data.txt").write_text("hello")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "info").write_text(
        json.dumps({"@type": "neuroglancer_annotations_v1", "dimensions": {}})
    )
    (tmp_path / "other_json").mkdir()
    (tmp_path / "other_json" / "info").write_text(json.dumps([1, 2, 3]))
    (tmp_path / "binary").mkdir()
    (tmp_path / "binary" / "info").write_bytes(b"\x89PNG\r\n\x1a\n\x00")
    (tmp_path / "file.tif").write_bytes(b"II*\x00")
    for p in [
        tmp_path / "plain",
        tmp_path / "annotations",
        tmp_path / "other_json",
        tmp_path / "binary",
        tmp_path / "file.tif",
        tmp_path / "missing",
        "",
        "ftp://example.invalid/x",
    ]:
        assert get_reader(str(p)) is None, p
    assert get_reader([str(tmp_path / "plain")]) is None


@pytest.mark.parametrize(
    "info, message",
    [
        ({"@type": "neuroglancer_multiscale_volume", "type": "image"}, "data_type"),
        ({"type": "image", "data_type": "uint8", "num_channels": 1, "scales": [{}]}, "key"),
        (
            {"type": "image", "data_type": "float32", "num_channels": 1, "scales": [
                {"key": "a", "size": [4, 4, 4], "resolution": [1, 1, 1], "chunk_sizes": [[4, 4, 4]],
                 "encoding": "jpeg"}]},
            "jpeg",
        ),
    ],
    ids=["no-data-type", "scale-without-key", "bad-encoding"],
)  # fmt: skip
def test_broken_info_gets_a_reader_that_says_why(tmp_path, caplog, info, message):
    # A folder whose info claims to be a volume is never refused silently: napari shows
    # the reader's error (naming the info file and the member at fault).
    vol = tmp_path / "broken"
    vol.mkdir()
    (vol / "info").write_text(json.dumps(info))
    reader = get_reader(str(vol))
    assert reader is not None
    with caplog.at_level(logging.WARNING, logger="napari_precomputed"):
        with pytest.raises(precomputed.PrecomputedError) as err:
            reader(str(vol))
    assert str(vol / "info") in str(err.value) and message in str(err.value)
    assert str(vol / "info") in caplog.text


def test_several_paths_give_several_layers(pyramid_volume):
    a, b = pyramid_volume("a"), pyramid_volume("b")
    reader = get_reader([str(a), str(b)])
    assert reader is not None
    assert [kw["name"] for _, kw, _ in reader([str(a), str(b)])] == ["a", "b"]


# -- the lazy level arrays ----------------------------------------------------------------------


def test_level_indexing_is_lazy_and_matches_numpy(pyramid_volume):
    path = pyramid_volume("idx")
    [(data, _, _)] = read_layers(path)
    level = data[0]
    full = np.asarray(level)
    kv = level.volume.kvstore
    kv.request_log = []
    keys = [
        (slice(None), slice(2, 30), slice(1, 39)),
        (3,),
        (-1, slice(None, None, 3), slice(5, None, 2)),
        (Ellipsis, 7),
        (slice(1, 5), Ellipsis, slice(0, 40, 7)),
        (np.int64(2), 4, 9),
    ]
    views = [level[k] for k in keys]
    chained = level[:, 2:30, 1:39][1:4][:, ::2, -5:]
    assert kv.request_log == []  # indexing fetched nothing
    for k, v in zip(keys, views, strict=True):
        assert v.shape == full[k].shape and v.dtype == full.dtype
        np.testing.assert_array_equal(np.asarray(v), full[k])
    np.testing.assert_array_equal(np.asarray(chained), full[:, 2:30, 1:39][1:4][:, ::2, -5:])
    assert np.asarray(level[2], dtype=np.float32).dtype == np.float32
    with pytest.raises(IndexError):
        level[6]
    with pytest.raises(IndexError):
        level[0, 0, 0, 0]
    with pytest.raises(IndexError):
        level[::-1]


def test_level_chunks_follow_storage_chunks_in_presented_coordinates(pyramid_volume):
    [(data, kw, _)] = read_layers(pyramid_volume("chunks"))
    # Chunk grid (16, 16, 4) starts at voxel_offset (5, 3, 2); the window at (4, 0, 2).
    zc, yc, xc = data[0].chunks
    assert xc == (1, 16, 16, 7) and yc == (3, 16, 13) and zc == (4, 2)
    assert sum(data[1].chunks[2]) == data[1].shape[2]


def test_concurrent_reads_are_consistent(pyramid_volume):
    """napari's async slicing reads from worker threads while the UI thread reads too."""
    [(data, _, _)] = read_layers(pyramid_volume("threads"))
    expected = [np.asarray(level) for level in data]
    data[0].volume.context.cache.clear()
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(30):
                k = int(rng.integers(len(data)))
                shape = data[k].shape
                z = int(rng.integers(shape[0]))
                y0 = int(rng.integers(shape[1]))
                x0 = int(rng.integers(shape[2]))
                got = np.asarray(data[k][z, y0:, x0:])
                np.testing.assert_array_equal(got, expected[k][z, y0:, x0:])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]

"""Volumes written by our driver, rendered by Neuroglancer's own web client.

The client of the ``neuroglancer`` wheel runs in headless Chromium (tests/
neuroglancer_client.py) and reads what ``precomputed`` wrote from a local HTTP server:
uint8 raw volumes, unsharded and sharded, are drawn pixel-exact; uint64
compressed_segmentation ids above 2^32 are decoded exactly and coloured with
Neuroglancer's segment colours; uint16/float32 values come back exact and jpeg within
±1; a nonzero voxel_offset puts the data where it belongs; zoomed out, the client reads
the coarser scale's chunks (and draws them exactly); a truncated chunk is reported as a
failed chunk, a broken ``info`` as a layer error, and a screenshot that cannot complete
times out without blocking the next one. The last test proves the mesh path of the
harness with a hand-written legacy mesh.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import precomputed
from neuroglancer_client import ChunksFailed, NeuroglancerClient, ScreenshotTimeout
from precomputed.create import create_volume
from servers import RangeServer
from volumes import sharding_json, volume_spec

pytestmark = pytest.mark.neuroglancer


@pytest.fixture
def rng() -> np.random.Generator:
    """The same random data for a test whatever else runs."""
    return np.random.default_rng(17)


def write(
    ng: NeuroglancerClient, name: str, data: np.ndarray, type: str = "image", **scale: Any
) -> Path:
    """Create a one-scale, one-channel volume from ``data`` (x, y, z) with our driver."""
    path = ng.path(name)
    spec = volume_spec(f"file://{path}", data.dtype.name, type=type, size=list(data.shape), **scale)
    vol = precomputed.open(spec, create=True)
    vol[...] = data[..., None]
    return path


def rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)


@pytest.mark.parametrize("sharded", [False, True], ids=["unsharded", "sharded"])
def test_uint8_raw_pixel_exact(
    ng: NeuroglancerClient, rng: np.random.Generator, sharded: bool
) -> None:
    data = rng.integers(0, 256, (96, 80, 8), dtype=np.uint8)
    sharding = {"sharding": sharding_json(0, 1, 2)} if sharded else {}
    path = write(
        ng, "u8", data, encoding="raw", chunk_size=[32, 32, 4], resolution=[4, 4, 40], **sharding
    )
    z = 5
    ng.show({"img": ng.url(path)}, position=[48, 40, z + 0.5], size=(96, 80), resolution=[4, 4, 40])
    image = ng.screenshot()
    # Default shader: R = G = B = value; pixel (row, column) is voxel (x=column, y=row).
    np.testing.assert_array_equal(image[..., :3], np.repeat(data[:, :, z].T[..., None], 3, axis=2))
    assert (image[..., 3] == 255).all()
    requests = ng.chunk_requests(path)
    if sharded:  # the client read minishard indices and chunks by byte range
        assert requests and all(r.path.endswith(".shard") and r.range for r in requests)
    else:  # the 3 x 3 chunks of z in 4..8, each once
        assert sorted(r.path for r in requests) == sorted(
            f"4_4_40/{x}-{min(x + 32, 96)}_{y}-{min(y + 32, 80)}_4-8"
            for x in (0, 32, 64)
            for y in (0, 32, 64)
        )


def test_uint64_compressed_segmentation_sharded(
    ng: NeuroglancerClient, rng: np.random.Generator
) -> None:
    import neuroglancer

    ids = np.array(
        [0, 1, 2**32 - 1, 2**32, 2**32 + 1, 2**40 + 12345, 2**53 + 1, 2**63 + 7, 2**64 - 1],
        dtype=np.uint64,
    )
    # 8 x 8 x 2 patches of random ids, so blocks hold one to several ids.
    patches = rng.integers(0, len(ids), (8, 8, 4))
    data = ids[np.kron(patches, np.ones((8, 8, 2), dtype=np.int64))]
    path = write(
        ng,
        "seg",
        data,
        type="segmentation",
        encoding="compressed_segmentation",
        chunk_size=[32, 32, 4],
        compressed_segmentation_block_size=[8, 8, 2],
        resolution=[8, 8, 8],
        sharding=sharding_json(0, 1, 1, data="gzip", index="gzip"),
    )
    layer = neuroglancer.SegmentationLayer(source=ng.url(path), selected_alpha=1.0, color_seed=0)
    for z in (0, 5):
        ng.show({"seg": layer}, position=[32, 32, z + 0.5], size=(64, 64), resolution=[8, 8, 8])
        image = ng.screenshot()
        values = ng.values_at("seg", z, dtype=np.uint64)
        np.testing.assert_array_equal(values, data[:, :, z].T)
        # Segment 0 is hidden (black background); others get the client's hash colour.
        expected = np.zeros((64, 64, 3), dtype=np.int16)
        for i in ids[1:]:
            expected[data[:, :, z].T == i] = rgb(
                neuroglancer.segment_colors.hex_string_from_segment_id(0, int(i))
            )
        diff = np.abs(image[..., :3].astype(np.int16) - expected)
        assert diff.max() <= 1, f"{(diff > 1).any(axis=2).sum()} pixels off by more than 1"
    assert all(r.path.endswith(".shard") and r.range for r in ng.chunk_requests(path))


def test_uint16_and_float32_values(ng: NeuroglancerClient, rng: np.random.Generator) -> None:
    u16 = rng.integers(0, 2**16, (64, 48, 6), dtype=np.uint16)
    f32 = (rng.standard_normal((64, 48, 6)) * 1e3).astype(np.float32)
    f32[0, 0, 2], f32[1, 0, 2], f32[2, 0, 2] = 1e-30, -np.float32(3.4e38), 0.1
    p16 = write(ng, "u16", u16, encoding="raw", chunk_size=[32, 16, 3])
    p32 = write(ng, "f32", f32, encoding="raw", chunk_size=[16, 32, 2], resolution=[1, 1, 1])
    ng.show({"u16": ng.url(p16), "f32": ng.url(p32)}, position=[32, 24, 2.5], size=(64, 48))
    ng.screenshot()
    # The whole uint16 volume through the client's decoder (viewer.volume()).
    np.testing.assert_array_equal(ng.read_volume("u16"), u16)  # x, y, z like ours
    # float32 through JS: the printed doubles convert back to the exact float32.
    np.testing.assert_array_equal(ng.values_at("f32", 2, dtype=np.float32), f32[:, :, 2].T)


def test_jpeg_within_one(ng: NeuroglancerClient, rng: np.random.Generator) -> None:
    yy, xx = np.mgrid[0:64, 0:96]
    smooth = (127 + 100 * np.sin(xx / 9.0) * np.cos(yy / 7.0)).T
    data = np.clip(smooth[..., None] + rng.normal(0, 8, (96, 64, 4)), 0, 255).astype(np.uint8)
    path = write(ng, "jpeg", data, encoding="jpeg", jpeg_quality=90, chunk_size=[32, 32, 4])
    ours = precomputed.open(f"file://{path}")[:, :, 2, 0].read()  # our decode of the same bytes
    ng.show({"img": ng.url(path)}, position=[48, 32, 2.5], size=(96, 64))
    image = ng.screenshot()
    diff = np.abs(image[..., 0].astype(np.int16) - ours.T.astype(np.int16))
    assert diff.max() <= 1, f"max difference {diff.max()} (decoders differ by at most 1)"
    # Not trivially equal to the input: jpeg really was lossy and the client decoded it.
    assert np.abs(ours.astype(np.int16) - data[:, :, 2]).max() > 1


def test_voxel_offset_placement(ng: NeuroglancerClient, rng: np.random.Generator) -> None:
    offset = (-37, 21, 5)
    data = rng.integers(1, 2**32, (40, 24, 6), dtype=np.uint64).astype(np.uint32)
    path = ng.path("offset")
    spec = volume_spec(
        f"file://{path}", "uint32", size=list(data.shape), voxel_offset=list(offset),
        encoding="raw", chunk_size=[16, 16, 4],
    )  # fmt: skip
    precomputed.open(spec, create=True)[...] = data[..., None]
    z = offset[2] + 4
    x0, y0 = offset[0], offset[1]
    ng.show({"img": ng.url(path)}, position=[x0 + 20, y0 + 12, z + 0.5], size=(64, 48))
    ng.screenshot()
    # Two voxels of margin all round: outside the volume the client has no value.
    got = ng.values_at(
        "img", z, x=(x0 - 2, x0 + 42), y=(y0 - 2, y0 + 26), dtype=np.uint32, missing=0
    )
    expected = np.zeros((28, 44), dtype=np.uint32)
    expected[2:-2, 2:-2] = data[:, :, z - offset[2]].T
    np.testing.assert_array_equal(got, expected)


def test_zoomed_out_reads_the_coarse_scale(ng: NeuroglancerClient) -> None:
    yy, xx = np.mgrid[0:256, 0:256]
    data = ((xx // 3 + yy // 5) % 256).astype(np.uint8).T[..., None].repeat(4, axis=2)
    path = ng.path("multiscale")
    create_volume(  # scales 1_1_1, 2_2_1 and 4_4_1, downsampled by our driver
        f"file://{path}",
        {"type": "image", "data_type": "uint8", "num_channels": 1},
        {
            "size": [256, 256, 4],
            "resolution": [1, 1, 1],
            "encoding": "raw",
            "chunk_size": [32, 32, 4],
        },
        data=data[..., None],
        levels=2,
        factor=(2, 2, 1),
    )
    keys = [s["key"] for s in json.loads((path / "info").read_text())["scales"]]
    assert len(keys) == 3
    coarse = precomputed.open(f"file://{path}", scale_index=2)[:, :, 1, 0].read()  # 64 x 64
    # 4 voxels per screen pixel: one voxel of the 4x scale per pixel.
    ng.show({"img": ng.url(path)}, position=[128, 128, 1.5], size=(64, 64), cross_section_scale=4)
    image = ng.screenshot()
    used = {r.path.split("/", 1)[0] for r in ng.chunk_requests(path)}
    assert used == {keys[2]}, f"zoomed out the client read {sorted(used)}, expected {keys[2]}"
    np.testing.assert_array_equal(image[..., 0], coarse.T)


def test_truncated_chunk_is_a_client_error(
    ng: NeuroglancerClient, rng: np.random.Generator
) -> None:
    data = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    path = write(ng, "broken", data, encoding="raw", chunk_size=[32, 32, 4])
    chunk = next((path / "1_1_1").iterdir())
    chunk.write_bytes(chunk.read_bytes()[:100])  # 100 of 4096 bytes
    ng.show({"img": ng.url(path)}, position=[32, 32, 0.5], size=(64, 64))
    with pytest.raises(ChunksFailed) as failure:
        ng.screenshot(timeout=20)
    assert failure.value.failed == 1
    assert any("100 bytes" in e and "4096" in e for e in failure.value.errors), failure.value.errors
    assert ng.layer_error("img") is None  # the info was fine; only the chunk is broken

    # The failed request was withdrawn: the next screenshot is not stuck behind it.
    good = write(ng, "good", data, encoding="raw", chunk_size=[32, 32, 4])
    ng.show({"img": ng.url(good)}, position=[32, 32, 0.5], size=(64, 64))
    np.testing.assert_array_equal(ng.screenshot()[..., 0], data[:, :, 0].T)


def test_screenshot_timeout_is_withdrawn(ng: NeuroglancerClient, rng: np.random.Generator) -> None:
    # A state without layers never becomes "ready", so its screenshot never comes.
    ng.show({}, position=[0, 0, 0], size=(32, 32))
    with pytest.raises(ScreenshotTimeout) as timeout:
        ng.screenshot(timeout=0.5)
    assert not isinstance(timeout.value, ChunksFailed)
    assert timeout.value.artifacts is not None and (timeout.value.artifacts / "page.png").exists()
    data = rng.integers(0, 256, (32, 32, 1), dtype=np.uint8)
    path = write(ng, "after", data, encoding="raw", chunk_size=[32, 32, 1])
    ng.show({"img": ng.url(path)}, position=[16, 16, 0.5], size=(32, 32))
    np.testing.assert_array_equal(ng.screenshot()[..., 0], data[:, :, 0].T)


def test_broken_info_is_a_layer_error(ng: NeuroglancerClient) -> None:
    path = ng.path("badinfo")
    (path / "info").write_text('{"type": "image", ')
    ng.show({"img": ng.url(path)}, position=[0, 0, 0], size=(32, 32))
    error = ng.layer_error("img")
    assert error is not None and "JSON" in error, error


def test_data_server_answers_browsers(tmp_path: Path) -> None:
    """The harness's RangeServer(cors=True): preflights, CORS headers, no caching."""
    import urllib.request

    (tmp_path / "f").write_bytes(bytes(range(10)))
    with RangeServer(root=tmp_path, cors=True) as srv:
        pre = urllib.request.Request(f"{srv.url}/f", method="OPTIONS")
        pre.add_header("Origin", "http://127.0.0.1:1")
        pre.add_header("Access-Control-Request-Headers", "range")
        with urllib.request.urlopen(pre) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert r.headers["Access-Control-Allow-Headers"] == "range"
        get = urllib.request.Request(f"{srv.url}/f", headers={"Range": "bytes=2-4"})
        with urllib.request.urlopen(get) as r:
            assert (r.status, r.read()) == (206, bytes([2, 3, 4]))
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert "Content-Range" in r.headers["Access-Control-Expose-Headers"]
            assert r.headers["Cache-Control"] == "no-store"
        assert [m for m, _, _ in srv.requests] == ["OPTIONS", "GET"]


# -- meshes: the harness path, with a legacy mesh written by hand --------------------------


def legacy_box_fragment(lo: tuple[float, float, float], hi: tuple[float, float, float]) -> bytes:
    """A closed box as a legacy mesh fragment: uint32 vertex count, float32 x, y, z per
    vertex (nm), uint32 vertex indices of the triangles, all little-endian."""
    corners = [(x, y, z) for z in (lo[2], hi[2]) for y in (lo[1], hi[1]) for x in (lo[0], hi[0])]
    # Corner i has x = bit 0, y = bit 1, z = bit 2; two triangles per face.
    faces = [
        (0, 2, 1), (1, 2, 3), (4, 5, 6), (5, 7, 6),  # z = lo, z = hi
        (0, 1, 4), (1, 5, 4), (2, 6, 3), (3, 6, 7),  # y = lo, y = hi
        (0, 4, 2), (2, 4, 6), (1, 3, 5), (3, 7, 5),  # x = lo, x = hi
    ]  # fmt: skip
    return (
        struct.pack("<I", len(corners))
        + np.asarray(corners, dtype="<f4").tobytes()
        + np.asarray(faces, dtype="<u4").tobytes()
    )


def test_mesh_hook_renders_a_legacy_mesh(ng: NeuroglancerClient) -> None:
    segment = 2**40 + 3
    data = np.zeros((64, 64, 16), dtype=np.uint64)
    data[16:48, 16:40, 4:12] = segment
    path = write(
        ng,
        "seg",
        data,
        type="segmentation",
        encoding="raw",
        chunk_size=[32, 32, 8],
        resolution=[2, 2, 2],
    )
    info = json.loads((path / "info").read_text())
    info["mesh"] = "mesh"
    (path / "info").write_text(json.dumps(info))
    mesh = path / "mesh"
    mesh.mkdir()
    (mesh / "info").write_text(json.dumps({"@type": "neuroglancer_legacy_mesh"}))
    (mesh / f"{segment}:0").write_text(json.dumps({"fragments": [f"{segment}:0:box"]}))
    lo, hi = (32.0, 32.0, 8.0), (96.0, 80.0, 24.0)  # the labelled box, in nm
    (mesh / f"{segment}:0:box").write_bytes(legacy_box_fragment(lo, hi))

    # Nothing selected: no mesh requested, nothing drawn.
    empty = ng.show_meshes(ng.url(path), [], mesh_dir=mesh, centre=(64, 64, 16), pixel_size=0.5)
    assert empty.manifest_requests == empty.fragment_requests == []
    assert not empty.foreground.any()

    r = ng.show_meshes(ng.url(path), [segment], mesh_dir=mesh, centre=(64, 64, 16), pixel_size=0.5)
    assert r.manifest_requests == [f"{segment}:0"]
    assert r.fragment_requests == [f"{segment}:0:box"]
    rows, cols = r.box_pixels(lo, hi)  # 128 x 96 pixels around the centre
    inside = r.foreground[rows, cols]
    assert inside.all(), f"{(~inside).sum()} pixels inside the box's projection are background"
    outside = r.foreground.copy()
    outside[rows, cols] = False
    assert not outside.any(), f"{outside.sum()} pixels outside the box's projection are drawn"

"""Reading meshes: what Igneous wrote (legacy, unsharded and sharded multi-resolution),
read exactly as CloudVolume's ``vol.mesh.get`` reads it; hostile manifests and fragments
rejected with errors naming the key; fetches concurrent and round trips counted on an HTTP
server (tests/servers.py RangeServer)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import precomputed
from precomputed import meshes
from precomputed.errors import (
    CorruptDataError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
)
from precomputed.meshes.manifest import MultiLodManifest
from servers import RangeServer

pytest.importorskip("DracoPy")
pytest.importorskip("igneous")
from cloudvolume import CloudVolume  # noqa: E402

from mesh_oracles import IDS, igneous_meshes, triangles  # noqa: E402


@pytest.fixture(scope="module")
def igneous(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Igneous meshes of the test segmentation in each format (made once per module)."""
    root = tmp_path_factory.mktemp("igneous")
    out = {}
    for kind in ("legacy", "unsharded", "sharded"):
        igneous_meshes(root / kind, kind)
        out[kind] = root / kind
    return out


def cv_mesh(path: Path, sid: int, lod: int | None) -> tuple[np.ndarray, np.ndarray]:
    cv = CloudVolume("file://" + str(path), progress=False)
    if lod is None:  # legacy
        m = cv.mesh.get(sid, remove_duplicate_vertices=False)
    else:
        m = cv.mesh.get(sid, lod=lod)[sid]
    return m.vertices, m.faces


@pytest.mark.parametrize("kind", ["unsharded", "sharded"])
def test_multiresolution_meshes_equal_cloudvolumes(igneous: dict[str, Path], kind: str) -> None:
    src = meshes.open("file://" + str(igneous[kind]))
    assert isinstance(src, meshes.MultiLodMeshSource)
    assert (src.shards is not None) == (kind == "sharded")
    for sid in IDS:
        n = src.lods(sid)
        assert n == (2 if sid in IDS[:2] else 1)  # the small cubes get one LOD
        for lod in range(n):
            ours = src.get(sid, lod)
            v, f = cv_mesh(igneous[kind], sid, lod)
            # Same fragments in the same order: the same arrays, to float32 rounding.
            np.testing.assert_allclose(ours.vertices, v, rtol=0, atol=1e-4)
            np.testing.assert_array_equal(ours.faces, f)
        np.testing.assert_array_equal(src.coarsest(sid).faces, src.get(sid, n - 1).faces)


def test_legacy_meshes_equal_cloudvolumes(igneous: dict[str, Path]) -> None:
    # Opened through the volume: its info names the mesh directory.
    vol = precomputed.open("file://" + str(igneous["legacy"]))
    src = meshes.open(vol)
    assert isinstance(src, meshes.LegacyMeshSource)
    assert src.lods(7) == 1
    got = src.get_many(IDS)
    for sid in IDS:
        v, f = cv_mesh(igneous["legacy"], sid, None)
        # CloudVolume sorts fragments by name, we keep the manifest's order: same surface.
        np.testing.assert_array_equal(triangles(got[sid].vertices, got[sid].faces), triangles(v, f))


def test_meshes_are_placed_in_world_coordinates(igneous: dict[str, Path]) -> None:
    # The sphere (7) is centred on voxel (20, 30, 20) + offset (10, 20, 30), resolution
    # (4, 5, 6): every vertex of every format lies near radius 12 voxels from it.
    centre = (np.array([20, 30, 20]) + [10, 20, 30] + 0.5) * [4, 5, 6]
    for kind in ("legacy", "unsharded", "sharded"):
        mesh = meshes.open("file://" + str(igneous[kind])).get(7)
        r = np.linalg.norm((mesh.vertices - centre) / [4, 5, 6], axis=1)
        assert 10 < r.min() and r.max() < 13.5, (kind, r.min(), r.max())


def test_missing_segments_and_bad_lods(igneous: dict[str, Path]) -> None:
    for kind, named in (
        ("unsharded", r"mesh/99\.index"),
        ("sharded", r"0\.shard"),
        ("legacy", "mesh/99:0"),
    ):
        src = meshes.open("file://" + str(igneous[kind]))
        with pytest.raises(NotFoundError, match=named):
            src.get(99)
        assert src.get_many([7, 99], missing="skip").keys() == {7}
        assert src.has_mesh([7, 99]) == [True, False]
    src = meshes.open("file://" + str(igneous["unsharded"]))
    with pytest.raises(OutOfRangeError, match="lod 5"):
        src.get(7, lod=5)
    with pytest.raises(InvalidArgumentError):
        src.get(7, lod=-2)
    with pytest.raises(InvalidArgumentError):
        src.get(-1)
    with pytest.raises(OutOfRangeError):
        meshes.open("file://" + str(igneous["legacy"])).get(7, lod=1)


def test_volume_without_meshes(tmp_path: Path) -> None:
    from mesh_oracles import write_segmentation

    url = write_segmentation(tmp_path / "v")
    with pytest.raises(NotFoundError, match='"mesh"'):
        meshes.open(url)


# -- hostile manifests and fragments ---------------------------------------------------------


def _copy(igneous: dict[str, Path], kind: str, tmp_path: Path) -> Path:
    dst = tmp_path / kind
    shutil.copytree(igneous[kind], dst)
    return dst


def _manifest(num_lods: int, counts: list[int], sizes: list[int]) -> bytes:
    m = MultiLodManifest(
        np.ones(3, np.float32),
        np.zeros(3, np.float32),
        np.ones(num_lods, np.float32),
        np.zeros((num_lods, 3), np.float32),
        tuple(np.zeros((c, 3), np.uint32) for c in counts),
        tuple(
            np.array(sizes[sum(counts[:k]) : sum(counts[: k + 1])], np.uint32)
            for k in range(len(counts))
        ),
    )
    return m.encode()


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        (b"", "Invalid size: 0"),
        (b"\0" * 30, "Invalid size"),
        (np.array([1, 1, 1, 0, 0, 0], "<f4").tobytes() + np.uint32(0).tobytes(), r"num_lods 0"),
        (
            np.array([1, 1, 1, 0, 0, 0], "<f4").tobytes() + np.uint32(1000).tobytes(),
            r"num_lods 1000",
        ),
        (
            np.array([1, 1, 1, 0, 0, 0], "<f4").tobytes() + np.uint32(2).tobytes() + b"\0" * 8,
            "for 2 lods",
        ),
        (_manifest(1, [2], [5, 5])[:-4], "Invalid size for 1 lods"),
        (_manifest(1, [1], [5]) + b"\0" * 16, "1 fragments"),
        (
            np.array([np.nan, 1, 1, 0, 0, 0], "<f4").tobytes() + _manifest(1, [0], [])[24:],
            "non-finite",
        ),
        (
            np.array([0, 1, 1, 0, 0, 0], "<f4").tobytes() + _manifest(1, [0], [])[24:],
            "not positive",
        ),
    ],
)
def test_hostile_manifests_are_rejected(blob: bytes, match: str) -> None:
    with pytest.raises(CorruptDataError, match=match):
        MultiLodManifest.decode(blob, '"mesh/7.index"')


def test_hostile_unsharded_files(igneous: dict[str, Path], tmp_path: Path) -> None:
    d = _copy(igneous, "unsharded", tmp_path)
    (d / "mesh" / "7.index").write_bytes(b"\x01\x02")
    with pytest.raises(CorruptDataError, match=r"mesh/7\.index.*Invalid size"):
        meshes.open("file://" + str(d)).get(7)
    # A manifest promising more fragment bytes than the data file has.
    (d / "mesh" / "7.index").write_bytes(_manifest(1, [1], [1 << 30]))
    with pytest.raises(CorruptDataError, match=r"mesh/7.*\[0, 1073741824\)"):
        meshes.open("file://" + str(d)).get(7)
    # A manifest claiming more than MAX_LOD_BYTES for a LOD: refused before any request.
    (d / "mesh" / "7.index").write_bytes(_manifest(1, [3], [0xFFFFFFFF] * 3))
    with pytest.raises(CorruptDataError, match="MAX_LOD_BYTES"):
        meshes.open("file://" + str(d)).get(7)
    # Fragment bytes that are not Draco.
    (d / "mesh" / "7.index").write_bytes(_manifest(1, [1], [16]))
    (d / "mesh" / "7").write_bytes(b"\xff" * 16)
    with pytest.raises(CorruptDataError, match=r"Draco.*segment 7"):
        meshes.open("file://" + str(d)).get(7)
    # Positions outside the quantization range of a 10-bit mesh.
    info = json.loads((d / "mesh" / "info").read_text())
    info["vertex_quantization_bits"] = 10
    (d / "mesh" / "info").write_text(json.dumps(info))
    shutil.copy(igneous["unsharded"] / "mesh" / "7", d / "mesh" / "7")
    shutil.copy(igneous["unsharded"] / "mesh" / "7.index", d / "mesh" / "7.index")
    with pytest.raises(CorruptDataError, match=r"outside \[0, 1023\]"):
        meshes.open("file://" + str(d)).get(7)


@pytest.mark.parametrize(
    ("info", "member"),
    [
        ({"@type": "neuroglancer_multilod_draco", "vertex_quantization_bits": 12, "lod_scale_multiplier": 1}, "vertex_quantization_bits"),
        ({"@type": "neuroglancer_multilod_draco", "vertex_quantization_bits": 10, "lod_scale_multiplier": 0}, "lod_scale_multiplier"),
        ({"@type": "neuroglancer_multilod_draco", "vertex_quantization_bits": 10, "lod_scale_multiplier": 1, "transform": [1, 2]}, "transform"),
        ({"@type": "neuroglancer_multilod_draco", "vertex_quantization_bits": 10, "lod_scale_multiplier": 1, "sharding": {"@type": "x"}}, "sharding"),
        ({"@type": "neuroglancer_skeletons"}, "@type"),
    ],
)  # fmt: skip
def test_hostile_mesh_info(tmp_path: Path, info: dict, member: str) -> None:
    (tmp_path / "info").write_text(json.dumps(info))
    with pytest.raises(FailedPreconditionError, match=member):
        meshes.open(str(tmp_path))


def test_hostile_legacy_files(igneous: dict[str, Path], tmp_path: Path) -> None:
    d = _copy(igneous, "legacy", tmp_path)
    m = d / "mesh"
    url = "file://" + str(m)
    for manifest, match in (
        (b"{not json", "Invalid JSON"),
        (b'{"fragments": [1]}', "fragments"),
        (b'{"fragments": ["../../info"]}', "not a key"),
        (b'{"fragments": ["/etc/passwd"]}', "not a key"),
    ):
        (m / "7:0").write_bytes(manifest)
        with pytest.raises(CorruptDataError, match=match):
            meshes.open(url).get(7)
    (m / "7:0").write_bytes(b'{"fragments": ["frag"]}')
    with pytest.raises(NotFoundError, match="frag"):
        meshes.open(url).get(7)
    for blob, match in (
        (b"\x01\x00", "too short"),
        (np.uint32(10).tobytes() + b"\0" * 12, "10 vertices"),
        (np.uint32(1).tobytes() + b"\0" * 12 + np.array([0, 0, 5], "<u4").tobytes(), "index 5"),
        (b"\x1f\x8b\x08\x00garbage", "gzip"),
    ):
        (m / "frag").write_bytes(blob)
        with pytest.raises(CorruptDataError, match=match):
            meshes.open(url).get(7)


def test_hostile_sharded_manifest_offsets(igneous: dict[str, Path], tmp_path: Path) -> None:
    from precomputed.chunkstore import ShardedIdStore

    d = _copy(igneous, "sharded", tmp_path)
    src = meshes.open("file://" + str(d))
    assert isinstance(src, meshes.MultiLodMeshSource) and src.shards is not None
    # Replace 7's manifest by one whose fragments would start inside the shard index.
    store = ShardedIdStore(src.kvstore, src.prefix, src.shards.spec)
    store.commit({7: _manifest(1, [1], [1 << 20])})
    with pytest.raises(CorruptDataError, match="inside the shard index"):
        meshes.open("file://" + str(d)).get(7)


# -- concurrency and round trips over HTTP ----------------------------------------------------


@pytest.mark.parametrize("kind", ["unsharded", "sharded", "legacy"])
def test_get_many_fetches_concurrently(
    igneous: dict[str, Path], http_server: RangeServer, kind: str
) -> None:
    http_server.root = igneous[kind]
    src = meshes.open(http_server.url + "/mesh")
    http_server.latency = 0.2  # every request of a step starts before the first is answered
    http_server.clear_log()
    got = src.get_many(IDS, lod=0)
    assert set(got) == set(IDS)
    # Each step sends one request per segment at once (sharded: one shard holds them all,
    # so only the manifests and the fragment data are per segment).
    assert http_server.max_in_flight >= len(IDS)


def test_coarsest_lod_round_trips(igneous: dict[str, Path], http_server: RangeServer) -> None:
    # Unsharded: the manifest and the data file's tail in one round trip (2 requests in
    # flight together, nothing after).
    http_server.root = igneous["unsharded"]
    src = meshes.open(http_server.url + "/mesh")
    http_server.latency = 0.2
    http_server.clear_log()
    mesh = src.coarsest(7)
    assert len(http_server.requests) == 2 and http_server.max_in_flight == 2
    assert mesh.num_faces == src.get(7, 1).num_faces
    # Sharded: shard index, minishard index, manifest with the coarsest LOD in front.
    http_server.root = igneous["sharded"]
    src = meshes.open(http_server.url + "/mesh")
    http_server.clear_log()
    mesh = src.coarsest(7)
    assert len(http_server.requests) == 3 and http_server.max_in_flight == 1
    # Warm: cached indices and manifest, one request for another LOD.
    http_server.clear_log()
    src.get(7, 0)
    assert len(http_server.requests) == 1


def test_sources_are_thread_safe(igneous: dict[str, Path]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    src = meshes.open("file://" + str(igneous["sharded"]))
    expected = {sid: meshes.open("file://" + str(igneous["sharded"])).get(sid, 0) for sid in IDS}
    with ThreadPoolExecutor(8) as pool:
        got = list(
            pool.map(lambda k: (IDS[k % len(IDS)], src.get(IDS[k % len(IDS)], 0)), range(64))
        )
    for sid, mesh in got:
        np.testing.assert_array_equal(mesh.vertices, expected[sid].vertices)
        np.testing.assert_array_equal(mesh.faces, expected[sid].faces)

"""Writing meshes: generated from a segmentation (zmesh), split into levels of detail and
octree fragments, written unsharded and sharded. Oracles: CloudVolume's ``vol.mesh.get``
reads what we wrote with the same geometry; the geometry lies on the label boundary; the
fragments keep Neuroglancer's rules (Morton order, parents present, no triangle across the
2x2x2 partition of LOD > 0 fragments — checked on the Draco data as Neuroglancer's decoder
splits it — and fragments stitching into watertight surfaces)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import precomputed
from precomputed import meshes
from precomputed import sharding as sh
from precomputed.errors import InvalidArgumentError, NotFoundError

DracoPy = pytest.importorskip("DracoPy")
pytest.importorskip("zmesh")
from cloudvolume import CloudVolume  # noqa: E402

from mesh_oracles import IDS, OFFSET, RESOLUTION, segmentation, write_segmentation  # noqa: E402

SMALL = meshes.LodOptions(chunk_voxels=8)


def voxel_coords(mesh: meshes.Mesh, resolution=RESOLUTION, offset=OFFSET) -> np.ndarray:
    """Vertices in the segmentation array's voxel coordinates (voxel i spans [i, i+1))."""
    return mesh.vertices / np.asarray(resolution) - np.asarray(offset)


def near_boundary(seg: np.ndarray, label: int, p: np.ndarray) -> np.ndarray:
    """For each point, whether both the label and something else lie within one voxel
    (27 samples of the cube of half-width 0.99 voxel around it)."""
    steps = np.array([-0.99, 0.0, 0.99])
    offs = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), -1).reshape(-1, 3)
    idx = np.floor(p[:, None, :] + offs[None]).astype(np.int64)  # (n, 27, 3)
    inside_vol = ((idx >= 0) & (idx < np.array(seg.shape))).all(-1)
    clipped = np.clip(idx, 0, np.array(seg.shape) - 1)
    labels = np.where(inside_vol, seg[clipped[..., 0], clipped[..., 1], clipped[..., 2]], 0)
    return (labels == label).any(1) & (labels != label).any(1)


def enclosed_volume(mesh: meshes.Mesh) -> float:
    t = mesh.vertices.astype(np.float64)[mesh.faces]
    return float(np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6)


def watertight(mesh: meshes.Mesh) -> bool:
    m = mesh.deduplicated()
    e = np.sort(
        np.concatenate([m.faces[:, [0, 1]], m.faces[:, [1, 2]], m.faces[:, [2, 0]]]), axis=1
    )
    _, counts = np.unique(e, axis=0, return_counts=True)
    return bool((counts == 2).all())


@pytest.fixture(scope="module")
def volume_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_segmentation(tmp_path_factory.mktemp("seg") / "v")


@pytest.fixture
def fresh_volume(tmp_path: Path) -> precomputed.Volume:
    return precomputed.open(write_segmentation(tmp_path / "v"))


# -- geometry --------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [(128, 128, 128), (16, 16, 16)])
def test_generated_meshes_lie_on_the_label_boundary(block: tuple[int, int, int]) -> None:
    seg = segmentation()
    got = dict(meshes.generate(seg, resolution=RESOLUTION, voxel_offset=OFFSET, block_shape=block))
    assert sorted(got) == sorted(IDS)
    for sid, mesh in got.items():
        p = voxel_coords(mesh)
        assert near_boundary(seg, sid, p).all(), sid
        assert watertight(mesh), sid  # blocks stitched, region faces closed
        # The surface encloses the label's volume (up to the chamfered edges).
        voxels = (seg == sid).sum() * np.prod(RESOLUTION)
        assert enclosed_volume(mesh) == pytest.approx(voxels, rel=0.15), sid


def test_generate_filters_segments_and_regions_and_reports_progress() -> None:
    seg = segmentation()
    calls: list[tuple[str, int, int]] = []
    got = dict(
        meshes.generate(
            seg,
            resolution=RESOLUTION,
            voxel_offset=OFFSET,
            segment_ids=[7, 3],
            block_shape=(32, 32, 16),
            progress=lambda *a: calls.append(a),
        )
    )
    assert sorted(got) == [3, 7]
    stages = {c[0] for c in calls}
    assert stages == {"scan", "mesh"} and calls[-1] == ("mesh", 12, 12)
    # A region: only the box's lower half, closed at the cut.
    box = np.array([40, 10, 5]) + OFFSET
    region = (np.array(OFFSET), np.array(OFFSET) + [64, 64, 20])
    half = dict(meshes.generate(seg, resolution=RESOLUTION, voxel_offset=OFFSET, region=region))
    m = half[12345678901]
    p = voxel_coords(m)
    assert p[:, 2].max() == pytest.approx(20, abs=1e-3) and watertight(m)
    assert (p.min(0) >= box - np.array(OFFSET) - 1e-3).all()
    with pytest.raises(InvalidArgumentError, match="region"):
        list(meshes.generate(seg, resolution=RESOLUTION, region=((0, 0, 0), (65, 1, 1))))
    with pytest.raises(InvalidArgumentError, match="integer labels"):
        list(meshes.generate(seg.astype(np.float32), resolution=RESOLUTION))
    with pytest.raises(InvalidArgumentError, match="resolution"):
        list(meshes.generate(seg))


# -- multi-resolution structure --------------------------------------------------------------


def check_structure(src: meshes.MultiLodMeshSource, sid: int) -> None:
    man = src.manifest(sid)
    bits = src.info.vertex_quantization_bits
    mid = 1 << (bits - 1)
    loc = src._fetch_manifests([sid], speculate=False)[0][sid]
    assert loc is not None
    data = src.kvstore.read_range(loc.key, loc.data_start, loc.data_start + man.data_size)
    offset = 0
    for lod in range(man.num_lods):
        pos = man.fragment_positions[lod].astype(np.int64)
        codes = sh.compressed_morton_codes(pos, (16, 16, 16))
        assert (np.diff(codes.astype(np.int64)) > 0).all(), "fragments in Morton order"
        if lod:
            children = man.fragment_positions[lod - 1].astype(np.int64) // 2
            parents = {tuple(p) for p in pos.tolist()}
            assert {tuple(c) for c in children.tolist()} <= parents, "every parent present"
        for size in man.fragment_sizes[lod].tolist():
            frag = data[offset : offset + size]
            offset += size
            if not size or not lod:
                continue
            d = DracoPy.decode(frag)
            q = np.asarray(d.points, np.int64)[np.asarray(d.faces, np.int64)]  # (m, 3, 3)
            crossing = ((q < mid).any(axis=1) & (q > mid).any(axis=1)).any(axis=1)
            assert not crossing.any(), f"lod {lod}: a triangle crosses the partition"
        assert watertight(src.get(sid, lod)), (sid, lod)
    assert offset == man.data_size


@pytest.mark.parametrize(
    "sharding",
    [None, "auto", {"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": 0, "hash": "murmurhash3_x86_128",
                    "minishard_bits": 2, "shard_bits": 1, "minishard_index_encoding": "gzip", "data_encoding": "gzip"}],
    ids=["unsharded", "auto", "gzip"],
)  # fmt: skip
def test_cloudvolume_reads_what_we_write(
    fresh_volume: precomputed.Volume, sharding: object
) -> None:
    stats = meshes.write(fresh_volume, sharding=sharding, options=SMALL, block_shape=(32, 32, 32))
    assert stats.segments_written == len(IDS)
    kv, path = fresh_volume.kvstore, fresh_volume._h.path
    info = json.loads(kv.read(path + "info"))
    assert info["mesh"] == "mesh"
    mesh_info = json.loads(kv.read(path + "mesh/info"))
    assert mesh_info["@type"] == "neuroglancer_multilod_draco"
    assert mesh_info["transform"] == [4.0, 0, 0, 0, 0, 5.0, 0, 0, 0, 0, 6.0, 0]
    assert ("sharding" in mesh_info) == (sharding is not None)
    src = meshes.open(precomputed.open(fresh_volume.kvstore.url + path))
    assert isinstance(src, meshes.MultiLodMeshSource)
    cv = CloudVolume(kv.url + path, progress=False)
    for sid in IDS:
        n = src.lods(sid)
        assert n == {7: 3, 12345678901: 4}.get(sid, n)  # the small cubes: 1 or 2
        for lod in range(n):
            ours = src.get(sid, lod)
            theirs = cv.mesh.get(sid, lod=lod)[sid]
            np.testing.assert_allclose(ours.vertices, theirs.vertices, rtol=0, atol=1e-3)
            np.testing.assert_array_equal(ours.faces, theirs.faces)
        check_structure(src, sid)
    # LOD 0 as generated, up to the quantization (16 bits of an 8-voxel node).
    seg = segmentation()
    assert near_boundary(seg, 7, voxel_coords(src.get(7))).all()


def test_ten_bit_quantization_still_stitches(fresh_volume: precomputed.Volume) -> None:
    opts = meshes.LodOptions(chunk_voxels=8, quantization_bits=10)
    meshes.write(fresh_volume, options=opts, segment_ids=[7], block_shape=(64, 64, 64))
    src = meshes.open(fresh_volume)
    assert src.info.vertex_quantization_bits == 10
    check_structure(src, 7)  # type: ignore[arg-type]


# -- re-meshing after an edit ----------------------------------------------------------------


@pytest.mark.parametrize("sharding", [None, "auto"], ids=["unsharded", "sharded"])
def test_remesh_touched_segments(tmp_path: Path, sharding: object) -> None:
    url = write_segmentation(tmp_path / "v")
    vol = precomputed.open(url)
    meshes.write(vol, sharding=sharding, options=SMALL, block_shape=(32, 32, 32))
    before = meshes.open(url)
    untouched = {sid: before.get(sid, 0) for sid in (7, 5)}
    # Edit: erase segment 3, grow segment 4 into a bigger block.
    vol = precomputed.open(url)
    x0 = np.array(OFFSET)
    region = vol[x0[0] : x0[0] + 64, x0[1] : x0[1] + 64, x0[2] : x0[2] + 48, 0]
    seg = np.asarray(region.read()).copy()
    seg[seg == 3] = 0
    seg[14:22, 46:60, 34:46] = 4
    region.write(seg)
    stats = meshes.remesh(vol, [3, 4], options=SMALL, block_shape=(32, 32, 32))
    assert stats.segments_written == 1 and stats.segments_deleted == 1
    after = meshes.open(url)
    with pytest.raises(NotFoundError):
        after.get(3)
    p = voxel_coords(after.get(4))
    assert near_boundary(seg, 4, p).all()
    assert p.min(0) == pytest.approx([14, 46, 34], abs=1e-3)
    for sid, mesh in untouched.items():  # other segments' meshes are intact
        np.testing.assert_array_equal(after.get(sid, 0).vertices, mesh.vertices)
    cv = CloudVolume(url, progress=False)
    np.testing.assert_allclose(cv.mesh.get(4, lod=0)[4].vertices, after.get(4).vertices, atol=1e-3)


def test_remesh_needs_multiresolution_meshes(fresh_volume: precomputed.Volume) -> None:
    with pytest.raises(NotFoundError, match='"mesh"'):
        meshes.remesh(fresh_volume, [7])


def test_write_array_to_a_directory(tmp_path: Path) -> None:
    seg = segmentation()
    stats = meshes.write(
        seg, resolution=RESOLUTION, voxel_offset=OFFSET, output=str(tmp_path / "m"),
        segment_ids=[7], options=SMALL,
    )  # fmt: skip
    assert stats.segment_ids == [7]
    src = meshes.open(str(tmp_path / "m"))
    assert src.lods(7) == 3
    with pytest.raises(InvalidArgumentError, match="output"):
        meshes.write(seg, resolution=RESOLUTION)

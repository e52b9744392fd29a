"""Writing meshes: split into levels of detail and octree fragments, written unsharded and
sharded (generation itself: test_mesh_generate.py). Oracles: CloudVolume's
``vol.mesh.get`` reads what we wrote with the same geometry; the fragments keep
Neuroglancer's rules (Morton order, parents present, no triangle across the 2x2x2
partition of LOD > 0 fragments — checked on the Draco data as Neuroglancer's decoder splits
it — and fragments stitching into watertight surfaces)."""

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

from mesh_oracles import (  # noqa: E402
    IDS,
    OFFSET,
    RESOLUTION,
    near_boundary,
    segmentation,
    voxel_coords,
    watertight,
    write_segmentation,
)

SMALL = meshes.LodOptions(chunk_voxels=8)


@pytest.fixture(scope="module")
def volume_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_segmentation(tmp_path_factory.mktemp("seg") / "v")


@pytest.fixture
def fresh_volume(tmp_path: Path) -> precomputed.Volume:
    return precomputed.open(write_segmentation(tmp_path / "v"))


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

"""Meshes written by ``precomputed.meshes``, requested and drawn by Neuroglancer's client.

A small anisotropic uint64 segmentation (a box, an ellipsoid with an id above 2^32, and
a second box that stays deselected) is written by our driver; ``precomputed.meshes.write``
generates its multi-resolution Draco meshes (8-voxel LOD 0 nodes: 3 or 4 LODs) in three
variants: unsharded; sharded (identity hash, raw) over a volume with a voxel offset;
sharded over two shard files with gzip minishard indices and gzip data, 10-bit vertices.
``precomputed.segment_properties.write`` names the segments. The client of the
``neuroglancer`` wheel (tests/neuroglancer_client.py) shows the selected segments'
meshes in an orthographic 3-D view along z, and the tests check:

* requests: exactly the selected segments' manifests (``{id}.index``; sharded: the shard
  index entry, the minishard index and the manifest, by byte range) and each of their
  non-empty fragments once, by byte range -- only the coarsest LOD's when the detail
  cutoff (``mesh_render_scale``) is at its maximum; nothing of the deselected segment;
* decoding: the client holds every fragment it fetched, with the triangles and the
  quantized vertices DracoPy decodes from the same bytes (a fragment the client cannot
  decode is not an error there: it silently draws the parent LOD's octant instead);
* pixels: each selected segment (told apart by its colour) covers the projection of our
  own decoding of the LOD the client draws, within one pixel; at LOD 0 also the labels'
  footprint within one voxel, and the box exactly its projected rectangle (but for its
  bevelled corners); the coarsest LOD differs from LOD 0; nothing else is drawn;
* no layer error, no console error, and the client's segment property map holds our
  ids, labels, tags, descriptions and numbers.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import precomputed
from neuroglancer_client import (
    MESH_RENDER_SCALE_RANGE,
    MeshFragment,
    MeshRender,
    NeuroglancerClient,
    Request,
)
from precomputed import meshes
from precomputed import segment_properties as sp
from precomputed.meshes import Mesh, MultiLodManifest
from precomputed.sharding import (
    ShardingSpec,
    decode_chunk_data,
    shard_and_minishard,
    shard_entries,
    shard_filename,
)
from volumes import sharding_json, volume_spec

pytestmark = pytest.mark.neuroglancer

BOX, BLOB, OTHER = 7, 2**40 + 5, 3  # BLOB: an ellipsoid, id above 2^32; OTHER: deselected
SELECTED = (BOX, BLOB)
COLOURS = {BOX: "#ff0000", BLOB: "#00ff00", OTHER: "#0000ff"}  # channel 0, 1, 2
CHANNEL = {BOX: 0, BLOB: 1, OTHER: 2}
RESOLUTION = (4.0, 4.0, 8.0)  # nm; anisotropic, so the mesh transform matters
SHAPE = (64, 64, 32)  # voxels: 256 x 256 x 256 nm
BOX_VOXELS = ((6, 8), (26, 40))  # BOX's x, y extent in the array


@dataclass(frozen=True)
class Variant:
    """How the volume and its meshes are written."""

    sharding: dict[str, Any] | None = None
    voxel_offset: tuple[int, int, int] = (0, 0, 0)
    quantization_bits: int = 16

    def lod_options(self) -> meshes.LodOptions:
        # 8-voxel LOD 0 nodes: 3 or 4 LODs per segment.
        return meshes.LodOptions(chunk_voxels=8, quantization_bits=self.quantization_bits)

    def nm(self, voxel: tuple[float, ...]) -> tuple[float, ...]:
        """World nm of an array position (x, y or x, y, z; the volume starts at
        voxel_offset)."""
        n = len(voxel)
        return tuple(
            (o + v) * r
            for o, v, r in zip(self.voxel_offset[:n], voxel, RESOLUTION[:n], strict=True)
        )

    def view(self) -> dict[str, Any]:
        """The whole volume, 1 nm per pixel (a voxel is 4 x 4 pixels)."""
        return {"centre": self.nm((32, 32, 16)), "pixel_size": 1.0, "size": (256, 256)}


VARIANTS = {
    "unsharded": Variant(),
    # identity hash, raw index and data, one shard; a voxel offset.
    "sharded": Variant(sharding_json(0, 1, 0), voxel_offset=(-20, 13, 5)),
    # murmurhash, gzip minishard indices and data, two shard files; 10-bit vertices.
    "sharded-gzip": Variant(
        sharding_json(0, 2, 1, hash="murmurhash3_x86_128", data="gzip", index="gzip"),
        quantization_bits=10,
    ),
}


def labels() -> np.ndarray:
    data = np.zeros(SHAPE, np.uint64)
    data[6:26, 8:40, 4:20] = BOX
    x, y, z = np.meshgrid(*(np.arange(n) + 0.5 for n in SHAPE), indexing="ij")
    data[((x - 44) / 14) ** 2 + ((y - 40) / 14) ** 2 + ((z - 16) / 7) ** 2 <= 1] = BLOB
    data[40:56, 6:18, 8:24] = OTHER  # footprint apart from the others'
    return data


PROPERTIES = sp.SegmentProperties(
    np.array([OTHER, BOX, BLOB], np.uint64),
    (
        sp.Property.label(["other box", "box", "blob"]),
        sp.Property.text("note", ["not shown", "a box", "über 2^32"], type="description"),
        sp.Property.tag_sets([["box"], ["box", "selected"], ["round", "selected"]]),
        sp.Property.number("weight", [3072.0, 10240.0, 11472.5], "float32"),
    ),
)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``written(sharding)``: the segmentation, its meshes and its segment properties,
    by our library, made once per module and sharding."""
    made: dict[str, Path] = {}

    def get(sharding: str) -> Path:
        if sharding not in made:
            made[sharding] = build(tmp_path_factory.mktemp(sharding) / "seg", VARIANTS[sharding])
        return made[sharding]

    return get


def build(path: Path, variant: Variant) -> Path:
    spec = volume_spec(
        f"file://{path}",
        "uint64",
        type="segmentation",
        size=list(SHAPE),
        encoding="compressed_segmentation",
        compressed_segmentation_block_size=[8, 8, 8],
        chunk_size=[32, 32, 16],
        resolution=list(RESOLUTION),
        voxel_offset=list(variant.voxel_offset),
    )
    vol = precomputed.open(spec, create=True)
    vol[...] = labels()[..., None]
    stats = meshes.write(vol, sharding=variant.sharding, options=variant.lod_options())
    assert sorted(stats.segment_ids) == sorted([BOX, BLOB, OTHER])
    sp.write(vol, PROPERTIES)
    return path


def served(ng: NeuroglancerClient, written: Callable[[str], Path], sharding: str) -> Path:
    """A copy of ``written(sharding)`` at a URL the client has never seen (it caches
    meshes by URL)."""
    path = ng.path("seg")
    shutil.copytree(written(sharding), path, dirs_exist_ok=True)
    return path


# -- what the client should fetch -------------------------------------------------------


def fragment_ranges(m: MultiLodManifest, lods: range) -> list[tuple[int, int]]:
    """``[start, stop)`` of the non-empty fragments of ``lods``, relative to the data."""
    out = []
    for lod in lods:
        start = m.lod_range(lod)[0]
        ends = start + np.cumsum(m.fragment_sizes[lod], dtype=np.int64)
        starts = ends - m.fragment_sizes[lod]
        out += [(int(a), int(b)) for a, b in zip(starts, ends, strict=True) if b > a]
    return out


def byte_range(start: int, stop: int) -> str:
    return f"bytes={start}-{stop - 1}"


class Layout:
    """Where each segment's manifest and fragments are in the mesh directory, read from
    the files (independently of ``precomputed.meshes``' reader), and the requests the
    client should make for them."""

    def __init__(self, mesh_dir: Path, sharding: dict[str, Any] | None) -> None:
        self.mesh_dir = mesh_dir
        self.spec = None if sharding is None else ShardingSpec.from_json(sharding)
        self.manifests: dict[int, MultiLodManifest] = {}
        self.locations: dict[int, tuple[str, int, int, int]] = {}  # file, minishard, start, stop
        for sid in (BOX, BLOB, OTHER):
            if self.spec is None:
                raw = (mesh_dir / f"{sid}.index").read_bytes()
            else:
                shard, minishard = (
                    int(v[0]) for v in shard_and_minishard(np.array([sid], np.uint64), self.spec)
                )
                name = shard_filename(shard, self.spec)
                data = (mesh_dir / name).read_bytes()
                start, stop = shard_entries(data, self.spec, name)[sid]
                self.locations[sid] = (name, minishard, start, stop)
                raw = decode_chunk_data(data[start:stop], self.spec, f"manifest {sid}")
            self.manifests[sid] = MultiLodManifest.decode(raw, f"of {sid}")

    def index_requests(self, sid: int) -> set[Request]:
        """The manifest (unsharded) or the shard index entry, minishard index and
        manifest (sharded) of ``sid``."""
        if self.spec is None:
            return {Request("GET", f"{sid}.index", None)}
        name, minishard, start, stop = self.locations[sid]
        entry = (self.mesh_dir / name).read_bytes()[16 * minishard : 16 * minishard + 16]
        lo, hi = (int.from_bytes(entry[i : i + 8], "little") for i in (0, 8))
        size = self.spec.shard_index_size
        return {
            Request("GET", name, byte_range(16 * minishard, 16 * minishard + 16)),
            Request("GET", name, byte_range(lo + size, hi + size)),
            Request("GET", name, byte_range(start, stop)),
        }

    def fragments(self, sid: int, lod: int) -> list[bytes]:
        """The Draco bytes of the non-empty fragments of ``sid``'s LOD ``lod``."""
        m = self.manifests[sid]
        if self.spec is None:
            data, base = (self.mesh_dir / str(sid)).read_bytes(), 0
        else:
            name, _, start, _ = self.locations[sid]
            data, base = (self.mesh_dir / name).read_bytes(), start - m.data_size
        return [data[base + a : base + b] for a, b in fragment_ranges(m, range(lod, lod + 1))]

    def fragment_requests(self, sid: int, lods: range) -> list[Request]:
        m = self.manifests[sid]
        if self.spec is None:
            return [Request("GET", str(sid), byte_range(a, b)) for a, b in fragment_ranges(m, lods)]
        # Sharded: the fragments are stored right in front of the manifest.
        name, _, start, _ = self.locations[sid]
        base = start - m.data_size
        return [
            Request("GET", name, byte_range(base + a, base + b))
            for a, b in fragment_ranges(m, lods)
        ]


def check_requests(r: MeshRender, layout: Layout, lods: dict[int, range]) -> None:
    """Each selected segment's index reads and each fragment of ``lods[id]`` exactly
    once, nothing else (so nothing of the deselected segment)."""
    expected_index = set().union(*(layout.index_requests(s) for s in SELECTED))
    expected_fragments = [f for s in SELECTED for f in layout.fragment_requests(s, lods[s])]
    index = [q for q in r.requests if q in expected_index]
    fragments = [q for q in r.requests if q not in expected_index]
    assert set(index) == expected_index
    assert sorted(fragments) == sorted(expected_fragments), (
        f"unexpected: {sorted(set(fragments) - set(expected_fragments))[:5]}, "
        f"missing: {sorted(set(expected_fragments) - set(fragments))[:5]}"
    )


def sort_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


def check_decoded(ng: NeuroglancerClient, layout: Layout, lods: dict[int, range]) -> None:
    """The client decoded every fragment of ``lods[id]`` (a fragment it fails to decode
    is silently replaced by its parent's octant): per segment and LOD, the same number
    of fragments and triangles, and the same quantized vertices (as a multiset: the
    client's decoder sorts triangles by octant) as DracoPy gets from the same bytes."""
    import DracoPy

    held: dict[tuple[int, int], list[MeshFragment]] = {}
    for f in ng.mesh_fragments():
        held.setdefault((f.segment, f.lod), []).append(f)
    assert {s for s, _ in held} <= set(SELECTED)
    for sid in SELECTED:
        for lod in lods[sid]:
            ours = [DracoPy.decode(b) for b in layout.fragments(sid, lod)]
            theirs = held.get((sid, lod), [])
            what = f"segment {sid}, LOD {lod}"
            assert len(theirs) == len(ours), f"{what}: {len(theirs)} of {len(ours)} fragments"
            assert sum(f.triangles for f in theirs) == sum(len(m.faces) for m in ours), what
            mine = np.concatenate([np.asarray(m.points).reshape(-1, 3) for m in ours])
            got = np.concatenate([f.positions for f in theirs])
            np.testing.assert_array_equal(sort_rows(got), sort_rows(mine.astype(np.uint32)), what)


# -- what the client should draw --------------------------------------------------------


def pixel_centres(r: MeshRender) -> tuple[np.ndarray, np.ndarray]:
    """World x (columns) and y (rows) of the pixel centres, nm."""
    h, w = r.foreground.shape
    xs = r.centre[0] + (np.arange(w) + 0.5 - w / 2) * r.pixel_size
    ys = r.centre[1] + (np.arange(h) + 0.5 - h / 2) * r.pixel_size
    return xs, ys


def raster(mesh: Mesh, r: MeshRender) -> np.ndarray:
    """The pixels whose centre lies in the z projection of some triangle of ``mesh``
    (edges included), triangles taken a batch at a time over a window of their size."""
    h, w = r.foreground.shape
    # Pixel coordinates: pixel (column c, row r) has its centre at (c, r).
    xy = (mesh.vertices[:, :2].astype(np.float64) - np.array(r.centre[:2])) / r.pixel_size
    tri = (xy + np.array([w / 2 - 0.5, h / 2 - 0.5]))[mesh.faces]  # (m, 3, 2)
    lo = np.clip(np.ceil(tri.min(axis=1)), 0, [w, h]).astype(np.int64)  # (m, 2)
    hi = np.clip(np.floor(tri.max(axis=1)) + 1, 0, [w, h]).astype(np.int64)
    extent = (hi - lo).max(axis=1)
    out = np.zeros(h * w, bool)
    order = np.argsort(extent)
    for batch in np.array_split(order, max(1, len(order) // 256)):
        k = int(extent[batch].max(initial=0))
        if k <= 0:
            continue
        steps = np.arange(k)
        px = lo[batch, 0, None, None] + steps[None, None, :]  # (b, 1, k)
        py = lo[batch, 1, None, None] + steps[None, :, None]  # (b, k, 1)
        v = tri[batch][:, :, :, None, None]  # (b, corner, xy, 1, 1)
        ax, ay, bx, by, cx, cy = (v[:, i, j] for i in range(3) for j in range(2))
        e0 = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
        e1 = (cx - bx) * (py - by) - (cy - by) * (px - bx)
        e2 = (ax - cx) * (py - cy) - (ay - cy) * (px - cx)
        inside = ((e0 >= 0) & (e1 >= 0) & (e2 >= 0)) | ((e0 <= 0) & (e1 <= 0) & (e2 <= 0))
        inside &= (px < hi[batch, 0, None, None]) & (py < hi[batch, 1, None, None])
        out[np.broadcast_to(py * w + px, inside.shape)[inside]] = True
    return out.reshape(h, w)


def footprint(sid: int, r: MeshRender, variant: Variant) -> np.ndarray:
    """The pixels whose centre lies over a voxel of ``sid`` (any z)."""
    column = (labels() == sid).any(axis=2)  # (x, y)
    xs, ys = pixel_centres(r)
    ix = np.floor(xs / RESOLUTION[0]).astype(int) - variant.voxel_offset[0]
    iy = np.floor(ys / RESOLUTION[1]).astype(int) - variant.voxel_offset[1]
    ok_x = (ix >= 0) & (ix < SHAPE[0])
    ok_y = (iy >= 0) & (iy < SHAPE[1])
    out = column[np.clip(ix, 0, SHAPE[0] - 1)][:, np.clip(iy, 0, SHAPE[1] - 1)].T
    return out & ok_y[:, None] & ok_x[None, :]


def grow(mask: np.ndarray, n: int) -> np.ndarray:
    """``mask`` dilated by an (2n+1)-pixel square."""
    out = mask.copy()
    for _ in range(n):
        step = out.copy()
        step[1:] |= out[:-1]
        step[:-1] |= out[1:]
        step[:, 1:] |= step[:, :-1].copy()
        step[:, :-1] |= step[:, 1:].copy()
        out = step
    return out


def shrink(mask: np.ndarray, n: int) -> np.ndarray:
    return ~grow(~mask, n)


def assert_within(drawn: np.ndarray, expected: np.ndarray, tolerance: int, what: str) -> None:
    """``drawn`` is ``expected`` up to ``tolerance`` pixels at its boundary."""
    extra = drawn & ~grow(expected, tolerance)
    lacking = shrink(expected, tolerance) & ~drawn
    assert not extra.any(), f"{what}: {extra.sum()} pixels drawn outside"
    assert not lacking.any(), f"{what}: {lacking.sum()} pixels not drawn inside"


def segment_pixels(r: MeshRender) -> dict[int, np.ndarray]:
    """The pixels of each segment's colour (shading scales it: the dominant channel)."""
    rgb = r.image[:, :, :3].astype(np.int16)
    out = {}
    for sid, c in CHANNEL.items():
        others = np.delete(rgb, c, axis=2).max(axis=2)
        out[sid] = r.foreground & (rgb[:, :, c] > 2 * others)
    return out


def show(ng: NeuroglancerClient, path: Path, variant: Variant, **options: Any) -> MeshRender:
    r = ng.show_meshes(
        ng.url(path),
        SELECTED,
        mesh_dir=path / "mesh",
        segment_colors=COLOURS,
        **variant.view(),
        **options,
    )
    assert ng.layer_error("seg") is None
    assert ng.client_errors() == []
    return r


# -- tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
def test_meshes_requested_and_drawn(
    ng: NeuroglancerClient, written: Callable[[str], Path], name: str
) -> None:
    variant = VARIANTS[name]
    path = served(ng, written, name)
    layout = Layout(path / "mesh", variant.sharding)
    assert all(m.num_lods >= 3 for m in layout.manifests.values())  # a real multi-LOD test

    # The client's default detail cutoff (1) at 1/4 voxel per pixel: every LOD, down to 0.
    r = show(ng, path, variant)
    lods = {s: range(layout.manifests[s].num_lods) for s in SELECTED}
    check_requests(r, layout, lods)
    check_decoded(ng, layout, lods)

    pixels = segment_pixels(r)
    src = meshes.open(precomputed.open(f"file://{path}"))
    for sid in SELECTED:
        assert_within(pixels[sid], raster(src.get(sid, lod=0), r), 1, f"segment {sid}, LOD 0")
        # Marching cubes with a half-voxel error bound: within a voxel of the labels.
        assert_within(
            pixels[sid], footprint(sid, r, variant), round(RESOLUTION[0]), f"segment {sid}"
        )
    # The box's faces are exact, so is its rectangle, but for its corners: marching
    # cubes bevels the box's edges along z within the voxel at each corner.
    rows, cols = r.box_pixels(*(variant.nm(v) for v in BOX_VOXELS))
    expected = np.zeros_like(r.foreground)
    expected[rows, cols] = True
    care = np.ones_like(expected)
    v = round(RESOLUTION[0] / r.pixel_size)  # a voxel, in pixels
    for row in (rows.start, rows.stop):
        for col in (cols.start, cols.stop):
            care[row - v : row + v, col - v : col + v] = False
    wrong = (pixels[BOX] != expected) & care
    assert not wrong.any(), (
        f"{wrong.sum()} pixels differ from the box's rectangle {rows}, {cols}; "
        f"first at (row, column) {np.argwhere(wrong)[0].tolist()}"
    )
    assert not pixels[OTHER].any() and not r.foreground[footprint(OTHER, r, variant)].any()
    assert not (r.foreground & ~pixels[BOX] & ~pixels[BLOB]).any(), "stray pixels"

    got = ng.segment_properties("seg", [BOX, BLOB, OTHER, 12345])
    assert got["ids"] == [OTHER, BOX, BLOB]  # ours are sorted as written
    assert got["labels"] == {
        OTHER: "other box #box",
        BOX: "box #box #selected",
        BLOB: "blob #round #selected",
        12345: None,
    }
    by_id = {p["id"]: p for p in got["properties"]}
    assert by_id["label"]["values"] == ["other box", "box", "blob"]
    assert by_id["note"]["type"] == "description"
    assert by_id["note"]["values"] == ["not shown", "a box", "über 2^32"]
    assert by_id["tags"]["values"] == [["box"], ["box", "selected"], ["round", "selected"]]
    assert by_id["weight"]["values"] == [3072.0, 10240.0, 11472.5]


@pytest.mark.parametrize("name", ["unsharded", "sharded-gzip"])
def test_coarsest_lod_at_the_largest_detail_cutoff(
    ng: NeuroglancerClient, written: Callable[[str], Path], name: str
) -> None:
    variant = VARIANTS[name]
    path = served(ng, written, name)
    layout = Layout(path / "mesh", variant.sharding)
    r = show(ng, path, variant, mesh_render_scale=MESH_RENDER_SCALE_RANGE[1])
    top = {s: layout.manifests[s].num_lods - 1 for s in SELECTED}
    coarsest = {s: range(top[s], top[s] + 1) for s in SELECTED}
    check_requests(r, layout, coarsest)
    check_decoded(ng, layout, coarsest)
    assert all(len(layout.fragment_requests(s, range(top[s], top[s] + 1))) == 1 for s in SELECTED)

    pixels = segment_pixels(r)
    src = meshes.open(precomputed.open(f"file://{path}"))
    for sid in SELECTED:
        coarse = raster(src.get(sid, lod=top[sid]), r)
        assert_within(pixels[sid], coarse, 1, f"segment {sid}, LOD {top[sid]}")
        fine = raster(src.get(sid, lod=0), r)
        assert (coarse ^ fine).sum() > 100, "the coarsest LOD looks like LOD 0"
    assert not (r.foreground & ~pixels[BOX] & ~pixels[BLOB]).any(), "stray pixels"

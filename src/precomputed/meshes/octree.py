"""Multi-resolution decomposition of one segment's meshes into octree fragments.

Given one mesh per level of detail (finest first) in *stored model* coordinates, this
module plans the octree (origin, LOD 0 node shape, number of LODs), cuts each LOD's mesh
on the node grid — and for LOD > 0 also on the grid of its children, so that no triangle
of a fragment crosses the 2x2x2 partition Neuroglancer draws partially — quantizes each
fragment's vertices relative to its node, Draco-encodes them and builds the manifest.

Rules kept (Neuroglancer's src/datasource/precomputed/meshes.md and neuroglancer_draco.cc):

- nodes of each LOD sorted in Morton (z-curve) order of their grid positions;
- every parent of a node of LOD L-1 is a node of LOD L (with empty data if need be);
- a position ``x`` in ``[0, 2**bits - 1]`` means ``node origin + x / (2**bits - 1) *
  node size``; vertices on a node's faces quantize to exactly ``0`` or ``2**bits - 1``,
  so fragments sharing a face stitch exactly; vertices on a partition plane of a LOD > 0
  fragment quantize to ``2**(bits - 1)``, the value Neuroglancer's decoder counts as
  belonging to both halves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import sharding as sh
from .draco import encode_fragment
from .manifest import MAX_LODS, MultiLodManifest

__all__ = ["OctreePlan", "plan_octree", "cut_on_grid", "encode_lods"]


@dataclass(frozen=True)
class OctreePlan:
    """Octree of one segment: LOD 0 node shape and grid origin (stored model units)."""

    origin: np.ndarray
    chunk_shape: np.ndarray
    num_lods: int


def plan_octree(
    vmin: np.ndarray, vmax: np.ndarray, chunk: float | np.ndarray, max_lods: int
) -> OctreePlan:
    """Origin at ``floor(vmin)``; LOD 0 nodes of ``chunk``; as many LODs as it takes for
    one node to cover the mesh (at most ``max_lods``)."""
    origin = np.floor(np.asarray(vmin, np.float64))
    chunk_shape = np.broadcast_to(np.asarray(chunk, np.float64), (3,)).copy()
    extent = np.maximum(np.asarray(vmax, np.float64) - origin, 1e-9)
    nodes = np.ceil(extent / chunk_shape).max()
    num_lods = 1 + max(0, math.ceil(math.log2(max(1.0, float(nodes)))))
    return OctreePlan(origin, chunk_shape, int(min(num_lods, max_lods, MAX_LODS)))


def cut_on_grid(
    vertices: np.ndarray, faces: np.ndarray, origin: np.ndarray, size: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split triangles at every plane ``origin + k * size`` (each axis) so that none
    crosses one. Returns ``(vertices, faces, cell)``: ``cell`` is each face's ``(m, 3)``
    grid cell. Vertices created on a plane lie exactly on it; the copies made for the two
    triangles sharing a cut edge are identical (computed from the edge's ends in the same
    order), so Draco's encoder merges them."""
    v = np.asarray(vertices, np.float64).reshape(-1, 3)
    f = np.asarray(faces, np.int64).reshape(-1, 3)
    o = np.asarray(origin, np.float64)
    s = np.asarray(size, np.float64)
    for axis in range(3):
        while f.size:
            c = v[f, axis]  # (m, 3)
            lo, hi = c.min(axis=1), c.max(axis=1)
            k = np.floor((lo - o[axis]) / s[axis]) + 1
            plane = o[axis] + k * s[axis]
            plane = np.where(plane <= lo, plane + s[axis], plane)
            cross = (lo < plane) & (hi > plane)
            if not cross.any():
                break
            v, new_faces = _split(v, f[cross], plane[cross], axis)
            f = np.concatenate([f[~cross], new_faces])
    if not f.size:
        return v, f.reshape(0, 3), np.zeros((0, 3), np.int64)
    centroid = v[f].mean(axis=1)
    cell = np.floor((centroid - o) / s).astype(np.int64)
    return v, f, cell


def _split(
    v: np.ndarray, f: np.ndarray, plane: np.ndarray, axis: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split triangles ``f`` (each crossing its ``plane``) into pieces on either side."""
    d = v[f, axis] - plane[:, None]  # (m, 3), some < 0 and some > 0 in each row
    side = np.sign(d)
    m = f.shape[0]
    rows = np.arange(m)
    # One vertex on the plane: two triangles, cut through the opposite edge.
    on = side == 0
    one_on = on.sum(axis=1) == 1
    # Otherwise the lone vertex: the one whose side differs from the other two.
    lone = np.where(side.sum(axis=1)[:, None] * side < 0, 1, 0).argmax(axis=1)
    first = np.where(one_on, on.argmax(axis=1), lone)
    a = f[rows, first]
    b = f[rows, (first + 1) % 3]
    c = f[rows, (first + 2) % 3]
    base = v.shape[0]
    # Cut points: on edge b-c (one vertex on the plane) or on a-b and a-c (lone vertex).
    ab = _edge_points(v, a, b, plane, axis)
    ac = _edge_points(v, a, c, plane, axis)
    bc = _edge_points(v, b, c, plane, axis)
    on_idx = np.flatnonzero(one_on)
    lone_idx = np.flatnonzero(~one_on)
    n_on, n_lone = on_idx.size, lone_idx.size
    new_v = np.concatenate([bc[on_idx], ab[lone_idx], ac[lone_idx]])
    p_bc = base + np.arange(n_on)
    p_ab = base + n_on + np.arange(n_lone)
    p_ac = base + n_on + n_lone + np.arange(n_lone)
    ao, bo, co = a[on_idx], b[on_idx], c[on_idx]
    al, bl, cl = a[lone_idx], b[lone_idx], c[lone_idx]
    pieces = [
        np.stack([ao, bo, p_bc], axis=1),
        np.stack([ao, p_bc, co], axis=1),
        np.stack([al, p_ab, p_ac], axis=1),
        np.stack([p_ab, bl, cl], axis=1),
        np.stack([p_ab, cl, p_ac], axis=1),
    ]
    return np.concatenate([v, new_v]), np.concatenate(pieces)


def _edge_points(
    v: np.ndarray, i: np.ndarray, j: np.ndarray, plane: np.ndarray, axis: int
) -> np.ndarray:
    """Where each edge ``(i, j)`` meets its plane, computed from the lower-numbered end
    so both triangles of a shared edge get the same point; exactly on the plane."""
    lo = np.minimum(i, j)
    hi = np.maximum(i, j)
    p, q = v[lo], v[hi]
    denom = q[:, axis] - p[:, axis]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(denom != 0, (plane - p[:, axis]) / denom, 0.0)
    out = p + t[:, None] * (q - p)
    out[:, axis] = plane
    return out


def _compact(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The vertices ``f`` uses, faces re-indexed (the identical copies made on cut edges
    are merged by Draco's encoder, which deduplicates positions)."""
    used, inverse = np.unique(f.reshape(-1), return_inverse=True)
    return v[used], inverse.reshape(-1, 3)


def _quantize(local: np.ndarray, bits: int, partitioned: bool) -> np.ndarray:
    """Positions in ``[0, 1]`` of the node to integers in ``[0, 2**bits - 1]``."""
    top = (1 << bits) - 1
    q = local * top
    if partitioned:
        mid = 1 << (bits - 1)
        q = np.where(np.abs(q - (mid - 0.5)) < 0.05, mid, q)
    return np.clip(np.floor(q + 0.5), 0, top).astype(np.int32)


def _morton(pos: np.ndarray, bits: int) -> np.ndarray:
    """Z-curve order keys: x, y, z bits interleaved (z most significant at each level)."""
    return sh.compressed_morton_codes(pos, (bits, bits, bits))


def encode_lods(
    lods: list[tuple[np.ndarray, np.ndarray]], plan: OctreePlan, bits: int, draco_level: int = 7
) -> tuple[MultiLodManifest, bytes]:
    """Manifest and fragment data of one segment from its meshes per LOD (stored model
    coordinates, finest first; ``len(lods) == plan.num_lods``)."""
    positions: list[np.ndarray] = []
    sizes: list[np.ndarray] = []
    data: list[bytes] = []
    child_nodes = np.zeros((0, 3), np.int64)
    for lod, (verts, faces) in enumerate(lods):
        node_size = plan.chunk_shape * float(1 << lod)
        cut_size = node_size if lod == 0 else node_size / 2
        v, f, cell = cut_on_grid(verts, faces, plan.origin, cut_size)
        node = cell if lod == 0 else cell // 2
        keep = (node >= 0).all(axis=1)  # (vertices below the origin cannot occur)
        f, node = f[keep], node[keep]
        nodes = (
            np.unique(np.concatenate([node, child_nodes // 2]), axis=0)
            if lod
            else np.unique(node, axis=0)
        )
        nbits = max(1, int(nodes.max(initial=0)).bit_length())
        nodes = nodes[np.argsort(_morton(nodes, nbits), kind="stable")]
        # Faces grouped by node, nodes in Morton order.
        key = _morton(node, nbits)
        node_keys = _morton(nodes, nbits)
        order = np.argsort(key, kind="stable")
        key, f = key[order], f[order]
        starts = np.searchsorted(key, node_keys, side="left")
        stops = np.searchsorted(key, node_keys, side="right")
        lod_sizes = np.zeros(len(nodes), np.uint32)
        for k in range(len(nodes)):
            if stops[k] == starts[k]:
                continue
            pv, pf = _compact(v, f[starts[k] : stops[k]])
            local = (pv - plan.origin - nodes[k] * node_size) / node_size
            q = _quantize(local, bits, lod > 0)
            t = q[pf]  # slivers of the cuts may collapse to a point or edge: drop them
            solid = ~(
                (t[:, 0] == t[:, 1]).all(1)
                | (t[:, 1] == t[:, 2]).all(1)
                | (t[:, 0] == t[:, 2]).all(1)
            )
            if not solid.any():
                continue
            blob = encode_fragment(q, pf[solid], bits, draco_level)
            lod_sizes[k] = len(blob)
            data.append(blob)
        positions.append(nodes.astype(np.uint32))
        sizes.append(lod_sizes)
        child_nodes = nodes
    manifest = MultiLodManifest(
        plan.chunk_shape.astype(np.float32),
        plan.origin.astype(np.float32),
        np.array([float(1 << k) for k in range(len(lods))], np.float32),
        np.zeros((len(lods), 3), np.float32),
        tuple(positions),
        tuple(sizes),
    )
    return manifest, b"".join(data)

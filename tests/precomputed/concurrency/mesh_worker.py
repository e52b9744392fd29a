"""A writer replacing a sharded mesh shard and a checking mesh reader, run as processes by
test_mesh_races.py.

Version ``v`` of segment ``s`` is ``s + 1 + v % 5`` cubes in a row (so every version
changes the sizes, and so the offsets, of the manifests and fragments in the one shard);
a read must equal one of the versions exactly (decoded meshes of each version are
computed by the test and passed in).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from precomputed import meshes
from precomputed.errors import CorruptDataError
from precomputed.kvstore import open_kvstore
from precomputed.meshes import LodOptions, Mesh, MultiLodWriter

IDS = [3, 5, 8, 13]
VERSIONS = 5
SHARDING = {
    "@type": "neuroglancer_uint64_sharded_v1",
    "preshift_bits": 0,
    "hash": "identity",
    "minishard_bits": 1,
    "shard_bits": 0,
    "minishard_index_encoding": "gzip",
    "data_encoding": "raw",
}
_CUBE_V = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], np.float32)
_CUBE_F = np.array(
    [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
     [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]],
    np.uint32,
)  # fmt: skip


def mesh_of(segment: int, version: int) -> Mesh:
    """``segment + 1 + version`` unit cubes (scaled by 3 nm) along x."""
    n = segment + 1 + version % VERSIONS
    v = np.concatenate([_CUBE_V + [2 * k, 0, 0] for k in range(n)]) * 3
    f = np.concatenate([_CUBE_F + 8 * k for k in range(n)])
    return Mesh(v.astype(np.float32), f)


def write_version(url: str, version: int, write_info: bool = True) -> None:
    """Version ``version`` of every segment into the mesh directory ``url`` (one shard
    rewritten, conditionally)."""
    w = MultiLodWriter(
        open_kvstore(url),
        "",
        resolution=(1, 1, 1),
        sharding=SHARDING,
        options=LodOptions(chunk_voxels=4.0, max_lods=2, lod_reduction=1),
        write_info=write_info,
    )
    for s in IDS:
        w.put(s, mesh_of(s, version))
    w.close()


def replace_repeatedly(url: str, count: int, results: Any) -> None:
    errors: list[str] = []
    try:
        for k in range(count):
            try:
                write_version(url, k, write_info=False)
            except Exception as e:  # reported: the test fails on any
                errors.append(f"version {k}: {type(e).__name__}: {e}")
    finally:
        results.put({"who": "writer", "errors": errors, "versions": count})


def _key(m: Mesh) -> tuple[bytes, bytes]:
    return np.asarray(m.vertices, np.float32).tobytes(), np.asarray(m.faces, np.uint32).tobytes()


def read_until(url: str, stop: Any, expected: dict[tuple[int, int], set[tuple[bytes, bytes]]], results: Any) -> None:
    """Fetch meshes (both LODs, one source kept with its cached manifests, and fresh
    sources) until ``stop``; every mesh must be one version of its segment."""
    reads = 0
    wrong: list[str] = []
    corrupt: list[str] = []
    other: list[str] = []
    kept = meshes.open(url)
    try:
        while not stop.is_set():
            src = kept if reads % 3 else meshes.open(url)
            lod = -1 if reads % 2 else 0
            try:
                got = src.get_many(IDS, lod)
            except CorruptDataError as e:
                corrupt.append(str(e))
                continue
            except Exception as e:
                other.append(f"{type(e).__name__}: {e}")
                continue
            finally:
                reads += 1
            for s, m in got.items():
                if _key(m) not in expected[(s, lod)]:
                    wrong.append(f"segment {s}, lod {lod}: {m.num_vertices} vertices, of no version")
            time.sleep(0)
    finally:
        results.put(
            {"who": "reader", "reads": reads, "wrong": wrong, "corrupt": corrupt, "other": other}
        )

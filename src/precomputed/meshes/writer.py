"""Writing multi-resolution meshes: per segment LODs, the mesh ``info``, the volume link.

- :class:`MultiLodWriter` — encode meshes (nm) into a mesh directory, unsharded
  (``<id>`` data then ``<id>.index``) or sharded (all shards written once, by
  :class:`~precomputed.chunkstore.ShardedIdStore`, on :meth:`MultiLodWriter.close`);
- :func:`write` — generate meshes of a volume (or array) and write them, with the mesh
  ``info`` and the volume ``info``'s ``mesh`` member (conditional write);
- :func:`remesh` — regenerate the meshes of some segments (e.g. after a label edit) into
  the volume's existing multi-resolution mesh directory, deleting those now empty.

Levels of detail: LOD 0 is the generated mesh; each coarser LOD simplifies the previous
one (zmesh, ``lod_reduction`` times fewer triangles, error bound doubling per LOD). Octree
nodes of LOD 0 are ``chunk_voxels`` voxels wide and double per LOD, until one node covers
the segment (see :mod:`.octree`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..chunkstore import ShardedIdStore
from ..errors import InvalidArgumentError, NotFoundError, UnimplementedError
from ..info_members import read_json, resolve_subdir, set_info_member, volume_location
from ..kvstore import KvStore, open_kvstore
from ..sharding import ShardingSpec
from .generate import Progress, generate, import_zmesh
from .info import MULTILOD_TYPE, MeshInfo, parse_mesh_info
from .manifest import MultiLodManifest
from .mesh import Mesh
from .octree import encode_lods, plan_octree

__all__ = [
    "LodOptions",
    "MultiLodWriter",
    "MeshWriteStats",
    "write",
    "remesh",
    "choose_mesh_sharding",
]


@dataclass(frozen=True)
class LodOptions:
    """How meshes are split into levels of detail and encoded."""

    #: Edge of a LOD 0 octree node, in voxels (stored model units).
    chunk_voxels: float = 64.0
    #: Most levels of detail per segment.
    max_lods: int = 8
    #: Each coarser LOD has about this many times fewer triangles.
    lod_reduction: int = 4
    #: Simplification error of LOD 1 in nm (doubled per further LOD); default 1 voxel.
    lod_error: float | None = None
    #: ``vertex_quantization_bits``: 10 or 16.
    quantization_bits: int = 16
    #: Draco compression level (0-10).
    draco_level: int = 7

    def __post_init__(self) -> None:
        if self.quantization_bits not in (10, 16):
            raise InvalidArgumentError(
                f"quantization_bits must be 10 or 16, got {self.quantization_bits}"
            )
        if not self.chunk_voxels > 0 or not 1 <= self.max_lods <= 32 or self.lod_reduction < 1:
            raise InvalidArgumentError(f"invalid LOD options: {self}")


@dataclass
class MeshWriteStats:
    """What a write did."""

    segments_written: int = 0
    segments_deleted: int = 0
    fragments: int = 0
    bytes_written: int = 0
    shards_written: int = 0
    segment_ids: list[int] = field(default_factory=list)


def choose_mesh_sharding(num_segments: int) -> ShardingSpec:
    """Sharding for about ``num_segments`` meshes: murmurhash, up to ~4096 segments per
    shard and ~64 per minishard, raw data (fragments are Draco), gzip minishard indices."""
    n = max(1, int(num_segments))
    shard_bits = max(0, math.ceil(math.log2(n / 4096))) if n > 4096 else 0
    per_shard = n / (1 << shard_bits)
    minishard_bits = max(0, min(12, math.ceil(math.log2(per_shard / 64)))) if per_shard > 64 else 0
    return ShardingSpec(
        preshift_bits=0,
        hash="murmurhash3_x86_128",
        minishard_bits=minishard_bits,
        shard_bits=shard_bits,
        minishard_index_encoding="gzip",
        data_encoding="raw",
    )


def _simplifier() -> Any:
    return import_zmesh().Mesher((1.0, 1.0, 1.0))


def lod_meshes(mesh: Mesh, count: int, options: LodOptions, resolution: np.ndarray) -> list[Mesh]:
    """``count`` meshes, finest first: ``mesh`` then ever simpler ones (nm)."""
    out = [mesh]
    if count <= 1 or not mesh:
        return out + [mesh] * (count - 1)
    import zmesh

    simplifier = _simplifier()
    base = float(resolution.max()) if options.lod_error is None else float(options.lod_error)
    # zmesh's simplifier spans at most 2**20 units: work relative to the mesh's corner,
    # in units that keep the spread below that.
    corner = mesh.vertices.min(axis=0).astype(np.float64)
    spread = float((mesh.vertices.max(axis=0) - corner).max())
    unit = max(1.0, spread / (1 << 19))
    v = (mesh.vertices - corner) / unit
    f = mesh.faces
    for lod in range(1, count):
        target = max(4, f.shape[0] // options.lod_reduction)
        if f.shape[0] > target:
            simple = simplifier.simplify(
                zmesh.Mesh(v.astype(np.float32), f.astype(np.uint32), None),
                reduction_factor=options.lod_reduction,
                max_error=base * (1 << (lod - 1)) / unit,
            )
            sv = np.asarray(simple.vertices, np.float64)
            if len(simple.faces) and np.isfinite(sv).all():  # else keep the finer mesh
                v, f = sv, np.asarray(simple.faces, np.uint32)
        out.append(Mesh(v * unit + corner, f))
    return out


class MultiLodWriter:
    """Writes ``neuroglancer_multilod_draco`` meshes into the directory ``prefix`` of
    ``kvstore``. ``transform`` (3x4, stored model -> nm) is usually ``diag(resolution)``:
    the stored model is then the volume's voxel grid. Sharded output is kept in memory
    (encoded) until :meth:`close`, which writes each shard once, merged with what the
    shards already hold. The mesh ``info`` is written by :meth:`close` too."""

    def __init__(
        self,
        kvstore: KvStore,
        prefix: str,
        *,
        resolution: Sequence[float],
        sharding: ShardingSpec | Mapping[str, Any] | str | None = None,
        options: LodOptions | None = None,
        transform: Sequence[float] | None = None,
        extra_info: Mapping[str, Any] | None = None,
        write_info: bool = True,
    ) -> None:
        self.kvstore = kvstore
        self.prefix = prefix
        self.options = options or LodOptions()
        self.resolution = np.array(resolution, np.float64).reshape(3)
        if transform is None:
            t = np.zeros((3, 4))
            t[:, :3] = np.diag(self.resolution)
        else:
            t = np.array(transform, np.float64).reshape(3, 4)
        if abs(np.linalg.det(t[:, :3])) < 1e-12:
            raise InvalidArgumentError(f"the mesh transform {t.tolist()} is not invertible")
        self.transform = t
        self._inverse = np.linalg.inv(t[:, :3])
        self.sharding: ShardingSpec | str | None = (
            ShardingSpec.from_json(sharding) if isinstance(sharding, Mapping) else sharding
        )
        if isinstance(self.sharding, str) and self.sharding != "auto":
            raise InvalidArgumentError(f'sharding must be a spec, "auto" or None, got {sharding!r}')
        self.extra_info = dict(extra_info or {})
        self.write_info = write_info
        self.stats = MeshWriteStats()
        self._pending: dict[int, tuple[bytes, bytes] | None] = {}

    def encode(self, mesh: Mesh) -> tuple[MultiLodManifest, bytes]:
        """Manifest and fragment data of one segment's mesh (nm)."""
        opts = self.options
        stored = (mesh.vertices.astype(np.float64) - self.transform[:, 3]) @ self._inverse.T
        plan = plan_octree(stored.min(axis=0), stored.max(axis=0), opts.chunk_voxels, opts.max_lods)
        meshes = lod_meshes(mesh, plan.num_lods, opts, self.resolution)
        lods = []
        for m in meshes:
            lods.append(
                ((m.vertices.astype(np.float64) - self.transform[:, 3]) @ self._inverse.T, m.faces)
            )
        lo = np.min([v.min(axis=0) for v, _ in lods], axis=0)
        hi = np.max([v.max(axis=0) for v, _ in lods], axis=0)
        plan = plan_octree(lo, hi, opts.chunk_voxels, opts.max_lods)
        plan = type(plan)(plan.origin, plan.chunk_shape, len(lods))
        return encode_lods(lods, plan, opts.quantization_bits, opts.draco_level)

    def put(self, segment_id: int, mesh: Mesh) -> None:
        """Write (unsharded) or queue (sharded) one segment's mesh; an empty mesh
        deletes the segment's mesh."""
        sid = int(segment_id)
        if not mesh:
            self.delete(sid)
            return
        if not np.isfinite(mesh.vertices).all():
            raise InvalidArgumentError(f"the mesh of segment {sid} has non-finite vertices")
        manifest, data = self.encode(mesh)
        self.stats.fragments += sum(int((s > 0).sum()) for s in manifest.fragment_sizes)
        blob = manifest.encode()
        self.stats.segments_written += 1
        self.stats.segment_ids.append(sid)
        self.stats.bytes_written += len(blob) + len(data)
        if self.sharding is None:
            # Data first: a reader never sees a manifest pointing at missing fragments.
            self.kvstore.write(f"{self.prefix}{sid}", data)
            self.kvstore.write(f"{self.prefix}{sid}.index", blob)
        else:
            self._pending[sid] = (blob, data)

    def delete(self, segment_id: int) -> None:
        sid = int(segment_id)
        self.stats.segments_deleted += 1
        if self.sharding is None:
            self.kvstore.delete_many([f"{self.prefix}{sid}.index", f"{self.prefix}{sid}"])
        else:
            self._pending[sid] = None

    def info(self) -> MeshInfo:
        spec = self.sharding if isinstance(self.sharding, ShardingSpec) else None
        return MeshInfo(
            MULTILOD_TYPE,
            self.options.quantization_bits,
            tuple(float(x) for x in self.transform.reshape(-1)),
            1.0,
            spec,
            dict(self.extra_info),
        )

    def close(self) -> MeshWriteStats:
        """Write the shards (sharded) and the mesh ``info``."""
        if self.sharding == "auto":
            self.sharding = choose_mesh_sharding(len(self._pending))
        if isinstance(self.sharding, ShardingSpec) and self._pending:
            store = ShardedIdStore(self.kvstore, self.prefix, self.sharding)
            values = {i: None if v is None else v[0] for i, v in self._pending.items()}
            prefixes = {i: v[1] for i, v in self._pending.items() if v is not None}
            got = store.commit(values, prefixes=prefixes, prefix_size=_fragment_bytes)
            self.stats.shards_written += got.groups_written
            self._pending.clear()
        if self.write_info:
            self.kvstore.write(self.prefix + "info", self.info().dumps())
        return self.stats


def _fragment_bytes(segment_id: int, manifest: bytes) -> int:
    """Bytes of fragment data stored in front of a sharded manifest."""
    return MultiLodManifest.decode(manifest, f"of segment {segment_id}").data_size


def _target(
    source: Any, output: Any, mesh_dir: str | None
) -> tuple[KvStore, str, KvStore | None, str, str]:
    """(mesh store, mesh prefix, volume store or None, volume path, mesh_dir member)."""
    if hasattr(source, "kvstore") and hasattr(source, "info") and output is None:
        kv, path = volume_location(source)
        name = mesh_dir or read_json(kv, path + "info").get("mesh") or "mesh"
        mkv, prefix = resolve_subdir(kv, path, name, "mesh")
        return mkv, prefix, kv, path, name
    if output is None:
        raise InvalidArgumentError(
            "meshes of an array need output= (the mesh directory URL or a KvStore)"
        )
    if isinstance(output, KvStore):
        return output, "", None, "", ""
    if isinstance(output, tuple):
        return output[0], output[1], None, "", ""
    return open_kvstore(str(output).rstrip("/") + "/"), "", None, "", ""


def _xyz(values: Sequence[float]) -> tuple[float, float, float]:
    got = [float(v) for v in np.asarray(values, np.float64).ravel()]
    if len(got) != 3:
        raise InvalidArgumentError(f"resolution must have 3 values (nm per voxel, xyz), got {got}")
    return (got[0], got[1], got[2])


def _resolution(source: Any, resolution: Sequence[float] | None) -> tuple[float, float, float]:
    if resolution is not None:
        return _xyz(resolution)
    if hasattr(source, "resolution"):
        return _xyz(source.resolution)
    raise InvalidArgumentError("meshing an array needs its resolution (nm per voxel, xyz)")


def write(
    source: Any,
    *,
    output: Any = None,
    mesh_dir: str | None = None,
    sharding: ShardingSpec | Mapping[str, Any] | str | None = None,
    segment_ids: Sequence[int] | np.ndarray | None = None,
    region: tuple[Sequence[int], Sequence[int]] | None = None,
    resolution: Sequence[float] | None = None,
    voxel_offset: Sequence[int] | None = None,
    options: LodOptions | None = None,
    reduction_factor: int = 10,
    max_error: float | None = None,
    block_shape: Sequence[int] = (256, 256, 256),
    link: bool = True,
    progress: Progress | None = None,
) -> MeshWriteStats:
    """Generate multi-resolution meshes of ``source`` and write them.

    ``source``: a one-channel segmentation :class:`~precomputed.Volume` (meshes go to the
    directory its ``info`` names in ``"mesh"``, or ``mesh_dir``, default ``"mesh"``, and
    with ``link`` the ``mesh`` member is set conditionally) or an (x, y, z) array with
    ``resolution``/``voxel_offset`` and ``output``. ``sharding``: None (unsharded), a
    sharding spec, or ``"auto"``. ``segment_ids``/``region`` restrict the work (see
    :func:`generate`); ``progress(stage, done, total)`` reports ``"scan"``, ``"mesh"``
    (blocks) and ``"write"`` (segments) stages.
    """
    res = _resolution(source, resolution)
    mkv, prefix, vkv, vpath, name = _target(source, output, mesh_dir)
    extra = (
        {"mip": int(source.scale_index)}
        if vkv is not None and hasattr(source, "scale_index")
        else {}
    )
    writer = MultiLodWriter(
        mkv, prefix, resolution=res, sharding=sharding, options=options, extra_info=extra
    )
    count = 0
    for sid, mesh in generate(
        source,
        resolution=res,
        voxel_offset=voxel_offset,
        region=region,
        segment_ids=segment_ids,
        reduction_factor=reduction_factor,
        max_error=max_error,
        block_shape=block_shape,
        progress=progress,
    ):
        writer.put(sid, mesh)
        count += 1
        if progress is not None:
            progress("write", count, count)
    stats = writer.close()
    if link and vkv is not None:
        set_info_member(vkv, vpath, "mesh", name)
    return stats


def remesh(
    volume: Any,
    segment_ids: Iterable[int],
    *,
    region: tuple[Sequence[int], Sequence[int]] | None = None,
    options: LodOptions | None = None,
    reduction_factor: int = 10,
    max_error: float | None = None,
    block_shape: Sequence[int] = (256, 256, 256),
    progress: Progress | None = None,
) -> MeshWriteStats:
    """Regenerate the meshes of ``segment_ids`` (e.g. the labels touched by an edit) in
    the volume's existing multi-resolution mesh directory, keeping its format (sharding,
    quantization, transform); segments that no longer exist (in ``region``) lose their
    mesh. ``region`` must contain the segments whole, or their meshes are cut there."""
    kv, path = volume_location(volume)
    info_json = read_json(kv, path + "info")  # current, not as opened
    if "mesh" not in info_json:
        raise NotFoundError(f'"{kv.url}{path}info" has no "mesh" member: write meshes first')
    mkv, prefix = resolve_subdir(kv, path, info_json["mesh"], "mesh")
    raw = read_json(mkv, prefix + "info", required=False)
    if raw is None:
        raise UnimplementedError(
            f'remeshing legacy meshes ("{mkv.url}{prefix}" has no info) is not supported'
        )
    info = parse_mesh_info(raw, mkv.url + prefix + "info")
    if info.type != MULTILOD_TYPE:
        raise UnimplementedError(
            "remeshing writes multi-resolution meshes; the volume has legacy meshes"
        )
    base = options or LodOptions()
    options = LodOptions(
        chunk_voxels=base.chunk_voxels,
        max_lods=base.max_lods,
        lod_reduction=base.lod_reduction,
        lod_error=base.lod_error,
        quantization_bits=info.vertex_quantization_bits,
        draco_level=base.draco_level,
    )
    writer = MultiLodWriter(
        mkv,
        prefix,
        resolution=volume.resolution,
        sharding=info.sharding,
        options=options,
        transform=info.transform,
        write_info=False,
    )
    ids = sorted({int(i) for i in segment_ids})
    seen = set()
    for sid, mesh in generate(
        volume,
        region=region,
        segment_ids=ids,
        reduction_factor=reduction_factor,
        max_error=max_error,
        block_shape=block_shape,
        progress=progress,
    ):
        writer.put(sid, mesh)
        seen.add(sid)
    for sid in ids:
        if sid not in seen:
            writer.delete(sid)
    return writer.close()

"""Reading meshes: :func:`open` and the two mesh sources.

Every fetch goes through the volume's :class:`KvStore` batch calls, so requests of one
step are in flight together: ``get_many`` costs the same round trips as ``get``.

Round trips, cold (manifests cached afterwards):

- multi-resolution, unsharded: manifest ``<id>.index``, then one range of ``<id>`` per
  segment for the LOD asked. The coarsest LOD (``lod=-1``) is stored last, so its request
  also asks for the last :attr:`MultiLodMeshSource.SPECULATIVE_BYTES` of ``<id>`` at once:
  one round trip when they hold it.
- multi-resolution, sharded: shard index, minishard index, then the manifest; the
  coarsest LOD lies just before the manifest, and the same request reads that much more
  in front of it: three round trips.
- legacy: manifest ``<id>:0``, then the fragments.

Consistency (sharded): a manifest and the fragments it points at are read at the one
generation of their shard that the shard index lookups (``locate_many``) came from, and a
cached manifest remembers it: every later fragment read is pinned to it
(``read_ranges_pinned``). When the shard was replaced in between, no bytes of the new
version are mixed in: the cached manifests and index data of that shard are dropped and
the segment located again, up to :attr:`MultiLodMeshSource.MAX_READ_ATTEMPTS` times,
then :class:`~precomputed.errors.ConditionFailedError`. A mesh returned is always one
version a writer stored. Unsharded, ``<id>.index`` and ``<id>`` are two objects written
one after the other (data first): a fragment read whose data file no longer has the size
the manifest gives, while the manifest was replaced since it was read, is treated the same
way; a data file replaced by one of the same size, or read between a writer's two writes,
is not detected (the unsharded format has no one version of both).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from cachetools import LRUCache

from ..chunkstore import ShardedIdStore
from ..errors import (
    ConditionFailedError,
    CorruptDataError,
    GenerationChangedError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
)
from ..info_members import read_json, resolve_subdir, volume_location
from ..internal.contention import pause
from ..kvstore import Generation, KvStore, open_kvstore
from .draco import decode_fragment
from .info import LEGACY_TYPE, MULTILOD_TYPE, MeshInfo, parse_mesh_info
from .legacy import decode_legacy_fragment, maybe_gunzip, parse_legacy_manifest
from .manifest import MultiLodManifest
from .mesh import Mesh

__all__ = ["open", "MeshSource", "MultiLodMeshSource", "LegacyMeshSource"]

_U64_MAX = (1 << 64) - 1
_T = TypeVar("_T")


def _segment_id(segment_id: Any) -> int:
    if isinstance(segment_id, bool) or not isinstance(segment_id, (int, np.integer)):
        raise InvalidArgumentError(f"segment ids are integers, got {segment_id!r}")
    i = int(segment_id)
    if not 0 <= i <= _U64_MAX:
        raise InvalidArgumentError(f"segment id {i} is not in [0, 2**64)")
    return i


class MeshSource(ABC):
    """Meshes of one mesh directory. Thread-safe; manifests are cached (bounded)."""

    #: ``"neuroglancer_multilod_draco"`` or ``"neuroglancer_legacy_mesh"``.
    format: str
    #: Manifests kept in memory.
    MANIFEST_CACHE_ENTRIES = 4096

    def __init__(self, kvstore: KvStore, prefix: str, info: MeshInfo) -> None:
        self.kvstore = kvstore
        self.prefix = prefix
        self.info = info
        self._lock = threading.Lock()
        self._manifests: LRUCache[int, Any] = LRUCache(self.MANIFEST_CACHE_ENTRIES)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kvstore.url}{self.prefix}>"

    @property
    def url(self) -> str:
        return self.kvstore.url + self.prefix

    @abstractmethod
    def lods(self, segment_id: int) -> int:
        """Number of levels of detail of a segment's mesh (``NotFoundError`` if none)."""

    def get(self, segment_id: int, lod: int = 0) -> Mesh:
        """The mesh of one segment at ``lod`` (0 finest, -1 coarsest), in nm."""
        sid = _segment_id(segment_id)
        return self.get_many([sid], lod)[sid]

    def coarsest(self, segment_id: int) -> Mesh:
        """The coarsest LOD: the cheapest mesh to fetch (see the module notes)."""
        return self.get(segment_id, lod=-1)

    @abstractmethod
    def get_many(
        self, segment_ids: Sequence[int], lod: int = 0, *, missing: str = "raise"
    ) -> dict[int, Mesh]:
        """Meshes of many segments at ``lod``, fetched together. ``missing="skip"`` leaves
        out segments without a mesh instead of raising :class:`NotFoundError`; a
        segment with fewer LODs gets its coarsest when ``lod`` is past it only for
        ``lod=-1``, otherwise :class:`OutOfRangeError`."""

    def has_mesh(self, segment_ids: Sequence[int]) -> list[bool]:
        """Whether each segment has a mesh (fetches and caches their manifests)."""
        ids = [_segment_id(i) for i in segment_ids]
        return [m is not None for m in self._manifests_of(ids)]

    def invalidate(self) -> None:
        """Forget cached manifests (after the meshes were rewritten)."""
        with self._lock:
            self._manifests.clear()

    @abstractmethod
    def _manifests_of(self, ids: list[int]) -> list[Any]: ...

    def _cached(self, ids: list[int]) -> dict[int, Any]:
        with self._lock:
            return {i: self._manifests[i] for i in ids if i in self._manifests}

    def _remember(self, found: dict[int, Any]) -> None:
        with self._lock:
            self._manifests.update({i: m for i, m in found.items() if m is not None})

    @staticmethod
    def _check_missing(missing: str) -> None:
        if missing not in ("raise", "skip"):
            raise InvalidArgumentError(f'missing must be "raise" or "skip", got {missing!r}')


# ---------------------------------------------------------------------------------------
# Multi-resolution (neuroglancer_multilod_draco)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Located:
    """A manifest and where its segment's fragment data start (absolute) in ``key``;
    ``generation``: the version of ``key`` they describe (sharded), ``None`` unsharded
    (the data file is another object than the manifest, whose key and generation are
    ``index_key`` and ``index_generation``)."""

    manifest: MultiLodManifest
    key: str
    data_start: int
    generation: Generation | None = None
    index_key: str = ""
    index_generation: Generation | None = None


class _Changed(Exception):
    """Data keys replaced since their manifests were read: forget them and read again."""

    def __init__(self, keys: set[str]) -> None:
        super().__init__(keys)
        self.keys = keys


class MultiLodMeshSource(MeshSource):
    """Multi-resolution Draco meshes, unsharded (``<id>.index`` + ``<id>``) or sharded."""

    format = MULTILOD_TYPE
    #: Extra bytes read with a manifest when the coarsest LOD is asked for (see module).
    SPECULATIVE_BYTES = 64 * 1024
    #: Most fragment bytes of one LOD of one segment fetched (a manifest claiming more is
    #: refused as corrupt before anything is requested).
    MAX_LOD_BYTES = 1 << 30
    #: Reads that found a segment's data replaced since its manifest was read before
    #: :class:`~precomputed.errors.ConditionFailedError` (see the module notes).
    MAX_READ_ATTEMPTS = 8

    def __init__(self, kvstore: KvStore, prefix: str, info: MeshInfo) -> None:
        super().__init__(kvstore, prefix, info)
        self.shards = (
            None if info.sharding is None else ShardedIdStore(kvstore, prefix, info.sharding)
        )

    def manifest(self, segment_id: int) -> MultiLodManifest:
        """The decoded manifest of a segment (``NotFoundError`` naming the key)."""
        sid = _segment_id(segment_id)
        got = self._manifests_of([sid])[0]
        if got is None:
            raise self._not_found(sid)
        return got.manifest

    def lods(self, segment_id: int) -> int:
        return self.manifest(segment_id).num_lods

    def invalidate(self) -> None:
        super().invalidate()
        if self.shards is not None:
            self.shards.invalidate()

    def _not_found(self, sid: int) -> NotFoundError:
        if self.shards is None:
            return NotFoundError(
                f'No mesh for segment {sid}: "{self.url}{sid}.index" does not exist'
            )
        key = self.shards.shard_key(int(self.shards.place([sid]).shards[0]))
        return NotFoundError(
            f'No mesh for segment {sid}: it is not in shard "{self.kvstore.url}{key}"'
        )

    # -- manifests ------------------------------------------------------------------------
    def _manifests_of(self, ids: list[int]) -> list[_Located | None]:
        found, _ = self._consistently(ids, lambda: self._fetch_manifests(ids, speculate=False))
        return [found[i] for i in ids]

    def _consistently(self, ids: list[int], attempt: Callable[[], _T]) -> _T:
        """Run ``attempt`` (reads of ``ids``' manifests and fragments) until no data key
        it read had changed since its manifest was read: after each such find the cached
        manifests and index data of the changed keys are forgotten; at most
        :attr:`MAX_READ_ATTEMPTS` attempts, then :class:`ConditionFailedError`."""
        tries = 0
        while True:
            try:
                return attempt()
            except (_Changed, GenerationChangedError) as e:
                keys = e.keys if isinstance(e, _Changed) else set(e.changed)
                self._forget(ids, keys)
                tries += 1
                if tries >= self.MAX_READ_ATTEMPTS:
                    names = ", ".join(f'"{self.kvstore.url}{k}"' for k in sorted(keys))
                    raise ConditionFailedError(
                        f"Error reading meshes of segments {sorted(set(ids))[:8]} in {names}: "
                        f"changed while being read on each of {tries} attempts; giving up"
                    ) from None
                pause(tries)

    def _forget(self, ids: list[int], keys: set[str]) -> None:
        """Drop cached manifests whose data lie in ``keys``, and (sharded) the cached
        index data of those shards among ``ids``' shards."""
        with self._lock:
            for i in [i for i, m in self._manifests.items() if m is not None and m.key in keys]:
                del self._manifests[i]
        if self.shards is not None and ids:
            shards = {int(s) for s in self.shards.place(ids).shards}
            self.shards.invalidate([s for s in shards if self.shards.shard_key(s) in keys])

    def _fetch_manifests(
        self, ids: list[int], speculate: bool
    ) -> tuple[dict[int, _Located | None], dict[int, tuple[int, bytes]]]:
        """Manifests of ``ids`` (cache first) and, with ``speculate``, bytes read ahead of
        time per id as ``(absolute start, bytes)`` in its data key."""
        found: dict[int, _Located | None] = dict(self._cached(ids))
        todo = [i for i in dict.fromkeys(ids) if i not in found]
        spare: dict[int, tuple[int, bytes]] = {}
        if todo:
            if self.shards is None:
                fetched = self._fetch_unsharded(todo, speculate, spare)
            else:
                fetched = self._fetch_sharded(todo, speculate, spare)
            self._remember(fetched)
            found.update(fetched)
        return found, spare

    def _fetch_unsharded(
        self, ids: list[int], speculate: bool, spare: dict[int, tuple[int, bytes]]
    ) -> dict[int, _Located | None]:
        requests: list[tuple[str, int, int | None]] = [
            (f"{self.prefix}{i}.index", 0, None) for i in ids
        ]
        if speculate:
            requests += [(f"{self.prefix}{i}", -self.SPECULATIVE_BYTES, None) for i in ids]
        sizes: dict[str, int] = {}
        blobs, gens = self.kvstore.read_ranges_pinned(requests, None, sizes)
        out: dict[int, _Located | None] = {}
        for k, i in enumerate(ids):
            blob = blobs[k]
            if blob is None:
                out[i] = None
                continue
            manifest = MultiLodManifest.decode(blob, f'"{self.url}{i}.index"')
            index = f"{self.prefix}{i}.index"
            out[i] = _Located(manifest, f"{self.prefix}{i}", 0, None, index, gens[index])
            tail = blobs[len(ids) + k] if speculate else None
            # Only a tail of the data file this manifest describes (same size) is used.
            if tail is not None and sizes.get(f"{self.prefix}{i}") == manifest.data_size:
                # The data file is the fragments' concatenation: its size is data_size.
                spare[i] = (manifest.data_size - len(tail), tail)
        return out

    def _fetch_sharded(
        self, ids: list[int], speculate: bool, spare: dict[int, tuple[int, bytes]]
    ) -> dict[int, _Located | None]:
        assert self.shards is not None
        gens: dict[str, Generation] = {}
        locs = self.shards.locate_many(ids, generations=gens)
        floor = self.shards.spec.shard_index_size
        have = [(i, loc) for i, loc in zip(ids, locs, strict=True) if loc is not None]
        requests = [
            (
                loc.key,
                max(floor, loc.start - self.SPECULATIVE_BYTES) if speculate else loc.start,
                loc.stop,
            )
            for _, loc in have
        ]
        # Pinned to the shard version the locations came from (GenerationChangedError
        # when it was replaced meanwhile: located again).
        blobs, _ = self.kvstore.read_ranges_pinned(requests, {k: gens[k] for k, _, _ in requests})
        out: dict[int, _Located | None] = {
            i: None for i, loc in zip(ids, locs, strict=True) if loc is None
        }
        for (i, loc), (_, a, _), blob in zip(have, requests, blobs, strict=True):
            n = loc.stop - loc.start
            got = None if blob is None else blob[len(blob) - n :] if len(blob) >= n else b""
            self.shards.check_read(i, loc, got)
            raw = self.shards.decode_value(i, loc, got)  # type: ignore[arg-type]
            manifest = MultiLodManifest.decode(
                raw, f'of segment {i} in "{self.kvstore.url}{loc.key}"'
            )
            start = loc.start - manifest.data_size
            if start < floor:
                raise CorruptDataError(
                    f'Error reading mesh of segment {i} in "{self.kvstore.url}{loc.key}": its '
                    f"{manifest.data_size} bytes of fragments would start at byte {start}, "
                    "inside the shard index"
                )
            out[i] = _Located(manifest, loc.key, start, gens[loc.key])
            if speculate and blob is not None and len(blob) > n:
                spare[i] = (a, blob[: len(blob) - n])
        return out

    # -- meshes ---------------------------------------------------------------------------
    def get_many(
        self, segment_ids: Sequence[int], lod: int = 0, *, missing: str = "raise"
    ) -> dict[int, Mesh]:
        self._check_missing(missing)
        if isinstance(lod, bool) or not isinstance(lod, (int, np.integer)) or lod < -1:
            raise InvalidArgumentError(
                f"lod must be an integer >= 0, or -1 for the coarsest, got {lod!r}"
            )
        ids = [_segment_id(i) for i in segment_ids]
        return self._consistently(ids, lambda: self._get_many(ids, int(lod), missing))

    def _get_many(self, ids: list[int], lod: int, missing: str) -> dict[int, Mesh]:
        """One attempt of :meth:`get_many` (``_Changed``/``GenerationChangedError`` when a
        data key changed since its manifest was read)."""
        found, spare = self._fetch_manifests(ids, speculate=lod == -1)
        plan: list[tuple[int, int, int, int]] = []  # id, lod, absolute start, stop
        located: dict[int, _Located] = {}
        for i in dict.fromkeys(ids):
            loc = found[i]
            if loc is None:
                if missing == "raise":
                    raise self._not_found(i)
                continue
            n = loc.manifest.num_lods
            k = n - 1 if lod == -1 else lod
            if k >= n:
                raise OutOfRangeError(
                    f"segment {i} has {n} levels of detail (0-{n - 1}); lod {k} requested"
                )
            a, b = loc.manifest.lod_range(k)
            if b - a > self.MAX_LOD_BYTES:
                raise CorruptDataError(
                    f'Error reading mesh of segment {i} in "{self.kvstore.url}{loc.key}": its '
                    f"manifest gives lod {k} {b - a} bytes of fragments, more than the "
                    f"{self.MAX_LOD_BYTES} accepted (MultiLodMeshSource.MAX_LOD_BYTES)"
                )
            plan.append((i, k, loc.data_start + a, loc.data_start + b))
            located[i] = loc
        data = self._lod_bytes(plan, found, spare)
        return {
            i: self._decode_lod(i, k, located[i], blob)
            for (i, k, _, _), blob in zip(plan, data, strict=True)
        }

    def _lod_bytes(
        self,
        plan: list[tuple[int, int, int, int]],
        found: dict[int, _Located | None],
        spare: dict[int, tuple[int, bytes]],
    ) -> list[bytes]:
        out: list[bytes | None] = [None] * len(plan)
        requests: list[tuple[str, int, int]] = []
        targets: list[int] = []
        for j, (i, _, a, b) in enumerate(plan):
            if a == b:
                out[j] = b""
                continue
            s = spare.get(i)
            if s is not None and s[0] <= a and b <= s[0] + len(s[1]):
                out[j] = s[1][a - s[0] : b - s[0]]
                continue
            requests.append((found[i].key, a, b))  # type: ignore[union-attr]
            targets.append(j)
        if requests:
            blobs = self._read_at_versions(requests, [found[plan[j][0]] for j in targets])  # type: ignore[misc]
            for j, (key, a, b), blob in zip(targets, requests, blobs, strict=True):
                if blob is None or len(blob) != b - a:
                    seen = "0 (missing)" if blob is None else a + len(blob)
                    raise CorruptDataError(
                        f"Error reading mesh fragments of segment {plan[j][0]}, lod {plan[j][1]} in "
                        f'"{self.kvstore.url}{key}": Requested byte range [{a}, {b}) is not valid '
                        f"for value of size {seen}"
                    )
                out[j] = blob
        return out  # type: ignore[return-value]

    def _read_at_versions(
        self, requests: list[tuple[str, int, int]], located: list[_Located]
    ) -> list[bytes | None]:
        """Fragment ranges, each read at the version of its key its manifest describes
        (sharded: pinned to that generation; unsharded: the data file must still have
        the manifest's size). ``_Changed`` / ``GenerationChangedError`` otherwise."""
        pins: dict[str, Generation] = {}
        mixed: set[str] = set()
        for loc in located:
            if loc.generation is not None and pins.setdefault(loc.key, loc.generation) != loc.generation:
                mixed.add(loc.key)  # manifests cached from two versions of one shard
        if mixed:
            raise _Changed(mixed)
        sizes: dict[str, int] = {}
        blobs, _ = self.kvstore.read_ranges_pinned(requests, pins, sizes)
        # Unsharded: a data file of another size than its manifest says, whose manifest
        # was replaced since it was read, is another version (one that was not, is
        # left to the checks of the bytes read: corrupt, or a writer between its two
        # writes).
        resized = {
            loc.key
            for loc in located
            if loc.generation is None
            and loc.key in sizes
            and sizes[loc.key] != loc.data_start + loc.manifest.data_size
            and self.kvstore.current_generation(loc.index_key) != loc.index_generation
        }
        if resized:
            raise _Changed(resized)
        return blobs

    def _decode_lod(self, sid: int, lod: int, loc: _Located, data: bytes) -> Mesh:
        m = loc.manifest
        bits = self.info.vertex_quantization_bits
        sizes = m.fragment_sizes[lod].astype(np.int64)
        ends = np.cumsum(sizes)
        starts = ends - sizes
        where = f'of segment {sid}, lod {lod} in "{self.kvstore.url}{loc.key}"'
        points, faces, nodes = [], [], []
        for f in np.flatnonzero(sizes).tolist():
            q, tri = decode_fragment(data[starts[f] : ends[f]], bits, f"{f} {where}")
            points.append(q)
            faces.append(tri)
            nodes.append(np.broadcast_to(m.fragment_positions[lod][f], q.shape))
        if not points:
            return Mesh.empty()
        counts = np.cumsum([0] + [p.shape[0] for p in points[:-1]], dtype=np.uint64)
        q = np.concatenate(points)
        node = np.concatenate(nodes).astype(np.float64)
        stored = (
            m.grid_origin.astype(np.float64)
            + m.vertex_offsets[lod].astype(np.float64)
            + m.node_size(lod) * (node + q / float((1 << bits) - 1))
        )
        t = self.info.matrix
        world = stored @ t[:, :3].T + t[:, 3]
        tri = np.concatenate([f.astype(np.uint64) + c for f, c in zip(faces, counts, strict=True)])
        return Mesh(world.astype(np.float32), tri.astype(np.uint32))


# ---------------------------------------------------------------------------------------
# Legacy (neuroglancer_legacy_mesh)
# ---------------------------------------------------------------------------------------


class LegacyMeshSource(MeshSource):
    """Single-resolution meshes: ``<id>:0`` manifests naming fragment files (vertices in
    nm). Fragments stored gzipped, or only as ``<name>.gz`` (CloudVolume), are read too."""

    format = LEGACY_TYPE

    def lods(self, segment_id: int) -> int:
        sid = _segment_id(segment_id)
        if self._manifests_of([sid])[0] is None:
            raise self._not_found(sid)
        return 1

    def fragments(self, segment_id: int) -> list[str]:
        """The fragment keys (relative to the mesh directory) of a segment."""
        sid = _segment_id(segment_id)
        got = self._manifests_of([sid])[0]
        if got is None:
            raise self._not_found(sid)
        return list(got)

    def _not_found(self, sid: int) -> NotFoundError:
        return NotFoundError(f'No mesh for segment {sid}: "{self.url}{sid}:0" does not exist')

    def _manifests_of(self, ids: list[int]) -> list[list[str] | None]:
        found: dict[int, Any] = dict(self._cached(ids))
        todo = [i for i in dict.fromkeys(ids) if i not in found]
        if todo:
            keys = [f"{self.prefix}{i}:0" for i in todo]
            blobs = self.kvstore.read_many(keys)
            fetched = {
                i: None
                if b is None
                else parse_legacy_manifest(maybe_gunzip(b, f'"{k}"', 1 << 28), k)
                for i, k, b in zip(todo, keys, blobs, strict=True)
            }
            self._remember(fetched)
            found.update(fetched)
        return [found[i] for i in ids]

    def get_many(
        self, segment_ids: Sequence[int], lod: int = 0, *, missing: str = "raise"
    ) -> dict[int, Mesh]:
        self._check_missing(missing)
        if lod not in (0, -1):
            raise OutOfRangeError(
                f"legacy meshes have one level of detail (0); lod {lod} requested"
            )
        ids = list(dict.fromkeys(_segment_id(i) for i in segment_ids))
        manifests = dict(zip(ids, self._manifests_of(ids), strict=True))
        for i in ids:
            if manifests[i] is None and missing == "raise":
                raise self._not_found(i)
        keys = sorted({f for i in ids for f in manifests[i] or ()})
        blobs = dict(zip(keys, self._read_fragments(keys), strict=True))
        out = {}
        for i in ids:
            names = manifests[i]
            if names is None:
                continue
            parts = []
            for name in names:
                what = f'"{self.url}{name}" (segment {i})'
                v, f = decode_legacy_fragment(maybe_gunzip(blobs[name], what), what)
                parts.append(Mesh(v, f))
            out[i] = Mesh.concatenate(parts)
        return out

    def _read_fragments(self, names: list[str]) -> list[bytes]:
        keys = [self.prefix + n for n in names]
        blobs = self.kvstore.read_many(keys)
        absent = [j for j, b in enumerate(blobs) if b is None]
        if absent:
            for j, b in zip(
                absent, self.kvstore.read_many([keys[j] + ".gz" for j in absent]), strict=True
            ):
                blobs[j] = b
        for k, b in zip(keys, blobs, strict=True):
            if b is None:
                raise NotFoundError(f'Mesh fragment "{self.kvstore.url}{k}" does not exist')
        return blobs  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------
# open()
# ---------------------------------------------------------------------------------------


def open_source(kvstore: KvStore, prefix: str, info: MeshInfo) -> MeshSource:
    """The source class for a parsed mesh ``info`` at ``prefix`` of ``kvstore``."""
    if info.type == MULTILOD_TYPE:
        return MultiLodMeshSource(kvstore, prefix, info)
    return LegacyMeshSource(kvstore, prefix, info)


def open(source: Any, **storage_options: Any) -> MeshSource:  # noqa: A001
    """Meshes of a segmentation: an opened :class:`~precomputed.Volume` or a URL, either
    of the volume (its ``info`` names the mesh directory in ``"mesh"``) or of the mesh
    directory itself. A directory without ``info`` is read as legacy meshes, as
    Neuroglancer does. A volume's ``info`` is read again (it may have changed)."""
    if hasattr(source, "kvstore") and hasattr(source, "info"):
        kv, path = volume_location(source)
        # Re-read: meshes may have been added since the volume was opened.
        info: Any = read_json(kv, path + "info")
    else:
        url = str(source)
        if url.startswith("precomputed://"):
            url = url[len("precomputed://") :]
        kv, path = open_kvstore(url.rstrip("/") + "/", **storage_options), ""
        info = read_json(kv, "info", required=False)
    if isinstance(info, dict) and "scales" in info:  # a volume: follow its mesh member
        if "mesh" not in info:
            raise NotFoundError(
                f'"{kv.url}{path}info" has no "mesh" member: the volume has no meshes'
            )
        kv, path = resolve_subdir(kv, path, info["mesh"], "mesh", **storage_options)
        info = read_json(kv, path + "info", required=False)
    if info is None:
        return LegacyMeshSource(kv, path, MeshInfo(LEGACY_TYPE))
    return open_source(kv, path, parse_mesh_info(info, f"{kv.url}{path}info"))

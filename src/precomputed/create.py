"""Create volumes and scales, fill them from arrays, and build pyramids.

Everything here goes through the driver: metadata is validated and assembled by
:func:`precomputed.metadata.create_scale` (via :func:`precomputed.spec.parse_spec`, as
``precomputed.open(spec, create=True)`` does), volumes are created with
:func:`precomputed.open` and written through :class:`~precomputed.Volume` (one
transaction per shard for sharded scales). The functions only add what TensorStore leaves
to its callers:

* :func:`plan_scale` -- validate ``multiscale_metadata`` / ``scale_metadata`` without I/O
  and return the ``info`` the creation would write (the widget's live preview).
* :func:`create_volume` -- a new volume from the two metadata objects, optionally filled
  from an array and with pyramid levels.
* :func:`add_scale` / :func:`downsample` / :func:`build_pyramid` -- the next scale(s) of
  a volume, with the size (rounded up), voxel offset (rounded down), resolution and key
  that CloudVolume's ``add_scale`` and Igneous compute, filled by block mean (images) or
  mode (segmentations) processed in blocks aligned to the destination's write chunks.
* :func:`write_array` -- write an array-like (numpy, dask, a lazy napari level) into a
  scale block by block, so memory stays bounded.

Long operations take ``progress(done, total)`` and ``cancel`` (a ``threading.Event`` or a
callable returning ``True`` to stop). A cancelled or failed operation removes what it
wrote: a new volume entirely, an added scale from ``info`` and its chunks. While it runs,
an ``INCOMPLETE`` object next to ``info`` lists what to remove, so a crash leaves a
clearly marked volume that :func:`discard_incomplete` cleans up.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from . import constraints
from . import metadata as md
from .downsample import METHODS, check_factor, downsampled_geometry
from .downsample import downsample as downsample_array
from .driver import open as open_volume
from .driver import read_info
from .errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    PrecomputedError,
    ReadOnlyError,
)
from .kvstore import KvStore, open_kvstore
from .sharding import ShardingSpec, choose_sharding, write_chunk_shape
from .spec import parse_spec
from .volume import Volume

__all__ = [
    "Cancelled",
    "IncompleteVolumeError",
    "ScalePlan",
    "plan_scale",
    "plan_pyramid",
    "next_scale_metadata",
    "create_volume",
    "add_scale",
    "downsample",
    "build_pyramid",
    "write_array",
    "supported_data_type",
    "default_method",
    "find_incomplete",
    "discard_incomplete",
    "MARKER",
    "DEFAULT_BLOCK_BYTES",
]

log = logging.getLogger("precomputed")

#: Name of the object (next to ``info``) that marks a creation in progress.
MARKER = "INCOMPLETE"
#: Bytes of source data processed per block (before decoding overheads).
DEFAULT_BLOCK_BYTES = 64 * 1024 * 1024
_DRIVER = "neuroglancer_precomputed"
_RETRIES = 32

Progress = Callable[[int, int], None]
Cancel = threading.Event | Callable[[], bool] | None


class Cancelled(PrecomputedError):
    """The operation was cancelled; what it wrote has been removed."""


class IncompleteVolumeError(PrecomputedError):
    """An operation failed and what it wrote could not be removed. The volume is marked
    by an ``INCOMPLETE`` object; :func:`discard_incomplete` removes the partial data."""

    def __init__(self, message: str, destination: str) -> None:
        super().__init__(message)
        self.destination = destination


def _check_factor(factor: Sequence[int]) -> tuple[int, int, int]:
    try:
        return check_factor(factor)
    except ValueError as e:
        raise InvalidArgumentError(str(e)) from None


# ---------------------------------------------------------------------------------------
# Validation and preview (no I/O)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScalePlan:
    """What creating a scale would produce: the whole new ``info`` and the new scale."""

    metadata: md.MultiscaleMetadata
    scale_index: int

    @property
    def scale(self) -> md.ScaleMetadata:
        return self.metadata.scales[self.scale_index]

    @property
    def key(self) -> str:
        return self.scale.key

    @property
    def info(self) -> dict[str, Any]:
        """The ``info`` JSON as the driver (and TensorStore) writes it."""
        return json.loads(self.metadata.dumps())

    @property
    def write_chunk_shape(self) -> tuple[int, int, int]:
        """Voxels written together (a shard for sharded scales, else a chunk), x, y, z."""
        s = self.scale
        if s.sharding is None:
            return tuple(s.chunk_sizes[0])  # type: ignore[return-value]
        return write_chunk_shape(s.sharding, s.size, s.chunk_sizes[0])

    @property
    def num_chunks(self) -> int:
        s = self.scale
        return math.prod(-(-n // c) for n, c in zip(s.size, s.chunk_sizes[0], strict=True))


def plan_scale(
    multiscale_metadata: Mapping[str, Any] | None = None,
    scale_metadata: Mapping[str, Any] | None = None,
    existing: md.MultiscaleMetadata | Mapping[str, Any] | None = None,
) -> ScalePlan:
    """Validate the two spec members exactly as ``precomputed.open(spec, create=True)``
    does and return the metadata the creation would write. No I/O.

    ``existing`` is the volume's current ``info`` (parsed or JSON) when adding a scale.
    Raises the driver's errors (:class:`InvalidArgumentError` for a malformed spec,
    :class:`FailedPreconditionError` for conflicts with ``existing``,
    :class:`AlreadyExistsError` for a duplicate key or resolution), worded as TensorStore's.
    """
    spec: dict[str, Any] = {"driver": _DRIVER, "kvstore": {"driver": "memory"}}
    if multiscale_metadata is not None:
        spec["multiscale_metadata"] = dict(multiscale_metadata)
    if scale_metadata is not None:
        spec["scale_metadata"] = dict(scale_metadata)
    req = parse_spec(spec, create=True)
    if existing is not None and not isinstance(existing, md.MultiscaleMetadata):
        existing = md.MultiscaleMetadata.from_json(existing)
    meta, index = constraints.create_scale(existing, req.multiscale, req.scale, req.scale_index, req.schema)
    return ScalePlan(meta, index)


def supported_data_type(dtype: Any, segmentation: bool = False) -> tuple[str, str | None]:
    """The Precomputed data type that stores values of numpy ``dtype``, and a note when
    values change representation. Raises :class:`InvalidArgumentError` when none can.

    Segmentations map to uint32 or uint64 (the types compressed_segmentation supports);
    label values must then be non-negative, which :func:`write_array` checks.
    """
    dt = np.dtype(dtype)
    name = dt.name
    if segmentation:
        if name in ("uint32", "uint64"):
            return name, None
        if dt.kind in "biu":
            target = "uint64" if dt.itemsize == 8 else "uint32"
            return target, f"{name} labels are stored as {target}"
        raise InvalidArgumentError(
            f"{name} labels cannot be stored: a segmentation needs integer label ids "
            "(uint32 or uint64)"
        )
    if name in md.SUPPORTED_DTYPES:
        return name, None
    if dt.kind == "b":
        return "uint8", "bool values are stored as uint8 (0 and 1)"
    if name == "float16":
        return "float32", "float16 values are stored as float32"
    if name == "float64":
        return "float32", "float64 values are stored as float32 (precision is reduced)"
    supported = ", ".join(md.SUPPORTED_DTYPES)
    hint = {
        "int64": "convert the data to int32 or float32 (label ids: use a Labels layer)",
    }.get(name, "convert the data to one of them")
    raise InvalidArgumentError(f"{name} is not a Precomputed data type ({supported}): {hint}")


def default_method(volume_type: str) -> str:
    """``"mode"`` for segmentations, ``"mean"`` for everything else."""
    return "mode" if volume_type == "segmentation" else "mean"


def next_scale_metadata(source: md.ScaleMetadata | Volume, factor: Sequence[int]) -> dict[str, Any]:
    """``scale_metadata`` of the scale that downsamples ``source`` by ``factor`` (x, y, z).

    Size is rounded up, voxel offset rounded down and resolution multiplied, as
    CloudVolume's ``add_scale`` computes them (for a factor relative to scale 0 the two
    agree, since ceil and floor of nested integer divisions compose); the key is left to
    the driver (``"<x>_<y>_<z>"`` of the resolution, which is CloudVolume's key for
    integral resolutions). Chunk size, encoding and its parameters are the source's.
    Sharding: none if the source is unsharded, else TensorStore's automatic choice for
    shards holding as many voxels as the source's.
    """
    scale = source.scale if isinstance(source, Volume) else source
    f = _check_factor(factor)
    size, offset, res = downsampled_geometry(scale.size, scale.voxel_offset, scale.resolution, f)
    chunk = list(scale.chunk_sizes[0])
    out: dict[str, Any] = {
        "size": list(size),
        "voxel_offset": list(offset),
        "resolution": list(res),
        "chunk_size": chunk,
        "encoding": scale.encoding,
    }
    if scale.encoding == "jpeg" and scale.jpeg_quality is not None:
        out["jpeg_quality"] = scale.jpeg_quality
    if scale.encoding == "png" and scale.png_level is not None:
        out["png_level"] = scale.png_level
    if scale.encoding == "compressed_segmentation":
        out["compressed_segmentation_block_size"] = list(
            scale.compressed_segmentation_block_size or (8, 8, 8)
        )
    sharding: ShardingSpec | None = None
    if scale.sharding is not None:
        elements = math.prod(write_chunk_shape(scale.sharding, scale.size, scale.chunk_sizes[0]))
        sharding = choose_sharding(
            size,
            chunk,
            write_chunk_elements=elements,
            shard_data_encoding=scale.sharding.data_encoding,
            encoding=scale.encoding,
        )
    out["sharding"] = None if sharding is None else sharding.to_json()
    return out


# ---------------------------------------------------------------------------------------
# Destinations and the INCOMPLETE marker
# ---------------------------------------------------------------------------------------


@dataclass
class _Destination:
    kv: KvStore
    path: str
    context: Any
    label: str

    def spec(self, **members: Any) -> dict[str, Any]:
        return {"driver": _DRIVER, "kvstore": self.kv.spec(), "path": self.path, **members}

    def open(self, *, create: bool = False, **members: Any) -> Volume:
        options = {"create": True} if create else {}
        return open_volume(self.spec(**members), kvstore=self.kv, context=self.context, **options)


def _destination(
    destination: str | Mapping[str, Any] | Volume,
    kvstore: KvStore | None = None,
    context: Any = None,
    storage_options: Mapping[str, Any] | None = None,
) -> _Destination:
    if isinstance(destination, Volume):
        return _Destination(
            destination.kvstore,
            destination.path,
            context or destination.context,
            destination.kvstore.url + destination.path,
        )
    spec: Any = destination if isinstance(destination, str) else dict(destination)
    if isinstance(spec, dict):
        spec.setdefault("driver", _DRIVER)
    req = parse_spec(spec)
    opts = {**(req.storage_options or {}), **(storage_options or {})}
    kv = kvstore or open_kvstore(req.kvstore, **opts)
    label = destination if isinstance(destination, str) else kv.url + req.path
    return _Destination(kv, req.path, context, str(label))


class _Marker:
    """The ``INCOMPLETE`` object: scales to remove (and whether ``info`` was new)."""

    def __init__(self, dest: _Destination, new_volume: bool) -> None:
        self.dest = dest
        self.new_volume = new_volume
        self.keys: list[str] = []
        self.key = dest.path + MARKER

    def _update(self, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
        kv = self.dest.kv
        for _ in range(_RETRIES):
            data, gen = kv.read_with_generation(self.key)
            current = _parse_marker(data) if data is not None else None
            new = change(current or {"scales": [], "delete_info": False})
            payload = None if new is None else json.dumps(new, indent=1, sort_keys=True).encode()
            if payload is None and data is None:
                return
            if kv.write_if(self.key, payload, gen):
                return
        raise FailedPreconditionError(f'Error writing "{self.key}": too many concurrent changes')

    def add(self, scale_key: str) -> None:
        self.keys.append(scale_key)

        def change(m: dict[str, Any]) -> dict[str, Any]:
            m = dict(m)
            m["scales"] = [*m.get("scales", []), scale_key]
            m["delete_info"] = bool(m.get("delete_info")) or self.new_volume
            m.setdefault("started", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            m["written_by"] = "napari-precomputed"
            m["note"] = (
                "A creation did not finish. Remove what it wrote with "
                "precomputed.create.discard_incomplete(<volume>)."
            )
            return m

        self._update(change)

    def done(self) -> None:
        """Success: forget our scales; the marker goes when nothing else is listed."""
        mine = set(self.keys)

        def change(m: dict[str, Any]) -> dict[str, Any] | None:
            rest = [k for k in m.get("scales", []) if k not in mine]
            if not rest:
                return None
            return {**m, "scales": rest, "delete_info": bool(m.get("delete_info"))}

        self._update(change)

    def discard(self) -> None:
        """Failure: remove our scales (and ``info`` if it was new), then the marker."""
        _remove_scales(self.dest, self.keys, self.new_volume)
        self.done()


def _check_writable(dest: _Destination) -> None:
    if dest.kv.read_only:
        raise ReadOnlyError(f"{dest.label} is on a read-only store ({dest.kv.url})")


def _parse_marker(data: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _remove_scales(dest: _Destination, keys: Sequence[str], delete_info: bool) -> None:
    """Drop scales ``keys`` from ``info`` (conditionally, retried on conflicts), delete
    ``info`` itself when it was new and is left without scales, then their chunks."""
    kv, path = dest.kv, dest.path
    info_key = path + "info"
    drop = set(keys)
    for _ in range(_RETRIES):
        meta, gen = read_info(kv, path)
        if meta is None:
            break
        remaining = [s for s in meta.scales if s.key not in drop]
        if len(remaining) == len(meta.scales) and not (delete_info and not remaining):
            break
        if delete_info and not remaining:
            payload = None
        else:
            payload = replace(meta, scales=remaining, extra=dict(meta.extra)).dumps()
        if kv.write_if(info_key, payload, gen):
            break
    else:
        raise FailedPreconditionError(f'Error writing "{info_key}": too many concurrent changes')
    for key in keys:
        prefix = _scale_prefix(path, key)
        if prefix is None:
            log.warning("not deleting the chunks of scale %r: its key leaves the volume", key)
            continue
        kv.delete_prefix(prefix)


def _scale_prefix(path: str, key: str) -> str | None:
    """``<scale directory>/`` for ``key``, or ``None`` if that is not strictly inside the
    volume directory (a key like ``""``, ``"."`` or ``"../x"``)."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts):
        return None
    directory = md.resolve_scale_key(path, key)
    if not directory.startswith(path) or len(directory) <= len(path):
        return None
    return directory + "/"


def find_incomplete(
    destination: str | Mapping[str, Any] | Volume, *, kvstore: KvStore | None = None
) -> dict[str, Any] | None:
    """The ``INCOMPLETE`` marker of a volume (what an unfinished creation wrote), or
    ``None`` when there is none."""
    dest = _destination(destination, kvstore)
    data = dest.kv.read(dest.path + MARKER)
    if data is None:
        return None
    return _parse_marker(data) or {"scales": [], "delete_info": False}


def discard_incomplete(
    destination: str | Mapping[str, Any] | Volume, *, kvstore: KvStore | None = None
) -> bool:
    """Remove what an unfinished creation wrote (scales listed in the ``INCOMPLETE``
    marker, and ``info`` if the creation made it), then the marker. Returns ``False``
    when there was nothing to remove."""
    dest = _destination(destination, kvstore)
    marker = find_incomplete(destination, kvstore=dest.kv)
    if marker is None:
        return False
    keys = [k for k in marker.get("scales", []) if isinstance(k, str)]
    _remove_scales(dest, keys, bool(marker.get("delete_info")))
    dest.kv.delete(dest.path + MARKER)
    return True


# ---------------------------------------------------------------------------------------
# Progress, cancellation, blocks
# ---------------------------------------------------------------------------------------


def _cancelled(cancel: Cancel) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


class _Tracker:
    """Counts processed blocks over every stage of an operation."""

    def __init__(self, total: int, progress: Progress | None, cancel: Cancel) -> None:
        self.total = total
        self.done = 0
        self.progress = progress
        self.cancel = cancel

    def check(self) -> None:
        if _cancelled(self.cancel):
            raise Cancelled("the operation was cancelled")

    def step(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


Box = tuple[tuple[int, int, int], tuple[int, int, int]]  # [lo, hi) in 0-based voxels, x, y, z


def _tiles(
    size: Sequence[int], tile: Sequence[int], origin: Sequence[int] = (0, 0, 0)
) -> Iterator[Box]:
    """Boxes of shape ``tile`` covering ``[origin, origin + size)``, clipped, z-major."""
    ends = [o + s for o, s in zip(origin, size, strict=True)]
    for z in range(origin[2], ends[2], tile[2]):
        for y in range(origin[1], ends[1], tile[1]):
            for x in range(origin[0], ends[0], tile[0]):
                lo = (x, y, z)
                hi = tuple(min(a + t, e) for a, t, e in zip(lo, tile, ends, strict=True))
                yield lo, hi  # type: ignore[misc]


def _grow(unit: Sequence[int], limit: Sequence[int], voxels: int) -> list[int]:
    """Multiples of ``unit`` (doubling x, y, z in turn) with at most ``voxels`` voxels,
    no larger than ``limit`` rounded up to ``unit``."""
    shape = list(unit)
    cap = [-(-max(1, lim) // u) * u for u, lim in zip(unit, limit, strict=True)]
    grown = True
    while grown:
        grown = False
        for d in range(3):
            if shape[d] >= cap[d]:
                continue
            trial = list(shape)
            trial[d] = min(shape[d] * 2, cap[d])
            if math.prod(trial) <= voxels:
                shape = trial
                grown = True
    return shape


def _plan_blocks(
    scale: md.ScaleMetadata, chunk: Sequence[int], bytes_per_voxel: float, budget: int
) -> list[list[Box]]:
    """Blocks of a destination scale in 0-based voxels, grouped by what must be written
    together: each group is one write chunk (a shard) split into sub-blocks, or several
    whole write chunks. Blocks never straddle a write chunk boundary."""
    size = tuple(scale.size)
    if scale.sharding is None:
        write = tuple(chunk)
    else:
        write = write_chunk_shape(scale.sharding, size, chunk)
    voxels = max(1, int(budget // max(bytes_per_voxel, 1e-9)))
    if math.prod(write) <= voxels:
        block = _grow(write, size, voxels)
        return [[b] for b in _tiles(size, block)]
    sub = _grow(chunk, write, voxels)
    groups = []
    for lo, hi in _tiles(size, write):
        extent = [b - a for a, b in zip(lo, hi, strict=True)]
        groups.append(list(_tiles(extent, sub, lo)))
    return groups


def _write_groups(
    vol: Volume,
    groups: list[list[Box]],
    produce: Callable[[Box], np.ndarray],
    tracker: _Tracker,
) -> None:
    """Write each block ``produce(box)`` (czyx) into ``vol``; a group of several blocks
    (the pieces of one shard) goes through one transaction, so each shard is written once."""
    off = vol.scale.voxel_offset

    def put(target: Volume, box: Box) -> None:
        arr = produce(box)
        lo, hi = box
        sl = tuple(slice(o + a, o + b) for o, a, b in zip(off, lo, hi, strict=True))
        target[(*sl, slice(None))].write(arr.transpose(3, 2, 1, 0))

    for group in groups:
        tracker.check()
        if len(group) == 1:
            put(vol, group[0])
            tracker.step()
            continue
        with vol.transaction():
            for box in group:
                tracker.check()
                put(vol, box)
                tracker.step()


def _block_bytes_for_write(vol: Volume, data_itemsize: int) -> float:
    return vol.dtype.itemsize * vol.shape[3] * 2 + data_itemsize * vol.shape[3]


# ---------------------------------------------------------------------------------------
# Writing arrays
# ---------------------------------------------------------------------------------------

_AXES = "xyzc"


def _check_axes(axes: str, shape: Sequence[int]) -> str:
    if len(set(axes)) != len(axes) or any(a not in _AXES for a in axes):
        raise InvalidArgumentError(
            f'axes must name each of "x", "y", "z", "c" at most once, not {axes!r}'
        )
    if len(axes) != len(shape):
        raise InvalidArgumentError(
            f"data of shape {tuple(shape)} has {len(shape)} axes, but axes={axes!r} names "
            f"{len(axes)}"
        )
    return axes


def _data_shape_xyzc(axes: str, shape: Sequence[int]) -> tuple[int, int, int, int]:
    return tuple(int(shape[axes.index(a)]) if a in axes else 1 for a in _AXES)  # type: ignore[return-value]


def _cast(block: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Convert a block to the volume's type; integers that do not fit are an error (never
    wrapped), float data is never silently truncated to integers."""
    if block.dtype == dtype:
        return block
    src = block.dtype
    if dtype.kind in "iu" and src.kind in "iu" and not np.can_cast(src, dtype):
        if block.size:
            lo, hi = block.min(), block.max()
            info = np.iinfo(dtype)
            if lo < info.min or hi > info.max:
                raise InvalidArgumentError(
                    f"values [{lo}, {hi}] do not fit the volume's data type {dtype.name}"
                )
    elif dtype.kind in "iu" and src.kind not in "biu":
        raise InvalidArgumentError(
            f"{src.name} data cannot be written to a {dtype.name} volume; convert it first"
        )
    return block.astype(dtype)


def write_array(
    volume: Volume,
    data: Any,
    *,
    axes: str = "xyzc",
    progress: Progress | None = None,
    cancel: Cancel = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> None:
    """Write ``data`` over the whole scale ``volume``, block by block.

    ``data`` is any array-like with ``shape`` and basic slicing (numpy, dask, zarr, a
    napari level); ``axes`` names its axes (``"xyzc"``, ``"zyx"``, ``"czyx"``,
    ``"zyxc"``, ``"yx"``, ...); absent axes have extent 1. Index 0 of the data is the
    scale's voxel offset. Only one block is in memory at a time (a shard is assembled
    in a transaction for sharded scales). Integer values must fit the data type.
    """
    if not hasattr(data, "shape"):
        data = np.asarray(data)
    shape = tuple(int(n) for n in data.shape)
    axes = _check_axes(axes, shape)
    whole = volume.whole()  # absolute coordinates of the scale
    want = tuple(whole.shape)  # the whole scale, not a view
    got = _data_shape_xyzc(axes, shape)
    if got != want:
        raise InvalidArgumentError(
            f"data of shape {shape} (axes {axes!r}) is x, y, z, c {got}, but the scale is {want}"
        )
    itemsize = np.dtype(getattr(data, "dtype", np.float64)).itemsize
    groups = _plan_blocks(
        volume.scale, volume.handle.chunk_size, _block_bytes_for_write(whole, itemsize), block_bytes
    )
    tracker = _Tracker(sum(len(g) for g in groups), progress, cancel)
    _write_data(whole, data, axes, groups, tracker)


def _write_data(
    vol: Volume, data: Any, axes: str, groups: list[list[Box]], tracker: _Tracker
) -> None:
    dtype = vol.dtype
    missing = [a for a in _AXES if a not in axes]
    order = axes + "".join(missing)  # axes of the expanded block
    perm = [order.index(a) for a in "czyx"]

    def produce(box: Box) -> np.ndarray:
        lo, hi = box
        index = []
        for a in axes:
            if a == "c":
                index.append(slice(None))
            else:
                d = "xyz".index(a)
                index.append(slice(lo[d], hi[d]))
        block = np.asarray(data[tuple(index)])
        block = block.reshape(block.shape + (1,) * len(missing))
        return _cast(np.ascontiguousarray(block.transpose(perm)), dtype)

    _write_groups(vol, groups, produce, tracker)


# ---------------------------------------------------------------------------------------
# Downsampling into a new scale
# ---------------------------------------------------------------------------------------


def _downsample_into(
    src: Volume,
    dst: Volume,
    factor: Sequence[int],
    method: str,
    groups: list[list[Box]],
    tracker: _Tracker,
) -> None:
    s_off = src.scale.voxel_offset
    s_size = src.scale.size
    f = tuple(factor)

    def produce(box: Box) -> np.ndarray:
        lo, hi = box
        a = [o + lv * k for o, lv, k in zip(s_off, lo, f, strict=True)]
        b = [o + min(hv * k, n) for o, hv, k, n in zip(s_off, hi, f, s_size, strict=True)]
        block = src[a[0] : b[0], a[1] : b[1], a[2] : b[2], :].read_czyx()
        out = downsample_array(block, f, method)
        expect = (dst.shape[3], *(hb - lb for lb, hb in zip(lo[::-1], hi[::-1], strict=True)))
        if out.shape != expect:  # pragma: no cover - guarded by the geometry check
            raise FailedPreconditionError(f"downsampled block {out.shape} != {expect}")
        return out

    _write_groups(dst, groups, produce, tracker)


def _check_downsample_geometry(
    src: md.ScaleMetadata, dst: md.ScaleMetadata, factor: Sequence[int]
) -> None:
    size, _, _ = downsampled_geometry(src.size, src.voxel_offset, src.resolution, factor)
    if tuple(dst.size) != tuple(size):
        raise InvalidArgumentError(
            f'"size" of {list(dst.size)} cannot hold scale "{src.key}" ({list(src.size)}) '
            f"downsampled by {list(factor)}: expected {list(size)}"
        )


@dataclass
class _Level:
    """A planned pyramid step: source scale -> new scale metadata."""

    factor: tuple[int, int, int]
    scale_metadata: dict[str, Any]
    plan: ScalePlan


def _plan_levels(
    meta: md.MultiscaleMetadata,
    source_index: int,
    factors: Sequence[Sequence[int]],
    overrides: Mapping[str, Any] | None,
) -> list[_Level]:
    levels = []
    current = meta
    src = meta.scales[source_index]
    for f in factors:
        f3 = _check_factor(f)
        sm = {**next_scale_metadata(src, f3), **(overrides or {})}
        plan = plan_scale(None, sm, current)
        _check_downsample_geometry(src, plan.scale, f3)
        levels.append(_Level(f3, sm, plan))
        current = plan.metadata
        src = plan.scale
    return levels


def plan_pyramid(
    metadata: md.MultiscaleMetadata | Mapping[str, Any],
    source_index: int,
    factors: Sequence[Sequence[int]],
) -> list[ScalePlan]:
    """Validate a pyramid without I/O: the plans of the scales that downsampling scale
    ``source_index`` of ``metadata`` by each of ``factors`` in turn would add."""
    if not isinstance(metadata, md.MultiscaleMetadata):
        metadata = md.MultiscaleMetadata.from_json(metadata)
    return [lv.plan for lv in _plan_levels(metadata, source_index, factors, None)]


def _run_levels(
    dest: _Destination,
    first: Volume,
    levels: list[_Level],
    method: str,
    marker: _Marker,
    tracker: _Tracker,
    level_groups: list[list[list[Box]]],
) -> list[Volume]:
    vols = [first]
    for level, groups in zip(levels, level_groups, strict=True):
        tracker.check()
        marker.add(level.plan.key)
        vol = dest.open(scale_metadata=level.scale_metadata, create=True)
        if groups:  # an empty list: the source holds no data, so neither does this scale
            _downsample_into(vols[-1], vol, level.factor, method, groups, tracker)
        vols.append(vol)
    return vols[1:]


def _level_groups(
    levels: list[_Level], itemsize: int, channels: int, budget: int
) -> list[list[list[Box]]]:
    out = []
    for lv in levels:
        bpv = math.prod(lv.factor) * itemsize * channels * 3
        out.append(_plan_blocks(lv.plan.scale, lv.plan.scale.chunk_sizes[0], bpv, budget))
    return out


def _factors(
    levels: int | Sequence[Sequence[int]], factor: Sequence[int]
) -> list[tuple[int, int, int]]:
    if isinstance(levels, int):
        if levels < 0:
            raise InvalidArgumentError(f"levels must be >= 0, not {levels}")
        return [_check_factor(factor)] * levels
    return [_check_factor(f) for f in levels]


def _cleanup(marker: _Marker, error: BaseException) -> None:
    """Remove what a failed operation wrote; if that fails too, say how to finish it."""
    try:
        marker.discard()
    except Exception as e:
        raise IncompleteVolumeError(
            f"{error} -- and removing the partial data of {marker.dest.label} failed ({e}); "
            f'it is marked by "{marker.key}": remove it with '
            "precomputed.create.discard_incomplete()",
            marker.dest.label,
        ) from error


# ---------------------------------------------------------------------------------------
# Public operations
# ---------------------------------------------------------------------------------------


def create_volume(
    destination: str | Mapping[str, Any],
    multiscale_metadata: Mapping[str, Any],
    scale_metadata: Mapping[str, Any],
    *,
    data: Any = None,
    axes: str = "xyzc",
    levels: int | Sequence[Sequence[int]] = 0,
    factor: Sequence[int] = (2, 2, 1),
    method: str | None = None,
    delete_existing: bool = False,
    progress: Progress | None = None,
    cancel: Cancel = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    kvstore: KvStore | None = None,
    context: Any = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Volume:
    """Create a new volume (``info`` with one scale), optionally write ``data`` into it
    and build ``levels`` pyramid levels; returns scale 0.

    ``multiscale_metadata`` and ``scale_metadata`` are TensorStore's spec members
    (``type``, ``data_type``, ``num_channels``; ``size``, ``voxel_offset``,
    ``resolution``, ``chunk_size``, ``encoding``, ``jpeg_quality``, ``png_level``,
    ``compressed_segmentation_block_size``, ``sharding``, ``key``). ``levels`` is a
    count of levels downsampled by ``factor`` each, or a list of per-level factors.
    ``method`` defaults to mode for segmentations and mean otherwise.

    Fails with :class:`AlreadyExistsError` if the destination already has an ``info``
    (unless ``delete_existing``, which first deletes everything under the volume path, as
    TensorStore does). On failure or cancellation everything written is removed.
    """
    dest = _destination(destination, kvstore, context, storage_options)
    plan = plan_scale(multiscale_metadata, scale_metadata)  # validate before any I/O
    meta = plan.metadata
    method = method or default_method(meta.type)
    if method not in METHODS:
        raise InvalidArgumentError(f'method must be "mean" or "mode", not {method!r}')
    factors = _factors(levels, factor)
    level_plans = _plan_levels(meta, plan.scale_index, factors, None)
    if data is not None:
        shape = tuple(int(n) for n in data.shape)
        axes = _check_axes(axes, shape)
        got = _data_shape_xyzc(axes, shape)
        want = (*plan.scale.size, meta.num_channels)
        if got != tuple(want):
            raise InvalidArgumentError(
                f"data of shape {shape} (axes {axes!r}) is x, y, z, c {got}, but the scale "
                f"is {tuple(want)}"
            )
    _check_writable(dest)
    info_key = dest.path + "info"
    if delete_existing:
        dest.kv.delete_prefix(dest.path)
    elif dest.kv.read(info_key) is not None:
        raise AlreadyExistsError(
            f'"{info_key}" already exists: {dest.label} is a volume (add a scale to it, or '
            "pass delete_existing=True to replace it)"
        )
    itemsize = np.dtype(meta.data_type).itemsize
    budget = block_bytes
    base_groups: list[list[Box]] = []
    if data is not None:
        data_itemsize = np.dtype(getattr(data, "dtype", np.float64)).itemsize
        bpv = itemsize * meta.num_channels * 2 + data_itemsize * meta.num_channels
        base_groups = _plan_blocks(plan.scale, plan.scale.chunk_sizes[0], bpv, budget)
    lv_groups = _level_groups(level_plans, itemsize, meta.num_channels, budget)
    if data is None:  # an empty volume: its levels are empty too, nothing to downsample
        lv_groups = [[] for _ in level_plans]
    total = sum(len(g) for g in base_groups) + sum(len(g) for gs in lv_groups for g in gs)
    tracker = _Tracker(total, progress, cancel)

    marker = _Marker(dest, new_volume=True)
    try:
        marker.add(plan.key)
        vol = dest.open(
            multiscale_metadata=dict(multiscale_metadata),
            scale_metadata=dict(scale_metadata),
            create=True,
        )
        if data is not None:
            _write_data(vol, data, axes, base_groups, tracker)
        if level_plans:
            _run_levels(dest, vol, level_plans, method, marker, tracker, lv_groups)
        tracker.check()
        marker.done()
    except BaseException as e:
        _cleanup(marker, e)
        raise
    return vol


def add_scale(
    volume: str | Mapping[str, Any] | Volume,
    scale_metadata: Mapping[str, Any] | None = None,
    *,
    factor: Sequence[int] | None = None,
    source: int | str | None = None,
    fill: bool = True,
    method: str | None = None,
    progress: Progress | None = None,
    cancel: Cancel = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    kvstore: KvStore | None = None,
    context: Any = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Volume:
    """Add a scale to an existing volume; returns it.

    With ``factor`` (x, y, z) the new scale is the next scale of ``source`` (a scale
    index or key; default: the volume's last scale, or ``volume``'s own scale when a
    :class:`Volume` is given): :func:`next_scale_metadata`, updated with
    ``scale_metadata``; with ``fill`` it is then filled by downsampling the source
    (``method`` mean or mode, by default from the volume type). Without ``factor`` the
    scale is created from ``scale_metadata`` alone and left empty.

    The new scale is appended to ``info`` with the driver's create procedure (its
    multiscale members, key and resolution rules). On failure or cancellation the scale
    is removed from ``info`` and its chunks deleted.
    """
    dest = _destination(volume, kvstore, context, storage_options)
    meta, _ = read_info(dest.kv, dest.path)
    if meta is None:
        raise FailedPreconditionError(f'Metadata at "{dest.path}info" does not exist')
    src_index = _source_index(meta, volume, source)
    if factor is None:
        if scale_metadata is None:
            raise InvalidArgumentError("give scale_metadata, or a factor to derive it from")
        plan = plan_scale(None, scale_metadata, meta)
        levels: list[_Level] = []
        sm = dict(scale_metadata)
        f3 = None
    else:
        f3 = _check_factor(factor)
        levels = _plan_levels(meta, src_index, [f3], scale_metadata)
        plan = levels[0].plan
        sm = levels[0].scale_metadata
    method = method or default_method(meta.type)
    if method not in METHODS:
        raise InvalidArgumentError(f'method must be "mean" or "mode", not {method!r}')

    _check_writable(dest)
    marker = _Marker(dest, new_volume=False)
    try:
        marker.add(plan.key)
        if f3 is not None and fill:
            src = dest.open(scale_index=src_index)
            groups = _level_groups(levels, src.dtype.itemsize, src.shape[3], block_bytes)[0]
            tracker = _Tracker(sum(len(g) for g in groups), progress, cancel)
            vol = dest.open(scale_metadata=sm, create=True)
            _downsample_into(src, vol, f3, method, groups, tracker)
            tracker.check()
        else:
            vol = dest.open(scale_metadata=sm, create=True)
        marker.done()
    except BaseException as e:
        _cleanup(marker, e)
        raise
    return vol


def _source_index(meta: md.MultiscaleMetadata, volume: Any, source: int | str | None) -> int:
    n = len(meta.scales)
    if source is None:
        if isinstance(volume, Volume):
            return volume.scale_index
        if n == 0:
            raise FailedPreconditionError("the volume has no scale to downsample")
        return n - 1
    if isinstance(source, str):
        for i, s in enumerate(meta.scales):
            if s.key == source:
                return i
        raise InvalidArgumentError(f"no scale with key {source!r}")
    if not -n <= int(source) < n:
        raise InvalidArgumentError(f"scale {source} does not exist, number of scales is {n}")
    return int(source) % n


def downsample(
    volume: Volume,
    factor: Sequence[int] = (2, 2, 1),
    *,
    scale_metadata: Mapping[str, Any] | None = None,
    method: str | None = None,
    progress: Progress | None = None,
    cancel: Cancel = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> Volume:
    """The next scale of ``volume`` (an open scale), downsampled by ``factor`` (x, y, z)
    and written; ``scale_metadata`` overrides the proposed members (chunk size,
    encoding, sharding, key...). See :func:`add_scale`."""
    return add_scale(
        volume,
        scale_metadata,
        factor=factor,
        method=method,
        progress=progress,
        cancel=cancel,
        block_bytes=block_bytes,
    )


def build_pyramid(
    volume: Volume,
    levels: int | Sequence[Sequence[int]] = 1,
    factor: Sequence[int] = (2, 2, 1),
    *,
    method: str | None = None,
    progress: Progress | None = None,
    cancel: Cancel = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> list[Volume]:
    """Add ``levels`` scales, each downsampling the previous one by ``factor`` (or a
    list of per-level factors), starting from ``volume``. Returns the new scales. On
    failure the levels added by this call are removed."""
    dest = _destination(volume)
    meta, _ = read_info(dest.kv, dest.path)
    if meta is None:
        raise FailedPreconditionError(f'Metadata at "{dest.path}info" does not exist')
    level_plans = _plan_levels(meta, volume.scale_index, _factors(levels, factor), None)
    method = method or default_method(meta.type)
    if method not in METHODS:
        raise InvalidArgumentError(f'method must be "mean" or "mode", not {method!r}')
    groups = _level_groups(level_plans, volume.dtype.itemsize, volume.shape[3], block_bytes)
    tracker = _Tracker(sum(len(g) for gs in groups for g in gs), progress, cancel)
    _check_writable(dest)
    marker = _Marker(dest, new_volume=False)
    try:
        vols = _run_levels(dest, volume, level_plans, method, marker, tracker, groups)
        tracker.check()
        marker.done()
    except BaseException as e:
        _cleanup(marker, e)
        raise
    return vols

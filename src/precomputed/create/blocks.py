"""Writing in blocks: a scale is processed in blocks aligned to its write chunks (shards),
so memory stays bounded, with progress and cancellation. Boxes here are
:class:`~precomputed.internal.geometry.Box` es in 0-based voxels of their scale."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from .. import metadata as md
from ..downsample import downsample as downsample_array
from ..errors import FailedPreconditionError, InvalidArgumentError, PrecomputedError
from ..internal.geometry import Box
from ..sharding import write_chunk_shape
from ..volume import Volume
from .plan import Level

__all__ = [
    "DEFAULT_BLOCK_BYTES",
    "Progress",
    "Cancel",
    "Cancelled",
    "Tracker",
    "plan_blocks",
    "write_groups",
    "block_bytes_for_write",
    "check_axes",
    "data_shape_xyzc",
    "write_array",
    "write_data",
    "downsampled_block",
    "downsample_into",
    "level_groups",
]

#: Bytes of source data processed per block (before decoding overheads).
DEFAULT_BLOCK_BYTES = 64 * 1024 * 1024

Progress = Callable[[int, int], None]
Cancel = threading.Event | Callable[[], bool] | None


class Cancelled(PrecomputedError):
    """The operation was cancelled; what it wrote has been removed."""


def _cancelled(cancel: Cancel) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


class Tracker:
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
                yield Box(lo, hi)  # type: ignore[arg-type]


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


def plan_blocks(
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


def write_groups(
    vol: Volume,
    groups: list[list[Box]],
    produce: Callable[[Box], np.ndarray],
    tracker: Tracker,
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


def block_bytes_for_write(vol: Volume, data_itemsize: int) -> float:
    return vol.dtype.itemsize * vol.shape[3] * 2 + data_itemsize * vol.shape[3]


_AXES = "xyzc"


def check_axes(axes: str, shape: Sequence[int]) -> str:
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


def data_shape_xyzc(axes: str, shape: Sequence[int]) -> tuple[int, int, int, int]:
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
    axes = check_axes(axes, shape)
    whole = volume.whole()  # absolute coordinates of the scale
    want = tuple(whole.shape)  # the whole scale, not a view
    got = data_shape_xyzc(axes, shape)
    if got != want:
        raise InvalidArgumentError(
            f"data of shape {shape} (axes {axes!r}) is x, y, z, c {got}, but the scale is {want}"
        )
    itemsize = np.dtype(getattr(data, "dtype", np.float64)).itemsize
    groups = plan_blocks(
        volume.scale, volume.handle.chunk_size, block_bytes_for_write(whole, itemsize), block_bytes
    )
    tracker = Tracker(sum(len(g) for g in groups), progress, cancel)
    write_data(whole, data, axes, groups, tracker)


def write_data(
    vol: Volume, data: Any, axes: str, groups: list[list[Box]], tracker: Tracker
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

    write_groups(vol, groups, produce, tracker)


def downsample_into(
    src: Volume,
    dst: Volume,
    factor: Sequence[int],
    method: str,
    groups: list[list[Box]],
    tracker: Tracker,
) -> None:
    write_groups(dst, groups, lambda box: downsampled_block(src, box, factor, method), tracker)


def downsampled_block(src: Volume, box: Box, factor: Sequence[int], method: str) -> np.ndarray:
    """The czyx block ``box`` (0-based voxels of the downsampled scale) of ``src``
    downsampled by ``factor``: coarse voxel j covers source voxels [j f, (j + 1) f), both
    counted from their scale's voxel offset (as Igneous and CloudVolume pair them); a
    block at the far edge uses only the voxels that exist."""
    s_off = src.scale.voxel_offset
    s_size = src.scale.size
    f = tuple(factor)
    lo, hi = box
    a = [o + lv * k for o, lv, k in zip(s_off, lo, f, strict=True)]
    b = [o + min(hv * k, n) for o, hv, k, n in zip(s_off, hi, f, s_size, strict=True)]
    block = src[a[0] : b[0], a[1] : b[1], a[2] : b[2], :].read_czyx()
    out = downsample_array(block, f, method)
    expect = (src.shape[3], *(hb - lb for lb, hb in zip(lo[::-1], hi[::-1], strict=True)))
    if out.shape != expect:  # pragma: no cover - guarded by the geometry check
        raise FailedPreconditionError(f"downsampled block {out.shape} != {expect}")
    return out


def level_groups(
    levels: list[Level], itemsize: int, channels: int, budget: int
) -> list[list[list[Box]]]:
    out = []
    for lv in levels:
        bpv = math.prod(lv.factor) * itemsize * channels * 3
        out.append(plan_blocks(lv.plan.scale, lv.plan.scale.chunk_sizes[0], bpv, budget))
    return out

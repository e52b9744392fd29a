"""Volumes, scales and pyramids: create a volume (optionally filled and with levels), add
a scale, downsample, build a pyramid, and bring the coarser scales up to date after an
edit of a finer one. Sizes, offsets and resolutions follow CloudVolume's ``add_scale``
and Igneous; blocks are downsampled by mean (images) or mode (segmentations)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .. import metadata as md
from ..chunkstore import CommitStats
from ..downsample import METHODS, integer_factor
from ..driver import open_scale, read_info
from ..errors import FailedPreconditionError, InvalidArgumentError
from ..internal.geometry import Box
from ..kvstore import KvStore
from ..transaction import Transaction
from ..volume import Volume
from .blocks import (
    DEFAULT_BLOCK_BYTES,
    Cancel,
    Progress,
    Tracker,
    check_axes,
    data_shape_xyzc,
    downsample_into,
    downsampled_block,
    level_groups,
    plan_blocks,
    write_data,
)
from .plan import Level, default_method, level_factors, plan_levels, plan_scale, valid_factor
from .recovery import (
    Destination,
    Marker,
    check_writable,
    claim_new_volume,
    cleanup,
    open_destination,
)

__all__ = [
    "create_volume",
    "add_scale",
    "downsample",
    "build_pyramid",
    "coarser_scales",
    "update_coarser_scales",
]


def _run_levels(
    dest: Destination,
    first: Volume,
    levels: list[Level],
    method: str,
    marker: Marker,
    tracker: Tracker,
    level_groups: list[list[list[Box]]],
) -> list[Volume]:
    vols = [first]
    for level, groups in zip(levels, level_groups, strict=True):
        tracker.check()
        marker.add(level.plan.key)
        vol = dest.open(scale_metadata=level.scale_metadata, create=True)
        if groups:  # an empty list: the source holds no data, so neither does this scale
            downsample_into(vols[-1], vol, level.factor, method, groups, tracker)
        vols.append(vol)
    return vols[1:]


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
    dest = open_destination(destination, kvstore, context, storage_options)
    plan = plan_scale(multiscale_metadata, scale_metadata)  # validate before any I/O
    meta = plan.metadata
    method = method or default_method(meta.type)
    if method not in METHODS:
        raise InvalidArgumentError(f'method must be "mean" or "mode", not {method!r}')
    factors = level_factors(levels, factor)
    level_plans = plan_levels(meta, plan.scale_index, factors, None)
    if data is not None:
        shape = tuple(int(n) for n in data.shape)
        axes = check_axes(axes, shape)
        got = data_shape_xyzc(axes, shape)
        want = (*plan.scale.size, meta.num_channels)
        if got != tuple(want):
            raise InvalidArgumentError(
                f"data of shape {shape} (axes {axes!r}) is x, y, z, c {got}, but the scale "
                f"is {tuple(want)}"
            )
    claim_new_volume(
        dest,
        delete_existing,
        f'"{dest.path}info" already exists: {dest.label} is a volume (add a scale to it, or '
        "pass delete_existing=True to replace it)",
    )
    itemsize = np.dtype(meta.data_type).itemsize
    budget = block_bytes
    base_groups: list[list[Box]] = []
    if data is not None:
        data_itemsize = np.dtype(getattr(data, "dtype", np.float64)).itemsize
        bpv = itemsize * meta.num_channels * 2 + data_itemsize * meta.num_channels
        base_groups = plan_blocks(plan.scale, plan.scale.chunk_sizes[0], bpv, budget)
    lv_groups = level_groups(level_plans, itemsize, meta.num_channels, budget)
    if data is None:  # an empty volume: its levels are empty too, nothing to downsample
        lv_groups = [[] for _ in level_plans]
    total = sum(len(g) for g in base_groups) + sum(len(g) for gs in lv_groups for g in gs)
    tracker = Tracker(total, progress, cancel)

    marker = Marker(dest, new_volume=True)
    try:
        marker.add(plan.key)
        vol = dest.open(
            multiscale_metadata=dict(multiscale_metadata),
            scale_metadata=dict(scale_metadata),
            create=True,
        )
        if data is not None:
            write_data(vol, data, axes, base_groups, tracker)
        if level_plans:
            _run_levels(dest, vol, level_plans, method, marker, tracker, lv_groups)
        tracker.check()
        marker.done()
    except BaseException as e:
        cleanup(marker, e)
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
    dest = open_destination(volume, kvstore, context, storage_options)
    meta, _ = read_info(dest.kv, dest.path)
    if meta is None:
        raise FailedPreconditionError(f'Metadata at "{dest.path}info" does not exist')
    src_index = _source_index(meta, volume, source)
    if factor is None:
        if scale_metadata is None:
            raise InvalidArgumentError("give scale_metadata, or a factor to derive it from")
        plan = plan_scale(None, scale_metadata, meta)
        levels: list[Level] = []
        sm = dict(scale_metadata)
        f3 = None
    else:
        f3 = valid_factor(factor)
        levels = plan_levels(meta, src_index, [f3], scale_metadata)
        plan = levels[0].plan
        sm = levels[0].scale_metadata
    method = method or default_method(meta.type)
    if method not in METHODS:
        raise InvalidArgumentError(f'method must be "mean" or "mode", not {method!r}')

    check_writable(dest)
    marker = Marker(dest, new_volume=False)
    try:
        marker.add(plan.key)
        if f3 is not None and fill:
            src = dest.open(scale_index=src_index)
            groups = level_groups(levels, src.dtype.itemsize, src.shape[3], block_bytes)[0]
            tracker = Tracker(sum(len(g) for g in groups), progress, cancel)
            vol = dest.open(scale_metadata=sm, create=True)
            downsample_into(src, vol, f3, method, groups, tracker)
            tracker.check()
        else:
            vol = dest.open(scale_metadata=sm, create=True)
        marker.done()
    except BaseException as e:
        cleanup(marker, e)
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
    dest = open_destination(volume)
    meta, _ = read_info(dest.kv, dest.path)
    if meta is None:
        raise FailedPreconditionError(f'Metadata at "{dest.path}info" does not exist')
    level_plans = plan_levels(meta, volume.scale_index, level_factors(levels, factor), None)
    method = method or default_method(meta.type)
    if method not in METHODS:
        raise InvalidArgumentError(f'method must be "mean" or "mode", not {method!r}')
    groups = level_groups(level_plans, volume.dtype.itemsize, volume.shape[3], block_bytes)
    tracker = Tracker(sum(len(g) for gs in groups for g in gs), progress, cancel)
    check_writable(dest)
    marker = Marker(dest, new_volume=False)
    try:
        vols = _run_levels(dest, volume, level_plans, method, marker, tracker, groups)
        tracker.check()
        marker.done()
    except BaseException as e:
        cleanup(marker, e)
        raise
    return vols


# ---------------------------------------------------------------------------------------
# After an edit: bring the coarser scales up to date
# ---------------------------------------------------------------------------------------


def coarser_scales(
    metadata: md.MultiscaleMetadata, scale_index: int
) -> list[tuple[int, int, tuple[int, int, int]]]:
    """``(scale, source scale, factor)`` for each scale coarser than ``scale_index``,
    finest first: each is downsampled from the coarsest scale before it whose resolution
    it divides by an integer factor (scales that divide none are left out)."""
    base_res = metadata.scales[scale_index].resolution
    candidates = []
    for i, s in enumerate(metadata.scales):
        f = integer_factor(s.resolution, base_res)
        if i != scale_index and f is not None and f != (1, 1, 1):
            candidates.append((math.prod(f), i))
    chain: list[tuple[int, int, tuple[int, int, int]]] = []
    done = [scale_index]
    for _, t in sorted(candidates):
        for src in reversed(done):
            f = integer_factor(metadata.scales[t].resolution, metadata.scales[src].resolution)
            if f is not None:
                chain.append((t, src, f))
                done.append(t)
                break
    return chain


def update_coarser_scales(
    volume: Volume,
    boxes: Sequence[Box],
    *,
    method: str | None = None,
    scale_of: Callable[[int], Volume] | None = None,
    progress: Progress | None = None,
) -> dict[int, CommitStats]:
    """Recompute the coarser scales of ``volume``'s scale where ``boxes`` (absolute voxel
    boxes of that scale, e.g. what an edit changed) affect them, by downsampling
    (``method``: mode for segmentations, mean otherwise) scale by scale along
    :func:`coarser_scales`; each coarser scale is written in one transaction, so each of
    its shards is rewritten once. ``scale_of(index)`` opens another scale (default:
    :func:`precomputed.driver.open_scale`, sharing the store and cache). ``progress(done,
    total)`` counts the write groups committed; the total grows as scales are planned.
    The scales are those of the ``info`` as stored now. Returns the commit statistics per
    updated scale."""
    meta, _ = read_info(volume.kvstore, volume.path)  # the scales as stored now
    if meta is None:
        raise FailedPreconditionError(f'Metadata at "{volume.path}info" does not exist')
    method = method or default_method(meta.type)
    opened: dict[int, Volume] = {volume.scale_index: volume}

    def scale(index: int) -> Volume:
        if index not in opened:
            opened[index] = (
                scale_of(index) if scale_of is not None else open_scale(volume, index, meta)
            )
        return opened[index]

    done = total = 0

    def step(_: int, __: int) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    changed: dict[int, list[Box]] = {volume.scale_index: list(dict.fromkeys(boxes))}
    results: dict[int, CommitStats] = {}
    for target, src, f in coarser_scales(meta, volume.scale_index):
        src_vol, dst_vol = scale(src), scale(target)
        s_off = np.array(src_vol.scale.voxel_offset)
        d_off = np.array(dst_vol.scale.voxel_offset)
        d_size = np.array(dst_vol.scale.size)
        fa = np.array(f)
        txn = Transaction()
        dst = dst_vol.whole().with_transaction(txn)
        out: list[Box] = []
        for box in changed.get(src, []):
            lo = np.maximum((np.array(box.start) - s_off) // fa, 0)
            hi = np.minimum(-(-(np.array(box.stop) - s_off) // fa), d_size)
            if np.any(hi <= lo):
                continue
            block = downsampled_block(src_vol.whole(), Box(tuple(lo), tuple(hi)), f, method)
            t0, t1 = d_off + lo, d_off + hi
            dst[t0[0] : t1[0], t0[1] : t1[1], t0[2] : t1[2], :] = block.transpose(3, 2, 1, 0)
            out.append(Box(tuple(int(v) for v in t0), tuple(int(v) for v in t1)))  # type: ignore[arg-type]
        total += txn.dirty_groups()
        results[target] = txn.commit(step)
        changed[target] = list(dict.fromkeys(out))
    return results

"""A volume from one store to another: :func:`copy` (what ``precomputed copy`` runs).

Unchanged, it copies the stored objects byte for byte (chunks, shards, meshes, segment
properties), the ``info`` last, so the copy opens only once it is complete. With a new
``encoding``, ``sharding`` or ``chunk_size`` every scale is rewritten block by block
(decoded from the source, encoded for the destination), and the objects outside the
scales (meshes, segment properties) are copied as they are. The destination carries the
``INCOMPLETE`` marker while the copy runs; a failure removes what was written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import metadata as md
from .convert.build import DEFAULT_SHARD_VOXELS, auto_sharding
from .create import DEFAULT_BLOCK_BYTES, write_array
from .create.blocks import Cancel, Tracker
from .create.recovery import (
    MARKER,
    Destination,
    Marker,
    claim_new_volume,
    cleanup,
    open_destination,
)
from .driver import read_info
from .errors import FailedPreconditionError, InvalidArgumentError
from .info_members import set_info_member

__all__ = ["copy"]

Progress = Callable[[int, int], None]

_BATCH = 64


def copy(
    source: str | Mapping[str, Any],
    destination: str | Mapping[str, Any],
    *,
    encoding: str | None = None,
    jpeg_quality: int | None = None,
    sharding: str | Mapping[str, Any] | None = None,
    chunk_size: Sequence[int] | None = None,
    shard_voxels: int = DEFAULT_SHARD_VOXELS,
    overwrite: bool = False,
    progress: Progress | None = None,
    cancel: Cancel = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    source_options: Mapping[str, Any] | None = None,
    destination_options: Mapping[str, Any] | None = None,
) -> dict[str, int]:
    """Copy the volume at ``source`` to ``destination`` (URLs, paths or TensorStore
    specs; any two stores). ``encoding``/``jpeg_quality``, ``sharding`` (``"none"``,
    ``"auto"``, a spec) and ``chunk_size`` re-encode or reshard every scale; without them
    the bytes are copied as stored. Returns ``{"objects": n, "bytes": n}`` for a byte
    copy, ``{"scales": n, "objects": n}`` (objects copied as they are) for a rewrite."""
    src = open_destination(source, None, None, source_options)
    meta, _ = read_info(src.kv, src.path)
    if meta is None:
        raise FailedPreconditionError(f"no volume at {src.label}: {src.kv.url}{src.path}info does not exist")
    dest = open_destination(destination, None, None, destination_options)
    if dest.kv.url + dest.path == src.kv.url + src.path:
        raise InvalidArgumentError(f"source and destination are the same volume ({src.label})")
    claim_new_volume(dest, overwrite)
    rewrite = encoding is not None or sharding is not None or chunk_size is not None
    marker = Marker(dest, new_volume=True)
    written: list[str] = []
    try:
        for s in meta.scales:
            marker.add(s.key)
        if rewrite:
            result = _rewrite(
                src, dest, meta, encoding, jpeg_quality, sharding, chunk_size, shard_voxels,
                progress, cancel, block_bytes, written,
            )
        else:
            result = _byte_copy(src, dest, progress, cancel, written)
        marker.done()
    except BaseException as e:
        if written:
            dest.kv.delete_many(written)
        cleanup(marker, e)
        raise
    return result


def _byte_copy(
    src: Destination, dest: Destination, progress: Progress | None, cancel: Cancel,
    written: list[str],
) -> dict[str, int]:
    keys = [k for k in src.kv.list(src.path) if k[len(src.path):] not in (MARKER,)]
    info = src.path + "info"
    keys = [k for k in keys if k != info] + [info]  # the info last: complete, then visible
    tracker = Tracker(len(keys), progress, cancel)
    nbytes = 0
    for i in range(0, len(keys), _BATCH):
        tracker.check()
        batch = keys[i : i + _BATCH]
        for key, blob in zip(batch, src.kv.read_many(batch), strict=True):
            if blob is None:  # deleted while we copy: nothing to copy
                tracker.step()
                continue
            target = dest.path + key[len(src.path):]
            dest.kv.write(target, blob)
            written.append(target)
            nbytes += len(blob)
            tracker.step()
    return {"objects": len(written), "bytes": nbytes}


def _scale_prefixes(path: str, meta: md.MultiscaleMetadata) -> list[str]:
    return [md.resolve_scale_key(path, s.key) + "/" for s in meta.scales]


def _rewrite(
    src: Destination, dest: Destination, meta: md.MultiscaleMetadata,
    encoding: str | None, jpeg_quality: int | None, sharding: str | Mapping[str, Any] | None,
    chunk_size: Sequence[int] | None, shard_voxels: int, progress: Progress | None,
    cancel: Cancel, block_bytes: int, written: list[str],
) -> dict[str, int]:
    mm = {"type": meta.type, "data_type": meta.data_type, "num_channels": meta.num_channels}
    scales = [src.open(scale_index=i) for i in range(len(meta.scales))]
    for i, (s, vol) in enumerate(zip(meta.scales, scales, strict=True)):
        enc = encoding or s.encoding
        chunk = [int(c) for c in (chunk_size or s.chunk_sizes[0])]
        sm: dict[str, Any] = {
            "key": s.key,
            "size": list(s.size),
            "voxel_offset": list(s.voxel_offset),
            "resolution": list(s.resolution),
            "chunk_size": chunk,
            "encoding": enc,
        }
        if enc == "jpeg":
            sm["jpeg_quality"] = jpeg_quality if jpeg_quality is not None else s.jpeg_quality
        if enc == "compressed_segmentation":
            sm["compressed_segmentation_block_size"] = list(
                s.compressed_segmentation_block_size or (8, 8, 8)
            )
        if sharding is None:
            if s.sharding is not None:
                sm["sharding"] = s.sharding.to_json()
        elif sharding == "auto":
            auto = auto_sharding(s.size, chunk, enc, shard_voxels)
            if auto is not None:
                sm["sharding"] = auto
        elif isinstance(sharding, str):
            if sharding != "none":
                raise InvalidArgumentError(
                    f'sharding must be "none", "auto" or a sharding spec, not {sharding!r}'
                )
        else:
            sm["sharding"] = dict(sharding)
        options = {"multiscale_metadata": mm} if i == 0 else {}
        out = dest.open(scale_metadata=sm, create=True, **options)
        write_array(  # progress counts the blocks of each scale in turn
            out, vol.whole().zyx(squeeze_channel=False), axes="czyx", progress=progress,
            cancel=cancel, block_bytes=block_bytes,
        )
    # the objects outside the scales: meshes, segment properties (and their info members)
    inside = _scale_prefixes(src.path, meta)
    extra = [
        k for k in src.kv.list(src.path)
        if k != src.path + "info" and k[len(src.path):] != MARKER
        and not any(k.startswith(p) for p in inside)
    ]
    for key, blob in zip(extra, src.kv.read_many(extra) if extra else [], strict=True):
        if blob is not None:
            target = dest.path + key[len(src.path):]
            dest.kv.write(target, blob)
            written.append(target)
    for name, value in meta.extra.items():
        set_info_member(dest.kv, dest.path, name, value)
    return {"scales": len(scales), "objects": len(written)}

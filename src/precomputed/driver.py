"""``open()``: TensorStore's open/create flow for Precomputed volumes; ``open_scales`` and
``open_scale`` for the other scales of an opened volume; how volumes travel (pickling).

1. ``delete_existing``: delete every key under the volume path, then create.
2. open: read ``info``; select a scale. A missing scale falls through to creation only
   when ``create`` is set (NOT_FOUND from selection), like TensorStore.
3. create: read-modify-write ``info`` conditionally on its generation, so concurrent
   adders of different scales both end up in the file; retry on conflict.
"""

from __future__ import annotations

import copyreg
from typing import Any

import numpy as np

from . import constraints, reprs
from . import metadata as md
from .chunkstore import ChunkStore, ShardedChunkStore, UnshardedChunkStore
from .codecs import stored_size_bounds
from .context import Context, default_context
from .errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from .internal.geometry import ChunkGrid
from .kvstore import NO_VALUE, KvStore, open_kvstore
from .scale import OpenedScale
from .spec import OpenRequest, parse_spec
from .volume import Volume

__all__ = ["open", "open_scales", "open_scale", "read_info", "reopen_view"]

_MAX_INFO_RETRIES = 32


def read_info(kvstore: KvStore, path: str) -> tuple[md.MultiscaleMetadata | None, str]:
    """Parse ``<path>info``; returns (metadata or None if missing, generation)."""
    key = path + "info"
    data, generation = kvstore.read_with_generation(key)
    if data is None:
        return None, generation
    return parse_info_bytes(data, key), generation


def parse_info_bytes(data: bytes, key: str) -> md.MultiscaleMetadata:
    return md.MultiscaleMetadata.loads(data, key=key)


def open(
    spec: dict[str, Any] | str | OpenRequest,
    *,
    context: Context | None = None,
    kvstore: KvStore | None = None,
    metadata: md.MultiscaleMetadata | None = None,
    **options: Any,
) -> Volume:
    """Open (or create) one scale of a Precomputed volume.

    ``spec`` is a TensorStore ``neuroglancer_precomputed`` JSON spec or a URL
    (``gs://b/v``, ``s3://b/v``, ``https://h/v``, ``file:///p``, a local path,
    ``memory://v``, optionally prefixed ``precomputed://``). Keyword options mirror
    ``tensorstore.open``: ``open``, ``create``, ``delete_existing``, ``scale_index``,
    ``dtype``, ``schema``, ``fill_missing_data_reads``, ... plus ``storage_options`` for
    fsspec (e.g. ``{"endpoint_url": ...}``). ``metadata``: the volume's ``info`` as a
    caller already read it (a probe), opened without reading it again (only to open).
    """
    req = parse_spec(spec, **options)
    ctx = context or _context_from(req)
    storage_options = dict(req.storage_options or {})
    if ctx.io_concurrency_explicit:
        storage_options.setdefault("concurrency", ctx.io_concurrency)
    kv = kvstore or open_kvstore(req.kvstore, **storage_options)
    path = req.path
    info_key = path + "info"

    if metadata is not None:
        if req.create or req.delete_existing or not req.open:
            raise InvalidArgumentError(
                "metadata= opens an existing volume: it cannot be combined with create, "
                "delete_existing or open=False"
            )
        index, chunk = constraints.select_scale(
            metadata, req.multiscale, req.scale, req.scale_index, req.schema
        )
        req.schema.validate_against(metadata, index, chunk)
        return _make_volume(kv, path, metadata, index, chunk, req, ctx)

    if req.delete_existing:
        kv.delete_prefix(path)

    if req.assume_metadata or req.assume_cached_metadata:
        created, index = constraints.create_scale(
            None, req.multiscale, req.scale, req.scale_index, req.schema
        )
        return _make_volume(kv, path, created, index, None, req, ctx)

    for _ in range(_MAX_INFO_RETRIES):
        meta, generation = read_info(kv, path)
        if req.open:
            if meta is not None:
                try:
                    index, chunk = constraints.select_scale(
                        meta, req.multiscale, req.scale, req.scale_index, req.schema
                    )
                except NotFoundError:
                    if not req.create:
                        raise
                else:
                    req.schema.validate_against(meta, index, chunk)
                    return _make_volume(kv, path, meta, index, chunk, req, ctx)
            elif not req.create:
                raise NotFoundError(f'Metadata at "{info_key}" does not exist')
        try:
            new_meta, index = constraints.create_scale(
                meta, req.multiscale, req.scale, req.scale_index, req.schema
            )
        except AlreadyExistsError:
            if req.open:
                continue  # someone created it meanwhile: open it
            raise
        md.check_scale(new_meta, index)  # before anything is written
        if kv.write_if(info_key, new_meta.dumps(), generation if meta is not None else NO_VALUE):
            return _make_volume(kv, path, new_meta, index, None, req, ctx)
    raise FailedPreconditionError(
        f'Error writing "{info_key}": too many concurrent modifications, giving up'
    )


def open_scales(spec: dict[str, Any] | str, **options: Any) -> list[Volume]:
    """Every scale of a volume, finest first, sharing one kvstore, metadata and context.

    ``scale_index``/``scale_metadata`` in ``spec`` only choose which scale is opened
    first (and validated); the result always lists all scales in ``info`` order.
    """
    first = open(spec, **options)
    return [
        first if i == first.scale_index else open_scale(first, i)
        for i in range(len(first.metadata.scales))
    ]


def open_scale(
    volume: Volume, index: int, metadata: md.MultiscaleMetadata | None = None
) -> Volume:
    """Scale ``index`` of the volume ``volume`` belongs to, sharing its store, metadata
    and context: the one way to open another scale of an opened volume (no I/O).
    ``metadata`` (the volume's ``info`` as re-read) reaches scales added since ``volume``
    was opened."""
    h = volume.handle
    meta = h.metadata if metadata is None else metadata
    if not 0 <= index < len(meta.scales):
        raise FailedPreconditionError(
            f"Scale {index} does not exist, number of scales is {len(meta.scales)}"
        )
    if h.request is None:
        req = parse_spec(
            {"driver": "neuroglancer_precomputed", "kvstore": h.kvstore.spec(), "path": h.path}
        )
    else:
        req = h.request
    return _make_volume(h.kvstore, h.path, meta, index, None, req.for_scale(index), h.context)


reprs.register_scale_opener(open_scale)  # thumbnails from the coarsest scale


def _context_from(req: OpenRequest) -> Context:
    if req.context:
        return Context(req.context)
    return default_context()


def _make_volume(
    kv: KvStore,
    path: str,
    meta: md.MultiscaleMetadata,
    index: int,
    chunk: tuple[int, int, int] | None,
    req: OpenRequest,
    ctx: Context,
) -> Volume:
    md.check_scale(meta, index)  # what TensorStore takes but this driver refuses
    scale = meta.scales[index]
    cx, cy, cz = chunk or scale.chunk_sizes[0]
    chunk_xyz = (cx, cy, cz)
    grid = ChunkGrid(tuple(scale.size), tuple(scale.voxel_offset), chunk_xyz)  # type: ignore[arg-type]
    prefix = md.resolve_scale_key(path, scale.key)
    enc = scale.chunk_encoding()
    dtype = np.dtype(meta.data_type)
    channels = meta.num_channels
    store: ChunkStore
    if scale.sharding is not None:
        # Every chunk is bounded by the largest one: the chunk size clipped to the volume.
        x, y, z = (min(c, s) for c, s in zip(chunk_xyz, scale.size, strict=True))
        _, most = stored_size_bounds((channels, z, y, x), dtype, enc)
        store = ShardedChunkStore(kv, prefix, grid, scale.sharding, max_chunk_bytes=most)
    else:

        def sizes(pos: tuple[int, int, int]) -> tuple[int | None, int]:
            x, y, z = grid.chunk_shape(pos)
            return stored_size_bounds((channels, z, y, x), dtype, enc)

        store = UnshardedChunkStore(kv, prefix, grid, sizes)

    handle = OpenedScale(
        kvstore=kv,
        path=path,
        metadata=meta,
        scale_index=index,
        chunk_size=chunk_xyz,
        store=store,
        context=ctx,
        request=req,
        fill_missing_data_reads=req.fill_missing_data_reads,
        store_data_equal_to_fill_value=req.store_data_equal_to_fill_value,
    )
    vol = Volume(handle)
    selection = req.transform_index()
    if selection is not None:
        vol = vol[tuple(selection)]
    return vol


# -- pickling: volumes travel as their spec ---------------------------------------------------


def reopen_view(spec: dict[str, Any]) -> Volume:
    """Reopen a pickled view from its spec (which carries the view's box as a
    ``transform``): the receiver opens it with its own cache."""
    return open(spec)


def _reduce_volume(vol: Volume) -> tuple[Any, tuple[Any, ...]]:
    # Nothing process-local (caches, pools, locks, transactions) travels with a volume.
    return reopen_view, (vol.spec(),)


copyreg.pickle(Volume, _reduce_volume)

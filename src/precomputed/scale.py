"""One opened scale: its state and its chunk-level operations, shared by every view of it.

An :class:`OpenedScale` holds what the read and write paths need (the stores, geometry,
codec, options, the request it was opened with, the cache id) and does what concerns one
chunk: its shape, decoding and encoding it, the error for a missing one. The read path
(:mod:`.readpath`), the write path (:mod:`.writepath`) and transactions work on it.

Named ``OpenedScale`` rather than ``Scale``: ``Volume.scale`` is the scale's *metadata*
(``ScaleMetadata``), as TensorStore's users know it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Hashable, Sequence
from typing import Any, Protocol

import numpy as np

from .chunkstore import ChunkStore
from .codecs import ChunkEncoding, decode_chunk, encode_chunk
from .context import Context
from .errors import InvalidArgumentError, NotFoundError
from .internal.geometry import ChunkGrid, Vec3
from .kvstore import KvStore
from .metadata import MultiscaleMetadata
from .spec import OpenRequest, bound_spec

__all__ = ["OpenedScale", "ChunkOverlay", "MISSING"]

#: Cache marker for a chunk known to be absent from storage.
MISSING = np.zeros(0, np.uint8)


class ChunkOverlay(Protocol):
    """Decoded chunks that stand in front of storage: what a transaction buffers. Reads
    take a chunk from here first; buffered writes put it here, saying which voxels they
    wrote (``written``: a czyx index of the chunk, ``None``: all of it), so a commit can
    re-apply just those on top of what is stored by then."""

    def get(self, scale: OpenedScale, pos: Vec3, /) -> np.ndarray | None: ...

    def put(
        self, scale: OpenedScale, pos: Vec3, chunk: np.ndarray, /, written: Any = None
    ) -> None: ...


class OpenedScale:
    """Everything shared by the views of one opened scale: store, geometry, codec, cache.

    ``request`` is the :class:`~precomputed.spec.OpenRequest` the scale was opened with
    (its options and bound spec); ``transaction`` the with-block transaction that routes
    the scale's writes while one is active.
    """

    def __init__(
        self,
        *,
        kvstore: KvStore,
        path: str,
        metadata: MultiscaleMetadata,
        scale_index: int,
        chunk_size: Vec3,
        store: ChunkStore,
        context: Context,
        request: OpenRequest | None = None,
        fill_missing_data_reads: bool = True,
        store_data_equal_to_fill_value: bool = False,
    ) -> None:
        self.kvstore = kvstore
        #: The volume directory inside the kvstore (ends with ``/`` or is empty).
        self.path = path
        self.metadata = metadata
        self.scale_index = scale_index
        self.scale = metadata.scales[scale_index]
        cx, cy, cz = chunk_size
        self.chunk_size: Vec3 = (int(cx), int(cy), int(cz))
        self.grid: ChunkGrid = store.grid
        self.store = store
        self.context = context
        self.request = request
        self.dtype = np.dtype(metadata.data_type).newbyteorder("=")
        self.num_channels = int(metadata.num_channels)
        self.encoding: ChunkEncoding = self.scale.chunk_encoding()
        self.fill_missing_data_reads = fill_missing_data_reads
        self.store_data_equal_to_fill_value = store_data_equal_to_fill_value
        #: What the decoded-chunk cache (shared by every scale of the context) keys on.
        self.cache_id = (kvstore.url, store.prefix, self.chunk_size)
        #: The stored scale this handle addresses; other handles of it in the context
        #: share the cached chunks but hold their own shard indices. The layout is part of
        #: it: a handle opened on an older ``info`` (unsharded, other chunks) addresses
        #: other keys under the same prefix.
        self.storage_id = (kvstore.url, store.prefix, self.chunk_size, self.scale.sharding)
        self.transaction: ChunkOverlay | None = None  # the active with-block transaction
        self.lock = threading.RLock()
        #: When the scale was opened (``time.time()``): the staleness bound of
        #: ``recheck_cached_data: "open"``.
        self.opened_at = time.time()
        recheck = True if request is None else request.recheck_cached_data
        #: TensorStore's ``recheck_cached_data``: True (revalidate cached chunks on every
        #: read), ``"open"`` (those cached before the open), False (never), or a time
        #: (those cached before it, seconds since the epoch).
        self.recheck_cached_data: bool | str | float = recheck
        context.track(self)

    # -- chunk-level operations -------------------------------------------------------------
    def chunk_shape(self, pos: Vec3) -> tuple[int, int, int, int]:
        x, y, z = self.grid.chunk_shape(pos)
        return (self.num_channels, z, y, x)

    def decode(self, pos: Vec3, data: bytes) -> np.ndarray:
        shape = self.chunk_shape(pos)
        if (
            self.encoding.encoding == "raw"
            and len(data) == math.prod(shape) * self.dtype.itemsize
        ):
            # Zero-copy: a read-only view of immutable bytes is safe to cache and share.
            return np.frombuffer(data, self.dtype.newbyteorder("<")).reshape(shape)
        return decode_chunk(data, shape, self.dtype, self.encoding, key=self.store.describe(pos))

    def encode(self, pos: Vec3, chunk: np.ndarray) -> bytes | None:
        """Encoded bytes, or ``None`` when the chunk is all fill value and is not stored."""
        if not self.store_data_equal_to_fill_value and not chunk.any():
            return None
        return encode_chunk(np.ascontiguousarray(chunk), self.encoding)

    def staleness_bound(self) -> float | None:
        """The oldest time a cached chunk may have been known current to be used by a read
        starting now without revalidation (``recheck_cached_data``); None: any age."""
        recheck = self.recheck_cached_data
        if recheck is True:
            return time.time()
        if recheck is False:
            return None
        if recheck == "open":
            return self.opened_at
        return float(recheck)

    def invalidate_chunks(self, positions: Sequence[Vec3]) -> None:
        self.context.cache.invalidate_positions(self.cache_id, [tuple(p) for p in positions])

    def stored(self, group: Hashable, positions: Sequence[Vec3]) -> None:
        """This handle rewrote ``group`` (a shard, or one chunk's key) with ``positions``:
        drop those chunks from the context's cache and the group's index data from every
        other handle of the same stored scale in the context (this handle's store keeps
        its own up to date), so their next reads see what was written."""
        self.invalidate_chunks(positions)
        for other in self.context.scales(self.storage_id):
            if other is not self:
                other.store.invalidate([group])

    def refresh(self) -> None:
        """Forget everything cached of this stored scale in the context: its decoded
        chunks and the shard and minishard indices of every handle of it, so the next
        reads see storage as it is now (after a writer elsewhere changed it)."""
        for other in self.context.scales(self.storage_id):
            other.store.invalidate()
        self.context.cache.invalidate_prefix((self.cache_id,))

    def missing(self, pos: Vec3) -> NotFoundError:
        """The NOT_FOUND error for a missing chunk (``fill_missing_data_reads=False``)."""
        where = self.store.describe(pos)
        return NotFoundError(
            f'chunk {{{pos[0]}, {pos[1]}, {pos[2]}}} stored at "{where}" is missing'
        )

    # -- the spec and transactions ---------------------------------------------------------
    def spec(self, minimal: bool = False) -> dict[str, Any]:
        """The bound TensorStore spec of this scale (its whole domain)."""
        if self.request is None:
            raise InvalidArgumentError("this volume has no spec")
        return bound_spec(
            self.metadata,
            self.scale_index,
            self.chunk_size,
            self.kvstore.spec(),
            self.request,
            minimal=minimal,
        )

    def attach_transaction(self, txn: ChunkOverlay) -> None:
        """Route this scale's writes (and reads) through ``txn`` until detached."""
        with self.lock:
            if self.transaction is not None:
                raise InvalidArgumentError("a transaction is already active on this volume")
            self.transaction = txn

    def detach_transaction(self, txn: ChunkOverlay) -> None:
        with self.lock:
            if self.transaction is txn:
                self.transaction = None

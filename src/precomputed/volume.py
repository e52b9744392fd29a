"""``Volume``: one scale of a Precomputed volume as a lazy 4-D array (x, y, z, channel).

Indexing returns cheap views in absolute voxel coordinates, like TensorStore. I/O is
explicit: ``read()`` / ``np.asarray`` gathers the needed chunks concurrently (through the
shared decoded-chunk cache), ``vol[...] = x`` writes with read-modify-write of partial
chunks, grouped by shard. Arrays come back laid out as chunks are stored: Fortran order
over (x, y, z, channel), i.e. C order over (channel, z, y, x), so napari's z, y, x view
is a free transpose.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .chunkstore import ChunkStore, CommitStats
from .codecs import ChunkEncoding, decode_chunk, decode_chunk_into, encode_chunk
from .codecs.cseg.region import decode_cseg_region
from .errors import InvalidArgumentError, NotFoundError, OutOfRangeError
from .internal import recycle
from .internal.arraylike import ArrayLike
from .internal.geometry import Box, ChunkGrid, Vec3
from .internal.selection import normalize_index
from .schema import ChunkLayout
from .transaction import GROUP_CONCURRENCY, Transaction, commit_chunks

if TYPE_CHECKING:
    from .cache import Context
    from .kvstore import KvStore

__all__ = ["Volume", "ScaleHandle", "IndexDomain"]

LABELS = ("x", "y", "z", "channel")
#: Cache marker for a chunk known to be absent from storage.
_MISSING = np.zeros(0, np.uint8)
#: Per-thread scratch buffer for chunks read and consumed without being kept.
_scratch = threading.local()
#: Chunks fetched per batch on large reads (the next batch is fetched while one decodes):
#: bounds the encoded bytes held at once and lets decoding start early.
READ_BATCH = 64
#: Striped locks serialising the read-modify-write of one write group (chunk or shard)
#: within the process: concurrent partial writes to one chunk must not lose updates.
#: Re-entrant, so a write made from inside another (a callback) cannot deadlock.
_GROUP_LOCKS = [threading.RLock() for _ in range(64)]


def _map_in_groups(pool: Any, fn: Callable[[Any], None], items: list[Any], threads: int) -> None:
    """Run ``fn`` on every item on ``pool`` as a few tasks per thread, not one future per
    item: a future costs about as much as reading a cached 256 KiB chunk file."""
    k = min(len(items), 4 * threads)

    def run(group: list[Any]) -> None:
        for item in group:
            fn(item)

    for f in [pool.submit(run, items[i::k]) for i in range(k)]:
        f.result()


def _zyx(part: Box, origin: Box) -> tuple[slice, slice, slice]:
    """The (z, y, x) slices of ``part`` in an array laid out over ``origin``."""
    (a0, a1, a2), (b0, b1, b2), (o0, o1, o2) = part.start, part.stop, origin.start
    return slice(a2 - o2, b2 - o2), slice(a1 - o1, b1 - o1), slice(a0 - o0, b0 - o0)


def copy_rows(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src``, moving each innermost row as one opaque item when both rows are
    contiguous: numpy's per-row overhead otherwise dominates for chunk-sized rows (a 64-byte
    row copies about 1.7x faster this way)."""
    n = src.shape[-1] if src.ndim else 0
    if (
        n > 1
        and dst.shape == src.shape
        and dst.dtype == src.dtype
        and src.strides[-1] == src.itemsize
        and dst.strides[-1] == dst.itemsize
        and src.size
    ):
        width = f"V{n * src.itemsize}"
        dst.view(width)[...] = src.view(width)
        return
    dst[...] = src


@dataclass(frozen=True)
class IndexDomain:
    """Bounds of a view: ``[inclusive_min, exclusive_max)`` per dimension, with labels."""

    inclusive_min: tuple[int, ...]
    exclusive_max: tuple[int, ...]
    labels: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.inclusive_min, self.exclusive_max, strict=True))

    @property
    def origin(self) -> tuple[int, ...]:
        return self.inclusive_min

    def __repr__(self) -> str:
        dims = ", ".join(
            f'"{n}": [{a}, {b})'
            for n, a, b in zip(self.labels, self.inclusive_min, self.exclusive_max, strict=True)
        )
        return f"{{ {dims} }}"


class ScaleHandle:
    """Everything shared by the views of one opened scale: store, geometry, codec, cache."""

    def __init__(
        self,
        *,
        kvstore: KvStore,
        path: str,
        metadata: Any,
        scale_index: int,
        chunk_size: Vec3,
        store: ChunkStore,
        context: Context,
        fill_missing_data_reads: bool = True,
        store_data_equal_to_fill_value: bool = False,
        spec_factory: Callable[..., dict[str, Any]] | None = None,
    ) -> None:
        self.kvstore = kvstore
        self.path = path
        self.metadata = metadata
        self.scale_index = scale_index
        self.scale = metadata.scales[scale_index]
        cx, cy, cz = chunk_size
        self.chunk_size: Vec3 = (int(cx), int(cy), int(cz))
        self.grid: ChunkGrid = store.grid
        self.store = store
        self.context = context
        self.dtype = np.dtype(metadata.data_type).newbyteorder("=")
        self.num_channels = int(metadata.num_channels)
        self.encoding: ChunkEncoding = self.scale.chunk_encoding()
        self.fill_missing_data_reads = fill_missing_data_reads
        self.store_data_equal_to_fill_value = store_data_equal_to_fill_value
        self.spec_factory = spec_factory
        self.cache_id = (kvstore.url, store.prefix, self.chunk_size)
        self.transaction: Transaction | None = None  # active with-block transaction
        self.lock = threading.RLock()

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

    def invalidate_chunks(self, positions: Sequence[Vec3]) -> None:
        self.context.cache.invalidate_positions(self.cache_id, [tuple(p) for p in positions])

    def missing(self, pos: Vec3) -> NotFoundError:
        """The NOT_FOUND error for a missing chunk (``fill_missing_data_reads=False``)."""
        where = self.store.describe(pos)
        return NotFoundError(
            f'chunk {{{pos[0]}, {pos[1]}, {pos[2]}}} stored at "{where}" is missing'
        )

    def fetch(
        self,
        positions: Sequence[Vec3],
        txn: Transaction | None,
        consume: Callable[[Vec3, np.ndarray | None], None],
        fill_missing: bool | None = None,
        transient: bool = False,
        into: Callable[[Vec3], np.ndarray | None] | None = None,
    ) -> None:
        """Deliver each chunk (decoded czyx, or None when missing) to ``consume``.

        A missing chunk raises NOT_FOUND unless ``fill_missing`` (default: the
        ``fill_missing_data_reads`` option) is true. ``transient=True`` promises that
        ``consume`` copies what it needs and keeps no reference, so a chunk the cache will
        not keep may be read into a reused buffer.

        Order: the transaction's dirty chunks, then the cache, then the store, fetched
        concurrently in batches and decoded on the context's thread pool; ``consume`` runs
        on the pool too, so decoding and copying proceed in parallel.

        ``into(pos)`` may name where a stored chunk the cache will not keep belongs (a
        czyx view of the chunk's shape): it is then decoded straight there, without GIL
        for compressed_segmentation, and ``consume`` is not called for it.
        """
        if fill_missing is None:
            fill_missing = self.fill_missing_data_reads
        cache = self.context.cache
        todo: list[Vec3] = []
        for pos in positions:
            chunk = txn.get(self, pos) if txn is not None else None
            if chunk is None:
                chunk = cache.get((self.cache_id, pos))
            if chunk is None:
                todo.append(pos)
            elif chunk is _MISSING:
                if not fill_missing:
                    raise self.missing(pos)
                consume(pos, None)
            else:
                consume(pos, chunk)
        pool = self.context.executor
        if self._local and self.store.ranged_chunk_reads and len(todo) > 1:
            # Local files answer at once: read each chunk in the worker that decodes and
            # places it, so I/O, decoding and copying overlap with no batch barrier.
            direct = transient and self.encoding.encoding == "raw"

            def local(pos: Vec3) -> None:
                if direct and into is not None and self._read_raw_into(pos, into(pos)):
                    return
                if direct and self._read_raw_into_scratch(pos, consume):
                    return
                epoch = cache.epoch
                blob = self.store.read_chunks([pos])[0]
                if blob is None:
                    cache.put((self.cache_id, pos), _MISSING, epoch)
                    if not fill_missing:
                        raise self.missing(pos)
                    consume(pos, None)
                    return
                if self._decoded_into(pos, blob, into):
                    return
                chunk = self.decode(pos, blob)
                cache.put((self.cache_id, pos), chunk, epoch)
                consume(pos, chunk)

            _map_in_groups(pool, local, todo, self.context.decode_threads)
            return

        def read(batch: list[Vec3]) -> tuple[int, list[bytes | None]]:
            epoch = cache.epoch  # before reading: see ChunkCache.put
            # Shard data encoding (gzip) is removed in the workers, in parallel.
            return epoch, self.store.read_chunks(batch, deferred=True)

        def process(batch: list[Vec3], epoch: int, blobs: list[bytes | None]) -> None:
            def work(item: tuple[Vec3, bytes | None]) -> None:
                pos, blob = item
                if blob is None:
                    # Remember absence too: sparse volumes would re-request it on every
                    # napari refresh (our own writes invalidate the entry).
                    cache.put((self.cache_id, pos), _MISSING, epoch)
                    if not fill_missing:
                        raise self.missing(pos)
                    consume(pos, None)
                    return
                blob = self.store.finish(pos, blob)
                if self._decoded_into(pos, blob, into):
                    return
                chunk = self.decode(pos, blob)
                cache.put((self.cache_id, pos), chunk, epoch)
                consume(pos, chunk)

            items = list(zip(batch, blobs, strict=True))
            del blobs
            if len(items) == 1:
                work(items[0])
                return

            _map_in_groups(pool, work, items, self.context.decode_threads)

        batches = list(self._read_batches(todo))
        if len(batches) <= 1:
            for batch in batches:
                process(batch, *read(batch))
            return
        # Fetch the next batch while this one decodes: the network and the decoders work
        # at once, and at most two batches of encoded bytes are held.
        with ThreadPoolExecutor(1, thread_name_prefix="precomputed-prefetch") as io:
            ahead = io.submit(read, batches[0])
            for i, batch in enumerate(batches):
                epoch, blobs = ahead.result()
                if i + 1 < len(batches):
                    ahead = io.submit(read, batches[i + 1])
                process(batch, epoch, blobs)

    def _decoded_into(
        self, pos: Vec3, blob: Any, into: Callable[[Vec3], np.ndarray | None] | None
    ) -> bool:
        """Decode ``blob`` straight into ``into(pos)`` when that names a destination and
        the cache would not keep the chunk anyway; False leaves it to the caller."""
        if into is None:
            return False
        dst = into(pos)
        if dst is None or self.context.cache.keeps(dst.nbytes):
            return False
        decode_chunk_into(blob, dst, self.encoding, key=self.store.describe(pos))
        return True

    def _read_raw_into(self, pos: Vec3, dst: np.ndarray | None) -> bool:
        """Read a raw chunk file straight into ``dst`` (its place in the caller's output)
        when that is one contiguous stretch of memory in the stored byte order and the
        cache would not keep the chunk; False when not (the caller reads it otherwise)."""
        if (
            dst is None
            or not dst.flags.c_contiguous
            or dst.dtype != dst.dtype.newbyteorder("<")  # chunks are stored little-endian
            or self.context.cache.keeps(dst.nbytes)
        ):
            return False
        return self.kvstore.read_into(self.store.key(pos), dst) is True

    def _read_raw_into_scratch(
        self, pos: Vec3, consume: Callable[[Vec3, np.ndarray | None], None]
    ) -> bool:
        """Read a raw chunk the cache would not keep straight into this thread's reusable
        buffer: no fresh allocation, whose page faults cost more than the copy itself.
        False when not applicable (cached sizes, other file sizes, missing chunks): the
        caller then takes the ordinary path."""
        shape = self.chunk_shape(pos)
        nbytes = math.prod(shape) * self.dtype.itemsize
        if self.context.cache.keeps(nbytes):
            return False
        buf = getattr(_scratch, "buf", None)
        if buf is None or len(buf) < nbytes:
            buf = _scratch.buf = np.empty(max(nbytes, 1 << 18), np.uint8)
        view = buf[:nbytes]
        if self.kvstore.read_into(self.store.key(pos), view) is not True:
            return False
        consume(pos, view.view(self.dtype.newbyteorder("<")).reshape(shape))
        return True

    def _read_batches(self, todo: list[Vec3]) -> Iterator[list[Vec3]]:
        """Batches of about READ_BATCH chunks. With rectangular shards the chunks are
        ordered by shard and a batch never splits one, so a read covering whole shards
        fetches each in a single request (whatever the shard's size)."""
        if len(todo) <= READ_BATCH or not self.store.rectangular_groups:
            for i in range(0, len(todo), READ_BATCH):
                yield todo[i : i + READ_BATCH]
            return
        groups: list[Any] = self.store.groups_of(todo)
        order = sorted(range(len(todo)), key=groups.__getitem__)
        batch: list[Vec3] = []
        for j, i in enumerate(order):
            if len(batch) >= READ_BATCH and groups[i] != groups[order[j - 1]]:
                yield batch
                batch = []
            batch.append(todo[i])
        if batch:
            yield batch

    def read_box(self, box: Box, channels: tuple[int, int], txn: Transaction | None) -> np.ndarray:
        """Read an absolute x,y,z box and channel range as a C-order czyx array."""
        c0, c1 = channels
        shape = (c1 - c0, *reversed(box.shape))
        if 0 in shape:
            return np.zeros(shape, self.dtype)
        cells = list(self.grid.cells(box))
        if (
            len(cells) == 1
            and box == self.grid.chunk_box(cells[0])
            and (c0, c1) == (0, self.num_channels)
            and (txn is None or txn.get(self, cells[0]) is None)
        ):
            return self._read_one_chunk(cells[0], txn)
        out = recycle.zeros(shape, self.dtype)

        def place(pos: Vec3, chunk: np.ndarray | None) -> None:
            if chunk is None:
                return  # already zero
            cb = self.grid.chunk_box(pos)
            inter = box.intersect(cb)
            copy_rows(out[(slice(None), *_zyx(inter, box))], chunk[(slice(c0, c1), *_zyx(inter, cb))])

        into = None
        if self._slab_reads:
            cells = self._read_slabs(box, channels, txn, out)
        elif self.encoding.encoding == "compressed_segmentation":
            cells = self._read_cseg_planes(cells, box, channels, txn, out)
            if (c0, c1) == (0, self.num_channels):

                def into(pos: Vec3) -> np.ndarray | None:
                    # A chunk wholly inside the box decodes in place: no chunk-sized
                    # array to allocate, fill and copy.
                    cb = self.grid.chunk_box(pos)
                    if box.intersect(cb) != cb:
                        return None
                    return out[(slice(None), *_zyx(cb, box))]

        self.fetch(cells, txn, place, transient=True, into=into)
        return out

    def read_boxes(
        self, requests: Sequence[tuple[Box, tuple[int, int]]], txn: Transaction | None
    ) -> list[np.ndarray]:
        """Read several boxes (with channel ranges) as C-order czyx arrays in one batched
        fetch: every chunk any of them needs is requested at once (each once, however many
        boxes share it), so remote stores have the whole set in flight together."""
        # Every voxel of a box lies in one of its chunks, which fill it or (missing) zero it:
        # no need to zero whole outputs first, which costs a memset each.
        outs = [
            recycle.empty((c1 - c0, *reversed(box.shape)), self.dtype)
            for box, (c0, c1) in requests
        ]
        users: dict[Vec3, list[int]] = {}
        for i, (box, _) in enumerate(requests):
            if outs[i].size:
                for pos in self.grid.cells(box):
                    users.setdefault(pos, []).append(i)

        def place(pos: Vec3, chunk: np.ndarray | None) -> None:
            cb = self.grid.chunk_box(pos)
            for i in users[pos]:
                box, (c0, c1) = requests[i]
                inter = box.intersect(cb)
                dst = outs[i][(slice(None), *_zyx(inter, box))]
                if chunk is None:
                    dst[...] = 0  # missing: the fill value
                    continue
                copy_rows(dst, chunk[(slice(c0, c1), *_zyx(inter, cb))])

        def into(pos: Vec3) -> np.ndarray | None:
            # A chunk only one box needs, all of it and all channels: decode in place.
            (i,) = users[pos] if len(users[pos]) == 1 else (None,)
            if i is None or requests[i][1] != (0, self.num_channels):
                return None
            box, cb = requests[i][0], self.grid.chunk_box(pos)
            if box.intersect(cb) != cb:
                return None
            return outs[i][(slice(None), *_zyx(cb, box))]

        self.fetch(list(users), txn, place, transient=True, into=into)
        return outs

    def _split_thin(
        self,
        cells: list[Vec3],
        box: Box,
        txn: Transaction | None,
        thin: Callable[[Box, Box], bool],
    ) -> tuple[list[Vec3], list[tuple[Vec3, Box, Box]]]:
        """Cells to read whole, and ``(pos, chunk box, intersection)`` of the cells a
        partial read may serve: ``thin(chunk box, intersection)``, not buffered in ``txn``
        and not cached whole (whole reads are then cheaper or already done)."""
        cache = self.context.cache
        whole: list[Vec3] = []
        partial: list[tuple[Vec3, Box, Box]] = []
        for pos in cells:
            cb = self.grid.chunk_box(pos)
            inter = box.intersect(cb)
            if (
                not thin(cb, inter)
                or (txn is not None and txn.get(self, pos) is not None)
                or (self.cache_id, pos) in cache
            ):
                whole.append(pos)
            else:
                partial.append((pos, cb, inter))
        return whole, partial

    def _read_cseg_planes(
        self,
        cells: list[Vec3],
        box: Box,
        channels: tuple[int, int],
        txn: Transaction | None,
        out: np.ndarray,
    ) -> list[Vec3]:
        """Fill ``out`` from segmentation chunks the box covers only thinly in z and y (a
        plane, a few rows) by decoding just those voxels; returns the cells to read whole. The
        encoded chunk (a fraction of the decoded size) is cached, so the next plane of the
        same chunk costs one partial decode and no I/O."""
        c0, c1 = channels
        cache = self.context.cache
        # Partial decoding pays while it touches at most a quarter of the z, y rows.
        whole, thin = self._split_thin(
            cells, box, txn, lambda cb, i: 4 * i.shape[2] * i.shape[1] <= cb.shape[2] * cb.shape[1]
        )
        if not thin:
            return whole
        blobs: dict[Vec3, bytes | None] = {}
        todo: list[Vec3] = []
        for pos, _, _ in thin:
            hit = cache.get((self.cache_id, pos, "encoded"))
            if hit is not None:
                blobs[pos] = hit.tobytes()
            else:
                todo.append(pos)
        epoch = cache.epoch  # before reading: a racing write must not be undone
        for i in range(0, len(todo), READ_BATCH):
            batch = todo[i : i + READ_BATCH]
            for pos, blob in zip(batch, self.store.read_chunks(batch), strict=True):
                blobs[pos] = blob
                if blob is None:
                    cache.put((self.cache_id, pos), _MISSING, epoch)
                    if not self.fill_missing_data_reads:
                        raise self.missing(pos)
                else:
                    cache.partial_owners.add(self.cache_id)
                    cache.put((self.cache_id, pos, "encoded"), np.frombuffer(blob, np.uint8), epoch)
        block = self.encoding.block_size

        def planes(item: tuple[Vec3, Box, Box]) -> None:
            pos, cb, inter = item
            blob = blobs[pos]
            if blob is None:
                return  # missing: out is already zero
            zs = (inter.start[2] - cb.start[2], inter.stop[2] - cb.start[2])
            ys = (inter.start[1] - cb.start[1], inter.stop[1] - cb.start[1])
            got = decode_cseg_region(
                blob, self.chunk_shape(pos), self.dtype, block, zs, ys, channels,  # type: ignore[arg-type]
                key=self.store.describe(pos),
            )  # fmt: skip
            sx = _zyx(inter, cb)[2]
            copy_rows(out[(slice(None), *_zyx(inter, box))], got[:, :, :, sx])

        # On this thread: each is a fraction of a millisecond of small numpy steps, which
        # threads would only contend for (measured slower on two).
        for it in thin:
            planes(it)
        return whole

    def _read_one_chunk(self, pos: Vec3, txn: Transaction | None) -> np.ndarray:
        """A read of exactly one whole chunk: hand over the freshly decoded array itself
        when nobody else holds it (not cached, not a zero-copy view of stored bytes), which
        saves allocating and filling a second chunk-sized array."""
        shape = self.chunk_shape(pos)
        if (
            self.encoding.encoding == "raw"
            and self.store.ranged_chunk_reads
            and self.dtype == self.dtype.newbyteorder("<")  # stored little-endian
            and not self.context.cache.keeps(math.prod(shape) * self.dtype.itemsize)
        ):
            # Read the file straight into the array we return: one allocation, one copy.
            arr = recycle.empty(shape, self.dtype)
            if self.kvstore.read_into(self.store.key(pos), arr) is True:
                return arr
        got: list[np.ndarray | None] = []
        self.fetch([pos], txn, lambda _, chunk: got.append(chunk))
        chunk = got[0]
        if chunk is None:
            return np.zeros(shape, self.dtype)
        if chunk.flags.writeable and chunk.flags.c_contiguous and chunk.dtype == self.dtype:
            return chunk  # cached arrays are read-only, so this one is ours alone
        return np.array(chunk, dtype=self.dtype, order="C")

    @property
    def _local(self) -> bool:
        return self.kvstore.cheap_misses

    @property
    def _slab_reads(self) -> bool:
        """Raw unsharded chunks store x fastest, then y, z, channel: a range of z-planes
        of one channel is one contiguous byte range, so a thin read can skip the rest."""
        return self.encoding.encoding == "raw" and self.store.ranged_chunk_reads

    def _read_slabs(
        self,
        box: Box,
        channels: tuple[int, int],
        txn: Transaction | None,
        out: np.ndarray,
    ) -> list[Vec3]:
        """Fill ``out`` from byte ranges of chunks the box covers only partly in z (or in
        channels); returns the box's cells still to read whole (covered, cached, dirty, or
        whose ranged read did not give raw bytes, e.g. a missing or gzip-compressed chunk)."""
        c0, c1 = channels
        cache = self.context.cache
        use_cache = cache.total_bytes_limit > 0
        every_channel = (c0, c1) == (0, self.num_channels)
        cid, key_of, isz = self.cache_id, self.store.key, self.dtype.itemsize
        le = self.dtype.newbyteorder("<")
        xs, ys, zs = self.grid.axis_spans(box)
        bx, by, bz = box.start
        epoch = cache.epoch  # before reading: a racing write must not be undone
        # Geometry comes from per-axis spans and plain integers: this loop runs once per
        # chunk of a plane (256 for a 1024^2 plane of 64^3 chunks), so it is kept lean.
        whole: list[Vec3] = []
        requests: list[tuple[str, int, int]] = []
        # (pos, slab cache key, cached slab or None, slab shape, destination, source)
        jobs: list[tuple[Any, ...]] = []
        for iz, zc0, zc1, za, zb in zs:
            nzc = zc1 - zc0
            thin = zb - za < nzc or not every_channel
            z0, z1 = za - zc0, zb - zc0
            dz = slice(za - bz, zb - bz)
            for iy, yc0, yc1, ya, yb in ys:
                ny = yc1 - yc0
                sy, dy = slice(ya - yc0, yb - yc0), slice(ya - by, yb - by)
                for ix, xc0, xc1, xa, xb in xs:
                    pos = (ix, iy, iz)
                    if (
                        not thin
                        or (txn is not None and txn.get(self, pos) is not None)
                        or (use_cache and (cid, pos) in cache)
                    ):
                        whole.append(pos)  # read whole: cheaper, cached or buffered
                        continue
                    nx = xc1 - xc0
                    plane = ny * nx * isz
                    key = key_of(pos)
                    dst = (dz, dy, slice(xa - bx, xb - bx))
                    src = (sy, slice(xa - xc0, xb - xc0))
                    for c in range(c0, c1):
                        ck = (cid, pos, "slab", z0, z1, c)
                        hit = cache.get(ck) if use_cache else None
                        if hit is None:
                            base = c * nzc
                            requests.append((key, (base + z0) * plane, (base + z1) * plane))
                        jobs.append((pos, ck, hit, (z1 - z0, ny, nx), (c - c0, *dst), src))
        if not jobs:
            return whole
        blobs = iter(self.store.kvstore.read_ranges(requests) if requests else [])
        # Slabs are cached per chunk, z-range and channel, so napari re-reading the same
        # plane costs nothing; writes drop them with the chunk (invalidate_positions).
        missing: set[Vec3] = set()
        failed: set[Vec3] = set()
        for pos, ck, slab, shape, dst, src in jobs:
            if slab is None:
                blob = next(blobs)
                if blob is None:
                    missing.add(pos)
                    continue
                if len(blob) != shape[0] * shape[1] * shape[2] * isz:
                    failed.add(pos)  # gzip or short: the whole-chunk path decides
                    continue
                slab = np.frombuffer(blob, le).reshape(shape)
                if use_cache:
                    cache.partial_owners.add(cid)
                    cache.put(ck, slab, epoch)
            copy_rows(out[dst], slab[(slice(None), *src)])
        # Chunks read whole below overwrite anything their slabs placed.
        whole.extend(failed - missing)
        if missing:
            whole.extend(self._confirm_missing(sorted(missing), txn, epoch))
        return whole

    def _confirm_missing(
        self, positions: list[Vec3], txn: Transaction | None, epoch: int
    ) -> list[Vec3]:
        """Chunks whose ranged read found no key: missing, unless a CloudVolume ``.gz``
        twin exists (local stores only), which the whole-chunk path then decodes."""
        twins = self.store.gz_twins(positions)
        for pos in positions:
            if pos in twins:
                continue
            self.context.cache.put((self.cache_id, pos), _MISSING, epoch)
            if not self.fill_missing_data_reads:
                raise self.missing(pos)
        return twins

    def write_box(
        self,
        box: Box,
        channels: tuple[int, int],
        value_czyx: np.ndarray,
        txn: Transaction | None,
        progress: Callable[[int, int], None] | None = None,
    ) -> CommitStats | None:
        """Write a czyx array into an absolute box; partial chunks are read-modify-write.

        Without a transaction the write is committed group by group (each shard rewritten
        once), so memory stays near one shard per group in flight.
        """
        c0, c1 = channels
        cells = list(self.grid.cells(box))
        groups: dict[Hashable, list[Vec3]] = {}
        group_ids = self.store.groups_of(cells)
        for pos, g in zip(cells, group_ids, strict=True):
            groups.setdefault(g, []).append(pos)

        def build(members: list[Vec3]) -> dict[Vec3, np.ndarray]:
            chunks: dict[Vec3, np.ndarray] = {}
            partial: list[Vec3] = []
            for pos in members:
                cb = self.grid.chunk_box(pos)
                if box.intersect(cb) == cb and (c0, c1) == (0, self.num_channels):
                    chunks[pos] = np.empty(self.chunk_shape(pos), self.dtype)
                else:
                    partial.append(pos)

            def base(pos: Vec3, chunk: np.ndarray | None) -> None:
                chunks[pos] = (
                    np.zeros(self.chunk_shape(pos), self.dtype) if chunk is None else chunk.copy()
                )

            if partial:
                # A missing chunk is zeros for writes, whatever fill_missing_data_reads says
                # (passed per call: the handle is shared with concurrent readers).
                self.fetch(partial, txn, base, fill_missing=True)
            for pos in members:
                cb = self.grid.chunk_box(pos)
                inter = box.intersect(cb)
                chunks[pos][(slice(c0, c1), *_zyx(inter, cb))] = value_czyx[
                    (slice(None), *_zyx(inter, box))
                ]
            return chunks

        if txn is not None:
            for members in groups.values():
                for pos, chunk in build(members).items():
                    txn.put(self, pos, chunk)
            return None
        def commit(members: list[Vec3], group: Hashable) -> CommitStats:
            # A worker holds one group lock at a time, so workers cannot deadlock.
            with _GROUP_LOCKS[hash((self.cache_id, group)) % len(_GROUP_LOCKS)]:
                return commit_chunks(self, build(members))

        total = CommitStats()
        items = list(groups.items())
        if len(items) == 1:
            total.add(commit(items[0][1], items[0][0]))
            if progress is not None:
                progress(1, 1)
            return total
        # A few groups (chunks or shards) at once, so building, encoding and storing overlap
        # while memory stays near GROUP_CONCURRENCY groups. Progress is reported on the
        # caller's thread (a GUI's progress bar may only be touched there).
        with ThreadPoolExecutor(
            min(GROUP_CONCURRENCY, len(items)), thread_name_prefix="precomputed-write"
        ) as pool:
            futures = [pool.submit(commit, members, group) for group, members in items]
            try:
                for i, f in enumerate(as_completed(futures)):
                    total.add(f.result())
                    if progress is not None:
                        progress(i + 1, len(items))
            except BaseException:
                for f in futures:
                    f.cancel()  # groups not started yet are not written
                raise
        return total


class Volume(ArrayLike):
    """A lazy view of one scale: dimensions x, y, z, channel in absolute coordinates.

    ``vol[x0:x1, y0:y1, z, :]`` is a view (no I/O); ``view.read()`` or ``np.asarray(view)``
    fetches. Integer indices drop dimensions, as in numpy and TensorStore.
    """

    def __init__(
        self,
        handle: ScaleHandle,
        start: Sequence[int] | None = None,
        stop: Sequence[int] | None = None,
        kept: Sequence[int] = (0, 1, 2, 3),
        transaction: Transaction | None = None,
    ) -> None:
        self._h = handle
        bounds = handle.grid.bounds
        self._start = tuple(start) if start is not None else (*bounds.start, 0)
        self._stop = tuple(stop) if stop is not None else (*bounds.stop, handle.num_channels)
        self._kept = tuple(kept)
        self._txn = transaction

    # -- array protocol ---------------------------------------------------------------
    @property
    def dtype(self) -> np.dtype:
        return self._h.dtype

    @property
    def domain(self) -> IndexDomain:
        return IndexDomain(
            tuple(self._start[d] for d in self._kept),
            tuple(self._stop[d] for d in self._kept),
            tuple(LABELS[d] for d in self._kept),
        )

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._stop[d] - self._start[d] for d in self._kept)

    @property
    def origin(self) -> tuple[int, ...]:
        return tuple(self._start[d] for d in self._kept)

    def __repr__(self) -> str:
        return (
            f"<precomputed.Volume {self._h.kvstore.url}{self._h.path} scale {self._h.scale_index} "
            f"key={self._h.scale.key!r} domain={self.domain!r} dtype={self.dtype}>"
        )

    # -- metadata ---------------------------------------------------------------------
    @property
    def metadata(self) -> Any:
        """The volume's parsed ``info`` (all scales)."""
        return self._h.metadata

    @property
    def info(self) -> dict[str, Any]:
        return self._h.metadata.to_json()

    @property
    def scale(self) -> Any:
        """Metadata of the opened scale."""
        return self._h.scale

    @property
    def scale_index(self) -> int:
        return self._h.scale_index

    @property
    def kvstore(self) -> KvStore:
        return self._h.kvstore

    @property
    def context(self) -> Context:
        return self._h.context

    @property
    def resolution(self) -> tuple[float, float, float]:
        return tuple(float(r) for r in self._h.scale.resolution)  # type: ignore[return-value]

    @property
    def chunk_layout(self) -> ChunkLayout:
        from . import sharding as sh

        h = self._h
        chunk = h.chunk_size
        write = chunk
        if h.scale.sharding is not None:
            write = sh.write_chunk_shape(h.scale.sharding, h.grid.size, chunk)
        codec = None
        block = h.encoding.block_size  # required for compressed_segmentation
        if h.encoding.encoding == "compressed_segmentation" and block is not None:
            codec = (*block, 1)
        return ChunkLayout.of_scale(
            (*h.grid.voxel_offset, 0), (*chunk, h.num_channels), (*write, h.num_channels), codec
        )

    def spec(self, minimal: bool = False) -> dict[str, Any]:
        """A TensorStore spec that reopens this scale (and this view's bounds)."""
        h = self._h
        if h.spec_factory is None:
            raise InvalidArgumentError("this volume has no spec")
        spec = h.spec_factory(minimal=minimal)
        full = (*h.grid.bounds.start, 0), (*h.grid.bounds.stop, h.num_channels)
        if (self._start, self._stop) != full or self._kept != (0, 1, 2, 3):
            spec["transform"] = self._transform_json()
        return spec

    def _transform_json(self) -> dict[str, Any]:
        out_map = []
        for d in range(4):
            if d in self._kept:
                out_map.append({"input_dimension": self._kept.index(d)})
            else:
                out_map.append({"offset": self._start[d]})
        return {
            "input_labels": [LABELS[d] for d in self._kept],
            "input_inclusive_min": [self._start[d] for d in self._kept],
            "input_exclusive_max": [self._stop[d] for d in self._kept],
            "output": out_map,
        }

    # -- indexing ---------------------------------------------------------------------
    def __getitem__(self, key: Any) -> Volume:
        start, stop, kept = self._index(key)
        return Volume(self._h, start, stop, kept, self._txn)

    def _index(self, key: Any) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        items = normalize_index(key, self.ndim)
        start, stop = list(self._start), list(self._stop)
        kept: list[int] = []
        for d, k in zip(self._kept, items, strict=True):
            lo, hi = self._start[d], self._stop[d]
            if isinstance(k, slice):
                if k.step not in (None, 1):
                    raise InvalidArgumentError(
                        f"strided slice {k!r} on dimension {LABELS[d]!r} is not supported; "
                        "read the range and stride the numpy result"
                    )
                a = lo if k.start is None else int(k.start)
                b = hi if k.stop is None else int(k.stop)
                if a < lo or b > hi or a > b:
                    raise OutOfRangeError(
                        f"Computing interval slice for dimension {LABELS[d]!r}: Slice interval "
                        f"[{a}, {b}) is not contained within domain [{lo}, {hi})"
                    )
                start[d], stop[d] = a, b
                kept.append(d)
            elif isinstance(k, (int, np.integer)):
                i = int(k)
                if not lo <= i < hi:
                    raise OutOfRangeError(
                        f"Index {i} is outside valid range [{lo}, {hi}) for dimension {LABELS[d]!r}"
                    )
                start[d], stop[d] = i, i + 1
            else:
                raise InvalidArgumentError(
                    f"unsupported index {k!r}: use integers and slices (absolute coordinates)"
                )
        return tuple(start), tuple(stop), tuple(kept)

    # -- I/O --------------------------------------------------------------------------
    @property
    def _transaction(self) -> Transaction | None:
        return self._txn if self._txn is not None else self._h.transaction

    def _box(self) -> tuple[Box, tuple[int, int]]:
        return Box(self._start[:3], self._stop[:3]), (self._start[3], self._stop[3])  # type: ignore[arg-type]

    def read_czyx(self) -> np.ndarray:
        """The full 4-D region as a C-order (channel, z, y, x) array."""
        box, ch = self._box()
        return self._h.read_box(box, ch, self._transaction)

    def read(self, order: str = "F") -> np.ndarray:
        """Fetch the view as a numpy array in x, y, z, channel order (dropped dims removed).

        ``order="F"`` (default) returns the storage layout (no copy); ``"C"`` a C-order copy.
        """
        return self._from_czyx(self.read_czyx(), order)

    def _from_czyx(self, czyx: np.ndarray, order: str) -> np.ndarray:
        """What :meth:`read` returns, given the view's region read as a czyx array."""
        arr = czyx.transpose(3, 2, 1, 0)
        index = tuple(slice(None) if d in self._kept else 0 for d in range(4))
        arr = arr[index]
        return np.ascontiguousarray(arr) if order == "C" else arr

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        arr = self.read()
        return arr if dtype is None else arr.astype(dtype, copy=False)

    def write(
        self, value: Any, *, progress: Callable[[int, int], None] | None = None
    ) -> CommitStats | None:
        """Write ``value`` (broadcast to this view's shape) into the volume."""
        arr = np.asarray(value)
        if arr.dtype != self.dtype:
            arr = arr.astype(self.dtype)
        try:
            arr = np.broadcast_to(arr, self.shape)
        except ValueError:
            raise InvalidArgumentError(
                f"cannot broadcast value of shape {np.shape(value)} to view shape {self.shape}"
            ) from None
        full = arr.reshape([self._stop[d] - self._start[d] for d in range(4)])
        box, ch = self._box()
        return self._h.write_box(box, ch, full.transpose(3, 2, 1, 0), self._transaction, progress)

    def __setitem__(self, key: Any, value: Any) -> None:
        self[key].write(value)

    # -- transactions -----------------------------------------------------------------
    def transaction(self) -> Transaction:
        """A transaction whose with-block routes this scale's writes (and reads) through it.

        ``with vol.transaction(): vol[...] = a; vol[...] = b`` rewrites each shard once.
        """
        txn = Transaction()
        with self._h.lock:
            if self._h.transaction is not None:
                raise InvalidArgumentError("a transaction is already active on this volume")
            self._h.transaction = txn
        txn._bound.append(self)
        return txn

    def _detach_transaction(self, txn: Transaction) -> None:
        with self._h.lock:
            if self._h.transaction is txn:
                self._h.transaction = None

    def with_transaction(self, txn: Transaction | None) -> Volume:
        """This view, with reads and writes going through ``txn``."""
        return Volume(self._h, self._start, self._stop, self._kept, txn)

    # -- other views ------------------------------------------------------------------
    def zyx(self, squeeze_channel: bool = True) -> ZyxArray:
        """0-based C-order view in napari's axis order: (channel, z, y, x), or (z, y, x)
        when the volume has one channel and ``squeeze_channel``."""
        from .lazy import ZyxArray

        return ZyxArray(self, squeeze_channel=squeeze_channel)

    def to_dask(self, chunks: Any = None) -> Any:
        """A dask array of this view aligned to storage chunks (see precomputed.dask)."""
        from .dask import to_dask

        return to_dask(self, chunks=chunks)

    def __getstate__(self) -> dict[str, Any]:
        # Volumes travel as specs: the receiver reopens (and builds its own cache).
        return {"spec": self.spec(), "kept": self._kept, "start": self._start, "stop": self._stop}

    def __setstate__(self, state: dict[str, Any]) -> None:
        from .driver import open as open_volume

        spec = dict(state["spec"])
        spec.pop("transform", None)
        base = open_volume(spec)
        self.__init__(base._h, state["start"], state["stop"], state["kept"])  # type: ignore[misc]


if TYPE_CHECKING:
    from .lazy import ZyxArray

"""The read path of one scale: from chunk positions to the caller's array.

:func:`fetch` is the one way chunks are obtained (and the one place a missing chunk is
decided): the transaction's dirty chunks (a :class:`~.scale.ChunkOverlay`), then the
decoded-chunk cache, then the chunk store, fetched concurrently in batches with the next
batch prefetched while one decodes, decoded on the context's threads. On local stores
each chunk is read in the worker that decodes it, raw chunks straight into the result.

:func:`read_box` and :func:`read_boxes` assemble results from it, with two format fast
paths: byte-range slabs of raw unsharded chunks read partly in z, and partial decoding of
compressed_segmentation chunks a plane crosses. These loops run once per chunk of every
read; they are kept lean (per-axis spans, memoised keys, recycled result buffers).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .codecs import decode_chunk_into
from .codecs.cseg.region import decode_cseg_region
from .internal import recycle
from .internal.geometry import Box, Vec3, zyx_slices
from .kvstore import NO_VALUE
from .revalidate import finished, read_versioned_many, revalidate
from .scale import MISSING, ChunkOverlay, OpenedScale

__all__ = ["READ_BATCH", "STREAM_WINDOW", "fetch", "prefetch", "read_box", "read_boxes", "copy_rows"]

#: Per-thread scratch buffer for chunks read and consumed without being kept.
_scratch = threading.local()
#: Chunks fetched per batch on large reads (the next batch is fetched while one decodes):
#: bounds the encoded bytes held at once and lets decoding start early.
READ_BATCH = 64
#: Chunks requested in one streamed store call over a network (each decoded as it
#: arrives, :func:`_fetch_streamed`): one bound of requests in flight for the window.
STREAM_WINDOW = 256


def _map_in_groups(pool: Any, fn: Callable[[Any], None], items: list[Any], threads: int) -> None:
    """Run ``fn`` on every item on ``pool`` as a few tasks per thread, not one future per
    item: a future costs about as much as reading a cached 256 KiB chunk file."""
    k = min(len(items), 4 * threads)

    def run(group: list[Any]) -> None:
        for item in group:
            fn(item)

    for f in [pool.submit(run, items[i::k]) for i in range(k)]:
        f.result()


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


def fetch(
    scale: OpenedScale,
    positions: Sequence[Vec3],
    txn: ChunkOverlay | None,
    consume: Callable[[Vec3, np.ndarray | None], None],
    fill_missing: bool | None = None,
    transient: bool = False,
    into: Callable[[Vec3], np.ndarray | None] | None = None,
    *,
    revalidated: bool = False,
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

    Cached chunks are first revalidated as ``recheck_cached_data`` asks
    (:func:`.revalidate.revalidate`), unless the caller did (``revalidated``).
    """
    if fill_missing is None:
        fill_missing = scale.fill_missing_data_reads
    cache = scale.context.cache
    if not revalidated and cache.enabled:
        revalidate(scale, positions if txn is None else [p for p in positions if txn.get(scale, p) is None])
    todo: list[Vec3] = []
    for pos in positions:
        chunk = txn.get(scale, pos) if txn is not None else None
        if chunk is None:
            chunk = cache.get((scale.cache_id, pos))
        if chunk is None:
            todo.append(pos)
        elif chunk is MISSING:
            if not fill_missing:
                raise scale.missing(pos)
            consume(pos, None)
        else:
            consume(pos, chunk)
    pool = scale.context.executor
    if _local(scale) and scale.store.ranged_chunk_reads and len(todo) > 1:
        # Local files answer at once: read each chunk in the worker that decodes and
        # places it, so I/O, decoding and copying overlap with no batch barrier.
        direct = transient and scale.encoding.encoding == "raw"

        def local(pos: Vec3) -> None:
            if direct and into is not None and _read_raw_into(scale, pos, into(pos)):
                return
            if direct and _read_raw_into_scratch(scale, pos, consume):
                return
            epoch, t = cache.epoch, time.time()
            blobs, gens, _ = read_stamped(scale, [pos])
            blob, gen = blobs[0], None if gens is None else gens[0]
            if blob is None:
                cache.put((scale.cache_id, pos), MISSING, epoch, generation=gen, time=t)
                if not fill_missing:
                    raise scale.missing(pos)
                consume(pos, None)
                return
            if _decoded_into(scale, pos, blob, into):
                return
            chunk = scale.decode(pos, blob)
            cache.put((scale.cache_id, pos), chunk, epoch, generation=gen, time=t)
            consume(pos, chunk)

        _map_in_groups(pool, local, todo, scale.context.decode_threads)
        return

    if scale.store.streamed_reads and len(todo) > 1 and not _local(scale):
        # Over a network: each chunk is decoded as soon as its bytes arrive, while the
        # rest are still on the way (no batch waits for its slowest answer).
        _fetch_streamed(scale, todo, consume, fill_missing, into)
        return

    def read(batch: list[Vec3]) -> tuple[int, float, _Stamped]:
        epoch, t = cache.epoch, time.time()  # before reading: see ChunkCache.put
        # Shard data encoding (gzip) is removed in the workers, in parallel.
        return epoch, t, read_stamped(scale, batch, deferred=True)

    def process(batch: list[Vec3], epoch: int, t: float, stamped: _Stamped) -> None:
        blobs, gens, finished = stamped
        gen_of = dict(zip(batch, gens, strict=True)) if gens is not None else {}

        def work(item: tuple[Vec3, bytes | None]) -> None:
            pos, blob = item
            gen = gen_of.get(pos)
            if blob is None:
                # Remember absence too: sparse volumes would re-request it on every
                # napari refresh (our own writes invalidate the entry).
                cache.put((scale.cache_id, pos), MISSING, epoch, generation=gen, time=t)
                if not fill_missing:
                    raise scale.missing(pos)
                consume(pos, None)
                return
            if not finished:
                blob = scale.store.finish(pos, blob)
            if _decoded_into(scale, pos, blob, into):
                return
            chunk = scale.decode(pos, blob)
            cache.put((scale.cache_id, pos), chunk, epoch, generation=gen, time=t)
            consume(pos, chunk)

        items = list(zip(batch, blobs, strict=True))
        del blobs, stamped
        if len(items) == 1:
            work(items[0])
            return

        _map_in_groups(pool, work, items, scale.context.decode_threads)

    batches = list(_read_batches(scale, todo))
    if len(batches) <= 1:
        for batch in batches:
            process(batch, *read(batch))
        return
    # Fetch the next batch while this one decodes: the network and the decoders work
    # at once, and at most two batches of encoded bytes are held.
    with ThreadPoolExecutor(1, thread_name_prefix="precomputed-prefetch") as io:
        ahead = io.submit(read, batches[0])
        for i, batch in enumerate(batches):
            got = ahead.result()
            if i + 1 < len(batches):
                ahead = io.submit(read, batches[i + 1])
            process(batch, *got)
            del got


def _fetch_streamed(
    scale: OpenedScale,
    todo: list[Vec3],
    consume: Callable[[Vec3, np.ndarray | None], None],
    fill_missing: bool,
    into: Callable[[Vec3], np.ndarray | None] | None,
) -> None:
    """The network half of :func:`fetch`: ``ChunkStore.read_chunks_each`` hands each
    chunk over from the store's I/O thread as its answer arrives; it is queued, and at
    most ``decode_threads`` tasks on the context's pool take chunks off the queue,
    finish, decode, cache and consume them (a task ends when the queue is empty, so no
    pool thread waits idle for the network). Windows of :data:`STREAM_WINDOW` chunks
    bound the requests made at once; the next window starts while the previous one's
    last chunks decode, once at most :data:`READ_BATCH` wait undecoded.

    The first error (a missing chunk that is an error, a corrupt chunk, a failed
    request) stops the read: the store call is ended at once, the decoders stop taking
    chunks, and it is raised once all of them are done."""
    cache = scale.context.cache
    store = scale.store
    pool = scale.context.executor
    threads = scale.context.decode_threads
    versioned = cache.enabled and scale.recheck_cached_data is not False
    cond = threading.Condition()
    ready: deque[tuple[Vec3, Any, Any, int, float]] = deque()
    errors: list[BaseException] = []
    running = 0

    def work(pos: Vec3, blob: bytes | None, gen: str | None, epoch: int, t: float) -> None:
        if blob is None:
            # Remember absence too: sparse volumes would re-request it on every
            # napari refresh (our own writes invalidate the entry).
            cache.put((scale.cache_id, pos), MISSING, epoch, generation=gen, time=t)
            if not fill_missing:
                raise scale.missing(pos)
            consume(pos, None)
            return
        blob = store.finish(pos, blob)
        if _decoded_into(scale, pos, blob, into):
            return
        chunk = scale.decode(pos, blob)
        cache.put((scale.cache_id, pos), chunk, epoch, generation=gen, time=t)
        consume(pos, chunk)

    def drain() -> None:
        nonlocal running
        while True:
            with cond:
                if errors or not ready:
                    ready.clear()
                    running -= 1
                    cond.notify_all()
                    return
                item = ready.popleft()
                if len(ready) < READ_BATCH:
                    cond.notify_all()
            try:
                work(*item)
            except BaseException as e:
                with cond:
                    errors.append(e)

    for window in _read_batches(scale, todo, STREAM_WINDOW):
        epoch, t = cache.epoch, time.time()  # before reading: see ChunkCache.put

        def deliver(
            i: int, blob: bytes | None, gen: str | None,
            window: list[Vec3] = window, epoch: int = epoch, t: float = t,
        ) -> None:  # fmt: skip
            nonlocal running
            if not versioned or (blob is not None and gen == NO_VALUE):
                gen = None  # unknown: a CloudVolume twin of a missing key
            with cond:
                if errors:
                    raise errors[0]  # ends the store's call at once
                ready.append((window[i], blob, gen, epoch, t))
                start = running < threads
                if start:
                    running += 1
            if start:
                pool.submit(drain)

        failure: BaseException | None = None
        try:
            store.read_chunks_each(window, deliver, versioned=versioned)
        except BaseException as e:
            failure = e
        with cond:
            if failure is not None or errors:
                while running:
                    cond.wait()
            else:
                while len(ready) >= READ_BATCH:
                    cond.wait()
        if errors:
            raise errors[0]
        if failure is not None:
            raise failure
    with cond:
        while running:
            cond.wait()
    if errors:
        raise errors[0]


#: ``(bytes per chunk, generation per chunk or None, whether the bytes are finished)``.
_Stamped = tuple[list[bytes | None], list[str | None] | None, bool]


def read_stamped(scale: OpenedScale, positions: Sequence[Vec3], deferred: bool = False) -> _Stamped:
    """``ChunkStore.read_chunks``, with the generation each chunk was read from when
    the cache keeps versions for revalidation (``recheck_cached_data`` not false):
    unsharded chunks report the generation of the very read
    (``ChunkStore.read_versioned``, in one batch of the store over a network), chunks of
    a shard the generation of the shard their bytes or absence came from. ``None`` for
    a chunk whose version is not known (a CloudVolume compressed twin)."""
    store = scale.store
    if not scale.context.cache.enabled or scale.recheck_cached_data is False:
        return store.read_chunks(positions, deferred=deferred), None, not deferred
    if store.ranged_chunk_reads:
        got = read_versioned_many(store, positions)
        gens = [
            None if v.data is not None and v.generation == NO_VALUE else v.generation
            for v in got
        ]
        blobs = [v.data for v in got]
        if finished(store, positions):
            return blobs, gens, True
        if deferred:
            return blobs, gens, False
        return [None if b is None else store.finish(p, b) for p, b in zip(positions, blobs, strict=True)], gens, True
    # Shards: the generation each chunk's bytes (or absence) came from, cached shard
    # indices of an older version dropped first (ChunkStore.read_versioned).
    got = store.read_versioned(positions)
    return [v.data for v in got], [v.generation for v in got], True


def prefetch(scale: OpenedScale, positions: Sequence[Vec3]) -> int:
    """Fetch the chunks at ``positions`` that are not cached yet into the context's cache
    (all at once, as :func:`fetch` does; nothing is assembled) and return how many were
    requested (a chunk cached whole, or encoded, is not). Missing chunks are remembered as
    missing and never raise. Chunks the cache
    would not keep are not fetched at all: a prefetch only pays when a later read finds
    them in memory."""
    cache = scale.context.cache
    cid = scale.cache_id
    # A chunk whose encoded bytes are cached (segmentation planes) needs no I/O either.
    todo = [pos for pos in positions if (cid, pos) not in cache and (cid, pos, "encoded") not in cache]
    if not todo or not cache.keeps(math.prod(scale.chunk_shape(todo[0])) * scale.dtype.itemsize):
        return 0
    fetch(scale, todo, None, lambda pos, chunk: None, fill_missing=True)
    return len(todo)


def _decoded_into(
    scale: OpenedScale, pos: Vec3, blob: Any, into: Callable[[Vec3], np.ndarray | None] | None
) -> bool:
    """Decode ``blob`` straight into ``into(pos)`` when that names a destination and
    the cache would not keep the chunk anyway; False leaves it to the caller."""
    if into is None:
        return False
    dst = into(pos)
    if dst is None or scale.context.cache.keeps(dst.nbytes):
        return False
    decode_chunk_into(blob, dst, scale.encoding, key=scale.store.describe(pos))
    return True


def _read_raw_into(scale: OpenedScale, pos: Vec3, dst: np.ndarray | None) -> bool:
    """Read a raw chunk file straight into ``dst`` (its place in the caller's output)
    when that is one contiguous stretch of memory in the stored byte order and the
    cache would not keep the chunk; False when not (the caller reads it otherwise)."""
    if (
        dst is None
        or not dst.flags.c_contiguous
        or dst.dtype != dst.dtype.newbyteorder("<")  # chunks are stored little-endian
        or scale.context.cache.keeps(dst.nbytes)
    ):
        return False
    return scale.kvstore.read_into(scale.store.key(pos), dst) is True


def _read_raw_into_scratch(
    scale: OpenedScale, pos: Vec3, consume: Callable[[Vec3, np.ndarray | None], None]
) -> bool:
    """Read a raw chunk the cache would not keep straight into this thread's reusable
    buffer: no fresh allocation, whose page faults cost more than the copy itself.
    False when not applicable (cached sizes, other file sizes, missing chunks): the
    caller then takes the ordinary path."""
    shape = scale.chunk_shape(pos)
    nbytes = math.prod(shape) * scale.dtype.itemsize
    if scale.context.cache.keeps(nbytes):
        return False
    buf = getattr(_scratch, "buf", None)
    if buf is None or len(buf) < nbytes:
        buf = _scratch.buf = np.empty(max(nbytes, 1 << 18), np.uint8)
    view = buf[:nbytes]
    if scale.kvstore.read_into(scale.store.key(pos), view) is not True:
        return False
    consume(pos, view.view(scale.dtype.newbyteorder("<")).reshape(shape))
    return True


def _read_batches(
    scale: OpenedScale, todo: list[Vec3], size: int | None = None
) -> Iterator[list[Vec3]]:
    """Batches of about ``size`` (default :data:`READ_BATCH`) chunks. With rectangular
    shards the chunks are ordered by shard and a batch never splits one, so a read
    covering whole shards fetches each in a single request (whatever the shard's size)."""
    if size is None:
        size = READ_BATCH  # looked up now: tests and tuning may change it
    if len(todo) <= size or not scale.store.rectangular_groups:
        for i in range(0, len(todo), size):
            yield todo[i : i + size]
        return
    groups: list[Any] = scale.store.groups_of(todo)
    order = sorted(range(len(todo)), key=groups.__getitem__)
    batch: list[Vec3] = []
    for j, i in enumerate(order):
        if len(batch) >= size and groups[i] != groups[order[j - 1]]:
            yield batch
            batch = []
        batch.append(todo[i])
    if batch:
        yield batch


def read_box(scale: OpenedScale, box: Box, channels: tuple[int, int], txn: ChunkOverlay | None) -> np.ndarray:
    """Read an absolute x,y,z box and channel range as a C-order czyx array."""
    c0, c1 = channels
    shape = (c1 - c0, *reversed(box.shape))
    if 0 in shape:
        return np.zeros(shape, scale.dtype)
    cells = list(scale.grid.cells(box))
    if (
        len(cells) == 1
        and box == scale.grid.chunk_box(cells[0])
        and (c0, c1) == (0, scale.num_channels)
        and (txn is None or txn.get(scale, cells[0]) is None)
    ):
        return _read_one_chunk(scale, cells[0], txn)
    out = recycle.zeros(shape, scale.dtype)

    def place(pos: Vec3, chunk: np.ndarray | None) -> None:
        if chunk is None:
            return  # already zero
        cb = scale.grid.chunk_box(pos)
        inter = box.intersect(cb)
        copy_rows(out[(slice(None), *zyx_slices(inter, box))], chunk[(slice(c0, c1), *zyx_slices(inter, cb))])

    into = None
    checked = False
    if _slab_reads(scale) or scale.encoding.encoding == "compressed_segmentation":
        # These paths look at cached entries themselves: revalidate them first, once.
        if scale.context.cache.enabled:
            revalidate(scale, cells if txn is None else [p for p in cells if txn.get(scale, p) is None])
        checked = True
    if _slab_reads(scale):
        cells = _read_slabs(scale, box, channels, txn, out)
    elif scale.encoding.encoding == "compressed_segmentation":
        cells = _read_cseg_planes(scale, cells, box, channels, txn, out)
        if (c0, c1) == (0, scale.num_channels):

            def into(pos: Vec3) -> np.ndarray | None:
                # A chunk wholly inside the box decodes in place: no chunk-sized
                # array to allocate, fill and copy.
                cb = scale.grid.chunk_box(pos)
                if box.intersect(cb) != cb:
                    return None
                return out[(slice(None), *zyx_slices(cb, box))]

    fetch(scale, cells, txn, place, transient=True, into=into, revalidated=checked)
    return out


def read_boxes(
    scale: OpenedScale, requests: Sequence[tuple[Box, tuple[int, int]]], txn: ChunkOverlay | None
) -> list[np.ndarray]:
    """Read several boxes (with channel ranges) as C-order czyx arrays in one batched
    fetch: every chunk any of them needs is requested at once (each once, however many
    boxes share it), so remote stores have the whole set in flight together."""
    # Every voxel of a box lies in one of its chunks, which fill it or (missing) zero it:
    # no need to zero whole outputs first, which costs a memset each.
    outs = [
        recycle.empty((c1 - c0, *reversed(box.shape)), scale.dtype)
        for box, (c0, c1) in requests
    ]
    users: dict[Vec3, list[int]] = {}
    for i, (box, _) in enumerate(requests):
        if outs[i].size:
            for pos in scale.grid.cells(box):
                users.setdefault(pos, []).append(i)

    def place(pos: Vec3, chunk: np.ndarray | None) -> None:
        cb = scale.grid.chunk_box(pos)
        for i in users[pos]:
            box, (c0, c1) = requests[i]
            inter = box.intersect(cb)
            dst = outs[i][(slice(None), *zyx_slices(inter, box))]
            if chunk is None:
                dst[...] = 0  # missing: the fill value
                continue
            copy_rows(dst, chunk[(slice(c0, c1), *zyx_slices(inter, cb))])

    def into(pos: Vec3) -> np.ndarray | None:
        # A chunk only one box needs, all of it and all channels: decode in place.
        (i,) = users[pos] if len(users[pos]) == 1 else (None,)
        if i is None or requests[i][1] != (0, scale.num_channels):
            return None
        box, cb = requests[i][0], scale.grid.chunk_box(pos)
        if box.intersect(cb) != cb:
            return None
        return outs[i][(slice(None), *zyx_slices(cb, box))]

    fetch(scale, list(users), txn, place, transient=True, into=into)
    return outs


def _split_thin(
    scale: OpenedScale,
    cells: list[Vec3],
    box: Box,
    txn: ChunkOverlay | None,
    thin: Callable[[Box, Box], bool],
) -> tuple[list[Vec3], list[tuple[Vec3, Box, Box]]]:
    """Cells to read whole, and ``(pos, chunk box, intersection)`` of the cells a
    partial read may serve: ``thin(chunk box, intersection)``, not buffered in ``txn``
    and not cached whole (whole reads are then cheaper or already done)."""
    cache = scale.context.cache
    whole: list[Vec3] = []
    partial: list[tuple[Vec3, Box, Box]] = []
    for pos in cells:
        cb = scale.grid.chunk_box(pos)
        inter = box.intersect(cb)
        if (
            not thin(cb, inter)
            or (txn is not None and txn.get(scale, pos) is not None)
            or (scale.cache_id, pos) in cache
        ):
            whole.append(pos)
        else:
            partial.append((pos, cb, inter))
    return whole, partial


def _read_cseg_planes(
    scale: OpenedScale,
    cells: list[Vec3],
    box: Box,
    channels: tuple[int, int],
    txn: ChunkOverlay | None,
    out: np.ndarray,
) -> list[Vec3]:
    """Fill ``out`` from segmentation chunks the box covers only thinly in z and y (a
    plane, a few rows) by decoding just those voxels; returns the cells to read whole. The
    encoded chunk (a fraction of the decoded size) is cached, so the next plane of the
    same chunk costs one partial decode and no I/O."""
    c0, c1 = channels
    cache = scale.context.cache
    # Partial decoding pays while it touches at most a quarter of the z, y rows.
    whole, thin = _split_thin(scale,
        cells, box, txn, lambda cb, i: 4 * i.shape[2] * i.shape[1] <= cb.shape[2] * cb.shape[1]
    )
    if not thin:
        return whole
    blobs: dict[Vec3, bytes | None] = {}
    todo: list[Vec3] = []
    for pos, _, _ in thin:
        hit = cache.get((scale.cache_id, pos, "encoded"))
        if hit is not None:
            blobs[pos] = hit.tobytes()
        else:
            todo.append(pos)
    epoch = cache.epoch  # before reading: a racing write must not be undone
    for i in range(0, len(todo), READ_BATCH):
        batch = todo[i : i + READ_BATCH]
        t = time.time()
        got, gens, _ = read_stamped(scale, batch)
        for j, (pos, blob) in enumerate(zip(batch, got, strict=True)):
            blobs[pos] = blob
            gen = None if gens is None else gens[j]
            if blob is None:
                cache.put((scale.cache_id, pos), MISSING, epoch, generation=gen, time=t)
                if not scale.fill_missing_data_reads:
                    raise scale.missing(pos)
            else:
                cache.partial_owners.add(scale.cache_id)
                cache.put(
                    (scale.cache_id, pos, "encoded"), np.frombuffer(blob, np.uint8), epoch,
                    generation=gen, time=t,
                )  # fmt: skip
    block = scale.encoding.block_size

    def planes(item: tuple[Vec3, Box, Box]) -> None:
        pos, cb, inter = item
        blob = blobs[pos]
        if blob is None:
            return  # missing: out is already zero
        zs = (inter.start[2] - cb.start[2], inter.stop[2] - cb.start[2])
        ys = (inter.start[1] - cb.start[1], inter.stop[1] - cb.start[1])
        got = decode_cseg_region(
            blob, scale.chunk_shape(pos), scale.dtype, block, zs, ys, channels,  # type: ignore[arg-type]
            key=scale.store.describe(pos),
        )  # fmt: skip
        sx = zyx_slices(inter, cb)[2]
        copy_rows(out[(slice(None), *zyx_slices(inter, box))], got[:, :, :, sx])

    # On this thread: each is a fraction of a millisecond of small numpy steps, which
    # threads would only contend for (measured slower on two).
    for it in thin:
        planes(it)
    return whole


def _read_one_chunk(scale: OpenedScale, pos: Vec3, txn: ChunkOverlay | None) -> np.ndarray:
    """A read of exactly one whole chunk: hand over the freshly decoded array itself
    when nobody else holds it (not cached, not a zero-copy view of stored bytes), which
    saves allocating and filling a second chunk-sized array."""
    shape = scale.chunk_shape(pos)
    if (
        scale.encoding.encoding == "raw"
        and scale.store.ranged_chunk_reads
        and scale.kvstore.reads_into
        and scale.dtype == scale.dtype.newbyteorder("<")  # stored little-endian
        and not scale.context.cache.keeps(math.prod(shape) * scale.dtype.itemsize)
    ):
        # Read the file straight into the array we return: one allocation, one copy.
        arr = recycle.empty(shape, scale.dtype)
        if scale.kvstore.read_into(scale.store.key(pos), arr) is True:
            return arr
    got: list[np.ndarray | None] = []
    fetch(scale, [pos], txn, lambda _, chunk: got.append(chunk))
    chunk = got[0]
    if chunk is None:
        return np.zeros(shape, scale.dtype)
    if chunk.flags.writeable and chunk.flags.c_contiguous and chunk.dtype == scale.dtype:
        return chunk  # cached arrays are read-only, so this one is ours alone
    return np.array(chunk, dtype=scale.dtype, order="C")


def _local(scale: OpenedScale) -> bool:
    return scale.kvstore.cheap_misses


def _slab_reads(scale: OpenedScale) -> bool:
    """Raw unsharded chunks store x fastest, then y, z, channel: a range of z-planes
    of one channel is one contiguous byte range, so a thin read can skip the rest."""
    return scale.encoding.encoding == "raw" and scale.store.ranged_chunk_reads


def _read_slabs(
    scale: OpenedScale,
    box: Box,
    channels: tuple[int, int],
    txn: ChunkOverlay | None,
    out: np.ndarray,
) -> list[Vec3]:
    """Fill ``out`` from byte ranges of chunks the box covers only partly in z (or in
    channels); returns the box's cells still to read whole (covered, cached, dirty, or
    whose ranged read did not give raw bytes, e.g. a missing or gzip-compressed chunk).

    Byte ranges are raw voxels only if the object is a raw chunk of exactly its raw
    size: a compressed chunk (CloudVolume's gzip/zstd under the plain key) or one of the
    wrong size would give bytes that look like voxels but are not. So every slab read
    also reports the size of its chunk (:meth:`~.kvstore.KvStore.read_ranges_sized`: an
    HTTP answer's ``Content-Range``, a file's ``fstat``; no extra request), and a slab is
    kept only from a chunk of exactly its raw size. Chunks that fail the check (or
    whose size the store cannot tell) are read whole, where the whole-chunk path
    inflates them or raises a CorruptDataError naming the key."""
    c0, c1 = channels
    cache = scale.context.cache
    use_cache = cache.total_bytes_limit > 0
    every_channel = (c0, c1) == (0, scale.num_channels)
    cid, key_of, isz = scale.cache_id, scale.store.key, scale.dtype.itemsize
    le = scale.dtype.newbyteorder("<")
    xs, ys, zs = scale.grid.axis_spans(box)
    bx, by, bz = box.start
    epoch = cache.epoch  # before reading: a racing write must not be undone
    # Geometry comes from per-axis spans and plain integers: this loop runs once per
    # chunk of a plane (256 for a 1024^2 plane of 64^3 chunks), so it is kept lean.
    whole: list[Vec3] = []
    requests: list[tuple[str, int, int]] = []
    # (pos, slab cache key, cached slab or None, slab shape, destination, source)
    jobs: list[tuple[Any, ...]] = []
    # key -> (pos, the raw size it must have) of chunks with a slab fetched
    fetched_keys: dict[str, tuple[Vec3, int]] = {}
    nc = scale.num_channels
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
                    or (txn is not None and txn.get(scale, pos) is not None)
                    or (use_cache and (cid, pos) in cache)
                ):
                    whole.append(pos)  # read whole: cheaper, cached or buffered
                    continue
                nx = xc1 - xc0
                plane = ny * nx * isz
                key = key_of(pos)
                dst = (dz, dy, slice(xa - bx, xb - bx))
                src = (sy, slice(xa - xc0, xb - xc0))
                fetched = False
                for c in range(c0, c1):
                    ck = (cid, pos, "slab", z0, z1, c)
                    hit = cache.get(ck) if use_cache else None
                    if hit is None:
                        base = c * nzc
                        requests.append((key, (base + z0) * plane, (base + z1) * plane))
                        fetched = True
                    jobs.append((pos, ck, hit, (z1 - z0, ny, nx), (c - c0, *dst), src))
                if fetched:
                    fetched_keys[key] = (pos, nc * nzc * plane)
    if not jobs:
        return whole
    t = time.time()
    got, gens, sizes = _read_ranges_stamped(scale, requests) if requests else ([], {}, {})
    missing: set[Vec3] = set()
    failed: set[Vec3] = set()
    for i, (key, _, _) in enumerate(requests):
        pos, n = fetched_keys[key]
        if got[i] is None:
            missing.add(pos)
        elif sizes.get(key) != n:
            failed.add(pos)  # compressed, of the wrong size or of unknown size: read whole
    blobs = iter(got)
    # Slabs are cached per chunk, z-range and channel, so napari re-reading the same
    # plane costs nothing; writes drop them with the chunk (invalidate_positions).
    for pos, ck, slab, shape, dst, src in jobs:
        if slab is None:
            blob = next(blobs)
            if pos in missing or pos in failed:
                continue
            if blob is None:
                missing.add(pos)
                continue
            if len(blob) != shape[0] * shape[1] * shape[2] * isz:
                failed.add(pos)  # short: the whole-chunk path decides
                continue
            slab = np.frombuffer(blob, le).reshape(shape)
            if use_cache:
                cache.partial_owners.add(cid)
                cache.put(ck, slab, epoch, generation=gens.get(key_of(pos)), time=t)
        elif pos in failed:
            continue
        copy_rows(out[dst], slab[(slice(None), *src)])
    # Chunks read whole below overwrite anything their slabs placed.
    whole.extend(failed - missing)
    if missing:
        whole.extend(_confirm_missing(scale, sorted(missing), txn, epoch, t if gens else None))
    return whole


def _read_ranges_stamped(
    scale: OpenedScale, requests: list[tuple[str, int, int]]
) -> tuple[list[bytes | None], dict[str, str], dict[str, int]]:
    """Byte ranges of chunk keys with each object's size from the same answers, and
    each key's generation when the cache keeps versions (all ranges of one key then
    come from one version of it, and the size is that version's)."""
    kv = scale.store.kvstore
    if not scale.context.cache.enabled or scale.recheck_cached_data is False:
        blobs, sized = kv.read_ranges_sized(requests)
        return blobs, {}, sized
    sizes: dict[str, int] = {}
    blobs, gens = kv.read_ranges_pinned(requests, sizes=sizes)
    return blobs, gens, sizes


def _confirm_missing(
    scale: OpenedScale,
    positions: list[Vec3],
    txn: ChunkOverlay | None,
    epoch: int,
    checked_at: float | None = None,
) -> list[Vec3]:
    """Chunks whose ranged read found no key: missing, unless a CloudVolume ``.gz``
    twin exists (local stores only), which the whole-chunk path then decodes.
    ``checked_at``: when the read that found them missing started (their cache entry
    is then stamped as of that time, at the generation of a missing key)."""
    twins = scale.store.gz_twins(positions)
    gen = None if checked_at is None else NO_VALUE
    for pos in positions:
        if pos in twins:
            continue
        scale.context.cache.put((scale.cache_id, pos), MISSING, epoch, generation=gen, time=checked_at)
        if not scale.fill_missing_data_reads:
            raise scale.missing(pos)
    return twins

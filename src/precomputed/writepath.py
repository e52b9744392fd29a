"""The write path of one scale: read-modify-write of partial chunks, and the one commit
scheduler that stores decoded chunks group by group.

:func:`commit_groups` is used by direct writes (:func:`write_box` without a transaction)
and by transactions (:func:`commit_chunks`, from ``Transaction.commit``): a few write
groups (chunk keys, or shards) at a time, each under its group lock while its chunks are
built (read-modify-write), encoded and stored by ``ChunkStore.commit_group`` (which, for
shards, writes conditionally on the generation it read). Progress is reported on the
caller's thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np

from .chunkstore import CommitStats
from .internal.geometry import Box, Vec3, zyx_slices
from .readpath import fetch
from .scale import ChunkOverlay, OpenedScale

__all__ = ["GROUP_CONCURRENCY", "write_box", "commit_chunks", "commit_groups"]

Progress = Callable[[int, int], None]

#: Groups (shards or chunks) committed concurrently: bounds memory to a few shards.
GROUP_CONCURRENCY = 4
#: Striped locks serialising the read-modify-write of one write group (chunk or shard)
#: within the process: concurrent partial writes to one chunk must not lose updates.
#: Re-entrant, so a write made from inside another (a callback) cannot deadlock.
_GROUP_LOCKS = [threading.RLock() for _ in range(64)]


def write_box(
    scale: OpenedScale,
    box: Box,
    channels: tuple[int, int],
    value_czyx: np.ndarray,
    txn: ChunkOverlay | None,
    progress: Callable[[int, int], None] | None = None,
) -> CommitStats | None:
    """Write a czyx array into an absolute box; partial chunks are read-modify-write.

    Without a transaction the write is committed group by group (each shard rewritten
    once), so memory stays near one shard per group in flight.
    """
    c0, c1 = channels
    cells = list(scale.grid.cells(box))
    groups: dict[Hashable, list[Vec3]] = {}
    group_ids = scale.store.groups_of(cells)
    for pos, g in zip(cells, group_ids, strict=True):
        groups.setdefault(g, []).append(pos)

    def build(members: list[Vec3]) -> dict[Vec3, np.ndarray]:
        chunks: dict[Vec3, np.ndarray] = {}
        partial: list[Vec3] = []
        for pos in members:
            cb = scale.grid.chunk_box(pos)
            if box.intersect(cb) == cb and (c0, c1) == (0, scale.num_channels):
                chunks[pos] = np.empty(scale.chunk_shape(pos), scale.dtype)
            else:
                partial.append(pos)

        def base(pos: Vec3, chunk: np.ndarray | None) -> None:
            chunks[pos] = (
                np.zeros(scale.chunk_shape(pos), scale.dtype) if chunk is None else chunk.copy()
            )

        if partial:
            # A missing chunk is zeros for writes, whatever fill_missing_data_reads says
            # (passed per call: the handle is shared with concurrent readers).
            fetch(scale, partial, txn, base, fill_missing=True)
        for pos in members:
            cb = scale.grid.chunk_box(pos)
            inter = box.intersect(cb)
            chunks[pos][(slice(c0, c1), *zyx_slices(inter, cb))] = value_czyx[
                (slice(None), *zyx_slices(inter, box))
            ]
        return chunks

    if txn is not None:
        for members in groups.values():
            for pos, chunk in build(members).items():
                txn.put(scale, pos, chunk)
        return None
    return commit_groups(scale, groups, build, progress=progress, stop_on_error=True)


def commit_chunks(
    scale: OpenedScale,
    chunks: Mapping[Vec3, np.ndarray],
    *,
    progress: Progress | None = None,
    on_group_done: Callable[[list[Vec3]], None] | None = None,
) -> CommitStats:
    """Encode and store decoded chunks of one scale, one write per group (shard/chunk).

    A failure leaves the groups not yet stored uncommitted (``on_group_done`` not called
    for them); the other groups already under way still finish.
    """
    groups: dict[Hashable, list[Vec3]] = {}
    positions = list(chunks)
    for pos, g in zip(positions, scale.store.groups_of(positions), strict=True):
        groups.setdefault(g, []).append(pos)
    return commit_groups(
        scale,
        groups,
        lambda members: {p: chunks[p] for p in members},
        progress=progress,
        on_group_done=on_group_done,
    )


def commit_groups(
    scale: OpenedScale,
    groups: Mapping[Hashable, list[Vec3]],
    chunks_of: Callable[[list[Vec3]], Mapping[Vec3, np.ndarray]],
    *,
    progress: Progress | None = None,
    on_group_done: Callable[[list[Vec3]], None] | None = None,
    stop_on_error: bool = False,
) -> CommitStats:
    """THE commit scheduler: store each group's chunks (``chunks_of(members)``, built
    under the group's lock) with one ``commit_group`` per group, a few groups at a time
    so building, encoding and storing overlap while memory stays near
    :data:`GROUP_CONCURRENCY` groups. Progress ``(groups done, groups)`` is reported on
    the caller's thread (a GUI's progress bar may only be touched there). With
    ``stop_on_error`` groups not started when one fails are not written."""
    store = scale.store

    def run(group: Hashable, members: list[Vec3]) -> CommitStats:
        # A worker holds one group lock at a time, so workers cannot deadlock.
        with _GROUP_LOCKS[hash((scale.cache_id, group)) % len(_GROUP_LOCKS)]:
            chunks = chunks_of(members)
            if len(members) > 1:
                # Encode on the context's threads (codecs release the GIL), in member order.
                encoded = scale.context.executor.map(lambda p: scale.encode(p, chunks[p]), members)
                updates = dict(zip(members, encoded, strict=True))
            else:
                updates = {p: scale.encode(p, chunks[p]) for p in members}
            stats = store.commit_group(group, updates)
            scale.stored(group, members)
        if on_group_done is not None:
            on_group_done(members)
        return stats

    total = CommitStats()
    items = list(groups.items())
    if len(items) <= 1:
        for group, members in items:
            total.add(run(group, members))
            if progress is not None:
                progress(1, 1)
        return total
    with ThreadPoolExecutor(
        min(GROUP_CONCURRENCY, len(items)), thread_name_prefix="precomputed-write"
    ) as pool:
        futures = [pool.submit(run, group, members) for group, members in items]
        try:
            for i, f in enumerate(as_completed(futures)):
                total.add(f.result())
                if progress is not None:
                    progress(i + 1, len(items))
        except BaseException:
            if stop_on_error:
                for f in futures:
                    f.cancel()  # groups not started yet are not written
            raise
    return total

"""The write path of one scale: read-modify-write of partial chunks, and the one commit
scheduler that stores decoded chunks group by group.

:func:`commit_groups` is used by direct writes (:func:`write_box` without a transaction)
and by transactions (:func:`commit_chunks`, from ``Transaction.commit``): a few write
groups (chunk keys, or shards) at a time, each under its group lock while its chunks are
built, encoded and stored by ``ChunkStore.commit_group_with``: a conditional
read-modify-write (the chunks a group's build needs are read with the group's
generation; the group is written only if it still has it, else rebuilt on fresh chunks).
Progress is reported on the caller's thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np

from .chunkstore import CommitStats
from .internal.geometry import Box, Vec3, zyx_slices
from .readpath import fetch
from .scale import ChunkOverlay, OpenedScale

__all__ = ["GROUP_CONCURRENCY", "Build", "Merge", "write_box", "commit_chunks", "commit_groups"]

Progress = Callable[[int, int], None]

#: Groups (shards or chunks) committed concurrently: bounds memory to a few shards.
GROUP_CONCURRENCY = 4
#: Striped locks serialising the read-modify-write of one write group (chunk or shard)
#: within the process: concurrent partial writes to one chunk must not lose updates.
#: Re-entrant, so a write made from inside another (a callback) cannot deadlock.
_GROUP_LOCKS = [threading.RLock() for _ in range(64)]


#: ``build(members, stored) -> {pos: decoded chunk}``: a group's chunks to store, given
#: the stored (decoded; ``None``: missing) chunks of the positions it needs read. Called
#: once per attempt of the conditional write, with that attempt's stored chunks; a
#: position left out of the result keeps what is stored.
Build = Callable[[list[Vec3], Mapping[Vec3, "np.ndarray | None"]], Mapping[Vec3, np.ndarray]]
#: ``merge(pos, ours, stored) -> chunk or None``: what to store for one dirty chunk given
#: what is stored now (``None``: missing); ``None`` stores nothing for it. See
#: :func:`commit_chunks`.
Merge = Callable[[Vec3, np.ndarray, "np.ndarray | None"], "np.ndarray | None"]


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
    once), so memory stays near one shard per group in flight; the chunks a write covers
    only partly are read from storage with the group's generation, and the group is
    written only if that generation is still current (else read and merged again), so a
    concurrent writer's change to the same chunk or shard is never lost.
    """
    c0, c1 = channels
    cells = list(scale.grid.cells(box))
    groups: dict[Hashable, list[Vec3]] = {}
    group_ids = scale.store.groups_of(cells)
    for pos, g in zip(cells, group_ids, strict=True):
        groups.setdefault(g, []).append(pos)

    def covered(pos: Vec3) -> bool:
        cb = scale.grid.chunk_box(pos)
        return box.intersect(cb) == cb and (c0, c1) == (0, scale.num_channels)

    def place(pos: Vec3, chunk: np.ndarray) -> None:
        cb = scale.grid.chunk_box(pos)
        inter = box.intersect(cb)
        chunk[(slice(c0, c1), *zyx_slices(inter, cb))] = value_czyx[
            (slice(None), *zyx_slices(inter, box))
        ]

    if txn is not None:
        for members in groups.values():
            chunks: dict[Vec3, np.ndarray] = {}

            def base(
                pos: Vec3, chunk: np.ndarray | None, chunks: dict[Vec3, np.ndarray] = chunks
            ) -> None:
                chunks[pos] = (
                    np.zeros(scale.chunk_shape(pos), scale.dtype) if chunk is None else chunk.copy()
                )

            partial = [p for p in members if not covered(p)]
            if partial:
                # A missing chunk is zeros for writes, whatever fill_missing_data_reads
                # says (passed per call: the handle is shared with concurrent readers).
                fetch(scale, partial, txn, base, fill_missing=True)
            for pos in members:
                if pos not in chunks:
                    chunks[pos] = np.empty(scale.chunk_shape(pos), scale.dtype)
                place(pos, chunks[pos])
                # The voxels written: the commit re-applies only them to what is stored.
                cb = scale.grid.chunk_box(pos)
                written = None if covered(pos) else (slice(c0, c1), *zyx_slices(box.intersect(cb), cb))
                txn.put(scale, pos, chunks[pos], written)
        return None

    def build(
        members: list[Vec3], stored: Mapping[Vec3, np.ndarray | None]
    ) -> dict[Vec3, np.ndarray]:
        # Built afresh by every attempt (a retry is rare) and dropped with the group, so
        # memory stays near the groups in flight, not the whole write.
        out: dict[Vec3, np.ndarray] = {}
        for pos in members:
            if pos in stored:  # partial: on top of what is stored now (missing: zeros)
                old = stored[pos]
                chunk = (
                    np.zeros(scale.chunk_shape(pos), scale.dtype)
                    if old is None
                    else np.array(old, dtype=scale.dtype, order="C")
                )
            else:
                chunk = np.empty(scale.chunk_shape(pos), scale.dtype)
            place(pos, chunk)
            out[pos] = chunk
        return out

    def needs(members: list[Vec3]) -> list[Vec3]:
        return [p for p in members if not covered(p)]

    return commit_groups(scale, groups, build, needs=needs, progress=progress, stop_on_error=True)


def commit_chunks(
    scale: OpenedScale,
    chunks: Mapping[Vec3, np.ndarray],
    *,
    progress: Progress | None = None,
    on_group_done: Callable[[list[Vec3]], None] | None = None,
    merge: Merge | None = None,
    reads: Collection[Vec3] | None = None,
) -> CommitStats:
    """Encode and store decoded chunks of one scale, one write per group (shard/chunk).

    With ``merge`` each group is a conditional read-modify-write of its chunks: every
    attempt reads the stored chunks (one generation of the group), stores
    ``merge(pos, ours, stored)`` for each (``None``: nothing for that chunk) and writes
    only if the group is still at that generation; when another writer got there
    first, the chunks are read again and ``merge`` called again (so it must not keep
    state from a failed attempt; it runs under the group's lock, on a worker thread).
    Without ``merge`` the chunks replace what is stored (other chunks of a shard kept).
    ``reads``: the chunks whose stored version ``merge`` needs (default: all); the others
    replace what is stored without being read (an unsharded group of only such chunks is
    written without a read).

    A failure leaves the groups not yet stored uncommitted (``on_group_done`` not called
    for them); the other groups already under way still finish.
    """
    groups: dict[Hashable, list[Vec3]] = {}
    positions = list(chunks)
    for pos, g in zip(positions, scale.store.groups_of(positions), strict=True):
        groups.setdefault(g, []).append(pos)

    if merge is None:

        def build(members: list[Vec3], stored: Mapping[Vec3, np.ndarray | None]) -> dict[Vec3, np.ndarray]:
            return {p: chunks[p] for p in members}

        return commit_groups(
            scale, groups, build, progress=progress, on_group_done=on_group_done
        )

    def needs(members: list[Vec3]) -> list[Vec3]:
        return list(members) if reads is None else [p for p in members if p in reads]

    def merged(members: list[Vec3], stored: Mapping[Vec3, np.ndarray | None]) -> dict[Vec3, np.ndarray]:
        out: dict[Vec3, np.ndarray] = {}
        for p in members:
            if reads is not None and p not in reads:
                out[p] = chunks[p]
                continue
            got = merge(p, chunks[p], stored.get(p))
            if got is not None:
                out[p] = got
        return out

    return commit_groups(
        scale,
        groups,
        merged,
        needs=needs,
        progress=progress,
        on_group_done=on_group_done,
    )


def commit_groups(
    scale: OpenedScale,
    groups: Mapping[Hashable, list[Vec3]],
    build: Build,
    *,
    needs: Callable[[list[Vec3]], list[Vec3]] | None = None,
    progress: Progress | None = None,
    on_group_done: Callable[[list[Vec3]], None] | None = None,
    stop_on_error: bool = False,
) -> CommitStats:
    """THE commit scheduler: store each group's chunks with one conditional
    ``ChunkStore.commit_group_with`` per group (``build(members, stored)`` under the
    group's lock, ``stored`` the decoded chunks of ``needs(members)`` at the generation
    the write is conditional on; retried on fresh chunks when another writer got there
    first), a few groups at a time so building, encoding and storing overlap while
    memory stays near :data:`GROUP_CONCURRENCY` groups. Progress ``(groups done,
    groups)`` is reported on the caller's thread (a GUI's progress bar may only be
    touched there). With ``stop_on_error`` groups not started when one fails are not
    written."""
    store = scale.store

    def run(group: Hashable, members: list[Vec3]) -> CommitStats:
        want = needs(members) if needs is not None else []
        # Encodings of chunk arrays a retry hands back unchanged are reused.
        encoded: dict[Vec3, tuple[np.ndarray, bytes | None]] = {}

        def encode(pos: Vec3, chunk: np.ndarray) -> bytes | None:
            hit = encoded.get(pos)
            if hit is not None and hit[0] is chunk:
                return hit[1]
            blob = scale.encode(pos, chunk)
            encoded[pos] = (chunk, blob)
            return blob

        def rebuild(stored: Mapping[Vec3, bytes | None]) -> dict[Vec3, bytes | None]:
            decoded = {p: None if b is None else scale.decode(p, b) for p, b in stored.items()}
            chunks = build(members, decoded)
            order = [p for p in members if p in chunks]
            if len(order) > 1:
                # Encode on the context's threads (codecs release the GIL), in member order.
                blobs = scale.context.executor.map(lambda p: encode(p, chunks[p]), order)
                return dict(zip(order, blobs, strict=True))
            return {p: encode(p, chunks[p]) for p in order}

        # A worker holds one group lock at a time, so workers cannot deadlock.
        with _GROUP_LOCKS[hash((scale.cache_id, group)) % len(_GROUP_LOCKS)]:
            if want:
                stats = store.commit_group_with(group, want, rebuild)
            else:  # nothing to read first: the group's chunks replace what is stored
                stats = store.commit_group(group, rebuild({}))
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

"""Write-back buffer of dirty chunks, committed grouped by shard.

A :class:`Transaction` holds decoded chunks that were written but not yet stored; every
read made through it sees them (it is the read path's :class:`~.scale.ChunkOverlay`).
``commit()`` hands the dirty chunks to the write path's one commit scheduler
(:func:`.writepath.commit_chunks`), which rewrites each group (a shard file, or a single
chunk key when unsharded) exactly once. Edits made while a commit runs, and edits of
groups whose commit failed, stay dirty, so a later commit (a retry) stores them; nothing
is dropped silently.

Every commit is a conditional read-modify-write of each group it touches. The
transaction remembers which voxels of each dirty chunk its writes covered (a mask; a chunk
written whole needs none): a partly written chunk is committed by putting just those
voxels on top of the chunk stored at the generation the write replaces, re-read and
re-applied when another writer got there first. So another writer's change to other
voxels of the chunk, made after this transaction read the chunk into its buffer, is
kept; voxels both wrote keep the values of the later commit.

With ``bases`` (the stored chunks the edits were made on) the commit merges: each group
is a conditional read-modify-write in which every dirty chunk is merged three-way
(:func:`merge_chunk`) with the chunk stored at the very generation the write replaces;
when another writer gets there first the group is read and merged again. Two writers
editing disjoint voxels of one chunk therefore both keep their edits; voxels both
changed keep the values of the later commit, which reports them (:class:`Rebased`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .chunkstore import CommitStats
from .internal.geometry import Vec3
from .scale import OpenedScale
from .writepath import GROUP_CONCURRENCY, commit_chunks

__all__ = ["Transaction", "Rebased", "merge_chunk", "GROUP_CONCURRENCY"]

Progress = Callable[[int, int], None]
#: ``(scale, {pos: stored chunk}, positions rewritten meanwhile)``: see ``commit``.
Committed = Callable[[OpenedScale, dict[Vec3, np.ndarray], set[Vec3]], None]
#: ``(scale, what the merge did with each chunk of a stored group)``: see ``commit``.
Merged = Callable[[OpenedScale, "list[Rebased]"], None]
#: Per scale, the stored chunk (``None``: absent) the edits of each dirty chunk were
#: made on: see ``commit``.
Bases = Mapping[OpenedScale, Mapping[Vec3, "np.ndarray | None"]]


@dataclass(frozen=True)
class Rebased:
    """What :meth:`Transaction.rebase` did with one dirty chunk.

    ``outcome``: ``"unchanged"`` (the edits were undone: the chunk is no longer dirty),
    ``"kept"`` (storage still holds the base: the edits stand as they are), ``"merged"``
    (another writer changed the chunk: merged voxel by voxel, still dirty) or
    ``"superseded"`` (the merge equals what is stored: no longer dirty). ``conflicts``
    counts the voxels both changed to different values (ours were kept); ``stored`` is
    the chunk as stored now (``None``: absent) for merged and superseded chunks, the new
    base of their edits (after a merging ``Transaction.commit``: what it stored).
    """

    position: Vec3
    outcome: str
    conflicts: int = 0
    stored: np.ndarray | None = None


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Equal chunks, ``None`` (absent) reading as zeros."""
    if a is b:
        return True
    if a is None:
        return not np.any(b)
    if b is None:
        return not np.any(a)
    return bool(np.array_equal(a, b))


def merge_chunk(
    ours: np.ndarray, base: np.ndarray | None, stored: np.ndarray | None
) -> tuple[np.ndarray | None, int]:
    """Three-way merge of one chunk: where ``ours`` differs from ``base`` (the chunk our
    edits were made on) our voxels win, elsewhere the ``stored`` ones (another writer's).
    ``None`` (absent) reads as zeros. Returns the merged chunk (``None`` when it equals
    ``stored``: nothing of ours is left to write) and the number of voxels both changed
    to different values."""
    base_a = np.zeros_like(ours) if base is None else base
    stored_a = np.zeros_like(ours) if stored is None else stored
    mine = ours != base_a
    theirs = stored_a != base_a
    merged = np.where(mine, ours, stored_a)
    both = int(np.count_nonzero(mine & theirs & (ours != stored_a)))
    return (None if np.array_equal(merged, stored_a) else merged), both


def _merger(
    base_of: Mapping[Vec3, np.ndarray | None], outcomes: dict[Vec3, tuple[Rebased, np.ndarray]]
) -> Callable[[Vec3, np.ndarray, np.ndarray | None], np.ndarray | None]:
    """The ``merge`` of :func:`.writepath.commit_chunks` for chunks with known bases:
    called once per attempt of the conditional write, with the chunk stored at the
    generation that attempt replaces; records what it did in ``outcomes``."""

    def merge(pos: Vec3, ours: np.ndarray, stored: np.ndarray | None) -> np.ndarray | None:
        if pos not in base_of:  # no base known: ours as it is
            outcomes.pop(pos, None)
            return ours
        base = base_of[pos]
        if _same(ours, base):  # the edits were undone: leave what is stored
            outcomes[pos] = (Rebased(pos, "unchanged"), ours if stored is None else stored)
            return None
        if _same(stored, base):  # nobody else changed it
            outcomes[pos] = (Rebased(pos, "kept"), ours)
            return ours
        merged, both = merge_chunk(ours, base, stored)
        if merged is None:  # what is stored already holds our changes
            now = np.zeros_like(ours) if stored is None else stored
            outcomes[pos] = (Rebased(pos, "superseded", both, stored), now)
            return None
        outcomes[pos] = (Rebased(pos, "merged", both, merged), merged)
        return merged

    return merge


#: A dirty chunk: (version, chunk_czyx, the voxels written or ``None``: all of it).
_Dirty = tuple[int, np.ndarray, "np.ndarray | None"]


def _combined(
    base_merge: Callable[[Vec3, np.ndarray, np.ndarray | None], np.ndarray | None] | None,
    masks: Mapping[Vec3, np.ndarray],
    outcomes: dict[Vec3, tuple[Rebased, np.ndarray]],
) -> Callable[[Vec3, np.ndarray, np.ndarray | None], np.ndarray | None]:
    """The ``merge`` of a commit: chunks with a written-voxel mask (and no base) get
    their written voxels put on top of ``stored``; the others go to ``base_merge`` (the
    three-way merge of chunks with bases), or are stored as they are. The stored chunk
    of a masked one is recorded in ``outcomes`` without a report (``Rebased`` is for
    chunks with bases)."""

    def merge(pos: Vec3, ours: np.ndarray, stored: np.ndarray | None) -> np.ndarray | None:
        mask = masks.get(pos)
        if mask is None:
            return ours if base_merge is None else base_merge(pos, ours, stored)
        out = np.zeros_like(ours) if stored is None else np.array(stored, ours.dtype, order="C")
        np.copyto(out, ours, where=mask)
        outcomes[pos] = (_APPLIED, out)
        return out

    return merge


#: The ``outcomes`` mark of a chunk whose written voxels were applied (not reported).
_APPLIED = Rebased((0, 0, 0), "applied")


class Transaction:
    """Buffered writes to one or more scales; use as a context manager or commit by hand.

    ``with vol.transaction() as txn: vol[...] = x`` commits on a clean exit and discards
    on an exception. ``Transaction()`` can also be passed to ``vol.with_transaction``.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        # id(handle) -> (handle, {pos: _Dirty})
        self._dirty: dict[int, tuple[OpenedScale, dict[Vec3, _Dirty]]] = {}
        self._version = 0
        self._bound: list[OpenedScale] = []  # scales whose writes go here in a with-block
        self.last_stats: CommitStats | None = None

    # -- buffer ---------------------------------------------------------------------------
    def get(self, handle: OpenedScale, pos: Vec3) -> np.ndarray | None:
        with self._lock:
            entry = self._dirty.get(id(handle))
            if entry is None:
                return None
            item = entry[1].get(pos)
            return None if item is None else item[1]

    def put(
        self, handle: OpenedScale, pos: Vec3, chunk: np.ndarray, written: Any = None
    ) -> None:
        """Buffer ``chunk`` (czyx) as the new content of ``pos``; ``written`` (a czyx
        index of the chunk; ``None``: all of it) are the voxels this write set, added to
        those earlier writes of the chunk set: the commit stores only them (on top of
        what is stored then) unless the whole chunk was written."""
        with self._lock:
            entry = self._dirty.setdefault(id(handle), (handle, {}))
            prev = entry[1].get(pos)
            mask: np.ndarray | None = None
            if written is not None and (prev is None or prev[2] is not None):
                mask = (
                    np.zeros(chunk.shape, bool) if prev is None else np.array(prev[2], bool)
                )
                mask[written] = True
                if mask.all():
                    mask = None
            self._put(entry[1], pos, chunk, mask)

    def _put(
        self, chunks: dict[Vec3, _Dirty], pos: Vec3, chunk: np.ndarray, mask: np.ndarray | None
    ) -> None:
        self._version += 1
        chunks[pos] = (self._version, chunk, mask)

    def written(self, handle: OpenedScale, pos: Vec3) -> np.ndarray | None:
        """The voxels of dirty chunk ``pos`` this transaction's writes set (a bool czyx
        mask), ``None`` when they set all of it (or it is not dirty)."""
        with self._lock:
            entry = self._dirty.get(id(handle))
            item = None if entry is None else entry[1].get(pos)
            return None if item is None or item[2] is None else item[2].copy()

    @property
    def dirty_chunks(self) -> int:
        with self._lock:
            return sum(len(e[1]) for e in self._dirty.values())

    def dirty_positions(self) -> dict[OpenedScale, list[Vec3]]:
        with self._lock:
            return {e[0]: list(e[1]) for e in self._dirty.values()}

    def dirty_groups(self) -> int:
        """Number of shards (or unsharded chunks) a commit would rewrite."""
        with self._lock:
            return sum(
                len({h.store.group_of(p) for p in chunks}) for h, chunks in self._dirty.values()
            )

    @property
    def empty(self) -> bool:
        return self.dirty_chunks == 0

    def discard(self) -> None:
        """Drop every uncommitted edit."""
        with self._lock:
            self._dirty.clear()

    abort = discard

    def replace(
        self, handle: OpenedScale, pos: Vec3, expected: np.ndarray, new: np.ndarray | None
    ) -> bool:
        """Swap the dirty chunk at ``pos`` for ``new`` (``None``: forget it, nothing to
        store) only if it is still the array ``expected`` (identity): a concurrent write
        in between wins. The voxels counted as written stay those of the writes. Returns
        whether the swap happened."""
        with self._lock:
            entry = self._dirty.get(id(handle))
            item = None if entry is None else entry[1].get(pos)
            if item is None or item[1] is not expected:
                return False
            if new is None:
                del entry[1][pos]  # type: ignore[index]
                if not entry[1]:  # type: ignore[index]
                    del self._dirty[id(handle)]
            else:
                self._put(entry[1], pos, new, item[2])  # type: ignore[index]
            return True

    def rebase(
        self,
        scale: OpenedScale,
        bases: Mapping[Vec3, np.ndarray | None],
        positions: Sequence[Vec3] | None = None,
        *,
        batch: int = 256,
    ) -> list[Rebased]:
        """Bring this transaction's dirty chunks of ``scale`` (or those of ``positions``)
        up to date with what is stored now, before a commit overwrites it.

        ``bases[pos]`` is the stored chunk (``None``: absent) the edits of ``pos`` were
        made on. A chunk equal to its base is dropped (edits undone); a chunk whose stored
        version is still its base is kept; otherwise another writer changed it and it is
        merged voxel by voxel (:func:`merge_chunk`). Stored chunks are read afresh (cached
        shard indices of the chunks' groups are dropped first). A chunk rewritten while
        this runs is left alone (the newer write wins)."""
        with self._lock:
            entry = self._dirty.get(id(scale))
            todo = [] if entry is None else list(entry[1])
        if positions is not None:
            wanted = set(positions)
            todo = [p for p in todo if p in wanted]
        if not todo:
            return []
        scale.store.invalidate(list(set(scale.store.groups_of(todo))))
        out: list[Rebased] = []
        for i in range(0, len(todo), batch):
            part = todo[i : i + batch]
            for pos, blob in zip(part, scale.store.read_chunks(part), strict=True):
                ours = self.get(scale, pos)
                if ours is None:
                    continue
                base = bases.get(pos)
                if _same(ours, base):
                    if self.replace(scale, pos, ours, None):
                        out.append(Rebased(pos, "unchanged"))
                    continue
                stored = None if blob is None else scale.decode(pos, blob)
                if _same(stored, base):
                    out.append(Rebased(pos, "kept"))
                    continue
                merged, both = merge_chunk(ours, base, stored)
                if self.replace(scale, pos, ours, merged):
                    outcome = "superseded" if merged is None else "merged"
                    out.append(Rebased(pos, outcome, both, stored))
        return out

    # -- commit ---------------------------------------------------------------------------
    def commit(
        self,
        progress: Progress | None = None,
        on_committed: Committed | None = None,
        *,
        bases: Bases | None = None,
        on_merged: Merged | None = None,
    ) -> CommitStats:
        """Store every dirty chunk; each touched shard (or chunk key) is written once.

        On failure the exception propagates and every edit not yet stored stays dirty.
        ``on_committed(handle, chunks, still_dirty)`` is called (under the transaction's
        lock) after each group is stored, with the chunks as stored now and those of
        them that were rewritten meanwhile and so remain dirty.

        ``bases[handle][pos]``: the stored chunk (``None``: absent) the edits of a dirty
        chunk were made on. Such chunks are merged inside the conditional write of their
        group, against what is stored at the generation being replaced (re-read and
        merged again when another writer got there first; after
        ``ChunkStore.MAX_COMMIT_RETRIES`` attempts a ``ConditionFailedError``, nothing of
        the group stored): a chunk equal to its base is not written (edits undone), one
        whose stored version is still its base is written as it is (``"kept"``), else
        our changed voxels go on top of the stored ones (``"merged"``, or
        ``"superseded"`` when that is what is stored), :func:`merge_chunk`.
        ``on_merged(handle, rebased)`` reports, after each group is stored, what the
        attempt that was stored did with each of its chunks that had a base.

        A chunk without a base that the transaction's writes covered only partly is
        committed the same way: its written voxels (:meth:`written`) are put on top of
        the chunk stored at the generation being replaced (missing: zeros), again on
        every retry, so another writer's other voxels are kept. Chunks written whole
        replace what is stored, unread.
        """
        total = CommitStats()
        with self._lock:
            snapshot = [(h, dict(chunks)) for h, chunks in self._dirty.values()]
        for handle, chunks in snapshot:
            base_of = None if bases is None else bases.get(handle)
            if base_of:
                self._drop_undone(handle, chunks, base_of, on_merged)
            arrays = {pos: arr for pos, (_, arr, _) in chunks.items()}
            # What the latest attempt of each group did (an attempt replaces the last).
            outcomes: dict[Vec3, tuple[Rebased, np.ndarray]] = {}
            masks = {
                pos: m
                for pos, (_, _, m) in chunks.items()
                if m is not None and (base_of is None or pos not in base_of)
            }

            def done(
                positions: list[Vec3],
                handle: OpenedScale = handle,
                chunks: dict[Vec3, _Dirty] = chunks,
                outcomes: dict[Vec3, tuple[Rebased, np.ndarray]] = outcomes,
            ) -> None:
                # Forget only entries not rewritten while we were committing.
                with self._lock:
                    entry = self._dirty.get(id(handle))
                    if entry is not None:
                        for p in positions:
                            cur = entry[1].get(p)
                            if cur is not None and cur[0] == chunks[p][0]:
                                del entry[1][p]
                        if not entry[1]:
                            del self._dirty[id(handle)]
                    stored = {
                        p: outcomes[p][1] if p in outcomes else chunks[p][1] for p in positions
                    }
                    if on_merged is not None:
                        merged = [
                            outcomes[p][0]
                            for p in positions
                            if p in outcomes and outcomes[p][0] is not _APPLIED
                        ]
                        if merged:
                            on_merged(handle, merged)
                    if on_committed is not None:
                        still = set() if entry is None else {p for p in positions if p in entry[1]}
                        on_committed(handle, stored, still)

            merge, reads = None, None
            if base_of is not None or masks:
                merge = _combined(
                    None if base_of is None else _merger(base_of, outcomes), masks, outcomes
                )
                reads = set(masks) | {p for p in arrays if base_of is not None and p in base_of}
            total.add(
                commit_chunks(
                    handle, arrays, progress=progress, on_group_done=done, merge=merge, reads=reads
                )
            )
        self.last_stats = total
        return total

    def _drop_undone(
        self,
        handle: OpenedScale,
        chunks: dict[Vec3, _Dirty],
        base_of: Mapping[Vec3, np.ndarray | None],
        on_merged: Merged | None,
    ) -> None:
        """Chunks whose edits were all undone (equal to their base) need no write, nor
        a read: they leave the transaction (and ``chunks``) before the commit."""
        undone = []
        for pos, (_, arr, _) in list(chunks.items()):
            if pos in base_of and _same(arr, base_of[pos]) and self.replace(handle, pos, arr, None):
                del chunks[pos]
                undone.append(Rebased(pos, "unchanged"))
        if undone and on_merged is not None:
            on_merged(handle, undone)

    def bind(self, scale: OpenedScale) -> None:
        """Route ``scale``'s writes (and reads) through this transaction until the
        with-block ends (``Volume.transaction()``); one transaction per scale at a time."""
        scale.attach_transaction(self)
        self._bound.append(scale)

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        for scale in self._bound:
            scale.detach_transaction(self)
        self._bound.clear()
        if exc_type is None:
            self.commit()
        else:
            self.discard()

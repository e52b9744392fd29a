"""Merging commits: ``Transaction.commit(bases=...)`` merges each dirty chunk three-way
with the chunk stored at the very generation its conditional write replaces, so another
writer's change landing between our read and our write is merged, not overwritten; a
group that other writers keep changing fails with ``ConditionFailedError`` and every
edit stays dirty."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from precomputed import ConditionFailedError, Transaction
from precomputed.kvstore import MemoryKvStore
from precomputed.readpath import fetch
from volumes import (
    SMALL_CHUNK,
    SMALL_SIZE,
    beaten_at_every_write,
    other_writer,
    small_memory_volume,
)

SIZE, CHUNK = SMALL_SIZE, SMALL_CHUNK  # 2 x 2 x 1 chunks
POS = (0, 0, 0)


create = small_memory_volume




def base_of(vol: Any, pos: Any = POS) -> np.ndarray | None:
    got: dict[Any, Any] = {}
    fetch(vol.handle, [pos], None, got.__setitem__, fill_missing=True)
    return None if got[pos] is None else np.array(got[pos])


def edit(vol: Any, txn: Transaction, box: tuple[slice, ...], value: int) -> dict[Any, Any]:
    """Write ``value`` into ``box`` (x, y, z) through ``txn``; returns the bases."""
    bases = {POS: base_of(vol)}
    vol.with_transaction(txn)[(*box, slice(None))] = value
    return bases


@pytest.mark.parametrize("sharded", [False, True], ids=["unsharded", "sharded"])
def test_disjoint_and_overlapping_edits_are_merged_and_conflicts_counted(
    memory_store: MemoryKvStore, sharded: bool
) -> None:
    vol = create(memory_store, sharded)
    txn = Transaction()
    bases = edit(vol, txn, (slice(0, 2), slice(0, 2), slice(0, 1)), 5)  # ours: 4 voxels
    theirs = other_writer(memory_store)
    theirs[2:4, 0:2, 0:1, :] = 6  # disjoint
    theirs[0:1, 0:2, 0:1, :] = 7  # 2 of ours
    merged: list[Any] = []
    txn.commit(bases={vol.handle: bases}, on_merged=lambda h, r: merged.extend(r))
    got = other_writer(memory_store).read()[..., 0]
    assert (got[0:2, 0:2, 0] == 5).all()  # ours, where both painted too
    assert (got[2:4, 0:2, 0] == 6).all()  # theirs, disjoint
    assert (got[4:, :, :] == 1).all() and (got[:, 2:, :] == 1).all()
    assert [(r.position, r.outcome, r.conflicts) for r in merged] == [(POS, "merged", 2)]
    assert txn.empty


def test_a_write_between_our_read_and_our_write_is_merged_not_overwritten(
    memory_store: MemoryKvStore,
) -> None:
    """The other writer commits after the commit read the chunk and before it writes:
    the conditional write fails, the chunk is read and merged again."""
    vol = create(memory_store, sharded=False)
    txn = Transaction()
    bases = edit(vol, txn, (slice(0, 2), slice(0, 2), slice(0, 1)), 5)
    theirs = other_writer(memory_store)
    real = memory_store._write_if
    cut_in: list[str] = []

    def late_write(key: str, data: Any, generation: str) -> Any:
        if not cut_in:
            cut_in.append(key)  # (first: so their own write below passes straight on)
            theirs[2:4, 2:4, 0:1, :] = 8  # lands just before our conditional write
        return real(key, data, generation)

    memory_store._write_if = late_write  # type: ignore[method-assign]
    stats = txn.commit(bases={vol.handle: bases})
    memory_store._write_if = real  # type: ignore[method-assign]
    got = other_writer(memory_store).read()[..., 0]
    assert cut_in and stats.retries >= 1
    assert (got[0:2, 0:2, 0] == 5).all() and (got[2:4, 2:4, 0] == 8).all()


def test_a_group_other_writers_keep_changing_fails_and_keeps_every_edit(
    memory_store: MemoryKvStore,
) -> None:
    vol = create(memory_store, sharded=True)
    txn = Transaction()
    bases = edit(vol, txn, (slice(0, 2), slice(0, 2), slice(0, 1)), 5)
    theirs = other_writer(memory_store)
    with beaten_at_every_write(memory_store, theirs) as beaten:
        with pytest.raises(ConditionFailedError, match="shard|\\.shard"):
            txn.commit(bases={vol.handle: bases})
    assert beaten[0] == vol.handle.store.MAX_COMMIT_RETRIES
    assert txn.dirty_chunks == 1  # nothing lost: the edit is still there ...
    assert (other_writer(memory_store).read()[0:2, 0:2, 0, 0] == 1).all()  # ... and not stored
    txn.commit(bases={vol.handle: bases})  # a retry with no one in the way stores it
    assert (other_writer(memory_store).read()[0:2, 0:2, 0, 0] == 5).all()
    assert (other_writer(memory_store).read()[6:8, 6:8, 0, 0] > 100).all()


def test_undone_edits_are_neither_read_nor_written(memory_store: MemoryKvStore) -> None:
    vol = create(memory_store, sharded=True)
    txn = Transaction()
    bases = edit(vol, txn, (slice(0, 2), slice(0, 2), slice(0, 1)), 5)
    vol.with_transaction(txn)[0:2, 0:2, 0:1, :] = 1  # back to what it was
    memory_store.stats.clear()
    merged: list[Any] = []
    stats = txn.commit(bases={vol.handle: bases}, on_merged=lambda h, r: merged.extend(r))
    assert [(r.position, r.outcome) for r in merged] == [(POS, "unchanged")]
    assert stats.chunks_written == 0 and txn.empty
    assert memory_store.stats["write"] == memory_store.stats["read"] == 0

"""Plain transactions (no ``bases``) commit as conditional read-modify-writes: a chunk
the transaction wrote only partly is stored as its written voxels on top of what is
stored at commit time, so another writer's change to other voxels of the chunk, made
after the chunk was read into the buffer, survives; chunks written whole are stored
unread; a group other writers keep changing fails with nothing stored and nothing lost."""

from __future__ import annotations

import numpy as np
import pytest

from precomputed import ConditionFailedError, Transaction
from precomputed.kvstore import MemoryKvStore
from volumes import (
    SMALL_CHUNK,
    SMALL_SIZE,
    beaten_at_every_write,
    other_writer,
    small_memory_volume,
)

SIZE, CHUNK = SMALL_SIZE, SMALL_CHUNK  # 2 x 2 x 1 chunks


create = small_memory_volume


other = other_writer


@pytest.mark.parametrize("sharded", [False, True], ids=["unsharded", "sharded"])
def test_another_writers_voxels_written_after_our_buffer_read_survive_the_commit(
    memory_store: MemoryKvStore, sharded: bool
) -> None:
    vol = create(memory_store, sharded)
    theirs = other(memory_store)
    with vol.transaction():
        vol[0:2, 0:2, 0:1, :] = 5  # chunk (0, 0, 0) read into the buffer, 4 voxels set
        theirs[2:4, 0:2, 0:1, :] = 6  # other voxels of that chunk, stored meanwhile
        theirs[0:1, 0:1, 0:1, :] = 7  # one of ours: the later commit (ours) wins it
        assert (vol[0:4, 0:2, 0, 0].read() == [[5, 5], [5, 5], [1, 1], [1, 1]]).all()
    got = other(memory_store).read()[..., 0]
    assert (got[0:2, 0:2, 0] == 5).all()
    assert (got[2:4, 0:2, 0] == 6).all()
    assert (got[4:, :, :] == 1).all() and (got[:, 2:, :] == 1).all()


def test_the_written_voxels_accumulate_over_writes_and_a_whole_write_clears_the_mask(
    memory_store: MemoryKvStore,
) -> None:
    vol = create(memory_store, sharded=False)
    txn = Transaction()
    view = vol.with_transaction(txn)
    view[0:1, 0:1, 0:1, :] = 2
    view[3:4, 3:4, 3:4, :] = 3
    mask = txn.written(vol.handle, (0, 0, 0))
    assert mask is not None and mask.shape == (1, 4, 4, 4)  # czyx
    assert mask.sum() == 2 and mask[0, 0, 0, 0] and mask[0, 3, 3, 3]
    view[0:4, 0:4, 0:4, :] = 4  # the whole chunk: stored as it is, unread
    assert txn.written(vol.handle, (0, 0, 0)) is None
    memory_store.stats.clear()
    txn.commit()
    assert memory_store.stats["read"] == memory_store.stats["read_range"] == 0


@pytest.mark.parametrize("sharded", [False, True], ids=["unsharded", "sharded"])
def test_a_missing_chunk_written_in_part_is_stored_on_zeros_or_on_what_another_writer_made(
    memory_store: MemoryKvStore, sharded: bool
) -> None:
    vol = create(memory_store, sharded)
    theirs = other(memory_store)
    theirs[4:8, 4:8, 0:4, :] = 0  # chunk (1, 1, 0) all zeros: not stored
    with vol.transaction():
        vol[4:5, 4:5, 0:1, :] = 9
        theirs[7:8, 7:8, 3:4, :] = 8  # the chunk exists again, with one voxel
    got = other(memory_store).read()[4:8, 4:8, 0:4, 0]
    want = np.zeros((4, 4, 4), np.uint32)
    want[0, 0, 0], want[3, 3, 3] = 9, 8
    np.testing.assert_array_equal(got, want)


def test_a_group_other_writers_keep_changing_fails_and_keeps_the_transaction(
    memory_store: MemoryKvStore,
) -> None:
    vol = create(memory_store, sharded=True)
    theirs = other(memory_store)
    txn = Transaction()
    vol.with_transaction(txn)[0:2, 0:2, 0:1, :] = 5
    with beaten_at_every_write(memory_store, theirs) as beaten:
        with pytest.raises(ConditionFailedError, match=r"\.shard"):
            txn.commit()
    assert beaten[0] == vol.handle.store.MAX_COMMIT_RETRIES
    assert txn.dirty_chunks == 1  # nothing lost: the edit and its mask are still there
    assert txn.written(vol.handle, (0, 0, 0)) is not None
    assert (other(memory_store).read()[0:2, 0:2, 0, 0] == 1).all()  # ... and not stored
    txn.commit()  # with no one in the way it is stored, on top of their last write
    got = other(memory_store).read()[..., 0]
    assert (got[0:2, 0:2, 0] == 5).all() and (got[6:8, 6:8, 0] > 100).all()
    assert (got[2:4, :, :] == 1).all()

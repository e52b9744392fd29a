"""Result arrays in recycled memory: reused only once nothing refers to them any more."""

from __future__ import annotations

import gc
import pickle
import threading
from collections.abc import Iterator

import numpy as np
import pytest

import precomputed
from precomputed import Context
from precomputed.internal import recycle as _recycle
from precomputed.kvstore import MemoryKvStore
from volumes import volume_spec

CHUNK = (1, 64, 64, 64)  # 2 MiB of uint64


@pytest.fixture(autouse=True)
def fresh_pool() -> Iterator[None]:
    previous = _recycle.set_recycling_limit(0)  # empty the pool
    _recycle.set_recycling_limit(64 << 20)
    yield
    _recycle.set_recycling_limit(previous)


def test_arrays_are_plain_writeable_c_contiguous_arrays() -> None:
    a = _recycle.empty(CHUNK, np.uint64)
    assert a.shape == CHUNK and a.dtype == np.uint64
    assert a.flags.c_contiguous and a.flags.writeable and a.flags.aligned
    a[...] = 7
    assert int(a.sum()) == 7 * a.size
    z = _recycle.zeros((3, 300, 400), ">u2")
    assert z.dtype == np.dtype(">u2") and not z.any()
    assert pickle.loads(pickle.dumps(a)).tolist() == a.tolist()


def test_memory_returns_to_the_pool_only_when_the_last_view_dies() -> None:
    a = _recycle.empty(CHUNK, np.uint64)
    a[...] = 1
    view = a.transpose(3, 2, 1, 0)[:, :, 5, 0]
    del a
    gc.collect()
    assert _recycle.idle_bytes() == 0  # the view still uses it
    others = [_recycle.empty(CHUNK, np.uint64) for _ in range(3)]
    for o in others:
        o[...] = 2
    assert (view == 1).all()  # not handed out again while in use
    del view
    gc.collect()
    assert _recycle.idle_bytes() == 2 << 20
    again = _recycle.empty(CHUNK, np.uint64)  # reuses it
    assert _recycle.idle_bytes() == 0
    del again, others


def test_the_limit_bounds_idle_memory_and_zero_turns_recycling_off() -> None:
    _recycle.set_recycling_limit(5 << 20)
    arrays = [_recycle.empty(CHUNK, np.uint64) for _ in range(4)]
    del arrays
    gc.collect()
    assert _recycle.idle_bytes() == 4 << 20  # two of the four 2 MiB buffers fit in 5 MiB
    _recycle.set_recycling_limit(0)
    assert _recycle.idle_bytes() == 0
    plain = _recycle.empty(CHUNK, np.uint64)
    assert plain.base is None  # recycling off: an ordinary array
    with pytest.raises(ValueError):
        _recycle.set_recycling_limit(-1)


def test_small_and_huge_sizes_are_ordinary_arrays() -> None:
    assert _recycle.empty((10, 10), np.uint8).base is None
    assert _recycle.empty((_recycle.MAX_BYTES + 1,), np.uint8).base is None


def test_threads_never_share_a_buffer() -> None:
    errors: list[str] = []

    def work(k: int) -> None:
        try:
            for i in range(50):
                a = _recycle.empty((1 << 16,), np.uint64)  # 512 KiB
                a[...] = k * 1000 + i
                b = _recycle.empty((1 << 16,), np.uint64)
                b[...] = 2**63
                if not (a == k * 1000 + i).all():
                    errors.append(f"thread {k} iteration {i}")
        except Exception as e:  # reported on the test's thread
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_read_results_stay_intact_while_later_reads_recycle(memory_store: MemoryKvStore) -> None:
    spec = volume_spec(
        memory_store.spec(), "uint64", type="segmentation", size=[128, 64, 64],
        chunk_size=[64, 64, 64], encoding="compressed_segmentation",
        compressed_segmentation_block_size=[8, 8, 8],
    )  # fmt: skip
    vol = precomputed.open(spec, create=True, context=Context(cache_bytes=0))
    data = np.random.default_rng(0).integers(0, 9, (128, 64, 64, 1)).astype(np.uint64)
    vol[...] = data
    kept = vol[0:64, :, :, :].read()
    for _ in range(5):  # results freed right away: their memory is reused
        vol[64:128, :, :, :].read()
        precomputed.read_many([vol[64:128, :, :, :], vol[0:64, :, :, :]])
    np.testing.assert_array_equal(kept, data[0:64])
    assert _recycle.idle_bytes() > 0


def test_a_lease_freed_while_the_pool_is_locked_does_not_deadlock() -> None:
    """The garbage collector can free a lease at any allocation, also inside the pool's
    own locked section on the same thread."""
    a = _recycle.empty(CHUNK, np.uint64)
    with _recycle._lock:
        del a
        gc.collect()
    assert _recycle.idle_bytes() == 2 << 20

"""Cache coherence as TensorStore defines it: ``recheck_cached_data``.

Cached chunks carry the storage generation they were read from (the chunk's key, or its
shard file: :class:`~precomputed.cache.Stamp`). Before a read uses cached entries last
known current before its staleness bound (:meth:`OpenedScale.staleness_bound
<precomputed.scale.OpenedScale.staleness_bound>`: now for ``true``, the open for
``"open"``, a given time, none for ``false``), :func:`revalidate` asks the store for the
current generation of their keys -- a ``stat`` of a local file, a metadata request on a
bucket, never a download (``ChunkStore.group_generation``) -- one request per key (a
shard's chunks share one). Entries
still current are stamped with the check's time; changed ones are dropped, with the
shard indices of their shards, so the read fetches them afresh.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .chunkstore import ChunkStore
from .chunkstore.base import Versioned
from .internal.geometry import Vec3
from .kvstore import NO_VALUE, UNVERSIONED
from .scale import OpenedScale

__all__ = ["revalidate", "group_generations", "read_versioned_many", "finished"]

#: Requests in flight at once for the network stores' metadata checks and versioned reads.
_IN_FLIGHT = 16
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _map(store: ChunkStore, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``fn`` over ``items``: in turn on local stores (each answers in microseconds),
    concurrently over a network, at most the store's ``concurrency`` at once."""
    if store.kvstore.cheap_misses or len(items) <= 1:
        return [fn(x) for x in items]
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(_IN_FLIGHT, thread_name_prefix="precomputed-recheck")
    lanes = max(1, min(_IN_FLIGHT, store.kvstore.concurrency, len(items)))
    out: list[Any] = [None] * len(items)

    def lane(i: int) -> None:
        for j in range(i, len(items), lanes):
            out[j] = fn(items[j])

    for f in [_pool.submit(lane, i) for i in range(lanes)]:
        f.result()
    return out


def group_generations(store: ChunkStore, groups: Sequence[Hashable]) -> list[str]:
    """The generation of each group's key now (``NO_VALUE``: missing), from metadata
    only (``ChunkStore.group_generation``)."""
    return _map(store, store.group_generation, groups)


def read_versioned_many(store: ChunkStore, positions: Sequence[Vec3]) -> list[Versioned]:
    """``ChunkStore.read_versioned`` of one-chunk groups (unsharded chunks); over a
    network as one batch of the store (its concurrency), each chunk's bytes with the
    generation the response reported (``finish`` still to be applied by the caller:
    see ``finished``)."""
    if store.kvstore.cheap_misses or len(positions) <= 1:
        return store.read_versioned(positions)
    keys = [store.key(p) for p in positions]
    blobs, gens = store.kvstore.read_ranges_pinned([(k, 0, None) for k in keys])
    return [Versioned(b, gens.get(k, NO_VALUE)) for k, b in zip(keys, blobs, strict=True)]


def finished(store: ChunkStore, positions: Sequence[Vec3]) -> bool:
    """Whether :func:`read_versioned_many` of ``positions`` returns finished bytes."""
    return store.kvstore.cheap_misses or len(positions) <= 1


def revalidate(scale: OpenedScale, positions: Sequence[Vec3]) -> None:
    """Make the cached entries of ``positions`` fit for a read starting now: confirm
    those whose stored version is still current, drop the others."""
    cache = scale.context.cache
    if not cache.enabled:
        return
    bound = scale.staleness_bound()
    if bound is None:
        return
    owner = scale.cache_id
    stale = cache.stale(owner, positions, bound)
    if not stale:
        return
    checked_at = time.time()  # before the checks: what they confirm was current then
    store = scale.store
    if store.ranged_chunk_reads:  # one key per chunk: the chunk is its own group
        items: list[tuple[Hashable, list[tuple[Hashable, str | None]]]] = [
            (p, [(p, g)]) for p, g in stale
        ]
    else:  # a shard's chunks share one check
        by_group: dict[Hashable, list[tuple[Hashable, str | None]]] = {}
        for item, group in zip(stale, store.groups_of([p for p, _ in stale]), strict=True):  # type: ignore[misc]
            by_group.setdefault(group, []).append(item)
        items = list(by_group.items())
    currents = group_generations(store, [group for group, _ in items])
    same: list[tuple[Hashable, str]] = []
    changed: list[Hashable] = []
    changed_groups: list[Hashable] = []
    for (group, members), current in zip(items, currents, strict=True):
        for p, g in members:
            if g == current and current != UNVERSIONED:
                same.append((p, current))
            else:
                changed.append(p)
                if not changed_groups or changed_groups[-1] != group:
                    changed_groups.append(group)
    if same:
        cache.confirm(owner, same, checked_at)
    if changed:
        cache.drop_changed(owner, changed)
        store.invalidate(changed_groups)  # a shard's cached index may be of the old version

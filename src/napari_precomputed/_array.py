"""One pyramid level as napari sees it: a lazy, 0-based array that may pad the volume.

napari needs every level of a multiscale layer to be an exact downsampling of level 0
(it infers the factors from shape ratios and has no per-level offset), so a level is
presented over a window of the scale's voxel grid that can start before the volume and
end after it. :class:`LevelArray` maps that window onto a :class:`precomputed.Volume`:
voxels outside the volume read as the fill value (0) without any I/O.

Indexing returns another view (napari slices twice before it asks for data);
``np.asarray`` fetches only the chunks the view touches, concurrently and through the
volume's shared chunk cache. Views hold no mutable state, so they can be read from
napari's slicing threads at the same time.

**Prefetch.** After a z-plane is read, the neighbouring planes of the same region at the
same level (by default one chunk row in z each way, nearest first, the direction of the
last step first) are fetched into the cache in the background, once no read has been in
progress for a moment, within a share of the cache's budget (:data:`PREFETCH`). Stepping z is then
served from memory. A read that needs chunks a prefetch is fetching waits for it rather
than fetching them twice; a newer plane of the same level supersedes an older plane's
prefetch that has not run yet. Local files are not prefetched by default (they answer in
well under a millisecond). The prefetch thread never runs on napari's UI thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from precomputed import Volume
from precomputed.readpath import prefetch
from precomputed.views import LAYOUTS, ZyxArray

__all__ = ["LevelArray", "LAYOUTS", "PREFETCH", "PrefetchSettings", "prefetch_idle"]

log = logging.getLogger("napari_precomputed")


@dataclass
class PrefetchSettings:
    """How :class:`LevelArray` prefetches neighbouring planes (change :data:`PREFETCH`).

    ``enabled``: off with ``$NAPARI_PRECOMPUTED_PREFETCH=0``. ``planes``: how many planes
    each way (``None``: the level's chunk depth in z, i.e. the next chunk row each way).
    ``budget``: the share of the context's cache (``cache_pool.total_bytes_limit``) one
    plane's prefetch may fill; rows that do not fit are left out, nearest kept.
    ``local``: also for local files (``file`` and ``memory`` stores). ``step``: chunks
    fetched together, concurrently (``None``: a whole chunk row of the region, i.e. as
    many fetches at once as there are visible tiles); a read that needs one of them waits
    for that step only, and a newer plane's prefetch starts after it. ``quiet``: a step
    starts only once no level has been read for this long (napari slices the layers one
    after another: a prefetch must not compete with the next layer's slice).
    """

    enabled: bool = os.environ.get("NAPARI_PRECOMPUTED_PREFETCH", "1") not in ("0", "false", "no")
    planes: int | None = None
    budget: float = 0.25
    local: bool = False
    step: int | None = None  # chunks fetched at once (None: a chunk row, the visible tiles)
    quiet: float = 0.1  # seconds without any read before a step starts


#: The process-wide prefetch settings.
PREFETCH = PrefetchSettings()


class LevelArray(ZyxArray):
    """A lazy, read-only view of one scale in napari's axis order (see :data:`LAYOUTS`):
    a :class:`precomputed.views.ZyxArray` over a window of the whole scale.

    ``origin`` is the absolute voxel coordinate (x, y, z) of presented index 0 and
    ``extent`` the presented size (x, y, z); both may reach outside the volume.
    """

    def __init__(
        self, volume: Volume, layout: str, origin: Sequence[int], extent: Sequence[int]
    ) -> None:
        super().__init__(volume, layout=layout, origin=origin, extent=extent, writable=False)

    def __repr__(self) -> str:
        return (
            f"<LevelArray {self.layout} shape={self.shape} dtype={self.dtype} "
            f"scale {self.volume.scale_index} of {self.volume.kvstore.url}>"
        )

    def read(self) -> np.ndarray:
        """Fetch this view (only the chunks it touches); outside the volume reads as 0.
        A z-plane then has its neighbours prefetched (see the module doc)."""
        region = self._clipped()
        if region is None:
            return super().read()
        vol, lo, hi = region
        handle = vol.handle
        _PREFETCHER.wait_for(handle, vol[_slices(lo, hi)].chunk_positions())
        with _PREFETCHER.reading():  # scheduled before the read ends: see prefetch_idle
            out = super().read()
            if hi[2] - lo[2] == 1 and _wanted(vol):
                try:
                    steps = _neighbour_rows(vol, lo, hi, _PREFETCHER.direction(handle, lo[2]))
                except Exception as e:  # planning a prefetch never fails the read
                    log.debug("napari-precomputed: no prefetch around %s: %s", self, e)
                else:
                    _PREFETCHER.schedule(handle, steps)
        return out

    def _clipped(self) -> tuple[Any, list[int], list[int]] | None:
        """The whole-scale volume and this view's bounding box (x, y, z, channel)
        clipped to it; None when the view lies wholly outside."""
        vol = self.volume
        lo, hi = self._bounds()
        vmin, vshape = vol.origin, vol.shape
        a = [max(lo[d], vmin[d]) for d in range(4)]
        b = [min(hi[d], vmin[d] + vshape[d]) for d in range(4)]
        if any(x >= y for x, y in zip(a, b, strict=True)):
            return None
        return vol, a, b


def _slices(lo: Sequence[int], hi: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))


def _wanted(vol: Any) -> bool:
    if not PREFETCH.enabled:
        return False
    cache = vol.context.cache
    if cache.total_bytes_limit <= 0:
        return False
    return PREFETCH.local or not vol.kvstore.cheap_misses


def _neighbour_rows(vol: Any, lo: list[int], hi: list[int], forward: bool) -> list[list[Any]]:
    """Chunk positions of the rows (in z) holding the planes next to plane ``lo[2]`` of
    the region, nearest first (``forward``: higher z first on ties), within the budget,
    in steps of at most ``PREFETCH.step`` chunks (default: a row per step)."""
    z = lo[2]
    z0, z1 = vol.origin[2], vol.origin[2] + vol.shape[2]
    n = int(vol.handle.chunk_size[2]) if PREFETCH.planes is None else max(0, int(PREFETCH.planes))
    order: list[int] = []
    for k in range(1, n + 1):
        pair = (z + k, z - k) if forward else (z - k, z + k)
        order += [p for p in pair if z0 <= p < z1]
    budget = PREFETCH.budget * vol.context.cache.total_bytes_limit
    chunk_bytes = int(np.prod(vol.handle.chunk_size)) * vol.shape[3] * vol.dtype.itemsize
    rows: dict[int, list[Any]] = {}
    spent = 0
    for p in order:
        # Any plane of a chunk row touches the row's chunks; prefetch fetches them whole.
        plane = vol[_slices([lo[0], lo[1], p, lo[3]], [hi[0], hi[1], p + 1, hi[3]])]
        positions = plane.chunk_positions()
        if not positions or positions[0][2] in rows:
            continue
        cost = len(positions) * chunk_bytes
        if spent + cost > budget:
            break
        spent += cost
        rows[positions[0][2]] = positions
    if PREFETCH.step is None:
        return list(rows.values())
    n = max(1, int(PREFETCH.step))
    return [row[i : i + n] for row in rows.values() for i in range(0, len(row), n)]


class _Prefetcher:
    """One background thread that runs the latest prefetch of each level, one chunk row
    at a time, whenever no foreground read is in progress."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0  # foreground reads in progress
        self._last_read = 0.0  # time.monotonic() when the last one ended
        self._jobs: dict[Hashable, list[list[Any]]] = {}  # level handle -> steps to fetch
        # Per level handle, weakly: a closed layer's levels are not kept alive.
        self._last_z: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._forward: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
        self._running: tuple[Hashable, set[Any], threading.Event] | None = None
        self._thread: threading.Thread | None = None

    # -- foreground ------------------------------------------------------------------
    def reading(self) -> _Reading:
        return _Reading(self)

    def enter(self) -> None:
        with self._cond:
            self._active += 1

    def leave(self) -> None:
        with self._cond:
            self._active -= 1
            self._last_read = time.monotonic()
            self._cond.notify_all()

    def wait_for(self, handle: Hashable, positions: list[Any]) -> None:
        """Wait while the running prefetch fetches any of ``positions`` of ``handle``."""
        with self._cond:
            running = self._running
        if running is not None and running[0] is handle and not running[1].isdisjoint(positions):
            running[2].wait(60.0)

    def direction(self, handle: Hashable, z: int) -> bool:
        """Whether the last step at this level went up in z (the first: up)."""
        with self._cond:
            last = self._last_z.get(handle)
            if last is not None and last != z:
                self._forward[handle] = z > last
            self._last_z[handle] = z
            return self._forward.get(handle, True)

    def schedule(self, handle: Hashable, rows: list[list[Any]]) -> None:
        with self._cond:
            if rows:
                self._jobs[handle] = rows
            else:
                self._jobs.pop(handle, None)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="napari-precomputed-prefetch", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    # -- the thread ------------------------------------------------------------------
    def _next(self) -> tuple[Hashable, list[Any], threading.Event]:
        with self._cond:
            while True:
                if not self._jobs or self._active:
                    self._cond.wait()
                    continue
                wait = self._last_read + PREFETCH.quiet - time.monotonic()
                if wait <= 0:
                    break
                self._cond.wait(wait)
            handle = next(iter(self._jobs))
            steps = self._jobs[handle]
            step = steps.pop(0)
            if not steps:
                del self._jobs[handle]
            done = threading.Event()
            self._running = (handle, set(step), done)
            return handle, step, done

    def _run(self) -> None:
        while True:
            handle, step, done = self._next()
            try:
                prefetch(handle, step)  # type: ignore[arg-type]
            except Exception as e:  # a failed prefetch costs nothing: the read will retry
                log.debug("napari-precomputed: prefetch of %s failed: %s", step, e)
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()
                done.set()

    def idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._jobs and self._running is None and not self._active,
                timeout=timeout,
            )


class _Reading:
    def __init__(self, prefetcher: _Prefetcher) -> None:
        self._p = prefetcher

    def __enter__(self) -> None:
        self._p.enter()

    def __exit__(self, *exc: object) -> None:
        self._p.leave()


_PREFETCHER = _Prefetcher()


def prefetch_idle(timeout: float = 30.0) -> bool:
    """Wait until no read of a level and no prefetch is in progress or pending (True), or
    ``timeout`` passes (False)."""
    return _PREFETCHER.idle(timeout)

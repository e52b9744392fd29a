"""Label editing: a writable, single-scale Labels layer over a region of a segmentation.

napari cannot paint multiscale Labels, so an :class:`EditSession` opens one scale of a
region (by default what is in view, capped at a voxel budget) as a single-scale Labels
layer placed exactly over the read-only pyramid. Its data is an :class:`EditableArray`:
a lazy view whose ``__setitem__`` -- the one place that sees paint, fill, polygon, erase,
undo, redo, ``data_setitem`` and programmatic writes alike -- writes into a
:class:`precomputed.Transaction`. Every read of the session sees those dirty chunks.

``commit()`` stores them through the shard-grouped writer (each touched shard, or each
touched unsharded chunk, written once), invalidates exactly the stored chunks in the
shared cache, refreshes the pyramid layer and updates the coarser scales of the edited
voxels by mode downsampling. Edits are never dropped silently:

* A failed commit keeps every edit not stored; a retry stores them. Edits made while a
  commit runs stay dirty for the next one.
* Each dirty chunk remembers the stored chunk it was based on. Before writing, the
  commit re-reads the stored chunks: a chunk another writer changed meanwhile is merged
  voxel by voxel (theirs where we did not paint, ours where we did) and reported as a
  conflict; a chunk whose edits were all undone is not written at all.
* Removing the layer, or closing the viewer, with uncommitted edits asks the user
  (commit / discard / cancel); without a visible window the session follows its
  ``on_unsaved`` setting (``"commit"`` or ``"keep"``).

See docs/editing.md.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

import precomputed
from precomputed import InvalidArgumentError, OutOfRangeError, PrecomputedError, Volume
from precomputed.chunkstore import CommitStats
from precomputed.downsample import downsample_mode
from precomputed.driver import open_scale
from precomputed.internal.geometry import Box
from precomputed.readpath import fetch
from precomputed.transaction import Transaction

from .._pyramid import _integer_factor

__all__ = [
    "EditSession",
    "EditableArray",
    "CommitResult",
    "CommitError",
    "ChunkConflict",
    "edit_labels",
    "view_region",
    "open_sessions",
    "DEFAULT_VOXEL_BUDGET",
    "UNSAVED_ENV",
]

log = logging.getLogger("napari_precomputed")

Region = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
Progress = Callable[[int, int], None]

#: Default cap on the voxels of a default ("in view") region: 16 Mi voxels.
DEFAULT_VOXEL_BUDGET = 16 * 1024 * 1024
#: Environment variable with the headless policy for uncommitted edits.
UNSAVED_ENV = "NAPARI_PRECOMPUTED_UNSAVED_EDITS"
_POLICIES = ("commit", "keep")
#: Key that commits the active edit layer.
COMMIT_KEY = "Shift-S"
#: Metadata key of edit layers (reader layers use "precomputed").
EDIT_METADATA = "precomputed_edit"
#: Dirty chunks whose stored bytes are re-read at once before a commit (bounds memory).
_RECONCILE_BATCH = 256

_sessions: weakref.WeakSet[EditSession] = weakref.WeakSet()
#: Sessions whose layer or viewer went away with their edits kept: held until closed.
_kept: set[EditSession] = set()


def open_sessions() -> list[EditSession]:
    """Every edit session not closed yet (including ones whose layer was removed with
    edits kept)."""
    return [s for s in list(_sessions) if not s.closed]


def default_policy() -> str:
    """The headless policy for uncommitted edits: ``$NAPARI_PRECOMPUTED_UNSAVED_EDITS``
    (``commit`` or ``keep``), default ``commit``."""
    value = os.environ.get(UNSAVED_ENV, "commit").strip().lower()
    if value not in _POLICIES:
        log.warning("%s=%r is not one of %s: using 'commit'", UNSAVED_ENV, value, _POLICIES)
        return "commit"
    return value


class Callbacks:
    """A tiny signal: ``connect(f)``, ``disconnect(f)``, ``emit()``. Callbacks run on the
    emitting thread (a commit emits from its worker); exceptions are logged."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[[], Any]] = []

    def connect(self, callback: Callable[[], Any]) -> Callable[[], Any]:
        self._callbacks.append(callback)
        return callback

    def disconnect(self, callback: Callable[[], Any]) -> None:
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def emit(self) -> None:
        for cb in list(self._callbacks):
            try:
                cb()
            except Exception as e:  # a listener must not break an edit or a commit
                log.debug("napari-precomputed: edit session callback failed: %s", e)


# -- results ----------------------------------------------------------------------------------


@dataclass
class ChunkConflict:
    """A chunk both this session and another writer changed since the session read it.

    The stored chunk was merged voxel by voxel: the other writer's values where this
    session did not paint, this session's where it did. ``voxels`` counts the voxels both
    changed to different values (this session's value was kept)."""

    position: tuple[int, int, int]
    key: str
    voxels: int


@dataclass
class CommitResult:
    """What one :meth:`EditSession.commit` did."""

    #: Chunks of the edited scale stored (written or, when all zero, deleted).
    chunks_written: int = 0
    chunks_deleted: int = 0
    #: Shard files (or unsharded chunk keys) of the edited scale rewritten.
    shards_written: int = 0
    #: Whether the edited scale is sharded.
    sharded: bool = False
    #: Dirty chunks identical to what they were based on (edits undone): not written.
    unchanged: int = 0
    conflicts: list[ChunkConflict] = field(default_factory=list)
    #: Storage keys written at the edited scale.
    keys: list[str] = field(default_factory=list)
    stats: CommitStats = field(default_factory=CommitStats)
    #: Scale index -> what updating that coarser scale wrote.
    downsampled: dict[int, CommitStats] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        if not (self.chunks_written or self.chunks_deleted or self.downsampled):
            text = "nothing to store"
            if self.unchanged:
                text += f" ({self.unchanged} chunk{_s(self.unchanged)} back to original)"
            return text
        n = self.chunks_written + self.chunks_deleted
        unit = "shard" if self.sharded else "chunk file"
        parts = [
            f"{n} chunk{_s(n)} stored in {self.shards_written} {unit}{_s(self.shards_written)}"
        ]
        if self.downsampled:
            files = sum(s.groups_written + s.groups_deleted for s in self.downsampled.values())
            parts.append(f"{len(self.downsampled)} coarser scale{_s(len(self.downsampled))} "
                         f"updated ({files} file{_s(files)})")  # fmt: skip
        if self.conflicts:
            parts.append(
                f"{len(self.conflicts)} chunk{_s(len(self.conflicts))} also changed by "
                "another writer (merged)"
            )
        return ", ".join(parts) + f" in {self.seconds:.2f} s"


def _s(n: int) -> str:
    return "" if n == 1 else "s"


class CommitError(PrecomputedError):
    """A commit failed; every edit that was not stored is still in the session."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


# -- the layer's data -------------------------------------------------------------------------


class EditableArray:
    """The data of an edit layer: a lazy (z, y, x) view that writes into the session.

    Basic indexing returns views, ``np.asarray`` reads (dirty chunks included), an index
    of integers returns the voxel's value, integer-array ("fancy") indexing reads and
    writes chunk by chunk. Every write ends in :meth:`EditSession._edited`.
    """

    def __init__(
        self,
        view: precomputed.ZyxArray,
        session: EditSession,
        grid: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self._view = view
        self._session = session
        # (origin of index 0 relative to the chunk grid, chunk shape), both z, y, x; only
        # for the top-level array: used to split fancy reads/writes by chunk.
        self._grid = grid

    @property
    def dtype(self) -> np.dtype:
        return self._view.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self._view.shape

    @property
    def ndim(self) -> int:
        return self._view.ndim

    @property
    def size(self) -> int:
        return self._view.size

    @property
    def nbytes(self) -> int:
        return self._view.nbytes

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"<EditableArray shape={self.shape} dtype={self.dtype} of {self._session!r}>"

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return self._view.__array__(dtype)

    def __getitem__(self, key: Any) -> Any:
        if _is_basic(key):
            items = key if isinstance(key, tuple) else (key,)
            if len(items) == self.ndim and all(isinstance(k, (int, np.integer)) for k in items):
                return np.asarray(self._view[key])[()]  # one voxel: its value
            return EditableArray(self._view[key], self._session)
        idx = self._int_arrays(key)
        if idx is None:
            return self._bbox_read(key)
        shape = np.broadcast_shapes(*(i.shape for i in idx))
        flat = [np.broadcast_to(i, shape).ravel() for i in idx]
        out = np.empty(len(flat[0]), self.dtype)
        for sel in self._by_chunk(flat):
            lo = [int(i[sel].min()) for i in flat]
            hi = [int(i[sel].max()) + 1 for i in flat]
            block = np.asarray(self._view[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))])
            out[sel] = block[tuple(i[sel] - a for i, a in zip(flat, lo, strict=True))]
        return out.reshape(shape)

    def __setitem__(self, key: Any, value: Any) -> None:
        try:
            if _is_basic(key):
                self._view[key] = value
                return
            idx = self._int_arrays(key)
            if idx is None:
                self._bbox_write(key, value)
                return
            shape = np.broadcast_shapes(*(i.shape for i in idx))
            flat = [np.broadcast_to(i, shape).ravel() for i in idx]
            values = np.broadcast_to(np.asarray(value, dtype=self.dtype), shape).ravel()
            for sel in self._by_chunk(flat):
                lo = [int(i[sel].min()) for i in flat]
                hi = [int(i[sel].max()) + 1 for i in flat]
                sub = self._view[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
                block = np.array(sub)
                block[tuple(i[sel] - a for i, a in zip(flat, lo, strict=True))] = values[sel]
                sub[...] = block
        finally:
            self._session._edited()

    # -- fancy indexing helpers ---------------------------------------------------------
    def _int_arrays(self, key: Any) -> list[np.ndarray] | None:
        """One in-range integer index array per axis, or None for other fancy keys."""
        items = key if isinstance(key, tuple) else (key,)
        if len(items) != self.ndim:
            return None
        out = []
        for k, n in zip(items, self.shape, strict=True):
            a = np.asarray(k)
            if a.dtype.kind not in "iu":
                return None
            a = np.where(a < 0, a + n, a).astype(np.int64)
            if a.size and (a.min() < 0 or a.max() >= n):
                raise IndexError(f"index out of bounds for axis with size {n}")
            out.append(a)
        return out

    def _by_chunk(self, flat: list[np.ndarray]) -> list[np.ndarray]:
        """Positions of ``flat`` indices grouped by storage chunk (one group if unknown)."""
        n = len(flat[0]) if flat else 0
        if n == 0:
            return []
        if self._grid is None:
            return [np.arange(n)]
        origin, chunk = self._grid
        cells = np.stack([(i + o) // c for i, o, c in zip(flat, origin, chunk, strict=True)], -1)
        _, inverse = np.unique(cells, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        order = np.argsort(inverse, kind="stable")
        bounds = np.flatnonzero(np.diff(inverse[order])) + 1
        return np.split(order, bounds)

    def _bbox_key(self, key: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        """Bounding-box view key and the key relative to it, for any numpy-style index."""
        items = key if isinstance(key, tuple) else (key,)
        if len(items) == 1 and np.asarray(items[0]).dtype == bool and self.ndim > 1:
            items = tuple(np.nonzero(np.asarray(items[0])))
        if any(k is Ellipsis for k in items):
            i = next(i for i, k in enumerate(items) if k is Ellipsis)
            items = items[:i] + (slice(None),) * (self.ndim - len(items) + 1) + items[i + 1 :]
        items = items + (slice(None),) * (self.ndim - len(items))
        view_key: list[Any] = []
        local: list[Any] = []
        for k, n in zip(items, self.shape, strict=True):
            if isinstance(k, slice) or isinstance(k, (int, np.integer)):
                view_key.append(slice(None))
                local.append(k)
                continue
            a = np.asarray(k)
            if a.dtype == bool:
                a = np.nonzero(a)[0]
            a = np.where(a < 0, a + n, a).astype(np.int64)
            lo, hi = (int(a.min()), int(a.max()) + 1) if a.size else (0, 0)
            view_key.append(slice(lo, hi))
            local.append(a - lo)
        return tuple(view_key), tuple(local)

    def _bbox_read(self, key: Any) -> np.ndarray:
        view_key, local = self._bbox_key(key)
        return np.asarray(self._view[view_key])[local]

    def _bbox_write(self, key: Any, value: Any) -> None:
        view_key, local = self._bbox_key(key)
        sub = self._view[view_key]
        block = np.array(sub)
        block[local] = value
        sub[...] = block


def _is_basic(key: Any) -> bool:
    items = key if isinstance(key, tuple) else (key,)
    return all(isinstance(k, (slice, int, np.integer)) or k is Ellipsis for k in items)


# -- regions ----------------------------------------------------------------------------------


def _domain(volume: Volume) -> tuple[tuple[int, ...], tuple[int, ...]]:
    d = volume.domain
    return tuple(d.inclusive_min[:3]), tuple(d.exclusive_max[:3])


def check_region(volume: Volume, region: Any) -> Box:
    """``((x0, x1), (y0, y1), (z0, z1))`` as a Box inside ``volume``; raises otherwise."""
    try:
        pairs = [(int(a), int(b)) for a, b in region]
        ok = len(pairs) == 3 and all(
            a == x and b == y for (a, b), (x, y) in zip(region, pairs, strict=True)
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InvalidArgumentError(
            f"region must be ((x0, x1), (y0, y1), (z0, z1)) in voxels, not {region!r}"
        )
    lo, hi = _domain(volume)
    for name, (a, b), vlo, vhi in zip("xyz", pairs, lo, hi, strict=True):
        if not (vlo <= a < b <= vhi):
            raise OutOfRangeError(
                f"region [{a}, {b}) on {name} is not a non-empty range inside the scale's "
                f"domain [{vlo}, {vhi})"
            )
    return Box(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))  # type: ignore[arg-type]


def view_region(viewer: Any, volume: Volume, budget: int = DEFAULT_VOXEL_BUDGET) -> Box:
    """The region of ``volume`` (one scale) that is in view, as absolute voxels.

    What the camera shows along the displayed axes; along a non-displayed axis the
    storage chunk holding the current plane. Extended to whole chunks, clipped to the
    volume and then shrunk around its centre to at most ``budget`` voxels. Without a
    3-D view (no viewer, nothing shown) it is the centre of the volume.
    """
    lo, hi = _domain(volume)
    res = np.array(volume.resolution, float)
    chunk = np.array(volume.chunk_layout.read_chunk[:3])
    grid0 = np.array(volume.scale.voxel_offset)
    start = np.array(lo, float)
    stop = np.array(hi, float)
    centre = (start + stop) / 2
    dims = getattr(viewer, "dims", None)
    if dims is not None and dims.ndim >= 3 and len(viewer.layers):
        n = dims.ndim
        point = np.array(dims.point[-3:], float)[::-1] / res  # x, y, z voxels
        scene = getattr(viewer, "scene", None)  # napari >= 0.9; viewer.camera before
        camera = scene.camera if scene is not None else viewer.camera
        zoom = float(camera.zoom) or 1.0
        h, w = (float(v) for v in viewer.canvas.size)
        displayed = [d - (n - 3) for d in dims.displayed if d >= n - 3]  # world z,y,x index
        cam = list(camera.center)[-len(dims.displayed) :]
        for world_axis, c in zip(dims.displayed, cam, strict=False):
            a = world_axis - (n - 3)
            if a < 0:
                continue
            point[2 - a] = float(c) / res[2 - a]
        if len(displayed) >= 2 and dims.ndisplay == 2:
            half_world = {displayed[-2]: h / 2 / zoom, displayed[-1]: w / 2 / zoom}
        else:
            half_world = {a: max(h, w) / 2 / zoom for a in displayed}
        start = np.floor(point).astype(float)
        stop = start + 1
        for a, half in half_world.items():
            x = 2 - a  # z,y,x index -> x,y,z index
            start[x] = math.floor(point[x] - half / res[x])
            stop[x] = math.ceil(point[x] + half / res[x]) + 1
        centre = point
        # Whole chunks (a non-displayed axis: the chunk of the current plane).
        start = grid0 + np.floor((start - grid0) / chunk) * chunk
        stop = grid0 + np.ceil((stop - grid0) / chunk) * chunk
        start = np.maximum(start, lo)
        stop = np.minimum(stop, hi)
        if np.any(stop <= start):  # the view is outside the volume: its centre instead
            start, stop = np.array(lo, float), np.array(hi, float)
            centre = (start + stop) / 2
    return _fit_budget(start.astype(int), stop.astype(int), centre, lo, hi, budget)


def _fit_budget(
    start: np.ndarray,
    stop: np.ndarray,
    centre: np.ndarray,
    lo: Sequence[int],
    hi: Sequence[int],
    budget: int,
) -> Box:
    budget = max(1, int(budget))
    ext = (stop - start).astype(float)
    if np.prod(ext) > budget:
        # Shrink x and y first (the painted plane), z only when x and y reach 1.
        k = math.sqrt(budget / np.prod(ext))
        ext[:2] = np.maximum(1, np.floor(ext[:2] * k))
        if np.prod(ext) > budget:
            ext[2] = max(1, budget // int(ext[0] * ext[1]))
        while np.prod(ext) > budget:  # rounding: trim the largest axis
            ext[int(np.argmax(ext))] -= 1
        new_start = np.round(np.clip(centre, start, stop) - ext / 2)
        new_start = np.clip(new_start, start, stop - ext)
        start, stop = new_start, new_start + ext
    start = np.maximum(start, lo).astype(int)
    stop = np.minimum(stop, hi).astype(int)
    return Box(tuple(int(v) for v in start), tuple(int(v) for v in stop))  # type: ignore[arg-type]


# -- sessions ---------------------------------------------------------------------------------


def _volume_key(vol: Volume) -> tuple[str, str]:
    return vol.kvstore.url, vol.path


def _reader_layer_volumes(layer: Any) -> dict[int, Volume]:
    """Scale index -> the (whole-scale) volume each level of a reader layer reads."""
    meta = getattr(layer, "metadata", {}).get("precomputed")
    if not meta:
        raise InvalidArgumentError(
            f"layer {getattr(layer, 'name', layer)!r} was not opened by napari-precomputed"
        )
    data = layer.data
    levels = (
        list(data) if isinstance(meta.get("levels"), list) and len(meta["levels"]) > 1 else [data]
    )
    out: dict[int, Volume] = {}
    for lv, arr in zip(meta["levels"], levels, strict=False):
        vol = getattr(arr, "volume", None)
        if vol is not None:
            out[int(lv["scale_index"])] = vol
    if not out:
        raise InvalidArgumentError(f"layer {layer.name!r} has no Precomputed levels")
    return out


def _matching_layer(viewer: Any, source: Any) -> Any:
    """A reader layer of ``viewer`` that shows ``source`` (same URL/path or spec)."""
    if viewer is None:
        return None
    want = os.path.abspath(source) if isinstance(source, str) and "://" not in source else source
    for layer in viewer.layers:
        meta = getattr(layer, "metadata", {}).get("precomputed")
        if not meta:
            continue
        have = meta.get("source")
        if isinstance(have, str) and "://" not in have:
            have = os.path.abspath(have)
        if have == want:
            return layer
    return None


class EditSession:
    """An editable single-scale Labels layer over a region, backed by a transaction.

    Create one with :func:`edit_labels`. ``layer`` is the Labels layer; ``commit()``
    stores the edits; ``discard()`` drops them; ``close()`` removes the layer.
    """

    def __init__(
        self,
        volumes: dict[int, Volume],
        scale_index: int,
        region: Box,
        *,
        viewer: Any = None,
        source_layer: Any = None,
        source: Any = None,
        name: str | None = None,
        downsample: bool = True,
        on_unsaved: str | None = None,
    ) -> None:
        vol = volumes[scale_index]
        if vol.shape[3] != 1:
            raise InvalidArgumentError(
                f"only single-channel volumes can be edited as labels; this one has "
                f"{vol.shape[3]} channels"
            )
        if np.dtype(vol.dtype).kind not in "iu":
            raise InvalidArgumentError(f"labels must be integers, not {vol.dtype}")
        if on_unsaved is not None and on_unsaved not in _POLICIES:
            raise InvalidArgumentError(f"on_unsaved must be one of {_POLICIES}, not {on_unsaved!r}")
        self.volumes = volumes
        self.scale_index = scale_index
        self.volume = vol
        self.region = region
        self.viewer = viewer
        self.source_layer = source_layer
        self.source = source
        #: Update the coarser scales of committed edits by mode downsampling.
        self.downsample = downsample
        #: Headless policy for uncommitted edits ("commit"/"keep"); None: the default.
        self.on_unsaved = on_unsaved
        self.transaction = Transaction()
        #: Emitted (from any thread) when the dirty state or the last commit changes.
        self.changed = Callbacks()
        self.last_result: CommitResult | None = None
        self.last_error: BaseException | None = None
        self.closed = False
        self._handle = vol.handle
        self._lock = threading.Lock()  # guards _bases and _pending
        self._commit_lock = threading.Lock()
        self._committing = False
        self._viewer_closing = False
        # Chunk position -> the decoded stored chunk its edits are based on (None: absent).
        self._bases: dict[tuple[int, int, int], np.ndarray | None] = {}
        # Boxes (absolute voxels of this scale) whose coarser scales are still to update.
        self._pending: list[Box] = []
        #: Set by the widget to run key-triggered commits in its worker.
        self.commit_handler: Callable[[EditSession], Any] | None = None

        sl = tuple(slice(a, b) for a, b in zip(region.start, region.stop, strict=True))
        view = vol.with_transaction(self.transaction)[(*sl, slice(None))].zyx()
        chunk = np.array(vol.chunk_layout.read_chunk[:3][::-1])
        origin = (np.array(region.start) - np.array(vol.scale.voxel_offset))[::-1]
        self.data = EditableArray(view, self, grid=(origin, chunk))
        self.layer = self._make_layer(name)
        _sessions.add(self)
        if viewer is not None:
            viewer.add_layer(self.layer)
            viewer.layers.events.removed.connect(self._on_layer_removed)
            _install_close_guard(viewer)

    def __repr__(self) -> str:
        key = self.volume.scale.key
        r = self.region
        box = ", ".join(f"[{a}, {b})" for a, b in zip(r.start, r.stop, strict=True))
        return f"<EditSession {self.volume.kvstore.url} scale {key!r} x, y, z {box}>"

    def _make_layer(self, name: str | None) -> Any:
        from napari.layers import Labels

        res = self.volume.resolution
        start = self.region.start
        if name is None:
            base = getattr(self.source_layer, "name", None) or _source_name(self.source)
            name = f"{base} [edit {self.volume.scale.key}]"
        layer = Labels(
            self.data,
            name=name,
            scale=tuple(res[::-1]),
            translate=tuple(float(a) * r for a, r in zip(start[::-1], res[::-1], strict=True)),
            axis_labels=("z", "y", "x"),
            units=("nm", "nm", "nm"),
            metadata={
                EDIT_METADATA: {
                    "scale_index": self.scale_index,
                    "key": self.volume.scale.key,
                    "region": [list(p) for p in zip(start, self.region.stop, strict=True)],
                    "url": self.volume.kvstore.url,
                }
            },
        )
        if self.source_layer is not None:
            try:  # the same colours as the pyramid underneath
                layer.colormap = self.source_layer.colormap
            except Exception:  # pragma: no cover - colormap kinds vary across napari
                pass
        layer.bind_key(COMMIT_KEY, self._on_commit_key, overwrite=True)
        return layer

    # -- state ----------------------------------------------------------------------------
    @property
    def dirty_chunks(self) -> int:
        """Chunks edited and not committed."""
        return self.transaction.dirty_chunks

    @property
    def dirty_shards(self) -> int:
        """Shard files (or, unsharded, chunk keys) the next commit would rewrite."""
        positions = self._dirty()
        store = self._handle.store
        if not positions:
            return 0
        return len(set(store.groups_of(positions)))  # vectorised: cheap for many chunks

    @property
    def sharded(self) -> bool:
        return self.volume.scale.sharding is not None

    @property
    def committing(self) -> bool:
        return self._committing

    def status(self) -> str:
        """One line for the widget: dirty chunks and shards."""
        n = self.dirty_chunks
        if not n:
            return "No uncommitted edits"
        g = self.dirty_shards
        unit = "shard" if self.sharded else "chunk file"
        return f"{n} edited chunk{_s(n)} in {g} {unit}{_s(g)}"

    # -- edits ----------------------------------------------------------------------------
    def _edited(self) -> None:
        """Called after every write to the layer's data."""
        try:
            self._capture_bases()
        except Exception as e:  # reading the base failed: the commit tries again
            log.debug("napari-precomputed: could not read the base of an edit: %s", e)
        self.changed.emit()

    def _dirty(self) -> list[tuple[int, int, int]]:
        return self.transaction.dirty_positions().get(self._handle, [])

    def _capture_bases(self, positions: Sequence[tuple[int, int, int]] | None = None) -> None:
        """Remember, for newly dirty chunks, the stored chunk their edits are based on.

        Writes go into the transaction only, so after a write the cache and the store
        still hold what the chunk was before it."""
        dirty = set(self._dirty())
        with self._lock:
            todo = [
                p for p in (positions if positions is not None else dirty) if p not in self._bases
            ]
        if not todo:
            return
        found: dict[tuple[int, int, int], np.ndarray | None] = {}
        fetch(self._handle, todo, None, found.__setitem__, fill_missing=True)
        with self._lock:
            for p in todo:
                if p in dirty:
                    self._bases.setdefault(p, found.get(p))

    def discard(self) -> None:
        """Drop every uncommitted edit and show the stored labels again."""
        self.transaction.discard()
        with self._lock:
            self._bases.clear()
        for name in ("_undo_history", "_redo_history"):
            history = getattr(self.layer, name, None)
            if history is not None:
                history.clear()  # its entries describe edits that no longer exist
        self.changed.emit()
        self.layer.refresh()

    # -- commit ---------------------------------------------------------------------------
    def commit(
        self, progress: Progress | None = None, *, downsample: bool | None = None
    ) -> CommitResult:
        """Store every edit; blocks until done. Raises :class:`CommitError` on failure,
        with every edit not stored still in the session (commit again to retry)."""
        try:
            return self.commit_in_thread(progress, downsample=downsample)
        finally:
            self.refresh()

    def commit_in_thread(
        self, progress: Progress | None = None, *, downsample: bool | None = None
    ) -> CommitResult:
        """The commit without the UI refresh: what a worker thread runs (then call
        :meth:`refresh` on the UI thread)."""
        if self.closed:
            raise CommitError("the edit session is closed")
        with self._commit_lock:
            self._committing = True
            try:
                result = self._commit(
                    progress, self.downsample if downsample is None else downsample
                )
                self.last_result, self.last_error = result, None
                if not self.dirty_chunks and self.viewer is None:
                    _kept.discard(self)  # nothing left to lose
            except BaseException as e:
                self.last_error = e
                raise
            finally:
                self._committing = False
                self.changed.emit()
        return result

    def _commit(self, progress: Progress | None, downsample: bool) -> CommitResult:
        t0 = time.perf_counter()
        result = CommitResult(sharded=self.sharded)
        positions = self._dirty()
        counter = _ProgressCounter(progress)
        if positions:
            try:
                self._reconcile(positions, result)
                counter.add_total(self.dirty_shards)
                stats = self.transaction.commit(counter.step, on_committed=self._on_committed)
            except Exception as e:
                n = self.dirty_chunks
                raise CommitError(
                    f"Commit failed: {e} -- nothing is lost: {n} edited chunk{_s(n)} "
                    "remain in the session; commit again to retry",
                    e,
                ) from e
            result.stats = stats
            result.chunks_written = stats.chunks_written
            result.chunks_deleted = stats.chunks_deleted
            result.shards_written = stats.groups_written + stats.groups_deleted
            result.keys = list(stats.keys)
        if downsample:
            try:
                self._update_coarser(result, counter)
            except Exception as e:
                raise CommitError(
                    f"The edits were stored, but updating the coarser scales failed: {e} -- "
                    "commit again to retry the update",
                    e,
                ) from e
        else:
            with self._lock:
                self._pending.clear()
        result.seconds = time.perf_counter() - t0
        return result

    def _reconcile(self, positions: list[tuple[int, int, int]], result: CommitResult) -> None:
        """Compare each dirty chunk with its base and with what is stored now.

        Unchanged chunks (edits undone) are dropped; chunks another writer changed since
        we read them are merged voxel by voxel and reported."""
        store = self._handle.store
        self._capture_bases(positions)
        groups = store.groups_of(positions)
        store.invalidate(list(set(groups)))  # see other writers' shards, not cached indices
        for i in range(0, len(positions), _RECONCILE_BATCH):
            batch = positions[i : i + _RECONCILE_BATCH]
            self._reconcile_batch(batch, store.read_chunks(batch), result)

    def _reconcile_batch(
        self,
        positions: list[tuple[int, int, int]],
        blobs: list[bytes | None],
        result: CommitResult,
    ) -> None:
        handle, txn = self._handle, self.transaction
        store = handle.store
        for pos, blob in zip(positions, blobs, strict=True):
            ours = txn.get(handle, pos)
            if ours is None:
                continue
            with self._lock:
                base = self._bases.get(pos)
            if _same(ours, base):
                if txn.replace(handle, pos, ours, None):
                    result.unchanged += 1
                    with self._lock:
                        self._bases.pop(pos, None)
                continue
            stored = None if blob is None else handle.decode(pos, blob)
            if _same(stored, base):
                continue
            base_a = _dense(base, ours)
            stored_a = _dense(stored, ours)
            mine = ours != base_a
            theirs = stored_a != base_a
            merged = np.where(mine, ours, stored_a)
            both = int(np.count_nonzero(mine & theirs & (ours != stored_a)))
            result.conflicts.append(ChunkConflict(tuple(pos), store.describe(pos), both))  # type: ignore[arg-type]
            new = None if np.array_equal(merged, stored_a) else merged
            if txn.replace(handle, pos, ours, new):
                with self._lock:
                    if new is None:
                        self._bases.pop(pos, None)
                    else:
                        self._bases[pos] = stored
                if new is None:
                    result.unchanged += 1

    def _on_committed(
        self,
        handle: Any,
        chunks: dict[tuple[int, int, int], np.ndarray],
        still_dirty: set[tuple[int, int, int]],
    ) -> None:
        """A group was stored: queue its changed voxels for the coarser scales and make
        what was stored the base of chunks edited again meanwhile."""
        if handle is not self._handle:
            return
        boxes = []
        with self._lock:
            for pos, arr in chunks.items():
                base = self._bases.get(pos)
                box = _changed_box(arr, base, handle.grid.chunk_box(pos))
                if box is not None:
                    boxes.append(box)
                if pos in still_dirty:
                    self._bases[pos] = arr
                else:
                    self._bases.pop(pos, None)
            self._pending.extend(boxes)

    # -- coarser scales -------------------------------------------------------------------
    def coarser_scales(self) -> list[tuple[int, int, tuple[int, int, int]]]:
        """``(scale, source scale, factor)`` for each coarser scale, finest first: each is
        downsampled from the coarsest scale before it that divides its resolution."""
        meta = self.volume.metadata
        base_res = meta.scales[self.scale_index].resolution
        candidates = []
        for i, s in enumerate(meta.scales):
            f = _integer_factor(s.resolution, base_res)
            if i != self.scale_index and f is not None and f != (1, 1, 1):
                candidates.append((math.prod(f), i))
        chain: list[tuple[int, int, tuple[int, int, int]]] = []
        done = [self.scale_index]
        for _, t in sorted(candidates):
            for src in reversed(done):
                f = _integer_factor(meta.scales[t].resolution, meta.scales[src].resolution)
                if f is not None:
                    chain.append((t, src, f))
                    done.append(t)
                    break
        return chain

    def _scale_volume(self, index: int) -> Volume:
        vol = self.volumes.get(index)
        if vol is None:
            vol = self.volumes[index] = _open_scale(self.volume, index)
        return vol

    def _update_coarser(self, result: CommitResult, counter: _ProgressCounter) -> None:
        with self._lock:
            pending = list(self._pending)
        if not pending:
            return
        boxes: dict[int, list[Box]] = {self.scale_index: _dedupe(pending)}
        for target, src, f in self.coarser_scales():
            src_vol, dst_vol = self._scale_volume(src), self._scale_volume(target)
            s_off = np.array(src_vol.scale.voxel_offset)
            s_size = np.array(src_vol.scale.size)
            d_off = np.array(dst_vol.scale.voxel_offset)
            d_size = np.array(dst_vol.scale.size)
            fa = np.array(f)
            out: list[Box] = []
            txn = Transaction()
            dst = dst_vol.with_transaction(txn)
            for box in boxes[src]:
                # Coarse voxel j covers source voxels [j f, (j + 1) f), both counted from
                # their scale's voxel offset (as precomputed.create and Igneous pair them).
                lo = (np.array(box.start) - s_off) // fa
                hi = -(-(np.array(box.stop) - s_off) // fa)
                lo, hi = np.maximum(lo, 0), np.minimum(hi, d_size)
                if np.any(hi <= lo):
                    continue
                a = s_off + lo * fa
                b = s_off + np.minimum(hi * fa, s_size)
                block = src_vol[a[0] : b[0], a[1] : b[1], a[2] : b[2], :].read_czyx()
                down = downsample_mode(block, f)
                t0, t1 = d_off + lo, d_off + lo + np.array(down.shape[:0:-1])
                dst[t0[0] : t1[0], t0[1] : t1[1], t0[2] : t1[2], :] = down.transpose(3, 2, 1, 0)
                out.append(Box(tuple(int(v) for v in t0), tuple(int(v) for v in t1)))  # type: ignore[arg-type]
            counter.add_total(txn.dirty_groups())
            result.downsampled[target] = txn.commit(counter.step)
            boxes[target] = _dedupe(out)
        with self._lock:
            del self._pending[: len(pending)]

    # -- after a commit (UI thread) -------------------------------------------------------
    def refresh(self) -> None:
        """Show the stored labels in every layer of this volume (call on the UI thread)."""
        self.changed.emit()
        layers = [self.layer]
        if self.viewer is not None:
            key = _volume_key(self.volume)
            for layer in self.viewer.layers:
                if layer is self.layer or not getattr(layer, "metadata", {}).get("precomputed"):
                    continue
                try:
                    vols = _reader_layer_volumes(layer)
                except PrecomputedError:
                    continue
                if any(_volume_key(v) == key for v in vols.values()):
                    self._sync_handles(vols)
                    layers.append(layer)
        elif self.source_layer is not None:
            layers.append(self.source_layer)
        for layer in layers:
            try:
                layer.refresh()
            except Exception as e:  # pragma: no cover - a closing viewer
                log.debug("napari-precomputed: refresh of %s failed: %s", layer, e)

    def _sync_handles(self, vols: dict[int, Volume]) -> None:
        """Another layer of the same volume with its own handles: forget its cached
        shard indices (ours were rewritten) and, with another cache, the chunks."""
        for index, vol in vols.items():
            mine = self.volumes.get(index)
            if mine is None or vol.handle is mine.handle:
                continue
            vol.handle.store.invalidate()
            if vol.context is not mine.context:
                vol.context.cache.invalidate_prefix((vol.handle.cache_id,))

    # -- closing --------------------------------------------------------------------------
    def close(self, *, force: bool = False) -> bool:
        """Remove the layer and end the session. With uncommitted edits this asks (GUI)
        or follows ``on_unsaved`` (headless), unless ``force`` (the edits are dropped).
        Returns whether the session closed."""
        if force:
            self.transaction.discard()
        if self.viewer is not None and self.layer in self.viewer.layers:
            self.viewer.layers.remove(self.layer)  # _on_layer_removed decides
            return self.closed
        if self.dirty_chunks and not self._resolve_unsaved(removed_index=None):
            return False
        self._finish()
        return True

    def _keep(self) -> None:
        """The layer or viewer is gone but the edits stay: hold on to the session."""
        _kept.add(self)

    def _finish(self) -> None:
        self.closed = True
        _kept.discard(self)
        if self.viewer is not None:
            try:
                self.viewer.layers.events.removed.disconnect(self._on_layer_removed)
            except Exception:  # pragma: no cover - already disconnected
                pass
        self.changed.emit()

    def _on_layer_removed(self, event: Any) -> None:
        if event.value is not self.layer or self.closed:
            return
        if not self.dirty_chunks:
            self._finish()
            return
        if self._viewer_closing:  # already resolved before the viewer removed its layers
            self._keep()
            return
        if self._resolve_unsaved(removed_index=event.index):
            self._finish()

    def _resolve_unsaved(self, removed_index: int | None) -> bool:
        """Uncommitted edits while the layer goes away. True when the session may end."""
        if _visible_window(self.viewer):
            from ..widgets import labels as w

            n = self.dirty_chunks
            choice = w.ask_unsaved(
                self.viewer,
                f"The layer {self.layer.name!r} has uncommitted edits in {n} "
                f"chunk{_s(n)}. Commit them before it is removed?",
            )
            if choice == "discard":
                self.transaction.discard()
                return True
            commit = partial(w.commit_in_background, self, close_after=True)
            then = commit if choice == "commit" else None
            if removed_index is not None:
                w.reinsert_layer(self.viewer, self.layer, removed_index, then=then)
            elif then is not None:
                then()
            return False
        policy = self.on_unsaved or default_policy()
        if policy == "commit":
            try:
                result = self.commit()
            except CommitError as e:
                _notify(f"{e} (the session is kept: napari_precomputed.open_sessions())")
                self._keep()
                return False
            log.info("napari-precomputed: committed %s before closing: %s", self.layer.name,
                     result.summary())  # fmt: skip
            return True
        _notify(
            f"{self.layer.name!r} has {self.dirty_chunks} uncommitted edited chunks: kept in "
            "its session (napari_precomputed.open_sessions()); call session.commit()"
        )
        self._keep()
        return False

    def _on_commit_key(self, layer: Any) -> None:
        if self.commit_handler is not None:
            self.commit_handler(self)
        elif _visible_window(self.viewer):
            from ..widgets.labels import commit_in_background

            commit_in_background(self)
        else:
            try:
                self.commit()
            except CommitError as e:
                _notify(str(e))


class _ProgressCounter:
    """Groups stored so far over groups known so far, across scales (thread-safe)."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._lock = threading.Lock()
        self.done = 0
        self.total = 0
        self._base = 0

    def add_total(self, n: int) -> None:
        with self._lock:
            self._base = self.done
            self.total += n

    def step(self, done: int, total: int) -> None:
        with self._lock:
            self.done = self._base + done
            d, t = self.done, self.total
        if self._progress is not None:
            self._progress(d, t)


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Equal chunks, ``None`` (absent) reading as zeros."""
    if a is b:
        return True
    if a is None:
        return not np.any(b)
    if b is None:
        return not np.any(a)
    return np.array_equal(a, b)


def _dense(chunk: np.ndarray | None, like: np.ndarray) -> np.ndarray:
    return np.zeros_like(like) if chunk is None else chunk


def _changed_box(arr: np.ndarray, base: np.ndarray | None, chunk_box: Box) -> Box | None:
    """Bounding box (absolute) of the voxels of ``arr`` (czyx) that differ from ``base``."""
    diff = (arr != base).any(axis=0) if base is not None else arr.any(axis=0)
    if not diff.any():
        return None
    lo, hi = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(np.any(diff, axis=other))
        lo.append(int(idx[0]))
        hi.append(int(idx[-1]) + 1)
    s = chunk_box.start
    # diff is z, y, x: reverse to x, y, z
    return Box(
        tuple(s[d] + lo[2 - d] for d in range(3)),  # type: ignore[arg-type]
        tuple(s[d] + hi[2 - d] for d in range(3)),  # type: ignore[arg-type]
    )


def _dedupe(boxes: list[Box]) -> list[Box]:
    return list(dict.fromkeys(boxes))


def _open_scale(volume: Volume, index: int) -> Volume:
    """Another scale of ``volume``'s dataset, sharing its store and cache."""
    return open_scale(volume, index)


def _source_name(source: Any) -> str:
    from .._reader import _display_name

    try:
        return _display_name(source)
    except Exception:  # pragma: no cover - exotic specs
        return "labels"


def unwrap_viewer(viewer: Any) -> Any:
    """The viewer itself when napari hands plugins a ``PublicOnlyProxy`` of it: sessions
    compare viewers by identity and guard the window's close."""
    try:
        from napari.utils._proxies import PublicOnlyProxy
    except ImportError:  # pragma: no cover - napari without proxies
        return viewer
    while isinstance(viewer, PublicOnlyProxy):
        viewer = viewer.__wrapped__
    return viewer


def _visible_window(viewer: Any) -> bool:
    """True when ``viewer`` has a Qt window on screen (a user who can be asked)."""
    window = getattr(viewer, "window", None)
    qt = getattr(window, "_qt_window", None) if window is not None else None
    try:
        return bool(qt is not None and qt.isVisible())
    except RuntimeError:  # the Qt object is gone
        return False


def _notify(message: str) -> None:
    log.warning(message)
    try:
        from napari.utils.notifications import show_warning

        show_warning(message)
    except Exception:  # pragma: no cover - napari shutting down
        pass


# -- closing the viewer -----------------------------------------------------------------------


def _viewer_sessions(viewer: Any) -> list[EditSession]:
    return [s for s in open_sessions() if s.viewer is viewer and s.dirty_chunks]


def _may_close_viewer(viewer: Any) -> bool:
    """Before the viewer closes: resolve uncommitted edits. False vetoes the close."""
    sessions = _viewer_sessions(viewer)
    if not sessions:
        return True
    if _visible_window(viewer):
        from ..widgets import labels as w

        n = sum(s.dirty_chunks for s in sessions)
        names = ", ".join(repr(s.layer.name) for s in sessions)
        choice = w.ask_unsaved(
            viewer,
            f"{names} ha{'s' if len(sessions) == 1 else 've'} uncommitted edits in {n} "
            f"chunk{_s(n)}. Commit them before closing?",
        )
        if choice == "cancel":
            return False
        if choice == "discard":
            for s in sessions:
                s.transaction.discard()
            return True
        for s in sessions:
            try:
                w.run_blocking_commit(viewer, s)
            except CommitError as e:
                w.show_commit_error(viewer, str(e))
                return False
        return True
    for s in sessions:
        s._resolve_unsaved(removed_index=None)
    return True


def _after_close(viewer: Any) -> None:
    """The viewer closed: end clean sessions, keep the ones holding edits."""
    for s in open_sessions():
        if s.viewer is viewer:
            if s.dirty_chunks:
                s._keep()  # kept edits outlive the viewer
            else:
                s._finish()
            s.viewer = None


def _install_close_guard(viewer: Any) -> None:
    """Resolve uncommitted edits before a Qt viewer closes, in all three ways it can:
    ``viewer.close()`` (which removes every layer before closing the window, so it is
    checked first), ``viewer.window.close()``, and the window's own close (a click on
    its close button, Ctrl-W, quit), caught by an event filter."""
    window = getattr(viewer, "window", None)
    if window is None or getattr(window, "_precomputed_close_guard", False):
        return
    try:
        from ..widgets.labels import install_close_filter

        install_close_filter(viewer)
    except Exception as e:  # pragma: no cover - no Qt window
        log.debug("napari-precomputed: no close guard: %s", e)
        return
    close_window = window.close
    close_viewer = viewer.close

    def guarded_window_close(*args: Any, **kwargs: Any) -> Any:
        if not _may_close_viewer(viewer):
            return None
        out = close_window(*args, **kwargs)
        _after_close(viewer)
        return out

    def guarded_viewer_close(*args: Any, **kwargs: Any) -> Any:
        if not _may_close_viewer(viewer):
            return None
        for s in open_sessions():
            if s.viewer is viewer:
                s._viewer_closing = True
        out = close_viewer(*args, **kwargs)
        _after_close(viewer)
        return out

    window.close = guarded_window_close
    window._precomputed_close_guard = True
    # napari's Viewer is a pydantic model that refuses new attributes: set it directly.
    object.__setattr__(viewer, "close", guarded_viewer_close)


# -- the API ----------------------------------------------------------------------------------


def edit_labels(
    viewer: Any,
    source: Any,
    region: Region | None = None,
    scale_index: int = 0,
    *,
    budget: int = DEFAULT_VOXEL_BUDGET,
    downsample: bool = True,
    on_unsaved: str | None = None,
    name: str | None = None,
    **open_options: Any,
) -> EditSession:
    """Open an editable Labels layer over a region of a segmentation and add it to ``viewer``.

    ``source``: a layer opened by this plugin, or a URL, path or TensorStore spec (a
    reader layer of the viewer showing the same source is used when there is one, so it
    refreshes after commits). ``region``: ``((x0, x1), (y0, y1), (z0, z1))`` in absolute
    voxels of scale ``scale_index`` (an index into the volume's ``scales``); ``None``
    takes what is in view, capped at ``budget`` voxels. ``downsample``: update coarser
    scales on commit. ``on_unsaved``: what to do headless with uncommitted edits when
    the layer is removed or the viewer closes (``"commit"``/``"keep"``; default
    ``$NAPARI_PRECOMPUTED_UNSAVED_EDITS`` or ``"commit"``). ``open_options`` go to
    :func:`precomputed.open` for a URL/spec source.
    """
    viewer = unwrap_viewer(viewer)
    source = unwrap_viewer(source)  # a layer can come proxied too
    layer = source if hasattr(source, "metadata") and hasattr(source, "data") else None
    if layer is None:
        layer = _matching_layer(viewer, source)
    if layer is not None:
        volumes = _reader_layer_volumes(layer)
        src = layer.metadata["precomputed"].get("source")
    else:
        volumes = {v.scale_index: v for v in precomputed.open_scales(source, **open_options)}
        src = source
    if scale_index not in volumes:
        any_vol = next(iter(volumes.values()))
        n = len(any_vol.metadata.scales)
        if not 0 <= scale_index < n:
            raise OutOfRangeError(f"scale_index {scale_index} is not in [0, {n})")
        volumes[scale_index] = _open_scale(any_vol, scale_index)
    vol = volumes[scale_index]
    box = view_region(viewer, vol, budget) if region is None else check_region(vol, region)
    return EditSession(
        volumes,
        scale_index,
        box,
        viewer=viewer,
        source_layer=layer,
        source=src,
        name=name,
        downsample=downsample,
        on_unsaved=on_unsaved,
    )

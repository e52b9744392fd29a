"""Edit sessions: a writable, single-scale Labels layer over a region of a segmentation.

napari cannot paint multiscale Labels, so an :class:`EditSession` opens one scale of a
region (by default what is in view, capped at a voxel budget: :mod:`.region`) as a
single-scale Labels layer placed exactly over the read-only pyramid. Its data is an
:class:`~.editable.EditableArray` whose writes go into a :class:`precomputed.Transaction`;
every read of the session sees those dirty chunks.

``commit()`` stores them through the driver's shard-grouped writer (each touched shard,
or each touched unsharded chunk, written once; the driver forgets exactly the stored
chunks in the shared cache), refreshes the layers showing the volume and brings the
coarser scales of the edited voxels up to date by mode downsampling
(:func:`precomputed.create.update_coarser_scales`). Edits are never dropped silently:

* A failed commit keeps every edit not stored; a retry stores them. Edits made while a
  commit runs stay dirty for the next one.
* Each dirty chunk remembers the stored chunk it was based on. Before writing, the
  commit brings the dirty chunks up to date with storage (:meth:`Transaction.rebase
  <precomputed.Transaction.rebase>`): a chunk another writer changed meanwhile is merged
  voxel by voxel (theirs where we did not paint, ours where we did) and reported as a
  conflict; a chunk whose edits were all undone is not written at all.
* Removing the layer, or closing the viewer, with uncommitted edits follows the
  unsaved-edit policy (:mod:`.policy`): ask the user (commit / discard / cancel) or,
  without a visible window, the session's ``on_unsaved`` setting.

See docs/editing.md.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import precomputed
from precomputed import InvalidArgumentError, OutOfRangeError, PrecomputedError, Volume
from precomputed.create import coarser_scales, update_coarser_scales
from precomputed.driver import open_scale
from precomputed.internal.geometry import Box, Vec3
from precomputed.readpath import fetch
from precomputed.transaction import Transaction

from .._reader import display_name, layer_volumes, matching_layer
from ..segments.meshes import meshes_rewritten
from ..segments.selection import original_colormap
from . import policy
from .editable import EditableArray
from .readonly import commit_failed_message
from .region import DEFAULT_VOXEL_BUDGET, Region, check_region, view_region
from .remesh import remesh_touched, touched_labels
from .results import ChunkConflict, CommitError, CommitResult, plural
from .undo import follow_undo

__all__ = [
    "EditSession",
    "edit_labels",
    "open_sessions",
    "unwrap_viewer",
    "Callbacks",
    "COMMIT_KEY",
    "EDIT_METADATA",
]

log = logging.getLogger("napari_precomputed")

Progress = Callable[[int, int], None]

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


# -- sessions ---------------------------------------------------------------------------------


def _volume_key(vol: Volume) -> tuple[str, str]:
    return vol.kvstore.url, vol.path


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
        if on_unsaved is not None and on_unsaved not in policy.HEADLESS_POLICIES:
            raise InvalidArgumentError(
                f"on_unsaved must be one of {policy.HEADLESS_POLICIES}, not {on_unsaved!r}"
            )
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
        #: Re-mesh the segments a commit touched (True/False; None: when the volume's
        #: multi-resolution meshes can be rewritten). See :mod:`.remesh`.
        self.remesh: bool | None = None
        # Labels changed by stored edits, and the boxes (absolute voxels of this scale)
        # of the changed voxels, not re-meshed yet (guarded by _lock).
        self._touched: set[int] = set()
        self._touched_boxes: list[Box] = []
        self._announced: CommitResult | None = None

        sl = tuple(slice(a, b) for a, b in zip(region.start, region.stop, strict=True))
        view = vol.with_transaction(self.transaction)[(*sl, slice(None))].zyx()
        chunk = np.array(vol.chunk_layout.read_chunk[:3][::-1])
        origin = (np.array(region.start) - np.array(vol.scale.voxel_offset))[::-1]
        self.data = EditableArray(view, self._edited, grid=(origin, chunk), owner=self)
        self.layer = self._make_layer(name)
        follow_undo(self)  # undoing an edit makes its chunk clean again
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
            try:  # the same colours as the pyramid underneath (all its labels)
                layer.colormap = original_colormap(self.source_layer)
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
        return f"{n} edited chunk{plural(n)} in {g} {unit}{plural(g)}"

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
                downsample = self.downsample if downsample is None else downsample
                result = self._commit(progress, downsample)
                self._remesh_touched(result, downsample)
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
                raise CommitError(commit_failed_message(e, self.dirty_chunks), e) from e
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

    def _reconcile(self, positions: list[Vec3], result: CommitResult) -> None:
        """Bring the dirty chunks up to date with storage before they are written.

        The merge is the driver's (:meth:`Transaction.rebase
        <precomputed.Transaction.rebase>`, a three-way merge against the stored chunk
        each edit was based on): unchanged chunks (edits undone) are dropped; chunks
        another writer changed since we read them are merged voxel by voxel and
        reported as conflicts; a chunk rewritten while this runs is left alone (the
        newer edit wins) and not reported.

        What the driver cannot express yet stays here, in this one function: (1) a
        transaction does not remember what each dirty chunk was based on, so the session
        captures the bases (``_capture_bases`` after every edit, ``_on_committed`` after
        a group is stored) and hands them over, and records what the merge changed of
        them; (2) the merge is a read-then-write, not part of the conditional commit, so
        a writer who rewrites a shard between this merge and our write still loses that
        change. Issue 14 moves the merge inside the driver's conditional commit
        (merging again on a generation conflict), and this function with it."""
        self._capture_bases(positions)
        with self._lock:
            bases = dict(self._bases)
        store = self._handle.store
        for r in self.transaction.rebase(self._handle, bases, positions, batch=_RECONCILE_BATCH):
            if r.outcome == "kept":  # storage still holds the base
                continue
            if r.outcome != "unchanged":  # merged or superseded: another writer was here
                conflict = ChunkConflict(r.position, store.describe(r.position), r.conflicts)
                result.conflicts.append(conflict)
            with self._lock:
                if r.outcome == "merged":
                    self._bases[r.position] = r.stored  # the new base: as stored now
                else:  # nothing of ours is left to write
                    self._bases.pop(r.position, None)
            if r.outcome != "merged":
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
                    self._touched.update(touched_labels(arr, base).tolist())
                    self._touched_boxes.append(box)
                if pos in still_dirty:
                    self._bases[pos] = arr
                else:
                    self._bases.pop(pos, None)
            self._pending.extend(boxes)

    def _remesh_touched(self, result: CommitResult, downsampled: bool) -> None:
        """After a successful commit: re-mesh the labels it (and failed commits before
        it) changed, per ``remesh``. Never raises (a failure is in ``result.remesh``)."""
        with self._lock:
            ids, boxes = sorted(self._touched), list(self._touched_boxes)
            self._touched.clear()
            self._touched_boxes.clear()
        result.touched_ids = ids
        if not ids or self.remesh is False:
            return
        outcome = remesh_touched(
            self._scale_volume, self.scale_index, ids, boxes, coarser_updated=downsampled
        )
        if self.remesh is None and outcome.skipped and outcome.error is None:
            return  # automatic, and these meshes are not ours to rewrite
        result.remesh = outcome
        if outcome.error is not None:  # reported by the widget, on the UI thread
            log.warning("napari-precomputed: %s: the edits were committed, but %s",
                        self.layer.name, outcome.summary())  # fmt: skip

    # -- coarser scales -------------------------------------------------------------------
    def coarser_scales(self) -> list[tuple[int, int, tuple[int, int, int]]]:
        """``(scale, source scale, factor)`` for each coarser scale, finest first: each is
        downsampled from the coarsest scale before it that divides its resolution."""
        return coarser_scales(self.volume.metadata, self.scale_index)

    def _scale_volume(self, index: int) -> Volume:
        vol = self.volumes.get(index)
        if vol is None:
            vol = self.volumes[index] = open_scale(self.volume, index)
        return vol

    def _update_coarser(self, result: CommitResult, counter: _ProgressCounter) -> None:
        with self._lock:
            pending = list(self._pending)
        if not pending:
            return
        result.downsampled.update(
            update_coarser_scales(
                self.volume,
                pending,
                method="mode",
                scale_of=self._scale_volume,
                progress=counter.then(),
            )
        )
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
                    vols = layer_volumes(layer)
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
        result = self.last_result
        remeshed = result.remesh if result is not None else None
        if remeshed is not None and remeshed.segment_ids and result is not self._announced:
            if remeshed.stats is not None or remeshed.error is not None:
                self._announced = result
                meshes_rewritten(self.volume, remeshed.segment_ids)  # their Surface layers

    def _sync_handles(self, vols: dict[int, Volume]) -> None:
        """Another layer of the same volume with its own handles. In this session's
        context the driver already made them forget what the commit rewrote; with
        another context, that context's cache and shard indices know nothing of it."""
        for index, vol in vols.items():
            mine = self.volumes.get(index)
            if mine is None or vol.handle is mine.handle:
                continue
            if vol.context is not mine.context:
                vol.refresh()

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
        """Uncommitted edits while the layer goes away (see :mod:`.policy`). True when
        the session may end."""
        outcome = policy.resolve_removed(self, removed_index)
        if outcome == "keep":
            self._keep()
        return outcome == "close"

    def _on_commit_key(self, layer: Any) -> None:
        prompt = policy.prompt_for(self.viewer)
        if self.commit_handler is not None:
            self.commit_handler(self)
        elif prompt is not None:
            prompt.commit_in_background(self)
        else:
            try:
                self.commit()
            except CommitError as e:
                policy.notify(str(e))


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

    def then(self) -> Progress:
        """A progress callback for a phase that counts its own ``(done, total)`` (the
        coarser scales' update), reported on top of what is counted so far."""
        with self._lock:
            done0, total0 = self.done, self.total

        def step(done: int, total: int) -> None:
            with self._lock:
                self.done, self.total = done0 + done, total0 + total
                d, t = self.done, self.total
            if self._progress is not None:
                self._progress(d, t)

        return step


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


def _source_name(source: Any) -> str:
    try:
        return display_name(source)
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


# -- closing the viewer -----------------------------------------------------------------------


def _viewer_sessions(viewer: Any) -> list[EditSession]:
    return [s for s in open_sessions() if s.viewer is viewer and s.dirty_chunks]


def _may_close_viewer(viewer: Any) -> bool:
    """Before the viewer closes: resolve uncommitted edits. False vetoes the close."""
    sessions = _viewer_sessions(viewer)
    if not sessions:
        return True
    confirmed = policy.confirm_close(viewer, sessions)
    if confirmed is not None:
        return confirmed
    for s in sessions:  # no one to ask: each follows its headless policy
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
    its close button, Ctrl-W, quit), which the prompt guards (:meth:`.policy.Prompt.
    guard_close`)."""
    window = getattr(viewer, "window", None)
    if window is None or getattr(window, "_precomputed_close_guard", False):
        return
    prompt = policy.registered_prompt()
    if prompt is None:  # pragma: no cover - no Qt
        return
    try:
        prompt.guard_close(viewer, lambda: _may_close_viewer(viewer))
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
        layer = matching_layer(viewer, source)
    if layer is not None:
        volumes = layer_volumes(layer)
        src = layer.metadata["precomputed"].get("source")
    else:
        volumes = {v.scale_index: v for v in precomputed.open_scales(source, **open_options)}
        src = source
    if scale_index not in volumes:
        any_vol = next(iter(volumes.values()))
        n = len(any_vol.metadata.scales)
        if not 0 <= scale_index < n:
            raise OutOfRangeError(f"scale_index {scale_index} is not in [0, {n})")
        volumes[scale_index] = open_scale(any_vol, scale_index)
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

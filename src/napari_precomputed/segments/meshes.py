"""The meshes of selected segments as napari Surface layers (no Qt).

:class:`SegmentMeshes` keeps one ``Surface`` layer per selected segment of a
segmentation's Labels layer (opened by this plugin), fetched from the volume's ``mesh``
directory with :func:`precomputed.meshes.open`:

* **Placement.** Mesh vertices are nm in Neuroglancer's frame, where voxel ``v`` spans
  ``[v, v + 1) × resolution``; napari centres voxel ``v`` of a layer's data on ``v``
  (data index ``d`` is drawn over ``[d - 0.5, d + 0.5)``). A Surface gets its vertices in
  voxels of the Labels layer's finest scale, ``p = vertices_nm / resolution`` (z, y, x),
  and the Labels layer's scale, rotation, shear and affine; its translate is the Labels
  layer's translate minus the linear part applied to ``origin + 0.5`` (``origin``: the
  absolute voxel at data index 0). Then world(p) = Labels' world of data index
  ``p - origin - 0.5``, i.e. the mesh lies exactly over the voxels it was made from. For
  a layer as the reader makes it (translate = ``origin × resolution``) that translate is
  ``-0.5 × resolution``. See :func:`surface_placement`.
* **Colours**: each Surface has the colour its segment has in the Labels layer (its own
  colormap, also while only the selection is shown), and follows colormap changes.
* **Levels of detail**: ``lod`` (0 finest, ``-1`` coarsest only, or any level, clamped
  to the levels a segment has). A new segment's coarsest LOD comes first (one batched
  fetch for all new segments: the cheapest requests), then the wanted LOD replaces it.
* **Threads**: every fetch runs in a worker (:class:`~.background.Background`); layers
  are added, changed and removed only on the UI thread.
* **Cache**: meshes are cached per (volume, segment, lod) in :data:`MESH_CACHE`
  (byte-bounded LRU, shared by all views); selecting a segment again costs no I/O.
* **Updates**: :meth:`SegmentMeshes.set_ids` adds the layers of new ids and removes those
  of deselected ones; :func:`meshes_rewritten` (after a re-mesh) drops the cached meshes
  of some segments and refetches them in every view of the volume.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from cachetools import LRUCache

from precomputed import InvalidArgumentError, PrecomputedError, Volume

from .._reader import layer_volumes
from .background import Background, poster_for
from .search import SegmentTable
from .selection import label_colors

__all__ = [
    "LOD_COARSEST",
    "MESH_CACHE",
    "MESH_METADATA",
    "MeshCache",
    "SegmentMeshes",
    "meshes_rewritten",
    "surface_placement",
    "surface_vertices",
    "volume_key",
]

log = logging.getLogger("napari_precomputed")

#: ``lod`` value: only the coarsest level of detail.
LOD_COARSEST = -1
#: Metadata key of the Surface layers made here.
MESH_METADATA = "precomputed_mesh"
#: Most Surface layers one view shows (a layer per segment: napari slows down with
#: thousands of layers); further selected segments are listed as not shown.
MAX_SURFACES = 100

VolumeKey = tuple[str, str]


def volume_key(volume: Volume) -> VolumeKey:
    """What identifies a volume's meshes: its store URL and path."""
    return volume.kvstore.url, volume.path


# -- cache ------------------------------------------------------------------------------------


class MeshCache:
    """Meshes by (volume, segment, lod), a byte-bounded LRU; and each segment's number
    of levels of detail. Thread-safe."""

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self._lock = threading.Lock()
        self._meshes: LRUCache[tuple[VolumeKey, int, int], Any] = LRUCache(
            max_bytes, getsizeof=lambda m: max(1, m.vertices.nbytes + m.faces.nbytes)
        )
        self._lods: dict[tuple[VolumeKey, int], int] = {}

    def get(self, key: VolumeKey, segment_id: int, lod: int) -> Any:
        with self._lock:
            return self._meshes.get((key, segment_id, lod))

    def put(self, key: VolumeKey, segment_id: int, lod: int, mesh: Any) -> None:
        with self._lock:
            try:
                self._meshes[(key, segment_id, lod)] = mesh
            except ValueError:  # larger than the whole cache
                pass

    def lods(self, key: VolumeKey, segment_id: int) -> int | None:
        with self._lock:
            return self._lods.get((key, segment_id))

    def set_lods(self, key: VolumeKey, segment_id: int, n: int) -> None:
        with self._lock:
            self._lods[(key, segment_id)] = n

    def drop(self, key: VolumeKey, segment_ids: Iterable[int] | None = None) -> None:
        """Forget the volume's meshes of ``segment_ids`` (None: all of them)."""
        ids = None if segment_ids is None else {int(i) for i in segment_ids}
        with self._lock:
            for m in [m for m in self._meshes if m[0] == key and (ids is None or m[1] in ids)]:
                del self._meshes[m]
            for n in [n for n in self._lods if n[0] == key and (ids is None or n[1] in ids)]:
                del self._lods[n]

    def clear(self) -> None:
        with self._lock:
            self._meshes.clear()
            self._lods.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._meshes)


#: The meshes of every view.
MESH_CACHE = MeshCache()

# One mesh source per volume (thread-safe, caches manifests and shard indices).
_sources: dict[VolumeKey, Any] = {}
_sources_lock = threading.Lock()


def _source(volume: Volume) -> Any:
    key = volume_key(volume)
    with _sources_lock:
        src = _sources.get(key)
    if src is None:
        from precomputed import meshes

        src = meshes.open(volume)  # reads the volume info and the mesh info
        with _sources_lock:
            src = _sources.setdefault(key, src)
    return src


def _forget_source(key: VolumeKey, segment_ids: Iterable[int] | None) -> None:
    with _sources_lock:
        src = _sources.get(key) if segment_ids is not None else _sources.pop(key, None)
    if src is not None:
        src.invalidate()


# -- placement --------------------------------------------------------------------------------


def surface_vertices(vertices_nm: np.ndarray, resolution: Iterable[float]) -> np.ndarray:
    """Mesh vertices (x, y, z nm) as (z, y, x) voxels of ``resolution`` (x, y, z nm), in
    Neuroglancer's frame (voxel ``v`` spans ``[v, v + 1)``)."""
    res = np.asarray(list(resolution), np.float64)[::-1]
    return (np.asarray(vertices_nm, np.float64)[:, ::-1] / res).astype(np.float32)


def surface_placement(layer: Any, origin: Iterable[int]) -> dict[str, Any]:
    """``scale``, ``translate``, ``rotate``, ``shear``, ``affine`` of a Surface whose
    vertices are :func:`surface_vertices` of the Labels ``layer``'s finest scale, so that
    it lies exactly over the layer's voxels. ``origin``: the absolute voxel (x, y, z) at
    the layer's data index 0. See the module notes."""
    from napari.utils.transforms import CompositeAffine

    linear = CompositeAffine(
        scale=np.asarray(layer.scale, np.float64),
        rotate=np.asarray(layer.rotate, np.float64),
        shear=np.asarray(layer.shear, np.float64),
        translate=np.zeros(layer.ndim),
    )
    centre = np.asarray(list(origin), np.float64)[::-1] + 0.5  # z, y, x
    translate = np.asarray(layer.translate, np.float64) - linear(centre)
    return {
        "scale": tuple(float(v) for v in layer.scale),
        "translate": tuple(float(v) for v in translate),
        "rotate": np.asarray(layer.rotate, np.float64),
        "shear": np.asarray(layer.shear, np.float64),
        "affine": np.asarray(layer.affine.affine_matrix, np.float64),
    }


def _finest(layer: Any) -> tuple[Volume, tuple[int, ...]]:
    """The Labels layer's finest volume and the absolute voxel at its data index 0."""
    meta = layer.metadata["precomputed"]
    vols = layer_volumes(layer)
    first = int(meta["levels"][0]["scale_index"])
    return vols[first], tuple(int(v) for v in meta["origin"])


# -- views ------------------------------------------------------------------------------------

_views: weakref.WeakSet[SegmentMeshes] = weakref.WeakSet()


def meshes_rewritten(volume: Volume, segment_ids: Iterable[int]) -> None:
    """The meshes of ``segment_ids`` of ``volume`` changed (re-meshed): forget them and
    refetch them in every view showing them. Call on the UI thread."""
    ids = [int(i) for i in segment_ids]
    key = volume_key(volume)
    MESH_CACHE.drop(key, ids)
    _forget_source(key, ids)
    for view in list(_views):
        if not view.closed and view.key == key:
            view.refresh(ids, _forgotten=True)


class SegmentMeshes:
    """Surface layers of the selected segments of one Labels layer (module notes).

    Call every method on the UI thread. ``lod``: the level of detail wanted (0 finest,
    :data:`LOD_COARSEST`). ``background``: where fetches run (default: the viewer's
    poster; without a Qt window, call :meth:`wait` or :meth:`process` to get the
    results). ``changed`` callbacks run after every change of state (status text)."""

    def __init__(
        self,
        viewer: Any,
        layer: Any,
        *,
        lod: int = 0,
        background: Background | None = None,
        cache: MeshCache = MESH_CACHE,
        max_surfaces: int = MAX_SURFACES,
    ) -> None:
        self.viewer = viewer
        self.max_surfaces = max_surfaces
        #: Selected segments beyond ``max_surfaces`` (no mesh shown).
        self.not_shown = 0
        self.layer = layer
        self.volume, self.origin = _finest(layer)
        self.key = volume_key(self.volume)
        self.resolution = tuple(float(r) for r in self.volume.resolution)
        self.cache = cache
        self.background = background if background is not None else Background(poster_for(viewer))
        self._lod = _check_lod(lod)
        #: The segments whose meshes are wanted, in order.
        self.ids: tuple[int, ...] = ()
        self._wanted: frozenset[int] = frozenset()  # read by workers
        #: Segment id -> its Surface layer.
        self.layers: dict[int, Any] = {}
        self._shown: dict[int, tuple[int, int]] = {}  # id -> (version, lod) shown
        self._version: dict[int, int] = {}
        #: Selected segments without a mesh.
        self.missing: set[int] = set()
        #: The last fetch error (None after a success).
        self.error: str | None = None
        self.changed: list[Callable[[], Any]] = []
        self.closed = False
        self._table: SegmentTable | None = None
        _views.add(self)
        layer.events.colormap.connect(self._on_colormap)
        for name in ("scale", "translate", "rotate", "shear", "affine"):
            getattr(layer.events, name).connect(self._on_transform)
        layer.events.features.connect(self._on_features)
        if viewer is not None:
            viewer.layers.events.removed.connect(self._on_removed)

    def __repr__(self) -> str:
        return f"<SegmentMeshes of {self.layer.name!r}: {len(self.layers)} surfaces, lod {self._lod}>"

    # -- settings ---------------------------------------------------------------------
    @property
    def lod(self) -> int:
        return self._lod

    @lod.setter
    def lod(self, lod: int) -> None:
        lod = _check_lod(lod)
        if lod == self._lod:
            return
        self._lod = lod
        self._request(list(self.ids), refine_only=True)

    def target_lod(self, segment_id: int) -> int | None:
        """The level of detail a segment is shown at once fetched (None: its number of
        levels is not known yet)."""
        n = self.cache.lods(self.key, segment_id)
        if n is None:
            return None
        return n - 1 if self._lod == LOD_COARSEST else min(self._lod, n - 1)

    def shown_lod(self, segment_id: int) -> int | None:
        got = self._shown.get(segment_id)
        return None if got is None else got[1]

    # -- selection --------------------------------------------------------------------
    def set_ids(self, ids: Iterable[int]) -> None:
        """Show the meshes of ``ids`` (and only those)."""
        wanted = tuple(dict.fromkeys(int(i) for i in ids if int(i) != 0))
        self.not_shown = max(0, len(wanted) - self.max_surfaces)
        wanted = wanted[: self.max_surfaces]
        keep = set(wanted)
        for i in [i for i in self.layers if i not in keep]:
            self._remove(i)
        self.missing &= keep
        new = [i for i in wanted if i not in self._shown and i not in set(self.ids)]
        self.ids = wanted
        self._wanted = frozenset(wanted)
        self._request(new)
        self._emit()

    def refresh(self, ids: Iterable[int] | None = None, *, _forgotten: bool = False) -> None:
        """The meshes of ``ids`` (None: all shown) changed in storage: fetch them again
        (coarsest first); the layers keep showing the old ones until then."""
        ids = list(self.ids) if ids is None else [int(i) for i in ids]
        if not _forgotten:
            self.cache.drop(self.key, ids)
            _forget_source(self.key, ids)
        for i in ids:
            self._version[i] = self._version.get(i, 0) + 1
        again = [i for i in ids if i in self._wanted]
        self.missing -= set(again)
        self._request(again)
        self._emit()

    def close(self) -> None:
        """Remove every Surface layer and stop listening."""
        if self.closed:
            return
        self.closed = True
        self.set_ids(())
        self.background.close()
        _views.discard(self)
        try:
            self.layer.events.colormap.disconnect(self._on_colormap)
            for name in ("scale", "translate", "rotate", "shear", "affine"):
                getattr(self.layer.events, name).disconnect(self._on_transform)
            self.layer.events.features.disconnect(self._on_features)
            if self.viewer is not None:
                self.viewer.layers.events.removed.disconnect(self._on_removed)
        except Exception:  # pragma: no cover - already disconnected
            pass

    # -- waiting (headless) -----------------------------------------------------------
    def process(self) -> None:
        """Apply the fetches that finished (needed only without a Qt event loop)."""
        self.background.process()

    def wait(self, timeout: float = 30.0) -> bool:
        """Until every fetch is done and applied (refinements included)."""
        return self.background.wait(timeout)

    @property
    def busy(self) -> bool:
        return self.background.busy

    def status(self) -> str:
        """One line: what is shown, what is missing, the last error."""
        if not self.ids:
            return "No segment selected" if not self.not_shown else "Too many segments"
        parts = [f"{len(self.layers)} of {len(self.ids)} meshes shown"]
        if self.missing:
            parts.append(f"{len(self.missing)} without mesh")
        if self.not_shown:
            parts.append(f"{self.not_shown} more selected (at most {self.max_surfaces} shown)")
        if self.busy:
            parts.append("fetching ...")
        if self.error:
            parts.append(f"error: {self.error}")
        return ", ".join(parts)

    # -- fetching ---------------------------------------------------------------------
    def _request(self, ids: list[int], refine_only: bool = False) -> None:
        """Show what the cache has, and fetch the rest: the coarsest LOD of segments not
        known yet (unless ``refine_only``), then their wanted LOD."""
        coarse: list[int] = []
        refine: dict[int, list[int]] = {}
        for i in ids:
            v = self._version.get(i, 0)
            target = self.target_lod(i)
            if target is None:
                if not refine_only or i not in self._shown:
                    coarse.append(i)
                continue
            cached = self.cache.get(self.key, i, target)
            if cached is not None:
                self._offer(i, target, cached, v)
                continue
            n = self.cache.lods(self.key, i)
            coarsest = self.cache.get(self.key, i, n - 1) if n else None
            if coarsest is not None and self._shown.get(i, (None,))[0] != v:
                self._offer(i, n - 1, coarsest, v)  # type: ignore[operator]
            refine.setdefault(target, []).append(i)
        if coarse:
            self._fetch(coarse, LOD_COARSEST)
        for lod, group in refine.items():
            self._fetch(group, lod)

    def _fetch(self, ids: list[int], lod: int) -> None:
        versions = {i: self._version.get(i, 0) for i in ids}
        volume, key, cache = self.volume, self.key, self.cache
        wanted = lambda: self._wanted  # noqa: E731 - read by the worker

        def work() -> tuple[dict[int, tuple[int, Any]], list[int]]:
            todo = [i for i in ids if i in wanted()]
            if not todo:
                return {}, []
            src = _source(volume)
            got = src.get_many(todo, lod, missing="skip")
            out: dict[int, tuple[int, Any]] = {}
            for i, mesh in got.items():
                n = src.lods(i)  # the manifest is cached: no I/O
                cache.set_lods(key, i, n)
                k = n - 1 if lod == LOD_COARSEST else lod
                cache.put(key, i, k, mesh)
                out[i] = (k, mesh)
            return out, todo

        def done(result: tuple[dict[int, tuple[int, Any]], list[int]]) -> None:
            got, todo = result
            self.error = None
            for i in todo:
                if versions[i] != self._version.get(i, 0):
                    continue  # refreshed meanwhile: a newer fetch is on its way
                if i not in got or not got[i][1]:
                    self.missing.add(i)
                    if i in self.layers:  # its mesh is gone (the segment was erased)
                        self._remove(i)
                    continue
                k, mesh = got[i]
                self._offer(i, k, mesh, versions[i])
            later = [i for i in got if i in self._wanted and versions[i] == self._version.get(i, 0)]
            if lod == LOD_COARSEST and later:
                self._request(later, refine_only=True)
            self._emit()

        def failed(error: BaseException) -> None:
            self.error = str(error)
            log.warning("napari-precomputed: fetching meshes of %s failed: %s", ids, error)
            _notify(f"Meshes of {self.layer.name!r}: {error}")
            self._emit()

        self.background.submit(work, done, failed)
        self._emit()

    # -- layers -----------------------------------------------------------------------
    def _offer(self, segment_id: int, lod: int, mesh: Any, version: int) -> None:
        """Show ``mesh`` unless what is shown is as new and closer to the wanted LOD."""
        if segment_id not in self._wanted or version != self._version.get(segment_id, 0):
            return
        current = self._shown.get(segment_id)
        target = self.target_lod(segment_id)
        if current is not None and current[0] == version and target is not None:
            if abs(current[1] - target) <= abs(lod - target):
                return
        if not mesh:
            return
        self._show(segment_id, lod, mesh)
        self._shown[segment_id] = (version, lod)

    def _show(self, segment_id: int, lod: int, mesh: Any) -> None:
        vertices = surface_vertices(mesh.vertices, self.resolution)
        data = (vertices, mesh.faces, np.ones(vertices.shape[0], np.float32))
        meta = {
            "segment": segment_id,
            "lod": lod,
            "labels": self.layer.name,
            "url": self.key[0] + self.key[1],
        }
        layer = self.layers.get(segment_id)
        if layer is not None and self.viewer is not None and layer in self.viewer.layers:
            layer.metadata = {MESH_METADATA: meta}
            layer.data = data
            return
        from napari.layers import Surface

        layer = Surface(
            data,
            name=self._name(segment_id),
            colormap=self._colormap(segment_id),
            contrast_limits=(0.0, 1.0),
            shading="smooth",
            metadata={MESH_METADATA: meta},
            axis_labels=tuple(self.layer.axis_labels),
            units=tuple(self.layer.units),
            **surface_placement(self.layer, self.origin),
        )
        self.layers[segment_id] = layer
        if self.viewer is not None:
            selection = self.viewer.layers.selection
            active, selected = selection.active, set(selection)
            self.viewer.add_layer(layer)
            selection.clear()  # adding selects the new layer: keep the user's selection
            selection.update(selected)
            selection.active = active

    def _remove(self, segment_id: int) -> None:
        layer = self.layers.pop(segment_id, None)
        self._shown.pop(segment_id, None)
        if layer is not None and self.viewer is not None and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    def _name(self, segment_id: int) -> str:
        label = ""
        try:
            if self._table is None:
                self._table = SegmentTable.from_layer(self.layer)
            label = self._table.label_of(segment_id)
        except (PrecomputedError, KeyError, ValueError, TypeError):
            pass
        name = f"{self.layer.name} mesh {segment_id}"
        return f"{name} {label}" if label else name

    def _colormap(self, segment_id: int) -> Any:
        from napari.utils.colormaps import Colormap

        rgba = label_colors(self.layer, [segment_id])[0].copy()
        rgba[3] = 1.0
        return Colormap(np.stack([rgba, rgba]), name=f"precomputed segment {segment_id}")

    # -- events -----------------------------------------------------------------------
    def _on_colormap(self, event: Any = None) -> None:
        for i, layer in self.layers.items():
            want = label_colors(self.layer, [i])[0]
            have = np.asarray(layer.colormap.colors)[0]
            if not np.allclose(want[:3], have[:3]):
                layer.colormap = self._colormap(i)

    def _on_transform(self, event: Any = None) -> None:
        placement = surface_placement(self.layer, self.origin)
        for layer in self.layers.values():
            for name, value in placement.items():
                setattr(layer, name, value)

    def _on_features(self, event: Any = None) -> None:
        self._table = None

    def _on_removed(self, event: Any) -> None:
        gone = event.value
        if gone is self.layer:
            self.close()
            return
        for i, layer in list(self.layers.items()):
            if layer is gone:  # the user removed it: stop showing that segment
                self.layers.pop(i, None)
                self._shown.pop(i, None)
                self.ids = tuple(j for j in self.ids if j != i)
                self._wanted = frozenset(self.ids)
                self._emit()

    def _emit(self) -> None:
        for callback in list(self.changed):
            try:
                callback()
            except Exception as e:  # a listener must not break the view
                log.debug("napari-precomputed: mesh view callback failed: %s", e)


def _check_lod(lod: Any) -> int:
    if isinstance(lod, bool) or not isinstance(lod, (int, np.integer)) or lod < LOD_COARSEST:
        raise InvalidArgumentError(f"lod must be an integer >= 0, or -1 for the coarsest, got {lod!r}")
    return int(lod)


def _notify(message: str) -> None:
    log.warning(message)
    try:
        from napari.utils.notifications import show_warning

        show_warning(message)
    except Exception:  # pragma: no cover - napari shutting down
        pass

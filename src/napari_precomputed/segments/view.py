"""Selected segments of a segmentation layer: search, show only them, show their meshes.

:class:`SegmentView` ties together, for one Labels layer opened by this plugin, the
search over its segment properties (:mod:`.search`), the Labels display of only the
selected segments (:mod:`.selection`) and their Surface layers (:mod:`.meshes`).
:func:`segment_view` returns the one view of a layer (the dock widget and scripts share
it); :func:`show_segments` selects segments in one call. No Qt here.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from precomputed import InvalidArgumentError

from .background import Background
from .meshes import SegmentMeshes
from .search import SegmentRow, SegmentTable
from .selection import show_all, show_only, showing_only

__all__ = ["SegmentView", "segment_view", "show_segments", "is_segmentation_layer"]


def is_segmentation_layer(layer: Any) -> bool:
    """A single-channel segmentation Labels layer opened by this plugin's reader."""
    meta = getattr(layer, "metadata", {}).get("precomputed")
    return bool(
        meta
        and meta.get("type") == "segmentation"
        and int(meta.get("num_channels", 1)) == 1
        and isinstance(meta.get("levels"), list)
    )


class SegmentView:
    """Search, selection and meshes of one segmentation layer (call on the UI thread).

    ``select(ids)`` shows only those segments in the Labels layer and, with ``meshes``
    on, their meshes as Surface layers at level of detail ``lod``."""

    def __init__(
        self,
        viewer: Any,
        layer: Any,
        *,
        lod: int = 0,
        meshes: bool = True,
        background: Background | None = None,
    ) -> None:
        if not is_segmentation_layer(layer):
            raise InvalidArgumentError(
                f"layer {getattr(layer, 'name', layer)!r} is not a segmentation opened by "
                "napari-precomputed"
            )
        self.viewer = viewer
        self.layer = layer
        self.meshes = SegmentMeshes(viewer, layer, lod=lod, background=background)
        self._meshes_on = bool(meshes)
        self.selected: tuple[int, ...] = ()
        self._table: SegmentTable | None = None
        self.closed = False
        layer.events.features.connect(self._on_features)
        layer.events.colormap.connect(self._on_colormap)

    def __repr__(self) -> str:
        return f"<SegmentView of {self.layer.name!r}: {len(self.selected)} selected>"

    # -- the properties ---------------------------------------------------------------
    @property
    def table(self) -> SegmentTable:
        """The layer's segments (its ``features``)."""
        if self._table is None:
            self._table = SegmentTable.from_layer(self.layer)
        return self._table

    def search(self, text: str = "", *, regex: bool = False, tags: Sequence[str] = ()) -> np.ndarray:
        """Ids matching a label substring / regular expression and all ``tags``."""
        return self.table.search(text, regex=regex, tags=tags)

    def rows(self, ids: Iterable[int]) -> list[SegmentRow]:
        return self.table.rows(ids)

    # -- selection --------------------------------------------------------------------
    def select(self, ids: Iterable[int]) -> None:
        """Show only ``ids`` (none: every segment, and no meshes)."""
        self.selected = tuple(dict.fromkeys(int(i) for i in ids))
        show_only(self.layer, self.selected)
        self.meshes.set_ids(self.selected if self._meshes_on else ())

    def clear(self) -> None:
        self.select(())

    @property
    def show_meshes(self) -> bool:
        return self._meshes_on

    @show_meshes.setter
    def show_meshes(self, on: bool) -> None:
        self._meshes_on = bool(on)
        self.meshes.set_ids(self.selected if self._meshes_on else ())

    @property
    def lod(self) -> int:
        return self.meshes.lod

    @lod.setter
    def lod(self, lod: int) -> None:
        self.meshes.lod = lod

    def wait(self, timeout: float = 30.0) -> bool:
        """Until the meshes are fetched and shown (headless viewers need this)."""
        return self.meshes.wait(timeout)

    def close(self) -> None:
        """Show every segment again and remove the meshes."""
        if self.closed:
            return
        self.closed = True
        self.meshes.close()
        show_all(self.layer)
        try:
            self.layer.events.features.disconnect(self._on_features)
            self.layer.events.colormap.disconnect(self._on_colormap)
        except Exception:  # pragma: no cover - already disconnected
            pass
        _views.pop(self.layer, None)

    # -- events -----------------------------------------------------------------------
    def _on_features(self, event: Any = None) -> None:
        self._table = None

    def _on_colormap(self, event: Any = None) -> None:
        """New label colours (e.g. shuffled) while a selection is shown: show the
        selection again in the new colours."""
        from napari.utils.colormaps import CyclicLabelColormap

        if self.selected and showing_only(self.layer) is None:
            if isinstance(self.layer.colormap, CyclicLabelColormap):
                show_only(self.layer, self.selected)


_views: weakref.WeakKeyDictionary[Any, SegmentView] = weakref.WeakKeyDictionary()


def segment_view(viewer: Any, layer: Any, **options: Any) -> SegmentView:
    """The :class:`SegmentView` of ``layer`` (made with ``options`` the first time)."""
    view = _views.get(layer)
    if view is None or view.closed or view.meshes.closed:
        view = SegmentView(viewer, layer, **options)
        _views[layer] = view
    return view


def show_segments(
    viewer: Any,
    layer: Any,
    ids: Iterable[int],
    *,
    lod: int | None = None,
    meshes: bool | None = None,
) -> SegmentView:
    """Show only segments ``ids`` of a segmentation layer, and their meshes; returns the
    layer's view (``view.wait()`` until the meshes are shown in a headless viewer)."""
    view = segment_view(viewer, layer)
    if lod is not None:
        view.lod = lod
    if meshes is not None:
        view.show_meshes = meshes
    view.select(ids)
    return view

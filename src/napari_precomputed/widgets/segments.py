"""The *Segments* dock widget, and the Qt poster of background mesh fetches.

Search the segments of a segmentation layer by label (substring or regular expression),
id and tag; pick rows of the result list: the Labels layer then shows only those
segments and their meshes appear as Surface layers (coarsest level of detail first,
then the one chosen in *Mesh detail*). The logic is :class:`napari_precomputed.segments.
SegmentView`; this module is its Qt face. :func:`qt_poster` hands the results of worker
threads to the UI thread (a queued signal), registered with
:mod:`napari_precomputed.segments.background` on import.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, Label, LineEdit, PushButton
from qtpy.QtCore import QItemSelectionModel, QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import QAbstractItemView, QApplication, QTableWidget, QTableWidgetItem

from precomputed import PrecomputedError

from ..editing.session import unwrap_viewer
from ..segments import background
from ..segments.meshes import LOD_COARSEST
from ..segments.view import SegmentView, is_segmentation_layer, segment_view

__all__ = ["SegmentsWidget", "QtPoster", "qt_poster", "MAX_ROWS", "LOD_CHOICES"]

log = logging.getLogger("napari_precomputed")

#: Rows listed at most (the search itself has no limit).
MAX_ROWS = 2000
#: The *Mesh detail* choices: (text, lod).
LOD_CHOICES: list[tuple[str, int]] = [
    ("Finest (LOD 0)", 0),
    *((f"LOD {k}", k) for k in range(1, 8)),
    ("Coarsest only", LOD_COARSEST),
]
_ANY_TAG = "(any tag)"
_ERROR_STYLE = "color: #e05555;"


class _Relay(QObject):
    posted = Signal(object)


class QtPoster:
    """Posts callbacks into the Qt main thread's event loop (queued signal). Create it
    on the main thread."""

    def __init__(self) -> None:
        self._relay = _Relay()
        self._relay.posted.connect(self._run, Qt.ConnectionType.QueuedConnection)

    @staticmethod
    def _run(callback: Callable[[], None]) -> None:
        callback()

    def post(self, callback: Callable[[], None]) -> None:
        self._relay.posted.emit(callback)

    def process(self) -> None:
        QApplication.processEvents()


_qt_poster: QtPoster | None = None


def qt_poster() -> QtPoster:
    """The one Qt poster (made on first use, on the UI thread)."""
    global _qt_poster
    if _qt_poster is None:
        _qt_poster = QtPoster()
    return _qt_poster


background.register_poster_loader(qt_poster)


class SegmentsWidget(Container):
    """Find segments by name or tag; show only the chosen ones, with their meshes."""

    def __init__(self, napari_viewer: Any = None) -> None:
        super().__init__(labels=True, scrollable=False)
        napari_viewer = unwrap_viewer(napari_viewer)
        self.viewer = napari_viewer
        self.view: SegmentView | None = None
        self._poster: Any = qt_poster() if napari_viewer is not None else None
        self._status_timer = QTimer(self.native)
        self._status_timer.setSingleShot(True)
        self._status_timer.setInterval(100)
        self._status_timer.timeout.connect(self.update_status)
        self._select_timer = QTimer(self.native)
        self._select_timer.setSingleShot(True)
        self._select_timer.setInterval(150)
        self._select_timer.timeout.connect(self.apply_selection)

        self.layer = ComboBox(label="Segmentation", choices=self._layer_choices, value=None)
        self.text = LineEdit(label="Label or id", value="")
        self.text.native.setPlaceholderText("part of a name, a regular expression or an id")
        self.regex = CheckBox(text="Regular expression", value=False)
        self.tag = ComboBox(label="Tag", choices=[_ANY_TAG], value=_ANY_TAG)
        self.search_button = PushButton(text="Search")
        self.found = Label(label="Found", value="")
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["id", "label", "tags"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        vertical, horizontal = self.table.verticalHeader(), self.table.horizontalHeader()
        if vertical is not None and horizontal is not None:
            vertical.setVisible(False)
            horizontal.setStretchLastSection(True)
        self.table.setMinimumHeight(160)
        self.show_all_button = PushButton(text="Show all segments")
        self.meshes = CheckBox(text="Show meshes", value=True)
        self.lod = ComboBox(label="Mesh detail", choices=LOD_CHOICES, value=0)
        self.status = Label(label="Meshes", value="")
        for w in (self.found, self.status):
            w.native.setWordWrap(True)
        self.extend(
            [
                self.layer,
                self.text,
                self.regex,
                self.tag,
                self.search_button,
                self.found,
                self.show_all_button,
                self.meshes,
                self.lod,
                self.status,
            ]
        )
        self.native.layout().insertWidget(6, self.table)  # after "Found"

        self.layer.changed.connect(lambda *_: self._on_layer())
        self.search_button.changed.connect(lambda *_: self.search())
        self.text.native.returnPressed.connect(self.search)
        self.regex.changed.connect(lambda *_: self.search())
        self.tag.changed.connect(lambda *_: self.search())
        self.table.itemSelectionChanged.connect(self._select_timer.start)
        self.show_all_button.changed.connect(lambda *_: self.show_all())
        self.meshes.changed.connect(lambda *_: self._on_meshes())
        self.lod.changed.connect(lambda *_: self._on_lod())
        if napari_viewer is not None:
            for name in ("inserted", "removed"):
                getattr(napari_viewer.layers.events, name).connect(self._reset_layers)
        self._pick_default_layer()
        self._on_layer()

    # -- layers ---------------------------------------------------------------------------
    def _layer_choices(self, *_: Any) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = [("(none)", None)]
        if self.viewer is None:
            return out
        out += [(layer.name, layer) for layer in self.viewer.layers if is_segmentation_layer(layer)]
        return out

    def _pick_default_layer(self) -> None:
        if self.layer.value is not None:
            return
        layers = [c for c in self.layer.choices if c is not None]
        if layers:
            active = self.viewer.layers.selection.active if self.viewer is not None else None
            self.layer.value = active if active in layers else layers[0]

    def _reset_layers(self, *_: Any) -> None:
        current = self.layer.value
        self.layer.reset_choices()
        if current is not None and current in self.layer.choices:
            self.layer.value = current
        self._pick_default_layer()
        shown = self.view.layer if self.view is not None else None
        if self.layer.value is not shown:  # e.g. its layer was removed: no event then
            self._on_layer()

    def _on_layer(self) -> None:
        layer = self.layer.value
        if self.view is not None:
            try:
                self.view.meshes.changed.remove(self._schedule_status)
            except ValueError:
                pass
        self.view = None
        if layer is not None:
            try:
                self.view = segment_view(
                    self.viewer,
                    layer,
                    lod=int(self.lod.value),
                    meshes=bool(self.meshes.value),
                    background=background.Background(self._poster),
                )
            except PrecomputedError as e:
                self._set_found(f"Cannot show segments of {layer.name!r}: {e}", error=True)
        if self.view is not None:
            self.view.meshes.changed.append(self._schedule_status)
            self.meshes.value = self.view.show_meshes
            self.lod.value = self.view.lod
            tags = list(self.view.table.tag_names)
            self.tag.choices = [_ANY_TAG, *tags]
            self.tag.value = _ANY_TAG
        has_mesh = self.view is not None and "mesh" in self.view.meshes.volume.info
        self.meshes.enabled = has_mesh
        self.meshes.tooltip = None if has_mesh else "This segmentation has no meshes"
        self.search()

    # -- searching and selecting ----------------------------------------------------------
    def search(self) -> list[int]:
        """Fill the list with the segments matching the search; returns their ids."""
        self.table.blockSignals(True)
        try:
            self.table.setRowCount(0)
            if self.view is None:
                self._set_found("No segmentation layer")
                return []
            tag = self.tag.value
            try:
                ids = self.view.search(
                    str(self.text.value),
                    regex=bool(self.regex.value),
                    tags=() if tag in (None, _ANY_TAG) else (str(tag),),
                )
            except PrecomputedError as e:
                self._set_found(str(e), error=True)
                return []
            rows = self.view.rows(ids[:MAX_ROWS].tolist())
            self.table.setRowCount(len(rows))
            selected = set(self.view.selected)
            for r, row in enumerate(rows):
                for c, text in enumerate((str(row.id), row.label, " ".join(row.tags))):
                    item = QTableWidgetItem(text)
                    if c == 0:
                        item.setData(Qt.ItemDataRole.UserRole, row.id)
                    self.table.setItem(r, c, item)
                if row.id in selected:
                    self._select_row(r)
            n = len(ids)
            text = f"{n} segment{'' if n == 1 else 's'}"
            if n > MAX_ROWS:
                text += f" (listing the first {MAX_ROWS})"
            if not len(self.view.table):
                text += " (this segmentation has no segment properties)"
            self._set_found(text)
            return [int(i) for i in ids]
        finally:
            self.table.blockSignals(False)

    def chosen_ids(self) -> list[int]:
        """The ids of the rows picked in the list."""
        rows = sorted({i.row() for i in self.table.selectedIndexes()})
        out = []
        for r in rows:
            item = self.table.item(r, 0)
            if item is not None:
                out.append(int(item.data(Qt.ItemDataRole.UserRole)))
        return out

    def select_rows(self, ids: list[int]) -> None:
        """Pick the rows of ``ids`` in the list (and so show them)."""
        want = {int(i) for i in ids}
        self.table.blockSignals(True)
        try:
            self.table.clearSelection()
            for r in range(self.table.rowCount()):
                item = self.table.item(r, 0)
                if item is not None and int(item.data(Qt.ItemDataRole.UserRole)) in want:
                    self._select_row(r)
        finally:
            self.table.blockSignals(False)
        self.apply_selection()

    def _select_row(self, row: int) -> None:
        """Add a row to the picked ones (``selectRow`` would replace them)."""
        flags = QItemSelectionModel.SelectionFlag.Select | QItemSelectionModel.SelectionFlag.Rows
        model, selection = self.table.model(), self.table.selectionModel()
        if model is not None and selection is not None:
            selection.select(model.index(row, 0), flags)

    def apply_selection(self) -> None:
        """Show only the picked segments (none picked: all) and their meshes."""
        self._select_timer.stop()
        if self.view is None:
            return
        self.view.select(self.chosen_ids())
        self.update_status()

    def show_all(self) -> None:
        self.table.blockSignals(True)
        self.table.clearSelection()
        self.table.blockSignals(False)
        if self.view is not None:
            self.view.clear()
        self.update_status()

    def _on_meshes(self) -> None:
        if self.view is not None:
            self.view.show_meshes = bool(self.meshes.value)
        self.update_status()

    def _on_lod(self) -> None:
        if self.view is not None and self.lod.value is not None:
            self.view.lod = int(self.lod.value)
        self.update_status()

    # -- status ---------------------------------------------------------------------------
    def _schedule_status(self) -> None:
        try:
            if not self._status_timer.isActive():
                self._status_timer.start()
        except RuntimeError:  # the widget is being deleted
            pass

    def update_status(self) -> None:
        view = self.view
        if view is None:
            self.status.value = ""
            return
        m = view.meshes
        self.status.value = m.status() if view.show_meshes else "Meshes hidden"
        self.status.native.setStyleSheet(_ERROR_STYLE if m.error else "")

    def _set_found(self, text: str, error: bool = False) -> None:
        self.found.value = text
        self.found.native.setStyleSheet(_ERROR_STYLE if error else "")

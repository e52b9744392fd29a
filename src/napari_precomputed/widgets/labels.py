"""The *Edit labels* dock widget and the Qt side of edit sessions.

The widget opens an :class:`~napari_precomputed.editing.EditSession` over a segmentation
layer (or a URL), shows its dirty chunks and shards, and commits in a worker thread with a
progress bar so the viewer stays responsive. :data:`QT_PROMPT` is the Qt implementation
of the unsaved-edit policy's :class:`~napari_precomputed.editing.policy.Prompt` (the
commit / discard / cancel question, background and blocking commits, the filter that asks
before the window closes), registered with the policy when this module is imported.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    Label,
    LineEdit,
    PushButton,
    RadioButtons,
    SpinBox,
)
from qtpy.QtCore import QEvent, QObject, QTimer, Signal

import precomputed
from precomputed import PrecomputedError

from .._reader import layer_volumes
from ..editing import policy
from ..editing.readonly import read_only_reason, save_edits_as_volume, suggest_copy_path
from ..editing.region import DEFAULT_VOXEL_BUDGET
from ..editing.remesh import remesh_target
from ..editing.results import CommitError, CommitResult, plural
from ..editing.session import COMMIT_KEY, EditSession, edit_labels, open_sessions, unwrap_viewer

__all__ = ["EditLabelsWidget", "QtPrompt", "QT_PROMPT", "commit_in_background", "ask_unsaved"]

log = logging.getLogger("napari_precomputed")

_MI = 1024 * 1024
_ERROR_STYLE = "color: #e05555;"


# -- dialogs (module functions, so tests can replace them) ------------------------------------


def _parent(viewer: Any) -> Any:
    window = getattr(viewer, "window", None)
    return getattr(window, "_qt_window", None)


def ask_unsaved(viewer: Any, message: str) -> str:
    """Ask what to do with uncommitted edits: ``"commit"``, ``"discard"`` or ``"cancel"``."""
    from qtpy.QtWidgets import QMessageBox

    box = QMessageBox(_parent(viewer))
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle("Uncommitted label edits")
    box.setText(message)
    commit = box.addButton("Commit", QMessageBox.ButtonRole.AcceptRole)
    discard = box.addButton("Discard", QMessageBox.ButtonRole.DestructiveRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(commit)
    box.exec()
    clicked = box.clickedButton()
    if clicked is commit:
        return "commit"
    if clicked is discard:
        return "discard"
    return "cancel"


def ask_discard(viewer: Any, message: str) -> bool:
    """Confirm dropping edits."""
    from qtpy.QtWidgets import QMessageBox

    answer = QMessageBox.question(
        _parent(viewer),
        "Discard label edits",
        message,
        QMessageBox.StandardButton.Discard | QMessageBox.StandardButton.Cancel,
        QMessageBox.StandardButton.Cancel,
    )
    return answer == QMessageBox.StandardButton.Discard


def show_commit_error(viewer: Any, message: str) -> None:
    from qtpy.QtWidgets import QMessageBox

    QMessageBox.critical(_parent(viewer), "Commit failed", message)


# -- background commits -----------------------------------------------------------------------


class _Relay(QObject):
    """Carries calls from worker threads to the UI thread (queued signals)."""

    progressed = Signal(int, int)
    changed = Signal()


_running: dict[int, Any] = {}


def commit_in_background(
    session: EditSession,
    *,
    downsample: bool | None = None,
    close_after: bool = False,
    on_done: Any = None,
) -> Any:
    """Commit ``session`` in a worker thread with a progress bar; returns the worker.

    On the UI thread afterwards: refresh the layers, report the result (or the error:
    the edits stay in the session), call ``on_done(result_or_exception)``, and with
    ``close_after`` remove the layer once everything is stored.
    """
    from napari.qt.threading import create_worker
    from napari.utils import progress as progress_bar
    from napari.utils.notifications import show_error, show_info

    if id(session) in _running:
        return _running[id(session)]
    pbar = progress_bar(total=0, desc=f"Committing {session.layer.name}")
    relay = _Relay()

    def on_progress(done: int, total: int) -> None:
        if pbar.total != total:
            pbar.total = total
        if done > pbar.n:
            pbar.update(done - pbar.n)

    relay.progressed.connect(on_progress)

    def work() -> CommitResult:
        return session.commit_in_thread(relay.progressed.emit, downsample=downsample)

    worker = create_worker(work, _ignore_errors=True)

    def returned(result: CommitResult) -> None:
        session.refresh()
        show_info(f"{session.layer.name}: {result.summary()}")
        if on_done is not None:
            on_done(result)
        if close_after and not session.dirty_chunks and session.viewer is not None:
            if session.layer in session.viewer.layers:
                session.viewer.layers.remove(session.layer)

    def errored(error: BaseException) -> None:
        session.refresh()
        show_error(str(error))
        if on_done is not None:
            on_done(error)

    def finished() -> None:
        pbar.close()
        _running.pop(id(session), None)
        relay.deleteLater()

    worker.returned.connect(returned)
    worker.errored.connect(errored)
    worker.finished.connect(finished)
    worker._relay = relay  # keep the relay alive as long as the worker
    _running[id(session)] = worker
    worker.start()
    return worker


def run_blocking_commit(viewer: Any, session: EditSession) -> CommitResult:
    """Commit while keeping the window painted (used when it is about to close)."""
    from qtpy.QtWidgets import QApplication

    out: dict[str, Any] = {}

    def work() -> None:
        try:
            out["result"] = session.commit_in_thread()
        except BaseException as e:  # handed to the UI thread below
            out["error"] = e

    t = threading.Thread(target=work, name="precomputed-commit", daemon=True)
    t.start()
    while t.is_alive():
        QApplication.processEvents()
        t.join(0.02)
    session.refresh()
    if "error" in out:
        err = out["error"]
        raise err if isinstance(err, CommitError) else CommitError(str(err), err)
    return out["result"]


class _CloseFilter(QObject):
    """Asks about uncommitted edits when the main window is asked to close."""

    def __init__(self, may_close: Callable[[], bool], parent: QObject) -> None:
        super().__init__(parent)
        self._may_close = may_close

    def eventFilter(self, obj: QObject | None, event: QEvent | None) -> bool:  # noqa: N802 (Qt API)
        if event is None:
            return False
        if event.type() == QEvent.Type.Close and not self._may_close():
            event.ignore()
            return True
        return False


def install_close_filter(viewer: Any, may_close: Callable[[], bool]) -> None:
    """Ask ``may_close()`` before the viewer's main window closes."""
    qt_window = viewer.window._qt_window
    filt = _CloseFilter(may_close, qt_window)
    qt_window.installEventFilter(filt)
    qt_window._precomputed_close_filter = filt


# -- the prompt -------------------------------------------------------------------------------


class QtPrompt:
    """The unsaved-edit policy's :class:`~napari_precomputed.editing.policy.Prompt` in a
    Qt viewer: dialogs, worker-thread commits and the close filter. Each method calls
    this module's function of the same job (looked up when called, so tests can
    replace the dialogs)."""

    def ask_unsaved(self, viewer: Any, message: str) -> policy.Choice:
        return ask_unsaved(viewer, message)  # type: ignore[return-value]

    def show_error(self, viewer: Any, message: str) -> None:
        show_commit_error(viewer, message)

    def commit_in_background(self, session: Any, *, close_after: bool = False) -> None:
        commit_in_background(session, close_after=close_after)

    def commit_blocking(self, viewer: Any, session: Any) -> None:
        run_blocking_commit(viewer, session)

    def later(self, callback: Callable[[], None]) -> None:
        QTimer.singleShot(0, callback)

    def guard_close(self, viewer: Any, may_close: Callable[[], bool]) -> None:
        install_close_filter(viewer, may_close)


#: The Qt prompt, registered with the policy on import.
QT_PROMPT = QtPrompt()
policy.register_prompt(QT_PROMPT)


# -- the widget -------------------------------------------------------------------------------


class EditLabelsWidget(Container):
    """Open an editable region of a segmentation, watch its edits, commit or discard."""

    def __init__(self, napari_viewer: Any = None) -> None:
        super().__init__(labels=True, scrollable=False)
        napari_viewer = unwrap_viewer(napari_viewer)  # plugin widgets get a proxy
        self.viewer = napari_viewer
        self.session: EditSession | None = None
        self.last_result: CommitResult | None = None
        self.last_error: BaseException | None = None
        self._worker: Any = None
        # Both die with the widget, so nothing calls into deleted Qt objects later.
        self._relay = _Relay(self.native)
        self._relay.changed.connect(self._schedule_update)
        self._timer = QTimer(self.native)
        self._timer.setSingleShot(True)
        self._timer.setInterval(100)
        self._timer.timeout.connect(self.update_status)
        self._known: set[int] = set()

        self.source = ComboBox(label="Segmentation", choices=self._source_choices, value=None)
        self.url = LineEdit(label="or URL / path", value="")
        self.url.native.setPlaceholderText("used when no layer is chosen")
        self.scale = ComboBox(label="Scale", choices=[("0", 0)], value=0)
        self.region_mode = RadioButtons(  # type: ignore[call-arg]  # magicgui: no `value` in **kwargs
            label="Region",
            choices=[("What is in view", "view"), ("Box", "box")],
            value="view",
            orientation="horizontal",
        )
        self.box = LineEdit(label="Box (voxels)", value="")
        self.box.native.setPlaceholderText("x0, x1, y0, y1, z0, z1")
        self.budget = SpinBox(
            label="Voxel budget (Mi)", value=DEFAULT_VOXEL_BUDGET // _MI, min=1, max=1 << 16
        )
        self.open_button = PushButton(text="Edit region")
        self.sessions = ComboBox(label="Edit layer", choices=self._session_choices, value=None)
        self.downsample = CheckBox(text="Update coarser scales", value=True)
        self.remesh = CheckBox(text="Re-mesh edited segments", value=False, enabled=False)
        self.remesh.tooltip = "On when the segmentation has multi-resolution meshes we can rewrite"
        self._remesh_checked: dict[int, tuple[bool, str]] = {}  # id(session) -> (can, why not)
        self._syncing_remesh = False
        self._read_only: dict[int, str | None] = {}  # id(session) -> why it cannot be written
        self._remesh_worker: Any = None
        self.commit_button = PushButton(text=f"Commit ({COMMIT_KEY})")
        self.discard_button = PushButton(text="Discard edits")
        self.save_path = LineEdit(label="New volume", value="")
        self.save_path.native.setPlaceholderText("a new local folder for a copy of the edits")
        self.save_button = PushButton(text="Save edits as a new volume")
        self.save_button.tooltip = (
            "Write the edited region to a new local volume with the source's geometry "
            "(for a source that cannot be written, or to keep a copy)"
        )
        self._save_worker: Any = None
        self.last_saved: str | None = None
        self.status = Label(label="Edits", value="")
        self.result = Label(label="", value="")
        for w in (self.status, self.result):
            w.native.setWordWrap(True)
        self.extend(
            [
                self.source,
                self.url,
                self.scale,
                self.region_mode,
                self.box,
                self.budget,
                self.open_button,
                self.sessions,
                self.downsample,
                self.remesh,
                self.commit_button,
                self.discard_button,
                self.save_path,
                self.save_button,
                self.status,
                self.result,
            ]
        )
        self.source.changed.connect(lambda *_: self._load_scales())
        self.url.native.editingFinished.connect(self._load_scales)
        self.region_mode.changed.connect(lambda *_: self._sync_enabled())
        self.open_button.changed.connect(lambda *_: self.open_session())
        self.commit_button.changed.connect(lambda *_: self.commit())
        self.discard_button.changed.connect(lambda *_: self.discard())
        self.save_button.changed.connect(lambda *_: self.save_as_new_volume())
        self.sessions.changed.connect(self._on_session_chosen)
        self.remesh.changed.connect(self._on_remesh_event)
        if napari_viewer is not None:
            events = napari_viewer.layers.events
            for name in ("inserted", "removed"):
                getattr(events, name).connect(self._reset_choices)
            napari_viewer.layers.selection.events.active.connect(self._on_active)
        self._pick_default_source()
        self._load_scales()
        self.update_status()

    # -- choices --------------------------------------------------------------------------
    def _source_choices(self, *_: Any) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = [("(URL below)", None)]
        if self.viewer is None:
            return out
        for layer in self.viewer.layers:
            meta = getattr(layer, "metadata", {}).get("precomputed")
            if (
                meta
                and meta.get("type") == "segmentation"
                and int(meta.get("num_channels", 1)) == 1
            ):
                out.append((layer.name, layer))
        return out

    def _pick_default_source(self) -> None:
        """With no layer chosen and no URL typed, take the active (or first) segmentation."""
        if self.source.value is not None or str(self.url.value).strip():
            return
        layers = [c for c in self.source.choices if c is not None]
        if not layers:
            return
        active = self.viewer.layers.selection.active if self.viewer is not None else None
        self.source.value = active if active in layers else layers[0]

    def _session_choices(self, *_: Any) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = [("(none)", None)]
        for s in open_sessions():
            if self.viewer is None or s.viewer is self.viewer:
                out.append((s.layer.name, s))
        return out

    def _reset_choices(self, *_: Any) -> None:
        self.source.reset_choices()
        self._pick_default_source()
        current = self.session
        self.sessions.reset_choices()
        if current is not None and not current.closed:
            self.sessions.value = current
        elif self.session is not None and self.session.closed:
            self.session = None
        self.update_status()

    def _on_active(self, event: Any) -> None:
        layer = getattr(event, "value", None)
        for s in open_sessions():
            if s.layer is layer and s is not self.session:
                self.sessions.value = s

    def _on_session_chosen(self, value: Any) -> None:
        self.session = value
        self._sync_remesh()
        self.update_status()

    # -- re-meshing -----------------------------------------------------------------------
    def _check_remesh(self, session: EditSession) -> None:
        """Whether the session's meshes can be rewritten: two small JSON reads, in a
        worker; the checkbox follows (default on when they can)."""
        from napari.qt.threading import create_worker

        key = id(session)
        if key in self._remesh_checked:
            self._sync_remesh()
            return

        def work() -> tuple[bool, str]:
            target, why = remesh_target(session.volume)
            return target is not None, why

        def returned(answer: tuple[bool, str]) -> None:
            self._remesh_checked[key] = answer
            if session.remesh is None:
                session.remesh = answer[0]
            self._sync_remesh()

        def errored(error: BaseException) -> None:
            returned((False, f"cannot read the meshes: {error}"))

        worker = create_worker(work, _ignore_errors=True)
        worker.returned.connect(returned)
        worker.errored.connect(errored)
        self._remesh_worker = worker  # kept alive until it reports
        worker.start()

    def _sync_remesh(self) -> None:
        s = self.session
        answer = self._remesh_checked.get(id(s)) if s is not None else None
        self._syncing_remesh = True
        try:
            if s is None or answer is None:
                self.remesh.enabled = False
                self.remesh.value = False
                self.remesh.tooltip = "Checking the meshes ..." if s is not None else None
                return
            can, why = answer
            self.remesh.enabled = can
            self.remesh.value = bool(can and s.remesh)
            self.remesh.tooltip = (
                "Regenerate the meshes of the segments each commit changes" if can
                else f"Not available: {why}"
            )  # fmt: skip
        finally:
            self._syncing_remesh = False

    def _on_remesh_event(self, *_: Any) -> None:
        if not self._syncing_remesh:
            self._on_remesh()

    def _on_remesh(self) -> None:
        if self.session is not None and self.remesh.enabled:
            self.session.remesh = bool(self.remesh.value)

    def _load_scales(self) -> None:
        """Fill the scale list from the chosen layer's volume or the URL's info."""
        meta = None
        layer = self.source.value
        try:
            if layer is not None:
                meta = next(iter(layer_volumes(layer).values())).metadata
            elif str(self.url.value).strip():
                vol = precomputed.open(str(self.url.value).strip())
                meta = vol.metadata
        except (PrecomputedError, OSError, ValueError) as e:
            self._set_result(f"Cannot read that volume: {e}", error=True)
        choices: list[tuple[str, int]] = [("0", 0)]
        if meta is not None:
            choices = [
                (f"{i}: {s.key} ({' x '.join(f'{r:g}' for r in s.resolution)} nm)", i)
                for i, s in enumerate(meta.scales)
            ]
        self.scale.choices = choices
        self.scale.value = choices[0][1]
        self._sync_enabled()

    def _sync_enabled(self) -> None:
        box = self.region_mode.value == "box"
        self.box.enabled = box
        self.budget.enabled = not box

    # -- actions --------------------------------------------------------------------------
    def region(self) -> Any:
        """The region typed into the box (None: what is in view)."""
        if self.region_mode.value != "box":
            return None
        text = str(self.box.value).replace(";", ",")
        try:
            v = [int(float(p)) for p in text.split(",") if p.strip()]
        except ValueError:
            v = []
        if len(v) != 6:
            raise ValueError("the box needs six integers: x0, x1, y0, y1, z0, z1")
        return ((v[0], v[1]), (v[2], v[3]), (v[4], v[5]))

    def open_session(self) -> EditSession | None:
        """Open the chosen region for editing (adds the edit layer)."""
        source = self.source.value
        if source is None:
            source = str(self.url.value).strip()
            if not source:
                self._set_result("Choose a segmentation layer or type a URL", error=True)
                return None
        try:
            session = edit_labels(
                self.viewer,
                source,
                region=self.region(),
                scale_index=int(self.scale.value or 0),
                budget=int(self.budget.value) * _MI,
                downsample=bool(self.downsample.value),
            )
        except (PrecomputedError, OSError, ValueError) as e:
            self._set_result(f"Cannot open for editing: {e}", error=True)
            return None
        self._adopt(session)
        return session

    def _adopt(self, session: EditSession) -> None:
        if id(session) not in self._known:
            self._known.add(id(session))
            callback = self._relay.changed.emit
            session.changed.connect(callback)
            # The widget can go first (its dock closed): stop notifying it then.
            self.native.destroyed.connect(lambda *_: session.changed.disconnect(callback))
        session.commit_handler = self._commit_session
        self.session = session
        self._check_remesh(session)
        self.sessions.reset_choices()
        self.sessions.value = session
        r = session.region
        box = ", ".join(f"{a}-{b}" for a, b in zip(r.start, r.stop, strict=True))
        why = self.read_only(session)
        if why is not None:
            if not str(self.save_path.value).strip():
                self.save_path.value = suggest_copy_path(session.volume, r)
            self._set_result(
                f"Read-only source: {why}. Edits of x, y, z {box} (scale "
                f"{session.volume.scale.key}) cannot be committed to it: save them as a new "
                "volume below.",
                error=True,
            )
        else:
            self._set_result(f"Editing x, y, z {box} of scale {session.volume.scale.key}")
        self.update_status()

    def read_only(self, session: EditSession | None = None) -> str | None:
        """Why the (current) session's source can never be written; None if it can."""
        s = session if session is not None else self.session
        if s is None:
            return None
        if id(s) not in self._read_only:  # checked once per session
            self._read_only[id(s)] = read_only_reason(s.volume)
        return self._read_only[id(s)]

    def save_as_new_volume(self, destination: str | None = None) -> bool:
        """Write the current session's region (with its edits) as a new volume, in a
        worker; False if there is nothing to save or no destination."""
        from napari.qt.threading import create_worker

        s = self.session
        if s is None or self._save_worker is not None:
            return False
        dest = (destination or str(self.save_path.value)).strip()
        if not dest:
            self._set_result("Type a folder for the new volume first", error=True)
            return False
        self.save_path.value = dest
        self.save_button.enabled = False
        self._set_result(f"Saving the edited region to {dest} ...")

        def returned(_vol: Any) -> None:
            self.last_saved = dest
            self._set_result(
                f"Saved the edited region as a new volume at {dest} (the source's geometry; "
                "open it with File > Open Folder...)."
            )

        def errored(error: BaseException) -> None:
            if isinstance(error, FileExistsError):
                text = (
                    f"{dest} already holds a volume; it was left as it is. Choose another "
                    "folder for the new volume."
                )
            else:
                text = f"Could not save the new volume at {dest}: {error}"
            self._set_result(text, error=True)

        def finished() -> None:
            self._save_worker = None
            self.update_status()

        worker = create_worker(save_edits_as_volume, s, dest, _ignore_errors=True)
        worker.returned.connect(returned)
        worker.errored.connect(errored)
        worker.finished.connect(finished)
        self._save_worker = worker
        worker.start()
        return True

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def commit(self) -> bool:
        """Commit the current session in a worker thread; False if there is nothing to do."""
        if self.session is None or self.busy:
            return False
        return self._commit_session(self.session)

    def _commit_session(self, session: EditSession) -> bool:
        if self.busy:
            return False
        self._adopt(session)
        self.last_error = None
        self.commit_button.enabled = False
        self.status.value = "Committing ..."
        self._worker = commit_in_background(
            session, downsample=bool(self.downsample.value), on_done=self._on_done
        )
        self._worker.finished.connect(self._on_finished)
        return True

    def _on_done(self, outcome: Any) -> None:
        if isinstance(outcome, BaseException):
            self.last_error = outcome
            self._set_result(f"Failed: {outcome}", error=True)
        else:
            self.last_result = outcome
            remesh = outcome.remesh
            failed = remesh is not None and remesh.error is not None
            self._set_result(f"Last commit: {outcome.summary()}", error=failed)
            if failed:
                from napari.utils.notifications import show_warning

                name = self.session.layer.name if self.session is not None else "labels"
                show_warning(f"{name}: the edits were committed, but {remesh.summary()}")

    def _on_finished(self) -> None:
        self._worker = None
        self.commit_button.enabled = True
        self.update_status()

    def discard(self) -> bool:
        s = self.session
        if s is None or not s.dirty_chunks or s.committing:
            return False
        n = s.dirty_chunks
        question = f"Discard the edits in {n} chunk{plural(n)} of {s.layer.name!r}?"
        if not ask_discard(self.viewer, question):
            return False
        s.discard()
        self._set_result("Edits discarded")
        return True

    # -- status ---------------------------------------------------------------------------
    def _schedule_update(self) -> None:
        try:
            if not self._timer.isActive():
                self._timer.start()
        except RuntimeError:  # the widget is being deleted
            pass

    def update_status(self) -> None:
        s = self.session
        if s is None or s.closed:
            self.status.value = "No edit layer"
            self.commit_button.enabled = self.discard_button.enabled = False
            self.save_button.enabled = False
            return
        self.status.value = "Committing ..." if s.committing else s.status()
        writable = self.read_only(s) is None
        self.commit_button.enabled = writable and not self.busy and not s.committing
        self.discard_button.enabled = bool(s.dirty_chunks) and not s.committing
        self.save_button.enabled = self._save_worker is None and not s.committing

    def _set_result(self, text: str, error: bool = False) -> None:
        self.result.value = text
        self.result.native.setStyleSheet(_ERROR_STYLE if error else "")

"""What happens to uncommitted edits when their layer is removed or the viewer closes.

Edits are never dropped silently. With a user to ask (a viewer whose window is on
screen) a :class:`Prompt` asks: commit, discard or cancel. Without one, the headless
default decides from the session's ``on_unsaved`` setting or
``$NAPARI_PRECOMPUTED_UNSAVED_EDITS``: ``"commit"`` (the default) or ``"keep"`` (the
edits stay in the session, listed by ``open_sessions()``).

The prompt is an interface: this module imports no Qt. The Qt implementation lives in
:mod:`napari_precomputed.widgets.labels`, which registers itself here with
:func:`register_prompt`; the package registers a loader for it
(:func:`register_prompt_loader`) so that a session in a visible viewer finds it even
when no widget was opened.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

from .results import CommitError, plural

__all__ = [
    "Choice",
    "Outcome",
    "Prompt",
    "HEADLESS_POLICIES",
    "UNSAVED_ENV",
    "default_policy",
    "register_prompt",
    "register_prompt_loader",
    "registered_prompt",
    "prompt_for",
    "visible_window",
    "resolve_removed",
    "confirm_close",
    "notify",
]

log = logging.getLogger("napari_precomputed")

#: The user's answer about uncommitted edits.
Choice = Literal["commit", "discard", "cancel"]
#: What became of a session whose layer went away with uncommitted edits: ``"close"``
#: (nothing is left to lose: end the session), ``"keep"`` (hold the session and its
#: edits until it is closed) or ``"pending"`` (the prompt took over: the layer is put
#: back, and a commit may be running).
Outcome = Literal["close", "keep", "pending"]

#: Environment variable with the headless policy for uncommitted edits.
UNSAVED_ENV = "NAPARI_PRECOMPUTED_UNSAVED_EDITS"
#: The headless policies: commit the edits, or keep them in their session.
HEADLESS_POLICIES = ("commit", "keep")


class Prompt(Protocol):
    """A user who can be asked, and the user interface's side of sessions (the Qt
    implementation: :class:`napari_precomputed.widgets.labels.QtPrompt`).

    ``session`` arguments are :class:`~napari_precomputed.editing.session.EditSession`.
    """

    def ask_unsaved(self, viewer: Any, message: str) -> Choice:
        """Ask what to do with uncommitted edits."""

    def show_error(self, viewer: Any, message: str) -> None:
        """Report a failed commit."""

    def commit_in_background(self, session: Any, *, close_after: bool = False) -> None:
        """Commit without blocking the interface; with ``close_after`` remove the
        session's layer once everything is stored."""

    def commit_blocking(self, viewer: Any, session: Any) -> None:
        """Commit while the interface stays painted; raises :class:`CommitError`."""

    def later(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the interface's thread once the current event is done."""

    def guard_close(self, viewer: Any, may_close: Callable[[], bool]) -> None:
        """Ask ``may_close()`` before the viewer's window closes (False vetoes it)."""


class _Unsaved(Protocol):
    """What the policy needs of an edit session."""

    viewer: Any
    layer: Any
    on_unsaved: str | None
    transaction: Any

    @property
    def dirty_chunks(self) -> int: ...

    def commit(self) -> Any: ...


_prompt: Prompt | None = None
_loader: Callable[[], Prompt] | None = None


def register_prompt(prompt: Prompt | None) -> None:
    """Use ``prompt`` to ask about uncommitted edits in visible viewers (``None``: ask
    no one)."""
    global _prompt
    _prompt = prompt


def register_prompt_loader(loader: Callable[[], Prompt]) -> None:
    """``loader()`` imports and returns the prompt when one is first needed (so the Qt
    side is imported only where a Qt viewer exists)."""
    global _loader
    _loader = loader


def registered_prompt() -> Prompt | None:
    """The registered prompt (loading it if need be), or None."""
    global _prompt
    if _prompt is None and _loader is not None:
        try:
            _prompt = _loader()
        except Exception as e:  # pragma: no cover - Qt missing or broken
            log.debug("napari-precomputed: no prompt for unsaved edits: %s", e)
    return _prompt


def visible_window(viewer: Any) -> bool:
    """True when ``viewer`` has a Qt window on screen (a user who can be asked)."""
    window = getattr(viewer, "window", None)
    qt = getattr(window, "_qt_window", None) if window is not None else None
    try:
        return bool(qt is not None and qt.isVisible())
    except RuntimeError:  # the Qt object is gone
        return False


def prompt_for(viewer: Any) -> Prompt | None:
    """The prompt that asks about ``viewer``'s edits, or None when no one can be asked
    (no window on screen): then the headless policy decides."""
    if not visible_window(viewer):
        return None
    return registered_prompt()


def default_policy() -> str:
    """The headless policy for uncommitted edits: ``$NAPARI_PRECOMPUTED_UNSAVED_EDITS``
    (``commit`` or ``keep``), default ``commit``."""
    value = os.environ.get(UNSAVED_ENV, "commit").strip().lower()
    if value not in HEADLESS_POLICIES:
        log.warning("%s=%r is not one of %s: using 'commit'", UNSAVED_ENV, value,
                    HEADLESS_POLICIES)  # fmt: skip
        return "commit"
    return value


def notify(message: str) -> None:
    """Log ``message`` and show it in napari's notifications."""
    log.warning(message)
    try:
        from napari.utils.notifications import show_warning

        show_warning(message)
    except Exception:  # pragma: no cover - napari shutting down
        pass


def resolve_removed(session: _Unsaved, removed_index: int | None) -> Outcome:
    """``session``'s layer is going away (removed from the viewer at ``removed_index``,
    or ``None``: the session is being closed) with uncommitted edits."""
    viewer = session.viewer
    prompt = prompt_for(viewer)
    if prompt is not None:
        n = session.dirty_chunks
        choice = prompt.ask_unsaved(
            viewer,
            f"The layer {session.layer.name!r} has uncommitted edits in {n} "
            f"chunk{plural(n)}. Commit them before it is removed?",
        )
        if choice == "discard":
            session.transaction.discard()
            return "close"

        def commit() -> None:
            prompt.commit_in_background(session, close_after=True)

        then = commit if choice == "commit" else None
        if removed_index is not None:
            layer = session.layer

            def put_back() -> None:
                if layer not in viewer.layers:
                    viewer.layers.insert(min(removed_index, len(viewer.layers)), layer)
                if then is not None:
                    then()

            prompt.later(put_back)  # once the removal event has finished
        elif then is not None:
            then()
        return "pending"
    policy = session.on_unsaved or default_policy()
    if policy == "commit":
        try:
            result = session.commit()
        except CommitError as e:
            notify(f"{e} (the session is kept: napari_precomputed.open_sessions())")
            return "keep"
        log.info("napari-precomputed: committed %s before closing: %s", session.layer.name,
                 result.summary())  # fmt: skip
        return "close"
    notify(
        f"{session.layer.name!r} has {session.dirty_chunks} uncommitted edited chunks: kept "
        "in its session (napari_precomputed.open_sessions()); call session.commit()"
    )
    return "keep"


def confirm_close(viewer: Any, sessions: Sequence[_Unsaved]) -> bool | None:
    """The viewer is about to close with ``sessions`` holding uncommitted edits: ask
    once for all of them. Returns whether the viewer may close, or None when no one can
    be asked (each session then follows :func:`resolve_removed`'s headless policy)."""
    prompt = prompt_for(viewer)
    if prompt is None:
        return None
    n = sum(s.dirty_chunks for s in sessions)
    names = ", ".join(repr(s.layer.name) for s in sessions)
    choice = prompt.ask_unsaved(
        viewer,
        f"{names} ha{'s' if len(sessions) == 1 else 've'} uncommitted edits in {n} "
        f"chunk{plural(n)}. Commit them before closing?",
    )
    if choice == "cancel":
        return False
    if choice == "discard":
        for s in sessions:
            s.transaction.discard()
        return True
    for s in sessions:
        try:
            prompt.commit_blocking(viewer, s)
        except CommitError as e:
            prompt.show_error(viewer, str(e))
            return False
    return True

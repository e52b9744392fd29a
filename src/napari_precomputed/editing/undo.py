"""Dirty state that follows undo and redo.

napari's undo writes the old labels back through the edit layer's data, so the chunks
stay in the session's transaction although they hold what is stored again, and the dock
went on saying "2 edited chunks". After every undo and redo, :func:`forget_undone`
compares each dirty chunk with the stored one and drops those that are equal again
(:meth:`precomputed.Transaction.replace`, which leaves a chunk that another write changed
meanwhile alone); redo makes them dirty again through the same data writes.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from precomputed.readpath import fetch

__all__ = ["follow_undo", "forget_undone"]

log = logging.getLogger("napari_precomputed")


def forget_undone(session: Any) -> int:
    """Drop the session's dirty chunks that equal the stored chunk again; returns how
    many. Emits ``session.changed`` when any was dropped."""
    txn = session.transaction
    handle = session.volume.handle
    positions = txn.dirty_positions().get(handle, [])
    if not positions:
        return 0
    current = {p: txn.get(handle, p) for p in positions}
    stored: dict[tuple[int, int, int], np.ndarray | None] = {}
    try:
        fetch(handle, positions, None, stored.__setitem__, fill_missing=True)
    except Exception as e:  # the store cannot tell: the chunks stay dirty (safe)
        log.debug("napari-precomputed: cannot compare undone chunks with storage: %s", e)
        return 0
    dropped = 0
    for p in positions:
        chunk = current[p]
        if chunk is None or p not in stored:
            continue
        old = stored[p]  # None: not stored, i.e. all fill value (0)
        if not (np.array_equal(chunk, old) if old is not None else not np.any(chunk)):
            continue
        if txn.replace(handle, p, chunk, None):
            dropped += 1
    if dropped:
        session.changed.emit()
    return dropped


def follow_undo(session: Any) -> None:
    """Make the session's layer forget undone chunks after each ``undo``/``redo``."""
    layer = session.layer
    for name in ("undo", "redo"):
        original = getattr(layer, name, None)
        if original is None:  # pragma: no cover - napari without undo
            continue

        def step(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            out = _original(*args, **kwargs)
            forget_undone(session)
            return out

        setattr(layer, name, step)

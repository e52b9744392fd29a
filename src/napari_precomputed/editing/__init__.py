"""Label editing: edit sessions over a region of a segmentation, committed through a
driver transaction, and the policy for uncommitted edits. No Qt here: the widgets
(:mod:`napari_precomputed.widgets`) import this package, never the other way round.

* :mod:`.editable` -- :class:`EditableArray`, the edit layer's data.
* :mod:`.region` -- the region a session opens (checked, or what is in view).
* :mod:`.results` -- :class:`CommitResult`, :class:`ChunkConflict`, :class:`CommitError`.
* :mod:`.policy` -- uncommitted edits when a layer is removed or the viewer closes, behind
  the :class:`~.policy.Prompt` interface.
* :mod:`.session` -- :class:`EditSession`, :func:`edit_labels`, :func:`open_sessions`.
"""

from .editable import EditableArray
from .policy import Prompt, register_prompt
from .region import DEFAULT_VOXEL_BUDGET, check_region, view_region
from .results import ChunkConflict, CommitError, CommitResult
from .session import COMMIT_KEY, EditSession, edit_labels, open_sessions

__all__ = [
    "COMMIT_KEY",
    "DEFAULT_VOXEL_BUDGET",
    "ChunkConflict",
    "CommitError",
    "CommitResult",
    "EditSession",
    "EditableArray",
    "Prompt",
    "check_region",
    "edit_labels",
    "open_sessions",
    "register_prompt",
    "view_region",
]

"""napari plugin for Neuroglancer Precomputed volumes.

Opens any volume (local directory or URL) as one lazy multiscale layer: an Image, or a
Labels layer for segmentations, placed in nanometres. See docs/napari.md.
"""

from ._array import PREFETCH, LevelArray, PrefetchSettings, prefetch_idle
from ._reader import get_reader, read_volume
from ._sample_data import make_sample_data
from ._writer import write_image, write_labels
from .editing import CommitError, CommitResult, EditSession, edit_labels, open_sessions
from .editing.policy import Prompt, register_prompt_loader
from .preferences import folder_preferences, forget_folder_preference, prefer_for_folders
from .segments import SegmentView, segment_view, show_segments
from .segments.background import Poster, register_poster_loader

__all__ = [
    "CommitError",
    "CommitResult",
    "EditSession",
    "LevelArray",
    "PREFETCH",
    "PrefetchSettings",
    "prefetch_idle",
    "edit_labels",
    "open_sessions",
    "SegmentView",
    "segment_view",
    "show_segments",
    "get_reader",
    "prefer_for_folders",
    "forget_folder_preference",
    "folder_preferences",
    "make_sample_data",
    "read_volume",
    "write_image",
    "write_labels",
]


def _qt_prompt() -> Prompt:
    """The Qt prompt for uncommitted edits, imported only when a visible viewer has some
    (editing/ never imports the widgets; the widgets register it themselves too)."""
    from .widgets.labels import QT_PROMPT

    return QT_PROMPT


register_prompt_loader(_qt_prompt)


def _qt_poster() -> Poster:
    """The Qt poster of background mesh fetches, imported only for a Qt viewer."""
    from .widgets.segments import qt_poster

    return qt_poster()


register_poster_loader(_qt_poster)

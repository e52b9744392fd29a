"""*File > IO Utilities > Open volume folders without asking...*: the one-time folder
preference of :mod:`napari_precomputed.preferences`, chosen in a folder dialog."""

from __future__ import annotations

from typing import Any

from ..preferences import prefer_for_folders

__all__ = ["choose_volume_folders", "ask_folder"]


def ask_folder(parent: Any = None) -> str:
    """The folder the user picks ("" if cancelled); tests replace this function."""
    from qtpy.QtWidgets import QFileDialog

    return QFileDialog.getExistingDirectory(
        parent, "Open every folder under this one with Neuroglancer Precomputed"
    )


def choose_volume_folders() -> str | None:
    """Ask for the folder that holds the user's volumes and register the preference;
    returns the pattern (None if cancelled) and says what it did."""
    from napari.utils.notifications import show_info

    folder = ask_folder()
    if not folder:
        return None
    pattern = prefer_for_folders(folder)
    show_info(
        f"Folders under {folder} now open with Neuroglancer Precomputed without asking "
        f"(napari's reader preference {pattern!r}; File > Preferences > Plugins lists it)."
    )
    return pattern

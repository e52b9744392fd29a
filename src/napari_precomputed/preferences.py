"""Open volume folders with this plugin without napari asking which reader to use.

A folder can be read by several plugins (napari's builtins, napari-ome-zarr, this one),
so napari asks every time one is dropped or opened, and its "Remember this choice"
stores only that exact folder. napari matches its reader preferences
(``settings.plugins.extension2reader``) as shell patterns against a folder's real path
followed by ``/``; it cannot look inside a folder for an ``info`` file. The one-time
setting this module registers is such a pattern:

* ``prefer_for_folders("/data/em")``: every folder under ``/data/em`` opens with this
  plugin (the pattern ``/data/em/*/``); the narrow, recommended choice;
* ``prefer_for_folders()``: every folder anywhere (``*/``). A folder that is not a
  volume is then refused by this plugin first, and napari offers the other readers.

The preference is napari's own setting (saved with napari's settings, listed under
*File > Preferences > Plugins*); :func:`forget_folder_preference` removes it.
"""

from __future__ import annotations

import os

__all__ = [
    "PLUGIN",
    "ALL_FOLDERS",
    "folder_pattern",
    "prefer_for_folders",
    "forget_folder_preference",
    "folder_preferences",
]

PLUGIN = "napari-precomputed"
#: The pattern that matches every folder.
ALL_FOLDERS = "*" + os.sep


def folder_pattern(under: str | os.PathLike[str] | None = None) -> str:
    """napari's preference pattern for every folder under ``under`` (None: anywhere)."""
    if under is None:
        return ALL_FOLDERS
    root = os.path.realpath(os.path.expanduser(os.fspath(under)))
    return os.path.join(root, "*") + os.sep


def prefer_for_folders(under: str | os.PathLike[str] | None = None) -> str:
    """Make napari open folders under ``under`` (None: all folders) with this plugin,
    without asking; returns the pattern registered."""
    from napari.settings import get_settings

    plugins = get_settings().plugins
    pattern = folder_pattern(under)
    plugins.extension2reader = {**plugins.extension2reader, pattern: PLUGIN}
    return pattern


def forget_folder_preference(under: str | os.PathLike[str] | None = None) -> bool:
    """Remove the preference :func:`prefer_for_folders` registered; False if none was."""
    from napari.settings import get_settings

    plugins = get_settings().plugins
    pattern = folder_pattern(under)
    if plugins.extension2reader.get(pattern) != PLUGIN:
        return False
    plugins.extension2reader = {
        k: v for k, v in plugins.extension2reader.items() if k != pattern
    }
    return True


def folder_preferences() -> list[str]:
    """The folder patterns napari's preferences give to this plugin."""
    from napari.settings import get_settings

    return [
        pattern
        for pattern, plugin in get_settings().plugins.extension2reader.items()
        if plugin == PLUGIN and pattern.endswith(os.sep)
    ]

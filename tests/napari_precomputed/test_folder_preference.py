"""A volume folder opens with this plugin without napari asking, once the one-time
folder preference is set (napari's own ``extension2reader``), and only then."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import napari_precomputed
from napari_precomputed import folder_preferences, forget_folder_preference, prefer_for_folders
from napari_precomputed.widgets import folders as _folders

PLUGIN = "napari-precomputed"


@pytest.fixture
def viewer_model() -> Any:
    """A viewer without Qt, with our plugin known to npe2. Not the shared fixture's
    ``_initialize_plugins()``: that also registers the commands in napari's app model,
    which a later ``make_napari_viewer`` teardown makes fail when it runs again."""
    from napari.components import ViewerModel
    from npe2 import PluginManager

    PluginManager.instance().discover()
    return ViewerModel()


@pytest.fixture(autouse=True)
def settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """napari's settings for this test only (never the user's settings file)."""
    import napari.settings
    from napari.settings import NapariSettings

    fresh = NapariSettings(config_path=tmp_path / "settings.yaml")
    monkeypatch.setattr(napari.settings, "_SETTINGS", fresh)
    return fresh


def test_without_the_preference_napari_asks(viewer_model: Any, pyramid_volume: Any) -> None:
    from napari.errors import MultipleReaderError

    vol = pyramid_volume("asks")
    with pytest.raises(MultipleReaderError):  # what makes napari's window ask
        viewer_model.open(str(vol), plugin=None)


def test_with_the_preference_a_volume_folder_opens_without_plugin(
    viewer_model: Any, pyramid_volume: Any, tmp_path: Path, settings: Any
) -> None:
    vol = pyramid_volume("em")
    pattern = prefer_for_folders(vol.parent)
    assert pattern == os.path.join(os.path.realpath(vol.parent), "*") + os.sep
    assert settings.plugins.extension2reader[pattern] == PLUGIN
    assert (tmp_path / "settings.yaml").exists()  # napari saved its own setting
    [layer] = viewer_model.open(str(vol), plugin=None)  # what drag and drop passes
    assert layer.name == "em" and layer.multiscale
    # A folder elsewhere still goes through napari's choice.
    assert folder_preferences() == [pattern]
    assert forget_folder_preference(vol.parent) and folder_preferences() == []
    assert not forget_folder_preference(vol.parent)


def test_all_folders_preference_refuses_other_folders_so_napari_offers_the_rest(
    viewer_model: Any, pyramid_volume: Any, tmp_path: Path
) -> None:
    from napari.errors import ReaderPluginError

    vol = pyramid_volume("anywhere")
    assert prefer_for_folders() == "*" + os.sep
    [layer] = viewer_model.open(str(vol), plugin=None)
    assert layer.name == "anywhere"
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("not a volume")
    with pytest.raises(ReaderPluginError) as err:  # napari's window then offers the others
        viewer_model.open(str(plain), plugin=None)
    assert err.value.reader_plugin == PLUGIN


def test_the_menu_command_registers_the_chosen_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(_folders, "ask_folder", lambda parent=None: str(tmp_path))
    pattern = _folders.choose_volume_folders()
    assert pattern is not None and pattern in folder_preferences()
    monkeypatch.setattr(_folders, "ask_folder", lambda parent=None: "")
    assert _folders.choose_volume_folders() is None
    assert napari_precomputed.prefer_for_folders is prefer_for_folders

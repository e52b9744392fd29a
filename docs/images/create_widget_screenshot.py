"""Regenerate docs/images/create-widget.png: napari at 1600x1000 with the create widget docked.

Run under a display (``xvfb-run -a -s "-screen 0 1600x1000x24" python
docs/images/create_widget_screenshot.py``); prints the sizes it measured.
"""

from __future__ import annotations

import sys
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

OUT = Path(__file__).with_name("create-widget.png")


def main() -> None:
    viewer = napari.Viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1600, 1000)
    dock, widget = viewer.window.add_plugin_dock_widget("napari-precomputed", "Create volume")
    widget.set_values(destination="/data/em/new-volume", size="2048, 2048, 512",
                      resolution="8, 8, 40", levels=3)  # fmt: skip
    for _ in range(50):
        QApplication.processEvents()
    print("window", window.size().width(), "x", window.size().height())
    hint = dock.minimumSizeHint()
    print("dock minimum size hint", hint.width(), "x", hint.height())
    form = widget.form.native.minimumSizeHint()
    print("form (scrolled) minimum size hint", form.width(), "x", form.height())
    window.grab().save(str(OUT))
    print("saved", OUT)
    viewer.close()


if __name__ == "__main__":
    main()
    sys.exit(0)

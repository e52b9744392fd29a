"""What napari finds in an installed napari-precomputed: run in the venv the wheel went into.

napari discovers plugins through npe2's plugin manager (entry point ``napari.manifest``);
this script asks it as napari does, asserts that every contribution kind of the manifest is
registered under the plugin's name and that each command imports, then uses the reader,
both writers and the sample data through npe2 on small data. Usage: check_dist.py VERSION
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from npe2 import PluginManager, read, write
from npe2.manifest.utils import import_python_name

NAME = "napari-precomputed"


def main(version: str) -> None:
    pm = PluginManager.instance()
    pm.discover()  # what napari does at start-up
    manifest = pm.get_manifest(NAME)  # KeyError if the entry point is not installed
    assert manifest.package_version == version, (manifest.package_version, version)

    with tempfile.TemporaryDirectory() as tmp:
        volume = Path(tmp, "vol")
        # Writers: one for Image layers, one for Labels layers, both under this plugin.
        for kind in ("image", "labels"):
            writers = [w for w in pm.iter_compatible_writers([kind]) if w.plugin_name == NAME]
            assert writers, f"no {kind} writer registered for {NAME}"
        image = (np.arange(16 * 32 * 48) % 251).astype(np.uint8).reshape(16, 32, 48)
        written = write(str(volume), [(image, {"name": "em"}, "image")], plugin_name=NAME)
        assert written, "the image writer wrote nothing"
        labels = (image // 64).astype(np.uint32)
        write(str(Path(tmp, "seg")), [(labels, {"name": "seg"}, "labels")], plugin_name=NAME)

        # Reader: offered for a volume folder and for URLs, and it reads what was written.
        for path in (str(volume), "gs://bucket/volume", "precomputed://https://host/v"):
            readers = [r for r in pm.iter_compatible_readers([path]) if r.plugin_name == NAME]
            assert readers, f"no reader registered for {path}"
        for path, want, layer_type in ((volume, image, "image"), (Path(tmp, "seg"), labels, "labels")):
            (data, _meta, kind), *rest = read([str(path)], stack=False, plugin_name=NAME)
            assert not rest and kind == layer_type, (kind, rest)
            got = np.asarray(data[0] if isinstance(data, list) else data)
            assert np.array_equal(got, want), f"{path} read back differently"

        # Sample data: registered, and it opens an image and a segmentation.
        samples = dict(pm.iter_sample_data()).get(NAME, [])
        assert [s.key for s in samples] == ["em"], samples
        os.environ["PRECOMPUTED_SAMPLE_DIR"] = str(Path(tmp, "sample"))
        layers = pm.get_command(samples[0].command).exec()
        assert [t[2] for t in layers] == ["image", "labels"], [t[2] for t in layers]

    # Widgets: every one the manifest declares is discovered by napari.
    widgets = [w for w in pm.iter_widgets() if w.plugin_name == NAME]
    names = sorted(w.display_name for w in widgets)
    declared = sorted(w.display_name for w in manifest.contributions.widgets or ())
    assert names == declared and len(names) >= 3, (names, declared)

    # Every command of the manifest resolves to an importable callable.
    for command in manifest.contributions.commands or ():
        assert command.python_name, command.id
        assert callable(import_python_name(command.python_name)), command.python_name
    print(
        f"napari plugin {NAME} {version}: reader, 2 writers, {len(widgets)} widgets, "
        f"{len(samples)} sample, {len(manifest.contributions.commands or ())} commands: ok"
    )


if __name__ == "__main__":
    main(sys.argv[1])

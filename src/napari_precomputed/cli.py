"""The ``precomputed`` commands that need napari: ``view`` and ``demo``.

Registered through the ``precomputed.commands`` entry point group (pyproject.toml), so
the driver's command line (``precomputed.cli``) never imports napari. Importing this
module needs no napari either; the commands import it when they open a viewer.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from precomputed.cli import format_info

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add ``demo`` and ``view`` to the ``precomputed`` command's subparsers."""
    p = sub.add_parser("demo", help="generate the sample volume and open it in napari")
    p.add_argument("--dir", default=None, help="where to write the sample (default: cache)")
    p.add_argument("--no-viewer", action="store_true", help="print info and a slice instead")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("view", help="open volumes in napari")
    p.add_argument("urls", nargs="+")
    p.set_defaults(func=_cmd_view)


def _cmd_demo(args: argparse.Namespace) -> int:
    from precomputed.samples import sample_volumes

    image, seg = sample_volumes(args.dir)
    print(f"sample image:        {image}")
    print(f"sample segmentation: {seg}")
    if args.no_viewer:
        from precomputed.driver import open as open_volume

        for path in (image, seg):
            vol = open_volume(path)
            print(format_info(vol.metadata, path))
            z = vol.domain.inclusive_min[2] + vol.shape[2] // 2
            plane = vol[:, :, z, 0].read()
            print(
                f"z={z} plane: shape {plane.shape}, min {plane.min()}, max {plane.max()}, "
                f"{len(set(plane.ravel().tolist()))} distinct values"
            )
        return 0
    return _view([image, seg])


def _view(paths: Sequence[str]) -> int:
    try:
        import napari
    except ImportError:
        print("napari is not installed: pip install 'napari-precomputed[napari]'", file=sys.stderr)
        return 1
    viewer = napari.Viewer()
    for p in paths:
        viewer.open(p, plugin="napari-precomputed")
    napari.run()
    return 0


def _cmd_view(args: argparse.Namespace) -> int:
    return _view(args.urls)

"""Command line: ``precomputed info URL`` and ``precomputed --version``; the commands that
need napari (``precomputed view URL``, ``precomputed demo``) come from the plugin through
the ``precomputed.commands`` entry point group, so the driver never imports napari."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from functools import partial
from importlib.metadata import entry_points
from typing import Any

from .metadata import MultiscaleMetadata

__all__ = ["main", "format_info", "ENTRY_POINT_GROUP", "PLUGIN_COMMANDS"]


def format_info(meta: MultiscaleMetadata, url: str = "") -> str:
    """A readable table of a volume's scales."""
    m = meta
    lines = []
    if url:
        lines.append(url)
    lines.append(
        f"type: {m.type}   data_type: {m.data_type}   num_channels: {m.num_channels}   "
        f"scales: {len(m.scales)}"
    )
    header = [
        "#",
        "key",
        "size (xyz)",
        "voxel_offset",
        "resolution (nm)",
        "chunk",
        "encoding",
        "sharding",
    ]
    rows = [header]
    for i, s in enumerate(m.scales):
        enc = s.encoding
        if enc == "jpeg":
            enc += f" q{s.jpeg_quality}"
        elif enc == "compressed_segmentation":
            enc = "cseg " + "x".join(map(str, s.compressed_segmentation_block_size or ()))
        shard = "-"
        if s.sharding is not None:
            sd = s.sharding
            shard = f"{sd.hash} {sd.preshift_bits}/{sd.minishard_bits}/{sd.shard_bits}"
        rows.append(
            [
                str(i),
                s.key,
                "x".join(map(str, s.size)),
                ",".join(map(str, s.voxel_offset)),
                ",".join(f"{r:g}" for r in s.resolution),
                " ".join("x".join(map(str, c)) for c in s.chunk_sizes),
                enc,
                shard,
            ]
        )
    widths = [max(len(r[j]) for r in rows) for j in range(len(header))]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _cmd_info(args: argparse.Namespace) -> int:
    from .driver import read_info
    from .kvstore import open_kvstore
    from .spec import parse_spec

    req = parse_spec(args.url)
    kv = open_kvstore(req.kvstore, **(req.storage_options or {}))
    meta, _ = read_info(kv, req.path)
    if meta is None:
        print(f"error: no info file at {args.url}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(meta.to_json(), indent=2, sort_keys=True))
    else:
        print(format_info(meta, args.url))
    return 0


#: Commands the napari plugin provides (entry point group ``precomputed.commands``).
PLUGIN_COMMANDS = {"view": "open volumes in napari", "demo": "generate the sample volume and open it in napari"}
ENTRY_POINT_GROUP = "precomputed.commands"


def _plugin_commands(sub: Any) -> None:
    """Let installed plugins add their commands (``register(subparsers)``); stand-ins
    that say what to install for the ones that did not arrive."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            register = ep.load()
        except Exception as e:  # a broken plugin must not break `precomputed info`
            print(f"warning: could not load precomputed commands from {ep.value}: {e}", file=sys.stderr)
            continue
        register(sub)
    for name, help in PLUGIN_COMMANDS.items():
        if name not in sub.choices:
            p = sub.add_parser(name, help=f"{help} (needs the napari plugin)", add_help=False)
            p.add_argument("args", nargs=argparse.REMAINDER)
            p.set_defaults(func=partial(_missing_plugin, name))


def _missing_plugin(name: str, args: argparse.Namespace) -> int:
    print(
        f"error: `precomputed {name}` needs the napari plugin, which is not installed: "
        "pip install 'napari-precomputed[napari]'",
        file=sys.stderr,
    )
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(prog="precomputed", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="print a volume's scales as a table")
    p.add_argument("url", help="volume URL or path (gs://, s3://, https://, file://, path)")
    p.add_argument("--json", action="store_true", help="print the info JSON instead")
    p.set_defaults(func=_cmd_info)
    _plugin_commands(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as e:  # a CLI prints a clear message, not a traceback
        from .errors import PrecomputedError

        if isinstance(e, PrecomputedError):
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())

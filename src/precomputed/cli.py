"""Command line: ``precomputed info URL``, ``precomputed demo``, ``precomputed view URL``,
``precomputed --version``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["main", "format_info"]


def format_info(meta: object, url: str = "") -> str:
    """A readable table of a volume's scales."""
    m = meta  # MultiscaleMetadata
    lines = []
    if url:
        lines.append(url)
    lines.append(
        f"type: {m.type}   data_type: {m.data_type}   num_channels: {m.num_channels}   "  # type: ignore[attr-defined]
        f"scales: {len(m.scales)}"  # type: ignore[attr-defined]
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
    for i, s in enumerate(m.scales):  # type: ignore[attr-defined]
        enc = s.encoding
        if enc == "jpeg":
            enc += f" q{s.jpeg_quality}"
        elif enc == "compressed_segmentation":
            enc = "cseg " + "x".join(map(str, s.compressed_segmentation_block_size))
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


def _cmd_demo(args: argparse.Namespace) -> int:
    from .samples import sample_volumes

    image, seg = sample_volumes(args.dir)
    print(f"sample image:        {image}")
    print(f"sample segmentation: {seg}")
    if args.no_viewer:
        from .driver import open as open_volume

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


def main(argv: Sequence[str] | None = None) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(prog="precomputed", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="print a volume's scales as a table")
    p.add_argument("url", help="volume URL or path (gs://, s3://, https://, file://, path)")
    p.add_argument("--json", action="store_true", help="print the info JSON instead")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("demo", help="generate the sample volume and open it in napari")
    p.add_argument("--dir", default=None, help="where to write the sample (default: cache)")
    p.add_argument("--no-viewer", action="store_true", help="print info and a slice instead")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("view", help="open volumes in napari")
    p.add_argument("urls", nargs="+")
    p.set_defaults(func=_cmd_view)
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

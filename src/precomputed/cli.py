"""Command line for Neuroglancer Precomputed volumes.

  precomputed info URL            the scales as a table (sizes, chunks, sharding in words)
  precomputed convert SRC DST     TIFF / zarr / OME-Zarr / .npy into a new volume, or a scale to zarr
  precomputed copy SRC DST        a volume to another store (optionally re-encoded, resharded)
  precomputed downsample URL      add pyramid levels (mean or mode)
  precomputed create DST          a new empty volume from a JSON spec or flags

Each command is a thin layer over library functions (``precomputed.convert``,
``precomputed.copy``, ``precomputed.create``). Errors are one line; ``--debug`` shows the
traceback. The commands that need napari (``view``, ``demo``) come from the plugin through
the ``precomputed.commands`` entry point group, so the driver never imports napari.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from .metadata import MultiscaleMetadata, ScaleMetadata

__all__ = ["main", "build_parser", "format_info", "describe_sharding", "ENTRY_POINT_GROUP", "PLUGIN_COMMANDS"]


# ---------------------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------------------


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _grid(s: ScaleMetadata) -> tuple[int, int, int]:
    c = s.chunk_sizes[0]
    return tuple(-(-n // k) for n, k in zip(s.size, c, strict=True))  # type: ignore[return-value]


def describe_sharding(s: ScaleMetadata) -> str:
    """The scale's sharding in words: ``"-"`` (one file per chunk) or e.g. ``"32 shard
    files x 8 minishards"``."""
    from .reprs import sharding_in_words

    return sharding_in_words(s)


def _sharding_legend(meta: MultiscaleMetadata) -> list[str]:
    lines = []
    for i, s in enumerate(meta.scales):
        sd = s.sharding
        if sd is None:
            continue
        lines.append(
            f"  scale {i}: {sd.hash} hash, preshift_bits {sd.preshift_bits} (2^{sd.preshift_bits} "
            f"consecutive chunks share a minishard), minishard_bits {sd.minishard_bits}, "
            f"shard_bits {sd.shard_bits} (at most 2^{sd.shard_bits} shard files), index "
            f"{sd.minishard_index_encoding}, data {sd.data_encoding}"
        )
    if not lines:
        return []
    return [
        "sharding: chunks are packed into shard files (<key>/<n>.shard), each with a "
        "small index per minishard, so a volume is a few large files instead of one per chunk:",
        *lines,
    ]


def format_info(
    meta: MultiscaleMetadata, url: str = "", sizes: dict[int, tuple[int, int | None]] | None = None
) -> str:
    """A readable table of a volume's scales: geometry, voxels and chunk counts, encoding
    and sharding in words, with a legend for sharded scales. ``sizes`` (scale index →
    ``(objects, bytes or None)``) adds what is stored."""
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
        "voxels",
        "chunks",
        *(["objects", "on disk"] if sizes is not None else []),
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
        voxels = s.size[0] * s.size[1] * s.size[2]
        g = _grid(s)
        extra = []
        if sizes is not None:
            objects, nbytes = sizes.get(i, (0, None))
            extra = [str(objects), "?" if nbytes is None else _human_bytes(nbytes).replace(" ", "")]
        rows.append(
            [
                str(i),
                s.key,
                "x".join(map(str, s.size)),
                ",".join(map(str, s.voxel_offset)),
                ",".join(f"{r:g}" for r in s.resolution),
                " ".join("x".join(map(str, c)) for c in s.chunk_sizes),
                f"{voxels:,}",
                f"{g[0] * g[1] * g[2]:,}",
                *extra,
                enc,
                describe_sharding(s),
            ]
        )
    widths = [max(len(r[j]) for r in rows) for j in range(len(header))]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    lines.extend(_sharding_legend(m))
    return "\n".join(lines)


def _volume_location(url: str) -> tuple[Any, str, MultiscaleMetadata]:
    """The store, path and metadata of the volume at ``url``; a URL or path that names
    the ``info`` file itself (``vol/info``, as napari accepts) means its volume."""
    from .driver import read_info
    from .errors import NotFoundError
    from .kvstore import open_kvstore
    from .spec import parse_spec

    candidates = [url]
    stripped = url.rstrip("/")
    if stripped.endswith("/info") or stripped == "info":
        candidates.append(stripped[: -len("info")] or ".")
    for cand in candidates:
        req = parse_spec(cand)
        kv = open_kvstore(req.kvstore, **(req.storage_options or {}))
        meta, _ = read_info(kv, req.path)
        if meta is not None:
            return kv, req.path, meta
    raise NotFoundError(
        f"no volume at {url}: {kv.url}{req.path}info does not exist (give the volume's folder "
        "or URL, the one that holds the info file)"
    )


def _stored_sizes(kv: Any, path: str, meta: MultiscaleMetadata) -> dict[int, tuple[int, int | None]]:
    """Objects per scale (a listing) and, for local folders, their bytes."""
    from . import metadata as md

    out: dict[int, tuple[int, int | None]] = {}
    local = kv.url.startswith("file://")
    root = Path(kv.url.removeprefix("file://")) if local else None
    for i, s in enumerate(meta.scales):
        prefix = md.resolve_scale_key(path, s.key) + "/"
        keys = kv.list(prefix)
        nbytes: int | None = None
        if root is not None:
            nbytes = sum((root / k).stat().st_size for k in keys if (root / k).is_file())
        out[i] = (len(keys), nbytes)
    return out


def _cmd_info(args: argparse.Namespace) -> int:
    from .create import find_incomplete

    kv, path, meta = _volume_location(args.url)
    if args.json:
        print(json.dumps(meta.to_json(), indent=2, sort_keys=True))
    else:
        sizes = _stored_sizes(kv, path, meta) if args.sizes else None
        print(format_info(meta, args.url, sizes))
    marker = find_incomplete({"kvstore": kv.spec(), "path": path}, kvstore=kv)
    if marker is not None:
        print(
            f"error: {args.url} is INCOMPLETE: a creation or conversion did not finish "
            f"(scales {marker.get('scales', [])}); remove what it wrote with "
            "precomputed.create.discard_incomplete() and run it again",
            file=sys.stderr,
        )
        return 1
    return 0


# ---------------------------------------------------------------------------------------
# progress
# ---------------------------------------------------------------------------------------


@contextmanager
def _progress(args: argparse.Namespace, what: str) -> Iterator[Callable[[int, int], None] | None]:
    """A tqdm bar on stderr fed by the library's ``progress(done, total)`` (each stage of
    an operation restarts the count); none with ``--quiet``, or when stderr is not a
    terminal unless ``--progress``."""
    show = getattr(args, "progress", False) or (
        not getattr(args, "quiet", False) and sys.stderr.isatty()
    )
    if not show:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=0, desc=what, unit="block", file=sys.stderr, leave=True, disable=False)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------
# convert, copy, downsample, create
# ---------------------------------------------------------------------------------------


def _ints(text: str, n: int = 3, what: str = "value") -> list[int]:
    try:
        vals = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        vals = []
    if len(vals) != n:
        raise argparse.ArgumentTypeError(f"{what} must be {n} integers like 64,64,64, not {text!r}")
    if what != "--voxel-offset" and min(vals) < 1:
        raise argparse.ArgumentTypeError(f"{what} must be positive integers, not {text!r}")
    return vals


def _floats(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        vals = []
    if len(vals) != 3:
        raise argparse.ArgumentTypeError(f"must be 3 numbers (x, y, z) like 8,8,40, not {text!r}")
    return vals


def _sharding_arg(text: str) -> Any:
    if text in ("none", "auto"):
        return text
    try:
        spec = json.loads(Path(text).read_text() if Path(text).is_file() else text)
    except (ValueError, OSError) as e:
        raise argparse.ArgumentTypeError(
            f'--sharding is "none", "auto", a sharding JSON object or a file holding one ({e})'
        ) from e
    return spec


def _encoding_members(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(args, "jpeg_quality", None) is not None:
        out["jpeg_quality"] = args.jpeg_quality
    return out


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import describe, open_source, source_kind, to_zarr

    kind = source_kind(args.src)
    if args.to == "zarr" or (kind == "precomputed" and args.to is None):
        if kind != "precomputed":
            raise _usage(f"--to zarr exports a Precomputed volume; {args.src} is a {kind} source")
        with _progress(args, "to zarr") as progress:
            arr = to_zarr(
                str(_volume_url(args.src)), args.dst, scale=args.scale,
                zarr_format=args.zarr_format, ome=not args.no_ome, overwrite=args.overwrite,
                progress=progress,
            )
        _say(args, f"wrote {args.dst}: zarr v{args.zarr_format} array {tuple(arr.shape)} (c, z, y, x)")
        return 0
    from .convert import from_array
    from .create import supported_data_type

    src = open_source(args.src, args.axes, kind)
    _say(args, describe(src))
    notes = list(src.notes)
    if args.data_type is None:
        _, note = supported_data_type(src.dtype, segmentation=args.type == "segmentation")
        notes += [note] if note else []
    for note in notes:
        _say(args, f"note: {note}")
    client = None
    scheduler: Any = None
    if args.scheduler:
        scheduler, client = _scheduler(args.scheduler)
    try:
        with _progress(args, "convert") as progress:
            vol = from_array(
                src,
                args.dst,
                type=args.type,
                data_type=args.data_type,
                resolution=args.resolution,
                voxel_offset=args.voxel_offset,
                chunk_size=args.chunk_size,
                encoding=args.encoding,
                sharding=args.sharding,
                levels=args.levels,
                factor=args.factor,
                method=args.method,
                overwrite=args.overwrite,
                scheduler=scheduler,
                progress=progress,
                **_encoding_members(args),
            )
    finally:
        if client is not None:
            client.close()
    _say(args, f"wrote {args.dst}: {len(vol.metadata.scales)} scale(s), {vol.dtype} {vol.shape}")
    return 0


def _scheduler(spec: Sequence[str]) -> tuple[Any, Any]:
    """``threads``/``processes`` (dask's local schedulers) or ``distributed ADDRESS``."""
    name, *rest = spec
    if name in ("threads", "processes", "synchronous") and not rest:
        return name, None
    if name != "distributed" or len(rest) != 1:
        raise _usage(
            f"--scheduler is threads, processes, or distributed ADDRESS (e.g. tcp://host:8786), "
            f"given last on the line; not {' '.join(spec)!r}"
        )
    try:
        from dask.distributed import Client
    except ImportError as e:
        raise _usage(
            "--scheduler distributed needs dask.distributed: pip install 'napari-precomputed[dask]'"
        ) from e
    client = Client(rest[0], timeout=10)
    return client, client


def _volume_url(url: str) -> str:
    stripped = url.rstrip("/")
    if stripped.endswith("/info") and Path(stripped).is_file():
        return stripped[: -len("/info")]
    return url


def _cmd_copy(args: argparse.Namespace) -> int:
    from .copy import copy

    with _progress(args, "copy") as progress:
        result = copy(
            _volume_url(args.src),
            args.dst,
            encoding=args.encoding,
            jpeg_quality=args.jpeg_quality,
            sharding=args.sharding,
            chunk_size=args.chunk_size,
            overwrite=args.overwrite,
            progress=progress,
        )
    what = ", ".join(f"{v:,} {k}" for k, v in result.items())
    _say(args, f"copied {args.src} to {args.dst}: {what}")
    return 0


def _cmd_downsample(args: argparse.Namespace) -> int:
    from .create import build_pyramid
    from .driver import open as open_volume

    _, _, meta = _volume_location(args.url)
    source = len(meta.scales) - 1 if args.source is None else args.source
    vol = open_volume(_volume_url(args.url), scale_index=source)
    with _progress(args, "downsample") as progress:
        vols = build_pyramid(vol, args.levels, args.factor, method=args.method, progress=progress)
    for v in vols:
        _say(args, f"added scale {v.scale_index} ({v.scale.key}): size {'x'.join(map(str, v.scale.size))}")
    return 0


def _cmd_create(args: argparse.Namespace) -> int:
    from .create import create_volume

    if args.spec is not None:
        try:
            spec = json.loads(Path(args.spec).read_text())
        except (OSError, ValueError) as e:
            raise _usage(f"--spec {args.spec}: not a readable JSON file ({e})") from e
        if not isinstance(spec, dict) or "scale_metadata" not in spec:
            raise _usage(
                f"--spec {args.spec}: needs an object with multiscale_metadata and scale_metadata"
            )
        mm, sm = dict(spec.get("multiscale_metadata", {})), dict(spec["scale_metadata"])
    else:
        if args.size is None:
            raise _usage("give --spec FILE, or at least --size X,Y,Z (and --data-type)")
        mm = {"type": args.type, "data_type": args.data_type or "uint8", "num_channels": args.num_channels}
        sm = {
            "size": args.size,
            "resolution": args.resolution or [1.0, 1.0, 1.0],
            "voxel_offset": args.voxel_offset or [0, 0, 0],
            "chunk_size": args.chunk_size or [min(64, n) for n in args.size],
            "encoding": args.encoding,
            **_encoding_members(args),
        }
        if args.encoding == "compressed_segmentation":
            sm["compressed_segmentation_block_size"] = [8, 8, 8]
        if args.sharding == "auto":
            from .convert import auto_sharding

            auto = auto_sharding(sm["size"], sm["chunk_size"], args.encoding)
            if auto is not None:
                sm["sharding"] = auto
        elif args.sharding not in (None, "none"):
            sm["sharding"] = args.sharding
    vol = create_volume(args.dst, mm, sm, levels=args.levels, delete_existing=args.overwrite)
    _say(args, f"created {args.dst}: {mm.get('type', 'image')} {vol.dtype}, scale {vol.scale.key}")
    return 0


class _UsageError(Exception):
    """A command-line mistake: one line, exit status 2."""


def _usage(message: str) -> _UsageError:
    return _UsageError(message)


def _say(args: argparse.Namespace, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(message)


# ---------------------------------------------------------------------------------------
# the parser
# ---------------------------------------------------------------------------------------


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


def _common(suppress: bool) -> argparse.ArgumentParser:
    """``--debug``, ``--quiet``, ``--progress``: accepted before or after the command."""
    p = argparse.ArgumentParser(add_help=False)
    default: Any = argparse.SUPPRESS if suppress else False
    p.add_argument("--debug", action="store_true", default=default, help="show the traceback of an error")
    p.add_argument("-q", "--quiet", action="store_true", default=default, help="print nothing but errors")
    p.add_argument("--progress", action="store_true", default=default, help="show progress even when stderr is not a terminal")
    return p


def _layout_options(p: argparse.ArgumentParser, defaults: bool) -> None:
    p.add_argument(
        "--encoding", default="raw" if defaults else None,
        choices=["raw", "jpeg", "png", "compressed_segmentation"],
        help="chunk encoding" + (" (default raw)" if defaults else " (default: the source's)"),
    )
    p.add_argument("--jpeg-quality", type=int, default=None, help="jpeg quality 0-100 (default 75)")
    p.add_argument(
        "--chunk-size", type=partial(_ints, what="--chunk-size"), default=None,
        metavar="X,Y,Z", help="chunk shape in voxels" + (" (default 64,64,64)" if defaults else ""),
    )
    p.add_argument(
        "--sharding", type=_sharding_arg, default=None, metavar="none|auto|JSON",
        help="none (a file per chunk), auto (TensorStore's choice for shards of ~2^27 "
        "voxels) or a sharding spec (JSON text or file)",
    )


def build_parser() -> tuple[argparse.ArgumentParser, Any]:
    """The argument parser (and its subparsers), plugin commands included."""
    from . import __version__

    common = _common(suppress=True)
    parser = argparse.ArgumentParser(
        prog="precomputed", description=__doc__, parents=[_common(suppress=False)],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", parents=[common], help="print a volume's scales as a table")
    p.add_argument("url", help="volume URL or path (gs://, s3://, https://, file://, path, or its info file)")
    p.add_argument("--json", action="store_true", help="print the info JSON instead")
    p.add_argument("--sizes", action="store_true", help="list each scale's objects (and bytes, for local folders)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser(
        "convert", parents=[common],
        help="TIFF / zarr / OME-Zarr / .npy into a new volume, or a volume's scale to zarr",
        description="Convert SRC (a .tif/.tiff file, a folder of TIFF files, a zarr or "
        "OME-Zarr array, a .npy file) into a new Precomputed volume at DST; or, with --to "
        "zarr (the default for a Precomputed SRC), one scale of a volume into a zarr array.",
    )
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--to", choices=["precomputed", "zarr"], default=None, help="what to write (default: precomputed, or zarr for a Precomputed SRC)")
    p.add_argument("--type", choices=["image", "segmentation"], default="image")
    p.add_argument("--data-type", default=None, help="stored data type (default: the source's)")
    p.add_argument("--axes", default=None, help="the source's axes, e.g. zyx, czyx, zyxc (default: from the file)")
    p.add_argument("--resolution", type=_floats, default=None, metavar="X,Y,Z", help="voxel size in nm (default: the file's, else 1,1,1)")
    p.add_argument("--voxel-offset", type=partial(_ints, what="--voxel-offset"), default=None, metavar="X,Y,Z")
    _layout_options(p, defaults=True)
    p.add_argument("--levels", type=int, default=0, help="pyramid levels to add (each downsampled by --factor)")
    p.add_argument("--factor", type=partial(_ints, what="--factor"), default=[2, 2, 1], metavar="X,Y,Z")
    p.add_argument("--method", choices=["mean", "mode"], default=None, help="downsampling (default: mode for segmentations, mean otherwise)")
    p.add_argument("--overwrite", action="store_true", help="replace what DST holds")
    p.add_argument("--scheduler", nargs="+", default=None, metavar="NAME", help="write with dask: threads, processes, or distributed ADDRESS")
    p.add_argument("--scale", type=int, default=0, help="--to zarr: which scale (default 0)")
    p.add_argument("--zarr-format", type=int, choices=[2, 3], default=3, help="--to zarr: zarr v3 (default) or v2")
    p.add_argument("--no-ome", action="store_true", help="--to zarr: a plain array, no OME-Zarr group")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("copy", parents=[common], help="copy a volume to another store, optionally re-encoded or resharded")
    p.add_argument("src")
    p.add_argument("dst")
    _layout_options(p, defaults=False)
    p.add_argument("--overwrite", action="store_true", help="replace what DST holds")
    p.set_defaults(func=_cmd_copy)

    p = sub.add_parser("downsample", parents=[common], help="add pyramid levels to a volume")
    p.add_argument("url")
    p.add_argument("--levels", type=int, default=1, help="how many scales to add (default 1)")
    p.add_argument("--factor", type=partial(_ints, what="--factor"), default=[2, 2, 1], metavar="X,Y,Z", help="per level (default 2,2,1)")
    p.add_argument("--method", choices=["mean", "mode"], default=None, help="default: mode for segmentations, mean otherwise")
    p.add_argument("--source", type=int, default=None, help="scale to start from (default: the coarsest)")
    p.set_defaults(func=_cmd_downsample)

    p = sub.add_parser("create", parents=[common], help="create a new empty volume from a JSON spec or flags")
    p.add_argument("dst")
    p.add_argument("--spec", default=None, help="JSON file with multiscale_metadata and scale_metadata")
    p.add_argument("--type", choices=["image", "segmentation"], default="image")
    p.add_argument("--data-type", default=None, help="default uint8")
    p.add_argument("--num-channels", type=int, default=1)
    p.add_argument("--size", type=partial(_ints, what="--size"), default=None, metavar="X,Y,Z")
    p.add_argument("--resolution", type=_floats, default=None, metavar="X,Y,Z")
    p.add_argument("--voxel-offset", type=partial(_ints, what="--voxel-offset"), default=None, metavar="X,Y,Z")
    _layout_options(p, defaults=True)
    p.add_argument("--levels", type=int, default=0, help="empty pyramid levels to add")
    p.add_argument("--overwrite", action="store_true", help="replace what DST holds")
    p.set_defaults(func=_cmd_create)

    _plugin_commands(sub)
    return parser, sub


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    from .errors import PrecomputedError

    if isinstance(e, PrecomputedError | _UsageError):
        return text
    return f"{type(e).__name__}: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 error, 2 usage, 130
    interrupted)."""
    parser, _ = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted (what this command had written has been removed)", file=sys.stderr)
        return 130
    except _UsageError as e:
        print(f"precomputed {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a CLI prints one clear line, not a traceback
        if debug:
            raise
        print(f"error: {_one_line(e)} (--debug shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

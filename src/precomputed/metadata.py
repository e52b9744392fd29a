"""The ``info`` file: multiscale and per-scale metadata, exactly as TensorStore reads it
and writes it, and how a scale's key names its directory (§1.7, §3.1).

Parsing a *stored* ``info`` raises :class:`FailedPreconditionError` (keeping the
``member_path`` of the problem). Messages follow TensorStore's wording, member names and
value formatting (compact JSON), so users can search for them. What a spec may ask of an
``info`` (constraints, scale selection, scale creation) is :mod:`.constraints`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .codecs import ChunkEncoding
from .codecs.table import ENCODINGS, SUPPORTED_DTYPES, check_data_type, check_encoding
from .errors import FailedPreconditionError, InvalidArgumentError
from .internal.geometry import Vec3
from .internal.jsonparse import (
    MISSING,
    concerning,
    dump_json,
    fail,
    format_g,
    member,
    parse_array,
    parse_dtype_name,
    parse_enum,
    parse_int,
    parse_int64,
    parse_loose_float,
    parse_string,
    parse_vector,
    position,
    require_object,
)
from .sharding import ShardingSpec, morton_bits

__all__ = [
    "SUPPORTED_DTYPES",
    "ENCODINGS",
    "MULTISCALE_TYPE",
    "ScaleMetadata",
    "MultiscaleMetadata",
    "scale_key_from_resolution",
    "resolve_scale_key",
    "check_scale_key",
    "check_scale",
    "load_json",
    "check_json",
    "MAX_INFO_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_SHARD_INDEX_BYTES",
    "MAX_CHUNK_BYTES",
    "MAX_CSEG_BLOCK_VOXELS",
    "check_bounds",
    "check_sharded_bits",
    "parse_sharding",
    "parse_encoding_param",
    "parse_block_size",
    "parse_int_vec",
    "parse_chunk_vec",
    "parse_resolution",
]

MULTISCALE_TYPE = "neuroglancer_multiscale_volume"
#: Limits on a stored ``info`` (TensorStore has none): the file's size and the nesting
#: depth of its JSON. A real ``info`` is a few KiB deep 5; these stop a hostile one
#: before it costs memory or the interpreter's stack.
MAX_INFO_BYTES = 16 << 20
MAX_JSON_DEPTH = 64
#: Limits on a scale's geometry (TensorStore has none), checked when a scale is opened or
#: created, before anything is allocated for it: the shard index every shard file starts
#: with (``16 << minishard_bits`` bytes, allocated whole to write a shard) and the largest
#: decoded chunk (its extent clipped to the volume, times channels and item size).
MAX_SHARD_INDEX_BYTES = 64 << 20
MAX_CHUNK_BYTES = 2 << 30
#: compressed_segmentation blocks: the encoded-value area of a block is sized by the whole
#: block, and its offsets are 24-bit words, so a larger block cannot be stored.
MAX_CSEG_BLOCK_VOXELS = 1 << 24
DEFAULT_JPEG_QUALITY = 75
#: TensorStore's index limits: finite indices lie in [-(2^62-2), 2^62-2].
MAX_FINITE_INDEX = (1 << 62) - 2
_INF_INDEX = (1 << 62) - 1
_MAX_CHUNK = (1 << 63) - 2
INT32_MAX = (1 << 31) - 1

_SCALE_MEMBERS = (
    "key",
    "size",
    "voxel_offset",
    "resolution",
    "chunk_sizes",
    "encoding",
    "jpeg_quality",
    "png_level",
    "compressed_segmentation_block_size",
    "sharding",
)
_MULTISCALE_MEMBERS = ("@type", "type", "data_type", "num_channels", "scales")


# ---------------------------------------------------------------------------------------
# Validators shared by the info parser and the spec constraints (.constraints)
# ---------------------------------------------------------------------------------------


def check_bounds(size: Sequence[int], voxel_offset: Sequence[int]) -> None:
    for o, s in zip(voxel_offset, size, strict=True):
        if not (-MAX_FINITE_INDEX <= o <= MAX_FINITE_INDEX and s >= 0 and o + s <= _INF_INDEX):
            raise InvalidArgumentError(
                f'"size" of {dump_json(list(size))} and "voxel_offset" of '
                f"{dump_json(list(voxel_offset))} do not specify a valid region",
                member_path=("size",),
            )


def check_sharded_bits(size: Sequence[int], chunk: Sequence[int]) -> None:
    if sum(morton_bits(size, chunk)) > 64:
        raise InvalidArgumentError(
            f'"size" of {dump_json(list(size))} with "chunk_size" of {dump_json(list(chunk))} '
            "is not compatible with sharded format because the chunk keys would exceed 64 bits",
            member_path=("sharding",),
        )


def parse_sharding(value: Any) -> ShardingSpec | None:
    # ShardingSpec.from_json already names the "sharding" member in its messages.
    return None if value is None else ShardingSpec.from_json(value, member="sharding")


def parse_encoding_param(obj: Mapping[str, Any], name: str, encoding: str | None) -> int | None:
    """``jpeg_quality`` (0..100) / ``png_level`` (0..9): only valid with their encoding."""
    if name not in obj:
        return None
    want, hi = ("jpeg", 100) if name == "jpeg_quality" else ("png", 9)
    with member(name):
        if encoding != want:
            raise InvalidArgumentError(f'Only valid for "{want}" encoding')
        return parse_int(obj[name], 0, hi)


def parse_block_size(value: Any) -> Vec3:
    return parse_vector(value, lambda v: parse_int(v, 1, INT32_MAX))


def parse_int_vec(value: Any) -> Vec3:
    return parse_vector(value, parse_int64)


def parse_chunk_vec(value: Any) -> Vec3:
    return parse_vector(value, lambda v: parse_int(v, 1, _MAX_CHUNK))


def parse_resolution(value: Any) -> tuple[float, float, float]:
    return parse_vector(value, parse_finite_float)


def parse_finite_float(value: Any) -> float:
    """:func:`parse_loose_float`, refusing NaN and infinities (``"nan"``, ``1e999``): JSON
    cannot hold them, so an ``info`` written with one could not be read back (TensorStore
    accepts them when parsing and writes ``NaN``, which no JSON parser reads)."""
    v = parse_loose_float(value)
    if not math.isfinite(v):
        raise fail("finite 64-bit floating-point number", value)
    return v


# ---------------------------------------------------------------------------------------
# The info file
# ---------------------------------------------------------------------------------------


@dataclass
class ScaleMetadata:
    """One entry of ``scales`` (all arrays in x, y, z order)."""

    key: str
    size: Vec3
    voxel_offset: Vec3
    resolution: tuple[float, float, float]
    chunk_sizes: list[Vec3]
    encoding: str
    jpeg_quality: int | None = None
    png_level: int | None = None
    compressed_segmentation_block_size: Vec3 | None = None
    sharding: ShardingSpec | None = None
    #: Unknown members (e.g. Neuroglancer's ``hidden``), preserved on rewrite.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.size = tuple(int(v) for v in self.size)  # type: ignore[assignment]
        self.voxel_offset = tuple(int(v) for v in self.voxel_offset)  # type: ignore[assignment]
        self.resolution = tuple(float(v) for v in self.resolution)  # type: ignore[assignment]
        self.chunk_sizes = [tuple(int(v) for v in c) for c in self.chunk_sizes]  # type: ignore[misc]
        if self.compressed_segmentation_block_size is not None:
            self.compressed_segmentation_block_size = tuple(  # type: ignore[assignment]
                int(v) for v in self.compressed_segmentation_block_size
            )
        if self.encoding == "jpeg" and self.jpeg_quality is None:
            self.jpeg_quality = DEFAULT_JPEG_QUALITY

    @classmethod
    def from_json(cls, obj: Any, index: int = 0) -> ScaleMetadata:
        """Parse ``scales[index]`` of a stored info (FailedPreconditionError on error)."""
        try:
            with member("scales"), position(index):
                return cls._parse(obj)
        except InvalidArgumentError as e:
            raise FailedPreconditionError(str(e), member_path=e.member_path) from None

    @classmethod
    def _parse(cls, obj: Any) -> ScaleMetadata:
        obj = require_object(obj)
        # Member order matters: it decides which error TensorStore reports first.
        with member("key"):
            key = parse_string(obj.get("key", MISSING))
        with member("resolution"):
            resolution = parse_resolution(obj.get("resolution", MISSING))
        sharding = parse_sharding(obj.get("sharding"))
        with member("encoding"):
            encoding = parse_enum(obj.get("encoding", MISSING), ENCODINGS)
        jpeg_quality = parse_encoding_param(obj, "jpeg_quality", encoding)
        png_level = parse_encoding_param(obj, "png_level", encoding)
        block = None
        with member("compressed_segmentation_block_size"):
            if encoding == "compressed_segmentation":
                block = parse_block_size(obj.get("compressed_segmentation_block_size", MISSING))
            elif "compressed_segmentation_block_size" in obj:
                raise InvalidArgumentError('Only valid for "compressed_segmentation" encoding')
        with member("size"):
            size = parse_int_vec(obj.get("size", MISSING))
        voxel_offset: Vec3 = (0, 0, 0)
        if "voxel_offset" in obj:
            with member("voxel_offset"):
                voxel_offset = parse_int_vec(obj["voxel_offset"])
        with member("chunk_sizes"):
            chunk_sizes = parse_array(obj.get("chunk_sizes", MISSING))
            for i, c in enumerate(chunk_sizes):
                with position(i):
                    chunk_sizes[i] = parse_chunk_vec(c)
        if not chunk_sizes:
            raise InvalidArgumentError("At least one chunk size must be specified")
        if sharding is not None:
            if len(chunk_sizes) != 1:
                raise InvalidArgumentError(
                    "Sharded format does not support more than one chunk size"
                )
            check_sharded_bits(size, chunk_sizes[0])
        check_bounds(size, voxel_offset)
        return cls(
            key=key,
            size=size,
            voxel_offset=voxel_offset,
            resolution=resolution,
            chunk_sizes=chunk_sizes,
            encoding=encoding,
            jpeg_quality=jpeg_quality,
            png_level=png_level,
            compressed_segmentation_block_size=block,
            sharding=sharding,
            extra={k: v for k, v in obj.items() if k not in _SCALE_MEMBERS},
        )

    def to_json(self) -> dict[str, Any]:
        """The normalized form TensorStore writes (§1.6)."""
        out: dict[str, Any] = dict(self.extra)
        out.update(
            chunk_sizes=[list(c) for c in self.chunk_sizes],
            encoding=self.encoding,
            key=self.key,
            resolution=[float(r) for r in self.resolution],
            size=list(self.size),
            voxel_offset=list(self.voxel_offset),
        )
        if self.encoding == "compressed_segmentation":
            out["compressed_segmentation_block_size"] = list(
                self.compressed_segmentation_block_size or ()
            )
        if self.encoding == "jpeg":
            out["jpeg_quality"] = self.jpeg_quality
        if self.encoding == "png" and self.png_level is not None:
            out["png_level"] = self.png_level
        if self.sharding is not None:
            out["sharding"] = self.sharding.to_json()
        return out

    def chunk_encoding(self) -> ChunkEncoding:
        """Codec parameters for :mod:`.codecs`."""
        return ChunkEncoding(
            self.encoding,
            jpeg_quality=self.jpeg_quality if self.jpeg_quality is not None else 75,
            png_level=self.png_level,
            block_size=self.compressed_segmentation_block_size,
        )


@dataclass
class MultiscaleMetadata:
    """The whole ``info`` file."""

    type: str
    data_type: str
    num_channels: int
    scales: list[ScaleMetadata] = field(default_factory=list)
    #: Unknown top-level members (``mesh``, ``skeletons``, ...), preserved on rewrite.
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def loads(cls, data: bytes | str, key: str = "info") -> MultiscaleMetadata:
        """Parse the bytes of a stored info file named ``key``."""

        if len(data) > MAX_INFO_BYTES:
            raise FailedPreconditionError(
                f'Error reading "{key}": {len(data)} bytes is more than an info file may '
                f"hold ({MAX_INFO_BYTES} bytes)"
            )
        obj = load_json(data, key)
        return cls.from_json(obj, key)

    @classmethod
    def from_json(cls, obj: Any, key: str = "info") -> MultiscaleMetadata:
        """Validate a stored info (§1.2-1.5); every problem is a FailedPreconditionError."""
        try:
            return cls._parse(obj)
        except InvalidArgumentError as e:
            raise FailedPreconditionError(
                f'Error reading "{key}": {e}', member_path=e.member_path
            ) from None

    @classmethod
    def _parse(cls, obj: Any) -> MultiscaleMetadata:
        obj = require_object(obj)
        if "@type" in obj and obj["@type"] != MULTISCALE_TYPE:
            with member("@type"):
                raise fail(f'"{MULTISCALE_TYPE}"', obj["@type"])
        with member("type"):
            type_ = parse_string(obj.get("type", MISSING))
        with member("data_type"):
            data_type = check_data_type(parse_dtype_name(obj.get("data_type", MISSING)))
        with member("num_channels"):
            num_channels = parse_int(obj.get("num_channels", MISSING), 1, INT32_MAX)
        with member("scales"):
            items = parse_array(obj.get("scales", MISSING))
            scales = []
            for i, item in enumerate(items):
                with position(i):
                    scales.append(ScaleMetadata._parse(item))
        for i, scale in enumerate(scales):
            with concerning("scales", i):
                check_encoding(scale.encoding, data_type, num_channels)
        return cls(
            type=type_,
            data_type=data_type,
            num_channels=num_channels,
            scales=scales,
            extra={k: v for k, v in obj.items() if k not in _MULTISCALE_MEMBERS},
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update(
            {
                "@type": MULTISCALE_TYPE,
                "type": self.type,
                "data_type": self.data_type,
                "num_channels": self.num_channels,
                "scales": [s.to_json() for s in self.scales],
            }
        )
        return out

    def dumps(self) -> bytes:
        """The info file bytes exactly as TensorStore writes them: compact JSON, keys
        sorted, resolutions as floats (Python's float repr equals nlohmann's). Anything
        JSON cannot hold (NaN, infinities, lone surrogates) is an InvalidArgumentError:
        an ``info`` is never written that could not be read back."""
        obj = self.to_json()
        check_json(obj, InvalidArgumentError)
        return json.dumps(
            obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
        ).encode("utf-8")


# ---------------------------------------------------------------------------------------
# Keys and paths
# ---------------------------------------------------------------------------------------


def scale_key_from_resolution(resolution: Sequence[float]) -> str:
    """``"<x>_<y>_<z>"`` with ``%g`` formatting: ``[4.5, 0.1, 1e-7]`` -> ``4.5_0.1_1e-07``."""
    return "_".join(format_g(float(r)) for r in resolution)


def check_scale_key(key: str) -> None:
    """Refuse a scale key whose directory is not strictly inside the volume directory:
    empty, absolute, with a NUL, climbing out with ``..`` (at any point), naming the
    volume directory itself, or ``info``. InvalidArgumentError naming ``key``.

    TensorStore 0.1.86 resolves any key (§3.1), so ``../../elsewhere`` reads and writes
    outside the volume (and, with enough ``..``, anywhere the store reaches); this driver
    does not, on any store."""
    why = None
    if not key:
        why = "is empty"
    elif key.startswith("/"):
        why = "is absolute"
    elif "\0" in key:
        why = "contains a NUL character"
    else:
        parts: list[str] = []  # the key's directory, relative to the volume's
        for comp in key.split("/"):
            if comp == "..":
                if not parts:
                    why = "leaves the volume directory"
                    break
                parts.pop()
            elif comp not in ("", "."):
                parts.append(comp)
        else:
            if not parts:
                why = "names the volume directory itself"
            elif parts[0] == "info":
                why = 'lies in the volume\'s "info" file'
    if why is not None:
        raise InvalidArgumentError(
            f"Scale key {dump_json(key)} {why}: a scale key must name a directory inside "
            "the volume", member_path=("key",)
        )


def resolve_scale_key(path: str, key: str) -> str:
    """The scale directory for ``key`` inside the volume directory ``path`` (§3.1);
    a key that would resolve outside it is an InvalidArgumentError
    (:func:`check_scale_key`)."""
    check_scale_key(key)
    base = path[:-1] if path.endswith("/") else path
    if not base:
        return key
    parts = base.split("/")
    for comp in key.split("/"):
        if comp == ".." and parts:
            parts.pop()
        else:
            parts.append(comp)
    return "/".join(parts)


def check_scale(meta: MultiscaleMetadata, index: int) -> None:
    """What this driver refuses in a scale that TensorStore would take, before anything is
    read, written or allocated for it (InvalidArgumentError naming the member): a key
    outside the volume, a non-finite resolution, a shard index over
    :data:`MAX_SHARD_INDEX_BYTES`, a chunk over :data:`MAX_CHUNK_BYTES` decoded, a
    compressed_segmentation block over :data:`MAX_CSEG_BLOCK_VOXELS`."""
    scale = meta.scales[index]
    with concerning("scales", index):
        check_scale_key(scale.key)
        if not all(math.isfinite(r) for r in scale.resolution):
            raise InvalidArgumentError(
                f'"resolution" of {dump_json(list(scale.resolution))} is not finite',
                member_path=("resolution",),
            )
        if scale.sharding is not None:
            index_bytes = scale.sharding.shard_index_size
            if index_bytes > MAX_SHARD_INDEX_BYTES:
                raise InvalidArgumentError(
                    f'"minishard_bits" of {scale.sharding.minishard_bits} makes every shard '
                    f"index {index_bytes} bytes, more than {MAX_SHARD_INDEX_BYTES}",
                    member_path=("sharding", "minishard_bits"),
                )
        itemsize = SUPPORTED_DTYPES_ITEMSIZE.get(meta.data_type, 8)
        for i, chunk in enumerate(scale.chunk_sizes):
            extent = [min(c, s) for c, s in zip(chunk, scale.size, strict=True)]
            nbytes = math.prod(extent) * meta.num_channels * itemsize
            if nbytes > MAX_CHUNK_BYTES:
                raise InvalidArgumentError(
                    f'"chunk_sizes" of {dump_json(list(chunk))} with "size" of '
                    f"{dump_json(list(scale.size))} and {meta.num_channels} channels of "
                    f"{meta.data_type} make chunks of {nbytes} bytes, more than "
                    f"{MAX_CHUNK_BYTES}",
                    member_path=("chunk_sizes", i),
                )
        block = scale.compressed_segmentation_block_size
        if block is not None and math.prod(block) > MAX_CSEG_BLOCK_VOXELS:
            raise InvalidArgumentError(
                f'"compressed_segmentation_block_size" of {dump_json(list(block))} has more '
                f"than {MAX_CSEG_BLOCK_VOXELS} voxels per block",
                member_path=("compressed_segmentation_block_size",),
            )


SUPPORTED_DTYPES_ITEMSIZE = {
    "uint8": 1, "int8": 1, "uint16": 2, "int16": 2, "uint32": 4, "int32": 4,
    "uint64": 8, "float32": 4,
}  # fmt: skip


# ---------------------------------------------------------------------------------------
# JSON that a stranger wrote
# ---------------------------------------------------------------------------------------


def load_json(data: bytes | str, key: str) -> Any:
    """Parse stored JSON (an ``info`` file): FailedPreconditionError ``Error reading
    "<key>": Invalid JSON...`` for anything that is not JSON (NaN, Infinity, numbers
    too large for a double, lone surrogates), nested deeper than :data:`MAX_JSON_DEPTH`
    (never a RecursionError), naming where."""

    def reject(name: str) -> None:  # NaN/Infinity are not JSON
        raise ValueError(f"{name} is not JSON")

    try:
        obj = json.loads(data, parse_constant=reject)
    except RecursionError:
        raise FailedPreconditionError(
            f'Error reading "{key}": Invalid JSON: nested more than {MAX_JSON_DEPTH} deep'
        ) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise FailedPreconditionError(f'Error reading "{key}": Invalid JSON ({e})') from None
    try:
        check_json(obj, FailedPreconditionError)
    except FailedPreconditionError as e:
        raise FailedPreconditionError(
            f'Error reading "{key}": Invalid JSON: {e}', member_path=e.member_path
        ) from None
    return obj


def check_json(obj: Any, error: type[InvalidArgumentError] | type[FailedPreconditionError]) -> None:
    """Raise ``error`` (naming the member path) if ``obj`` holds anything JSON cannot:
    non-finite floats, strings that are not Unicode text (lone surrogates), non-string
    keys, other types, or nesting deeper than :data:`MAX_JSON_DEPTH`. Iterative: no
    recursion however deep the value."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(obj, ())]
    while stack:
        value, path = stack.pop()
        if len(path) > MAX_JSON_DEPTH:
            raise error(f"nested more than {MAX_JSON_DEPTH} deep at {_path_text(path)}",
                        member_path=path)  # fmt: skip
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str) or not _is_text(k):
                    raise error(f"member name {k!r} at {_path_text(path)} is not JSON text",
                                member_path=path)  # fmt: skip
                stack.append((v, (*path, k)))
        elif isinstance(value, (list, tuple)):
            stack.extend((v, (*path, i)) for i, v in enumerate(value))
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise error(f"{value!r} at {_path_text(path)} is not a JSON number",
                            member_path=path)  # fmt: skip
        elif isinstance(value, str):
            if not _is_text(value):
                raise error(f"the string at {_path_text(path)} is not Unicode text",
                            member_path=path)  # fmt: skip
        elif value is not None and not isinstance(value, (bool, int)):
            raise error(f"{type(value).__name__} at {_path_text(path)} is not JSON",
                        member_path=path)  # fmt: skip


def _is_text(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _path_text(path: tuple[str | int, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path) or "the top level"

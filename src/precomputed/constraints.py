"""What an open or create spec asks of an ``info``: the ``multiscale_metadata`` /
``scale_metadata`` constraints, scale selection when opening (§2.5), the create-scale
procedure (§2.7) and the compatibility check for a re-read ``info`` (§6.3).

Parsing a spec's constraints raises :class:`InvalidArgumentError`; conflicts with stored
metadata :class:`FailedPreconditionError`. Errors name the spec member they concern in
``member_path`` (``("scale_metadata", "size")``, ...), also where the message names none,
so a form can point at the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from .codecs.table import check_data_type, check_encoding
from .errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from .internal.geometry import Vec3
from .internal.jsonparse import (
    check_extra_members,
    concerning,
    dump_json,
    member,
    parse_dtype_name,
    parse_enum,
    parse_int,
    parse_string,
    require_object,
)
from .metadata import (
    ENCODINGS,
    INT32_MAX,
    MultiscaleMetadata,
    ScaleMetadata,
    check_bounds,
    check_sharded_bits,
    parse_block_size,
    parse_chunk_vec,
    parse_encoding_param,
    parse_int_vec,
    parse_resolution,
    parse_sharding,
    scale_key_from_resolution,
)
from .schema import (
    CodecSpec,
    Domain,
    Schema,
    Unit,
    choose_chunk_shape,
    format_units,
    merge_units_with_resolution,
    validate_units,
)
from .sharding import ShardingSpec, choose_sharding

__all__ = [
    "MultiscaleConstraints",
    "ScaleConstraints",
    "constraint_domain",
    "select_scale",
    "create_scale",
    "validate_metadata_compatibility",
]

# Default number of elements of a chosen read chunk and compressed_segmentation block.
DEFAULT_CHUNK_ELEMENTS = 1024 * 1024
DEFAULT_BLOCK_ELEMENTS = 512
# Where a rule that names no member in its message is shown (as the widget shows it).
_SIZE = ("scale_metadata", "size")
_DATA_TYPE = ("multiscale_metadata", "data_type")


# ---------------------------------------------------------------------------------------
# Spec constraints
# ---------------------------------------------------------------------------------------


def _mismatch(section: str, name: str, expected: Any, actual: Any) -> FailedPreconditionError:
    """A constraint of spec member ``section`` (``multiscale_metadata``/``scale_metadata``)
    that the stored metadata does not meet."""
    return FailedPreconditionError(
        f'Expected "{name}" of {dump_json(expected)} but received: {dump_json(actual)}',
        member_path=(section, name),
    )


@dataclass
class MultiscaleConstraints:
    """A spec's ``multiscale_metadata``: values for a new volume, checks for an old one."""

    type: str | None = None
    data_type: str | None = None
    num_channels: int | None = None

    @classmethod
    def from_json(cls, obj: Any, dtype: str | None = None) -> MultiscaleConstraints:
        """Parse (``None`` = absent); ``dtype`` is the spec's top-level dtype, if any."""
        c = cls()
        if obj is not None:
            obj = require_object(obj)
            if "type" in obj:
                with member("type"):
                    c.type = parse_string(obj["type"])
            if "data_type" in obj:
                with member("data_type"):
                    c.data_type = parse_dtype_name(obj["data_type"])
            if "num_channels" in obj:
                with member("num_channels"):
                    c.num_channels = parse_int(obj["num_channels"], 1, INT32_MAX)
            check_extra_members(obj, ("type", "data_type", "num_channels"))
        if dtype is not None:
            if c.data_type is not None and c.data_type != dtype:
                with member("data_type"):
                    raise InvalidArgumentError(
                        f"Expected data type of {dtype} but received: {c.data_type}"
                    )
            c.data_type = dtype
        return c

    def to_json(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in (
                ("type", self.type),
                ("data_type", self.data_type),
                ("num_channels", self.num_channels),
            )
            if v is not None
        }

    def check(self, meta: MultiscaleMetadata) -> None:
        """Each given member must equal the stored value (FailedPreconditionError)."""
        for name in ("data_type", "num_channels", "type"):
            want = getattr(self, name)
            if want is not None and want != getattr(meta, name):
                raise _mismatch("multiscale_metadata", name, want, getattr(meta, name))


@dataclass
class ScaleConstraints:
    """A spec's ``scale_metadata``. ``sharding_specified`` tells an absent ``sharding``
    (let create choose) from an explicit ``null`` (unsharded)."""

    key: str | None = None
    size: Vec3 | None = None
    voxel_offset: Vec3 | None = None
    chunk_size: Vec3 | None = None
    resolution: tuple[float, float, float] | None = None
    encoding: str | None = None
    jpeg_quality: int | None = None
    png_level: int | None = None
    compressed_segmentation_block_size: Vec3 | None = None
    sharding: ShardingSpec | None = None
    sharding_specified: bool = False

    @classmethod
    def from_json(
        cls, obj: Any, data_type: str | None = None, num_channels: int | None = None
    ) -> ScaleConstraints:
        """Parse (``None`` = absent); encoding is checked against ``data_type`` and
        ``num_channels`` when they are known."""
        c = cls()
        if obj is None:
            return c
        obj = require_object(obj)
        if "key" in obj:
            with member("key"):
                c.key = parse_string(obj["key"])
        if "resolution" in obj:
            with member("resolution"):
                c.resolution = parse_resolution(obj["resolution"])
        if "sharding" in obj:
            c.sharding = parse_sharding(obj["sharding"])
            c.sharding_specified = True
        if "encoding" in obj:
            with member("encoding"):
                c.encoding = parse_enum(obj["encoding"], ENCODINGS)
        c.jpeg_quality = parse_encoding_param(obj, "jpeg_quality", c.encoding)
        c.png_level = parse_encoding_param(obj, "png_level", c.encoding)
        if "compressed_segmentation_block_size" in obj:
            with member("compressed_segmentation_block_size"):
                if c.encoding != "compressed_segmentation":
                    raise InvalidArgumentError('Only valid for "compressed_segmentation" encoding')
                c.compressed_segmentation_block_size = parse_block_size(
                    obj["compressed_segmentation_block_size"]
                )
        if "size" in obj:
            with member("size"):
                c.size = parse_int_vec(obj["size"])
        if "voxel_offset" in obj:
            with member("voxel_offset"):
                if c.size is None:
                    raise InvalidArgumentError('cannot be specified without "size"')
                c.voxel_offset = parse_int_vec(obj["voxel_offset"])
        elif c.size is not None:
            c.voxel_offset = (0, 0, 0)
        if "chunk_size" in obj:
            with member("chunk_size"):
                c.chunk_size = parse_chunk_vec(obj["chunk_size"])
        check_extra_members(
            obj,
            (
                "key",
                "size",
                "voxel_offset",
                "chunk_size",
                "resolution",
                "encoding",
                "jpeg_quality",
                "png_level",
                "compressed_segmentation_block_size",
                "sharding",
            ),
        )
        if c.sharding is not None and c.size is not None and c.chunk_size is not None:
            check_sharded_bits(c.size, c.chunk_size)
        if c.size is not None:
            check_bounds(c.size, c.voxel_offset or (0, 0, 0))
        check_encoding(c.encoding, data_type, num_channels)
        return c

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in (
            "key",
            "size",
            "voxel_offset",
            "chunk_size",
            "encoding",
            "jpeg_quality",
            "png_level",
            "compressed_segmentation_block_size",
        ):
            v = getattr(self, name)
            if v is not None:
                out[name] = list(v) if isinstance(v, tuple) else v
        if self.resolution is not None:
            out["resolution"] = [float(r) for r in self.resolution]
        if self.sharding_specified:
            out["sharding"] = None if self.sharding is None else self.sharding.to_json()
        return out

    def check(self, scale: ScaleMetadata) -> None:
        """Each given member must match the chosen scale (§2.5 step 4, in that order)."""
        s = scale
        checks: list[tuple[str, Any, Any, bool]] = [
            ("key", self.key, s.key, True),
            ("encoding", self.encoding, s.encoding, True),
            ("jpeg_quality", self.jpeg_quality, s.jpeg_quality, s.encoding == "jpeg"),
            (
                "png_level",
                self.png_level,
                -1 if s.png_level is None else s.png_level,
                s.encoding == "png",
            ),
            (
                "compressed_segmentation_block_size",
                _list(self.compressed_segmentation_block_size),
                _list(s.compressed_segmentation_block_size),
                s.encoding == "compressed_segmentation",
            ),
            ("resolution", _floats(self.resolution), _floats(s.resolution), True),
        ]
        for name, want, have, applies in checks:
            if want is not None and applies and want != have:
                raise _mismatch("scale_metadata", name, want, have)
        if self.sharding_specified and self.sharding != s.sharding:
            raise _mismatch(
                "scale_metadata",
                "sharding",
                None if self.sharding is None else self.sharding.to_json(),
                None if s.sharding is None else s.sharding.to_json(),
            )
        for name, want, have in (
            ("size", _list(self.size), list(s.size)),
            ("voxel_offset", _list(self.voxel_offset), list(s.voxel_offset)),
        ):
            if want is not None and want != have:
                raise _mismatch("scale_metadata", name, want, have)
        if self.chunk_size is not None and tuple(self.chunk_size) not in s.chunk_sizes:
            raise _mismatch(
                "scale_metadata", "chunk_size", list(self.chunk_size), [list(c) for c in s.chunk_sizes]
            )

    def domain(self, num_channels: int | None) -> Domain:
        """The domain these constraints imply: x, y, z bounds from ``size`` and
        ``voxel_offset`` (if given), channel ``[0, num_channels)``."""
        dom = Domain(labels=["x", "y", "z", "channel"])
        if self.size is not None:
            off = self.voxel_offset or (0, 0, 0)
            dom.inclusive_min[:3] = list(off)
            dom.exclusive_max[:3] = [o + s for o, s in zip(off, self.size, strict=True)]
        dom.inclusive_min[3] = 0
        dom.exclusive_max[3] = num_channels
        return dom


def _list(v: Sequence[int] | None) -> list[int] | None:
    return None if v is None else list(v)


def _floats(v: Sequence[float] | None) -> list[float] | None:
    return None if v is None else [float(x) for x in v]


def constraint_domain(
    mc: MultiscaleConstraints, sc: ScaleConstraints, schema: Schema | None
) -> Domain:
    """The spec-level domain: constraints merged with ``schema.domain`` (§2.6)."""
    dom = sc.domain(mc.num_channels)
    if schema is not None and schema.domain is not None:
        try:
            dom = schema.domain.merge(dom)
        except InvalidArgumentError as e:
            raise InvalidArgumentError(
                'Error applying domain constraints from "multiscale_metadata" and '
                f'"scale_metadata": {e}'
            ) from None
    return dom


# ---------------------------------------------------------------------------------------
# Opening: scale selection
# ---------------------------------------------------------------------------------------


def select_scale(
    meta: MultiscaleMetadata,
    multiscale_constraints: MultiscaleConstraints | None = None,
    scale_constraints: ScaleConstraints | None = None,
    scale_index: int | None = None,
    dimension_units: Sequence[Unit | None] | Schema | None = None,
) -> tuple[int, Vec3]:
    """Pick the scale an open request refers to (§2.5).

    ``dimension_units`` are the schema's units (a :class:`Schema` is accepted too).

    Returns the scale index and the chunk size used for I/O. Raises
    FailedPreconditionError (constraint mismatch, index out of range), NotFoundError (no
    scale matches the key/resolution/units; open+create falls through to create on this)
    or InvalidArgumentError (malformed units).
    """
    mc = multiscale_constraints or MultiscaleConstraints()
    sc = scale_constraints or ScaleConstraints()
    if isinstance(dimension_units, Schema):
        dimension_units = dimension_units.dimension_units
    mc.check(meta)
    units = merge_units_with_resolution(dimension_units, sc.resolution)
    n = len(meta.scales)
    if scale_index is not None:
        if scale_index >= n:
            raise FailedPreconditionError(
                f"Scale {scale_index} does not exist, number of scales is {n}"
            )
        index = scale_index
    else:
        found = None
        for i, scale in enumerate(meta.scales):
            if sc.key is not None and scale.key != sc.key:
                continue
            if units is not None and any(
                units[d] is not None and scale.resolution[d] != units[d].multiplier  # type: ignore[union-attr]
                for d in range(3)
            ):
                continue
            found = i
            break
        if found is None:
            parts = []
            if units is not None:
                parts.append(f"dimension_units={format_units(units)}")
            if sc.key is not None:
                parts.append(f"key={dump_json(sc.key)}")
            raise NotFoundError("No scale found matching " + ", ".join(parts))
        index = found
    scale = meta.scales[index]
    sc.check(scale)
    chunk = sc.chunk_size if sc.chunk_size is not None else scale.chunk_sizes[0]
    return index, tuple(chunk)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------
# Creating a scale (§2.7)
# ---------------------------------------------------------------------------------------


def create_scale(
    existing: MultiscaleMetadata | None,
    mc: MultiscaleConstraints | None,
    sc: ScaleConstraints | None,
    scale_index: int | None = None,
    schema: Schema | None = None,
    *,
    assume_metadata: bool = False,
) -> tuple[MultiscaleMetadata, int]:
    """New metadata with one scale added (appended to ``existing``, or a new volume).

    Implements TensorStore's procedure and error order; the input is not modified.
    Returns the new metadata and the new scale's index. Only the ``info`` changes; the
    caller writes it (conditionally, §6.3). With ``assume_metadata`` (nothing is read or
    written) a new volume may get ``scale_index > 0``: earlier slots are placeholders.
    """
    mc = mc or MultiscaleConstraints()
    sc = sc or ScaleConstraints()
    schema = schema or Schema()
    if existing is not None:
        mc.check(existing)
        if schema.dtype is not None and schema.dtype != existing.data_type:
            raise _mismatch("multiscale_metadata", "data_type", schema.dtype, existing.data_type)

    # 1-2. Domain (x, y, z box and channel count) and dtype.
    num_channels = mc.num_channels or (existing.num_channels if existing else None)
    dom = constraint_domain(replace(mc, num_channels=num_channels), sc, schema)
    if any(v is None for v in dom.inclusive_min + dom.exclusive_max):
        raise InvalidArgumentError("domain must be specified", member_path=_SIZE)
    voxel_offset: Vec3 = tuple(dom.inclusive_min[:3])  # type: ignore[assignment]
    size: Vec3 = tuple(  # type: ignore[assignment]
        hi - lo  # type: ignore[operator]
        for lo, hi in zip(dom.inclusive_min[:3], dom.exclusive_max[:3], strict=True)
    )
    num_channels = dom.exclusive_max[3]
    if num_channels is None or num_channels < 1 or num_channels > INT32_MAX:
        raise InvalidArgumentError("domain must be specified", member_path=_SIZE)
    with concerning("scale_metadata"):
        check_bounds(size, voxel_offset)
    data_type = existing.data_type if existing else (mc.data_type or schema.dtype)
    if data_type is None:
        raise InvalidArgumentError("dtype must be specified", member_path=_DATA_TYPE)
    with concerning(*_DATA_TYPE):
        check_data_type(data_type)

    # 3. Resolution and key; where the scale goes.
    resolution = _creation_resolution(schema.dimension_units, sc.resolution)
    key = sc.key if sc.key is not None else scale_key_from_resolution(resolution)
    placeholders = 0
    if assume_metadata and existing is None and scale_index:
        placeholders = scale_index  # TensorStore pads the synthesized scale list
    else:
        _check_new_scale_slot(existing, scale_index, key, sc.key is not None, resolution)

    # 4-5. Chunk layout structure, then the read chunk (explicit or chosen).
    layout = schema.chunk_layout
    layout.check_structure(voxel_offset, num_channels)
    if sc.chunk_size is not None:
        layout.check_shape("read_chunk", layout.read, sc.chunk_size)
        chunk: Vec3 = tuple(sc.chunk_size)  # type: ignore[assignment]
    else:
        chosen = choose_chunk_shape(
            [*size, num_channels], layout.read, {3: num_channels}, DEFAULT_CHUNK_ELEMENTS
        )
        chunk = tuple(chosen[:3])  # type: ignore[assignment]

    # 6. Units must be nm-based and agree with an explicit resolution.
    validate_units(schema.dimension_units)
    with concerning("scale_metadata"):
        merge_units_with_resolution(schema.dimension_units, sc.resolution)

    # 7-9. Codec, encoding vs data type, fill value.
    codec = _creation_codec(sc).merge(schema.codec)
    encoding = codec.encoding or "raw"
    if codec.shard_data_encoding is not None and sc.sharding_specified and sc.sharding is None:
        raise InvalidArgumentError("shard_data_encoding requires sharded format")
    try:
        check_encoding(encoding, data_type, num_channels)
    except InvalidArgumentError as e:
        raise FailedPreconditionError(str(e), member_path=("scale_metadata", *e.member_path)) from None
    schema.check_fill_value()

    # 10. compressed_segmentation block size (explicit or chosen within the chunk).
    block = None
    if encoding == "compressed_segmentation":
        if sc.compressed_segmentation_block_size is not None:
            layout.check_shape("codec_chunk", layout.codec, sc.compressed_segmentation_block_size)
            block = tuple(sc.compressed_segmentation_block_size)
        else:
            chosen = choose_chunk_shape([*chunk, 1], layout.codec, {3: 1}, DEFAULT_BLOCK_ELEMENTS)
            block = tuple(chosen[:3])

    # 11. Sharding: explicit (object or null), else TensorStore's automatic choice.
    if sc.sharding_specified:
        sharding = sc.sharding
    else:
        write = layout.write
        with concerning("scale_metadata", "sharding"):
            sharding = choose_sharding(
                size,
                chunk,
                write_chunk_shape=write.shape[:3],
                write_chunk_elements=write.elements or None,
                hard_constraint=write.shape_hard[:3],
                shard_data_encoding=codec.shard_data_encoding,
                encoding=encoding,
            )
    if encoding != "compressed_segmentation" and any(
        h and v for v, h in zip(layout.codec.shape, layout.codec.shape_hard, strict=True)
    ):
        raise InvalidArgumentError(f"codec_chunk_shape not supported by {encoding} encoding")
    if sharding is not None:
        try:
            check_sharded_bits(size, chunk)
        except InvalidArgumentError as e:
            raise FailedPreconditionError(str(e), member_path=("scale_metadata", *e.member_path)) from None

    # 12. Assemble.
    scale = ScaleMetadata(
        key=key,
        size=size,
        voxel_offset=voxel_offset,
        resolution=resolution,
        chunk_sizes=[chunk],
        encoding=encoding,
        jpeg_quality=codec.jpeg_quality if encoding == "jpeg" else None,
        png_level=codec.png_level if encoding == "png" else None,
        compressed_segmentation_block_size=block,  # type: ignore[arg-type]
        sharding=sharding,
    )
    if sharding is None:
        layout.check_shape("write_chunk", layout.write, chunk)
    if existing is None:
        default_type = "segmentation" if data_type in ("uint32", "uint64") else "image"
        empty = ScaleMetadata("", (0, 0, 0), (0, 0, 0), (1.0, 1.0, 1.0), [(1, 1, 1)], "raw")
        meta = MultiscaleMetadata(
            type=mc.type if mc.type is not None else default_type,
            data_type=data_type,
            num_channels=num_channels,
            scales=[replace(empty) for _ in range(placeholders)] + [scale],
        )
    else:
        meta = replace(existing, scales=[*existing.scales, scale], extra=dict(existing.extra))
    return meta, len(meta.scales) - 1


def _creation_resolution(
    units: Sequence[Unit | None] | None, resolution: Sequence[float] | None
) -> tuple[float, float, float]:
    """Resolution of a new scale: explicit, else the unit multipliers, else 1 nm."""
    if resolution is not None:
        return tuple(float(r) for r in resolution)  # type: ignore[return-value]
    out = [1.0, 1.0, 1.0]
    for d in range(3):
        if units is not None and units[d] is not None:
            out[d] = float(units[d].multiplier)  # type: ignore[union-attr]
    return tuple(out)  # type: ignore[return-value]


def _check_new_scale_slot(
    existing: MultiscaleMetadata | None,
    scale_index: int | None,
    key: str,
    key_given: bool,
    resolution: Sequence[float],
) -> None:
    if existing is None:
        if scale_index not in (None, 0):
            raise FailedPreconditionError(
                f"Cannot create scale {scale_index} in new multiscale volume"
            )
        return
    n = len(existing.scales)
    if scale_index is not None:
        if scale_index < n:
            raise AlreadyExistsError(
                f"Scale index {scale_index} already exists", member_path=("scale_index",)
            )
        if scale_index != n:
            raise FailedPreconditionError(
                f"Scale index to create ({scale_index}) must equal the existing number of "
                f"scales ({n})"
            )
        return
    for s in existing.scales:
        if s.key == key:
            raise AlreadyExistsError(
                f"Scale with key {dump_json(key)} already exists", member_path=("scale_metadata", "key")
            )
    if not key_given:
        for s in existing.scales:
            if tuple(s.resolution) == tuple(resolution):
                res = dump_json([float(r) for r in resolution])
                raise AlreadyExistsError(
                    f"Scale with resolution {res} already exists",
                    member_path=("scale_metadata", "resolution"),
                )


def _creation_codec(sc: ScaleConstraints) -> CodecSpec:
    return CodecSpec(
        encoding=sc.encoding,
        jpeg_quality=sc.jpeg_quality,
        png_level=sc.png_level,
        shard_data_encoding=sc.sharding.data_encoding if sc.sharding is not None else None,
    )


# ---------------------------------------------------------------------------------------
# Re-read compatibility (§6.3)
# ---------------------------------------------------------------------------------------


def validate_metadata_compatibility(
    old: MultiscaleMetadata, new: MultiscaleMetadata, scale_index: int, chunk_size: Sequence[int]
) -> None:
    """Raise FailedPreconditionError if ``new`` (a re-read info) is incompatible with the
    open scale ``scale_index`` of ``old``. ``type``, ``resolution``, ``jpeg_quality``,
    ``png_level``, other scales and extra members may change."""

    def changed(name: str, was: Any, now: Any) -> FailedPreconditionError:
        return FailedPreconditionError(
            f'Updated "{name}" ({dump_json(now)}) does not match existing value ({dump_json(was)})'
        )

    for name in ("num_channels", "data_type"):
        if getattr(old, name) != getattr(new, name):
            raise changed(name, getattr(old, name), getattr(new, name))
    if scale_index >= len(new.scales):
        raise FailedPreconditionError(f"Updated metadata is missing scale {scale_index}")
    a, b = old.scales[scale_index], new.scales[scale_index]
    for name in ("key", "size", "voxel_offset", "encoding"):
        x, y = getattr(a, name), getattr(b, name)
        if x != y:
            raise changed(
                name, list(x) if isinstance(x, tuple) else x, list(y) if isinstance(y, tuple) else y
            )
    if a.encoding == "compressed_segmentation" and (
        a.compressed_segmentation_block_size != b.compressed_segmentation_block_size
    ):
        raise changed(
            "compressed_segmentation_block_size",
            _list(a.compressed_segmentation_block_size),
            _list(b.compressed_segmentation_block_size),
        )
    if a.sharding != b.sharding:
        raise changed(
            "sharding",
            None if a.sharding is None else a.sharding.to_json(),
            None if b.sharding is None else b.sharding.to_json(),
        )
    if tuple(chunk_size) not in b.chunk_sizes:
        raise FailedPreconditionError(
            f"Updated metadata is missing chunk size {dump_json(list(chunk_size))} for scale "
            f"{scale_index}"
        )

"""TensorStore ``Schema`` constraints as the precomputed driver understands them: dtype,
domain, chunk layout, codec, fill value and dimension units; the generic chunk-shape
chooser used when creating a scale; and validation of a schema against an opened scale.

Conventions: every 4-vector is in the array's dimension order ``x, y, z, channel``; a chunk
shape entry ``0`` means "unconstrained" and ``-1`` means "the full domain extent"
(TensorStore's encoding). Parsing raises :class:`InvalidArgumentError`; callers that parse
*stored* data convert to :class:`FailedPreconditionError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .codecs.table import ENCODINGS
from .errors import FailedPreconditionError, InvalidArgumentError
from .internal.jsonparse import (
    MISSING,
    RankError,
    as_int,
    check_extra_members,
    dump_json,
    fail,
    format_g,
    member,
    parse_array,
    parse_dtype_name,
    parse_enum,
    parse_int,
    parse_int64,
    parse_string,
    parse_vector,
    position,
    require_object,
)

__all__ = [
    "DRIVER_ID",
    "Unit",
    "CodecSpec",
    "GridConstraints",
    "ChunkLayout",
    "Domain",
    "Schema",
    "choose_chunk_shape",
    "validate_units",
    "merge_units_with_resolution",
    "format_units",
    "scale_codec",
    "scale_domain",
]

DRIVER_ID = "neuroglancer_precomputed"
DRIVER_ALIASES = (DRIVER_ID, "neuroglancer-precomputed")
RANK = 4
LABELS = ("x", "y", "z", "channel")


# ---------------------------------------------------------------------------------------
# Units
# ---------------------------------------------------------------------------------------

_UNIT_RE = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)?\s*(.*?)\s*", re.DOTALL)


class Unit(NamedTuple):
    """A physical unit ``multiplier * base_unit`` (``Unit(4.0, "nm")`` is ``"4 nm"``)."""

    multiplier: float
    base_unit: str

    @classmethod
    def parse(cls, value: Any) -> Unit:
        """From ``"8nm"``, ``"4 nm"``, ``"nm"``, a number, or ``[8, "nm"]``."""
        if isinstance(value, Unit):
            return value
        if isinstance(value, str):
            m = _UNIT_RE.fullmatch(value)
            assert m is not None  # the pattern matches every string
            return cls(float(m.group(1)) if m.group(1) else 1.0, m.group(2))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return cls(float(value), "")
        items = parse_array(value, 2)
        with position(0):
            mult = items[0]
            if not isinstance(mult, (int, float)) or isinstance(mult, bool):
                raise fail("64-bit floating-point number", mult)
        with position(1):
            base = parse_string(items[1])
        return cls(float(mult), base)

    def __str__(self) -> str:
        if not self.base_unit:
            return format_g(self.multiplier)
        if self.multiplier == 1:
            return self.base_unit
        return f"{format_g(self.multiplier)} {self.base_unit}"

    def to_json(self) -> list[Any]:
        return [self.multiplier, self.base_unit]


def parse_units(value: Any) -> list[Unit | None]:
    items = parse_array(value)
    out: list[Unit | None] = []
    for i, item in enumerate(items):
        with position(i):
            out.append(None if item is None else Unit.parse(item))
    return out


def format_units(units: Sequence[Unit | None]) -> str:
    """``["5 nm", null, null, null]`` as in TensorStore's messages."""
    return "[" + ", ".join("null" if u is None else dump_json(str(u)) for u in units) + "]"


def validate_units(units: Sequence[Unit | None] | None) -> None:
    """x, y, z units must be (multiples of) nm; channel must have no unit."""
    if units is None:
        return
    if len(units) > 3 and units[3] is not None:
        raise InvalidArgumentError(
            f"Invalid dimension units {format_units(units)}: neuroglancer_precomputed format "
            "does not allow units to be specified for channel dimension"
        )
    if any(u is not None and u.base_unit != "nm" for u in units[:3]):
        raise InvalidArgumentError(
            f"Invalid dimension units {format_units(units)}: neuroglancer_precomputed format "
            'requires a base unit of "nm" for the "x", "y", and "z" dimensions'
        )


def merge_units_with_resolution(
    units: Sequence[Unit | None] | None, resolution: Sequence[float] | None
) -> list[Unit | None] | None:
    """Units implied by both ``schema.dimension_units`` and a ``resolution`` (in nm).

    Raises if a specified multiplier differs from the resolution.
    """
    validate_units(units)
    if resolution is None:
        return None if units is None else list(units)
    if units is not None:
        for d in range(3):
            u = units[d]
            if u is not None and u.multiplier != resolution[d]:
                res = "{" + ", ".join(format_g(r) for r in resolution) + "}"
                raise InvalidArgumentError(
                    f"Dimension units {format_units(units)} do not match "
                    f'"resolution" in metadata: {res}',
                    member_path=("resolution",),
                )
    return [Unit(float(r), "nm") for r in resolution] + [None]


# ---------------------------------------------------------------------------------------
# Codec
# ---------------------------------------------------------------------------------------

@dataclass
class CodecSpec:
    """The ``neuroglancer_precomputed`` codec (all members optional).

    ``foreign`` keeps the JSON of a codec of another driver, which never merges.
    """

    encoding: str | None = None
    jpeg_quality: int | None = None
    png_level: int | None = None
    shard_data_encoding: str | None = None
    foreign: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, obj: Any) -> CodecSpec:
        obj = require_object(obj)
        with member("driver"):
            driver = parse_string(obj.get("driver", MISSING))
        if driver not in DRIVER_ALIASES:
            return cls(foreign=dict(obj))
        spec = cls()
        if "encoding" in obj:
            with member("encoding"):
                spec.encoding = parse_enum(obj["encoding"], ENCODINGS)
        for name, enc, hi in (("jpeg_quality", "jpeg", 100), ("png_level", "png", 9)):
            if name in obj:
                with member(name):
                    if spec.encoding != enc:
                        raise InvalidArgumentError(f'Only valid for "{enc}" encoding')
                    setattr(spec, name, parse_int(obj[name], 0, hi))
        if "shard_data_encoding" in obj:
            with member("shard_data_encoding"):
                spec.shard_data_encoding = parse_enum(obj["shard_data_encoding"], ("raw", "gzip"))
        check_extra_members(
            obj, ("driver", "encoding", "jpeg_quality", "png_level", "shard_data_encoding")
        )
        return spec

    def to_json(self) -> dict[str, Any]:
        if self.foreign is not None:
            return dict(self.foreign)
        out: dict[str, Any] = {"driver": DRIVER_ID}
        for name in ("encoding", "jpeg_quality", "png_level", "shard_data_encoding"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    def merge(self, other: CodecSpec | None) -> CodecSpec:
        """Combine two codecs; each member set in both must be equal (TensorStore's rule)."""
        if other is None:
            return self
        prefix = (
            f"Cannot merge codec spec {dump_json(self.to_json())} with {dump_json(other.to_json())}"
        )
        if self.foreign is not None or other.foreign is not None:
            raise InvalidArgumentError(prefix)
        merged = CodecSpec()
        for name in ("encoding", "jpeg_quality", "png_level", "shard_data_encoding"):
            a, b = getattr(self, name), getattr(other, name)
            if a is not None and b is not None and a != b:
                raise InvalidArgumentError(f'{prefix}: "{name}" mismatch')
            setattr(merged, name, a if a is not None else b)
        return merged


# ---------------------------------------------------------------------------------------
# Chunk layout
# ---------------------------------------------------------------------------------------


def _hard_mismatch(what: str, dim: int, new: int, existing: int) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"Error setting {what}: New hard constraint ({new}) for dimension {dim} "
        f"does not match existing hard constraint ({existing})"
    )


@dataclass
class GridConstraints:
    """Constraints on one chunk grid (read, write or codec) of a ``chunk_layout``."""

    shape: list[int] = field(default_factory=lambda: [0] * RANK)
    shape_hard: list[bool] = field(default_factory=lambda: [False] * RANK)
    aspect_ratio: list[float] = field(default_factory=lambda: [0.0] * RANK)
    elements: int = 0
    elements_hard: bool = False

    def update_from_json(self, obj: Any) -> None:
        """Merge a JSON grid constraint into this one (hard constraints must agree)."""
        obj = require_object(obj)
        check_extra_members(
            obj,
            (
                "shape",
                "shape_soft_constraint",
                "aspect_ratio",
                "aspect_ratio_soft_constraint",
                "elements",
                "elements_soft_constraint",
            ),
        )
        for name, hard in (("shape", True), ("shape_soft_constraint", False)):
            if name in obj:
                with member(name):
                    values = _parse_shape(obj[name])
                    for d, v in enumerate(values):
                        self._set_shape(d, v, hard)
        for name in ("aspect_ratio", "aspect_ratio_soft_constraint"):
            if name in obj:
                with member(name):
                    ratios = _parse_aspect(obj[name])
                    for d, r in enumerate(ratios):
                        if r and not self.aspect_ratio[d]:
                            self.aspect_ratio[d] = r
        for name, hard in (("elements", True), ("elements_soft_constraint", False)):
            if name not in obj or obj[name] is None:
                continue
            with member(name):
                n = as_int(obj[name])
                if n is None or n < 0:
                    raise InvalidArgumentError(f"Invalid value: {dump_json(obj[name])}")
                if n and hard:
                    if self.elements_hard and self.elements != n:
                        raise InvalidArgumentError(
                            f"New hard constraint ({n}) does not match existing hard "
                            f"constraint ({self.elements})"
                        )
                    self.elements, self.elements_hard = n, True
                elif n and not self.elements:
                    self.elements = n

    def _set_shape(self, d: int, v: int, hard: bool) -> None:
        if v == 0:
            return
        if hard:
            if self.shape_hard[d] and self.shape[d] != v:
                raise InvalidArgumentError(
                    f"New hard constraint ({v}) for dimension {d} does not match existing "
                    f"hard constraint ({self.shape[d]})"
                )
            self.shape[d], self.shape_hard[d] = v, True
        elif not self.shape_hard[d] and not self.shape[d]:
            self.shape[d] = v

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        hard = [v if h else None for v, h in zip(self.shape, self.shape_hard, strict=True)]
        soft = [
            v if v and not h else None for v, h in zip(self.shape, self.shape_hard, strict=True)
        ]
        if any(v is not None for v in hard):
            out["shape"] = hard
        if any(v is not None for v in soft):
            out["shape_soft_constraint"] = soft
        if any(self.aspect_ratio):
            out["aspect_ratio"] = [v or None for v in self.aspect_ratio]
        if self.elements:
            out["elements" if self.elements_hard else "elements_soft_constraint"] = self.elements
        return out


def _parse_shape(value: Any) -> list[int]:
    items = _rank_array(value)
    out: list[int] = []
    for item in items:
        v = 0 if item is None else as_int(item)
        if v is None or v < -1:
            raise InvalidArgumentError(
                f"Invalid value for dimension {len(out)}: {{{', '.join(map(str, items))}}}"
            )
        out.append(v)
    return out


def _parse_aspect(value: Any) -> list[float]:
    items = _rank_array(value)
    out = []
    for item in items:
        if item is None:
            out.append(0.0)
            continue
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not item >= 0:
            raise InvalidArgumentError(
                f"Invalid value for dimension {len(out)}: {{{', '.join(map(str, items))}}}"
            )
        out.append(float(item))
    return out


@dataclass
class ChunkLayout:
    """TensorStore's ``chunk_layout``: grid origin, inner order and the three chunk grids.

    One class for both uses: a spec's constraint (members may be soft or unset), and the
    layout of an opened scale (:meth:`of_scale`: every member a hard constraint), whose
    shapes read as :attr:`read_chunk`, :attr:`write_chunk` and :attr:`codec_chunk` in x,
    y, z, channel order.
    """

    #: A list while constraints are parsed; an opened scale's layout holds tuples.
    grid_origin: Sequence[int | None] = field(default_factory=lambda: [None] * RANK)
    grid_origin_hard: list[bool] = field(default_factory=lambda: [False] * RANK)
    inner_order: Sequence[int] | None = None
    inner_order_hard: bool = False
    read: GridConstraints = field(default_factory=GridConstraints)
    write: GridConstraints = field(default_factory=GridConstraints)
    codec: GridConstraints = field(default_factory=GridConstraints)

    @classmethod
    def of_scale(
        cls,
        grid_origin: Sequence[int],
        read_chunk: Sequence[int],
        write_chunk: Sequence[int],
        codec_chunk: Sequence[int] | None = None,
    ) -> ChunkLayout:
        """The layout of an opened scale (x, y, z, channel): all hard constraints, inner
        order channel, z, y, x, as TensorStore reports it."""
        layout = cls(
            grid_origin=tuple(int(v) for v in grid_origin),
            grid_origin_hard=[True] * RANK,
            inner_order=(3, 2, 1, 0),
            inner_order_hard=True,
        )
        for grid, shape in (
            (layout.read, read_chunk),
            (layout.write, write_chunk),
            (layout.codec, codec_chunk),
        ):
            if shape is not None:
                grid.shape, grid.shape_hard = [int(v) for v in shape], [True] * RANK
        return layout

    @property
    def read_chunk(self) -> tuple[int, ...]:
        """Read chunk shape (x, y, z, channel; 0 where unconstrained)."""
        return tuple(self.read.shape)

    @property
    def write_chunk(self) -> tuple[int, ...]:
        """Write chunk shape: a whole shard for sharded scales, else the read chunk."""
        return tuple(self.write.shape)

    @property
    def codec_chunk(self) -> tuple[int, ...] | None:
        """The compressed_segmentation block (x, y, z, 1), ``None`` for other encodings."""
        return tuple(self.codec.shape) if any(self.codec.shape_hard) else None

    @classmethod
    def from_json(cls, obj: Any) -> ChunkLayout:
        obj = require_object(obj)
        check_extra_members(
            obj,
            (
                "rank",
                "grid_origin",
                "grid_origin_soft_constraint",
                "inner_order",
                "inner_order_soft_constraint",
                "chunk",
                "read_chunk",
                "write_chunk",
                "codec_chunk",
            ),
        )
        layout = cls()
        if "rank" in obj:
            with member("rank"):
                rank = parse_int(obj["rank"], 0, 32)
            _check_rank(rank)
        origin = list(layout.grid_origin)
        for name, hard in (("grid_origin", True), ("grid_origin_soft_constraint", False)):
            if name in obj:
                with member(name):
                    items = _rank_array(obj[name])
                    for d, item in enumerate(items):
                        if item is None:
                            continue
                        with position(d):
                            v = parse_int64(item)
                        if hard or not layout.grid_origin_hard[d]:
                            origin[d], layout.grid_origin_hard[d] = v, hard
        layout.grid_origin = origin
        for name, hard in (("inner_order", True), ("inner_order_soft_constraint", False)):
            if name in obj:
                with member(name):
                    order = [parse_int(v, 0, RANK - 1) for v in _rank_array(obj[name])]
                    if sorted(order) != list(range(RANK)):
                        raise InvalidArgumentError(
                            f"Invalid permutation: {{{', '.join(map(str, order))}}}"
                        )
                if hard or not layout.inner_order_hard:
                    layout.inner_order, layout.inner_order_hard = order, hard
        # "chunk" constrains both the read and the write grid (TensorStore semantics).
        for name, grids in (
            ("chunk", (layout.read, layout.write)),
            ("read_chunk", (layout.read,)),
            ("write_chunk", (layout.write,)),
            ("codec_chunk", (layout.codec,)),
        ):
            if name in obj:
                for grid in grids:
                    with member(name):
                        grid.update_from_json(obj[name])
        return layout

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if any(h for h in self.grid_origin_hard):
            out["grid_origin"] = [
                v if h else None
                for v, h in zip(self.grid_origin, self.grid_origin_hard, strict=True)
            ]
        soft = [
            v if not h else None
            for v, h in zip(self.grid_origin, self.grid_origin_hard, strict=True)
        ]
        if any(v is not None for v in soft):
            out["grid_origin_soft_constraint"] = soft
        if self.inner_order is not None:
            key = "inner_order" if self.inner_order_hard else "inner_order_soft_constraint"
            out[key] = list(self.inner_order)
        for name, grid in (
            ("read_chunk", self.read),
            ("write_chunk", self.write),
            ("codec_chunk", self.codec),
        ):
            j = grid.to_json()
            if j:
                out[name] = j
        return out

    def check_structure(self, origin: Sequence[int], num_channels: int) -> None:
        """The fixed parts of a precomputed layout: inner order, grid origin, unchunked
        channel dimension (read/write chunk channel extent = num_channels, codec = 1)."""
        if self.inner_order_hard and list(self.inner_order or ()) != [3, 2, 1, 0]:
            order = ", ".join(map(str, self.inner_order or ()))
            raise InvalidArgumentError(
                "Only lexicographic {channel, z, y, x} inner order is supported: Error setting "
                f"inner_order: New hard constraint ({{3, 2, 1, 0}}) does not match existing "
                f"hard constraint ({{{order}}})"
            )
        for d in range(RANK):
            want = origin[d] if d < 3 else 0
            if self.grid_origin_hard[d] and self.grid_origin[d] != want:
                raise InvalidArgumentError(
                    "Chunk grid origin must match domain origin: "
                    + str(_hard_mismatch("grid_origin", d, want, self.grid_origin[d]))  # type: ignore[arg-type]
                )
        for what, grid, want in (
            ("read_chunk", self.read, num_channels),
            ("write_chunk", self.write, num_channels),
            ("codec_chunk", self.codec, 1),
        ):
            v = grid.shape[3]
            if grid.shape_hard[3] and v not in (want, -1):
                err = _hard_mismatch(f"{what} shape", 3, want, v)
                if what == "codec_chunk":
                    raise err
                raise InvalidArgumentError(f"Chunking of channel dimension is not supported: {err}")

    @staticmethod
    def check_shape(what: str, grid: GridConstraints, actual: Sequence[int]) -> None:
        """Hard shape constraints (other than 0 and -1) must equal ``actual`` (xyz)."""
        for d in range(3):
            v = grid.shape[d]
            if grid.shape_hard[d] and v > 0 and v != actual[d]:
                raise _hard_mismatch(f"{what} shape", d, actual[d], v)


def _check_rank(rank: int, where: str = "schema") -> None:
    if rank != RANK:
        raise RankError(
            f"Rank specified by rank ({RANK}) does not match existing rank specified by "
            f"{where} ({rank})"
        )


def _rank_array(value: Any) -> list[Any]:
    """An array with one entry per dimension (a different length is a rank mismatch)."""
    items = parse_array(value)
    _check_rank(len(items))
    return items


def choose_chunk_shape(
    extent: Sequence[int],
    grid: GridConstraints,
    fixed: Mapping[int, int],
    default_elements: int,
) -> list[int]:
    """TensorStore's generic chunk-shape chooser (§2.7 step 6).

    Dimensions with a shape constraint (hard or soft; ``-1`` = full extent) or listed in
    ``fixed`` keep that size. The others get ``clamp(floor(aspect[d] * f), 1, cap[d])``
    (aspect 0 counts as 1; ``cap`` = min(target, extent)) for the largest common factor
    ``f`` whose total element count (fixed dimensions included) does not exceed the
    target (``grid.elements`` or ``default_elements``).

    Known difference: TensorStore bisects ``f`` only to within ~half a step of the
    smallest ``1/aspect``, so with unequal aspect ratios it sometimes stops one voxel
    short in some dimension where this returns the largest fitting shape (about 3% of
    random aspect-ratio cases; never with the default aspect ratio).
    """
    rank = len(extent)
    chunk = [0] * rank
    for d in range(rank):
        if d in fixed:
            chunk[d] = fixed[d]
        elif grid.shape[d] == -1:
            chunk[d] = max(1, extent[d])
        elif grid.shape[d] > 0:
            chunk[d] = grid.shape[d]
    free = [d for d in range(rank) if chunk[d] == 0]
    if not free:
        return chunk
    target = grid.elements or default_elements
    aspect = {d: grid.aspect_ratio[d] or 1.0 for d in free}
    cap = {d: max(1, min(target, extent[d])) for d in free}
    fixed_elements = math.prod(c for c in chunk if c)

    def sizes(f: float) -> dict[int, int]:
        return {d: max(1, min(math.floor(aspect[d] * f), cap[d])) for d in free}

    def fits(f: float) -> bool:
        return fixed_elements * math.prod(sizes(f).values()) <= target

    # The element count is a monotone step function of f: bisect for the supremum of the
    # factors that fit; the sizes just below it are the answer.
    lo, hi = 0.0, max((cap[d] + 1) / aspect[d] for d in free)
    if fits(hi):
        lo = hi
    else:
        for _ in range(200):
            mid = (lo + hi) / 2
            if mid in (lo, hi):
                break
            if fits(mid):
                lo = mid
            else:
                hi = mid
    for d, s in sizes(lo).items():
        chunk[d] = s
    return chunk


# ---------------------------------------------------------------------------------------
# Domain
# ---------------------------------------------------------------------------------------


@dataclass
class Domain:
    """An index domain constraint; ``None`` bounds are unknown/infinite."""

    labels: list[str] | None = None
    inclusive_min: list[int | None] = field(default_factory=lambda: [None] * RANK)
    exclusive_max: list[int | None] = field(default_factory=lambda: [None] * RANK)

    @classmethod
    def from_json(cls, obj: Any) -> Domain:
        obj = require_object(obj)
        check_extra_members(
            obj, ("rank", "labels", "inclusive_min", "exclusive_max", "inclusive_max", "shape")
        )
        dom = cls()
        if "rank" in obj:
            with member("rank"):
                _check_rank(parse_int(obj["rank"], 0, 32))
        if "labels" in obj:
            with member("labels"):
                dom.labels = [parse_string(v) for v in _rank_array(obj["labels"])]
                named = [v for v in dom.labels if v]
                dups = sorted({v for v in named if named.count(v) > 1})
                if dups:
                    raise InvalidArgumentError(
                        "Dimension label(s) "
                        + ", ".join(dump_json(v) for v in dups)
                        + " not unique"
                    )
        if "inclusive_min" in obj:
            with member("inclusive_min"):
                dom.inclusive_min = _parse_bounds(obj["inclusive_min"], "-inf")
        elif "shape" in obj:
            dom.inclusive_min = [0] * RANK
        for name, delta in (("exclusive_max", 0), ("inclusive_max", 1)):
            if name in obj:
                with member(name):
                    bounds = _parse_bounds(obj[name], "+inf")
                dom.exclusive_max = [None if b is None else b + delta for b in bounds]
        if "shape" in obj:
            with member("shape"):
                shape = parse_vector(_rank_array(obj["shape"]), parse_int64, RANK)
            for d, s in enumerate(shape):
                lo = dom.inclusive_min[d]
                if s < 0 or lo is None:
                    raise InvalidArgumentError(
                        f"({lo}, {s}) do not specify a valid sized index interval"
                    )
                dom.exclusive_max[d] = lo + s
        return dom

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.labels is not None:
            out["labels"] = list(self.labels)
        if any(v is not None for v in self.inclusive_min):
            out["inclusive_min"] = ["-inf" if v is None else v for v in self.inclusive_min]
        if any(v is not None for v in self.exclusive_max):
            out["exclusive_max"] = ["+inf" if v is None else v for v in self.exclusive_max]
        return out

    def render(self) -> str:
        """``{ "x": [0, 100), ... }`` roughly as TensorStore prints a domain."""
        parts = []
        for d in range(RANK):
            lo, hi = self.inclusive_min[d], self.exclusive_max[d]
            label = f"{dump_json(self.labels[d])}: " if self.labels and self.labels[d] else ""
            parts.append(
                f"{label}{'(-inf*' if lo is None else f'[{lo}'}, {'+inf*)' if hi is None else f'{hi})'}"
            )
        return "{ " + ", ".join(parts) + " }"

    def merge(self, other: Domain) -> Domain:
        """Intersect knowledge of two domains; raises on conflicting labels or bounds."""
        merged = Domain(labels=self.labels or other.labels)
        for d in range(RANK):
            a = self.labels[d] if self.labels else ""
            b = other.labels[d] if other.labels else ""
            if a and b and a != b:
                raise self._mismatch(other, d, "Dimension labels do not match")
            for name, what in (("inclusive_min", "Lower"), ("exclusive_max", "Upper")):
                x, y = getattr(self, name)[d], getattr(other, name)[d]
                if x is not None and y is not None and x != y:
                    raise self._mismatch(other, d, f"{what} bounds do not match")
                getattr(merged, name)[d] = x if x is not None else y
        if merged.labels is not None and other.labels is not None:
            merged.labels = [a or b for a, b in zip(merged.labels, other.labels, strict=True)]
        return merged

    def _mismatch(self, other: Domain, d: int, what: str) -> InvalidArgumentError:
        return InvalidArgumentError(
            f"Cannot merge index domain {self.render()} with index domain {other.render()}: "
            f"Mismatch in dimension {d}: {what}"
        )


def _parse_bounds(value: Any, infinity: str) -> list[int | None]:
    out: list[int | None] = []
    for i, item in enumerate(_rank_array(value)):
        with position(i):
            if isinstance(item, list) and len(item) == 1:
                item = item[0]  # an implicit bound: used like an explicit one here
            if item == infinity:
                out.append(None)
                continue
            v = as_int(item)
            if v is None:
                raise fail(f'64-bit signed integer or "{infinity}"', item)
            out.append(v)
    return out


# ---------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------


@dataclass
class Schema:
    """A TensorStore schema restricted to what the precomputed driver interprets."""

    dtype: str | None = None
    rank: int | None = None
    domain: Domain | None = None
    chunk_layout: ChunkLayout = field(default_factory=ChunkLayout)
    codec: CodecSpec | None = None
    fill_value: Any = MISSING
    dimension_units: list[Unit | None] | None = None

    @classmethod
    def from_json(cls, obj: Any) -> Schema:
        if isinstance(obj, Schema):
            return obj
        obj = require_object(obj)
        check_extra_members(
            obj,
            ("dtype", "rank", "domain", "chunk_layout", "codec", "fill_value", "dimension_units"),
        )
        s = cls()
        if "rank" in obj:
            with member("rank"):
                s.rank = parse_int(obj["rank"], 0, 32)
            _check_rank(s.rank)
        if "dtype" in obj:
            with member("dtype"):
                s.dtype = parse_dtype_name(obj["dtype"])
        if "domain" in obj:
            with member("domain"):
                try:
                    s.domain = Domain.from_json(obj["domain"])
                except RankError:
                    raise
                except InvalidArgumentError as e:
                    raise InvalidArgumentError(
                        f"Error parsing index domain from JSON: {e}"
                    ) from None
        if "chunk_layout" in obj:
            with member("chunk_layout"):
                s.chunk_layout = ChunkLayout.from_json(obj["chunk_layout"])
        if "codec" in obj:
            with member("codec"):
                s.codec = CodecSpec.from_json(obj["codec"])
        if "fill_value" in obj:
            s.fill_value = obj["fill_value"]
        if "dimension_units" in obj:
            with member("dimension_units"):
                units = parse_units(obj["dimension_units"])
                _check_rank(len(units))
                s.dimension_units = units
        return s

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.dtype is not None:
            out["dtype"] = self.dtype
        if self.rank is not None:
            out["rank"] = self.rank
        if self.domain is not None:
            out["domain"] = self.domain.to_json()
        layout = self.chunk_layout.to_json()
        if layout:
            out["chunk_layout"] = layout
        if self.codec is not None:
            out["codec"] = self.codec.to_json()
        if self.fill_value is not MISSING:
            out["fill_value"] = self.fill_value
        if self.dimension_units is not None:
            out["dimension_units"] = [
                None if u is None else u.to_json() for u in self.dimension_units
            ]
        return out

    def merge_dtype(self, dtype: str | None) -> None:
        """Fold a top-level ``dtype`` into the schema (TensorStore's message on conflict)."""
        if dtype is None:
            return
        if self.dtype is not None and self.dtype != dtype:
            raise InvalidArgumentError(
                f"Specified dtype ({dtype}) does not match existing value ({self.dtype})"
            )
        self.dtype = dtype

    def check_fill_value(self) -> None:
        if self.fill_value is not MISSING:
            raise InvalidArgumentError(
                "fill_value not supported by neuroglancer_precomputed format"
            )

    # -- open-time validation (§2.6) ----------------------------------------------------
    def validate_against(self, meta: Any, scale_index: int, chunk_size: Sequence[int]) -> None:
        """Check this schema against an opened scale of ``meta`` (a ``MultiscaleMetadata``,
        used only through its members, so the schema stays below the info model): dtype,
        codec, domain, chunk layout, fill value and dimension units, in TensorStore's order
        and words."""
        scale = meta.scales[scale_index]
        if self.dtype is not None and self.dtype != meta.data_type:
            raise FailedPreconditionError(
                f"data_type from metadata ({meta.data_type}) does not match dtype in schema "
                f"({self.dtype})"
            )
        if self.codec is not None:
            if self.codec.shard_data_encoding is not None and scale.sharding is None:
                raise InvalidArgumentError("shard_data_encoding requires sharded format")
            try:
                scale_codec(scale).merge(self.codec)
            except InvalidArgumentError as e:
                raise InvalidArgumentError(
                    f"codec from metadata does not match codec in schema: {e}"
                ) from None
        if self.domain is not None:
            try:
                scale_domain(scale, meta.num_channels).merge(self.domain)
            except InvalidArgumentError as e:
                raise InvalidArgumentError(
                    f"domain from metadata does not match domain in schema: {e}"
                ) from None
        self.validate_chunk_layout(scale, meta.num_channels, chunk_size, "open")
        self.check_fill_value()
        merge_units_with_resolution(self.dimension_units, scale.resolution)

    def validate_chunk_layout(
        self, scale: Any, num_channels: int, chunk_size: Sequence[int], mode: str = "open"
    ) -> None:
        """Hard chunk layout constraints against a scale (``mode``: "open" or "create")."""
        layout = self.chunk_layout
        prefix = (
            "chunk layout from metadata does not match chunk layout in schema: "
            if mode == "open"
            else ""
        )
        try:
            layout.check_structure(scale.voxel_offset, num_channels)
            layout.check_shape("read_chunk", layout.read, chunk_size)
            # Sharded write chunks are not checked: TensorStore accepts any hard write chunk
            # shape when opening a sharded scale (observed with 0.1.86).
            if scale.sharding is None:
                layout.check_shape("write_chunk", layout.write, chunk_size)
        except InvalidArgumentError as e:
            raise InvalidArgumentError(f"{prefix}{e}") from None
        if scale.encoding != "compressed_segmentation":
            if any(
                h and v for v, h in zip(layout.codec.shape, layout.codec.shape_hard, strict=True)
            ):
                raise InvalidArgumentError(
                    f"codec_chunk_shape not supported by {scale.encoding} encoding"
                )
        else:
            try:
                layout.check_shape(
                    "codec_chunk", layout.codec, scale.compressed_segmentation_block_size
                )
            except InvalidArgumentError as e:
                raise InvalidArgumentError(f"{prefix}{e}") from None


def scale_domain(scale: Any, num_channels: int) -> Domain:
    """The explicit domain of an opened scale: ``[voxel_offset, voxel_offset + size)`` and
    ``[0, num_channels)``, labelled x, y, z, channel."""
    lo = [*scale.voxel_offset, 0]
    hi = [o + s for o, s in zip(scale.voxel_offset, scale.size, strict=True)] + [num_channels]
    return Domain(labels=list(LABELS), inclusive_min=lo, exclusive_max=hi)


def scale_codec(scale: Any) -> CodecSpec:
    """The codec TensorStore reports for a scale."""
    return CodecSpec(
        encoding=scale.encoding,
        jpeg_quality=scale.jpeg_quality if scale.encoding == "jpeg" else None,
        png_level=scale.png_level if scale.encoding == "png" else None,
        shard_data_encoding=scale.sharding.data_encoding if scale.sharding is not None else None,
    )

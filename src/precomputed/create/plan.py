"""Planning, with no I/O: what creating a scale or a pyramid would produce, validated with
the driver's own rules (the create widget's live preview), and the data types and
methods a volume of some data would get."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import constraints
from .. import metadata as md
from ..downsample import check_factor, downsampled_geometry
from ..errors import InvalidArgumentError
from ..sharding import ShardingSpec, choose_sharding, write_chunk_shape
from ..spec import parse_spec
from ..volume import Volume

__all__ = [
    "DRIVER",
    "ScalePlan",
    "plan_scale",
    "plan_pyramid",
    "next_scale_metadata",
    "supported_data_type",
    "default_method",
    "valid_factor",
    "level_factors",
    "Level",
    "plan_levels",
    "check_downsample_geometry",
]

DRIVER = "neuroglancer_precomputed"


def valid_factor(factor: Sequence[int]) -> tuple[int, int, int]:
    try:
        return check_factor(factor)
    except ValueError as e:
        raise InvalidArgumentError(str(e)) from None


@dataclass(frozen=True)
class ScalePlan:
    """What creating a scale would produce: the whole new ``info`` and the new scale."""

    metadata: md.MultiscaleMetadata
    scale_index: int

    @property
    def scale(self) -> md.ScaleMetadata:
        return self.metadata.scales[self.scale_index]

    @property
    def key(self) -> str:
        return self.scale.key

    @property
    def info(self) -> dict[str, Any]:
        """The ``info`` JSON as the driver (and TensorStore) writes it."""
        return json.loads(self.metadata.dumps())

    @property
    def write_chunk_shape(self) -> tuple[int, int, int]:
        """Voxels written together (a shard for sharded scales, else a chunk), x, y, z."""
        s = self.scale
        if s.sharding is None:
            return tuple(s.chunk_sizes[0])  # type: ignore[return-value]
        return write_chunk_shape(s.sharding, s.size, s.chunk_sizes[0])

    @property
    def num_chunks(self) -> int:
        s = self.scale
        return math.prod(-(-n // c) for n, c in zip(s.size, s.chunk_sizes[0], strict=True))


def plan_scale(
    multiscale_metadata: Mapping[str, Any] | None = None,
    scale_metadata: Mapping[str, Any] | None = None,
    existing: md.MultiscaleMetadata | Mapping[str, Any] | None = None,
) -> ScalePlan:
    """Validate the two spec members exactly as ``precomputed.open(spec, create=True)``
    does and return the metadata the creation would write. No I/O.

    ``existing`` is the volume's current ``info`` (parsed or JSON) when adding a scale.
    Raises the driver's errors (:class:`InvalidArgumentError` for a malformed spec,
    :class:`FailedPreconditionError` for conflicts with ``existing``,
    :class:`AlreadyExistsError` for a duplicate key or resolution), worded as TensorStore's.
    """
    spec: dict[str, Any] = {"driver": DRIVER, "kvstore": {"driver": "memory"}}
    if multiscale_metadata is not None:
        spec["multiscale_metadata"] = dict(multiscale_metadata)
    if scale_metadata is not None:
        spec["scale_metadata"] = dict(scale_metadata)
    req = parse_spec(spec, create=True)
    if existing is not None and not isinstance(existing, md.MultiscaleMetadata):
        existing = md.MultiscaleMetadata.from_json(existing)
    meta, index = constraints.create_scale(existing, req.multiscale, req.scale, req.scale_index, req.schema)
    return ScalePlan(meta, index)


def supported_data_type(dtype: Any, segmentation: bool = False) -> tuple[str, str | None]:
    """The Precomputed data type that stores values of numpy ``dtype``, and a note when
    values change representation. Raises :class:`InvalidArgumentError` when none can.

    Segmentations map to uint32 or uint64 (the types compressed_segmentation supports);
    label values must then be non-negative, which :func:`write_array` checks.
    """
    dt = np.dtype(dtype)
    name = dt.name
    if segmentation:
        if name in ("uint32", "uint64"):
            return name, None
        if dt.kind in "biu":
            target = "uint64" if dt.itemsize == 8 else "uint32"
            return target, f"{name} labels are stored as {target}"
        raise InvalidArgumentError(
            f"{name} labels cannot be stored: a segmentation needs integer label ids "
            "(uint32 or uint64)"
        )
    if name in md.SUPPORTED_DTYPES:
        return name, None
    if dt.kind == "b":
        return "uint8", "bool values are stored as uint8 (0 and 1)"
    if name == "float16":
        return "float32", "float16 values are stored as float32"
    if name == "float64":
        return "float32", "float64 values are stored as float32 (precision is reduced)"
    supported = ", ".join(md.SUPPORTED_DTYPES)
    hint = {
        "int64": "convert the data to int32 or float32 (label ids: use a Labels layer)",
    }.get(name, "convert the data to one of them")
    raise InvalidArgumentError(f"{name} is not a Precomputed data type ({supported}): {hint}")


def default_method(volume_type: str) -> str:
    """``"mode"`` for segmentations, ``"mean"`` for everything else."""
    return "mode" if volume_type == "segmentation" else "mean"


def next_scale_metadata(source: md.ScaleMetadata | Volume, factor: Sequence[int]) -> dict[str, Any]:
    """``scale_metadata`` of the scale that downsamples ``source`` by ``factor`` (x, y, z).

    Size is rounded up, voxel offset rounded down and resolution multiplied, as
    CloudVolume's ``add_scale`` computes them (for a factor relative to scale 0 the two
    agree, since ceil and floor of nested integer divisions compose); the key is left to
    the driver (``"<x>_<y>_<z>"`` of the resolution, which is CloudVolume's key for
    integral resolutions). Chunk size, encoding and its parameters are the source's.
    Sharding: none if the source is unsharded, else TensorStore's automatic choice for
    shards holding as many voxels as the source's.
    """
    scale = source.scale if isinstance(source, Volume) else source
    f = valid_factor(factor)
    size, offset, res = downsampled_geometry(scale.size, scale.voxel_offset, scale.resolution, f)
    chunk = list(scale.chunk_sizes[0])
    out: dict[str, Any] = {
        "size": list(size),
        "voxel_offset": list(offset),
        "resolution": list(res),
        "chunk_size": chunk,
        "encoding": scale.encoding,
    }
    if scale.encoding == "jpeg" and scale.jpeg_quality is not None:
        out["jpeg_quality"] = scale.jpeg_quality
    if scale.encoding == "png" and scale.png_level is not None:
        out["png_level"] = scale.png_level
    if scale.encoding == "compressed_segmentation":
        out["compressed_segmentation_block_size"] = list(
            scale.compressed_segmentation_block_size or (8, 8, 8)
        )
    sharding: ShardingSpec | None = None
    if scale.sharding is not None:
        elements = math.prod(write_chunk_shape(scale.sharding, scale.size, scale.chunk_sizes[0]))
        sharding = choose_sharding(
            size,
            chunk,
            write_chunk_elements=elements,
            shard_data_encoding=scale.sharding.data_encoding,
            encoding=scale.encoding,
        )
    out["sharding"] = None if sharding is None else sharding.to_json()
    return out


def check_downsample_geometry(
    src: md.ScaleMetadata, dst: md.ScaleMetadata, factor: Sequence[int]
) -> None:
    size, _, _ = downsampled_geometry(src.size, src.voxel_offset, src.resolution, factor)
    if tuple(dst.size) != tuple(size):
        raise InvalidArgumentError(
            f'"size" of {list(dst.size)} cannot hold scale "{src.key}" ({list(src.size)}) '
            f"downsampled by {list(factor)}: expected {list(size)}"
        )


@dataclass
class Level:
    """A planned pyramid step: source scale -> new scale metadata."""

    factor: tuple[int, int, int]
    scale_metadata: dict[str, Any]
    plan: ScalePlan


def plan_levels(
    meta: md.MultiscaleMetadata,
    source_index: int,
    factors: Sequence[Sequence[int]],
    overrides: Mapping[str, Any] | None,
) -> list[Level]:
    levels = []
    current = meta
    src = meta.scales[source_index]
    for f in factors:
        f3 = valid_factor(f)
        sm = {**next_scale_metadata(src, f3), **(overrides or {})}
        plan = plan_scale(None, sm, current)
        check_downsample_geometry(src, plan.scale, f3)
        levels.append(Level(f3, sm, plan))
        current = plan.metadata
        src = plan.scale
    return levels


def plan_pyramid(
    metadata: md.MultiscaleMetadata | Mapping[str, Any],
    source_index: int,
    factors: Sequence[Sequence[int]],
) -> list[ScalePlan]:
    """Validate a pyramid without I/O: the plans of the scales that downsampling scale
    ``source_index`` of ``metadata`` by each of ``factors`` in turn would add."""
    if not isinstance(metadata, md.MultiscaleMetadata):
        metadata = md.MultiscaleMetadata.from_json(metadata)
    return [lv.plan for lv in plan_levels(metadata, source_index, factors, None)]


def level_factors(
    levels: int | Sequence[Sequence[int]], factor: Sequence[int]
) -> list[tuple[int, int, int]]:
    if isinstance(levels, int):
        if levels < 0:
            raise InvalidArgumentError(f"levels must be >= 0, not {levels}")
        return [valid_factor(factor)] * levels
    return [valid_factor(f) for f in levels]

"""The mesh directory's ``info``: which format, and how positions map to nm."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import FailedPreconditionError, InvalidArgumentError
from ..sharding import ShardingSpec

__all__ = ["MULTILOD_TYPE", "LEGACY_TYPE", "MeshInfo", "parse_mesh_info"]

MULTILOD_TYPE = "neuroglancer_multilod_draco"
LEGACY_TYPE = "neuroglancer_legacy_mesh"
_IDENTITY = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass(frozen=True)
class MeshInfo:
    """A parsed mesh ``info``. ``transform``: 3x4 row-major, stored model -> model (nm)
    coordinates; identity for legacy meshes (Neuroglancer ignores any transform there).
    ``extra``: other members (``mip``, ``spatial_index``, ...), kept on rewrite."""

    type: str
    vertex_quantization_bits: int = 16
    transform: tuple[float, ...] = _IDENTITY
    lod_scale_multiplier: float = 1.0
    sharding: ShardingSpec | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def matrix(self) -> np.ndarray:
        """``transform`` as a float64 ``(3, 4)`` array."""
        return np.array(self.transform, dtype=np.float64).reshape(3, 4)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out["@type"] = self.type
        if self.type == MULTILOD_TYPE:
            out["vertex_quantization_bits"] = self.vertex_quantization_bits
            out["transform"] = [float(v) for v in self.transform]
            out["lod_scale_multiplier"] = float(self.lod_scale_multiplier)
            if self.sharding is not None:
                out["sharding"] = self.sharding.to_json()
            else:
                out.pop("sharding", None)
        return out

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True).encode()


def _fail(key: str, member: str, message: str) -> FailedPreconditionError:
    return FailedPreconditionError(f'Error reading "{key}": member "{member}": {message}')


def parse_mesh_info(obj: Any, key: str = "info") -> MeshInfo:
    """Validate a mesh ``info`` object as Neuroglancer does (errors name the member)."""
    if not isinstance(obj, Mapping):
        raise FailedPreconditionError(
            f'Error reading "{key}": Expected object, but received: {obj!r:.60}'
        )
    t = obj.get("@type")
    known = {"@type", "vertex_quantization_bits", "transform", "lod_scale_multiplier", "sharding"}
    extra = {k: v for k, v in obj.items() if k not in known}
    if t == LEGACY_TYPE:
        return MeshInfo(LEGACY_TYPE, extra=extra)
    if t != MULTILOD_TYPE:
        raise _fail(
            key, "@type", f'Expected "{MULTILOD_TYPE}" or "{LEGACY_TYPE}", but received: {t!r:.60}'
        )
    bits = obj.get("vertex_quantization_bits")
    if bits not in (10, 16) or isinstance(bits, bool):
        raise _fail(
            key, "vertex_quantization_bits", f"Expected 10 or 16, but received: {bits!r:.60}"
        )
    scale = obj.get("lod_scale_multiplier")
    if (
        isinstance(scale, bool)
        or not isinstance(scale, (int, float))
        or not (math.isfinite(scale) and scale > 0)
    ):
        raise _fail(
            key,
            "lod_scale_multiplier",
            f"Expected a finite positive number, but received: {scale!r:.60}",
        )
    transform = obj.get("transform", list(_IDENTITY))
    if (
        not isinstance(transform, list)
        or len(transform) != 12
        or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in transform
        )
    ):
        raise _fail(
            key, "transform", f"Expected 12 finite numbers, but received: {transform!r:.80}"
        )
    sharding = None
    if obj.get("sharding") is not None:
        try:
            sharding = ShardingSpec.from_json(obj["sharding"])
        except InvalidArgumentError as e:
            raise FailedPreconditionError(f'Error reading "{key}": {e}') from None
    return MeshInfo(
        MULTILOD_TYPE, int(bits), tuple(float(v) for v in transform), float(scale), sharding, extra
    )

"""Info documents and create helpers shared by test_metadata.py and test_constraints.py."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from precomputed.constraints import (
    create_scale,
)
from precomputed.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
)
from precomputed.metadata import (
    MultiscaleMetadata,
)
from precomputed.spec import parse_spec

ts = pytest.importorskip("tensorstore")

SHARDING = {
    "@type": "neuroglancer_uint64_sharded_v1",
    "preshift_bits": 1,
    "hash": "identity",
    "minishard_bits": 2,
    "shard_bits": 3,
}
SHARDING_FULL = {**SHARDING, "minishard_index_encoding": "raw", "data_encoding": "raw"}
BASE_INFO: dict[str, Any] = {
    "@type": "neuroglancer_multiscale_volume",
    "type": "image",
    "data_type": "uint8",
    "num_channels": 1,
    "scales": [
        {
            "key": "k",
            "size": [10, 10, 10],
            "resolution": [1, 1, 1],
            "chunk_sizes": [[5, 5, 5]],
            "encoding": "raw",
        }
    ],
}


def info_with(top: dict[str, Any] | None = None, **scale: Any) -> dict[str, Any]:
    """BASE_INFO with top-level and scale-0 members replaced (``None`` values kept)."""
    info = copy.deepcopy(BASE_INFO)
    info.update(top or {})
    if scale:
        info["scales"][0].update(scale)
    return info


def without(info: dict[str, Any], name: str, scale: bool = False) -> dict[str, Any]:
    info = copy.deepcopy(info)
    (info["scales"][0] if scale else info).pop(name)
    return info


def ts_create(path: Path, specs: list[dict[str, Any]]) -> list[str]:
    """Run TensorStore create-only opens in one volume; the info text (or error) after each."""
    out = []
    for spec in specs:
        full = {
            "driver": "neuroglancer_precomputed",
            "kvstore": {"driver": "file", "path": str(path)},
        }
        try:
            ts.open({**full, **spec}, create=True).result()
            out.append((path / "info").read_text())
        except ValueError as e:
            out.append("ERROR " + str(e).split(" [tensorstore_spec=")[0])
    return out


def my_create(specs: list[dict[str, Any]]) -> list[str]:
    meta = None
    out = []
    for spec in specs:
        req = parse_spec({"driver": "neuroglancer_precomputed", "kvstore": "memory://", **spec})
        try:
            meta, _ = create_scale(meta, req.multiscale, req.scale, req.scale_index, req.schema)
            out.append(meta.dumps().decode())
        except (InvalidArgumentError, FailedPreconditionError, AlreadyExistsError) as e:
            out.append("ERROR " + str(e))
    return out


def parse_error(info: Any) -> str:
    with pytest.raises(FailedPreconditionError) as e:
        MultiscaleMetadata.from_json(info)
    return str(e.value)


MM8 = {"data_type": "uint8", "num_channels": 1}
MM32 = {"data_type": "uint32", "num_channels": 1}

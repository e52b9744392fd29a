"""Small builders of volume JSON shared by the tests (importable like tests/servers.py)."""

from __future__ import annotations

from typing import Any


def sharding_json(
    preshift: int,
    minishard: int,
    shard: int,
    hash: str = "identity",
    data: str = "raw",
    index: str = "raw",
) -> dict[str, Any]:
    """A ``neuroglancer_uint64_sharded_v1`` object with all seven members."""
    return {
        "@type": "neuroglancer_uint64_sharded_v1",
        "preshift_bits": preshift,
        "hash": hash,
        "minishard_bits": minishard,
        "shard_bits": shard,
        "minishard_index_encoding": index,
        "data_encoding": data,
    }


def volume_spec(
    kvstore: Any, data_type: str, num_channels: int = 1, type: str = "image", **scale: Any
) -> dict[str, Any]:
    """A ``neuroglancer_precomputed`` spec that creates (or opens) one scale: ``scale``
    holds the ``scale_metadata`` members (size, chunk_size, encoding, sharding, ...)."""
    return {
        "driver": "neuroglancer_precomputed",
        "kvstore": kvstore,
        "multiscale_metadata": {"type": type, "data_type": data_type, "num_channels": num_channels},
        "scale_metadata": scale,
    }

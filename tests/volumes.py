"""Small builders of volume JSON shared by the tests (importable like tests/servers.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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


#: A 2 x 2 x 1-chunk uint32 segmentation (8 x 8 x 4 voxels, 4³ chunks), and the one-shard
#: sharding that puts all of its chunks into one shard file.
SMALL_SIZE, SMALL_CHUNK = (8, 8, 4), (4, 4, 4)
ONE_SHARD = {
    "@type": "neuroglancer_uint64_sharded_v1",
    "preshift_bits": 0,
    "hash": "identity",
    "minishard_bits": 0,
    "shard_bits": 0,
    "minishard_index_encoding": "raw",
    "data_encoding": "gzip",
}


def small_memory_volume(kv: Any, sharded: bool) -> Any:
    """The small segmentation created on the memory store ``kv``, every voxel 1, in a
    context of its own."""
    import precomputed

    scale: dict[str, Any] = {"size": list(SMALL_SIZE), "chunk_size": list(SMALL_CHUNK), "encoding": "raw"}
    if sharded:
        scale["sharding"] = ONE_SHARD
    vol = precomputed.open(
        {
            "driver": "neuroglancer_precomputed",
            "kvstore": {"driver": "memory"},
            "multiscale_metadata": {"data_type": "uint32", "num_channels": 1, "type": "segmentation"},
            "scale_metadata": scale,
        },
        create=True,
        kvstore=kv,
        context=precomputed.Context(),
    )
    vol[...] = 1
    return vol


def other_writer(kv: Any) -> Any:
    """Another writer of the volume on ``kv``: its own handle and context."""
    import precomputed

    return precomputed.open(
        {"driver": "neuroglancer_precomputed", "kvstore": {"driver": "memory"}},
        kvstore=kv,
        context=precomputed.Context(),
    )


@contextlib.contextmanager
def beaten_at_every_write(kv: Any, theirs: Any) -> Iterator[list[int]]:
    """While inside, every conditional write to the memory store ``kv`` is preceded by
    ``theirs`` (another writer's handle) changing voxels 6:8, 6:8, 0 of the volume, so the
    condition always fails; yields the count of such interruptions."""
    real = kv._write_if
    beaten = [0]
    inside = [False]

    def always_beaten(key: str, data: Any, generation: str) -> Any:
        if not inside[0]:  # our write: another chunk of the shard changes first, each time
            beaten[0] += 1
            inside[0] = True
            try:
                theirs[6:8, 6:8, 0:1, :] = 100 + beaten[0]
            finally:
                inside[0] = False
        return real(key, data, generation)

    kv._write_if = always_beaten
    try:
        yield beaten
    finally:
        kv._write_if = real

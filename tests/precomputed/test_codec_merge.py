"""Issue 14 item 7: a ``schema.codec`` in the spec and the ``codec`` option merge member by
member, as TensorStore 0.1.86 merges them (the oracle: every case is opened with both and
the created scale's encoding and shard data encoding compared); only members set to
different values are an error, naming the member."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import tensorstore as ts

import precomputed
from precomputed.errors import InvalidArgumentError

P = "neuroglancer_precomputed"
_paths = itertools.count()

# (schema.codec in the spec, the codec option)
MERGES = {
    "empty + jpeg": ({"driver": P}, {"driver": P, "encoding": "jpeg"}),
    "raw + gzip shards": ({"driver": P, "encoding": "raw"}, {"driver": P, "shard_data_encoding": "gzip"}),
    "jpeg + quality": ({"driver": P, "encoding": "jpeg"}, {"driver": P, "encoding": "jpeg", "jpeg_quality": 60}),
    "equal": ({"driver": P, "encoding": "raw"}, {"driver": P, "encoding": "raw"}),
    "gzip shards + raw": ({"driver": P, "shard_data_encoding": "gzip"}, {"driver": P, "encoding": "raw"}),
}
CONFLICTS = {
    "encoding": ({"driver": P, "encoding": "raw"}, {"driver": P, "encoding": "jpeg"}),
    "jpeg_quality": (
        {"driver": P, "encoding": "jpeg", "jpeg_quality": 50},
        {"driver": P, "encoding": "jpeg", "jpeg_quality": 60},
    ),
    "shard_data_encoding": (
        {"driver": P, "shard_data_encoding": "raw"},
        {"driver": P, "shard_data_encoding": "gzip"},
    ),
}


def _spec(kvstore: dict[str, Any], schema_codec: dict[str, Any]) -> dict[str, Any]:
    """A sharded uint8 image scale to create, its sharding left to the chunk layout (so
    the shard data encoding comes from the codec)."""
    return {
        "driver": P,
        "kvstore": kvstore,
        "multiscale_metadata": {"data_type": "uint8", "num_channels": 1, "type": "image"},
        "scale_metadata": {"size": [64, 64, 64], "resolution": [1, 1, 1]},
        "schema": {
            "chunk_layout": {
                "read_chunk": {"shape": [32, 32, 32, 1]},
                "write_chunk": {"shape": [64, 64, 64, 1]},
            },
            "codec": schema_codec,
        },
    }


def _stored_codec(scale: dict[str, Any]) -> tuple[str, str | None, int | None]:
    sharding = scale.get("sharding") or {}
    return scale["encoding"], sharding.get("data_encoding", "raw"), scale.get("jpeg_quality")


@pytest.mark.parametrize("case", MERGES)
def test_schema_codec_and_codec_option_merge_as_in_tensorstore(case: str) -> None:
    schema_codec, option = MERGES[case]
    path = f"merge{next(_paths)}/"
    theirs = ts.open(
        _spec({"driver": "memory", "path": path}, schema_codec),
        create=True,
        codec=ts.CodecSpec(option),
    ).result()
    ours = precomputed.open(
        _spec({"driver": "memory", "path": path}, schema_codec), create=True, codec=option
    )
    their_scale = theirs.spec().to_json()["scale_metadata"]
    our_scale = ours.handle.metadata.scales[ours.handle.scale_index].to_json()
    assert _stored_codec(our_scale) == _stored_codec(their_scale)
    # The codec option may also be a TensorStore CodecSpec object.
    again = precomputed.open(
        _spec({"driver": "memory", "path": f"merge{next(_paths)}/"}, schema_codec),
        create=True,
        codec=ts.CodecSpec(option),
    )
    assert _stored_codec(again.handle.metadata.scales[0].to_json()) == _stored_codec(their_scale)


@pytest.mark.parametrize("name", CONFLICTS)
def test_conflicting_codec_members_are_errors_naming_the_member(name: str) -> None:
    schema_codec, option = CONFLICTS[name]
    path = f"conflict{next(_paths)}/"
    with pytest.raises(ValueError, match=f'"{name}" mismatch') as theirs:
        ts.open(
            _spec({"driver": "memory", "path": path}, schema_codec),
            create=True,
            codec=ts.CodecSpec(option),
        ).result()
    with pytest.raises(InvalidArgumentError) as ours:
        precomputed.open(
            _spec({"driver": "memory", "path": path}, schema_codec), create=True, codec=option
        )
    assert str(ours.value).startswith("Cannot merge codec spec")
    assert f'"{name}" mismatch' in str(ours.value) and f'"{name}" mismatch' in str(theirs.value)
    assert ours.value.member_path == ("schema", "codec", name)


def test_a_codec_of_another_driver_does_not_merge() -> None:
    with pytest.raises(InvalidArgumentError, match="Cannot merge codec spec") as e:
        precomputed.open(
            _spec({"driver": "memory", "path": f"other{next(_paths)}/"}, {"driver": P, "encoding": "raw"}),
            create=True,
            codec={"driver": "zarr"},
        )
    assert e.value.member_path == ("schema", "codec")


def test_schema_option_and_codec_option_merge_too() -> None:
    spec = _spec({"driver": "memory", "path": f"both{next(_paths)}/"}, {"driver": P})
    vol = precomputed.open(
        spec,
        create=True,
        schema={"codec": {"driver": P, "encoding": "raw"}},
        codec={"driver": P, "shard_data_encoding": "gzip"},
    )
    assert _stored_codec(vol.handle.metadata.scales[0].to_json()) == ("raw", "gzip", None)

"""``info`` files from strangers and specs that would brick a volume: NaN and infinities,
scale keys that leave the volume directory, deep or huge JSON, absurd geometry. Each is a
clear error naming the member, raised before anything is written or allocated; the
other scales of a volume stay usable."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import precomputed
from precomputed import metadata as md
from precomputed.errors import FailedPreconditionError, InvalidArgumentError, PrecomputedError
from precomputed.kvstore import MemoryKvStore
from volumes import volume_spec

SHARDING = {
    "@type": "neuroglancer_uint64_sharded_v1",
    "preshift_bits": 0,
    "hash": "identity",
    "minishard_bits": 0,
    "shard_bits": 0,
}


def spec(kv: Any, **scale: Any) -> dict[str, Any]:
    return volume_spec(kv, "uint8", size=[8, 8, 8], chunk_size=[4, 4, 4], **scale)


def info(**scale: Any) -> dict[str, Any]:
    s0 = {
        "key": "s0",
        "size": [8, 8, 8],
        "resolution": [1, 1, 1],
        "chunk_sizes": [[4, 4, 4]],
        "encoding": "raw",
    }
    return {
        "@type": "neuroglancer_multiscale_volume",
        "type": "image",
        "data_type": "uint8",
        "num_channels": 1,
        "scales": [s0, {**s0, "key": "s1", **scale}],
    }


# -- NaN, Infinity and what else JSON cannot hold ---------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), "nan", "Infinity"])
def test_a_non_finite_resolution_is_refused_at_create(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(InvalidArgumentError, match='"resolution".*finite') as e:
        precomputed.open(spec(f"file://{tmp_path}/", resolution=[bad, 1, 1]), create=True)
    assert e.value.member_path[:2] == ("scale_metadata", "resolution")
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_non_finite_scale_added_later_leaves_the_volume_readable(tmp_path: Path) -> None:
    vol = precomputed.open(spec(f"file://{tmp_path}/", resolution=[4, 4, 4]), create=True)
    vol[...] = 3
    with pytest.raises(InvalidArgumentError, match="finite"):
        precomputed.open(spec(f"file://{tmp_path}/", resolution=[float("nan"), 8, 8]), create=True)
    with pytest.raises(InvalidArgumentError, match="finite|units"):  # through units, too
        precomputed.open(
            spec(f"file://{tmp_path}/", key="u"),
            create=True,
            schema={"dimension_units": ["inf nm", "8nm", "8nm", None]},
        )
    assert precomputed.open(str(tmp_path)).read().min() == 3
    assert len(precomputed.open(str(tmp_path)).metadata.scales) == 1


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('{"resolution": [1e999, 1, 1]}', "resolution"),  # overflows to inf in a double
        ('{"resolution": ["nan", 1, 1]}', "resolution"),
        ('{"resolution": [NaN, 1, 1]}', "Invalid JSON"),
        ('{"hidden": Infinity}', "Invalid JSON"),
        ('{"hidden": [1, {"x": -1e400}]}', r"\.scales\[1\]\.hidden\[1\]\.x"),
        ('{"hidden": "\\ud800"}', "not Unicode text"),
    ],
)
def test_stored_non_json_values_are_refused_naming_where(text: str, named: str) -> None:
    name, value = text[2:-1].split('": ', 1)
    doc = json.dumps(info(**{name: "@@"})).replace('"@@"', value)
    with pytest.raises(FailedPreconditionError, match=named):
        md.MultiscaleMetadata.loads(doc.encode())


def test_info_is_never_written_with_what_json_cannot_hold() -> None:
    meta = md.MultiscaleMetadata.from_json(info())
    meta.extra["bad"] = [float("nan")]
    with pytest.raises(InvalidArgumentError, match=r"nan at \.bad\[0\]"):
        meta.dumps()
    meta.extra["bad"] = "\udcff"
    with pytest.raises(InvalidArgumentError, match="not Unicode text"):
        meta.dumps()


# -- JSON depth and size -------------------------------------------------------------------


@pytest.mark.parametrize("depth", [md.MAX_JSON_DEPTH + 1, 10_000, 1_000_000])
def test_deeply_nested_info_is_a_clear_error(depth: int) -> None:
    doc = json.dumps(info())[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    with pytest.raises(FailedPreconditionError, match="nested more than 64 deep"):
        md.MultiscaleMetadata.loads(doc.encode())


def test_a_huge_info_is_refused_before_parsing(memory_store: MemoryKvStore) -> None:
    doc = json.dumps({**info(), "pad": "x" * md.MAX_INFO_BYTES}).encode()
    memory_store.write("info", doc)
    with pytest.raises(FailedPreconditionError, match="more than an info file may hold"):
        precomputed.open(memory_store.url)


# -- scale keys ---------------------------------------------------------------------------------


BAD_KEYS = {
    "../escape": "leaves the volume directory",
    "a/../../b": "leaves the volume directory",
    "../" * 30 + "etc/x": "leaves the volume directory",
    "/abs/x": "is absolute",
    "a\0b": "NUL",
    "info": '"info"',
    "./info/x": '"info"',
    "": "is empty",
    "a/..": "volume directory itself",
    ".": "volume directory itself",
}


@pytest.mark.parametrize("key", list(BAD_KEYS))
@pytest.mark.parametrize("store", ["file", "memory"])
def test_scale_keys_outside_the_volume_are_refused_at_create(
    tmp_path: Path, memory_store: MemoryKvStore, key: str, store: str
) -> None:
    kv: Any = f"file://{tmp_path}/vol/" if store == "file" else memory_store.spec()
    with pytest.raises(InvalidArgumentError, match=BAD_KEYS[key]) as e:
        precomputed.open(spec(kv, key=key), create=True)
    assert "key" in e.value.member_path
    if store == "file":
        assert not list(tmp_path.iterdir())
    else:
        assert memory_store.list() == []


@pytest.mark.parametrize("key", list(BAD_KEYS))
def test_stored_scale_keys_outside_the_volume_only_refuse_their_scale(
    tmp_path: Path, key: str
) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "info").write_text(json.dumps(info(key=key)))
    with pytest.raises(InvalidArgumentError, match=BAD_KEYS[key]) as e:
        precomputed.open(str(vol), scale_index=1)
    assert e.value.member_path == ("scales", 1, "key")
    good = precomputed.open(str(vol), scale_index=0)  # the other scale is fine
    good[...] = 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vol"]


# -- absurd geometry -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scale", "named"),
    [
        ({"sharding": {**SHARDING, "minishard_bits": 32}}, "minishard_bits"),
        ({"sharding": {**SHARDING, "minishard_bits": 23}}, "minishard_bits"),
        ({"size": [1 << 40] * 3, "chunk_sizes": [[1 << 40] * 3]}, "chunk_sizes"),
        ({"size": [1 << 61] * 3, "chunk_sizes": [[(1 << 62) - 2] * 3]}, "chunk_sizes"),
        (
            {
                "encoding": "compressed_segmentation",
                "compressed_segmentation_block_size": [1 << 12, 1 << 12, 2],
            },
            "block_size",
        ),
    ],
)
def test_absurd_geometry_is_refused_before_any_allocation(
    memory_store: MemoryKvStore, scale: dict[str, Any], named: str
) -> None:
    doc = info(**scale)
    if "compressed_segmentation_block_size" in scale:
        doc["data_type"] = "uint32"
        doc["scales"][0].update(scale, compressed_segmentation_block_size=[8, 8, 8])
    memory_store.write("info", json.dumps(doc).encode())
    t = time.perf_counter()
    for attempt in range(2):
        with pytest.raises(InvalidArgumentError, match=named):
            v = precomputed.open(memory_store.url, scale_index=1)
            v[0:2, 0:2, 0:2, :] = 1 if attempt else v[0:1, 0:1, 0:1, :].read()
    assert time.perf_counter() - t < 5
    assert precomputed.open(memory_store.url, scale_index=0).shape == (8, 8, 8, 1)


def test_absurd_geometry_is_refused_at_create(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="minishard_bits"):
        precomputed.open(
            spec(f"file://{tmp_path}/", sharding={**SHARDING, "minishard_bits": 32}), create=True
        )
    with pytest.raises(InvalidArgumentError, match="chunk_sizes"):
        precomputed.open(
            volume_spec(
                f"file://{tmp_path}/", "uint64", size=[1 << 20] * 3, chunk_size=[1 << 20] * 3
            ),
            create=True,
        )
    assert not list(tmp_path.iterdir())


def test_limits_leave_real_volumes_alone(memory_store: MemoryKvStore) -> None:
    # 512^3 uint64 chunks (1 GiB), minishard_bits 22 and 64^3 cseg blocks are all fine.
    big = info(
        size=[1024, 1024, 1024],
        chunk_sizes=[[512, 512, 512]],
        sharding={**SHARDING, "minishard_bits": 22},
    )
    big["data_type"] = "uint64"
    memory_store.write("info", json.dumps(big).encode())
    vol = precomputed.open(memory_store.url, scale_index=1)
    assert vol.shape == (1024, 1024, 1024, 1)
    assert not vol[0:1, 0:1, 0:1, :].read().any()
    seg = info(encoding="compressed_segmentation", compressed_segmentation_block_size=[64] * 3)
    seg["data_type"] = "uint32"
    seg["scales"][0] = dict(seg["scales"][1], key="s0")
    memory_store.write("info", json.dumps(seg).encode())
    v = precomputed.open(memory_store.url, scale_index=1)
    v[...] = np.arange(512, dtype=np.uint32).reshape(8, 8, 8, 1)
    np.testing.assert_array_equal(v.read()[..., 0], np.arange(512).reshape(8, 8, 8))


def test_every_refusal_is_a_precomputed_error() -> None:
    assert issubclass(InvalidArgumentError, PrecomputedError)
    assert issubclass(FailedPreconditionError, PrecomputedError)

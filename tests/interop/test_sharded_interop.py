"""Sharded volumes are interchangeable with TensorStore 0.1.86, in both directions.

Every combination that matters for the shard layout: identity and murmurhash3 hashing,
raw and gzip data and minishard-index encodings, preshift/minishard/shard bits from
0/0/0 (one shard, one minishard) to more bits than the volume needs, rectangular and
non-rectangular shards, raw and compressed_segmentation chunks, nonzero voxel offsets and
edge chunks. For each: TensorStore writes, we read; we write, TensorStore reads; we write
parts of shards TensorStore wrote (and the reverse) and every voxel reads identically;
zeroing regions removes chunks and deletes shards left empty.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorstore as ts

import precomputed
from precomputed import sharding as sh
from volumes import sharding_json as sharding

# name: (dtype, channels, encoding, size, chunk, voxel_offset, sharding)
CASES: dict[str, tuple[str, int, str, tuple, tuple, tuple, dict[str, Any]]] = {
    # grid 5x4x6, bits (3, 2, 3) = 8 = 2 + 2 + 4: rectangular shards of 2x2x1 minishards.
    "identity-raw-raw-rect": (
        "uint8",
        1,
        "raw",
        (37, 29, 23),
        (8, 8, 4),
        (-5, 3, -2),
        sharding(2, 2, 4),
    ),
    "identity-gzip-gzip-cseg": (
        "uint64",
        2,
        "compressed_segmentation",
        (20, 18, 9),
        (8, 8, 4),
        (7, -9, 4),
        sharding(1, 1, 4, data="gzip", index="gzip"),
    ),
    "murmur-raw-raw-cseg": (
        "uint32",
        1,
        "compressed_segmentation",
        (21, 17, 13),
        (4, 4, 4),
        (0, 0, 0),
        sharding(0, 2, 2, hash="murmurhash3_x86_128"),
    ),
    "murmur-gzip-gzip-raw": (
        "uint16",
        3,
        "raw",
        (19, 11, 10),
        (4, 4, 3),
        (3, -1, 0),
        sharding(1, 1, 3, hash="murmurhash3_x86_128", data="gzip", index="gzip"),
    ),
    "zero-bits-gzip-data": (
        "float32",
        2,
        "raw",
        (9, 7, 5),
        (4, 4, 2),
        (-1, -1, -1),
        sharding(0, 0, 0, data="gzip"),
    ),
    "identity-nonrect-gzip-index": (
        "uint64",
        1,
        "compressed_segmentation",
        (30, 30, 14),
        (8, 8, 4),
        (2, 4, 6),
        sharding(1, 1, 1, index="gzip"),  # 6 Morton bits > 3: shards interleave
    ),
    "identity-extra-shard-bits": (
        "int8",
        1,
        "raw",
        (16, 12, 9),
        (4, 4, 4),
        (0, 0, 0),
        sharding(0, 3, 8),
    ),
}


def scale_metadata(case: str) -> dict[str, Any]:
    dtype, channels, encoding, size, chunk, offset, shard = CASES[case]
    sm: dict[str, Any] = {
        "size": list(size),
        "chunk_size": list(chunk),
        "voxel_offset": list(offset),
        "resolution": [4, 4, 40],
        "encoding": encoding,
        "sharding": shard,
    }
    if encoding == "compressed_segmentation":
        sm["compressed_segmentation_block_size"] = [4, 4, 2]
    return sm


def create_spec(path: Path, case: str) -> dict[str, Any]:
    dtype, channels, *_ = CASES[case]
    return {
        "driver": "neuroglancer_precomputed",
        "kvstore": {"driver": "file", "path": str(path) + "/"},
        "multiscale_metadata": {
            "data_type": dtype,
            "num_channels": channels,
            "type": "segmentation" if dtype in ("uint32", "uint64") else "image",
        },
        "scale_metadata": scale_metadata(case),
    }


def open_spec(path: Path) -> dict[str, Any]:
    return {"driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": f"{path}/"}}


def ts_open(path: Path) -> Any:
    return ts.open(open_spec(path), open=True).result()


def ours(path: Path) -> precomputed.Volume:
    return precomputed.open(open_spec(path), context=precomputed.Context(cache_bytes=0))


def make_data(case: str, seed: int = 0) -> np.ndarray:
    """x, y, z, channel data; small label values for segmentations; one all-zero chunk."""
    dtype, channels, encoding, size, chunk, *_ = CASES[case]
    rng = np.random.default_rng(seed + len(case))
    shape = (*size, channels)
    if encoding == "compressed_segmentation":
        data = rng.integers(1, 6, shape).astype(dtype)
        data[: size[0] // 2] += np.array(2**33 if dtype == "uint64" else 2**20, dtype)
    elif np.dtype(dtype).kind == "f":
        data = rng.uniform(-1, 1, shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        data = rng.integers(max(info.min, -100), min(info.max, 30000), shape).astype(dtype)
    data[: chunk[0], : chunk[1], : chunk[2]] = 0  # chunk (0,0,0): never stored
    return data


def absolute(case: str, box: tuple[slice, ...]) -> tuple[slice, ...]:
    """A 0-based x, y, z box in the array's (voxel_offset-based) coordinates."""
    offset = CASES[case][5]
    return tuple(slice(s.start + o, s.stop + o) for s, o in zip(box, offset, strict=True))


def shard_files(path: Path) -> dict[str, bytes]:
    key = json.loads((path / "info").read_text())["scales"][0]["key"]
    return {p.name: p.read_bytes() for p in sorted((path / key).glob("*.shard"))}


def boxes(case: str, whole_volume: bool = True) -> list[tuple[slice, slice, slice]]:
    """Write boxes (0-based): the first write chunk (a whole shard when shards are
    rectangular, else the whole volume, unless not ``whole_volume``), then a voxel, a
    partial chunk and a slab across shards."""
    size, chunk = CASES[case][3], CASES[case][4]
    spec = sh.ShardingSpec.from_json(CASES[case][6])
    write = sh.write_chunk_shape(spec, size, chunk)
    first: list[Any] = [tuple(slice(0, min(w, s)) for w, s in zip(write, size, strict=True))]
    if not whole_volume and write == tuple(
        -(-s // c) * c for s, c in zip(size, chunk, strict=True)
    ):
        first = []
    return first + [
        (slice(1, 2), slice(2, 3), slice(1, 2)),
        (slice(chunk[0] + 1, chunk[0] + 3), slice(1, chunk[1]), slice(0, 1)),
        (slice(2, size[0] - 1), slice(size[1] // 3, size[1] // 3 + 2), slice(1, size[2])),
    ]


CASE_IDS = sorted(CASES)


@pytest.mark.parametrize("case", CASE_IDS)
def test_tensorstore_writes_we_read(tmp_path: Path, case: str) -> None:
    data = make_data(case)
    t = ts.open(create_spec(tmp_path, case), create=True).result()
    t.write(data).result()
    vol = ours(tmp_path)
    assert vol.domain.inclusive_min[:3] == CASES[case][5]
    np.testing.assert_array_equal(vol.read(), data)
    box = (slice(3, 9), slice(2, 7), slice(1, 4))
    np.testing.assert_array_equal(vol[absolute(case, box)].read(), data[box])
    spec = sh.ShardingSpec.from_json(CASES[case][6])
    assert vol.chunk_layout.write_chunk == tuple(t.chunk_layout.write_chunk.shape)
    assert vol.scale.sharding == spec


@pytest.mark.parametrize("case", CASE_IDS)
def test_we_write_tensorstore_reads(tmp_path: Path, case: str) -> None:
    data = make_data(case, seed=1)
    vol = precomputed.open(create_spec(tmp_path / "ours", case), create=True)
    vol[...] = data
    np.testing.assert_array_equal(ts_open(tmp_path / "ours").read().result(), data)

    theirs = ts.open(create_spec(tmp_path / "ts", case), create=True).result()
    theirs.write(data).result()
    assert json.loads((tmp_path / "ours" / "info").read_text()) == json.loads(
        (tmp_path / "ts" / "info").read_text()
    )
    mine, tss = shard_files(tmp_path / "ours"), shard_files(tmp_path / "ts")
    assert sorted(mine) == sorted(tss)  # the same shards exist (none for chunk 0 alone)
    spec = sh.ShardingSpec.from_json(CASES[case][6])
    for name in mine:
        if spec.data_encoding == spec.minishard_index_encoding == "raw":
            assert mine[name] == tss[name], name  # TensorStore's layout, byte for byte
        else:  # gzip streams may differ between zlib builds; the content may not
            assert sh.split_shard(mine[name], spec, name) == sh.split_shard(tss[name], spec, name)


@pytest.mark.parametrize("case", CASE_IDS)
def test_partial_writes_into_tensorstore_shards(tmp_path: Path, case: str) -> None:
    expected = make_data(case, seed=2)
    ts.open(create_spec(tmp_path, case), create=True).result().write(expected).result()
    vol = ours(tmp_path)
    for i, box in enumerate(boxes(case)):
        value = np.asarray(100 + i).astype(expected.dtype)
        vol[absolute(case, box)] = value  # each write is its own (implicit) transaction
        expected[box] = value
    with vol.transaction():  # and several in one transaction
        for i, box in enumerate(boxes(case)[-2:]):
            shifted = tuple(slice(s.start, s.start + 1) for s in box)
            vol[absolute(case, shifted)] = np.asarray(50 + i).astype(expected.dtype)
            expected[shifted] = np.asarray(50 + i).astype(expected.dtype)
    np.testing.assert_array_equal(ts_open(tmp_path).read().result(), expected)
    np.testing.assert_array_equal(ours(tmp_path).read(), expected)


@pytest.mark.parametrize("case", CASE_IDS)
def test_tensorstore_partial_writes_into_our_shards(tmp_path: Path, case: str) -> None:
    expected = make_data(case, seed=3)
    precomputed.open(create_spec(tmp_path, case), create=True)[...] = expected
    t = ts_open(tmp_path)
    for i, box in enumerate(boxes(case)):
        value = np.asarray(7 + i).astype(expected.dtype)
        t[absolute(case, box)].write(value).result()
        expected[box] = value
    np.testing.assert_array_equal(ours(tmp_path).read(), expected)


@pytest.mark.parametrize("case", CASE_IDS)
def test_zeroing_removes_chunks_and_deletes_empty_shards(tmp_path: Path, case: str) -> None:
    expected = make_data(case, seed=4)
    ts.open(create_spec(tmp_path, case), create=True).result().write(expected).result()
    before = shard_files(tmp_path)
    vol = ours(tmp_path)
    for box in boxes(case, whole_volume=False):
        vol[absolute(case, box)] = 0
        expected[box] = 0
    np.testing.assert_array_equal(ts_open(tmp_path).read().result(), expected)
    spec = sh.ShardingSpec.from_json(CASES[case][6])
    stored = {
        cid
        for name, blob in shard_files(tmp_path).items()
        for cid in sh.split_shard(blob, spec, name)
    }
    chunk = CASES[case][4]
    nonzero = {
        (gx, gy, gz)
        for gx in range(-(-expected.shape[0] // chunk[0]))
        for gy in range(-(-expected.shape[1] // chunk[1]))
        for gz in range(-(-expected.shape[2] // chunk[2]))
        if expected[
            gx * chunk[0] : (gx + 1) * chunk[0],
            gy * chunk[1] : (gy + 1) * chunk[1],
            gz * chunk[2] : (gz + 1) * chunk[2],
        ].any()
    }
    store = vol._h.store
    assert stored == {int(i) for i in store.chunk_ids(sorted(nonzero))}  # type: ignore[attr-defined]
    if spec.hash == "identity" and sh.is_rectangular(spec, store.bits):  # type: ignore[attr-defined]
        assert len(shard_files(tmp_path)) < len(before)  # the zeroed write chunk's shard

    vol[...] = 0  # everything: every shard is deleted, none is left empty
    assert shard_files(tmp_path) == {}
    assert not ts_open(tmp_path).read().result().any()


def test_automatic_sharding_matches_tensorstore(tmp_path: Path) -> None:
    base = {
        "driver": "neuroglancer_precomputed",
        "multiscale_metadata": {"data_type": "uint16", "num_channels": 1, "type": "image"},
        "scale_metadata": {"size": [300, 200, 100], "chunk_size": [32, 32, 16]},
        "schema": {"chunk_layout": {"write_chunk": {"elements": 32 * 32 * 16 * 8}}},
    }
    t = ts.open({**base, "kvstore": {"driver": "file", "path": f"{tmp_path}/ts/"}}, create=True)
    t = t.result()
    vol = precomputed.open(
        {**base, "kvstore": {"driver": "file", "path": f"{tmp_path}/ours/"}}, create=True
    )
    ours_info = json.loads((tmp_path / "ours" / "info").read_text())
    assert ours_info == json.loads((tmp_path / "ts" / "info").read_text())
    assert (
        vol.chunk_layout.write_chunk == tuple(t.chunk_layout.write_chunk.shape) == (64, 64, 32, 1)
    )
    data = np.arange(64 * 64 * 32, dtype=np.uint16).reshape(64, 64, 32, 1) + 1
    vol[64:128, 0:64, 32:64, :] = data  # one write chunk = one shard
    assert len(shard_files(tmp_path / "ours")) == 1
    np.testing.assert_array_equal(
        ts_open(tmp_path / "ours")[64:128, 0:64, 32:64, :].read().result(), data
    )

"""Tests of the sharded format: spec, ids, hashing, shard bytes, geometry, TS interop."""

from __future__ import annotations

import itertools
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from precomputed.errors import CorruptDataError, InvalidArgumentError
from precomputed.sharding import (
    ShardingSpec,
    check_byte_range,
    choose_sharding,
    chunks_in_shard,
    compressed_morton_codes,
    decode_chunk_data,
    decode_minishard_index,
    decode_morton_codes,
    decode_shard_index,
    decode_shard_index_entry,
    encode_minishard_index,
    encode_shard,
    encode_shard_index,
    hash_chunk_ids,
    is_rectangular,
    minishard_shape_in_chunks,
    morton_bits,
    placement_of,
    shard_and_minishard,
    shard_filename,
    shard_origin_in_chunks,
    shard_shape_in_chunks,
    split_shard,
    write_chunk_shape,
)


def u64(*values: int) -> bytes:
    """Little-endian uint64 words."""
    return struct.pack(f"<{len(values)}Q", *values)


def gz(data: bytes) -> bytes:
    return zlib.compress(data, 9, wbits=31)


def spec_json(**overrides: object) -> dict:
    j = {
        "@type": "neuroglancer_uint64_sharded_v1",
        "hash": "identity",
        "preshift_bits": 1,
        "minishard_bits": 2,
        "shard_bits": 3,
    }
    j.update(overrides)
    return j


RAW_M1 = ShardingSpec(preshift_bits=0, hash="identity", minishard_bits=1, shard_bits=1)


# ---------------------------------------------------------------------------------------
# ShardingSpec JSON
# ---------------------------------------------------------------------------------------


class TestShardingSpecJson:
    @pytest.mark.parametrize("h", ["identity", "murmurhash3_x86_128"])
    def test_parse_all_members(self, h: str) -> None:
        j = spec_json(hash=h, data_encoding="raw", minishard_index_encoding="gzip")
        s = ShardingSpec.from_json(j)
        assert s == ShardingSpec(1, h, 2, 3, minishard_index_encoding="gzip", data_encoding="raw")

    def test_encodings_default_to_raw(self) -> None:
        s = ShardingSpec.from_json(spec_json(minishard_index_encoding="gzip"))
        assert s.data_encoding == "raw" and s.minishard_index_encoding == "gzip"
        s = ShardingSpec.from_json(spec_json(data_encoding="gzip"))
        assert s.data_encoding == "gzip" and s.minishard_index_encoding == "raw"

    def test_to_json_writes_all_seven_members(self) -> None:
        s = ShardingSpec(1, "identity", 2, 3, minishard_index_encoding="gzip")
        assert s.to_json() == {
            "@type": "neuroglancer_uint64_sharded_v1",
            "hash": "identity",
            "preshift_bits": 1,
            "minishard_bits": 2,
            "shard_bits": 3,
            "data_encoding": "raw",
            "minishard_index_encoding": "gzip",
        }
        assert ShardingSpec.from_json(s.to_json()) == s

    def test_equality_compares_all_six_values(self) -> None:
        a = ShardingSpec(1, "identity", 2, 3, "gzip", "raw")
        variants = [
            ShardingSpec(1, "murmurhash3_x86_128", 2, 3, "gzip", "raw"),
            ShardingSpec(2, "identity", 2, 3, "gzip", "raw"),
            ShardingSpec(1, "identity", 5, 3, "gzip", "raw"),
            ShardingSpec(1, "identity", 2, 9, "gzip", "raw"),
            ShardingSpec(1, "identity", 2, 3, "gzip", "gzip"),
            ShardingSpec(1, "identity", 2, 3, "raw", "raw"),
        ]
        assert a == ShardingSpec(1, "identity", 2, 3, "gzip", "raw")
        assert all(v != a for v in variants)
        assert len({a, *variants}) == 7

    def test_integral_floats_accepted(self) -> None:
        s = ShardingSpec.from_json(spec_json(preshift_bits=1.0, minishard_bits=2.0))
        assert (s.preshift_bits, s.minishard_bits) == (1, 2)
        assert isinstance(s.preshift_bits, int)

    def test_shard_index_size(self) -> None:
        assert ShardingSpec(0, "identity", 0, 0).shard_index_size == 16
        assert ShardingSpec(0, "identity", 6, 0).shard_index_size == 16 << 6

    @pytest.mark.parametrize(
        "k", ["@type", "hash", "preshift_bits", "minishard_bits", "shard_bits"]
    )
    def test_required_members(self, k: str) -> None:
        j = spec_json(minishard_index_encoding="raw", data_encoding="gzip")
        del j[k]
        with pytest.raises(InvalidArgumentError, match=f'"{k}".*missing'):
            ShardingSpec.from_json(j)
        j[k] = None
        with pytest.raises(InvalidArgumentError, match=f'"{k}".*null'):
            ShardingSpec.from_json(j)

    def test_v2_type_rejected(self) -> None:
        with pytest.raises(InvalidArgumentError, match='"neuroglancer_uint64_sharded_v2"'):
            ShardingSpec.from_json(spec_json(**{"@type": "neuroglancer_uint64_sharded_v2"}))

    def test_invalid_hash(self) -> None:
        with pytest.raises(InvalidArgumentError, match='"hash".*"invalid_hash"'):
            ShardingSpec.from_json(spec_json(hash="invalid_hash"))

    @pytest.mark.parametrize("member", ["data_encoding", "minishard_index_encoding"])
    @pytest.mark.parametrize("value", [1234, "invalid_encoding", None, "GZIP"])
    def test_invalid_encoding(self, member: str, value: object) -> None:
        import json

        with pytest.raises(InvalidArgumentError, match=f'"{member}".*{json.dumps(value)}'):
            ShardingSpec.from_json(spec_json(**{member: value}))

    @pytest.mark.parametrize("v", [0, 1, 63, 64])
    def test_preshift_range_ok(self, v: int) -> None:
        assert ShardingSpec.from_json(spec_json(preshift_bits=v)).preshift_bits == v

    @pytest.mark.parametrize("v", [-1, -2, 65, 66, 1.5, True, "1"])
    def test_preshift_range_bad(self, v: object) -> None:
        with pytest.raises(InvalidArgumentError, match=r'"preshift_bits".*\[0, 64\]'):
            ShardingSpec.from_json(spec_json(preshift_bits=v))

    @pytest.mark.parametrize("v", [0, 1, 31, 32])
    def test_minishard_range_ok(self, v: int) -> None:
        s = ShardingSpec.from_json(spec_json(minishard_bits=v, shard_bits=0))
        assert s.minishard_bits == v

    @pytest.mark.parametrize("v", [-1, 33, 60, 61])
    def test_minishard_range_bad(self, v: int) -> None:
        with pytest.raises(InvalidArgumentError, match=rf'"minishard_bits".*\[0, 32\].*{v}'):
            ShardingSpec.from_json(spec_json(minishard_bits=v, shard_bits=0))

    @pytest.mark.parametrize("v", [0, 1, 56, 57])
    def test_shard_range_ok(self, v: int) -> None:
        assert ShardingSpec.from_json(spec_json(minishard_bits=7, shard_bits=v)).shard_bits == v

    @pytest.mark.parametrize("v", [-1, -2, 58, 59, 65, 66])
    def test_shard_range_bad(self, v: int) -> None:
        with pytest.raises(InvalidArgumentError, match=r'"shard_bits".*\[0, 57\]'):
            ShardingSpec.from_json(spec_json(minishard_bits=7, shard_bits=v))

    def test_extra_member_rejected(self) -> None:
        with pytest.raises(InvalidArgumentError, match='extra members: "extra"'):
            ShardingSpec.from_json(spec_json(extra=1))

    @pytest.mark.parametrize("obj", ["invalid", None, [1, 2], 3])
    def test_non_object(self, obj: object) -> None:
        with pytest.raises(InvalidArgumentError, match='"scales_sharding".*Expected object'):
            ShardingSpec.from_json(obj, member="scales_sharding")

    def test_error_names_member(self) -> None:
        with pytest.raises(InvalidArgumentError, match='^Error parsing object member "sharding"'):
            ShardingSpec.from_json(spec_json(hash="x"))

    def test_constructor_validates(self) -> None:
        with pytest.raises(InvalidArgumentError, match="hash"):
            ShardingSpec(0, "md5", 0, 0)
        with pytest.raises(InvalidArgumentError, match="shard_bits"):
            ShardingSpec(0, "identity", 10, 60)


# ---------------------------------------------------------------------------------------
# Morton codes, hashing, shard numbers, file names
# ---------------------------------------------------------------------------------------


def test_morton_bits() -> None:
    assert morton_bits((0, 0xFFFFFFFF, 2**62 - 2), (20, 1, 1)) == (0, 32, 62)
    assert morton_bits((79, 80, 144), (20, 20, 12)) == (2, 2, 4)
    assert morton_bits((1, 2, 3), (1, 1, 1)) == (0, 1, 2)
    assert morton_bits((64, 65, 1), (8, 8, 8)) == (3, 4, 0)


@pytest.mark.parametrize(
    "pos, code",
    [
        ((0, 0, 0), 0),
        ((1, 0, 0), 1),
        ((0, 1, 0), 2),
        ((0b10, 0, 1), 0b1100),
        ((0b10, 0b11, 0), 0b11010),
        ((0b1001, 0b10, 1), 0b1010101),
    ],
)
def test_compressed_morton_vectors(pos: tuple[int, int, int], code: int) -> None:
    out = compressed_morton_codes(np.array([pos]), (4, 2, 1))
    assert out.dtype == np.uint64 and out.tolist() == [code]
    assert decode_morton_codes(out, (4, 2, 1)).tolist() == [list(pos)]


def test_morton_vectorised_round_trip_and_64_bits() -> None:
    bits = (3, 5, 2)
    pos = np.array(list(itertools.product(range(8), range(32), range(4))))
    codes = compressed_morton_codes(pos, bits)
    assert sorted(codes.tolist()) == list(range(8 * 32 * 4))
    assert (decode_morton_codes(codes, bits) == pos).all()
    big = np.array([[2**21 - 1, 2**21 - 1, 2**22 - 1]])
    assert compressed_morton_codes(big, (21, 21, 22)).tolist() == [2**64 - 1]
    assert decode_morton_codes(np.array([2**64 - 1], np.uint64), (21, 21, 22)).tolist() == [
        [2**21 - 1, 2**21 - 1, 2**22 - 1]
    ]


def test_murmurhash_vectors() -> None:
    spec = ShardingSpec(0, "murmurhash3_x86_128", 0, 0)
    out = hash_chunk_ids(np.array([0, 1, 42], np.uint64), spec)
    assert out.dtype == np.uint64
    assert out.tolist() == [0x4772B084E028AE41, 0xE8BD67D616D4CE9A, 0xC20B94F95119F47A]


def test_hash_applies_preshift() -> None:
    murmur = ShardingSpec(3, "murmurhash3_x86_128", 0, 0)
    out = hash_chunk_ids(np.array([0, 7, 8, 15, 42 << 3, (42 << 3) + 5], np.uint64), murmur)
    h0, h1, h42 = 0x4772B084E028AE41, 0xE8BD67D616D4CE9A, 0xC20B94F95119F47A
    assert out.tolist() == [h0, h0, h1, h1, h42, h42]
    ident = ShardingSpec(2, "identity", 0, 0)
    assert hash_chunk_ids(np.array([13], np.uint64), ident).tolist() == [3]
    all_shift = ShardingSpec(64, "identity", 0, 0)
    assert hash_chunk_ids(np.array([2**64 - 1], np.uint64), all_shift).tolist() == [0]


def test_shard_and_minishard_describe_key() -> None:
    shard, minishard = shard_and_minishard(np.arange(4, dtype=np.uint64), RAW_M1)
    assert list(zip(shard.tolist(), minishard.tolist(), strict=True)) == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    ]
    assert [shard_filename(s, RAW_M1) for s in shard.tolist()] == ["0.shard"] * 2 + ["1.shard"] * 2


def test_shard_and_minishard_masks() -> None:
    spec = ShardingSpec(1, "identity", 2, 3)
    shard, minishard = shard_and_minishard(np.array([0b1_101_10_1, 2**64 - 1], np.uint64), spec)
    assert shard.tolist() == [0b101, 0b111] and minishard.tolist() == [0b10, 0b11]
    full = ShardingSpec(0, "identity", 32, 32)
    shard, minishard = shard_and_minishard(np.array([2**64 - 1], np.uint64), full)
    assert shard.tolist() == [2**32 - 1] and minishard.tolist() == [2**32 - 1]


@pytest.mark.parametrize(
    "spec",
    [
        ShardingSpec(0, "identity", 2, 3),
        ShardingSpec(1, "murmurhash3_x86_128", 2, 3),
        ShardingSpec(5, "murmurhash3_x86_128", 0, 7),
        ShardingSpec(64, "murmurhash3_x86_128", 4, 4),
        ShardingSpec(0, "identity", 32, 32),
        ShardingSpec(3, "identity", 0, 0),
    ],
)
@pytest.mark.parametrize("grid", [(7, 300, 2), (1, 1, 1), (2**21, 2**21, 2**21)])
def test_placement_of_one_position_equals_the_vectorised_path(
    spec: ShardingSpec, grid: tuple[int, int, int]
) -> None:
    bits = morton_bits(grid, (1, 1, 1))
    rng = np.random.default_rng(sum(grid))
    pos = np.stack([rng.integers(0, g, 200) for g in grid], axis=1)
    ids = compressed_morton_codes(pos, bits)
    shards, minis = shard_and_minishard(ids, spec)
    got = [placement_of(tuple(p), bits, spec) for p in pos.tolist()]
    assert got == list(zip(ids.tolist(), shards.tolist(), minis.tolist(), strict=True))


@pytest.mark.parametrize(
    "shard_bits, shard, name",
    [
        (0, 0, "0.shard"),
        (3, 5, "5.shard"),
        (4, 14, "e.shard"),
        (5, 10, "0a.shard"),
        (15, 0x1F, "001f.shard"),
    ],
)
def test_shard_filename(shard_bits: int, shard: int, name: str) -> None:
    assert shard_filename(shard, ShardingSpec(0, "identity", 0, shard_bits)) == name


# ---------------------------------------------------------------------------------------
# Appendix A byte vectors
# ---------------------------------------------------------------------------------------

A1_SPEC = ShardingSpec(preshift_bits=1, hash="identity", minishard_bits=1, shard_bits=1)
A1_SHARD0 = (
    "0300000000000000 3300000000000000 3600000000000000 6600000000000000"
    "010509"
    "0000000000000000 0100000000000000 0000000000000000 0000000000000000"
    "0200000000000000 0100000000000000"
    "03070b"
    "0200000000000000 0100000000000000 3300000000000000 0000000000000000"
    "0200000000000000 0100000000000000"
).replace(" ", "")
A1_SHARD1 = (
    u64(3, 51, 54, 102)
    + bytes([2, 6, 10])
    + u64(4, 1, 0, 0, 2, 1)
    + bytes([4, 8, 12])
    + u64(6, 1, 51, 0, 2, 1)
).hex()


def a1_array() -> np.ndarray:
    """``a[x, y, z, 0] = 1 + 4x + 2y + z`` on a ``[3, 2, 2]`` volume."""
    x, y, z = np.meshgrid(np.arange(3), np.arange(2), np.arange(2), indexing="ij")
    return (1 + 4 * x + 2 * y + z).astype(np.uint8)[..., None]


def raw_chunks_by_shard(
    data_xyzc: np.ndarray, chunk: tuple[int, int, int], spec: ShardingSpec
) -> dict[int, dict[int, bytes]]:
    """Raw-encoded (czyx C-order) chunk bytes of every grid chunk, grouped by shard."""
    size = data_xyzc.shape[:3]
    bits = morton_bits(size, chunk)
    grid = [-(-s // c) for s, c in zip(size, chunk, strict=True)]
    pos = np.array(list(itertools.product(*(range(g) for g in grid))))
    ids = compressed_morton_codes(pos, bits)
    shards, _ = shard_and_minishard(ids, spec)
    out: dict[int, dict[int, bytes]] = {}
    for p, chunk_id, shard in zip(pos, ids.tolist(), shards.tolist(), strict=True):
        lo = p * chunk
        box = data_xyzc[
            lo[0] : lo[0] + chunk[0], lo[1] : lo[1] + chunk[1], lo[2] : lo[2] + chunk[2]
        ]
        out.setdefault(shard, {})[chunk_id] = box.transpose(3, 2, 1, 0).tobytes()
    return out


def test_a1_complete_shards_from_example_data() -> None:
    by_shard = raw_chunks_by_shard(a1_array(), (2, 1, 1), A1_SPEC)
    assert sorted(by_shard) == [0, 1]
    assert encode_shard(by_shard[0], A1_SPEC).hex() == A1_SHARD0
    assert encode_shard(by_shard[1], A1_SPEC).hex() == A1_SHARD1
    assert len(bytes.fromhex(A1_SHARD0)) == 134
    assert split_shard(bytes.fromhex(A1_SHARD0), A1_SPEC, "0.shard") == {
        0: b"\x01\x05",
        1: b"\x09",
        2: b"\x03\x07",
        3: b"\x0b",
    }


def test_a2_shard_written_for_one_chunk() -> None:
    one = encode_shard({0x50: b"\x01\x02\x03"}, RAW_M1)
    assert one == u64(3, 27, 0, 0) + b"\x01\x02\x03" + u64(0x50, 0, 3)
    assert len(one) == 59
    two = encode_shard({0x54: b"\x04\x05\x06", 0x50: b"\x01\x02\x03"}, RAW_M1)
    assert two == u64(6, 54, 0, 0) + bytes(range(1, 7)) + u64(0x50, 0x04, 0, 0, 3, 3)
    existing = encode_shard({0x70: b"\x04\x05\x06"}, RAW_M1)
    merged = split_shard(existing, RAW_M1, "0.shard") | {0x50: b"\x01\x02\x03"}
    assert encode_shard(merged, RAW_M1) == (
        u64(6, 54, 0, 0) + bytes(range(1, 7)) + u64(0x50, 0x20, 0, 0, 3, 3)
    )


def test_a3_minishard_index_vectors() -> None:
    assert encode_minishard_index([], [], []) == b""
    one = encode_minishard_index([0x0123456789ABCDEF], [0x11], [0x23])
    assert one.hex() == "efcdab896745230111000000000000001200000000000000"
    two = encode_minishard_index([1, 7], [3, 12], [10, 15])
    assert two == u64(1, 6, 3, 2, 7, 3)
    ids, starts, ends = decode_minishard_index(two, RAW_M1, "k", 0)
    assert ids.tolist() == [1, 7]
    assert starts.tolist() == [3 + 32, 12 + 32] and ends.tolist() == [10 + 32, 15 + 32]
    empty = decode_minishard_index(b"", RAW_M1, "k", 0)
    assert [a.size for a in empty] == [0, 0, 0]


def test_a3_shard_index_vector() -> None:
    assert encode_shard_index(np.array([[1, 5], [7, 10]])) == u64(1, 5, 7, 10)
    assert decode_shard_index(u64(1, 5, 7, 10), RAW_M1, "k").tolist() == [[1, 5], [7, 10]]


def test_a3_shard_encoder_raw() -> None:
    spec = ShardingSpec(0, "identity", 1, 0)
    out = encode_shard({3: b"\x09\x0a", 8: b"\x06\x07\x08", 2: b"\x01\x02\x03\x04"}, spec)
    expected = (
        u64(7, 55, 57, 81)
        + bytes.fromhex("01020304060708")
        + u64(2, 6, 0, 0, 4, 3)
        + bytes.fromhex("090a")
        + u64(3, 55, 2)
    )
    assert out == expected


def test_shard_encoder_gzip_is_level9_gzip_of_each_piece() -> None:
    spec = ShardingSpec(0, "identity", 1, 0, minishard_index_encoding="gzip", data_encoding="gzip")
    c2, c8, c3 = gz(b"\x01\x02\x03\x04"), gz(b"\x06\x07\x08"), gz(b"\x09\x0a")
    assert c2[:10] == bytes.fromhex("1f8b0800000000000203")
    i0 = gz(u64(2, 6, 0, 0, len(c2), len(c8)))
    start1 = len(c2) + len(c8) + len(i0)
    i1 = gz(u64(3, start1, len(c3)))
    expected = (
        u64(len(c2) + len(c8), start1, start1 + len(c3), start1 + len(c3) + len(i1))
        + c2
        + c8
        + i0
        + c3
        + i1
    )
    out = encode_shard({3: b"\x09\x0a", 8: b"\x06\x07\x08", 2: b"\x01\x02\x03\x04"}, spec)
    assert out == expected
    assert split_shard(out, spec, "k") == {
        2: b"\x01\x02\x03\x04",
        8: b"\x06\x07\x08",
        3: b"\x09\x0a",
    }
    assert split_shard(out, spec, "k", decode=False) == {2: c2, 8: c8, 3: c3}
    assert encode_shard(split_shard(out, spec, "k", decode=False), spec, data_encoded=True) == out


def test_empty_shard() -> None:
    assert encode_shard({}, RAW_M1) is None
    assert split_shard(b"", RAW_M1, "k") == {}


def test_encode_shard_rejects_chunks_of_several_shards() -> None:
    with pytest.raises(InvalidArgumentError, match="shards"):
        encode_shard({0: b"a", 2: b"b"}, RAW_M1)


def test_zero_length_chunks_round_trip() -> None:
    spec = ShardingSpec(0, "identity", 0, 0)
    chunks = {5: b"", 9: b"xy", 7: b""}
    out = encode_shard(chunks, spec)
    assert split_shard(out, spec, "k") == chunks


def test_decode_shard_index_entry() -> None:
    assert decode_shard_index_entry(u64(0, 0), 0, RAW_M1, "k") is None
    assert decode_shard_index_entry(u64(5, 5), 1, RAW_M1, "k") is None
    assert decode_shard_index_entry(u64(3, 27), 0, RAW_M1, "k") == (35, 59)


def test_decode_chunk_data() -> None:
    spec = ShardingSpec(0, "identity", 0, 0, data_encoding="gzip")
    assert decode_chunk_data(gz(b"abc"), spec, "chunk 1") == b"abc"
    assert decode_chunk_data(b"abc", RAW_M1, "chunk 1") == b"abc"


# ---------------------------------------------------------------------------------------
# Corruption (§5.7, §5.8, §7 item 44)
# ---------------------------------------------------------------------------------------

KEY = "vol/1_1_1/0.shard"
ONE_MINISHARD = ShardingSpec(0, "identity", 0, 0)
GZIP_SPEC = ShardingSpec(0, "identity", 0, 0, minishard_index_encoding="gzip", data_encoding="gzip")


def raises_corrupt(*words: str):
    """Context asserting a CorruptDataError whose message contains all ``words``."""

    class _Ctx:
        def __enter__(self):
            self._cm = pytest.raises(CorruptDataError)
            self._info = self._cm.__enter__()
            return self._info

        def __exit__(self, *exc):
            suppressed = self._cm.__exit__(*exc)
            msg = str(self._info.value)
            for w in words:
                assert w in msg, f"{w!r} not in {msg!r}"
            return suppressed

    return _Ctx()


def test_truncated_shard() -> None:
    with raises_corrupt(KEY, "Existing shard has size 3, but expected at least: 16"):
        split_shard(b"abc", ONE_MINISHARD, KEY)
    with raises_corrupt("Existing shard has size 9, but expected at least: 32"):
        split_shard(b"x" * 9, RAW_M1, KEY)
    with raises_corrupt(
        KEY, "minishard 0", "Requested byte range [0, 16) is not valid for value of size 3"
    ):
        decode_shard_index_entry(b"abc", 0, ONE_MINISHARD, KEY, shard_size=3)
    with raises_corrupt(KEY, "minishard 1", "Requested byte range [16, 32)"):
        decode_shard_index_entry(b"abcd", 1, RAW_M1, KEY)
    with raises_corrupt(KEY, "Expected 32 bytes"):
        decode_shard_index(b"abc", RAW_M1, KEY)


def test_reversed_shard_index_range() -> None:
    msg = "Shard index specified invalid byte range: [10, 2)"
    with raises_corrupt(KEY, "minishard 0", msg):
        decode_shard_index_entry(u64(10, 2), 0, ONE_MINISHARD, KEY)
    with raises_corrupt(KEY, "minishard 1", msg):
        decode_shard_index(u64(0, 0, 10, 2), RAW_M1, KEY)
    with raises_corrupt(KEY, "Error decoding existing shard index entry for minishard 0", msg):
        split_shard(u64(10, 2) + b"x" * 20, ONE_MINISHARD, KEY)


def test_shard_index_range_overflow() -> None:
    big = 2**63 - 8
    msg = f"Byte range [0, {big}) relative to the end of the shard index (16) is not valid"
    with raises_corrupt(KEY, msg):
        decode_shard_index_entry(u64(0, big), 0, ONE_MINISHARD, KEY)
    with raises_corrupt(KEY, "minishard 0", msg):
        split_shard(u64(0, big), ONE_MINISHARD, KEY)
    with raises_corrupt(KEY, "invalid byte range"):
        decode_shard_index_entry(u64(2**64 - 1, 2**64 - 1), 0, ONE_MINISHARD, KEY)


def test_minishard_index_outside_file() -> None:
    msg = "Requested byte range [16, 64) is not valid for value of size 16"
    with raises_corrupt(KEY, "minishard 0", msg):
        split_shard(u64(0, 48), ONE_MINISHARD, KEY)
    with raises_corrupt(KEY, msg):
        check_byte_range(16, 64, 16, f'minishard 0 in "{KEY}"')
    check_byte_range(16, 16, 16)


def test_bad_minishard_index_length() -> None:
    with raises_corrupt(KEY, "minishard 0", "Invalid minishard index length: 1"):
        decode_minishard_index(b"\x00", ONE_MINISHARD, KEY, 0)
    with raises_corrupt(KEY, "Invalid minishard index length: 1"):
        split_shard(u64(0, 1) + b"\x00", ONE_MINISHARD, KEY)
    with raises_corrupt(KEY, "Invalid minishard index length: 25"):
        decode_minishard_index(gz(b"\x00" * 25), GZIP_SPEC, KEY, 0)


def test_invalid_interval_in_minishard_index() -> None:
    # start 1, size 2**64 - 1: the end wraps to 0.
    data = u64(3, 1, 2**64 - 1)
    with raises_corrupt(KEY, "Invalid byte range in minishard index for chunk 3: [1, 0)"):
        decode_minishard_index(data, ONE_MINISHARD, KEY, 0)


def test_minishard_entry_overflow() -> None:
    data = u64(10, 2**63 - 20, 10)
    with raises_corrupt(
        KEY, "Error decoding minishard index entry for chunk 10", "relative to the end"
    ):
        decode_minishard_index(data, ONE_MINISHARD, KEY, 0)


def test_chunk_range_outside_file() -> None:
    shard = u64(0, 24) + u64(10, 0, 100)
    with raises_corrupt(
        KEY,
        "Invalid existing byte range for chunk 10",
        "Requested byte range [16, 116) is not valid for value of size 40",
    ):
        split_shard(shard, ONE_MINISHARD, KEY)


def test_bad_gzip_minishard_index() -> None:
    with raises_corrupt(KEY, "minishard 0", "Error decoding zlib-compressed data"):
        decode_minishard_index(b"not gzip", GZIP_SPEC, KEY, 0)
    with raises_corrupt(KEY, "Error decoding zlib-compressed data"):
        split_shard(u64(0, 8) + b"not gzip", GZIP_SPEC, KEY)


@pytest.mark.parametrize(
    "payload",
    [
        b"garbage!",
        zlib.compress(b"abc"),  # zlib wrapper instead of gzip
        gz(b"abc")[:-3],  # truncated
        gz(b"abc") + b"\x00",  # trailing data
        gz(b"abc") + gz(b"def"),  # second member
        b"",
    ],
)
def test_bad_gzip_chunk_data(payload: bytes) -> None:
    index = gz(u64(10, 0, len(payload)))
    shard = u64(len(payload), len(payload) + len(index)) + payload + index
    with raises_corrupt(KEY, "chunk 10", "minishard 0", "Error decoding zlib-compressed data"):
        split_shard(shard, GZIP_SPEC, KEY)
    with raises_corrupt("chunk 10", "Error decoding zlib-compressed data"):
        decode_chunk_data(payload, GZIP_SPEC, f'chunk 10 in "{KEY}"')
    assert split_shard(shard, GZIP_SPEC, KEY, decode=False) == {10: payload}


def test_duplicate_chunk_ids() -> None:
    shard = u64(4, 52) + b"abcd" + u64(10, 0, 0, 2, 2, 2)
    assert decode_minishard_index(shard[20:], ONE_MINISHARD, KEY, 0)[0].tolist() == [10, 10]
    with raises_corrupt(
        KEY, "Chunk 10 occurs more than once in the minishard index for minishard 0"
    ):
        split_shard(shard, ONE_MINISHARD, KEY)


def test_decode_minishard_index_sorts_by_id() -> None:
    data = encode_minishard_index([9, 4, 6], [0, 5, 7], [5, 7, 10])
    ids, starts, ends = decode_minishard_index(data, ONE_MINISHARD, KEY, 0)
    assert ids.tolist() == [4, 6, 9]
    assert starts.tolist() == [21, 23, 16] and ends.tolist() == [23, 26, 21]


# ---------------------------------------------------------------------------------------
# Shard geometry (§5.9)
# ---------------------------------------------------------------------------------------

GEOM_SPEC = ShardingSpec(1, "identity", 2, 3)


def test_geometry_full_grid() -> None:
    bits = morton_bits((99, 98, 97), (50, 25, 13))
    grid = (2, 4, 8)
    assert bits == (1, 2, 3)
    assert is_rectangular(GEOM_SPEC, bits)
    assert minishard_shape_in_chunks(GEOM_SPEC, bits, grid) == (2, 1, 1)
    assert shard_shape_in_chunks(GEOM_SPEC, bits, grid) == (2, 2, 2)
    assert [chunks_in_shard(GEOM_SPEC, bits, grid, s) for s in range(9)] == [8] * 8 + [0]


def test_geometry_clipped_grids() -> None:
    bits = morton_bits((99, 98, 90), (50, 25, 13))
    assert [chunks_in_shard(GEOM_SPEC, bits, (2, 4, 7), s) for s in range(8)] == [8] * 6 + [4] * 2
    bits = morton_bits((99, 70, 90), (50, 25, 13))
    counts = [chunks_in_shard(GEOM_SPEC, bits, (2, 3, 7), s) for s in range(8)]
    assert counts == [8, 4, 8, 4, 8, 4, 4, 2]


def test_shard_origins_match_morton_ids() -> None:
    size, chunk = (99, 70, 90), (50, 25, 13)
    bits = morton_bits(size, chunk)
    grid = (2, 3, 7)
    pos = np.array(list(itertools.product(*(range(g) for g in grid))))
    shards, _ = shard_and_minishard(compressed_morton_codes(pos, bits), GEOM_SPEC)
    for s in range(8):
        mine = pos[shards == s]
        assert shard_origin_in_chunks(GEOM_SPEC, bits, grid, s) == tuple(mine.min(axis=0))
        assert len(mine) == chunks_in_shard(GEOM_SPEC, bits, grid, s)
        assert (mine.max(axis=0) - mine.min(axis=0) + 1).prod() == len(mine)
    assert shard_origin_in_chunks(GEOM_SPEC, bits, grid, 8) is None


def test_non_rectangular() -> None:
    bits = (1, 2, 3)
    murmur = ShardingSpec(1, "murmurhash3_x86_128", 2, 3)
    few_bits = ShardingSpec(1, "identity", 2, 2)
    for spec in (murmur, few_bits):
        assert not is_rectangular(spec, bits)
        assert shard_shape_in_chunks(spec, bits, (2, 4, 8)) is None
        with pytest.raises(InvalidArgumentError, match="not rectangular"):
            chunks_in_shard(spec, bits, (2, 4, 8), 0)


def test_write_chunk_shape_examples() -> None:
    size = (34432, 39552, 51508)
    spec = ShardingSpec(9, "identity", 6, 15)
    assert write_chunk_shape(spec, size, (64, 64, 64)) == (2048, 2048, 2048)
    assert write_chunk_shape(spec, size, (64, 65, 66)) == (2048, 2080, 2112)
    nonrect = ShardingSpec(9, "identity", 6, 5)
    assert write_chunk_shape(nonrect, size, (64, 64, 64)) == (34432, 39552, 51520)
    murmur = ShardingSpec(9, "murmurhash3_x86_128", 6, 15)
    assert write_chunk_shape(murmur, size, (64, 64, 64)) == (34432, 39552, 51520)


# ---------------------------------------------------------------------------------------
# Automatic sharding (§5.10)
# ---------------------------------------------------------------------------------------


def written(spec: ShardingSpec | None, size, chunk) -> tuple[int, int, int] | None:
    return None if spec is None else write_chunk_shape(spec, size, chunk)


class TestChooseSharding:
    size = (1000, 1000, 1000)
    read = (30, 40, 50)

    def test_elements_target(self) -> None:
        s = choose_sharding(self.size, self.read, write_chunk_elements=30 * 40 * 50 * 8)
        assert written(s, self.size, self.read) == (60, 80, 100)
        assert s == ShardingSpec(3, "identity", 0, 13, "gzip", "gzip")

    def test_elements_round_to_nearest_power_of_two(self) -> None:
        s = choose_sharding(self.size, self.read, write_chunk_elements=30 * 40 * 50 * 9)
        assert written(s, self.size, self.read) == (60, 80, 100)

    def test_soft_whole_grid_z(self) -> None:
        s = choose_sharding(self.size, self.read, write_chunk_shape=(0, 0, -1))
        assert written(s, self.size, self.read) == (960, 1000, 1000)
        assert (s.preshift_bits, s.minishard_bits, s.shard_bits) == (9, 6, 1)

    def test_hard_shape_accepted(self) -> None:
        s = choose_sharding(
            self.size, self.read, write_chunk_shape=(120, 160, 100), hard_constraint=True
        )
        assert written(s, self.size, self.read) == (120, 160, 100)

    def test_unsatisfiable_hard_shape(self) -> None:
        with pytest.raises(
            InvalidArgumentError, match="Cannot satisfy write chunk shape constraint"
        ):
            choose_sharding(
                self.size, self.read, write_chunk_shape=(120, 80, 200), hard_constraint=True
            )

    def test_doc_example(self) -> None:
        s = choose_sharding((34432, 39552, 51508), (64, 64, 64), write_chunk_elements=8_000_000_000)
        assert (s.preshift_bits, s.minishard_bits, s.shard_bits) == (9, 6, 15)
        assert (s.hash, s.minishard_index_encoding, s.data_encoding) == ("identity", "gzip", "gzip")

    def test_small_write_chunk(self) -> None:
        s = choose_sharding((8, 8, 3), (2, 2, 1), write_chunk_shape=(4, 4, 1), hard_constraint=True)
        assert (s.preshift_bits, s.minishard_bits, s.shard_bits) == (2, 0, 4)

    def test_unconstrained_is_unsharded(self) -> None:
        assert choose_sharding(self.size, self.read) is None

    def test_shard_data_encoding_alone_gives_one_chunk_per_shard(self) -> None:
        s = choose_sharding((8, 8, 3), (2, 2, 1), shard_data_encoding="raw")
        assert s == ShardingSpec(0, "identity", 0, 6, "gzip", "raw")
        s = choose_sharding((1, 1, 1), (1, 1, 1), shard_data_encoding="gzip")
        assert s == ShardingSpec(0, "identity", 0, 0, "gzip", "gzip")

    @pytest.mark.parametrize(
        "encoding, data_encoding",
        [("raw", "gzip"), ("compressed_segmentation", "gzip"), ("jpeg", "raw"), ("png", "raw")],
    )
    def test_default_data_encoding(self, encoding: str, data_encoding: str) -> None:
        s = choose_sharding((8, 8, 3), (2, 2, 1), write_chunk_elements=16, encoding=encoding)
        assert s.data_encoding == data_encoding


# ---------------------------------------------------------------------------------------
# Interoperability with TensorStore 0.1.86
# ---------------------------------------------------------------------------------------

ts = pytest.importorskip("tensorstore")


def ts_create(path: Path, dtype: str, size, chunk, sharding: dict, channels: int = 1):
    return ts.open(
        {
            "driver": "neuroglancer_precomputed",
            "kvstore": {"driver": "file", "path": str(path)},
            "multiscale_metadata": {"data_type": dtype, "num_channels": channels, "type": "image"},
            "scale_metadata": {
                "size": list(size),
                "chunk_size": list(chunk),
                "encoding": "raw",
                "resolution": [1, 1, 1],
                "sharding": sharding,
            },
        },
        create=True,
    ).result()


def random_volume(rng: np.random.Generator, dtype: str, size, channels: int) -> np.ndarray:
    """Random data without zero values (TS drops all-zero chunks)."""
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    shape = (*size, channels)
    if info is None:
        return rng.uniform(1, 2, shape).astype(dtype)
    hi = min(int(info.max), 2**62)
    return rng.integers(1, hi, shape, dtype=np.int64 if hi < 2**62 else np.uint64).astype(dtype)


INTEROP_CASES = {
    "uint8-identity-raw-rect": (
        "uint8",
        (37, 29, 23),
        (8, 8, 4),
        1,
        dict(preshift_bits=2, minishard_bits=2, shard_bits=4),
    ),
    "uint64-murmur-gzip": (
        "uint64",
        (20, 18, 9),
        (4, 4, 4),
        2,
        dict(
            hash="murmurhash3_x86_128",
            preshift_bits=1,
            minishard_bits=2,
            shard_bits=2,
            data_encoding="gzip",
            minishard_index_encoding="gzip",
        ),
    ),
    "uint16-000-gzip-data": (
        "uint16",
        (9, 7, 5),
        (4, 4, 4),
        1,
        dict(preshift_bits=0, minishard_bits=0, shard_bits=0, data_encoding="gzip"),
    ),
    "uint32-nonrect-gzip-index": (
        "uint32",
        (30, 30, 30),
        (8, 8, 8),
        1,
        dict(preshift_bits=1, minishard_bits=1, shard_bits=1, minishard_index_encoding="gzip"),
    ),
    "float32-big-preshift": (
        "float32",
        (17, 9, 12),
        (4, 4, 3),
        3,
        dict(preshift_bits=10, minishard_bits=0, shard_bits=0),
    ),
    "int8-extra-shard-bits": (
        "int8",
        (16, 16, 16),
        (4, 4, 4),
        1,
        dict(preshift_bits=0, minishard_bits=3, shard_bits=8),
    ),
}


def make_spec(params: dict) -> ShardingSpec:
    return ShardingSpec.from_json(
        {"@type": "neuroglancer_uint64_sharded_v1", "hash": "identity", **params}
    )


@pytest.mark.parametrize("case", sorted(INTEROP_CASES))
def test_tensorstore_shards_split_and_reencode(tmp_path: Path, case: str) -> None:
    dtype, size, chunk, channels, params = INTEROP_CASES[case]
    spec = make_spec(params)
    store = ts_create(tmp_path, dtype, size, chunk, spec.to_json(), channels)
    data = random_volume(np.random.default_rng(len(case)), dtype, size, channels)
    store.write(data).result()

    expected = raw_chunks_by_shard(data, chunk, spec)
    files = sorted((tmp_path / "1_1_1").glob("*.shard"))
    assert sorted(f.name for f in files) == sorted(shard_filename(s, spec) for s in expected)
    for f in files:
        stored = f.read_bytes()
        chunks = split_shard(stored, spec, str(f))
        shard = int(f.stem, 16)
        # Ids map to the right grid positions: their bytes equal the raw encoding there.
        assert chunks == expected[shard]
        ids = np.array(list(chunks), np.uint64)
        shards, minishards = shard_and_minishard(ids, spec)
        assert (shards == shard).all()
        assert (np.lexsort((ids, minishards)) == np.arange(len(ids))).all()  # file order
        again = encode_shard(chunks, spec)
        if spec.data_encoding == "raw" and spec.minishard_index_encoding == "raw":
            assert again == stored
        else:
            assert split_shard(again, spec, "re") == chunks
        if spec.minishard_index_encoding == "raw":
            kept = split_shard(stored, spec, str(f), decode=False)
            assert encode_shard(kept, spec, data_encoded=True) == stored


@pytest.mark.parametrize("case", sorted(INTEROP_CASES))
def test_shards_from_numpy_read_by_tensorstore(tmp_path: Path, case: str) -> None:
    dtype, size, chunk, channels, params = INTEROP_CASES[case]
    spec = make_spec(params)
    ts_create(tmp_path, dtype, size, chunk, spec.to_json(), channels)
    data = random_volume(np.random.default_rng(7 + len(case)), dtype, size, channels)
    (tmp_path / "1_1_1").mkdir(exist_ok=True)
    for shard, chunks in raw_chunks_by_shard(data, chunk, spec).items():
        (tmp_path / "1_1_1" / shard_filename(shard, spec)).write_bytes(encode_shard(chunks, spec))
    reopened = ts.open(
        {
            "driver": "neuroglancer_precomputed",
            "kvstore": {"driver": "file", "path": str(tmp_path)},
        },
        open=True,
    ).result()
    np.testing.assert_array_equal(reopened.read().result(), data)


def test_a1_volume_written_by_tensorstore_is_byte_identical(tmp_path: Path) -> None:
    store = ts_create(tmp_path, "uint8", (3, 2, 2), (2, 1, 1), A1_SPEC.to_json())
    store.write(a1_array()).result()
    assert (tmp_path / "1_1_1" / "0.shard").read_bytes().hex() == A1_SHARD0
    assert (tmp_path / "1_1_1" / "1.shard").read_bytes().hex() == A1_SHARD1


def ts_chosen(size, read, **layout) -> tuple[dict | None, tuple[int, ...]]:
    codec = layout.pop("codec", None)
    kwargs = {}
    if codec is not None:
        kwargs["codec"] = ts.CodecSpec({"driver": "neuroglancer_precomputed", **codec})
    store = ts.open(
        {"driver": "neuroglancer_precomputed", "kvstore": "memory://"},
        create=True,
        dtype=ts.uint8,
        domain=ts.IndexDomain(shape=[*size, 1]),
        chunk_layout=ts.ChunkLayout(read_chunk_shape=[*read, 1], **layout),
        **kwargs,
    ).result()
    return store.spec().to_json()["scale_metadata"].get("sharding"), tuple(
        store.chunk_layout.write_chunk.shape[:3]
    )


@pytest.mark.parametrize(
    "layout, ours",
    [
        (dict(write_chunk_elements=30 * 40 * 50 * 8), dict(write_chunk_elements=30 * 40 * 50 * 8)),
        (
            dict(write_chunk_elements=30 * 40 * 50 * 100),
            dict(write_chunk_elements=30 * 40 * 50 * 100),
        ),
        (dict(write_chunk_shape_soft_constraint=[0, 0, -1, 0]), dict(write_chunk_shape=(0, 0, -1))),
        (
            dict(write_chunk_shape_soft_constraint=[100, 0, 500, 0]),
            dict(write_chunk_shape=(100, 0, 500)),
        ),
        (
            dict(write_chunk_shape=[120, 160, 100, 1]),
            dict(write_chunk_shape=(120, 160, 100), hard_constraint=True),
        ),
        (dict(codec={"shard_data_encoding": "raw"}), dict(shard_data_encoding="raw")),
        (
            dict(codec={"encoding": "jpeg"}, write_chunk_elements=10**6),
            dict(encoding="jpeg", write_chunk_elements=10**6),
        ),
        (dict(), dict()),
    ],
)
def test_choose_sharding_matches_tensorstore(layout: dict, ours: dict) -> None:
    size, read = (1000, 1000, 1000), (30, 40, 50)
    theirs, their_write = ts_chosen(size, read, **layout)
    mine = choose_sharding(size, read, **ours)
    assert (None if mine is None else mine.to_json()) == theirs
    if mine is not None:
        assert write_chunk_shape(mine, size, read) == their_write


@pytest.mark.parametrize(
    "params",
    [
        dict(preshift_bits=9, minishard_bits=6, shard_bits=15),
        dict(preshift_bits=9, minishard_bits=6, shard_bits=5),
        dict(preshift_bits=2, minishard_bits=3, shard_bits=20, hash="murmurhash3_x86_128"),
    ],
)
def test_write_chunk_shape_matches_tensorstore(tmp_path: Path, params: dict) -> None:
    size, chunk = (34432, 39552, 51508), (64, 65, 66)
    spec = make_spec(params)
    store = ts_create(tmp_path, "uint8", size, chunk, spec.to_json())
    assert write_chunk_shape(spec, size, chunk) == tuple(store.chunk_layout.write_chunk.shape[:3])

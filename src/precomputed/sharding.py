"""The ``neuroglancer_uint64_sharded_v1`` format: ids, hashing, shard files, geometry.

Pure functions over bytes, ints and numpy arrays (no I/O), matching TensorStore 0.1.86
byte for byte (see ``precomputed-format.md`` §5). Chunk ids are compressed Morton codes
of 0-based chunk grid positions; a chunk's shard and minishard come from (a hash of) the
id shifted right by ``preshift_bits``. A shard file is a fixed-size shard index followed by,
for each non-empty minishard in increasing order, its chunks' data (ascending id) and then
its minishard index.

Every error raised while parsing stored bytes is a :class:`CorruptDataError` whose message
names the shard key and, when known, the minishard and the chunk id.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import mmh3
import numpy as np

from .codecs.gzip import DEFAULT_LIMIT, GZIP_ERROR, gzip_compress, gzip_inflate
from .errors import CorruptDataError, InvalidArgumentError
from .internal import jsonparse

__all__ = [
    "SHARDING_TYPE",
    "ShardingSpec",
    "morton_bits",
    "compressed_morton_codes",
    "placement_of",
    "placement_of_id",
    "decode_morton_codes",
    "hash_chunk_ids",
    "shard_and_minishard",
    "shard_filename",
    "check_byte_range",
    "decode_shard_index",
    "encode_shard_index",
    "decode_shard_index_entry",
    "encode_minishard_index",
    "decode_minishard_index",
    "encode_shard",
    "shard_entries",
    "split_shard",
    "encode_chunk_data",
    "decode_chunk_data",
    "MAX_MINISHARD_ENTRIES",
    "is_rectangular",
    "minishard_shape_in_chunks",
    "shard_shape_in_chunks",
    "shard_origin_in_chunks",
    "chunks_in_shard",
    "write_chunk_shape",
    "choose_sharding",
]

SHARDING_TYPE = "neuroglancer_uint64_sharded_v1"
_HASHES = ("identity", "murmurhash3_x86_128")
_ENCODINGS = ("raw", "gzip")
_MEMBERS = (
    "@type",
    "preshift_bits",
    "minishard_bits",
    "shard_bits",
    "hash",
    "data_encoding",
    "minishard_index_encoding",
)
_U64 = (1 << 64) - 1
_I64_MAX = (1 << 63) - 1
#: The most entries a minishard index may hold when the caller knows no tighter bound
#: (a chunk store knows one: the chunks that can map to a minishard). 4 Mi entries are
#: 96 MiB decoded, far more than any real minishard (Neuroglancer fetches it whole).
MAX_MINISHARD_ENTRIES = 1 << 22

# ---------------------------------------------------------------------------------------
# Sharding spec
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardingSpec:
    """A ``neuroglancer_uint64_sharded_v1`` sharding specification (§5.1)."""

    preshift_bits: int
    hash: str
    minishard_bits: int
    shard_bits: int
    minishard_index_encoding: str = "raw"
    data_encoding: str = "raw"

    def __post_init__(self) -> None:
        # Validate programmatic construction with the same rules as JSON parsing.
        ShardingSpec.from_json(self.to_json())

    @classmethod
    def from_json(cls, obj: Any, member: str = "sharding") -> ShardingSpec:
        """Parse and validate a sharding JSON object; ``member`` names it in errors."""
        with jsonparse.member(member):
            return cls._parse(obj)

    @classmethod
    def _parse(cls, obj: Any) -> ShardingSpec:
        obj = jsonparse.require_object(obj)
        type_id = obj.get("@type", jsonparse.MISSING)
        if type_id != SHARDING_TYPE:
            with jsonparse.member("@type"):
                raise jsonparse.fail(f'"{SHARDING_TYPE}"', type_id)

        def integer(name: str, lo: int, hi: int) -> int:
            with jsonparse.member(name):
                return jsonparse.parse_int(obj.get(name, jsonparse.MISSING), lo, hi)

        def choice(name: str, choices: tuple[str, ...], default: str | None) -> str:
            if name not in obj and default is not None:
                return default
            with jsonparse.member(name):
                return jsonparse.parse_enum(obj.get(name, jsonparse.MISSING), choices)

        preshift = integer("preshift_bits", 0, 64)
        minishard = integer("minishard_bits", 0, 32)
        shard = integer("shard_bits", 0, 64 - minishard)
        hash_ = choice("hash", _HASHES, None)
        data_enc = choice("data_encoding", _ENCODINGS, "raw")
        index_enc = choice("minishard_index_encoding", _ENCODINGS, "raw")
        jsonparse.check_extra_members(obj, _MEMBERS)
        spec = object.__new__(cls)
        for name, value in (
            ("preshift_bits", preshift),
            ("hash", hash_),
            ("minishard_bits", minishard),
            ("shard_bits", shard),
            ("minishard_index_encoding", index_enc),
            ("data_encoding", data_enc),
        ):
            object.__setattr__(spec, name, value)
        return spec

    def to_json(self) -> dict[str, Any]:
        """All seven members, as TensorStore writes them."""
        return {
            "@type": SHARDING_TYPE,
            "preshift_bits": self.preshift_bits,
            "hash": self.hash,
            "minishard_bits": self.minishard_bits,
            "shard_bits": self.shard_bits,
            "minishard_index_encoding": self.minishard_index_encoding,
            "data_encoding": self.data_encoding,
        }

    @property
    def shard_index_size(self) -> int:
        """Size in bytes of the shard index at the start of every shard file."""
        return 16 << self.minishard_bits

    @property
    def num_minishards(self) -> int:
        """Minishards per shard (``2**minishard_bits``)."""
        return 1 << self.minishard_bits

    @property
    def num_shards(self) -> int:
        """Possible shard numbers (``2**shard_bits``)."""
        return 1 << self.shard_bits


# ---------------------------------------------------------------------------------------
# Chunk ids, hashing, shard numbers
# ---------------------------------------------------------------------------------------


def morton_bits(size_xyz: Sequence[int], chunk_xyz: Sequence[int]) -> tuple[int, int, int]:
    """Compressed-Morton bits per dimension: ``bit_length(ceil(size/chunk) - 1)`` (§5.2)."""
    if len(size_xyz) != 3 or len(chunk_xyz) != 3:
        raise InvalidArgumentError(
            f"Expected 3 sizes and 3 chunk sizes, but received: {list(size_xyz)}, {list(chunk_xyz)}"
        )
    bits = (
        max(0, -(-int(s) // int(c)) - 1).bit_length()
        for s, c in zip(size_xyz, chunk_xyz, strict=True)
    )
    return tuple(bits)  # type: ignore[return-value]


def _morton_schedule(bits: Sequence[int]) -> list[tuple[int, int]]:
    """``(dim, bit_of_dim)`` for each output bit of the compressed Morton code, in order."""
    return [(d, i) for i in range(max(bits, default=0)) for d in range(3) if i < bits[d]]


def compressed_morton_codes(grid_positions: np.ndarray, bits: Sequence[int]) -> np.ndarray:
    """Chunk ids (uint64) of 0-based chunk grid positions ``(n, 3)`` in xyz order."""
    pos = np.asarray(grid_positions).reshape(-1, 3).astype(np.uint64, copy=False)
    out = np.zeros(pos.shape[0], dtype=np.uint64)
    one = np.uint64(1)
    for j, (d, i) in enumerate(_morton_schedule(bits)):
        out |= ((pos[:, d] >> np.uint64(i)) & one) << np.uint64(j)
    return out


def placement_of(pos: Sequence[int], bits: Sequence[int], spec: ShardingSpec) -> tuple[int, int, int]:
    """``(chunk id, shard, minishard)`` of one 0-based grid position, in plain integers:
    the same as :func:`compressed_morton_codes` then :func:`shard_and_minishard`, without
    the ~0.1 ms of numpy set-up that dominates a single-chunk read."""
    code = 0
    for j, (d, i) in enumerate(_morton_schedule_cached(tuple(bits))):
        code |= ((int(pos[d]) >> i) & 1) << j
    return (code, *placement_of_id(code, spec))


def placement_of_id(chunk_id: int, spec: ShardingSpec) -> tuple[int, int]:
    """``(shard, minishard)`` of one chunk id, in plain integers: the same as
    :func:`shard_and_minishard` without numpy's set-up."""
    hashed = chunk_id >> spec.preshift_bits if spec.preshift_bits < 64 else 0
    if spec.hash != "identity":
        digest = mmh3.mmh3_x86_128_digest(hashed.to_bytes(8, "little"), 0)
        hashed = int.from_bytes(digest[:8], "little")
    combined = hashed & ((1 << (spec.minishard_bits + spec.shard_bits)) - 1)
    minishard = combined & ((1 << spec.minishard_bits) - 1)
    shard = combined >> spec.minishard_bits if spec.minishard_bits < 64 else 0
    return shard & ((1 << spec.shard_bits) - 1), minishard


@lru_cache(maxsize=64)
def _morton_schedule_cached(bits: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    return tuple(_morton_schedule(bits))


def decode_morton_codes(ids: np.ndarray, bits: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`compressed_morton_codes`: ``(n, 3)`` int64 grid positions."""
    ids = np.asarray(ids, dtype=np.uint64).reshape(-1)
    pos = np.zeros((ids.shape[0], 3), dtype=np.uint64)
    one = np.uint64(1)
    for j, (d, i) in enumerate(_morton_schedule(bits)):
        pos[:, d] |= ((ids >> np.uint64(j)) & one) << np.uint64(i)
    return pos.astype(np.int64)


def _murmurhash3_low64(values: np.ndarray) -> np.ndarray:
    """Low 64 bits of MurmurHash3_x86_128 (seed 0) of each value's 8 LE bytes."""
    buf = values.astype("<u8").tobytes()
    digest = mmh3.mmh3_x86_128_digest
    out = b"".join([digest(buf[i : i + 8], 0) for i in range(0, len(buf), 8)])
    return np.frombuffer(out, dtype="<u8")[::2].astype(np.uint64)


def hash_chunk_ids(ids: np.ndarray, spec: ShardingSpec) -> np.ndarray:
    """Hash of ``id >> preshift_bits`` per ``spec.hash`` (uint64 array, §5.3)."""
    ids = np.asarray(ids, dtype=np.uint64).reshape(-1)
    if spec.preshift_bits >= 64:
        inputs = np.zeros_like(ids)
    else:
        inputs = ids >> np.uint64(spec.preshift_bits)
    if spec.hash == "identity":
        return inputs
    if spec.preshift_bits > 0 and inputs.size > 1:
        # Preshifting makes many ids share an input: hash each distinct input once.
        unique, inverse = np.unique(inputs, return_inverse=True)
        return _murmurhash3_low64(unique)[inverse.reshape(-1)]
    return _murmurhash3_low64(inputs)


def _low_mask(nbits: int) -> np.uint64:
    return np.uint64(_U64 if nbits >= 64 else (1 << nbits) - 1)


def shard_and_minishard(ids: np.ndarray, spec: ShardingSpec) -> tuple[np.ndarray, np.ndarray]:
    """``(shard, minishard)`` uint64 arrays for chunk ids (§5.3)."""
    combined = hash_chunk_ids(ids, spec) & _low_mask(spec.minishard_bits + spec.shard_bits)
    minishard = combined & _low_mask(spec.minishard_bits)
    if spec.minishard_bits >= 64:
        shard = np.zeros_like(combined)
    else:
        shard = (combined >> np.uint64(spec.minishard_bits)) & _low_mask(spec.shard_bits)
    return shard, minishard


def shard_filename(shard: int, spec: ShardingSpec) -> str:
    """File name of a shard: lowercase hex padded to ``ceil(shard_bits/4)`` digits."""
    digits = -(-spec.shard_bits // 4)
    return f"{int(shard):0{digits}x}.shard"


# ---------------------------------------------------------------------------------------
# Byte ranges
# ---------------------------------------------------------------------------------------


def _signed(v: int) -> int:
    """Interpret an unsigned 64-bit value as TensorStore's int64 byte offset."""
    return v - (1 << 64) if v > _I64_MAX else v


def _relative_range_error(start: int, end: int, spec: ShardingSpec) -> str | None:
    """TensorStore's complaint about a relative byte range, or ``None`` if valid."""
    s, e = _signed(int(start)), _signed(int(end))
    if s < 0 or e < s:
        return f"Shard index specified invalid byte range: [{s}, {e})"
    if e > _I64_MAX - spec.shard_index_size:
        return (
            f"Byte range [{s}, {e}) relative to the end of the shard index "
            f"({spec.shard_index_size}) is not valid"
        )
    return None


def check_byte_range(start: int, end: int, size: int, context: str = "") -> None:
    """Raise :class:`CorruptDataError` unless ``0 <= start <= end <= size``."""
    if not (0 <= start <= end <= size):
        prefix = f"{context}: " if context else ""
        raise CorruptDataError(
            f"{prefix}Requested byte range [{start}, {end}) is not valid for value of size {size}"
        )


# ---------------------------------------------------------------------------------------
# Shard index
# ---------------------------------------------------------------------------------------


def encode_shard_index(ranges: np.ndarray) -> bytes:
    """Shard index bytes from ``(2**minishard_bits, 2)`` relative ``[start, end)`` ranges."""
    return np.ascontiguousarray(ranges, dtype="<u8").tobytes()


def decode_shard_index(data: bytes, spec: ShardingSpec, key: str) -> np.ndarray:
    """Parse a whole shard index: ``(2**minishard_bits, 2)`` uint64 relative ranges."""
    size = spec.shard_index_size
    if len(data) != size:
        raise CorruptDataError(
            f'Error reading shard index of "{key}": Expected {size} bytes, '
            f"but received: {len(data)} bytes"
        )
    ranges = np.frombuffer(data, dtype="<u8").reshape(-1, 2).astype(np.uint64)
    s = ranges[:, 0].view(np.int64)
    e = ranges[:, 1].view(np.int64)
    bad = (s < 0) | (e < s) | (e > _I64_MAX - size)
    if bad.any():
        m = int(np.flatnonzero(bad)[0])
        msg = _relative_range_error(int(ranges[m, 0]), int(ranges[m, 1]), spec)
        raise CorruptDataError(
            f'Error decoding shard index entry for minishard {m} in "{key}": {msg}'
        )
    return ranges


def decode_shard_index_entry(
    data16: bytes, minishard: int, spec: ShardingSpec, key: str, shard_size: int | None = None
) -> tuple[int, int] | None:
    """Absolute ``(start, end)`` of a minishard's index in the shard file, ``None`` if empty.

    ``data16`` is bytes ``[16*m, 16*m+16)`` of the shard file; a shorter read means the file
    is truncated (``shard_size``, if known, is quoted in the error as TensorStore does).
    """
    where = f'Error retrieving shard index entry for minishard {minishard} in "{key}"'
    if len(data16) != 16:
        lo = 16 * minishard
        size = shard_size if shard_size is not None else lo + len(data16)
        raise CorruptDataError(
            f"{where}: Requested byte range [{lo}, {lo + 16}) is not valid for value of size {size}"
        )
    start = int.from_bytes(data16[:8], "little")
    end = int.from_bytes(data16[8:], "little")
    msg = _relative_range_error(start, end, spec)
    if msg is not None:
        raise CorruptDataError(f"{where}: {msg}")
    if start == end:
        return None
    return start + spec.shard_index_size, end + spec.shard_index_size


# ---------------------------------------------------------------------------------------
# Minishard index
# ---------------------------------------------------------------------------------------


def encode_minishard_index(ids: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> bytes:
    """Raw (unencoded) minishard index; ``starts``/``ends`` relative to the shard index end.

    Entries are written in the given order (TensorStore writes them by ascending id).
    """
    ids = np.asarray(ids, dtype=np.uint64).reshape(-1)
    starts = np.asarray(starts, dtype=np.uint64).reshape(-1)
    ends = np.asarray(ends, dtype=np.uint64).reshape(-1)
    n = ids.shape[0]
    out = np.empty((3, n), dtype="<u8")
    if n:
        out[0, 0] = ids[0]
        out[0, 1:] = ids[1:] - ids[:-1]
        out[1, 0] = starts[0]
        out[1, 1:] = starts[1:] - ends[:-1]
        out[2] = ends - starts
    return out.tobytes()


def decode_minishard_index(
    data: bytes | memoryview,
    spec: ShardingSpec,
    key: str,
    minishard: int,
    max_entries: int = MAX_MINISHARD_ENTRIES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode an encoded minishard index.

    Returns ``(ids uint64, starts int64, ends int64)`` sorted by id, with byte offsets
    absolute in the shard file (the shard index size added). A gzip index is inflated to
    at most ``max_entries`` entries (24 bytes each): a bomb is a CorruptDataError.
    """
    where = f'Error decoding minishard index for minishard {minishard} in "{key}"'
    if spec.minishard_index_encoding == "gzip":
        data, why = gzip_inflate(data, 24 * max_entries)
        if why is not None:
            raise CorruptDataError(f"{where}: {GZIP_ERROR}: {why}")
    if len(data) % 24:
        raise CorruptDataError(f"{where}: Invalid minishard index length: {len(data)}")
    n = len(data) // 24
    rows = np.frombuffer(data, dtype="<u8").reshape(3, n).astype(np.uint64)
    ids = np.cumsum(rows[0], dtype=np.uint64)
    # Offsets accumulate start deltas and sizes alternately, wrapping like uint64 in C++.
    steps = np.empty(2 * n, dtype=np.uint64)
    steps[0::2] = rows[1]
    steps[1::2] = rows[2]
    offsets = np.cumsum(steps, dtype=np.uint64).view(np.int64)
    starts = offsets[0::2]
    ends = offsets[1::2]
    bad = (starts < 0) | (ends < starts)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CorruptDataError(
            f"{where}: Invalid byte range in minishard index for chunk {int(ids[i])}: "
            f"[{int(starts[i])}, {int(ends[i])})"
        )
    order = np.argsort(ids, kind="stable")
    ids, starts, ends = ids[order], starts[order], ends[order]
    size = spec.shard_index_size
    overflow = ends > _I64_MAX - size
    if overflow.any():
        i = int(np.flatnonzero(overflow)[0])
        raise CorruptDataError(
            f"{where}: Error decoding minishard index entry for chunk {int(ids[i])}: "
            f"Byte range [{int(starts[i])}, {int(ends[i])}) relative to the end of the shard "
            f"index ({size}) is not valid"
        )
    return ids, starts + size, ends + size


# ---------------------------------------------------------------------------------------
# Whole shards
# ---------------------------------------------------------------------------------------


def encode_chunk_data(data: bytes, spec: ShardingSpec) -> bytes:
    """Apply the shard ``data_encoding`` to one chunk's (volume-encoded) bytes."""
    return gzip_compress(data) if spec.data_encoding == "gzip" else bytes(data)


def decode_chunk_data(
    data: bytes | memoryview, spec: ShardingSpec, what: str, limit: int = DEFAULT_LIMIT
) -> bytes:
    """Undo the shard ``data_encoding`` (inflating to at most ``limit`` bytes); ``what``
    (e.g. chunk id and key) names it in errors."""
    if spec.data_encoding != "gzip":
        return bytes(data)
    out, why = gzip_inflate(data, limit)
    if why is not None:
        raise CorruptDataError(f"Error decoding {what}: {GZIP_ERROR}: {why}")
    return out


def encode_shard(
    chunks: Mapping[int, bytes | memoryview],
    spec: ShardingSpec,
    *,
    data_encoded: bool = False,
    prefixes: Mapping[int, bytes | memoryview] | None = None,
) -> bytes | None:
    """Encode a whole shard file from ``{chunk id: chunk bytes}``; ``None`` if no chunks.

    Chunk bytes are already encoded with the volume encoding; the shard ``data_encoding``
    is applied here unless ``data_encoded`` (e.g. bytes kept from ``split_shard(...,
    decode=False)``). All chunks must belong to the same shard. Layout as TensorStore
    writes it (§5.5): minishards ascending, in each the chunks by ascending id, then the
    minishard index; the shard index in front.

    ``prefixes`` (``{chunk id: bytes}``) are stored verbatim immediately before a chunk's
    data, outside its indexed byte range and never encoded: the sharded multi-resolution
    mesh format keeps a segment's fragment data there, in front of its manifest.
    """
    if not chunks:
        return None
    try:
        ids = np.fromiter(chunks.keys(), dtype=np.uint64, count=len(chunks))
    except (OverflowError, ValueError, TypeError) as e:
        raise InvalidArgumentError(f"Chunk ids must be integers in [0, 2**64): {e}") from None
    shard, minishard = shard_and_minishard(ids, spec)
    if shard.size and (shard != shard[0]).any():
        others = sorted({int(s) for s in np.unique(shard)})
        raise InvalidArgumentError(f"Chunks of one shard expected, but they map to shards {others}")
    order = np.lexsort((ids, minishard))
    ids, minishard = ids[order], minishard[order]
    gzip_data = spec.data_encoding == "gzip" and not data_encoded
    gzip_index = spec.minishard_index_encoding == "gzip"
    ranges = np.zeros((spec.num_minishards, 2), dtype=np.uint64)
    # pieces[0] becomes the shard index: one join builds the file (peak = one shard copy).
    pieces: list[bytes | memoryview] = [b""]
    offset = 0
    n = ids.shape[0]
    i = 0
    id_list = ids.tolist()
    ms_list = minishard.tolist()
    while i < n:
        m = ms_list[i]
        j = i
        while j < n and ms_list[j] == m:
            j += 1
        group = id_list[i:j]
        starts = np.empty(j - i, dtype=np.uint64)
        ends = np.empty(j - i, dtype=np.uint64)
        for k, chunk_id in enumerate(group):
            data = chunks[chunk_id]
            prefix = prefixes.get(chunk_id) if prefixes else None
            if prefix:
                pieces.append(prefix)
                offset += len(prefix)
            if gzip_data:
                data = gzip_compress(data)
            elif not isinstance(data, bytes):
                data = memoryview(data).cast("B")  # e.g. a view from split_shard: no copy
            pieces.append(data)
            starts[k] = offset
            offset += len(data)
            ends[k] = offset
        index = encode_minishard_index(ids[i:j], starts, ends)
        if gzip_index:
            index = gzip_compress(index)
        pieces.append(index)
        ranges[m] = (offset, offset + len(index))
        offset += len(index)
        i = j
    pieces[0] = encode_shard_index(ranges)
    return b"".join(pieces)


def shard_entries(
    data: bytes | memoryview,
    spec: ShardingSpec,
    key: str,
    *,
    allow_duplicates: bool = False,
    max_entries: int = MAX_MINISHARD_ENTRIES,
) -> dict[int, tuple[int, int]]:
    """``{chunk id: absolute (start, stop)}`` of every chunk of a stored shard (minishard,
    then id order), without touching the chunk bytes.

    An empty shard is ``{}``. Validates like TensorStore's write path (§5.8);
    ``allow_duplicates`` accepts a chunk id listed twice in a minishard index and keeps its
    first entry, as a read of that chunk would. The bytes in front of an entry (up to the
    previous one) are where unindexed prefixes live (see :func:`encode_shard`).
    ``max_entries`` bounds the inflation of each minishard index.
    """
    where = f'Error reading shard "{key}"'
    if not len(data):
        return {}
    index_size = spec.shard_index_size
    if len(data) < index_size:
        raise CorruptDataError(
            f"{where}: Existing shard has size {len(data)}, but expected at least: {index_size}"
        )
    ranges = np.frombuffer(data, dtype="<u8", count=2 * spec.num_minishards).reshape(-1, 2)
    s = ranges[:, 0].astype(np.uint64).view(np.int64)
    e = ranges[:, 1].astype(np.uint64).view(np.int64)
    total = len(data)
    bad = (s < 0) | (e < s) | (e > total - index_size)
    nonempty = s != e
    result: dict[int, tuple[int, int]] = {}
    for m in np.flatnonzero(bad | nonempty).tolist():
        start, end = int(ranges[m, 0]), int(ranges[m, 1])
        context = f"{where}: Error decoding existing shard index entry for minishard {m}"
        msg = _relative_range_error(start, end, spec)
        if msg is not None:
            raise CorruptDataError(f"{context}: {msg}")
        check_byte_range(start + index_size, end + index_size, total, context)
        if start == end:
            continue
        ids, starts, ends = decode_minishard_index(
            bytes(data[start + index_size : end + index_size]), spec, key, m, max_entries
        )
        # Entries are checked in id order: a repeated id, then the entry's byte range.
        dup = np.flatnonzero(ids[1:] == ids[:-1]) + 1
        out_of_file = np.flatnonzero(ends > total)
        first_dup = int(dup[0]) if dup.size and not allow_duplicates else len(ids)
        first_out = int(out_of_file[0]) if out_of_file.size else len(ids)
        if first_dup <= first_out and first_dup < len(ids):
            raise CorruptDataError(
                f"{where}: Chunk {int(ids[first_dup])} occurs more than once in the "
                f"minishard index for minishard {m}"
            )
        if first_out < len(ids):
            i = first_out
            check_byte_range(
                int(starts[i]),
                int(ends[i]),
                total,
                f"{where}: Invalid existing byte range for chunk {int(ids[i])}",
            )
        for chunk_id, a, b in zip(ids.tolist(), starts.tolist(), ends.tolist(), strict=True):
            result.setdefault(chunk_id, (a, b))  # a duplicate id: the first entry wins
    return result


def split_shard(
    data: bytes,
    spec: ShardingSpec,
    key: str,
    *,
    decode: bool = True,
    allow_duplicates: bool = False,
    limit: int = DEFAULT_LIMIT,
    max_entries: int = MAX_MINISHARD_ENTRIES,
) -> dict[int, bytes | memoryview]:
    """Split a stored shard into ``{chunk id: chunk bytes}`` (minishard, id order).

    With ``decode`` (the default) the shard ``data_encoding`` is removed and each chunk is
    its own ``bytes``; otherwise the stored bytes are returned as zero-copy memoryviews
    into ``data`` (for re-encoding with ``data_encoded=True``, so a shard rewrite holds the
    old and the new shard, not a third copy). An empty shard is ``{}``. Validated as by
    :func:`shard_entries`; ``limit`` and ``max_entries`` bound the inflation of chunk data
    and minishard indices.
    """
    data = bytes(data)
    view = memoryview(data)
    entries = shard_entries(
        data, spec, key, allow_duplicates=allow_duplicates, max_entries=max_entries
    )
    if not decode:
        return {i: view[a:b] for i, (a, b) in entries.items()}
    result: dict[int, bytes | memoryview] = {}
    for chunk_id, (a, b) in entries.items():
        try:
            result[chunk_id] = decode_chunk_data(view[a:b], spec, "", limit)
        except CorruptDataError:
            m = placement_of_id(chunk_id, spec)[1]  # hashed only to name the chunk
            what = f'chunk {chunk_id} in minishard {m} of "{key}"'
            decode_chunk_data(view[a:b], spec, what, limit)  # raises again, naming it
            raise  # pragma: no cover
    return result


# ---------------------------------------------------------------------------------------
# Shard geometry
# ---------------------------------------------------------------------------------------


def is_rectangular(spec: ShardingSpec, bits: Sequence[int]) -> bool:
    """True iff every shard (and minishard) is an axis-aligned box of chunks (§5.9)."""
    total = sum(bits)
    return spec.hash == "identity" and total <= (
        spec.preshift_bits + spec.minishard_bits + spec.shard_bits
    )


def _cell_shape(consumed: Sequence[int], grid_shape: Sequence[int]) -> tuple[int, int, int]:
    return tuple(min(int(g), 1 << c) for g, c in zip(grid_shape, consumed, strict=True))  # type: ignore[return-value]


def _hierarchy(
    spec: ShardingSpec, bits: Sequence[int], grid_shape: Sequence[int]
) -> tuple[tuple[int, int, int], tuple[int, int, int], list[tuple[int, int]], int] | None:
    """(minishard shape, shard shape, Morton schedule, non-shard bits) or ``None``."""
    if not is_rectangular(spec, bits):
        return None
    total = sum(bits)
    schedule = _morton_schedule(bits)
    within_minishard = min(spec.preshift_bits, total)
    non_shard = min(spec.preshift_bits + spec.minishard_bits, total)
    consumed = [0, 0, 0]
    for d, _ in schedule[:within_minishard]:
        consumed[d] += 1
    minishard_shape = _cell_shape(consumed, grid_shape)
    for d, _ in schedule[within_minishard:non_shard]:
        consumed[d] += 1
    shard_shape = _cell_shape(consumed, grid_shape)
    return minishard_shape, shard_shape, schedule, non_shard


def minishard_shape_in_chunks(
    spec: ShardingSpec, bits: Sequence[int], grid_shape: Sequence[int]
) -> tuple[int, int, int] | None:
    """Chunks per minishard along x, y, z, or ``None`` if not rectangular."""
    h = _hierarchy(spec, bits, grid_shape)
    return None if h is None else h[0]


def shard_shape_in_chunks(
    spec: ShardingSpec, bits: Sequence[int], grid_shape: Sequence[int]
) -> tuple[int, int, int] | None:
    """Chunks per shard along x, y, z, or ``None`` if shards are not rectangular."""
    h = _hierarchy(spec, bits, grid_shape)
    return None if h is None else h[1]


def shard_origin_in_chunks(
    spec: ShardingSpec, bits: Sequence[int], grid_shape: Sequence[int], shard: int
) -> tuple[int, int, int] | None:
    """Grid position of a (rectangular) shard's first chunk; ``None`` if not rectangular
    or ``shard`` never occurs for this volume."""
    h = _hierarchy(spec, bits, grid_shape)
    if h is None:
        return None
    _, _, schedule, non_shard = h
    shard_bit_positions = schedule[non_shard:]
    if int(shard) >> len(shard_bit_positions):
        return None
    origin = [0, 0, 0]
    for k, (d, i) in enumerate(shard_bit_positions):
        if (int(shard) >> k) & 1:
            origin[d] |= 1 << i
    if any(o >= g for o, g in zip(origin, grid_shape, strict=True)):
        return None
    return tuple(origin)  # type: ignore[return-value]


def chunks_in_shard(
    spec: ShardingSpec, bits: Sequence[int], grid_shape: Sequence[int], shard: int
) -> int:
    """Number of grid chunks in a rectangular shard, clipped at the volume edge.

    Raises :class:`InvalidArgumentError` if shards are not rectangular.
    """
    h = _hierarchy(spec, bits, grid_shape)
    if h is None:
        raise InvalidArgumentError(f"Shards of {spec.to_json()} are not rectangular")
    origin = shard_origin_in_chunks(spec, bits, grid_shape, shard)
    if origin is None:
        return 0
    shape = h[1]
    return math.prod(
        max(0, min(int(g) - o, s)) for g, o, s in zip(grid_shape, origin, shape, strict=True)
    )


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def write_chunk_shape(
    spec: ShardingSpec, size_xyz: Sequence[int], chunk_xyz: Sequence[int]
) -> tuple[int, int, int]:
    """Write chunk shape in voxels that TensorStore reports for a sharded scale (§5.9)."""
    bits = morton_bits(size_xyz, chunk_xyz)
    grid = [-(-int(s) // int(c)) for s, c in zip(size_xyz, chunk_xyz, strict=True)]
    shape = shard_shape_in_chunks(spec, bits, grid)
    if shape is None:
        return tuple(_round_up(int(s), int(c)) for s, c in zip(size_xyz, chunk_xyz, strict=True))  # type: ignore[return-value]
    return tuple(  # type: ignore[return-value]
        _round_up(min(n * int(c), int(s)), int(c))
        for n, s, c in zip(shape, size_xyz, chunk_xyz, strict=True)
    )


# ---------------------------------------------------------------------------------------
# Automatic sharding parameters
# ---------------------------------------------------------------------------------------


def choose_sharding(
    size_xyz: Sequence[int],
    chunk_xyz: Sequence[int],
    write_chunk_shape: Sequence[int | float | None] | None = None,
    write_chunk_elements: int | None = None,
    hard_constraint: bool | Sequence[bool] = False,
    shard_data_encoding: str | None = None,
    encoding: str = "raw",
) -> ShardingSpec | None:
    """TensorStore's automatic sharding for a new scale (§5.10, §2.7 step 8).

    ``write_chunk_shape`` (xyz, optionally a 4th channel entry that is ignored): ``0`` or
    ``None`` = unconstrained, ``-1`` or infinity = the whole grid; ``hard_constraint`` per
    dimension or for all. Returns ``None`` when the scale should be unsharded.
    """
    bits = morton_bits(size_xyz, chunk_xyz)
    total = sum(bits)
    chunk = [int(c) for c in chunk_xyz]

    target_bits = 0
    if write_chunk_elements is not None and write_chunk_elements > 0:
        chunk_elements = math.prod(chunk)
        target_chunks = (int(write_chunk_elements) + chunk_elements // 2) // chunk_elements
        while target_bits < total and (1 << target_bits) < target_chunks:
            target_bits += 1
        if target_bits > 0 and (1 << target_bits) - target_chunks > target_chunks - (
            1 << (target_bits - 1)
        ):
            target_bits -= 1

    desired: list[int] = [0, 0, 0]
    if write_chunk_shape is not None:
        if len(write_chunk_shape) not in (3, 4):
            raise InvalidArgumentError(
                f"write chunk shape must have 3 (xyz) entries, got {list(write_chunk_shape)}"
            )
        for d in range(3):
            v = write_chunk_shape[d]
            if v is None or v == 0:
                continue
            if v == -1 or v == math.inf:
                desired[d] = chunk[d] << bits[d]
            else:
                desired[d] = int(v)
    hard = (
        [bool(hard_constraint)] * 3 if isinstance(hard_constraint, bool) else list(hard_constraint)
    )

    def cost(w: Sequence[int]) -> float:
        c = 0.0
        for d in range(3):
            if desired[d] == 0:
                continue
            cur = chunk[d] << w[d]
            if hard[d] and cur != desired[d]:
                return math.inf
            c += abs(cur - desired[d]) / desired[d]
        return c

    w = [0, 0, 0]
    best_bits = 0
    best_cost = cost(w)
    i = 0
    n = 0
    while n < total:
        d = i % 3
        i += 1
        if w[d] == bits[d]:
            continue
        n += 1
        w[d] += 1
        c = cost(w)
        if c < best_cost or (c == best_cost and n <= target_bits):
            best_cost, best_bits = c, n
    if best_cost == math.inf:
        raise InvalidArgumentError("Cannot satisfy write chunk shape constraint")

    preshift = min(best_bits, 9)
    minishard = best_bits - preshift
    if preshift == 0 and minishard == 0 and shard_data_encoding is None:
        return None
    if shard_data_encoding is None:
        shard_data_encoding = "raw" if encoding in ("jpeg", "png") else "gzip"
    return ShardingSpec(
        preshift_bits=preshift,
        hash="identity",
        minishard_bits=minishard,
        shard_bits=total - best_bits,
        minishard_index_encoding="gzip",
        data_encoding=shard_data_encoding,
    )

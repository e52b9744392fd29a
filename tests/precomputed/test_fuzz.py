"""Fuzzing every decoder, the ``info`` parser and the spec parser with hypothesis.

Each input either decodes or raises a PrecomputedError subclass (CorruptDataError for
stored data, FailedPreconditionError for a stored ``info``, InvalidArgumentError for
specs): no other exception type, no crash, no hang. Inputs are random bytes and
mutations (byte edits, truncation, extension) of valid encodings, so the decoders get far
past their first header check.

Bounded for CI (a few dozen examples per target: the module takes a few seconds);
``FUZZ_EXAMPLES=N`` runs N examples per target, e.g. ``FUZZ_EXAMPLES=10000 pytest
tests/precomputed/test_fuzz.py`` for a long run.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import brotli
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from precomputed import sharding as sh
from precomputed.codecs import ChunkEncoding, decode_chunk, decode_chunk_into, encode_chunk
from precomputed.codecs.compression import inflate_limited
from precomputed.codecs.cseg.region import decode_cseg_region
from precomputed.codecs.gzip import gzip_compress
from precomputed.errors import (
    CorruptDataError,
    FailedPreconditionError,
    InvalidArgumentError,
    PrecomputedError,
)
from precomputed.metadata import MultiscaleMetadata
from precomputed.spec import parse_spec

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None if EXAMPLES > 100 else 2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=EXAMPLES <= 100,  # CI: the same examples every run
    database=None,
)

# -- valid inputs to mutate --------------------------------------------------------------

SHAPE = (2, 3, 5, 7)  # c, z, y, x
RNG = np.random.default_rng(7)
SEG = RNG.integers(0, 5, SHAPE).astype(np.uint64) * np.uint64(1 << 40)
IMG = RNG.integers(0, 255, (3, 3, 5, 7)).astype(np.uint8)
CSEG = ChunkEncoding("compressed_segmentation", block_size=(4, 2, 2))
VALID = {
    "raw": (encode_chunk(SEG, ChunkEncoding("raw")), SHAPE, np.uint64, ChunkEncoding("raw")),
    "cseg": (encode_chunk(SEG, CSEG), SHAPE, np.uint64, CSEG),
    "cseg32": (
        encode_chunk(SEG.astype(np.uint32), CSEG),
        SHAPE,
        np.uint32,
        CSEG,
    ),
    "jpeg": (encode_chunk(IMG, ChunkEncoding("jpeg")), IMG.shape, np.uint8, ChunkEncoding("jpeg")),
    "png": (encode_chunk(IMG, ChunkEncoding("png")), IMG.shape, np.uint8, ChunkEncoding("png")),
    "png16": (
        encode_chunk(IMG.astype(np.uint16) * 257, ChunkEncoding("png")),
        IMG.shape,
        np.uint16,
        ChunkEncoding("png"),
    ),
}


@st.composite
def mutated(draw: Any, valid: bytes) -> bytes:
    """``valid`` with a few bytes changed, then maybe cut or extended; or random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=256))
    data = bytearray(valid)
    for _ in range(draw(st.integers(0, 6))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        kind = draw(st.integers(0, 2))
        if kind == 0:
            data[i] = draw(st.integers(0, 255))
        elif kind == 1:
            data[i] ^= 1 << draw(st.integers(0, 7))
        else:  # a 32-bit word: offsets, counts, bit widths
            word = draw(st.sampled_from([0, 1, 2, 31, 32, 33, 1 << 24, 0xFFFFFFFF]))
            data[i : i + 4] = word.to_bytes(4, "little")
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    if cut is not None:
        del data[cut:]
    data += draw(st.binary(max_size=8))
    return bytes(data)


def decodes_or_corrupt(fn: Any, *args: Any, **kw: Any) -> Any:
    try:
        return fn(*args, **kw)
    except CorruptDataError:
        return None


# -- chunk codecs --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VALID))
@FUZZ
@given(data=st.data())
def test_decode_chunk(name: str, data: Any) -> None:
    valid, shape, dtype, enc = VALID[name]
    blob = data.draw(mutated(valid))
    out = decodes_or_corrupt(decode_chunk, blob, shape, dtype, enc, key="k")
    if out is not None:
        assert out.shape == shape and out.dtype == np.dtype(dtype)


@pytest.mark.parametrize("name", ["cseg", "cseg32"])
@FUZZ
@given(data=st.data())
def test_cseg_native_and_region_paths(name: str, data: Any) -> None:
    valid, shape, dtype, enc = VALID[name]
    blob = data.draw(mutated(valid))
    into = np.zeros(shape, dtype)
    whole = decodes_or_corrupt(decode_chunk, blob, shape, dtype, enc)
    try:
        decode_chunk_into(blob, into, enc)
        placed = True
    except CorruptDataError:
        placed = False
    z0 = data.draw(st.integers(0, shape[1] - 1))
    z1 = data.draw(st.integers(z0 + 1, shape[1]))
    y0 = data.draw(st.integers(0, shape[2] - 1))
    c0 = data.draw(st.integers(0, shape[0] - 1))
    region = decodes_or_corrupt(
        decode_cseg_region, blob, shape, np.dtype(dtype), (4, 2, 2), (z0, z1), (y0, y0 + 1),
        (c0, c0 + 1),
    )  # fmt: skip
    # Every path agrees on what is corrupt, and on the voxels otherwise.
    assert (whole is None) == (region is None) == (not placed)
    if whole is not None:
        np.testing.assert_array_equal(into, whole)
        np.testing.assert_array_equal(region, whole[c0 : c0 + 1, z0:z1, y0 : y0 + 1])


# -- compression wrappers ------------------------------------------------------------------

PAYLOAD = bytes(range(256)) * 8 + bytes(3000)
PACKED = {
    "gzip": gzip_compress(PAYLOAD),
    "br": brotli.compress(PAYLOAD),
    "zstd": zstandard.ZstdCompressor().compress(PAYLOAD),
}


@pytest.mark.parametrize("method", list(PACKED))
@FUZZ
@given(data=st.data())
def test_inflate_limited(method: str, data: Any) -> None:
    blob = data.draw(mutated(PACKED[method]))
    limit = data.draw(st.sampled_from([0, 100, len(PAYLOAD), 1 << 20]))
    out, why = inflate_limited(blob, method, limit)
    assert (out is None) != (why is None)
    if out is not None:
        assert len(out) <= limit


# -- the sharded format -----------------------------------------------------------------

SPEC_RAW = sh.ShardingSpec(preshift_bits=1, hash="identity", minishard_bits=2, shard_bits=0)
SPEC_GZ = sh.ShardingSpec(
    preshift_bits=0,
    hash="murmurhash3_x86_128",
    minishard_bits=1,
    shard_bits=0,
    minishard_index_encoding="gzip",
    data_encoding="gzip",
)
CHUNKS = {i: bytes([i]) * (i + 1) for i in (0, 1, 2, 3, 5, 8, 13)}
SHARDS = {
    "raw": (SPEC_RAW, sh.encode_shard(CHUNKS, SPEC_RAW)),
    "gzip": (SPEC_GZ, sh.encode_shard(CHUNKS, SPEC_GZ)),
}


@pytest.mark.parametrize("name", list(SHARDS))
@FUZZ
@given(data=st.data())
def test_split_shard_and_its_indices(name: str, data: Any) -> None:
    spec, valid = SHARDS[name]
    assert valid is not None
    blob = data.draw(mutated(valid))
    decodes_or_corrupt(sh.split_shard, blob, spec, "s", allow_duplicates=True, max_entries=64)
    decodes_or_corrupt(sh.split_shard, blob, spec, "s", decode=False, limit=100)
    m = data.draw(st.integers(0, spec.num_minishards - 1))
    entry = decodes_or_corrupt(sh.decode_shard_index_entry, blob[16 * m : 16 * m + 16], m, spec, "s")
    if entry:
        a, b = entry
        got = decodes_or_corrupt(sh.decode_minishard_index, blob[a:b], spec, "s", m, 64)
        if got is not None:
            ids, starts, ends = got
            assert len(ids) <= 64 and (starts <= ends).all()
    decodes_or_corrupt(sh.decode_minishard_index, blob, spec, "s", 0, 64)
    decodes_or_corrupt(sh.decode_chunk_data, blob, spec, "c", 1000)


# -- info and spec parsing ----------------------------------------------------------------

INFO = {
    "@type": "neuroglancer_multiscale_volume",
    "type": "segmentation",
    "data_type": "uint64",
    "num_channels": 1,
    "mesh": "mesh",
    "scales": [
        {
            "key": "8_8_8",
            "size": [100, 90, 80],
            "voxel_offset": [-3, 0, 5],
            "resolution": [8, 8, 8],
            "chunk_sizes": [[64, 64, 64]],
            "encoding": "compressed_segmentation",
            "compressed_segmentation_block_size": [8, 8, 8],
            "sharding": {
                "@type": "neuroglancer_uint64_sharded_v1",
                "preshift_bits": 3,
                "hash": "identity",
                "minishard_bits": 2,
                "shard_bits": 1,
            },
        }
    ],
}

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(1 << 70), 1 << 70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=12),
    ),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def edited(draw: Any, doc: Any) -> Any:
    """``doc`` with a few members replaced by arbitrary JSON-like values, removed or added."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 4))):
        path: list[Any] = []
        node = doc
        while isinstance(node, (dict, list)) and node and draw(st.booleans()):
            k = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
            path.append(k)
            parent, node = node, node[k]
        if not path:
            continue
        action = draw(st.integers(0, 2))
        if action == 0:
            parent[path[-1]] = draw(json_values)
        elif action == 1 and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(json_values)
    return doc


@FUZZ
@given(doc=edited(INFO))
def test_info_parsing(doc: Any) -> None:
    text = json.dumps(doc, allow_nan=True)
    try:
        meta = MultiscaleMetadata.loads(text.encode())
    except FailedPreconditionError:
        return
    MultiscaleMetadata.loads(meta.dumps())  # what parses is written back readable


@FUZZ
@given(data=st.data())
def test_info_bytes(data: Any) -> None:
    text = json.dumps(INFO).encode()
    blob = data.draw(mutated(text))
    try:
        MultiscaleMetadata.loads(blob)
    except FailedPreconditionError:
        pass


SPEC = {
    "driver": "neuroglancer_precomputed",
    "kvstore": {"driver": "memory", "path": "fuzz/"},
    "path": "vol",
    "scale_index": 0,
    "multiscale_metadata": {"type": "image", "data_type": "uint16", "num_channels": 2},
    "scale_metadata": {
        "size": [64, 64, 32],
        "voxel_offset": [0, 0, 0],
        "resolution": [4, 4, 40],
        "chunk_size": [32, 32, 16],
        "encoding": "raw",
        "key": "s0",
    },
    "schema": {"dimension_units": ["4nm", "4nm", "40nm", None], "dtype": "uint16"},
    "fill_missing_data_reads": True,
}


@FUZZ
@given(doc=edited(SPEC))
def test_spec_parsing(doc: Any) -> None:
    try:
        parse_spec(doc)
    except InvalidArgumentError:
        pass


@FUZZ
@given(url=st.text(max_size=40) | st.sampled_from(["gs://b/v", "s3://", "memory://x|zarr:"]))
def test_url_parsing(url: str) -> None:
    try:
        parse_spec(url)
    except PrecomputedError:
        pass

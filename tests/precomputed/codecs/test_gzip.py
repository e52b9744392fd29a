"""gzip as TensorStore writes it (``codecs.gzip``), on zlib-ng: TensorStore's stream format,
readable by every zlib."""

from __future__ import annotations

import gzip
import zlib

import numpy as np
import pytest

from codec_cases import (
    deflate,
)
from precomputed.codecs import gzip as _deflate
from precomputed.codecs import (
    gzip_compress,
    gzip_decompress,
)
from precomputed.errors import CorruptDataError

# ---------------------------------------------------------------------------------------------
# gzip (reference §5.6)


def test_gzip_compress_writes_tensorstore_header_and_round_trips():
    data = b"neuroglancer" * 100
    out = gzip_compress(data)
    assert out[:10] == bytes.fromhex("1f8b0800000000000203")
    assert gzip.decompress(out) == data
    assert gzip_decompress(out) == data
    reference = deflate(data, 9, 31)
    assert out == reference[:9] + b"\x03" + reference[10:]
    assert gzip_decompress(gzip_compress(b"")) == b""


def test_gzip_decompress_accepts_memoryview():
    assert gzip_decompress(memoryview(gzip_compress(b"abc"))) == b"abc"


@pytest.mark.parametrize(
    "data",
    [
        zlib.compress(b"abc"),  # zlib wrapper, not gzip
        deflate(b"abc", 6, -15),  # raw deflate
        gzip_compress(b"abc") + b"\x00",  # trailing bytes
        gzip_compress(b"abc") + gzip_compress(b"def"),  # a second member
        gzip_compress(b"abc" * 100)[:-5],  # truncated
        b"",
        b"not gzip at all",
    ],
    ids=["zlib", "raw-deflate", "trailing", "two-members", "truncated", "empty", "garbage"],
)
def test_gzip_decompress_rejects_non_gzip_and_trailing_data(data):
    with pytest.raises(CorruptDataError, match="Error decoding zlib-compressed data in shard 0"):
        gzip_decompress(data, "shard 0")


def test_zlib_ng_is_the_implementation_in_use() -> None:
    # A dependency: without it shard writes are about twice as slow (docs/performance.md).
    assert _deflate.zlib.__name__ == "zlib_ng.zlib_ng"


@pytest.mark.parametrize("n", [0, 1, 100, 70_000, 2_000_000])
def test_gzip_compress_is_a_tensorstore_style_member_any_zlib_reads(n: int) -> None:
    rng = np.random.default_rng(n)
    data = (rng.integers(0, 6, n, dtype=np.uint8) * 37).tobytes()
    out = _deflate.gzip_compress(data)
    assert out[:10] == bytes.fromhex("1f8b0800000000000203")  # level 9 (XFL 2), OS 3
    assert zlib.decompress(out, wbits=31) == data  # the standard library's zlib
    assert gzip.decompress(out) == data
    assert _deflate.gzip_inflate(out) == (data, None)


def test_small_inputs_compress_to_the_same_bytes_as_zlib() -> None:
    # Minishard indices are small: their bytes match TensorStore's and stock zlib's.
    for data in (b"", b"\x00" * 100, bytes(range(256)) * 3, np.arange(48, dtype="<u8").tobytes()):
        assert _deflate.gzip_compress(data)[10:] == zlib.compress(data, 9, wbits=31)[10:]


@pytest.mark.parametrize(
    "bad, why",
    [
        (zlib.compress(b"abc"), "incorrect header check"),
        (gzip.compress(b"abc") + b"\x00", "1 trailing bytes after the gzip stream"),
        (gzip.compress(b"abc" * 100)[:-5], "truncated gzip stream"),
    ],
)
def test_gzip_inflate_reports_why_a_member_is_bad(bad: bytes, why: str) -> None:
    out, reason = _deflate.gzip_inflate(bad)
    assert out == b"" and why in reason

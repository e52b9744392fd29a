"""Bounded decompression: gzip, brotli and zstd, inflated incrementally up to a limit.

Stored bytes come from other tools and from strangers, so no decompression here ever
expands its input fully and checks the size afterwards: each codec is driven with a
maximum output (zlib's ``max_length``, brotli's ``output_buffer_limit``, a zstd stream
reader read to ``limit + 1`` bytes), so a bomb costs at most ``limit`` bytes of memory and
the time to produce them, and ends in :class:`~precomputed.errors.CorruptDataError`.
The limit is what the format implies for the object (a raw chunk's exact size, the most
a compressed_segmentation chunk or a minishard index can hold, ...); callers compute it.

CloudVolume stores chunks gzip-, brotli- or zstd-compressed (its ``compress`` option),
locally as ``<key>.gz`` / ``<key>.br`` / ``<key>.zstd`` files and on buckets under the
plain key with a ``Content-Encoding``. gzip and zstd announce themselves with magic bytes
(:func:`sniff`); brotli has none.
"""

from __future__ import annotations

import brotli
import zstandard

from ..errors import CorruptDataError
from .gzip import GZIP_ERROR, gzip_inflate, too_large

__all__ = [
    "GZIP_MAGIC",
    "ZSTD_MAGIC",
    "SUFFIXES",
    "sniff",
    "inflate",
    "inflate_limited",
]

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: CloudVolume's file suffixes for compressed chunks, in the order CloudFiles tries them.
SUFFIXES: dict[str, str] = {".gz": "gzip", ".br": "br", ".zstd": "zstd"}
#: The largest zstd window accepted (zstd's own default limit, 128 MiB): a frame asking
#: for more is refused before the decoder allocates it.
_ZSTD_MAX_WINDOW = 1 << 27
_ZSTD_MIN_WINDOW = 1 << 10

_Bytes = bytes | bytearray | memoryview


def sniff(data: _Bytes) -> str | None:
    """``"gzip"`` or ``"zstd"`` when ``data`` starts with that format's magic bytes."""
    head = bytes(data[:4])
    if head[:2] == GZIP_MAGIC:
        return "gzip"
    if head == ZSTD_MAGIC:
        return "zstd"
    return None


class _Failed(Exception):
    """Why a stream did not decode (internal: turned into CorruptDataError)."""


def inflate_limited(data: _Bytes, method: str, limit: int) -> tuple[bytes | None, str | None]:
    """Decompress ``data`` to at most ``limit`` bytes: ``(bytes, None)``, or ``(None, why)``
    when it is not one complete, valid stream or would inflate past ``limit``."""
    try:
        if method == "gzip":
            return _gunzip(data, limit), None
        if method == "br":
            return _unbrotli(data, limit), None
        if method == "zstd":
            return _unzstd(data, limit), None
    except _Failed as e:
        return None, str(e)
    raise ValueError(f"unknown compression {method!r}")


def inflate(data: _Bytes, method: str, limit: int, what: str = "") -> bytes:
    """:func:`inflate_limited`, raising :class:`CorruptDataError` (naming ``what``, e.g. a
    key) instead of answering ``None``."""
    out, why = inflate_limited(data, method, limit)
    if out is None:
        where = f" in {what}" if what else ""
        head = GZIP_ERROR if method == "gzip" else f"Error decoding {_NAMES[method]} data"
        raise CorruptDataError(f"{head}{where}: {why}")
    return out


_NAMES = {"gzip": "gzip", "br": "brotli-compressed", "zstd": "zstd-compressed"}


def _too_large(limit: int) -> _Failed:
    return _Failed(too_large(limit))


def _gunzip(data: _Bytes, limit: int) -> bytes:
    out, why = gzip_inflate(data, limit)
    if why is not None:
        raise _Failed(why)
    return out


def _unbrotli(data: _Bytes, limit: int) -> bytes:
    d = brotli.Decompressor()
    try:
        # The buffer stops growing at the limit (it may overshoot by one growth step).
        out = d.process(bytes(data) if not isinstance(data, bytes) else data,
                        output_buffer_limit=limit + 1)
    except brotli.error as e:
        raise _Failed(str(e) or "invalid brotli stream") from None
    if len(out) > limit or not (d.is_finished() or d.can_accept_more_data()):
        raise _too_large(limit)
    if not d.is_finished():
        raise _Failed("truncated brotli stream")
    return out


def _unzstd(data: _Bytes, limit: int) -> bytes:
    window = min(_ZSTD_MAX_WINDOW, max(_ZSTD_MIN_WINDOW, 1 << max(0, limit - 1).bit_length()))
    try:
        params = zstandard.get_frame_parameters(data)
        d = zstandard.ZstdDecompressor(max_window_size=window)
        size = params.content_size
        if size == zstandard.CONTENTSIZE_UNKNOWN:
            # No size in the header: inflate into buffers of the size asked for first
            # (bounded), so the unbounded pass below is known to stay within the limit.
            with d.stream_reader(data, read_across_frames=False, closefd=False) as reader:
                if len(reader.read(limit + 1)) > limit:
                    raise _too_large(limit)
        elif size > limit:
            raise _too_large(limit)
        # Bounded now: by the header's size (libzstd refuses a frame that outgrows it,
        # one block at most past it) or by the bounded pass above.
        obj = d.decompressobj()
        out = obj.decompress(data)
    except zstandard.ZstdError as e:
        raise _Failed(str(e)) from None
    if not obj.eof:
        raise _Failed("truncated zstd frame")
    if obj.unused_data:
        raise _Failed(f"{len(obj.unused_data)} trailing bytes after the zstd frame")
    if len(out) > limit:
        raise _too_large(limit)
    return out

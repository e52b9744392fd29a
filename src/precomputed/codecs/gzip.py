"""The one gzip of the driver: as TensorStore writes it, on the fastest zlib available.

Sharded volumes gzip minishard indices and chunk data, CloudVolume gzips whole chunk
files; all of them go through this module.

zlib-ng (a dependency) compresses at level 9 about twice as fast as the standard library's
zlib and releases the GIL, so shard writes use both cores; its streams are valid deflate
that every reader decodes, and for small inputs (minishard indices) they are identical to
zlib's. The standard library's zlib is the fallback where zlib-ng is not installed.
"""

from __future__ import annotations

from ..errors import CorruptDataError

try:
    from zlib_ng import zlib_ng as zlib
except ImportError:  # pragma: no cover - zlib-ng ships wheels for every common platform
    import zlib  # type: ignore[no-redef]

__all__ = [
    "DEFAULT_LIMIT",
    "GZIP_ERROR",
    "gzip_compress",
    "gzip_inflate",
    "gzip_decompress",
    "too_large",
    "zlib",
]

#: TensorStore's words for undecodable gzip data (the sharded format's messages use them bare).
GZIP_ERROR = "Error decoding zlib-compressed data"


def gzip_compress(data: bytes | bytearray | memoryview) -> bytes:
    """One gzip member with TensorStore's parameters: level 9, default window and memory,
    header ``1f8b0800 00000000 02 03`` (the OS byte pinned: zlib writes the host's)."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31, 8, zlib.Z_DEFAULT_STRATEGY)
    out = bytearray(c.compress(data))
    out += c.flush()
    out[9] = 3
    return bytes(out)


#: The most any decompression inflates to when the caller knows no tighter bound (2 GiB).
DEFAULT_LIMIT = 1 << 31


def gzip_inflate(
    data: bytes | bytearray | memoryview, limit: int = DEFAULT_LIMIT
) -> tuple[bytes, str | None]:
    """Inflate exactly one gzip member to at most ``limit`` bytes: ``(bytes, None)``, or
    ``(b"", why)`` when ``data`` is not one complete member (zlib/raw streams, truncation,
    trailing bytes) or inflates past ``limit``. Memory stays within ``limit``: the stream
    is inflated with zlib's ``max_length``, never expanded fully first."""
    d = zlib.decompressobj(31)
    try:
        out = d.decompress(data, limit + 1)
        if len(out) <= limit and not d.eof and not d.unconsumed_tail:
            out += d.flush(limit + 1 - len(out))
    except zlib.error as e:  # type: ignore[misc]  # zlib-ng's stub: `error: Exception`
        return b"", str(e)
    if len(out) > limit or (not d.eof and d.unconsumed_tail):
        return b"", too_large(limit)
    if not d.eof:
        return b"", "truncated gzip stream"
    if d.unused_data:
        return b"", f"{len(d.unused_data)} trailing bytes after the gzip stream"
    return out, None


def too_large(limit: int) -> str:
    """Why a bounded decompression stopped (the words every codec uses)."""
    return f"inflates to more than {limit} bytes, the most this object can hold"


def gzip_decompress(
    data: bytes | bytearray | memoryview, what: str = "", limit: int = DEFAULT_LIMIT
) -> bytes:
    """Inflate one gzip member (to at most ``limit`` bytes); like TensorStore, reject
    zlib/raw streams and trailing bytes (:class:`CorruptDataError`). ``what`` names the
    thing being decoded (a key) in the message: ``Error decoding zlib-compressed data in
    <what>: <why>``."""
    out, why = gzip_inflate(data, limit)
    if why is not None:
        where = f" in {what}" if what else ""
        raise CorruptDataError(f"{GZIP_ERROR}{where}: {why}")
    return out

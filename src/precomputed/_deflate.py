"""gzip as TensorStore writes it, on the fastest zlib available.

zlib-ng (a dependency) compresses at level 9 about twice as fast as the standard library's
zlib and releases the GIL, so shard writes use both cores; its streams are valid deflate
that every reader decodes, and for small inputs (minishard indices) they are identical to
zlib's. The standard library's zlib is the fallback where zlib-ng is not installed.
"""

from __future__ import annotations

try:
    from zlib_ng import zlib_ng as zlib
except ImportError:  # pragma: no cover - zlib-ng ships wheels for every common platform
    import zlib  # type: ignore[no-redef]

__all__ = ["gzip_compress", "gzip_inflate", "zlib"]


def gzip_compress(data: bytes | bytearray | memoryview) -> bytes:
    """One gzip member with TensorStore's parameters: level 9, default window and memory,
    header ``1f8b0800 00000000 02 03`` (the OS byte pinned: zlib writes the host's)."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31, 8, zlib.Z_DEFAULT_STRATEGY)
    out = bytearray(c.compress(data))
    out += c.flush()
    out[9] = 3
    return bytes(out)


def gzip_inflate(data: bytes | bytearray | memoryview) -> tuple[bytes, str | None]:
    """Inflate exactly one gzip member: ``(bytes, None)``, or ``(b"", why)`` when ``data``
    is not one complete member (zlib/raw streams, truncation, trailing bytes)."""
    d = zlib.decompressobj(31)
    try:
        out = d.decompress(data)
        out += d.flush()
    except zlib.error as e:  # type: ignore[misc]  # zlib-ng's stub: `error: Exception`
        return b"", str(e)
    if not d.eof:
        return b"", "truncated gzip stream"
    if d.unused_data:
        return b"", f"{len(d.unused_data)} trailing bytes after the gzip stream"
    return out, None

"""Decode only some z-planes of a compressed_segmentation chunk.

A z-plane crosses one layer of blocks, and in each block only the voxels of that plane:
for a 64^3 chunk with 8^3 blocks, 64 of 512 blocks and 1/64 of the voxels. Gathering just
those indices and labels with numpy takes a fraction of a millisecond, where decoding the
whole chunk takes a few (and holds the GIL in the C++ library). Viewers showing one plane
of a segmentation therefore decode planes, not chunks.
"""

from __future__ import annotations

import numpy as np

from .codecs import _Corrupt, _cseg_corrupt, _CsegChannel
from .errors import CorruptDataError

__all__ = ["decode_cseg_z_range"]


def decode_cseg_z_range(
    data: bytes,
    shape: tuple[int, int, int, int],
    dtype: np.dtype,
    block_xyz: tuple[int, int, int],
    z0: int,
    z1: int,
    channels: tuple[int, int] | None = None,
    key: str = "",
) -> np.ndarray:
    """Planes ``z0:z1`` (chunk-relative) of channels ``c0:c1`` of a chunk of czyx ``shape``,
    as a C-order (c, z1 - z0, y, x) array; validated exactly as a whole-chunk decode."""
    try:
        return _decode(data, shape, np.dtype(dtype), block_xyz, z0, z1, channels)
    except _Corrupt as e:
        raise CorruptDataError(f'Error reading "{key}": {e}' if key else str(e)) from None


def _decode(data, shape, dtype, block_xyz, z0, z1, channels) -> np.ndarray:
    c, z, y, x = shape
    c0, c1 = channels if channels is not None else (0, c)
    if not 0 <= z0 <= z1 <= z or not 0 <= c0 <= c1 <= c:
        raise ValueError(f"planes {z0}:{z1} / channels {c0}:{c1} outside chunk {shape}")
    if memoryview(data).nbytes % 4:
        raise _cseg_corrupt()
    words = np.frombuffer(data, "<u4").astype(np.uint32, copy=False)
    if len(words) < c:
        raise _cseg_corrupt()
    offsets = words[:c].astype(np.int64)
    if (offsets > len(words)).any():
        raise _cseg_corrupt()
    out = np.empty((c1 - c0, z1 - z0, y, x), dtype)
    if out.size == 0:
        return out
    for ci in range(c0, c1):
        channel = _CsegChannel(words[offsets[ci] :], (z, y, x), block_xyz, dtype)
        _planes_into(channel, z0, z1, out[ci - c0])
    return out


def _planes_into(ch: _CsegChannel, z0: int, z1: int, out: np.ndarray) -> None:
    bz, by, bx = ch.block
    gz, gy, gx = ch.grid
    _, ey, ex = ch.extent
    w, n = ch.w, len(ch.w)
    if ch.wpv == 1:
        table, base = w.astype(np.uint64), ch.table_offset
    else:
        # 64-bit labels may start at odd word offsets: an even- and an odd-aligned view.
        even = w[: n - n % 2].view("<u8")
        odd = w[1 : n - (n - 1) % 2].view("<u8") if n > 1 else np.zeros(0, "<u8")
        table = np.concatenate([even, odd])
        base = np.where(
            ch.table_offset % 2 == 0, ch.table_offset // 2, len(even) + ch.table_offset // 2
        )
    ly, lx = np.meshgrid(np.arange(ey), np.arange(ex), indexing="ij")
    for layer in range(z0 // bz, (z1 - 1) // bz + 1):
        a, b = max(z0, layer * bz) - layer * bz, min(z1, (layer + 1) * bz) - layer * bz
        rows = layer * gy * gx + np.arange(gy * gx)
        loc = ((np.arange(a, b)[:, None, None] * by + ly) * bx + lx).ravel()  # in-block index
        bits = ch.bits[rows][:, None]
        p = loc[None, :] * bits
        word = np.where(bits > 0, ch.value_offset[rows][:, None], 0) + (p >> 5)
        mask = ((np.int64(1) << bits) - 1).astype(np.uint32)
        idx = ((w[word] >> (p & 31).astype(np.uint32)) & mask).astype(np.int64)
        # Padding voxels of edge blocks may hold any index: keep lookups inside the table
        # (inside voxels were checked against the table size by _CsegChannel).
        np.minimum(idx, (ch.table_size[rows] - 1)[:, None], out=idx)
        vals = table[base[rows][:, None] + idx]  # (blocks, nz * ey * ex)
        vals = vals.reshape(gy, gx, b - a, ey, ex).transpose(2, 0, 3, 1, 4)
        vals = vals.reshape(b - a, gy * ey, gx * ex)[:, : out.shape[1], : out.shape[2]]
        zs = layer * bz + a - z0
        out[zs : zs + (b - a)] = vals

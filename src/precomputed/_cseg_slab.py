"""Decode only some z-planes of a compressed_segmentation chunk.

A z-plane crosses one layer of blocks, and in each block only the voxels of that plane:
for a 64^3 chunk with 8^3 blocks, 64 of 512 blocks and 1/64 of the voxels. Gathering just
those indices and labels with numpy takes a fraction of a millisecond, where decoding the
whole chunk takes a few (and holds the GIL in the C++ library). Viewers showing one plane
of a segmentation therefore decode planes, not chunks.
"""

from __future__ import annotations

from functools import lru_cache

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


@lru_cache(maxsize=64)
def _plane_positions(block: tuple[int, int, int], ey: int, ex: int, a: int, b: int) -> np.ndarray:
    """In-block voxel indices of local planes ``a:b`` (x fastest), for blocks cut to ey, ex."""
    _, by, bx = block
    ly, lx = np.meshgrid(np.arange(ey), np.arange(ex), indexing="ij")
    loc = ((np.arange(a, b)[:, None, None] * by + ly) * bx + lx).ravel()
    loc.flags.writeable = False
    return loc


def _planes_into(ch: _CsegChannel, z0: int, z1: int, out: np.ndarray) -> None:
    bz = ch.block[0]
    gz, gy, gx = ch.grid
    _, ey, ex = ch.extent
    w = ch.w
    for layer in range(z0 // bz, (z1 - 1) // bz + 1):
        a, b = max(z0, layer * bz) - layer * bz, min(z1, (layer + 1) * bz) - layer * bz
        rows = layer * gy * gx + np.arange(gy * gx)
        loc = _plane_positions(ch.block, ey, ex, a, b)
        bits = ch.bits[rows][:, None]
        p = loc[None, :] * bits
        word = np.where(bits > 0, ch.value_offset[rows][:, None], 0) + (p >> 5)
        mask = ((np.int64(1) << bits) - 1).astype(np.uint32)
        idx = ((w[word] >> (p & 31).astype(np.uint32)) & mask).astype(np.int64)
        # Padding voxels of edge blocks may hold any index: keep lookups inside the table
        # (inside voxels were checked against the table size by _CsegChannel).
        np.minimum(idx, (ch.table_size[rows] - 1)[:, None], out=idx)
        # Labels are 1 or 2 little-endian words at table_offset + index * words per label.
        at = ch.table_offset[rows][:, None] + idx * ch.wpv
        vals = w[at].astype(ch.dtype)
        if ch.wpv == 2:
            vals |= w[at + 1].astype(ch.dtype) << np.uint64(32)
        vals = vals.reshape(gy, gx, b - a, ey, ex).transpose(2, 0, 3, 1, 4)
        vals = vals.reshape(b - a, gy * ey, gx * ex)[:, : out.shape[1], : out.shape[2]]
        zs = layer * bz + a - z0
        out[zs : zs + (b - a)] = vals

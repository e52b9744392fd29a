"""Decode only part of a compressed_segmentation chunk: a range of z-planes and y-rows.

A z-plane crosses one layer of blocks, and in each block only the voxels of that plane:
for a 64^3 chunk with 8^3 blocks, 64 of 512 blocks and 1/64 of the voxels (an xz-plane,
likewise, one row of blocks in y). Gathering just those indices and labels with numpy
takes a fraction of a millisecond, where decoding the whole chunk takes a few (and holds
the GIL in the C++ library). Viewers showing one plane of a segmentation therefore
decode planes, not chunks.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ...errors import CorruptDataError
from .decode import CsegChannel, corrupt

__all__ = ["decode_cseg_region", "decode_cseg_z_range"]


def decode_cseg_region(
    data: bytes,
    shape: tuple[int, int, int, int],
    dtype: np.dtype,
    block_xyz: tuple[int, int, int],
    zs: tuple[int, int],
    ys: tuple[int, int] | None = None,
    channels: tuple[int, int] | None = None,
    key: str = "",
) -> np.ndarray:
    """Planes ``zs`` and rows ``ys`` (chunk-relative, default all) of channels ``c0:c1`` of
    a chunk of czyx ``shape``, as a C-order (c, z, y, x) array (all of x); validated
    exactly as a whole-chunk decode, errors naming ``key``."""
    c, _, y, _ = shape
    try:
        return _decode(
            data, shape, np.dtype(dtype), block_xyz, zs, ys or (0, y), channels or (0, c)
        )
    except CorruptDataError as e:
        raise CorruptDataError(f'Error reading "{key}": {e}' if key else str(e)) from None


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
    """Planes ``z0:z1`` of channels ``c0:c1``: :func:`decode_cseg_region` over all rows."""
    return decode_cseg_region(data, shape, dtype, block_xyz, (z0, z1), None, channels, key)


def _decode(
    data: bytes,
    shape: tuple[int, int, int, int],
    dtype: np.dtype,
    block_xyz: tuple[int, int, int],
    zs: tuple[int, int],
    ys: tuple[int, int],
    channels: tuple[int, int],
) -> np.ndarray:
    c, z, y, x = shape
    (z0, z1), (y0, y1), (c0, c1) = zs, ys, channels
    if not (0 <= z0 <= z1 <= z and 0 <= y0 <= y1 <= y and 0 <= c0 <= c1 <= c):
        raise ValueError(f"region z {zs}, y {ys}, channels {channels} outside chunk {shape}")
    if memoryview(data).nbytes % 4:
        raise corrupt()
    words = np.frombuffer(data, "<u4").astype(np.uint32, copy=False)
    if len(words) < c:
        raise corrupt()
    offsets = words[:c].astype(np.int64)
    if (offsets > len(words)).any():
        raise corrupt()
    # Every channel is validated (a whole-chunk decode would refuse the chunk for any of
    # them: a thin read must not accept what a whole read refuses); only the ones asked
    # for are decoded. One channel, the usual case, costs nothing extra.
    validated = [CsegChannel(words[offsets[ci] :], (z, y, x), block_xyz, dtype) for ci in range(c)]
    out = np.empty((c1 - c0, z1 - z0, y1 - y0, x), dtype)
    if out.size == 0:
        return out
    for ci in range(c0, c1):
        _region_into(validated[ci], zs, ys, out[ci - c0])
    return out


@lru_cache(maxsize=256)
def _positions(
    block: tuple[int, int, int], za: int, zb: int, ya: int, yb: int, ex: int
) -> np.ndarray:
    """In-block voxel indices (x fastest) of local planes ``za:zb``, rows ``ya:yb``, x < ex."""
    _, by, bx = block
    loc = (np.arange(za, zb)[:, None, None] * by + np.arange(ya, yb)[:, None]) * bx
    loc = (loc + np.arange(ex)).ravel()
    loc.flags.writeable = False
    return loc


def _cuts(lo: int, hi: int, b: int) -> list[tuple[int, int, int, int]]:
    """Runs of blocks covering ``lo:hi`` that need the same local range:
    ``(first block, block count, local start, local stop)``. Usually one run (plus the
    partial blocks at the ends)."""
    runs: list[tuple[int, int, int, int]] = []
    for k in range(lo // b, (hi - 1) // b + 1):
        a, e = max(lo, k * b) - k * b, min(hi, (k + 1) * b) - k * b
        if runs and runs[-1][2:] == (a, e):
            k0, n, _, _ = runs[-1]
            runs[-1] = (k0, n + 1, a, e)
        else:
            runs.append((k, 1, a, e))
    return runs


def _region_into(
    ch: CsegChannel, zs: tuple[int, int], ys: tuple[int, int], out: np.ndarray
) -> None:
    bz, by, _ = ch.block
    _, gy, gx = ch.grid
    ex = ch.extent[2]
    w = ch.w
    for kz0, nkz, za, zb in _cuts(*zs, bz):
        for ky0, nky, ya, yb in _cuts(*ys, by):
            # All blocks of these z and y runs, in (z, y, x) block order.
            kz = np.arange(kz0, kz0 + nkz)[:, None, None]
            ky = np.arange(ky0, ky0 + nky)[:, None]
            rows = ((kz * gy + ky) * gx + np.arange(gx)).ravel()
            loc = _positions(ch.block, za, zb, ya, yb, ex)
            bits = ch.bits[rows][:, None]
            p = loc[None, :] * bits
            word = np.where(bits > 0, ch.value_offset[rows][:, None], 0) + (p >> 5)
            mask = ((np.int64(1) << bits) - 1).astype(np.uint32)
            idx = ((w[word] >> (p & 31).astype(np.uint32)) & mask).astype(np.int64)
            # Padding voxels of edge blocks may hold any index: keep lookups inside the
            # table (inside voxels were checked against the table size by CsegChannel).
            np.minimum(idx, (ch.table_size[rows] - 1)[:, None], out=idx)
            # Labels are 1 or 2 little-endian words at table_offset + index * words each.
            at = ch.table_offset[rows][:, None] + idx * ch.wpv
            vals = w[at].astype(ch.dtype)
            if ch.wpv == 2:
                vals |= w[at + 1].astype(ch.dtype) << np.uint64(32)
            nz, ny = zb - za, yb - ya
            vals = vals.reshape(nkz, nky, gx, nz, ny, ex).transpose(0, 3, 1, 4, 2, 5)
            vals = vals.reshape(nkz * nz, nky * ny, gx * ex)
            oz, oy = kz0 * bz + za - zs[0], ky0 * by + ya - ys[0]
            out[oz : oz + nkz * nz, oy : oy + nky * ny] = vals[:, :, : out.shape[2]]

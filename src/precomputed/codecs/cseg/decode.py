"""compressed_segmentation decoding (reference §4.4): validation, whole-chunk decode.

:class:`CsegChannel` makes every check TensorStore's decoder makes before anything is
decoded, so no decoder here can read out of bounds. Validated channels are decoded by the
library's C++ code without the GIL (:mod:`.native`) when it is available and safe, else by
the package's Python API or a vectorised numpy decoder (any bit width).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import compressed_segmentation as _cseg_lib
import numpy as np

from ...errors import CorruptDataError
from ...internal import recycle
from ...internal.geometry import Vec3
from . import native

__all__ = ["CsegChannel", "corrupt", "decode", "decode_into", "channels_into", "geometry", "local_positions"]

_Bytes = bytes | bytearray | memoryview


def local_positions(
    extent: tuple[int, int, int], block: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Positions inside a block that can hold chunk voxels, as (bit-stream offset, lz, ly, lx).

    ``extent`` is min(block, chunk) per dimension (z, y, x); the offset uses the full block
    size, as the format numbers elements over the whole (possibly padded) block. Cached for
    ordinary block sizes (the same few are used for every chunk of a scale).
    """
    if extent[0] * extent[1] * extent[2] <= 1 << 18:
        return _local_positions_cached(extent, block)
    return _local_positions_uncached(extent, block)


def _local_positions_uncached(
    extent: Vec3, block: Vec3
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    _, by, bx = block
    lz, ly, lx = (a.ravel() for a in np.indices(extent, dtype=np.int64))
    loc = (lz * by + ly) * bx + lx
    for a in (loc, lz, ly, lx):
        a.flags.writeable = False
    return loc, lz, ly, lx


_local_positions_cached = lru_cache(maxsize=16)(_local_positions_uncached)


def geometry(shape_zyx: Sequence[int], block_xyz: Sequence[int]) -> tuple[Vec3, Vec3, Vec3]:
    """(block, grid of blocks, extent of a block's voxels inside the chunk), all z, y, x."""
    bx, by, bz = (int(b) for b in block_xyz)
    z, y, x = shape_zyx
    block = (bz, by, bx)
    grid = (-(-z // bz), -(-y // by), -(-x // bx))
    extent = (min(z, bz), min(y, by), min(x, bx))
    return block, grid, extent


def decode(
    data: _Bytes, shape: tuple[int, int, int, int], dtype: np.dtype, block_xyz: Sequence[int]
) -> np.ndarray:
    if memoryview(data).nbytes % 4:
        raise corrupt()
    words = np.frombuffer(data, "<u4")
    if words.dtype != np.uint32:  # big-endian host
        words = words.astype(np.uint32)
    c, z, y, x = shape
    if len(words) < c:
        raise corrupt()
    offsets = words[:c].astype(np.int64)
    if (offsets > len(words)).any():
        raise corrupt()
    if z * y * x == 0:
        return np.zeros(shape, dtype)
    channels = [CsegChannel(words[offsets[ci] :], (z, y, x), block_xyz, dtype) for ci in range(c)]
    if c == 1 and channels[0].library_safe and not native.AVAILABLE:
        whole = data if type(data) is bytes and offsets[0] == 1 else None
        return channels[0].decode_with_library(whole).reshape(shape)
    out = recycle.empty(shape, dtype)
    channels_into(channels, out)
    return out


def channels_into(channels: list[CsegChannel], out: np.ndarray) -> None:
    for ci, channel in enumerate(channels):
        if channel.library_safe and native.AVAILABLE:
            native.decode_channel_into(channel.w, channel.block_xyz, out[ci])
        elif channel.library_safe:
            out[ci] = channel.decode_with_library()
        else:
            channel.decode_into(out[ci])


def decode_into(
    data: bytes | bytearray | memoryview, out: np.ndarray, block_xyz: Sequence[int]
) -> None:
    """Decode a whole chunk into ``out``, a native-order (c, z, y, x) view of the chunk's
    clipped shape (typically its place in a larger output), with the GIL released where
    the library allows it. Raises :class:`CorruptDataError` (without a key)."""
    if memoryview(data).nbytes % 4:
        raise corrupt()
    words = np.frombuffer(data, "<u4").astype(np.uint32, copy=False)
    c, z, y, x = out.shape
    if len(words) < c:
        raise corrupt()
    offsets = words[:c].astype(np.int64)
    if (offsets > len(words)).any():
        raise corrupt()
    if out.size == 0:
        return
    channels = [
        CsegChannel(words[offsets[ci] :], (z, y, x), block_xyz, out.dtype)
        for ci in range(c)
    ]
    channels_into(channels, out)


@lru_cache(maxsize=64)
def _encoded_words(bvol: int) -> np.ndarray:
    """Encoded words of a block per bit width 0..32, and 2^62 (never fits) for the
    invalid widths and for index 33 (every width above 32)."""
    words = np.full(34, 1 << 62, np.int64)
    for b in (0, 1, 2, 4, 8, 16, 32):
        words[b] = (b * bvol + 31) // 32
    return words


def corrupt() -> CorruptDataError:
    return CorruptDataError("Corrupted Neuroglancer compressed segmentation")


class CsegChannel:
    """One validated channel of a compressed_segmentation chunk.

    Construction makes every check TensorStore's decoder makes (reference §4.4), so decoding
    afterwards cannot read out of bounds. ``w`` runs from the channel start to the end of the
    whole buffer, as in TensorStore (tables may lie anywhere after the channel start).
    """

    def __init__(
        self, w: np.ndarray, shape_zyx: Vec3, block_xyz: Sequence[int], dtype: np.dtype
    ) -> None:
        self.w, self.shape, self.dtype = w, shape_zyx, dtype
        self.block, self.grid, self.extent = geometry(shape_zyx, block_xyz)
        bz, by, bx = self.block
        self.block_xyz = (bx, by, bz)
        nb = self.grid[0] * self.grid[1] * self.grid[2]
        n = len(w)
        if n < 2 * nb:
            raise corrupt()
        # Few, whole-array numpy steps: this runs for every chunk decoded.
        hdr = w[: 2 * nb].astype(np.int64).reshape(nb, 2)
        first, second = hdr[:, 0], hdr[:, 1]
        self.table_offset = first & 0xFFFFFF
        self.bits = bits = first >> 24
        self.value_offset = second & 0xFFFFFF  # TensorStore reads only 24 bits here
        self.wpv = dtype.itemsize // 4  # 32-bit words per label
        self.bvol = math.prod(self.block)
        self.table_size = table_size = (n - self.table_offset) // self.wpv
        # Valid bit widths map to their encoded words; anything else to 2^62 (never fits).
        enc_words = _encoded_words(min(self.bvol, 1 << 57))[np.minimum(bits, 33)]
        if (
            int((self.value_offset + enc_words).max()) > n
            or int(self.table_offset.max()) > n
            or (table_size[bits == 0] == 0).any()
        ):
            raise corrupt()
        # Indices must be < table_size at positions inside the chunk; only blocks whose bit
        # width can express a larger index need looking at (usually just the last table).
        self.clamp_rows = np.zeros(0, np.int64)
        risky = np.flatnonzero((np.int64(1) << bits) > np.maximum(table_size, 1))
        if len(risky):
            rows = risky
            idx = self._indices(rows)
            bad = idx >= table_size[rows][:, None]
            if bad.any():
                if (bad & self._inside(rows)).any():
                    raise corrupt()
                self.clamp_rows = rows
        # The library misdecodes 32-bit blocks (it computes `1 << bits` in int) and reads the
        # encoded-values offset as 32 bits, so those channels take the numpy path.
        self.library_safe = int(bits.max()) < 32 and int(second.max()) < 1 << 24

    def _indices(self, rows: np.ndarray) -> np.ndarray:
        """Lookup-table indices of the chunk-reachable positions of ``rows`` (uint32)."""
        w, bits = self.w, self.bits[rows]
        loc = local_positions(self.extent, self.block)[0]
        if len(rows) == 1 and len(loc) == self.bvol and bits[0] > 0:
            # The usual case (only the last table can be short): one block, few steps.
            b = int(bits[0])
            start = int(self.value_offset[rows[0]])
            words = w[start : start + (b * self.bvol + 31) // 32]
            shifts = np.arange(0, 32, b, dtype=np.uint32)
            unpacked = (words[:, None] >> shifts) & np.uint32((1 << b) - 1)
            return unpacked.reshape(1, -1)[:, : self.bvol]
        if len(loc) == self.bvol and (bits > 0).all():
            # Whole blocks lie in the chunk: unpack each block's contiguous encoded words.
            out = np.empty((len(rows), self.bvol), np.uint32)
            for b in np.unique(bits):
                sel = np.nonzero(bits == b)[0]
                b = int(b)
                nwords, per = (b * self.bvol + 31) // 32, 32 // b
                words = w[self.value_offset[rows[sel]][:, None] + np.arange(nwords)]
                shifts = np.arange(per, dtype=np.uint32) * np.uint32(b)
                unpacked = (words[:, :, None] >> shifts) & np.uint32((1 << b) - 1)
                out[sel] = unpacked.reshape(len(sel), nwords * per)[:, : self.bvol]
            return out
        p = loc[None, :] * bits[:, None]
        word = np.where(bits > 0, self.value_offset[rows], 0)[:, None] + (p >> 5)
        mask = ((np.int64(1) << bits) - 1).astype(np.uint32)
        return (w[word] >> (p & 31).astype(np.uint32)) & mask[:, None]

    def _inside(self, rows: np.ndarray) -> np.ndarray:
        _, lz, ly, lx = local_positions(self.extent, self.block)
        oz, oy, ox = np.unravel_index(rows, self.grid)
        return (
            (oz[:, None] * self.block[0] + lz < self.shape[0])
            & (oy[:, None] * self.block[1] + ly < self.shape[1])
            & (ox[:, None] * self.block[2] + lx < self.shape[2])
        )

    def decode_with_library(self, data: bytes | None = None) -> np.ndarray:
        """Decode with the C++ library (fast); only valid when ``library_safe``.

        Returns a fresh, writeable, C-contiguous (z, y, x) array.  ``data`` may be the whole
        buffer when it is ``bytes`` whose single channel starts at word 1 (saves a copy).
        """
        if data is None:
            data = b"\x01\x00\x00\x00" + self.w.astype("<u4", copy=False).tobytes()
        z, y, x = self.shape
        arr = _cseg_lib.decompress(
            data, (x, y, z), self.dtype, block_size=self.block_xyz, order="F"
        )
        return arr.T

    def decode_into(self, out: np.ndarray) -> None:
        """Vectorised numpy decoder (any bit width), writing (z, y, x) into ``out``."""
        gz, gy, gx = self.grid
        ez, ey, ex = self.extent
        exact = (gz * ez, gy * ey, gx * ex) == self.shape
        padded = out if exact else np.empty((gz * ez, gy * ey, gx * ex), self.dtype)
        blocks = padded.reshape(gz, ez, gy, ey, gx, ex).transpose(0, 2, 4, 1, 3, 5)
        w, n = self.w, len(self.w)
        if self.wpv == 1:
            table, base = w, self.table_offset
        else:
            # Tables may start at odd word offsets: gather 64-bit labels from an even- and an
            # odd-aligned view of the words (copies only the compressed bytes).
            even = w[: n - n % 2].view("<u8")
            odd = w[1 : n - (n - 1) % 2].view("<u8") if n > 1 else np.zeros(0, "<u8")
            table = np.concatenate([even, odd])
            base = np.where(
                self.table_offset % 2 == 0,
                self.table_offset // 2,
                len(even) + self.table_offset // 2,
            )
        clamp = np.zeros(len(self.bits), bool)
        clamp[self.clamp_rows] = True
        for b in np.unique(self.bits):
            rows = np.nonzero(self.bits == b)[0]
            oz, oy, ox = np.unravel_index(rows, self.grid)
            if b == 0:
                blocks[oz, oy, ox] = table[base[rows]][:, None, None, None]
                continue
            idx = self._indices(rows).astype(np.int64)
            if clamp[rows].any():
                np.minimum(idx, (self.table_size[rows] - 1)[:, None], out=idx)
            idx += base[rows][:, None]
            blocks[oz, oy, ox] = table[idx].reshape(len(rows), ez, ey, ex)
        if not exact:
            out[...] = padded[: self.shape[0], : self.shape[1], : self.shape[2]]

"""compressed_segmentation encoding (reference §4.4), byte-identical to TensorStore's.

Four encoders produce the same bytes. First choice: the library's C++ ``CompressChannel``
called through ``ctypes`` (:mod:`.native`), which releases the GIL, reads strided input
in place and takes ~30% less CPU than the numpy encoder on segmentation-like chunks.
Where that symbol is missing: a vectorised numpy fast path for ordinary chunks (mostly
large numpy operations, which release the GIL, so a thread pool encodes in parallel),
then the library's Python API (which holds the GIL). Blocks the library gets wrong (more
than 2^16 voxels) always use a numpy encoder.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Sequence

import compressed_segmentation as _cseg_lib
import numpy as np
import numpy.typing as npt

from ...errors import InvalidArgumentError
from ...internal.geometry import Vec3
from . import native
from .decode import geometry, local_positions

__all__ = ["encode"]

# Offsets in compressed_segmentation block headers are 24-bit fields (TensorStore's decoder also
# reads the encoded-values offset as 24 bits), so a channel must stay below 2**24 words.
_CSEG_MAX_OFFSET = 1 << 24
# compressed_segmentation (the C++ library) computes `1 << bits` in 32-bit int arithmetic, which
# is wrong once a block holds more than 2**16 distinct values; larger blocks use our encoder.
_CSEG_LIB_MAX_BLOCK_VOLUME = 1 << 16


def encode(chunk: np.ndarray, block_xyz: tuple[int, int, int]) -> bytes:
    c = chunk.shape[0]
    order = chunk.dtype.newbyteorder("=")
    if chunk.dtype != order or any(s < 0 for s in chunk.strides):
        chunk = np.ascontiguousarray(chunk, dtype=order)  # else encoded in place, strided
    header = np.empty(c, "<u4")
    parts = []
    offset = c
    for ci in range(c):
        words = _cseg_encode_channel(chunk[ci], block_xyz)
        header[ci] = offset
        offset += len(words)
        parts.append(words.astype("<u4", copy=False).tobytes())
    return header.tobytes() + b"".join(parts)


def _cseg_encode_channel(chan: np.ndarray, block_xyz: tuple[int, int, int]) -> np.ndarray:
    """One channel as uint32 words (offsets relative to the channel start)."""
    if chan.size == 0:
        return np.zeros(0, np.uint32)
    bvol = int(np.prod(block_xyz, dtype=object))
    if (
        native.ENCODER_AVAILABLE
        and bvol <= _CSEG_LIB_MAX_BLOCK_VOLUME
        and chan.dtype in _CSEG_DTYPES
        and all(s >= 0 and s % chan.itemsize == 0 for s in chan.strides)
    ):
        try:
            native_words = native.encode_channel(chan, block_xyz)
        except native.EncodingOverflow:
            raise _cseg_too_large() from None
        _cseg_check_value_offsets(native_words, chan.shape, block_xyz)
        return native_words
    chan = np.ascontiguousarray(chan)
    if chan.size >= _CSEG_FAST_MIN_VOXELS:
        fast_words = _cseg_encode_channel_fast(chan, block_xyz)
        if fast_words is not None:
            return fast_words
    if bvol <= _CSEG_LIB_MAX_BLOCK_VOLUME:
        # The library's encoder follows the same algorithm as TensorStore's (verified byte for
        # byte, see tests).  It writes a one-channel container; strip its header word.  Its 4-d
        # entry point crashes, so channels are always passed one at a time, as x,y,z F-order.
        try:
            encoded = _cseg_lib.compress(chan.T, block_size=tuple(block_xyz), order="F")
        except OverflowError:
            raise _cseg_too_large() from None
        words = np.frombuffer(encoded, "<u4")[1:]
        _cseg_check_value_offsets(words, chan.shape, block_xyz)
        return words
    return _cseg_encode_channel_numpy(chan, block_xyz)


def _cseg_too_large() -> InvalidArgumentError:
    return InvalidArgumentError(
        "compressed_segmentation chunk is too large to encode: a channel needs more than 2^24 "
        "32-bit words (header offsets are 24 bits); use a smaller chunk size"
    )


def _cseg_check_value_offsets(
    words: np.ndarray, shape_zyx: Sequence[int], block_xyz: Sequence[int]
) -> None:
    if len(words) <= _CSEG_MAX_OFFSET:
        return
    _, grid, _ = geometry(shape_zyx, block_xyz)
    nb = grid[0] * grid[1] * grid[2]
    if int(words[1 : 2 * nb : 2].max()) >= _CSEG_MAX_OFFSET:
        raise _cseg_too_large()


# Fast vectorised encoder for ordinary chunks.  The C++ library holds the GIL while encoding, so
# a thread pool cannot encode two chunks at once with it; this encoder spends most of its time
# in a few large numpy operations (which release the GIL) and is byte-identical to it.  Its
# small operations (which hold the GIL) are kept few, as they serialise concurrent encoders.
#
# The voxels are regrouped one block per row and every row is sorted: the distinct values of a
# sorted row are the block's lookup table.  A voxel's index is then read from a 256-entry table
# per block addressed by one byte of the value, which is exact for blocks whose table entries
# all differ in that byte (nearly all: a block holds few labels); the others count the table
# entries below each value by comparisons.

# Smallest channel and block (in voxels) for the fast path; below them the library is quicker
# (the fast path has a fixed cost of a few hundred microseconds and a cost per block).  Large
# blocks hold many labels, which the fast path handles poorly; the library is quick there.
_CSEG_FAST_MIN_VOXELS = 1 << 14
_CSEG_FAST_MIN_BLOCK_VOLUME = 32
_CSEG_FAST_MAX_BLOCK_VOLUME = 1 << 12
# Blocks whose labels are alike in the byte used for table look-ups need comparisons instead:
# (labels - 1) passes over the block.  Beyond this many passes over the whole chunk (e.g. 20+
# random labels per block) the library is used.
_CSEG_FAST_MAX_COMPARE_PASSES = 16
# Scratch arrays up to this size are kept per thread between calls (about 5.5 MiB in all for a
# 64^3 uint64 chunk): fresh multi-megabyte temporaries for every chunk cost page faults that
# can double the run time.
_CSEG_SCRATCH_MAX_BYTES = 1 << 22
_cseg_scratch_local = threading.local()
_CSEG_DTYPES = (np.dtype("=u4"), np.dtype("=u8"))
# encoded_bits of a block with n distinct values, at index n (n <= 256).
_CSEG_BITS_FOR_COUNT = np.repeat(np.array([0, 1, 2, 4, 8], np.int64), [2, 1, 2, 12, 240])
# Multipliers of the lookup-table hash, by position in the table and (last) by table length;
# tables with equal hashes are also compared exactly.
_CSEG_TABLE_MIX = np.random.default_rng(0x5E6).integers(1, 2**63, 513, np.uint64) | np.uint64(1)


def _cseg_scratch(name: str, shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
    """An uninitialised array that this thread reuses from call to call (one per ``name``)."""
    dt = np.dtype(dtype)
    nbytes = dt.itemsize * math.prod(shape)
    bufs = _cseg_scratch_local.__dict__
    buf = bufs.get(name)
    if buf is None or len(buf) < nbytes:
        if nbytes > _CSEG_SCRATCH_MAX_BYTES:
            return np.empty(shape, dt)
        buf = bufs[name] = np.empty(max(nbytes, 4096), np.uint8)
    return buf[:nbytes].view(dt).reshape(shape)


def _cseg_encode_channel_fast(
    chan: np.ndarray, block_xyz: tuple[int, int, int]
) -> np.ndarray | None:
    """One channel as uint32 words, byte-identical to the library's output (reference §4.4),
    or None if the chunk does not suit this encoder (tiny or large blocks, far more padding
    than data, blocks with more than 256 values, or too many blocks needing comparisons)."""
    dtype = chan.dtype
    if dtype not in _CSEG_DTYPES or chan.size == 0:
        return None
    bx, by, bz = (int(b) for b in block_xyz)
    z, y, x = chan.shape
    gz, gy, gx = -(-z // bz), -(-y // by), -(-x // bx)
    nb = gz * gy * gx
    bvol = bz * by * bx
    if not _CSEG_FAST_MIN_BLOCK_VOLUME <= bvol <= _CSEG_FAST_MAX_BLOCK_VOLUME:
        return None
    if nb * bvol > 8 * chan.size + (1 << 15):
        return None
    size = dtype.itemsize

    # Blocks as rows, voxels in z, y, x order (the format's bit order).  Edge padding repeats
    # the last voxel, which lies in the same block, so it adds no value to any table.
    pad = ((0, gz * bz - z), (0, gy * by - y), (0, gx * bx - x))
    edge = pad != ((0, 0), (0, 0), (0, 0))
    padded = np.pad(chan, pad, mode="edge") if edge else np.ascontiguousarray(chan)
    blocks = _cseg_scratch("blocks", (nb, bvol), dtype)
    xrow = np.dtype((np.void, bx * size))  # moving whole x-rows of a block is faster
    blocks.view(xrow).reshape(gz, gy, gx, bz, by)[...] = (
        padded.view(xrow).reshape(gz, bz, gy, by, gx).transpose(0, 2, 4, 1, 3)
    )
    # One byte of every voxel, to look values up by: the byte that served this thread's last
    # chunk (chunks of a volume are alike), corrected in _cseg_indices if it serves badly.
    lowest = 0 if sys.byteorder == "little" else size - 1
    lane = min(_cseg_scratch_local.__dict__.get("lane", lowest), size - 1)
    low = _cseg_scratch("low", (nb, bvol), np.uint8)
    np.copyto(low, blocks.view(np.uint8)[:, lane::size])
    blocks.sort(axis=1)

    # flags mark the first copy of each value in the sorted rows: the table entries.  Flag
    # rows are padded with False to a multiple of 8 so that they can be counted 8 at a time.
    lflags = -(-bvol // 8) * 8
    flags = _cseg_scratch("flags", (nb, lflags), bool)
    flags[:, 0] = True
    np.not_equal(blocks[:, 1:], blocks[:, :-1], out=flags[:, 1:bvol])
    if lflags > bvol:
        flags[:, bvol:] = False
    if lflags <= 8 * 255:
        # Byte j of a row's 64-bit sum counts the flags at positions = j (mod 8).
        lanes = np.add.reduce(flags.view(np.uint64), axis=1)
        counts = lanes.view(np.uint8).reshape(nb, 8).sum(axis=1, dtype=np.intp)
    else:
        counts = np.count_nonzero(flags, axis=1)
    kmax = int(counts.max())
    if kmax > 256:
        return None
    # Table entry e: value tval[e], of block trow[e], at position tcol[e] in the table.
    tval = blocks[flags[:, :bvol]]
    trow = np.repeat(np.arange(nb), counts)
    first = counts.cumsum()
    first -= counts
    tcol = np.arange(len(tval))
    tcol -= first[trow]
    bits = _CSEG_BITS_FOR_COUNT[counts]

    if kmax > 1:
        indices = _cseg_indices(padded, chan.shape, (bz, by, bx), tval, trow, tcol, counts, lane)
        if indices is None:
            return None
        rank, rows = indices

    # Layout: headers, then per block its encoded values and (if new) its table.
    owner = _cseg_table_owners(tval, trow, tcol, first, counts)
    writes_table = owner == np.arange(nb)
    enc_words = (np.arange(9) * bvol + 31) >> 5
    enc_words = enc_words[bits]
    sizes = counts * (size // 4)
    sizes *= writes_table
    sizes += enc_words
    start = sizes.cumsum()
    start -= sizes
    start += 2 * nb
    own_table = start + enc_words
    table_offset = own_table[owner]
    if max(int(table_offset.max()), int(start[-1])) >= _CSEG_MAX_OFFSET:
        raise _cseg_too_large()
    out = np.zeros(int(start[-1] + sizes[-1]), np.uint32)
    table_offset |= bits << 24
    out[0 : 2 * nb : 2] = table_offset
    out[1 : 2 * nb : 2] = start
    if kmax > 1:
        # Encoded values, blocks grouped by bit width (widest first).
        order = (-bits).argsort(kind="stable")
        lo = 0
        group_sizes = np.bincount(bits, minlength=9)[[8, 4, 2, 1]].tolist()
        for b, n in zip((8, 4, 2, 1), group_sizes, strict=True):
            if n:
                members = order[lo : lo + n]
                lo += n
                group = _cseg_scratch("group", (n, rank.shape[1]), np.uint8)
                np.take(rank, rows[members], axis=0, out=group, mode="clip")
                words = _cseg_pack(group, b)
                w = -(-b * bvol // 32)
                out[start[members][:, None] + np.arange(w)] = words[:, :w]
    # Tables, each written by the first block using it.
    new = writes_table[trow]
    pos = own_table[trow[new]]
    values = tval[new]
    if size == 4:
        pos += tcol[new]
        out[pos] = values
    else:
        pos += tcol[new] * 2
        out[(pos[:, None] + np.arange(2)).ravel()] = values.astype("<u8").view("<u4")
    return out


def _cseg_indices(
    padded: np.ndarray,
    shape: tuple[int, ...],
    block: Vec3,
    tval: np.ndarray,
    trow: np.ndarray,
    tcol: np.ndarray,
    counts: np.ndarray,
    lane: int,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Index of every voxel in its block's table, as (rows of uint8 indices padded to a
    multiple of 32, row of each block), or None if too many blocks need comparisons.  ``lane``
    is the byte of the values in the scratch array "low" (blocks as rows)."""
    bz, by, bx = block
    gz, gy, gx = (s // b for s, b in zip(padded.shape, block, strict=True))
    nb = len(counts)
    bvol = bz * by * bx
    size = tval.dtype.itemsize
    # lut[slot[block] * 256 + byte] = index of the block's table entry with that byte, where
    # slot numbers the blocks with 2+ values (the others share a last row of zeros).  Entries
    # that clash in the byte are found by reading them back.
    coded = np.flatnonzero(counts > 1)
    ncoded = len(coded)
    slot = np.full(nb, ncoded, np.intp)
    slot[coded] = np.arange(ncoded)
    tbytes = tval.view(np.uint8).reshape(len(tval), size).T
    for attempt in range(2):
        tslot = slot[trow]
        tslot <<= 8
        tslot += tbytes[lane]
        lut = _cseg_scratch("lut", ((ncoded + 1) * 256,), np.uint8)
        lut.fill(0)
        lut[tslot] = tcol
        clash = lut[tslot] != tcol
        bad = np.flatnonzero(np.bincount(trow[clash], minlength=nb)) if clash.any() else None
        compares = 0 if bad is None else int(counts[bad].sum()) - len(bad)
        if attempt or compares * 8 <= nb:
            break
        # Many clashes: pick the byte in which the fewest blocks have two entries alike (the
        # lowest-order byte wins ties), judged on the first blocks, and remember it.
        keys = (trow[:1024] << 8) | tbytes[:, :1024]
        keys.sort(axis=1)
        repeats = (keys[:, 1:] == keys[:, :-1]).sum(axis=1)
        order = np.arange(size) if sys.byteorder == "little" else np.arange(size)[::-1]
        best = int(order[np.argmin(repeats[order])])
        if best == lane:
            break
        lane = _cseg_scratch_local.lane = best
        flat = _cseg_scratch("low_chunk", padded.shape, np.uint8)
        np.copyto(flat, padded.view(np.uint8)[..., lane::size])
        low = _cseg_scratch("low", (nb, bvol), np.uint8)
        xrow = np.dtype((np.void, bx))
        low.view(xrow).reshape(gz, gy, gx, bz, by)[...] = (
            flat.view(xrow).reshape(gz, bz, gy, by, gx).transpose(0, 2, 4, 1, 3)
        )
    if compares > _CSEG_FAST_MAX_COMPARE_PASSES * nb:
        return None
    # Past half the blocks single-valued, only the others get a row.
    low = _cseg_scratch("low", (nb, bvol), np.uint8)
    if 2 * ncoded > nb:
        rows = np.arange(nb)
        base = slot
    else:
        rows = slot
        rows[coded] = base = np.arange(ncoded)
        low = low[coded]
    idx = _cseg_scratch("idx", low.shape, np.intp)
    np.copyto(idx, low)  # (faster than a mixed-type add)
    idx += (base << 8)[:, None]
    lpad = -(-bvol // 32) * 32  # packing works on rows of 32 indices
    rank = _cseg_scratch("rank", (len(idx), lpad), np.uint8)
    if lpad == bvol:
        np.take(lut, idx, out=rank, mode="clip")
    else:
        rank[:, bvol:] = 0
        rank[:, :bvol] = np.take(lut, idx, mode="clip")
    if bad is not None:
        bad = bad[np.argsort(-counts[bad], kind="stable")]  # most values first
        iz, iy, ix = np.unravel_index(bad, (gz, gy, gx))
        vals = padded.reshape(gz, bz, gy, by, gx, bx)[iz, :, iy, :, ix, :]
        table = np.zeros((len(bad), int(counts[bad[0]])), tval.dtype)
        where = np.full(nb, -1)
        where[bad] = np.arange(len(bad))
        sel = where[trow] >= 0
        table[where[trow[sel]], tcol[sel]] = tval[sel]
        rank[rows[bad], :bvol] = _cseg_rank_by_comparison(
            vals.reshape(len(bad), bvol), table, counts[bad]
        )
    if padded.shape != shape:  # positions outside the chunk hold index 0
        inside = _cseg_inside_mask(shape, block)
        rank[:, :bvol][~(inside if 2 * ncoded > nb else inside[coded])] = 0
    return rank, rows


def _cseg_rank_by_comparison(
    vals: np.ndarray, table: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """Index of each value in its block's table: the number of table entries below it (rows
    by decreasing count, tables zero-padded)."""
    rank = np.zeros(vals.shape, np.uint8)
    ge = np.empty(vals.shape, bool)
    rows = np.searchsorted(-counts, -np.arange(1, int(counts[0]) + 1), side="right")
    for k, n in enumerate(rows.tolist()):  # the first n rows have more than k values
        if k:
            np.greater_equal(vals[:n], table[:n, k : k + 1], out=ge[:n])
            rank[:n] += ge[:n]
    return rank


def _cseg_pack(rank: np.ndarray, bits: int) -> np.ndarray:
    """Rows of indices (uint8, row length a multiple of 32) as rows of 32-bit words holding
    ``bits``-bit fields, first index in the lowest bits."""
    if bits == 1:
        return np.packbits(rank, axis=1, bitorder="little").view("<u4")
    for step in (6, 4) if bits == 2 else (4,) if bits == 4 else ():
        # Merge neighbouring fields: in each 16-bit pair, the low byte gets both.
        pairs = rank.view("<u2")
        merged = _cseg_scratch(f"pack{step}", pairs.shape, pairs.dtype)
        np.right_shift(pairs, step, out=merged)
        merged |= pairs
        rank = _cseg_scratch(f"packed{step}", pairs.shape, np.uint8)
        np.copyto(rank, merged, casting="unsafe")
    return rank.view("<u4")


def _cseg_table_owners(
    tval: np.ndarray, trow: np.ndarray, tcol: np.ndarray, first: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """For each block, the first block with an identical lookup table."""
    nb = len(counts)
    with np.errstate(over="ignore"):
        h = _CSEG_TABLE_MIX[tcol]
        h *= tval
        key = np.add.reduceat(h, first)
        key += _CSEG_TABLE_MIX[256 + counts]
    order = key.argsort(kind="stable")
    skey = key[order]
    new = np.empty(nb, bool)
    new[0] = True
    np.not_equal(skey[1:], skey[:-1], out=new[1:])
    owner = _cseg_group_first(order, new)
    if (counts[owner] == counts).all():
        owned = first[owner][trow]
        owned += tcol
        if (tval[owned] == tval).all():
            return owner
    # A hash collision: group by the tables themselves.
    table = np.zeros((nb, int(counts.max())), tval.dtype)
    table[trow, tcol] = tval
    order = np.lexsort((*table.T[::-1], counts))
    stable = table[order]
    scounts = counts[order]
    new[1:] = (scounts[1:] != scounts[:-1]) | (stable[1:] != stable[:-1]).any(axis=1)
    return _cseg_group_first(order, new)


def _cseg_group_first(order: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Given a stable sort ``order`` and flags of where a group of equal rows starts in it,
    the first (smallest) index of each row's group."""
    group = new.cumsum()
    group -= 1
    owner = np.empty(len(order), np.intp)
    owner[order] = order[new][group]
    return owner


def _cseg_inside_mask(shape: Sequence[int], block: Sequence[int]) -> np.ndarray:
    """(blocks, voxels) mask of the positions of a padded chunk that lie inside the chunk."""
    z, y, x = (
        np.arange(-(-s // b))[:, None] * b + np.arange(b) < s
        for s, b in zip(shape, block, strict=True)
    )
    mask = z[:, None, None, :, None, None] & y[None, :, None, None, :, None]
    mask = mask & x[None, None, :, None, None, :]
    return mask.reshape(len(z) * len(y) * len(x), -1)


def _cseg_encode_channel_numpy(chan: np.ndarray, block_xyz: tuple[int, int, int]) -> np.ndarray:
    """Vectorised encoder following TensorStore's algorithm exactly (reference §4.4).

    Blocks in z, y, x order (x fastest); per block the sorted distinct values form the lookup
    table, indices use the smallest of 0/1/2/4/8/16/32 bits, the encoded area is sized for the
    full block, positions outside the chunk hold index 0, and an identical table already
    written in this channel is reused.
    """
    block, grid, extent = geometry(chan.shape, block_xyz)
    gz, gy, gx = grid
    ez, ey, ex = extent
    nb = gz * gy * gx
    loc, lz, ly, lx = local_positions(extent, block)
    nloc = len(loc)
    wpv = chan.dtype.itemsize // 4  # 32-bit words per label

    # Edge replication keeps every padded position inside its own block (the padding never
    # exceeds one block), so it adds no new distinct value to any block.
    pad = [(0, g * e - s) for g, e, s in zip(grid, extent, chan.shape, strict=True)]
    padded = np.pad(chan, pad, mode="edge") if any(p[1] for p in pad) else chan
    blocks = padded.reshape(gz, ez, gy, ey, gx, ex).transpose(0, 2, 4, 1, 3, 5).reshape(nb, nloc)

    values, ginv = np.unique(blocks, return_inverse=True)
    ginv = ginv.reshape(nb, nloc)
    nv = len(values)
    block_ids = np.arange(nb, dtype=np.int64)[:, None]
    if nb * nv <= 1 << 22:
        # Few (block, value) pairs: a presence table gives each block's sorted distinct values
        # and every voxel's rank without a second sort.
        present = np.zeros((nb, nv), bool)
        present[block_ids, ginv] = True
        ublock, uvalue = np.nonzero(present)
        counts = present.sum(axis=1)
        rank = (np.cumsum(present, axis=1) - 1)[block_ids, ginv]
        first = np.zeros(nb, np.int64)
        first[1:] = np.cumsum(counts)[:-1]
    else:
        ukey, kinv = np.unique(block_ids * nv + ginv, return_inverse=True)
        ublock, uvalue = ukey // nv, ukey % nv
        counts = np.bincount(ublock, minlength=nb)
        first = np.zeros(nb, np.int64)
        first[1:] = np.cumsum(counts)[:-1]
        rank = kinv.reshape(nb, nloc) - first[:, None]
    block_origin = np.unravel_index(np.arange(nb), grid)
    inside = (
        (block_origin[0][:, None] * block[0] + lz < chan.shape[0])
        & (block_origin[1][:, None] * block[1] + ly < chan.shape[1])
        & (block_origin[2][:, None] * block[2] + lx < chan.shape[2])
    )
    rank[~inside] = 0

    bits = np.array([1, 2, 4, 8, 16, 32])[np.searchsorted([2, 4, 16, 256, 65536], counts)]
    bits[counts == 1] = 0

    # Table reuse: each block's table is its sorted value list (as global ranks); find the
    # first block with an identical list.
    urank = np.arange(len(ublock)) - first[ublock]
    owner = _first_identical_segment(uvalue, first, counts, urank)
    writes_table = owner == np.arange(nb)

    bvol_c = min(int(np.prod(block, dtype=object)), 1 << 57)  # avoid int64 overflow
    enc_words = (bits * bvol_c + 31) // 32
    sizes = enc_words + np.where(writes_table, counts * wpv, 0)
    start = np.empty(nb, np.int64)
    start[0] = 2 * nb
    np.cumsum(sizes[:-1], out=start[1:])
    start[1:] += 2 * nb
    total = int(start[-1] + sizes[-1])
    own_table = start + enc_words
    table_offset = own_table[owner]
    if max(int(table_offset.max()), int(start.max())) >= _CSEG_MAX_OFFSET:
        raise _cseg_too_large()

    out = np.zeros(total, np.uint64)
    out[0 : 2 * nb : 2] = table_offset | (bits << 24)
    out[1 : 2 * nb : 2] = start
    coded = bits > 0
    if coded.any():
        b = bits[coded][:, None]
        p = loc[None, :] * b
        word = start[coded][:, None] + (p >> 5)
        contrib = rank[coded].astype(np.uint64) << (p & 31).astype(np.uint64)
        # Bit fields of one word are disjoint, so summing (exact in float64 below 2**53) is OR.
        out += np.bincount(word.ravel(), weights=contrib.ravel(), minlength=total).astype(np.uint64)
    sel = writes_table[ublock]
    pos = own_table[ublock[sel]] + urank[sel] * wpv
    vals = values[uvalue[sel]].astype(np.uint64)
    out[pos] = vals & 0xFFFFFFFF
    if wpv == 2:
        out[pos + 1] = vals >> 32
    return out.astype(np.uint32)


def _first_identical_segment(
    flat: np.ndarray, start: np.ndarray, length: np.ndarray, pos: np.ndarray
) -> np.ndarray:
    """For consecutive segments ``flat[start[i]:start[i] + length[i]]``, the index of the first
    segment equal to each one.  ``pos`` is each element's position within its segment.

    Segments are grouped by length and two 64-bit hashes, then checked exactly; a hash
    collision (never seen in practice) falls back to comparing bytes block by block.
    """
    mixers = np.random.default_rng(0x5E6).integers(1, 2**63, (2, int(length.max())), np.uint64)
    values = flat.astype(np.uint64) + np.uint64(1)
    with np.errstate(over="ignore"):
        hashes = [np.add.reduceat(values * m[pos], start) for m in mixers]
    keys = np.stack([length.astype(np.uint64), *hashes], axis=1)
    _, first_idx, group = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    owner = first_idx[group.ravel()]
    seg_of = np.repeat(np.arange(len(start)), length)
    if np.array_equal(flat, flat[start[owner[seg_of]] + pos]):
        return owner
    return _first_identical_segment_exact(flat, start, length)  # pragma: no cover


def _first_identical_segment_exact(
    flat: np.ndarray, start: np.ndarray, length: np.ndarray
) -> np.ndarray:
    """Reference for :func:`_first_identical_segment`: one dictionary look-up per segment."""
    seen: dict[bytes, int] = {}
    return np.array(
        [
            seen.setdefault(flat[a : a + n].tobytes(), i)
            for i, (a, n) in enumerate(zip(start, length, strict=True))
        ],
        dtype=np.int64,
    )

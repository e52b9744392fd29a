"""Downsampling for pyramids: mean for images, mode for segmentations.

Both work on C-order (channel, z, y, x) arrays with a factor given in x, y, z order and
are vectorised over blocks. Blocks are taken from the start of the array (index 0), as
Igneous pairs voxels relative to the source scale's voxel offset. Sizes that are not
multiples of the factor are handled: the output size is rounded up and a partial block
at the far edge uses only the voxels that exist.

* ``mean``: exact for every data type. Integers are rounded half up (``floor(mean +
  1/2)``) with integer arithmetic, so uint64 values beyond 2**53 stay exact; float32 is
  averaged in float64.
* ``mode``: the most frequent value of each block; ties go to the smallest value.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "downsample_mean",
    "downsample_mode",
    "downsample",
    "downsampled_geometry",
    "METHODS",
    "check_factor",
    "integer_factor",
]

METHODS = ("mean", "mode")
#: Block sizes up to this use pairwise counting for the mode, larger ones sorting.
_PAIRWISE_MAX = 4


def downsampled_geometry(
    size: Sequence[int],
    voxel_offset: Sequence[int],
    resolution: Sequence[float],
    factor: Sequence[int],
) -> tuple[tuple[int, int, int], tuple[int, int, int], tuple[float, float, float]]:
    """Size (rounded up), voxel offset (rounded down) and resolution of the next scale,
    as CloudVolume's ``add_scale`` and Igneous compute them."""
    f = _factor(factor)
    new_size = tuple(-(-int(s) // k) for s, k in zip(size, f, strict=True))
    new_offset = tuple(int(o) // k for o, k in zip(voxel_offset, f, strict=True))
    new_res = tuple(float(r) * k for r, k in zip(resolution, f, strict=True))
    return new_size, new_offset, new_res  # type: ignore[return-value]


def check_factor(factor: Sequence[int]) -> tuple[int, int, int]:
    """A downsampling factor as 3 positive integers (x, y, z); ``ValueError`` otherwise."""
    try:
        f = tuple(int(v) for v in factor)
        ok = len(f) == 3 and all(v >= 1 for v in f) and all(int(v) == v for v in factor)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"downsampling factor must be 3 positive integers (x, y, z), not {factor!r}"
        )
    return f  # type: ignore[return-value]


_factor = check_factor


def integer_factor(
    resolution: Sequence[float], base: Sequence[float]
) -> tuple[int, int, int] | None:
    """The integer factor (x, y, z) by which ``resolution`` downsamples ``base``, or None
    when some ratio is not a positive integer (within 1e-6 relative)."""
    out = []
    for r, b in zip(resolution, base, strict=True):
        f = r / b
        n = round(f)
        if n < 1 or abs(f - n) > 1e-6 * max(1.0, f):
            return None
        out.append(int(n))
    return tuple(out)  # type: ignore[return-value]


def _blocks(
    arr: np.ndarray, factor_xyz: Sequence[int]
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """``arr`` (c, z, y, x) as blocks (c, Z', Y', X', k), a validity mask (Z', Y', X', k)
    or ``None`` when every block is full, and the voxel count of each block (Z', Y', X')."""
    fx, fy, fz = _factor(factor_xyz)
    if arr.ndim != 4:
        raise ValueError(f"expected a (channel, z, y, x) array, got shape {arr.shape}")
    c, z, y, x = arr.shape
    nz, ny, nx = -(-z // fz), -(-y // fy), -(-x // fx)
    k = fz * fy * fx
    pad = ((0, 0), (0, nz * fz - z), (0, ny * fy - y), (0, nx * fx - x))
    padded = np.pad(arr, pad) if any(p[1] for p in pad) else arr
    b = padded.reshape(c, nz, fz, ny, fy, nx, fx).transpose(0, 1, 3, 5, 2, 4, 6)
    b = b.reshape(c, nz, ny, nx, k)
    n = _block_counts((z, y, x), (fz, fy, fx))
    if not any(p[1] for p in pad):
        return b, None, n
    valid = np.zeros((nz * fz, ny * fy, nx * fx), bool)
    valid[:z, :y, :x] = True
    v = valid.reshape(nz, fz, ny, fy, nx, fx).transpose(0, 2, 4, 1, 3, 5).reshape(nz, ny, nx, k)
    return b, v, n


def downsample_mean(arr: np.ndarray, factor_xyz: Sequence[int]) -> np.ndarray:
    """Block mean (czyx in, czyx out); integers rounded half up, exactly."""
    arr = np.asarray(arr)
    fx, fy, fz = _factor(factor_xyz)
    if arr.ndim != 4:
        raise ValueError(f"expected a (channel, z, y, x) array, got shape {arr.shape}")
    c, z, y, x = arr.shape
    nz, ny, nx = -(-z // fz), -(-y // fy), -(-x // fx)
    pad = ((0, 0), (0, nz * fz - z), (0, ny * fy - y), (0, nx * fx - x))
    padded = np.pad(arr, pad) if any(p[1] for p in pad) else arr  # zeros add nothing
    n = _block_counts((z, y, x), (fz, fy, fx))[None]

    def block_sum(values: np.ndarray, dtype: type) -> np.ndarray:
        # Summing over the factor axes of a reshaped view: no block copy is made.
        return values.reshape(c, nz, fz, ny, fy, nx, fx).sum(axis=(2, 4, 6), dtype=dtype)

    kind = arr.dtype.kind
    if kind == "f":
        return (block_sum(padded, np.float64) / n).astype(arr.dtype)
    if kind == "b":
        return (2 * block_sum(padded, np.int64) >= n).astype(arr.dtype)
    if kind not in "iu":
        raise TypeError(f"cannot average values of type {arr.dtype}")
    if arr.dtype.itemsize < 8:
        s = block_sum(padded, np.int64)  # exact: at most 2**32 * prod(factor)
        return ((2 * s + n) // (2 * n)).astype(arr.dtype)
    # 64-bit: sum the high and low 32-bit halves separately (each sum fits in 64 bits),
    # then divide S = hi * 2**32 + lo by n without ever forming S.
    wide = np.uint64 if kind == "u" else np.int64
    n = n.astype(wide)
    hi = block_sum(padded >> 32, wide)
    lo = block_sum(padded & wide(0xFFFFFFFF), wide)
    a, b = np.divmod(hi, n)  # hi = a n + b, 0 <= b < n
    t = (b << 32) + lo  # S = a n 2**32 + t, t small
    return ((a << 32) + (2 * t + n) // (2 * n)).astype(arr.dtype)


def _block_counts(shape_zyx: Sequence[int], factor_zyx: Sequence[int]) -> np.ndarray:
    """Voxels in each block (Z', Y', X'): only the last block of an axis is short."""
    counts = [
        np.minimum(f, n - np.arange(-(-n // f)) * f)
        for n, f in zip(shape_zyx, factor_zyx, strict=True)
    ]
    return counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :]


def downsample_mode(arr: np.ndarray, factor_xyz: Sequence[int]) -> np.ndarray:
    """Most frequent value of each block; ties go to the smallest value (czyx)."""
    arr = np.asarray(arr)
    b, valid, n = _blocks(arr, factor_xyz)
    k = b.shape[-1]
    if k == 1:
        return b[..., 0].copy()
    if k <= _PAIRWISE_MAX:
        return _mode_pairwise(b, valid)
    if valid is not None:
        # Padding sorts to the end: a valid value equal to the filler is interchangeable
        # with it, so the first n entries of every sorted block are exactly its voxels.
        b = np.where(valid, b, _max_of(arr.dtype))
    s = np.sort(b, axis=-1)
    idx = np.arange(k)
    start = np.empty(s.shape, np.int64)
    start[..., 0] = 0
    start[..., 1:] = np.where(s[..., 1:] != s[..., :-1], idx[1:], 0)
    np.maximum.accumulate(start, axis=-1, out=start)
    run = idx - start + 1  # length of the run of equal values ending at each position
    if valid is not None:
        run = np.where(idx < n[None, ..., None], run, 0)
    # The first position holding the longest run ends a run of the smallest such value.
    best = np.argmax(run, axis=-1)
    return np.take_along_axis(s, best[..., None], axis=-1)[..., 0]


def _mode_pairwise(b: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Mode of small blocks by counting equal pairs (faster than sorting for k <= 4)."""
    k = b.shape[-1]
    counts = np.empty(b.shape, np.int32)
    for j in range(k):
        eq = b == b[..., j : j + 1]
        if valid is not None:
            eq &= valid
        counts[..., j] = eq.sum(axis=-1)
    if valid is not None:
        counts = np.where(valid, counts, -1)
    best = counts.max(axis=-1, keepdims=True)
    return np.where(counts == best, b, _max_of(b.dtype)).min(axis=-1)


def _max_of(dtype: np.dtype) -> int | np.generic:
    if dtype.kind == "b":
        return np.True_
    if dtype.kind in "iu":
        return np.iinfo(dtype).max
    return np.finfo(dtype).max


def downsample(arr: np.ndarray, factor_xyz: Sequence[int], method: str) -> np.ndarray:
    """``method`` is ``"mean"`` (images) or ``"mode"`` (segmentations)."""
    if method == "mean":
        return downsample_mean(arr, factor_xyz)
    if method == "mode":
        return downsample_mode(arr, factor_xyz)
    raise ValueError(f'downsampling method must be "mean" or "mode", not {method!r}')

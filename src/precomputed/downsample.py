"""Downsampling for pyramids: mean for images, mode for segmentations.

Both work on C-order (channel, z, y, x) arrays with a factor given in x, y, z order, are
vectorised over blocks, and handle sizes that are not multiples of the factor: the
output size is rounded up and a partial block uses only the voxels that exist.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["downsample_mean", "downsample_mode", "downsample", "downsampled_geometry"]


def downsampled_geometry(
    size: Sequence[int],
    voxel_offset: Sequence[int],
    resolution: Sequence[float],
    factor: Sequence[int],
) -> tuple[tuple[int, int, int], tuple[int, int, int], tuple[float, float, float]]:
    """Size (rounded up), voxel offset (rounded down) and resolution of the next scale,
    as CloudVolume's ``add_scale`` and Igneous compute them."""
    f = [int(v) for v in factor]
    new_size = tuple(-(-int(s) // k) for s, k in zip(size, f, strict=True))
    new_offset = tuple(int(o) // k for o, k in zip(voxel_offset, f, strict=True))
    new_res = tuple(float(r) * k for r, k in zip(resolution, f, strict=True))
    return new_size, new_offset, new_res  # type: ignore[return-value]


def _blocks(arr: np.ndarray, factor_xyz: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Blocks as (c, Z', Y', X', k) plus a validity mask (Z', Y', X', k) for padding."""
    fx, fy, fz = (int(v) for v in factor_xyz)
    c, z, y, x = arr.shape
    nz, ny, nx = -(-z // fz), -(-y // fy), -(-x // fx)
    pad = ((0, 0), (0, nz * fz - z), (0, ny * fy - y), (0, nx * fx - x))
    padded = np.pad(arr, pad) if any(p[1] for p in pad) else arr
    b = padded.reshape(c, nz, fz, ny, fy, nx, fx).transpose(0, 1, 3, 5, 2, 4, 6)
    b = b.reshape(c, nz, ny, nx, fz * fy * fx)
    valid = np.zeros((nz * fz, ny * fy, nx * fx), bool)
    valid[:z, :y, :x] = True
    v = valid.reshape(nz, fz, ny, fy, nx, fx).transpose(0, 2, 4, 1, 3, 5).reshape(nz, ny, nx, -1)
    return b, v


def downsample_mean(arr: np.ndarray, factor_xyz: Sequence[int]) -> np.ndarray:
    """Block mean, rounded half up for integer types (czyx in, czyx out)."""
    b, valid = _blocks(arr, factor_xyz)
    total = np.where(valid, b, 0).sum(axis=-1, dtype=np.float64)
    mean = total / valid.sum(axis=-1)
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        mean = np.clip(np.floor(mean + 0.5), info.min, info.max)
    return mean.astype(arr.dtype)


def downsample_mode(arr: np.ndarray, factor_xyz: Sequence[int]) -> np.ndarray:
    """Most frequent value of each block; ties go to the smallest value (czyx)."""
    b, valid = _blocks(arr, factor_xyz)
    k = b.shape[-1]
    counts = np.zeros(b.shape, np.int32)
    for j in range(k):  # k = prod(factor), small: O(k^2) vectorised comparisons
        counts[..., j] = ((b == b[..., j : j + 1]) & valid).sum(axis=-1)
    counts = np.where(valid, counts, -1)
    best = counts.max(axis=-1, keepdims=True)
    # Among the most frequent, pick the smallest value.
    candidates = np.where(counts == best, b, _max_of(b.dtype))
    return candidates.min(axis=-1)


def _max_of(dtype: np.dtype) -> np.generic:
    return np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else np.finfo(dtype).max


def downsample(arr: np.ndarray, factor_xyz: Sequence[int], method: str) -> np.ndarray:
    """``method`` is ``"mean"`` (images) or ``"mode"`` (segmentations)."""
    if method == "mean":
        return downsample_mean(arr, factor_xyz)
    if method == "mode":
        return downsample_mode(arr, factor_xyz)
    raise ValueError(f'downsampling method must be "mean" or "mode", not {method!r}')

"""Downsampling kernels against a plain-Python reference: every data type, odd sizes."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from precomputed.downsample import (
    check_factor,
    downsample,
    downsample_mean,
    downsample_mode,
    downsampled_geometry,
)

DTYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32"]
FACTORS = [(2, 2, 1), (2, 2, 2), (3, 2, 1), (1, 1, 1), (4, 4, 4)]
SHAPE = (2, 5, 7, 9)  # c, z, y, x: odd everywhere, so every axis has a partial block


def reference(arr: np.ndarray, factor: tuple[int, int, int], method: str) -> np.ndarray:
    """Block by block in Python: exact integer means rounded half up; mode with ties to
    the smallest value; partial blocks use only the voxels that exist."""
    fx, fy, fz = factor
    c, z, y, x = arr.shape
    out = np.zeros((c, -(-z // fz), -(-y // fy), -(-x // fx)), arr.dtype)
    for ci, k, j, i in itertools.product(*(range(n) for n in out.shape)):
        block = arr[ci, k * fz : (k + 1) * fz, j * fy : (j + 1) * fy, i * fx : (i + 1) * fx]
        values = block.ravel().tolist()
        n = len(values)
        if method == "mean":
            if arr.dtype.kind == "f":
                out[ci, k, j, i] = np.float64(sum(values)) / n
            else:
                out[ci, k, j, i] = (2 * sum(int(v) for v in values) + n) // (2 * n)
        else:
            counts = Counter(values)
            best = max(counts.values())
            out[ci, k, j, i] = min(v for v, m in counts.items() if m == best)
    return out


def random_array(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if dtype == "float32":
        return rng.normal(0, 1000, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("factor", FACTORS)
def test_mean_matches_reference_on_odd_sizes(dtype, factor):
    arr = random_array(dtype, SHAPE, np.random.default_rng(1))
    got = downsample_mean(arr, factor)
    assert got.dtype == arr.dtype
    np.testing.assert_array_equal(got, reference(arr, factor, "mean"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("factor", FACTORS)
def test_mode_matches_reference_on_odd_sizes(dtype, factor):
    rng = np.random.default_rng(2)
    few = rng.integers(0, 3, SHAPE).astype(dtype)  # many ties and repeats
    many = random_array(dtype, SHAPE, rng)  # mostly distinct: ties between singletons
    for arr in (few, many):
        got = downsample_mode(arr, factor)
        assert got.dtype == arr.dtype
        np.testing.assert_array_equal(got, reference(arr, factor, "mode"))


def test_mean_of_huge_uint64_is_exact():
    top = np.iinfo(np.uint64).max
    arr = np.array([top, top - 1, top - 2, top - 4, 2**63 + 1, 2**63], np.uint64)
    arr = arr.reshape(1, 1, 1, 6)
    got = downsample_mean(arr, (2, 1, 1))
    # (2^64-1 + 2^64-2)/2 = 2^64 - 1.5 -> rounds half up to 2^64 - 1
    np.testing.assert_array_equal(got.ravel(), [top, top - 3, 2**63 + 1])
    assert float(top) == float(top - 1)  # why float64 averaging would be wrong here


def test_integer_mean_rounds_half_up_also_for_negatives():
    arr = np.array([-3, -2, 1, 2, -1, 0], np.int8).reshape(1, 1, 1, 6)
    np.testing.assert_array_equal(downsample_mean(arr, (2, 1, 1)).ravel(), [-2, 2, 0])


def test_mode_ties_go_to_the_smallest_value():
    arr = np.array([[5, 3], [3, 5]], np.uint64).reshape(1, 1, 2, 2)
    assert downsample_mode(arr, (2, 2, 1)).item() == 3
    arr = np.array([9, 9, 7, 7, 1, 2, 8, 8], np.uint32).reshape(1, 2, 2, 2)
    assert downsample_mode(arr, (2, 2, 2)).item() == 7


def test_identity_factor_returns_the_input():
    arr = random_array("uint16", SHAPE, np.random.default_rng(3))
    for method in ("mean", "mode"):
        np.testing.assert_array_equal(downsample(arr, (1, 1, 1), method), arr)


def test_unknown_method_and_bad_factors_are_rejected():
    arr = np.zeros((1, 2, 2, 2), np.uint8)
    with pytest.raises(ValueError, match="mean"):
        downsample(arr, (2, 2, 1), "median")
    for bad in [(0, 2, 2), (2, 2), (1.5, 2, 2), "abc"]:
        with pytest.raises(ValueError, match="factor"):
            check_factor(bad)


def test_geometry_matches_cloudvolume_add_scale():
    # CloudVolume: size = ceil(size / f), offset = floor(offset / f) computed in float32,
    # resolution = resolution * f.
    size, offset, res = (37, 29, 6), (5, -3, 2), (4.0, 4.0, 30.0)
    for f in [(2, 2, 1), (4, 4, 2), (3, 3, 3)]:
        got = downsampled_geometry(size, offset, res, f)
        ff = np.array(f, np.float32)
        want_size = tuple(int(v) for v in np.ceil(np.array(size, np.float32) / ff))
        want_off = tuple(int(v) for v in np.floor(np.array(offset, np.float32) / ff))
        assert got == (want_size, want_off, tuple(r * k for r, k in zip(res, f, strict=True)))

"""A generated multiscale sample: an EM-like image and its segmentation.

Written with this package's own writer (so the sample also exercises it) into a local
cache folder on first use. The segmentation is sharded and compressed_segmentation, the
image unsharded jpeg, both with three scales, as real connectomics volumes are.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .downsample import downsample, downsampled_geometry

__all__ = ["sample_dir", "make_sample", "sample_volumes"]

SIZE = (256, 256, 64)  # x, y, z
RESOLUTION = (8.0, 8.0, 40.0)
FACTORS = [(2, 2, 1), (2, 2, 1)]


def sample_dir() -> Path:
    """Cache folder for the sample (``$PRECOMPUTED_SAMPLE_DIR`` or ~/.cache/...)."""
    env = os.environ.get("PRECOMPUTED_SAMPLE_DIR")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "napari-precomputed" / "sample"


def _make_labels(size: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Cell-like segments: nearest of random seeds (Voronoi), czyx uint64.

    The nearest seed minimises ``|p|^2 - 2 c.p`` over seeds ``p`` for a voxel ``c``: one
    small matrix product per z-plane instead of a distance per seed and voxel.
    """
    rng = np.random.default_rng(seed)
    x, y, z = size
    n = 120
    zscale = 5.0  # anisotropic like EM: z voxels are 5x thicker
    pts = (rng.uniform(0, 1, (n, 3)) * np.array([x, y, z * zscale])).astype(np.float32)
    ids = (1000 + 17 * np.arange(n)).astype(np.uint64)
    yy, xx = np.meshgrid(
        np.arange(y, dtype=np.float32), np.arange(x, dtype=np.float32), indexing="ij"
    )
    plane = np.stack([xx.ravel(), yy.ravel(), np.zeros(x * y, np.float32)], axis=1)
    norms = (pts**2).sum(axis=1)
    out = np.empty((1, z, y, x), np.uint64)
    for k in range(z):
        plane[:, 2] = k * zscale
        score = norms[None, :] - 2.0 * (plane @ pts.T)
        out[0, k] = ids[np.argmin(score, axis=1)].reshape(y, x)
    return out


def _make_image(labels: np.ndarray, seed: int = 1) -> np.ndarray:
    """EM-like grey levels: bright cytoplasm, dark membranes at label boundaries, noise."""
    rng = np.random.default_rng(seed)
    lab = labels[0]
    edge = np.zeros(lab.shape, bool)
    edge[:, 1:, :] |= lab[:, 1:, :] != lab[:, :-1, :]
    edge[:, :, 1:] |= lab[:, :, 1:] != lab[:, :, :-1]
    base = 150 + (lab % 7).astype(np.float64) * 8
    img = np.where(edge, 40.0, base) + rng.normal(0, 12, lab.shape)
    return np.clip(img, 0, 255).astype(np.uint8)[None]


def make_sample(root: str | os.PathLike[str] | None = None, overwrite: bool = False) -> Path:
    """Write the sample (``image/`` and ``segmentation/``) under ``root``; returns root."""
    from .driver import open as open_volume

    root = Path(root) if root is not None else sample_dir()
    done = root / ".complete"
    if done.exists() and not overwrite:
        return root
    root.mkdir(parents=True, exist_ok=True)
    labels = _make_labels(SIZE)
    image = _make_image(labels)
    for name, data, kind, enc, method in [
        ("image", image, "image", {"encoding": "jpeg", "jpeg_quality": 90}, "mean"),
        (
            "segmentation",
            labels,
            "segmentation",
            {
                "encoding": "compressed_segmentation",
                "compressed_segmentation_block_size": [8, 8, 8],
                "sharding": {
                    "@type": "neuroglancer_uint64_sharded_v1",
                    "preshift_bits": 3,
                    "hash": "identity",
                    "minishard_bits": 2,
                    "shard_bits": 2,
                    "minishard_index_encoding": "gzip",
                    "data_encoding": "gzip",
                },
            },
            "mode",
        ),
    ]:
        size, offset, res = SIZE, (0, 0, 0), RESOLUTION
        level = data
        for i in range(len(FACTORS) + 1):
            scale = {
                "size": list(size),
                "voxel_offset": list(offset),
                "resolution": list(res),
                "chunk_size": [64, 64, 16],
                **enc,
            }
            if "sharding" in scale and i > 0:
                scale = {k: v for k, v in scale.items() if k != "sharding"}
            vol = open_volume(
                {
                    "driver": "neuroglancer_precomputed",
                    "kvstore": {"driver": "file", "path": str(root / name) + "/"},
                    "multiscale_metadata": {
                        "type": kind,
                        "data_type": str(data.dtype),
                        "num_channels": 1,
                    },
                    "scale_metadata": scale,
                },
                create=True,
                delete_existing=(i == 0),
            )
            vol.write(level.transpose(3, 2, 1, 0))
            if i < len(FACTORS):
                f = FACTORS[i]
                level = downsample(level, f, method)
                size, offset, res = downsampled_geometry(size, offset, res, f)
    done.write_text("ok\n")
    return root


def sample_volumes(root: str | os.PathLike[str] | None = None) -> tuple[str, str]:
    """Paths of the sample image and segmentation volumes (generated if needed)."""
    r = make_sample(root)
    return str(r / "image"), str(r / "segmentation")

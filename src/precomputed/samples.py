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

    The nearest seed ``p`` of voxel ``c`` minimises ``|p|^2 - 2 c.p``, which separates
    into a per-row and a per-column term on each z-plane: one broadcast sum and an argmin
    per plane instead of a distance per seed and voxel.
    """
    rng = np.random.default_rng(seed)
    x, y, z = size
    n = 120
    zscale = 5.0  # anisotropic like EM: z voxels are 5x thicker
    pts = (rng.uniform(0, 1, (n, 3)) * np.array([x, y, z * zscale])).astype(np.float32)
    ids = (1000 + 17 * np.arange(n)).astype(np.uint64)
    norms = (pts**2).sum(axis=1)
    col = -2.0 * np.arange(x, dtype=np.float32)[:, None] * pts[None, :, 0]  # (x, n)
    row = -2.0 * np.arange(y, dtype=np.float32)[:, None] * pts[None, :, 1]  # (y, n)
    out = np.empty((1, z, y, x), np.uint64)
    for k in range(z):
        per_seed = norms - 2.0 * (k * zscale) * pts[:, 2]
        score = (row + per_seed)[:, None, :] + col[None, :, :]  # (y, x, n)
        out[0, k] = ids[np.argmin(score, axis=2)]
    return out


def _make_image(labels: np.ndarray, seed: int = 1) -> np.ndarray:
    """EM-like grey levels: bright cytoplasm, dark membranes at label boundaries, dark
    organelles (vesicles, mitochondria-like blobs) inside cells, noise."""
    rng = np.random.default_rng(seed)
    lab = labels[0]
    edge = np.zeros(lab.shape, bool)
    edge[:, 1:, :] |= lab[:, 1:, :] != lab[:, :-1, :]
    edge[:, :, 1:] |= lab[:, :, 1:] != lab[:, :, :-1]
    thick = edge.copy()  # membranes 2-3 voxels wide, as at 8 nm
    thick[:, :-1, :] |= edge[:, 1:, :]
    thick[:, :, :-1] |= edge[:, :, 1:]
    img = 150 + (lab % 7).astype(np.float32) * 8
    z, y, x = lab.shape
    for _ in range(400):  # organelles: small dark ellipsoids, a few z-slices deep
        cz, cy, cx = rng.integers(0, z), rng.integers(0, y), rng.integers(0, x)
        rz, ry, rx = rng.uniform(0.8, 2.5), rng.uniform(2, 7), rng.uniform(2, 7)
        z0, z1 = max(0, int(cz - rz)), min(z, int(cz + rz) + 1)
        y0, y1 = max(0, int(cy - ry)), min(y, int(cy + ry) + 1)
        x0, x1 = max(0, int(cx - rx)), min(x, int(cx + rx) + 1)
        zz, yy, xx = np.ogrid[z0:z1, y0:y1, x0:x1]
        inside = ((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        img[z0:z1, y0:y1, x0:x1][inside] = rng.uniform(70, 110)
    img[thick] = 45
    img += rng.normal(0, 12, lab.shape).astype(np.float32)
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
    variants: list[tuple[str, np.ndarray, str, dict[str, object], str]] = [
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
    ]
    for name, data, kind, enc, method in variants:
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

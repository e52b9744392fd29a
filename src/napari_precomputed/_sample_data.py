"""Sample data: a generated EM-like image and its segmentation, as Precomputed volumes.

Written on first use to a local cache folder (``$PRECOMPUTED_SAMPLE_DIR`` overrides it)
by :mod:`precomputed.samples`, then opened from there like any other volume.
"""

from __future__ import annotations

from precomputed.samples import sample_volumes

from ._reader import LayerData, read_volume

__all__ = ["make_sample_data"]


def make_sample_data() -> list[LayerData]:
    """The sample image (jpeg, 3 scales) and segmentation (sharded compressed_segmentation)."""
    image, segmentation = sample_volumes()
    return [*read_volume(image), *read_volume(segmentation)]

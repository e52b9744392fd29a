"""napari writer: save an Image or Labels layer as a new Precomputed volume.

*File > Save Selected Layers...* with the Neuroglancer Precomputed writer, or
``layer.save(path, plugin="napari-precomputed")``, writes a new volume at ``path`` (a
directory or URL, no file extension) through :func:`precomputed.create.create_volume`,
the same code path as the create widget:

* Labels become a ``segmentation`` (uint32 or uint64, compressed_segmentation), Images an
  ``image`` (raw encoding, the layer's data type or the nearest supported one);
* the layer's z, y, x axes become z, y, x of the volume (a leading channel axis of a 4-D
  image, or the colour axis of an RGB image, becomes the channels); 2-D layers are one
  z-plane thick;
* its scale becomes the resolution in nm (converted from the layer's length units;
  ``pixel`` counts as nm) and its translate the voxel offset (``translate / scale``,
  rounded);
* a multiscale layer is saved from its finest level, with as many pyramid levels as the
  layer has, downsampled by the factors between its levels;
* a layer this plugin's reader opened keeps the volume's own geometry: the reader
  presents each level over a window padded to whole pyramid steps, and the writer saves
  only the volume's voxels (its ``voxel_offset`` and ``size``), not the padding.

:func:`layer_volume_spec` is the layer-to-metadata mapping the widget shares.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from precomputed.create import create_volume, supported_data_type

from ._array import LevelArray

__all__ = ["write_image", "write_labels", "layer_volume_spec", "LayerVolumeSpec"]

#: Chunk shape proposed for 3-D volumes and for single planes (x, y, z).
CHUNK_3D = (64, 64, 64)
CHUNK_2D = (256, 256, 1)
BLOCK_SIZE = (8, 8, 8)


@dataclass
class LayerVolumeSpec:
    """A layer translated to volume metadata: TensorStore's ``multiscale_metadata`` and
    ``scale_metadata``, the finest level's data with its axes, pyramid factors, notes."""

    multiscale_metadata: dict[str, Any]
    scale_metadata: dict[str, Any]
    data: Any
    axes: str
    factors: list[tuple[int, int, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _nm_per_unit(unit: Any) -> tuple[float, str | None]:
    """Nanometres per layer unit; pixels (and unknown units) count as 1 nm."""
    if unit is None:
        return 1.0, None
    name = str(unit)
    if name in ("pixel", "px", "dimensionless", ""):
        return 1.0, None
    try:
        return float((1 * unit).to("nanometer").magnitude), None
    except Exception:
        return 1.0, f"unit {name!r} is not a length: its scale is taken as nm"


def _layout(ndim: int, rgb: bool, labels: bool) -> str:
    if rgb:
        if ndim not in (3, 4):
            raise ValueError(f"an RGB(A) layer with {ndim} dimensions cannot be saved")
        return "yxc" if ndim == 3 else "zyxc"
    if ndim == 2:
        return "yx"
    if ndim == 3:
        return "zyx"
    if ndim == 4 and not labels:
        return "czyx"
    kind = "Labels" if labels else "Image"
    raise ValueError(
        f"a {kind} layer with {ndim} dimensions cannot be saved as a volume: it needs "
        f"2 or 3 spatial dimensions{'' if labels else ' (and at most one channel axis)'}"
    )


def _level_factors(levels: Sequence[Any], axes: str) -> list[tuple[int, int, int]]:
    """Per-level (x, y, z) factors between consecutive levels of a multiscale layer."""
    out = []
    for prev, cur in zip(levels[:-1], levels[1:], strict=True):
        f = []
        for a in "xyz":
            if a not in axes:
                f.append(1)
                continue
            i = axes.index(a)
            f.append(max(1, round(int(prev.shape[i]) / max(1, int(cur.shape[i])))))
        out.append(tuple(f))
    return out  # type: ignore[return-value]


def _stored_window(base: Any, axes: str) -> tuple[tuple[slice, ...], list[int]] | None:
    """For a reader level (a :class:`LevelArray` over a padded window): the index of the
    volume's own voxels in the presented array (``axes`` order) and the shift (x, y, z)
    of its start from presented index 0. None for any other data."""
    if not isinstance(base, LevelArray):
        return None
    vol = base.volume
    lo: list[int] = []
    hi: list[int] = []
    for d in range(3):  # x, y, z
        start = int(vol.origin[d]) - base.origin[d]
        stop = start + int(vol.shape[d])
        lo.append(max(0, start))
        hi.append(min(base.extent[d], stop))
    key = tuple(
        slice(None) if a == "c" else slice(lo["xyz".index(a)], hi["xyz".index(a)]) for a in axes
    )
    return key, lo


def layer_volume_spec(data: Any, attributes: Mapping[str, Any], layer_type: str) -> LayerVolumeSpec:
    """Volume metadata for a layer's ``(data, attributes, layer_type)`` (as napari passes
    them to writers and as ``layer.as_layer_data_tuple()`` returns them).

    Raises ``ValueError`` (an :class:`InvalidArgumentError` for data types) with a
    message meant for the user when the layer cannot be stored.
    """
    labels = layer_type == "labels"
    if layer_type not in ("image", "labels"):
        raise ValueError(f"only Image and Labels layers can be saved, not {layer_type}")
    # napari passes a multiscale layer's levels as a list or its MultiScaleData.
    multiscale = bool(attributes.get("multiscale")) and not isinstance(data, np.ndarray)
    levels = [data[i] for i in range(len(data))] if multiscale else [data]
    base = levels[0]
    rgb = bool(attributes.get("rgb")) and not labels
    axes = _layout(len(base.shape), rgb, labels)
    spatial = [a for a in axes if a != "c"]
    notes: list[str] = []

    data_type, note = supported_data_type(base.dtype, segmentation=labels)
    if note:
        notes.append(note)

    # scale/translate/units have one entry per layer dimension (the RGB axis excluded);
    # the spatial ones are the last 2 or 3.
    n = len(spatial)
    scale = [float(v) for v in attributes.get("scale", [1.0] * n)][-n:]
    translate = [float(v) for v in attributes.get("translate", [0.0] * n)][-n:]
    units = list(attributes.get("units") or [None] * n)[-n:]
    res_zyx, off_zyx = [], []
    for s, t, u in zip(scale, translate, units, strict=True):
        nm, warn = _nm_per_unit(u)
        if warn and warn not in notes:
            notes.append(warn)
        if not s > 0:
            raise ValueError(f"the layer's scale {scale} must be positive to give a resolution")
        res_zyx.append(float(f"{s * nm:.12g}"))  # 0.008 um -> 8 nm, not 7.999999999999999
        off_zyx.append(int(round(t / s)))
    if n == 2:
        res_zyx.insert(0, 1.0)
        off_zyx.insert(0, 0)
    window = _stored_window(base, axes)
    if window is not None:  # the volume's own voxels, not the reader's padding
        key, shift = window
        base = base[key]
        off_zyx = [o + s for o, s in zip(off_zyx, shift[::-1], strict=True)]
    size = [int(base.shape[axes.index(a)]) if a in axes else 1 for a in "xyz"]
    channels = int(base.shape[axes.index("c")]) if "c" in axes else 1
    chunk = [min(c, s) for c, s in zip(CHUNK_2D if size[2] == 1 else CHUNK_3D, size, strict=True)]

    scale_metadata: dict[str, Any] = {
        "size": size,
        "voxel_offset": off_zyx[::-1],
        "resolution": res_zyx[::-1],
        "chunk_size": chunk,
        "encoding": "raw",
    }
    if labels:
        scale_metadata["encoding"] = "compressed_segmentation"
        scale_metadata["compressed_segmentation_block_size"] = [
            min(b, c) for b, c in zip(BLOCK_SIZE, chunk, strict=True)
        ]
    return LayerVolumeSpec(
        multiscale_metadata={
            "type": "segmentation" if labels else "image",
            "data_type": data_type,
            "num_channels": channels,
        },
        scale_metadata=scale_metadata,
        data=base,
        axes=axes,
        factors=_level_factors(levels, axes) if multiscale else [],
        notes=notes,
    )


def save_layer(
    path: str, data: Any, attributes: Mapping[str, Any], layer_type: str, **options: Any
) -> list[str]:
    """Write one layer as a new volume at ``path``; returns ``[path]``."""
    spec = layer_volume_spec(data, attributes, layer_type)
    create_volume(
        path,
        spec.multiscale_metadata,
        spec.scale_metadata,
        data=spec.data,
        axes=spec.axes,
        levels=spec.factors,
        **options,
    )
    return [path]


def write_image(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """napari single-layer writer for Image layers."""
    return save_layer(path, data, attributes, "image")


def write_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """napari single-layer writer for Labels layers."""
    return save_layer(path, data, attributes, "labels")

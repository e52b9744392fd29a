"""napari reader: a Precomputed volume (directory or URL) as one lazy multiscale layer.

``get_reader(path)`` is the cheap probe napari calls for every directory and URL the user
opens (:mod:`._probe`): one small ``info`` read, within a time budget; ``None`` (it never
raises) unless that is, or claims to be, a Precomputed volume. A volume that cannot be
opened gets a reader that raises why. The reader returns plain LayerData, so everything
here is testable without a viewer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

import precomputed
from precomputed import Volume
from precomputed.driver import open_scale
from precomputed.info_members import resolve_subdir, volume_location

from ._array import LevelArray
from ._probe import Probed, probe
from ._pyramid import Pyramid, plan_pyramid

__all__ = [
    "get_reader",
    "read_volume",
    "LayerData",
    "display_name",
    "layer_volumes",
    "matching_layer",
    "segment_features",
    "RECHECK_ENV",
    "remote_recheck",
]

log = logging.getLogger("napari_precomputed")

#: How volumes opened over a network revalidate cached chunks (``recheck_cached_data``).
RECHECK_ENV = "NAPARI_PRECOMPUTED_RECHECK"
_RECHECK_VALUES: dict[str, bool | str] = {
    "open": "open", "true": True, "1": True, "yes": True, "false": False, "0": False, "no": False,
}


def remote_recheck() -> bool | str:
    """``recheck_cached_data`` for volumes the reader opens over a network:
    ``$NAPARI_PRECOMPUTED_RECHECK`` (``open``, the default; ``true``; ``false``).

    The driver's default, as TensorStore's, is ``true``: every read of a cached chunk
    first checks its generation. Locally that is a ``stat`` (microseconds) and the reader
    keeps it; over a network it is a request per chunk file or shard on every redraw,
    which would undo the prefetch (a z-step of 256 cached chunks would cost 16 rounds of
    16 metadata requests). ``open`` shows every chunk as stored at the open or later,
    as Neuroglancer does; edits are never merged into stale data either way (commits
    are conditional on what storage holds)."""
    raw = os.environ.get(RECHECK_ENV, "").strip().lower()
    if not raw:
        return "open"
    if raw not in _RECHECK_VALUES:
        log.warning(
            "napari-precomputed: $%s=%r is not one of open, true, false; using open",
            RECHECK_ENV, raw,
        )
        return "open"
    return _RECHECK_VALUES[raw]

LayerData = tuple[Any, dict[str, Any], str]
ReaderFunction = Callable[[Any], list[LayerData]]

#: Region of the coarsest level sampled for contrast limits (x, y voxels).
_SAMPLE_XY = 256


# -- probe ----------------------------------------------------------------------------------


def get_reader(path: str | list[str]) -> ReaderFunction | None:
    """Return a reader when ``path`` is (or claims to be) a Precomputed volume, else
    ``None`` (see :mod:`._probe`). A volume that cannot be opened still gets a reader:
    it raises the reason (which URL, what failed, what to do), so napari shows that
    instead of refusing the file. The probe's ``info`` read is the reader's."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        return None
    found = []
    for p in paths:
        target = probe(os.fspath(p))
        if target is None:
            return None
        found.append(target)
    return partial(_read_targets, found)


def _report(message: str) -> None:
    """A problem the user should see: napari's notifications and the log."""
    log.warning(message)
    try:
        from napari.utils.notifications import show_warning

        show_warning(message)
    except Exception:  # pragma: no cover - napari missing or shutting down
        pass


# -- layers -----------------------------------------------------------------------------------


def _read_targets(targets: list[Probed], path: Any = None, **_: Any) -> list[LayerData]:
    for t in targets:
        if t.error is not None:
            log.warning("napari-precomputed: cannot open %s: %s", t.source, t.error)
            raise t.error
    out: list[LayerData] = []
    for t in targets:
        options: dict[str, Any] = {"metadata": t.metadata}
        if t.kvstore is not None:
            options["kvstore"] = t.kvstore
            if not t.kvstore.cheap_misses:  # over a network: see remote_recheck
                options["recheck_cached_data"] = remote_recheck()
        out.extend(read_volume(t.source, **options))
    return out


def read_volume(source: str | dict[str, Any], **open_options: Any) -> list[LayerData]:
    """LayerData for one volume (URL, path or TensorStore spec): all scales, lazily.

    ``open_options`` go to :func:`precomputed.open` (``context=``, ``storage_options=``,
    ...). No chunk is read, except a small sample of the coarsest level for the contrast
    limits of images whose data type has no natural range.
    """
    opened = precomputed.open_scales(source, **open_options)  # one info read, shared store
    first = opened[0]
    meta = first.metadata
    pyramid = plan_pyramid(meta.scales)
    by_index: dict[int, Volume] = {}
    for v in opened:
        by_index.setdefault(v.scale_index, v)
    vols = [
        by_index[lv.scale_index]
        if lv.scale_index in by_index
        else open_scale(first, lv.scale_index)
        for lv in pyramid.levels
    ]

    dtype = np.dtype(first.dtype)
    channels = int(meta.num_channels)
    labels = meta.type == "segmentation" and dtype.kind in "iu"
    rgb = not labels and channels == 3 and dtype == np.uint8
    layout = "zyxc" if rgb else ("czyx" if channels > 1 else "zyx")
    data = [
        LevelArray(v, layout, lv.origin, lv.extent)
        for v, lv in zip(vols, pyramid.levels, strict=True)
    ]

    scale = tuple(reversed(pyramid.resolution))
    translate = tuple(reversed(pyramid.translate))
    axis_labels: tuple[str, ...] = ("z", "y", "x")
    units: tuple[str, ...] = ("nm", "nm", "nm")
    if layout == "czyx":
        scale, translate = (1.0, *scale), (0.0, *translate)
        axis_labels, units = ("c", *axis_labels), ("pixel", *units)

    kwargs: dict[str, Any] = {
        "name": display_name(source),
        "multiscale": len(data) > 1,
        "scale": scale,
        "translate": translate,
        "axis_labels": axis_labels,
        "units": units,
        "metadata": {"precomputed": _source_metadata(source, vols[0], pyramid, layout)},
    }
    if labels:
        kind = "labels"
        features, found = segment_features(first)
        kwargs["metadata"]["precomputed"]["segment_properties"] = found
        if features is not None:
            kwargs["features"] = features
    else:
        kind = "image"
        kwargs["rgb"] = rgb
        if not rgb:
            kwargs["contrast_limits"] = _contrast_limits(dtype, data[-1])
    layer_data = data if len(data) > 1 else data[0]
    return [(layer_data, kwargs, kind)]


#: The features column napari's Labels look label values up in.
FEATURES_ID_COLUMN = "index"


def segment_features(volume: Volume) -> tuple[dict[str, np.ndarray] | None, dict[str, Any] | None]:
    """The segment properties of a segmentation as napari ``features`` (one row per
    segment, its id in the ``index`` column), and what the layer's metadata records of
    them (``key``, ``count``, the ids of the ``label`` and ``tags`` properties). A
    volume without ``segment_properties`` gives ``(None, None)``; one whose properties
    cannot be read gives ``(None, {"key": ..., "error": ...})`` and a warning naming the
    key, and still opens. One small JSON read (the volume ``info`` is not read again)."""
    from precomputed import segment_properties

    member = volume.info.get("segment_properties")
    if member is None:
        return None, None
    kv, path = volume_location(volume)
    key = f'{kv.url}{path}info member "segment_properties"'
    try:
        pkv, prefix = resolve_subdir(kv, path, member, "segment_properties")
        key = f"{pkv.url}{prefix}info"
        props = segment_properties.read((pkv, prefix))
        columns = props.to_columns(FEATURES_ID_COLUMN)
    except Exception as e:  # the volume opens without them
        _report(f"napari-precomputed: cannot read the segment properties {key}: {e}")
        return None, {"key": key, "error": str(e)}
    label, tags = props.label, props.tags
    return columns, {
        "key": key,
        "count": len(props),
        "label": label.id if label is not None else None,
        "tags": tags.id if tags is not None else None,
    }


def display_name(source: str | dict[str, Any]) -> str:
    """The layer name for ``source`` (a URL, path or spec): its last path component."""
    if not isinstance(source, str):
        kv = source.get("kvstore") if isinstance(source, dict) else None
        path = (kv.get("path") if isinstance(kv, dict) else kv) or source.get("path", "")
        source = str(path or "precomputed")
    s = source
    if s.startswith("precomputed://"):
        s = s[len("precomputed://") :]
    s = s.split("|", 1)[0].rstrip("/")
    name = s.rsplit("/", 1)[-1] if "/" in s else s
    return name or "precomputed"


def _source_metadata(
    source: str | dict[str, Any], first: Volume, pyramid: Pyramid, layout: str
) -> dict[str, Any]:
    """What other widgets need to find and address the volume behind the layer."""
    try:
        spec = first.spec()
    except Exception:  # pragma: no cover - a spec is a convenience, not a requirement
        spec = None
    meta = first.metadata
    return {
        "source": source,
        "url": source if isinstance(source, str) else None,
        "spec": spec,
        "type": meta.type,
        "data_type": meta.data_type,
        "num_channels": int(meta.num_channels),
        "layout": layout,
        # Absolute level-0 voxel (x, y, z) at data index 0: volume = origin + data index.
        "origin": list(pyramid.origin),
        "levels": [
            {
                "scale_index": lv.scale_index,
                "key": meta.scales[lv.scale_index].key,
                "factor": list(lv.factor),
                "origin": list(lv.origin),
            }
            for lv in pyramid.levels
        ],
    }


def _contrast_limits(dtype: np.dtype, coarsest: LevelArray) -> tuple[float, float]:
    """From the data type when it has a display range, else a plane of the coarsest level."""
    if dtype in (np.uint8, np.int8):
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    try:
        sample = np.asarray(_central_sample(coarsest))
    except Exception as e:  # unreadable: fall back to the type's range
        log.debug("napari-precomputed: contrast sample failed: %s", e)
        sample = np.zeros(0, dtype)
    sample = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample.ravel()
    if sample.size:
        lo, hi = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
        if hi > lo:
            return lo, hi
        if float(sample.max()) > float(sample.min()):
            return float(sample.min()), float(sample.max())
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return float(max(info.min, 0) if dtype.kind == "u" else info.min), float(info.max)
    return 0.0, 1.0


def _central_sample(level: LevelArray) -> LevelArray:
    """At most ``_SAMPLE_XY``² voxels (each channel) of the middle z-plane."""
    key: list[Any] = []
    for axis, n in zip(level.layout, level.shape, strict=True):
        if axis == "z":
            key.append(n // 2)
        elif axis in "xy":
            a = max(0, n // 2 - _SAMPLE_XY // 2)
            key.append(slice(a, a + _SAMPLE_XY))
        else:
            key.append(slice(None))
    return level[tuple(key)]


# -- the layers this reader made ------------------------------------------------------------


def layer_volumes(layer: Any) -> dict[int, Volume]:
    """Scale index -> the (whole-scale) volume each level of a reader layer reads."""
    meta = getattr(layer, "metadata", {}).get("precomputed")
    if not meta:
        raise precomputed.InvalidArgumentError(
            f"layer {getattr(layer, 'name', layer)!r} was not opened by napari-precomputed"
        )
    data = layer.data
    levels = (
        list(data) if isinstance(meta.get("levels"), list) and len(meta["levels"]) > 1 else [data]
    )
    out: dict[int, Volume] = {}
    for lv, arr in zip(meta["levels"], levels, strict=False):
        vol = getattr(arr, "volume", None)
        if vol is not None:
            out[int(lv["scale_index"])] = vol
    if not out:
        raise precomputed.InvalidArgumentError(f"layer {layer.name!r} has no Precomputed levels")
    return out


def matching_layer(viewer: Any, source: Any) -> Any:
    """A reader layer of ``viewer`` that shows ``source`` (same URL/path or spec)."""
    if viewer is None:
        return None
    want = os.path.abspath(source) if isinstance(source, str) and "://" not in source else source
    for layer in viewer.layers:
        meta = getattr(layer, "metadata", {}).get("precomputed")
        if not meta:
            continue
        have = meta.get("source")
        if isinstance(have, str) and "://" not in have:
            have = os.path.abspath(have)
        if have == want:
            return layer
    return None

"""Showing only some segments of a Labels layer, in their own colours (no Qt).

napari 0.9's ``Labels.show_selected_label`` shows one label (``selected_label``). For any
number, :func:`show_only` gives the layer a ``DirectLabelColormap`` that maps the chosen
ids to the colours they have in the layer's colormap and every other value (``None``
key) to transparent; :func:`show_all` puts the layer's own colormap back. While the
selection is shown, :func:`original_colormap` is the layer's own colormap, and
:func:`label_colors` the colours of ids in it (what the meshes of those ids are painted
with).

napari turns a direct colormap's labels into texture values with numba when it is
installed; without it, its numpy path handles labels up to 2**16 only, and segment ids
are usually far larger. The colormap here (``SelectionColormap``, made by :func:`selection_colormap`) does that lookup
with ``numpy.searchsorted`` over the few selected ids instead, whatever their size.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["selection_colormap", "show_only", "show_all", "original_colormap", "label_colors", "showing_only"]

_TRANSPARENT = np.zeros(4, np.float32)
#: Largest label napari's numpy path maps in a direct colormap (without numba).
_NUMPY_LIMIT = 2**16


def _colormap_class() -> Any:
    from napari.utils.colormaps import DirectLabelColormap

    class SelectionColormap(DirectLabelColormap):
        """A ``DirectLabelColormap`` of a few labels of any size (see the module notes):
        labels wider than 16 bits are mapped with a sorted lookup, not numba. It
        overrides napari's ``_data_to_texture`` and ``map`` and reads its
        ``_label_mapping_and_color_dict`` (napari 0.5-0.9)."""

        def _data_to_texture(self, values: Any) -> Any:
            if isinstance(values, np.integer) or np.dtype(values.dtype).itemsize <= 2:
                return super()._data_to_texture(values)
            return self._texture_values(np.asarray(values))

        def map(self, values: Any) -> Any:
            if isinstance(values, (int, np.integer)):
                return super().map(values)
            arr = np.asarray(values)
            if arr.dtype.kind not in "iu" or arr.dtype.itemsize <= 2:
                return super().map(values)
            texture = self._texture_values(arr)
            palette = self._values_mapping_to_minimum_values_set()[1]
            table = np.zeros((max(palette) + 1, 4), np.float32)
            for k, c in palette.items():
                table[k] = c
            mapped = table[texture]
            if self.use_selection:
                mapped[arr != self.selection] = 0
            return mapped

        def _texture_values(self, values: np.ndarray) -> np.ndarray:
            """What napari's cast gives, by a sorted lookup of the few labels."""
            mapping = self._label_mapping_and_color_dict[0]  # {label or None: texture}
            target = np.asarray(self._data_to_texture(values.dtype.type(0))).dtype
            info = np.iinfo(values.dtype)
            pairs = sorted((int(k), int(v)) for k, v in mapping.items()
                           if k is not None and info.min <= int(k) <= info.max)  # fmt: skip
            flat = values.reshape(-1)
            out = np.full(flat.shape, mapping[None], dtype=target)
            if pairs:
                keys = np.array([k for k, _ in pairs], dtype=values.dtype)
                vals = np.array([v for _, v in pairs], dtype=target)
                idx = np.minimum(np.searchsorted(keys, flat), keys.size - 1)
                hit = keys[idx] == flat
                out[hit] = vals[idx[hit]]
            return out.reshape(values.shape)

    return SelectionColormap


_SelectionColormap: Any = None


def selection_colormap(color_dict: dict[int | None, np.ndarray], background: int) -> Any:
    """A direct colormap of ``color_dict``: napari's own when it can map the labels,
    else :class:`SelectionColormap`."""
    global _SelectionColormap
    from napari.utils.colormaps import DirectLabelColormap

    big = any(k is not None and abs(k) > _NUMPY_LIMIT for k in color_dict)
    if not big or _has_numba():
        return DirectLabelColormap(color_dict=color_dict, background_value=background)
    if _SelectionColormap is None:
        _SelectionColormap = _colormap_class()
    return _SelectionColormap(color_dict=color_dict, background_value=background)


def _has_numba() -> bool:
    import importlib.util

    return importlib.util.find_spec("numba") is not None


class _State:
    def __init__(self, original: Any, ours: Any, ids: tuple[int, ...]) -> None:
        self.original = original
        self.ours = ours
        self.ids = ids


_states: weakref.WeakKeyDictionary[Any, _State] = weakref.WeakKeyDictionary()


def _active(layer: Any) -> _State | None:
    """The layer's selection state while our colormap is the layer's colormap."""
    state = _states.get(layer)
    if state is not None and layer.colormap is state.ours:
        return state
    return None


def original_colormap(layer: Any) -> Any:
    """The layer's own colormap (not the one :func:`show_only` set)."""
    state = _active(layer)
    return state.original if state is not None else layer.colormap


def showing_only(layer: Any) -> tuple[int, ...] | None:
    """The ids :func:`show_only` shows on ``layer``, or None (all are shown)."""
    state = _active(layer)
    return state.ids if state is not None else None


def label_colors(layer: Any, ids: Iterable[int]) -> np.ndarray:
    """``(n, 4)`` RGBA of ``ids`` in the layer's own colormap."""
    arr = np.fromiter((int(i) for i in ids), dtype=np.uint64)
    if not arr.size:
        return np.zeros((0, 4), np.float32)
    colors = np.asarray(original_colormap(layer).map(arr), np.float32).reshape(-1, 4)
    return colors


def show_only(layer: Any, ids: Iterable[int]) -> None:
    """Show only ``ids`` (in their own colours) on a Labels layer; no ids: show all."""
    wanted = tuple(dict.fromkeys(int(i) for i in ids))
    if not wanted:
        show_all(layer)
        return
    original = original_colormap(layer)
    colors = label_colors(layer, wanted)
    background = original.background_value
    color_dict: dict[int | None, np.ndarray] = {None: _TRANSPARENT, background: _TRANSPARENT}
    for i, c in zip(wanted, colors, strict=True):
        if i != background:
            color_dict[i] = c
    cmap = selection_colormap(color_dict, background)
    layer.colormap = cmap
    _states[layer] = _State(original, layer.colormap, wanted)


def show_all(layer: Any) -> None:
    """Show every segment again (the layer's own colormap)."""
    state = _states.pop(layer, None)
    if state is not None and layer.colormap is state.ours:
        layer.colormap = state.original

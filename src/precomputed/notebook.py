"""A slice viewer for notebooks where Qt is not available (a remote JupyterHub): one z
plane of an image and/or a segmentation overlay, a z slider, a scale choice, reading
lazily through the driver (only the chunks of the plane shown).

:class:`SliceViewer` is the model (no widgets: ``render()`` gives the RGB picture,
``png()`` its bytes); :meth:`SliceViewer.widget` wraps it in ipywidgets (the
``notebook`` extra). ``view(image, segmentation)`` does both. No napari, no Qt.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .driver import open as open_volume
from .driver import open_scale
from .errors import InvalidArgumentError, UnimplementedError
from .reprs import label_colors, png_bytes, to_uint8
from .volume import Volume

__all__ = ["SliceViewer", "view", "DEFAULT_MAX_PIXELS"]

#: The default scale is the finest whose plane has at most this many pixels.
DEFAULT_MAX_PIXELS = 1024 * 1024

Source = Volume | str | Mapping[str, Any]


def _scales(source: Source) -> list[Volume]:
    vol = source if isinstance(source, Volume) else open_volume(source if isinstance(source, str) else dict(source))
    vol = vol.whole()
    return [vol if i == vol.scale_index else open_scale(vol, i) for i in range(len(vol.metadata.scales))]


class SliceViewer:
    """One z plane of ``image`` (grey levels, or RGB with three channels) with
    ``segmentation`` over it (label colours at ``opacity``), either alone.

    ``z`` is a plane of the finest scale of the first volume given (absolute voxel
    coordinates, default: the middle); ``scale`` indexes that volume's scales (default:
    the finest whose plane has at most ``max_pixels`` pixels). The segmentation is read
    at its scale nearest in resolution and placed by position in nm, so the two overlay
    exactly whatever their voxel sizes and offsets.
    """

    def __init__(
        self,
        image: Source | None = None,
        segmentation: Source | None = None,
        *,
        z: int | None = None,
        scale: int | None = None,
        opacity: float = 0.5,
        overlay: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if image is None and segmentation is None:
            raise InvalidArgumentError("give an image, a segmentation, or both")
        self.image = _scales(image) if image is not None else None
        self.segmentation = _scales(segmentation) if segmentation is not None else None
        base = self.image or self.segmentation
        assert base is not None
        self.base: list[Volume] = base
        finest = base[0]
        self.z_range = (finest.domain.inclusive_min[2], finest.domain.exclusive_max[2])
        self._z = (self.z_range[0] + self.z_range[1] - 1) // 2 if z is None else int(z)
        self._check_z(self._z)
        if scale is None:
            scale = next(
                (i for i, v in enumerate(base) if v.shape[0] * v.shape[1] <= max_pixels),
                len(base) - 1,
            )
        self._scale = self._check_scale(scale)
        self.opacity = float(opacity)
        self.overlay = bool(overlay)
        self._limits: dict[int, tuple[float, float]] = {}

    # -- state -------------------------------------------------------------------------
    def _check_z(self, z: int) -> int:
        lo, hi = self.z_range
        if not lo <= z < hi:
            raise InvalidArgumentError(f"z must be in [{lo}, {hi}) (the finest scale's planes), not {z}")
        return z

    def _check_scale(self, scale: int) -> int:
        n = len(self.base)
        if not 0 <= int(scale) < n:
            raise InvalidArgumentError(f"scale must be in [0, {n}), not {scale}")
        return int(scale)

    @property
    def z(self) -> int:
        return self._z

    @z.setter
    def z(self, value: int) -> None:
        self._z = self._check_z(int(value))

    @property
    def scale(self) -> int:
        return self._scale

    @scale.setter
    def scale(self, value: int) -> None:
        self._scale = self._check_scale(value)

    def scale_labels(self) -> list[tuple[str, int]]:
        """``(label, index)`` of every scale, for a menu."""
        return [
            (f"{i}: {v.scale.key} ({'x'.join(f'{r:g}' for r in v.resolution)} nm, "
             f"{v.shape[0]}x{v.shape[1]})", i)
            for i, v in enumerate(self.base)
        ]

    # -- reading -----------------------------------------------------------------------
    def _plane_box(self, vol: Volume) -> tuple[int, int, int, int, int]:
        """x0, x1, y0, y1 and the z plane of ``vol`` at the current z (by position)."""
        r0 = self.base[0].resolution[2]
        zc = math.floor((self._z + 0.5) * r0 / vol.resolution[2])
        dmin, dmax = vol.domain.inclusive_min, vol.domain.exclusive_max
        zc = min(max(zc, dmin[2]), dmax[2] - 1)
        return dmin[0], dmax[0], dmin[1], dmax[1], zc

    def base_plane(self) -> np.ndarray:
        """The current plane of the shown scale, (c, y, x), as stored."""
        vol = self.base[self._scale]
        x0, x1, y0, y1, z = self._plane_box(vol)
        return vol[x0:x1, y0:y1, z : z + 1, :].read_czyx()[:, 0]

    def labels(self) -> np.ndarray | None:
        """The segmentation's ids on the shown plane's pixels (y, x), or ``None``."""
        if self.segmentation is None:
            return None
        shown = self.base[self._scale]
        if self.base is self.segmentation:
            return self.base_plane()[0]
        rx = shown.resolution[0]
        seg = min(self.segmentation, key=lambda v: abs(math.log(v.resolution[0] / rx)))
        x0, x1, y0, y1, _ = self._plane_box(shown)
        # pixel centres of the shown plane in nm, then the segmentation voxels under them
        xs = np.floor((np.arange(x0, x1) + 0.5) * shown.resolution[0] / seg.resolution[0]).astype(np.int64)
        ys = np.floor((np.arange(y0, y1) + 0.5) * shown.resolution[1] / seg.resolution[1]).astype(np.int64)
        _, _, _, _, zs = self._plane_box(seg)
        smin, smax = seg.domain.inclusive_min, seg.domain.exclusive_max
        inside_x = (xs >= smin[0]) & (xs < smax[0])
        inside_y = (ys >= smin[1]) & (ys < smax[1])
        out = np.zeros((len(ys), len(xs)), seg.dtype)
        if not inside_x.any() or not inside_y.any():
            return out
        bx0, bx1 = int(xs[inside_x].min()), int(xs[inside_x].max()) + 1
        by0, by1 = int(ys[inside_y].min()), int(ys[inside_y].max()) + 1
        block = seg[bx0:bx1, by0:by1, zs : zs + 1, 0].read()[:, :, 0]  # x, y
        picked = block[np.ix_(xs[inside_x] - bx0, ys[inside_y] - by0)].T  # y, x
        out[np.ix_(inside_y, inside_x)] = picked
        return out

    def limits(self) -> tuple[float, float]:
        """The grey-level window of the shown scale: set on its first plane (1st and 99th
        percentiles), then kept, so moving through z does not flicker."""
        if self._scale not in self._limits:
            plane = self.base_plane().astype(np.float32)
            lo, hi = (float(v) for v in np.percentile(plane, (1, 99)))
            self._limits[self._scale] = (lo, hi if hi > lo else lo + 1)
        return self._limits[self._scale]

    def set_limits(self, low: float, high: float) -> None:
        """Fix the grey-level window of the shown scale."""
        self._limits[self._scale] = (float(low), float(high))

    def render(self) -> np.ndarray:
        """The picture: (y, x, 3) uint8, the image in grey (or RGB) with the segmentation
        blended over it where its id is not 0."""
        if self.image is not None:
            planes = self.base_plane()
            lims = self.limits()
            if planes.shape[0] == 3:
                rgb = np.stack([to_uint8(p, lims) for p in planes], axis=-1)
            else:
                rgb = np.repeat(to_uint8(planes[0], lims)[..., None], 3, axis=-1)
            ids = self.labels() if self.overlay else None
            if ids is not None:
                colors = label_colors(ids).astype(np.float32)
                a = np.where(ids != 0, self.opacity, 0.0)[..., None]
                rgb = (rgb * (1 - a) + colors * a + 0.5).astype(np.uint8)
            return np.ascontiguousarray(rgb)
        ids = self.labels()
        assert ids is not None
        return np.ascontiguousarray(label_colors(ids))

    def png(self) -> bytes:
        return png_bytes(self.render())

    # -- the widget --------------------------------------------------------------------
    def widget(self) -> Any:
        """ipywidgets: the picture, a z slider, a scale menu and (with a segmentation
        and an image) an overlay switch and its opacity. Changing one redraws."""
        try:
            import ipywidgets as w
        except ImportError as e:
            raise UnimplementedError(
                "the notebook viewer needs ipywidgets: pip install 'napari-precomputed[notebook]'"
            ) from e
        picture = w.Image(value=self.png(), format="png")
        lo, hi = self.z_range
        z = w.IntSlider(value=self._z, min=lo, max=hi - 1, description="z", continuous_update=False)
        scale = w.Dropdown(options=self.scale_labels(), value=self._scale, description="scale")
        controls: list[Any] = [z, scale]
        status = w.HTML(value="")

        def redraw() -> None:
            try:
                picture.value = self.png()
                status.value = ""
            except Exception as e:  # a failed read says why; the widget stays usable
                status.value = f"<span style='color:#b00'>{' '.join(str(e).split())}</span>"

        def on_z(change: Mapping[str, Any]) -> None:
            self.z = change["new"]
            redraw()

        def on_scale(change: Mapping[str, Any]) -> None:
            self.scale = change["new"]
            redraw()

        z.observe(on_z, names="value")
        scale.observe(on_scale, names="value")
        if self.image is not None and self.segmentation is not None:
            show = w.Checkbox(value=self.overlay, description="segmentation")
            alpha = w.FloatSlider(value=self.opacity, min=0.0, max=1.0, step=0.05, description="opacity")

            def on_show(change: Mapping[str, Any]) -> None:
                self.overlay = bool(change["new"])
                redraw()

            def on_alpha(change: Mapping[str, Any]) -> None:
                self.opacity = float(change["new"])
                redraw()

            show.observe(on_show, names="value")
            alpha.observe(on_alpha, names="value")
            controls += [show, alpha]
        box = w.VBox([picture, w.HBox(controls[:2]), w.HBox(controls[2:]), status])
        box.viewer = self  # the model, for scripts and tests
        box.picture, box.z_slider, box.scale_menu = picture, z, scale
        if len(controls) > 2:
            box.overlay_box, box.opacity_slider = controls[2], controls[3]
        return box


def view(image: Source | None = None, segmentation: Source | None = None, **options: Any) -> Any:
    """A :class:`SliceViewer` widget for the notebook cell: ``view(image_url, seg_url)``."""
    return SliceViewer(image, segmentation, **options).widget()

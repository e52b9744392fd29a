"""Rich notebook display of volumes and views (``_repr_html_``): a summary line, the
scales table (size, resolution, chunks, encoding, sharding in words) and a thumbnail
of the middle z plane of the view's region, read from the coarsest scale as an inline
PNG.

The coarsest scale is opened by the function the driver registers
(:func:`register_scale_opener`, done when ``precomputed.driver`` is imported): this
module sits below the driver, with the arrays. Display never raises: a failed read
shows its one-line reason instead of the thumbnail.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "register_scale_opener",
    "sharding_in_words",
    "volume_html",
    "thumbnail_png",
    "png_bytes",
    "label_colors",
    "to_uint8",
    "THUMBNAIL_PIXELS",
]

#: Longest side of a thumbnail, in pixels.
THUMBNAIL_PIXELS = 256
#: Planes of more voxels than this are not read for a thumbnail.
_MAX_PLANE_VOXELS = 4096 * 4096

_opener: Callable[[Any, int], Any] | None = None


def register_scale_opener(opener: Callable[[Any, int], Any]) -> None:
    """``opener(volume, index)`` opens another scale of ``volume`` (the driver's
    ``open_scale``)."""
    global _opener
    _opener = opener


def sharding_in_words(scale: Any) -> str:
    """``"-"`` (one object per chunk) or e.g. ``"32 shard files x 8 minishards"``: the
    shard files the scale's chunks fall into (``"up to N"`` when shards are not boxes of
    chunks, as with the murmurhash hash) and the minishards in each."""
    from .sharding import morton_bits, shard_shape_in_chunks

    sd = scale.sharding
    if sd is None:
        return "-"
    chunk = scale.chunk_sizes[0]
    grid = [-(-n // c) for n, c in zip(scale.size, chunk, strict=True)]
    bits = morton_bits(scale.size, chunk)
    box = shard_shape_in_chunks(sd, bits, grid)
    if box is not None:
        files = math.prod(-(-g // b) for g, b in zip(grid, box, strict=True))
        count = f"{files} shard file{'s' if files != 1 else ''}"
    else:
        count = f"up to {min(2**sd.shard_bits, math.prod(grid))} shard files"
    mini = 2**sd.minishard_bits
    return f"{count} x {mini} minishard{'s' if mini != 1 else ''}"


def label_colors(ids: np.ndarray) -> np.ndarray:
    """A stable, well-spread RGB colour per label id (uint8, ``ids.shape + (3,)``); 0 is
    black."""
    v = ids.astype(np.uint64, copy=False)
    with np.errstate(over="ignore"):
        h = v * np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(29)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(32)
    rgb = np.stack([(h >> np.uint64(s)) & np.uint64(0xFF) for s in (0, 8, 16)], axis=-1)
    out = (rgb.astype(np.uint16) // 2 + 96).astype(np.uint8)  # bright, never black
    out[v == 0] = 0
    return out


def to_uint8(plane: np.ndarray, limits: tuple[float, float] | None = None) -> np.ndarray:
    """Grey levels 0-255 of an image plane: ``limits`` (low, high), or its 1st and 99th
    percentiles."""
    p = plane.astype(np.float32, copy=False)
    if limits is None:
        finite = p[np.isfinite(p)]
        if finite.size == 0:
            return np.zeros(p.shape, np.uint8)
        lo, hi = (float(v) for v in np.percentile(finite, (1, 99)))
    else:
        lo, hi = limits
    if hi <= lo:
        hi = lo + 1
    return (np.clip((p - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """PNG of an RGB (y, x, 3) uint8 picture."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _coarse_box(
    vol: Any, coarse: Any, start: Sequence[int], stop: Sequence[int]
) -> tuple[list[int], list[int]]:
    """The view's x, y box and middle z plane in the coarse scale's voxels (by position
    in nm)."""
    r0, rc = vol.resolution, coarse.resolution
    lo_c = coarse.scale.voxel_offset
    hi_c = [o + n for o, n in zip(lo_c, coarse.scale.size, strict=True)]
    lo, hi = [], []
    for d in range(3):
        a = math.floor(start[d] * r0[d] / rc[d])
        b = math.ceil(stop[d] * r0[d] / rc[d])
        a, b = max(a, lo_c[d]), min(max(b, a + 1), hi_c[d])
        lo.append(a)
        hi.append(max(b, a + 1))
    zmid = (start[2] + stop[2] - 1) // 2
    z = min(max(math.floor(zmid * r0[2] / rc[2]), lo_c[2]), hi_c[2] - 1)
    lo[2], hi[2] = z, z + 1
    return lo, hi


def thumbnail_png(vol: Any, start: Sequence[int], stop: Sequence[int]) -> bytes:
    """PNG of the middle z plane of the box ``[start, stop)`` (x, y, z, absolute voxels
    of ``vol``'s scale), read from the volume's coarsest scale; segmentations in label
    colours, images in grey levels (channels 0-2 as RGB when there are three)."""
    n = len(vol.metadata.scales)
    coarse = vol
    if _opener is not None and vol.scale_index != n - 1:
        coarse = _opener(vol, n - 1)
    lo, hi = _coarse_box(vol, coarse, start, stop)
    if (hi[0] - lo[0]) * (hi[1] - lo[1]) > _MAX_PLANE_VOXELS:
        raise ValueError("the coarsest scale's plane is too large for a thumbnail")
    c0, c1 = start[3], stop[3]
    czyx = coarse.whole()[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2], c0:c1].read_czyx()
    planes = czyx[:, 0]  # c, y, x
    step = max(1, math.ceil(max(planes.shape[1:]) / THUMBNAIL_PIXELS))
    planes = planes[:, ::step, ::step]
    if vol.metadata.type == "segmentation":
        rgb = label_colors(planes[0])
    elif planes.shape[0] == 3:
        rgb = np.stack([to_uint8(p) for p in planes], axis=-1)
    else:
        rgb = np.repeat(to_uint8(planes[0])[..., None], 3, axis=-1)
    return png_bytes(np.ascontiguousarray(rgb))


def volume_html(vol: Any, start: Sequence[int], stop: Sequence[int], thumbnail: bool = True) -> str:
    """The HTML of a volume or view: where it is, its domain, the scales (the open one
    marked) and a thumbnail."""
    m = vol.metadata
    esc = html.escape
    where = f"{vol.kvstore.url}{vol.path}"
    head = (
        f"<b>precomputed.Volume</b> <code>{esc(where)}</code><br>"
        f"{esc(m.type)} &middot; {esc(str(vol.dtype))} &middot; {m.num_channels} channel(s) "
        f"&middot; scale {vol.scale_index} ({esc(vol.scale.key)}) &middot; domain "
        f"<code>{esc(repr(vol.domain))}</code>"
    )
    cells = ["#", "key", "size (xyz)", "voxel offset", "resolution (nm)", "chunk", "encoding", "sharding"]
    rows = ["<tr>" + "".join(f"<th>{c}</th>" for c in cells) + "</tr>"]
    for i, s in enumerate(m.scales):
        style = ' style="font-weight:bold"' if i == vol.scale_index else ""
        vals = [
            str(i), s.key, "x".join(map(str, s.size)), ",".join(map(str, s.voxel_offset)),
            ",".join(f"{r:g}" for r in s.resolution), "x".join(map(str, s.chunk_sizes[0])),
            s.encoding, sharding_in_words(s),
        ]
        rows.append(f"<tr{style}>" + "".join(f"<td>{esc(v)}</td>" for v in vals) + "</tr>")
    table = '<table class="precomputed-scales">' + "".join(rows) + "</table>"
    thumb = ""
    if thumbnail:
        try:
            data = base64.b64encode(thumbnail_png(vol, start, stop)).decode()
            thumb = (
                f'<img class="precomputed-thumbnail" src="data:image/png;base64,{data}" '
                'style="image-rendering:pixelated;min-width:128px" '
                'title="middle z plane, coarsest scale">'
            )
        except Exception as e:  # display never fails; it says why there is no picture
            thumb = f"<i>no thumbnail: {esc(' '.join(str(e).split()) or type(e).__name__)}</i>"
    return (
        '<div class="precomputed-volume" style="display:flex;gap:1em;align-items:flex-start">'
        f"<div>{head}{table}</div><div>{thumb}</div></div>"
    )

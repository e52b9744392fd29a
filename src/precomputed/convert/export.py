"""A Precomputed scale out to zarr: :func:`to_zarr`.

The array is ``(c, z, y, x)`` (napari's and OME-Zarr's order), chunked like the scale,
written block by block (only a block in memory). Zarr v3 by default, with
``dimension_names`` and OME-Zarr 0.5 ``multiscales`` metadata on the enclosing group
(``ome=True``), so napari-ome-zarr and other OME-Zarr readers place it in nanometres.
A failure removes what was written.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..create import DEFAULT_BLOCK_BYTES
from ..create.blocks import Cancel, Progress, Tracker, plan_blocks
from ..driver import open as open_volume
from ..errors import AlreadyExistsError, InvalidArgumentError, UnimplementedError
from ..volume import Volume

__all__ = ["to_zarr"]


def _ome_attrs(vol: Volume, name: str) -> dict[str, Any]:
    res = list(vol.resolution)[::-1]
    off = [o * r for o, r in zip(vol.scale.voxel_offset[::-1], res, strict=True)]
    return {
        "ome": {
            "version": "0.5",
            "multiscales": [
                {
                    "name": name,
                    "axes": [
                        {"name": "c", "type": "channel"},
                        *({"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"),
                    ],
                    "datasets": [
                        {
                            "path": "0",
                            "coordinateTransformations": [
                                {"type": "scale", "scale": [1.0, *res]},
                                {"type": "translation", "translation": [0.0, *off]},
                            ],
                        }
                    ],
                }
            ],
        }
    }


def to_zarr(
    source: Volume | str,
    destination: str | Path,
    *,
    scale: int = 0,
    zarr_format: int = 3,
    ome: bool = True,
    overwrite: bool = False,
    progress: Progress | None = None,
    cancel: Cancel = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> Any:
    """Write one scale of a volume (a :class:`Volume`, or a URL/path and ``scale``) to a
    new zarr array at ``destination`` (a local path); returns the zarr array.

    With ``ome`` the destination is an OME-Zarr image group whose dataset ``0`` is the
    array (voxel size and offset in nm); without, it is the array itself, with the
    scale's ``resolution`` and ``voxel_offset`` in its attributes.
    """
    try:
        import zarr
    except ImportError as e:  # pragma: no cover - the convert extra
        raise UnimplementedError(
            "writing zarr needs the zarr package: pip install 'napari-precomputed[convert]'"
        ) from e
    if zarr_format not in (2, 3):
        raise InvalidArgumentError(f"zarr_format must be 2 or 3, not {zarr_format!r}")
    if ome and zarr_format != 3:
        raise InvalidArgumentError("OME-Zarr 0.5 metadata needs zarr_format=3 (or ome=False)")
    vol = source if isinstance(source, Volume) else open_volume(source, scale_index=scale)
    vol = vol.whole()
    dest = Path(str(destination).removeprefix("file://"))
    if dest.exists():
        if not overwrite:
            raise AlreadyExistsError(
                f"{dest} already exists: choose a new destination, or overwrite it "
                "(--overwrite, overwrite=True)"
            )
        shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
    x, y, z, c = vol.shape
    cx, cy, cz = vol.handle.chunk_size
    attrs = {
        "precomputed": {
            "source": vol.kvstore.url + vol.path,
            "scale": vol.scale.key,
            "resolution": list(vol.resolution),
            "voxel_offset": list(vol.scale.voxel_offset),
            "type": vol.metadata.type,
        }
    }
    try:
        kwargs: dict[str, Any] = {
            "shape": (c, z, y, x),
            "chunks": (c, cz, cy, cx),
            "dtype": vol.dtype,
            "zarr_format": zarr_format,
            "fill_value": 0,
        }
        if zarr_format == 3:
            kwargs["dimension_names"] = ("c", "z", "y", "x")
        if ome:
            group = zarr.open_group(str(dest), mode="w-", zarr_format=3)
            group.attrs.update(_ome_attrs(vol, vol.scale.key))
            kwargs.pop("zarr_format")
            arr = group.create_array("0", **kwargs)
        else:
            arr = zarr.create_array(str(dest), **kwargs)
        arr.attrs.update(attrs)
        bpv = vol.dtype.itemsize * c * 2
        groups = plan_blocks(vol.scale, (cx, cy, cz), bpv, block_bytes)
        boxes = [b for g in groups for b in g]
        tracker = Tracker(len(boxes), progress, cancel)
        ox, oy, oz = vol.scale.voxel_offset
        for lo, hi in boxes:
            tracker.check()
            block = vol[
                ox + lo[0] : ox + hi[0], oy + lo[1] : oy + hi[1], oz + lo[2] : oz + hi[2], :
            ].read_czyx()
            arr[:, lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]] = block
            tracker.step()
    except BaseException:
        if dest.exists():
            shutil.rmtree(dest, ignore_errors=True)
        raise
    return arr

"""What ``precomputed convert`` reads: TIFF stacks, zarr / OME-Zarr arrays and numpy
``.npy`` files, each opened as a lazy array (nothing is loaded until a block is sliced)
with its axes and, where the file says so, its voxel size and offset.

A :class:`Source` is an array-like ``create.write_array`` and dask accept: ``shape``,
``dtype``, basic slicing that returns numpy. Sources pickle as their path, so dask
workers reopen them.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError, NotFoundError, UnimplementedError

__all__ = [
    "Source",
    "TiffPages",
    "open_source",
    "open_tiff",
    "open_zarr",
    "open_npy",
    "source_kind",
    "describe",
    "TIFF_SUFFIXES",
]

TIFF_SUFFIXES = (".tif", ".tiff")

#: OME-Zarr / NGFF space units in nanometres.
_UNIT_NM = {
    "angstrom": 0.1,
    "nanometer": 1.0,
    "micrometer": 1e3,
    "millimeter": 1e6,
    "centimeter": 1e7,
    "meter": 1e9,
}


@dataclass
class Source:
    """A lazy source array: ``axes`` names its dimensions (``x``, ``y``, ``z``, ``c``),
    ``resolution`` (nm) and ``voxel_offset`` (voxels), both x, y, z, come from the file's
    metadata (OME-Zarr) or are ``None``."""

    array: Any
    axes: str
    path: str
    kind: str
    resolution: tuple[float, float, float] | None = None
    voxel_offset: tuple[int, int, int] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    def size_xyzc(self) -> tuple[int, int, int, int]:
        s = self.shape
        return tuple(s[self.axes.index(a)] if a in self.axes else 1 for a in "xyzc")  # type: ignore[return-value]


class TiffPages:
    """The pages of one or more TIFF files as a lazy ``(z, y, x[, c])`` array.

    Slicing decodes only the pages its z range touches; the most recently decoded pages
    are kept (up to ``cache_bytes``), since a volume is written tile by tile through each
    z range and every tile of a range needs the same pages.
    """

    def __init__(self, files: Sequence[str], cache_bytes: int = 512 * 1024 * 1024) -> None:
        import tifffile

        self.files = [str(f) for f in files]
        self.cache_bytes = cache_bytes
        self._pages: list[tuple[int, int]] = []  # (file, page within its series)
        plane: tuple[int, ...] | None = None
        dtype = None
        for i, name in enumerate(self.files):
            with tifffile.TiffFile(name) as tif:
                series = tif.series[0]
                axes = series.axes
                shape = tuple(series.shape)
                if axes and axes[-1] == "S":  # samples per pixel: channels
                    page_shape = shape[-3:]
                else:
                    page_shape = shape[-2:]
                n = int(np.prod(shape[: len(shape) - len(page_shape)], dtype=np.int64))
                if plane is None:
                    plane, dtype = page_shape, series.dtype
                elif page_shape != plane or series.dtype != dtype:
                    raise InvalidArgumentError(
                        f"{name}: pages of shape {page_shape} and type {series.dtype} differ "
                        f"from the first file's {plane} {dtype}; a stack needs equal pages"
                    )
                self._pages.extend((i, j) for j in range(n))
        if plane is None or dtype is None:
            raise InvalidArgumentError("no TIFF pages to read")
        self.shape: tuple[int, ...] = (len(self._pages), *plane)
        self.dtype = np.dtype(dtype)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (TiffPages, (self.files, self.cache_bytes))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _page(self, z: int) -> np.ndarray:
        import tifffile

        with self._lock:
            hit = self._cache.get(z)
            if hit is not None:
                self._cache.move_to_end(z)
                return hit
        f, j = self._pages[z]
        with tifffile.TiffFile(self.files[f]) as tif:
            page = np.asarray(tif.series[0].pages[j].asarray())
        page = page.reshape(self.shape[1:])
        with self._lock:
            self._cache[z] = page
            limit = max(1, self.cache_bytes // max(1, page.nbytes))
            while len(self._cache) > limit:
                self._cache.popitem(last=False)
        return page

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        zkey, rest = key[0], key[1:]
        if isinstance(zkey, slice):
            zs = range(*zkey.indices(self.shape[0]))
            if not zs:
                return np.empty((0, *self.shape[1:]), self.dtype)[(slice(None), *rest)]
            return np.stack([self._page(z)[rest] for z in zs])
        z = int(zkey)
        return self._page(z % self.shape[0] if z < 0 else z)[rest]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self[:]
        return out.astype(dtype) if dtype is not None else out


def source_kind(path: str | Path) -> str:
    """``"tiff"``, ``"tiff-stack"`` (a folder of TIFF files), ``"zarr"``, ``"npy"`` or
    ``"precomputed"`` (a folder with an ``info`` file, or a URL)."""
    s = str(path)
    if "://" in s and not s.startswith("file://"):
        return "zarr" if s.rstrip("/").endswith(".zarr") else "precomputed"
    p = Path(s.removeprefix("file://"))
    low = p.name.lower()
    if p.is_file():
        if low.endswith(TIFF_SUFFIXES):
            return "tiff"
        if low.endswith(".npy"):
            return "npy"
        if low == "info":
            return "precomputed"
        raise InvalidArgumentError(
            f"{s}: unknown file type (convert reads .tif/.tiff, .npy, zarr folders and "
            "Precomputed volumes)"
        )
    if p.is_dir():
        if (p / "info").is_file():
            return "precomputed"
        if any((p / m).is_file() for m in ("zarr.json", ".zarray", ".zgroup", ".zattrs")):
            return "zarr"
        if any(c.name.lower().endswith(TIFF_SUFFIXES) for c in p.iterdir()):
            return "tiff-stack"
        raise InvalidArgumentError(
            f"{s}: the folder holds no info file (Precomputed), no zarr metadata and no "
            ".tif/.tiff files"
        )
    raise NotFoundError(f"{s}: no such file or folder")


def _default_axes(ndim: int, what: str) -> str:
    axes = {2: "yx", 3: "zyx", 4: "czyx"}.get(ndim)
    if axes is None:
        raise InvalidArgumentError(
            f"{what} has {ndim} dimensions; give its axes (e.g. --axes zyxc) to say which are "
            "x, y, z and channel"
        )
    return axes


def _check_axes(axes: str, ndim: int, what: str) -> str:
    axes = axes.lower()
    if len(axes) != ndim or len(set(axes)) != ndim or set(axes) - set("xyzc"):
        raise InvalidArgumentError(
            f"axes {axes!r} for {what} of {ndim} dimensions: name each dimension once with "
            "x, y, z or c"
        )
    return axes


def open_tiff(path: str | Path, axes: str | None = None) -> Source:
    """A TIFF file (every page a z plane) or a folder of TIFF files (sorted by name, each
    file's pages in turn) as a lazy source. RGB(A) samples become channels."""
    p = Path(str(path).removeprefix("file://"))
    if p.is_dir():
        files = sorted(
            (c for c in p.iterdir() if c.name.lower().endswith(TIFF_SUFFIXES)),
            key=lambda c: c.name,
        )
        if not files:
            raise InvalidArgumentError(f"{p}: no .tif/.tiff files in the folder")
        kind = "tiff-stack"
    elif p.is_file():
        files = [p]
        kind = "tiff"
    else:
        raise NotFoundError(f"{p}: no such file or folder")
    pages = TiffPages([str(f) for f in files])
    default = "zyxc" if pages.ndim == 4 else "zyx"
    ax = _check_axes(axes, pages.ndim, str(p)) if axes else default
    return Source(pages, ax, str(p), kind)


def open_npy(path: str | Path, axes: str | None = None) -> Source:
    """A numpy ``.npy`` file, memory-mapped (read as it is written, not loaded)."""
    p = Path(str(path).removeprefix("file://"))
    if not p.is_file():
        raise NotFoundError(f"{p}: no such file")
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise InvalidArgumentError(f"{p}: not a numpy array file ({e})") from e
    ax = _check_axes(axes, arr.ndim, str(p)) if axes else _default_axes(arr.ndim, str(p))
    return Source(arr, ax, str(p), "npy")


def _ome_multiscales(attrs: dict[str, Any]) -> list[dict[str, Any]] | None:
    ome = attrs.get("ome")
    if isinstance(ome, dict) and isinstance(ome.get("multiscales"), list):
        return ome["multiscales"]  # NGFF 0.5 (zarr v3)
    ms = attrs.get("multiscales")
    return ms if isinstance(ms, list) else None  # NGFF 0.4 and before


def _ome_geometry(
    ms: dict[str, Any], dataset: dict[str, Any], names: list[str]
) -> tuple[tuple[float, float, float] | None, tuple[int, int, int] | None, list[str]]:
    """Resolution (nm) and voxel offset (x, y, z) of an OME-Zarr dataset."""
    notes: list[str] = []
    scale = [1.0] * len(names)
    translation = [0.0] * len(names)
    for transforms in (dataset.get("coordinateTransformations"), ms.get("coordinateTransformations")):
        for t in transforms or []:
            if t.get("type") == "scale" and "scale" in t:
                scale = [a * b for a, b in zip(scale, t["scale"], strict=False)]
            elif t.get("type") == "translation" and "translation" in t:
                translation = [a + b for a, b in zip(translation, t["translation"], strict=False)]
    units = []
    for ax in ms.get("axes", []):
        units.append(ax.get("unit") if isinstance(ax, dict) else None)
    res, off = [], []
    for a in "xyz":
        if a not in names:
            res.append(1.0)
            off.append(0)
            continue
        i = names.index(a)
        unit = units[i] if i < len(units) else None
        factor = _UNIT_NM.get(str(unit), 1.0) if unit else 1.0
        if unit and unit not in _UNIT_NM:
            notes.append(f"axis {a}: unit {unit!r} is not a length; taken as nanometres")
        r = float(scale[i]) * factor
        res.append(r)
        o = float(translation[i]) * factor / r if r else 0.0
        if abs(o - round(o)) > 1e-6:
            notes.append(f"axis {a}: translation {translation[i]} is not whole voxels; rounded")
        off.append(int(round(o)))
    return (res[0], res[1], res[2]), (off[0], off[1], off[2]), notes


def open_zarr(path: str | Path, axes: str | None = None, dataset: int | str = 0) -> Source:
    """A zarr array (v2 or v3), or an OME-Zarr image group: its multiscales ``dataset``
    (0: the finest), with the voxel size and offset from its coordinate transformations
    (converted to nm) and axes from its ``axes`` (a time axis must have one point)."""
    try:
        import zarr
    except ImportError as e:  # pragma: no cover - the convert extra
        raise UnimplementedError(
            "reading zarr needs the zarr package: pip install 'napari-precomputed[convert]'"
        ) from e
    where = str(path)
    try:
        node = zarr.open(where.removeprefix("file://"), mode="r")
    except Exception as e:
        raise InvalidArgumentError(f"{where}: not a zarr array or group ({e})") from e
    res = off = None
    notes: list[str] = []
    if isinstance(node, zarr.Group):
        multiscales = _ome_multiscales(dict(node.attrs))
        if not multiscales:
            raise InvalidArgumentError(
                f"{where}: a zarr group without OME-Zarr multiscales metadata; give the "
                "path of an array inside it"
            )
        ms = multiscales[0]
        datasets = ms.get("datasets", [])
        if isinstance(dataset, str):
            chosen = next((d for d in datasets if d.get("path") == dataset), None)
        else:
            chosen = datasets[dataset] if -len(datasets) <= dataset < len(datasets) else None
        if chosen is None:
            raise InvalidArgumentError(
                f"{where}: no multiscales dataset {dataset!r} (there are "
                f"{[d.get('path') for d in datasets]})"
            )
        arr: Any = node[chosen["path"]]
        names = [
            str(a.get("name") if isinstance(a, dict) else a).lower() for a in ms.get("axes", [])
        ]
        if names:
            res, off, notes = _ome_geometry(ms, chosen, names)
        if names and not axes:
            keep = []
            index: list[Any] = []
            for i, n in enumerate(names):
                if n in ("x", "y", "z", "c"):
                    keep.append(n)
                    index.append(slice(None))
                elif arr.shape[i] == 1:
                    index.append(0)
                else:
                    raise UnimplementedError(
                        f"{where}: axis {n!r} has {arr.shape[i]} points; convert one point of "
                        "it (a volume has only x, y, z and channels)"
                    )
            if len(keep) != len(names):
                arr = _Squeezed(arr, tuple(index))
            axes = "".join(keep)
    else:
        arr = node
        dims = getattr(getattr(arr, "metadata", None), "dimension_names", None)
        if not axes and dims and all(d and str(d).lower() in "xyzc" for d in dims):
            axes = "".join(str(d).lower() for d in dims)
    ax = _check_axes(axes, len(arr.shape), where) if axes else _default_axes(len(arr.shape), where)
    return Source(arr, ax, where, "zarr", res, off, notes)


class _Squeezed:
    """An array with some dimensions fixed at one index (an OME-Zarr time point)."""

    def __init__(self, array: Any, index: tuple[Any, ...]) -> None:
        self.array = array
        self.index = index
        self.shape = tuple(n for n, i in zip(array.shape, index, strict=True) if isinstance(i, slice))
        self.dtype = array.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        it = iter(key)
        full = tuple(next(it, slice(None)) if isinstance(i, slice) else i for i in self.index)
        return np.asarray(self.array[full])


def open_source(
    path: str | Path, axes: str | None = None, kind: str | None = None
) -> Source:
    """Open ``path`` by its kind (see :func:`source_kind`)."""
    kind = kind or source_kind(path)
    if kind in ("tiff", "tiff-stack"):
        return open_tiff(path, axes)
    if kind == "npy":
        return open_npy(path, axes)
    if kind == "zarr":
        return open_zarr(path, axes)
    raise InvalidArgumentError(
        f"{path}: a {kind} source is not an array file; use `precomputed copy` (or "
        "`precomputed convert --to zarr` to export a scale)"
    )


def describe(source: Source) -> str:
    """One line: what was opened."""
    extra = ""
    if source.resolution is not None:
        extra = f", resolution {json.dumps(list(source.resolution))} nm"
    return f"{source.kind} {source.path}: shape {source.shape} ({source.axes}), {source.dtype}{extra}"

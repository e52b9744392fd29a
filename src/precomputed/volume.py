"""``Volume``: one scale of a Precomputed volume as a lazy 4-D array (x, y, z, channel).

Indexing returns cheap views in absolute voxel coordinates, like TensorStore. I/O is
explicit: ``read()`` / ``np.asarray`` gathers the needed chunks concurrently (through the
shared decoded-chunk cache, :mod:`.readpath`), ``vol[...] = x`` writes with
read-modify-write of partial chunks, grouped by shard (:mod:`.writepath`). Arrays come
back laid out as chunks are stored: Fortran order over (x, y, z, channel), i.e. C order
over (channel, z, y, x), so napari's z, y, x view (:mod:`.views`) is a free transpose.

:func:`read_many` reads many views as one batch: the analogue of many TensorStore read
futures at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import dask, readpath, reprs, writepath
from . import sharding as sh
from .chunkstore import CommitStats
from .context import Context
from .errors import InvalidArgumentError, OutOfRangeError
from .internal.arraylike import ArrayLike
from .internal.geometry import Box
from .internal.selection import normalize_index
from .kvstore import KvStore
from .scale import ChunkOverlay, OpenedScale
from .schema import ChunkLayout
from .transaction import Transaction
from .views import ZyxArray

__all__ = ["Volume", "IndexDomain", "read_many"]

LABELS = ("x", "y", "z", "channel")


@dataclass(frozen=True)
class IndexDomain:
    """Bounds of a view: ``[inclusive_min, exclusive_max)`` per dimension, with labels."""

    inclusive_min: tuple[int, ...]
    exclusive_max: tuple[int, ...]
    labels: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.inclusive_min, self.exclusive_max, strict=True))

    @property
    def origin(self) -> tuple[int, ...]:
        return self.inclusive_min

    def __repr__(self) -> str:
        dims = ", ".join(
            f'"{n}": [{a}, {b})'
            for n, a, b in zip(self.labels, self.inclusive_min, self.exclusive_max, strict=True)
        )
        return f"{{ {dims} }}"


class Volume(ArrayLike):
    """A lazy view of one scale: dimensions x, y, z, channel in absolute coordinates.

    ``vol[x0:x1, y0:y1, z, :]`` is a view (no I/O); ``view.read()`` or ``np.asarray(view)``
    fetches. Integer indices drop dimensions, as in numpy and TensorStore.
    """

    def __init__(
        self,
        handle: OpenedScale,
        start: Sequence[int] | None = None,
        stop: Sequence[int] | None = None,
        kept: Sequence[int] = (0, 1, 2, 3),
        transaction: Transaction | None = None,
    ) -> None:
        self._h = handle
        bounds = handle.grid.bounds
        self._start = tuple(start) if start is not None else (*bounds.start, 0)
        self._stop = tuple(stop) if stop is not None else (*bounds.stop, handle.num_channels)
        self._kept = tuple(kept)
        self._txn = transaction

    # -- array protocol ---------------------------------------------------------------
    @property
    def dtype(self) -> np.dtype:
        return self._h.dtype

    @property
    def domain(self) -> IndexDomain:
        return IndexDomain(
            tuple(self._start[d] for d in self._kept),
            tuple(self._stop[d] for d in self._kept),
            tuple(LABELS[d] for d in self._kept),
        )

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._stop[d] - self._start[d] for d in self._kept)

    @property
    def origin(self) -> tuple[int, ...]:
        return tuple(self._start[d] for d in self._kept)

    def __repr__(self) -> str:
        return (
            f"<precomputed.Volume {self._h.kvstore.url}{self._h.path} scale {self._h.scale_index} "
            f"key={self._h.scale.key!r} domain={self.domain!r} dtype={self.dtype}>"
        )

    def _repr_html_(self) -> str:
        """Jupyter's rich display: the scales table and a thumbnail (``reprs``)."""
        return reprs.volume_html(self, self._start, self._stop)

    # -- metadata ---------------------------------------------------------------------
    @property
    def metadata(self) -> Any:
        """The volume's parsed ``info`` (all scales)."""
        return self._h.metadata

    @property
    def info(self) -> dict[str, Any]:
        return self._h.metadata.to_json()

    @property
    def scale(self) -> Any:
        """Metadata of the opened scale."""
        return self._h.scale

    @property
    def scale_index(self) -> int:
        return self._h.scale_index

    @property
    def kvstore(self) -> KvStore:
        return self._h.kvstore

    @property
    def context(self) -> Context:
        return self._h.context

    @property
    def handle(self) -> OpenedScale:
        """The opened scale this view reads and writes through (shared by every view of
        it): stores, geometry, codec, cache id. For the driver's builders and the plugin."""
        return self._h

    @property
    def path(self) -> str:
        """The volume directory inside :attr:`kvstore` (ends with ``/`` or is empty)."""
        return self._h.path

    @property
    def resolution(self) -> tuple[float, float, float]:
        return tuple(float(r) for r in self._h.scale.resolution)  # type: ignore[return-value]

    @property
    def chunk_layout(self) -> ChunkLayout:
        h = self._h
        chunk = h.chunk_size
        write = chunk
        if h.scale.sharding is not None:
            write = sh.write_chunk_shape(h.scale.sharding, h.grid.size, chunk)
        codec = None
        block = h.encoding.block_size  # required for compressed_segmentation
        if h.encoding.encoding == "compressed_segmentation" and block is not None:
            codec = (*block, 1)
        return ChunkLayout.of_scale(
            (*h.grid.voxel_offset, 0), (*chunk, h.num_channels), (*write, h.num_channels), codec
        )

    def spec(self, minimal: bool = False) -> dict[str, Any]:
        """A TensorStore spec that reopens this scale (and this view's bounds)."""
        h = self._h
        spec = h.spec(minimal=minimal)
        full = (*h.grid.bounds.start, 0), (*h.grid.bounds.stop, h.num_channels)
        if (self._start, self._stop) != full or self._kept != (0, 1, 2, 3):
            spec["transform"] = self._transform_json()
        return spec

    def _transform_json(self) -> dict[str, Any]:
        out_map = []
        for d in range(4):
            if d in self._kept:
                out_map.append({"input_dimension": self._kept.index(d)})
            else:
                out_map.append({"offset": self._start[d]})
        return {
            "input_labels": [LABELS[d] for d in self._kept],
            "input_inclusive_min": [self._start[d] for d in self._kept],
            "input_exclusive_max": [self._stop[d] for d in self._kept],
            "output": out_map,
        }

    # -- indexing ---------------------------------------------------------------------
    def __getitem__(self, key: Any) -> Volume:
        start, stop, kept = self._index(key)
        return Volume(self._h, start, stop, kept, self._txn)

    def _index(self, key: Any) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        items = normalize_index(key, self.ndim)
        start, stop = list(self._start), list(self._stop)
        kept: list[int] = []
        for d, k in zip(self._kept, items, strict=True):
            lo, hi = self._start[d], self._stop[d]
            if isinstance(k, slice):
                if k.step not in (None, 1):
                    raise InvalidArgumentError(
                        f"strided slice {k!r} on dimension {LABELS[d]!r} is not supported; "
                        "read the range and stride the numpy result"
                    )
                a = lo if k.start is None else int(k.start)
                b = hi if k.stop is None else int(k.stop)
                if a < lo or b > hi or a > b:
                    raise OutOfRangeError(
                        f"Computing interval slice for dimension {LABELS[d]!r}: Slice interval "
                        f"[{a}, {b}) is not contained within domain [{lo}, {hi})"
                    )
                start[d], stop[d] = a, b
                kept.append(d)
            elif isinstance(k, (int, np.integer)):
                i = int(k)
                if not lo <= i < hi:
                    raise OutOfRangeError(
                        f"Index {i} is outside valid range [{lo}, {hi}) for dimension {LABELS[d]!r}"
                    )
                start[d], stop[d] = i, i + 1
            else:
                raise InvalidArgumentError(
                    f"unsupported index {k!r}: use integers and slices (absolute coordinates)"
                )
        return tuple(start), tuple(stop), tuple(kept)

    # -- I/O --------------------------------------------------------------------------
    @property
    def _transaction(self) -> ChunkOverlay | None:
        return self._txn if self._txn is not None else self._h.transaction

    def _box(self) -> tuple[Box, tuple[int, int]]:
        return Box(self._start[:3], self._stop[:3]), (self._start[3], self._stop[3])  # type: ignore[arg-type]

    def read_czyx(self) -> np.ndarray:
        """The full 4-D region as a C-order (channel, z, y, x) array."""
        box, ch = self._box()
        return readpath.read_box(self._h, box, ch, self._transaction)

    def chunk_positions(self) -> list[tuple[int, int, int]]:
        """Grid positions (x, y, z, 0-based) of the chunks this view touches (no I/O)."""
        box, _ = self._box()
        return list(self._h.grid.cells(box))

    def prefetch(self) -> int:
        """Fetch the chunks this view touches into the context's decoded-chunk cache,
        without assembling the view (the chunks already cached are not fetched again;
        missing ones read as missing). Returns the number of chunks requested. A later
        read of any part of the view is then served from memory, as long as the cache
        keeps them (see :class:`~precomputed.Context`)."""
        box, _ = self._box()
        return readpath.prefetch(self._h, list(self._h.grid.cells(box)))

    def read(self, order: str = "F") -> np.ndarray:
        """Fetch the view as a numpy array in x, y, z, channel order (dropped dims removed).

        ``order="F"`` (default) returns the storage layout (no copy); ``"C"`` a C-order copy.
        """
        return self._from_czyx(self.read_czyx(), order)

    def _from_czyx(self, czyx: np.ndarray, order: str) -> np.ndarray:
        """What :meth:`read` returns, given the view's region read as a czyx array."""
        arr = czyx.transpose(3, 2, 1, 0)
        index = tuple(slice(None) if d in self._kept else 0 for d in range(4))
        arr = arr[index]
        return np.ascontiguousarray(arr) if order == "C" else arr

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        arr = self.read()
        return arr if dtype is None else arr.astype(dtype, copy=False)

    def write(
        self, value: Any, *, progress: Callable[[int, int], None] | None = None
    ) -> CommitStats | None:
        """Write ``value`` (broadcast to this view's shape) into the volume."""
        arr = np.asarray(value)
        if arr.dtype != self.dtype:
            arr = arr.astype(self.dtype)
        try:
            arr = np.broadcast_to(arr, self.shape)
        except ValueError:
            raise InvalidArgumentError(
                f"cannot broadcast value of shape {np.shape(value)} to view shape {self.shape}"
            ) from None
        full = arr.reshape([self._stop[d] - self._start[d] for d in range(4)])
        box, ch = self._box()
        return writepath.write_box(
            self._h, box, ch, full.transpose(3, 2, 1, 0), self._transaction, progress
        )

    def __setitem__(self, key: Any, value: Any) -> None:
        self[key].write(value)

    # -- transactions -----------------------------------------------------------------
    def transaction(self) -> Transaction:
        """A transaction whose with-block routes this scale's writes (and reads) through it.

        ``with vol.transaction(): vol[...] = a; vol[...] = b`` rewrites each shard once.
        """
        txn = Transaction()
        txn.bind(self._h)
        return txn

    def with_transaction(self, txn: Transaction | None) -> Volume:
        """This view, with reads and writes going through ``txn``."""
        return Volume(self._h, self._start, self._stop, self._kept, txn)

    def whole(self) -> Volume:
        """The whole scale (absolute coordinates, every channel), with this view's
        transaction."""
        return Volume(self._h, transaction=self._txn)

    def refresh(self) -> None:
        """Make the next reads see storage as it is now, after a writer elsewhere (another
        process, or a handle of another context) changed this scale: forget its decoded
        chunks in the context's cache and the shard indices that every handle of it in
        the context holds. Writes through this driver need no refresh in their own
        context (each rewritten shard is forgotten by every handle of the scale)."""
        self._h.refresh()

    # -- other views ------------------------------------------------------------------
    def zyx(self, squeeze_channel: bool = True) -> ZyxArray:
        """0-based C-order view in napari's axis order: (channel, z, y, x), or (z, y, x)
        when the volume has one channel and ``squeeze_channel``."""
        return ZyxArray(self, squeeze_channel=squeeze_channel)

    def to_dask(self, chunks: Any = None) -> Any:
        """A dask array of this view aligned to storage chunks (see precomputed.dask)."""
        return dask.to_dask(self, chunks=chunks)


def read_many(views: Sequence[Volume], order: str = "F") -> list[np.ndarray]:
    """Read ``views`` (of one or several volumes) together; results in the same order,
    each exactly as ``view.read(order)`` would return it."""
    if order not in ("F", "C"):
        raise InvalidArgumentError(f'order must be "F" or "C", not {order!r}')
    groups: dict[tuple[int, int], list[int]] = {}
    for i, view in enumerate(views):
        if not isinstance(view, Volume):
            raise InvalidArgumentError(
                f"read_many expects precomputed Volume views; item {i} is {type(view).__name__}"
            )
        groups.setdefault((id(view._h), id(view._transaction)), []).append(i)
    results: list[np.ndarray | None] = [None] * len(views)
    for members in groups.values():
        first = views[members[0]]
        arrays = readpath.read_boxes(
            first._h, [views[i]._box() for i in members], first._transaction
        )
        for i, czyx in zip(members, arrays, strict=True):
            results[i] = views[i]._from_czyx(czyx, order)
    return results  # type: ignore[return-value]

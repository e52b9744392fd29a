"""The small key-value store interface every backend implements.

Keys are ``/``-separated strings relative to the store's root, never starting with ``/``
(checked by :func:`.keys.check_key`). Missing keys read as ``None`` (never an exception),
so chunk code can treat absence as "fill with zeros" without try/except on every read.

This is the one place of the store layer's contract: generations (:data:`Generation`,
:data:`NO_VALUE`), conditional writes (:meth:`KvStore.write_if`) and the capability flags
callers test instead of looking at URLs or probing with ``hasattr``.
"""

from __future__ import annotations

import builtins
import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["KvStore", "Generation", "RangeRequest", "NO_VALUE"]

#: Opaque version token of a stored object; ``NO_VALUE`` means "the key does not exist".
Generation = str
NO_VALUE: Generation = ""

#: ``(key, start, stop)``; ``stop=None`` reads to the end of the object.
RangeRequest = tuple[str, int, int | None]


def coalesce_ranges(
    requests: Sequence[RangeRequest], gap: int, limit: int
) -> tuple[list[RangeRequest], list[tuple[int | None, list[int]]]]:
    """Merge nearby ranges of the same key.

    Returns the requests to make and, for each, ``(start, members)``: the indices of the
    original requests it answers and the offset its bytes start at (``None`` for a request
    passed through unchanged: open-ended and suffix ranges are never merged).
    """
    merged: list[RangeRequest] = []
    parts: list[tuple[int | None, list[int]]] = []
    by_key: dict[str, list[tuple[int, int, int]]] = {}  # key -> [(start, stop, index)]
    for i, (k, a, b) in enumerate(requests):
        if b is None or a < 0 or b < a:
            merged.append((k, a, b))
            parts.append((None, [i]))
        else:
            by_key.setdefault(k, []).append((a, b, i))
    for k, ranges in by_key.items():
        if len(ranges) == 1:  # nothing to merge with (the common case): no sorting
            a, b, i = ranges[0]
            merged.append((k, a, b))
            parts.append((a, [i]))
            continue
        ranges.sort(key=lambda r: r[0])  # stable: equal starts stay in request order
        run: list[int] = []
        lo = hi = 0
        for a, b, i in ranges:
            # Merge when the bytes skipped are few: at most `gap` and at most the size of the
            # range joining, so a merged read never fetches more waste than data.
            if run and gap >= 0 and a - hi <= min(gap, b - a) and max(hi, b) - lo <= limit:
                run.append(i)
                hi = max(hi, b)
                continue
            if run:
                merged.append((k, lo, hi))
                parts.append((lo, run))
            run, lo, hi = [i], a, b
        merged.append((k, lo, hi))
        parts.append((lo, run))
    return merged, parts


class KvStore(ABC):
    """Abstract byte store. Subclasses implement the underscore methods.

    Every public call is counted in :attr:`stats` (``read``, ``read_range``, ``write``,
    ``delete``, ``list``) and, when :attr:`request_log` is a list, appended to it as
    ``(op, key, start, stop)``; tests use both to prove which I/O happened.
    """

    # -- capability flags (class attributes; callers test these, never URLs) --------
    #: True for stores that cannot be written (HTTP).
    read_only: bool = False
    #: True when :meth:`write_if` is a real compare-and-swap on the backend (else it is
    #: check-then-write, atomic only against threads of this process).
    conditional_writes: bool = False
    #: True when reading a missing key costs next to nothing (local files, memory), so a
    #: reader may probe for alternatives such as CloudVolume's ``<key>.gz``; over a
    #: network every miss is a round trip.
    cheap_misses: bool = False
    #: True when :meth:`read_into` can fill a caller's buffer in place (exact-size reads
    #: of local files); elsewhere it always answers False.
    reads_into: bool = False
    #: How many requests may be in flight at once for the batch calls.
    concurrency: int = 32
    #: :meth:`read_ranges` merges ranges of one key whose gap is at most this many bytes
    #: and at most the joining range's size into one request (reading a small gap is
    #: cheaper than another request; -1: never merge)...
    coalesce_gap: int = 64 * 1024
    #: ...as long as the merged request stays at most this large.
    coalesce_limit: int = 16 * 1024 * 1024

    def __init__(self) -> None:
        self.stats: Counter[str] = Counter()
        self.request_log: list[tuple[str, str, int | None, int | None]] | None = None
        self._log_lock = threading.Lock()

    # -- bookkeeping ------------------------------------------------------------------
    def _record(self, op: str, key: str, start: int | None = None, stop: int | None = None) -> None:
        with self._log_lock:
            self.stats[op] += 1
            if self.request_log is not None:
                self.request_log.append((op, key, start, stop))

    # -- public API -------------------------------------------------------------------
    @property
    @abstractmethod
    def url(self) -> str:
        """URL of the store root, e.g. ``file:///data/vol/`` or ``gs://bucket/path/``."""

    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """TensorStore kvstore JSON spec of the store root."""

    def read(self, key: str) -> bytes | None:
        self._record("read", key)
        return self._read(key)

    def read_range(self, key: str, start: int, stop: int | None) -> bytes | None:
        """Bytes ``[start, stop)`` of ``key`` (clipped at the end); ``None`` if missing."""
        self._record("read_range", key, start, stop)
        return self._read_range(key, start, stop)

    def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Whole objects, fetched concurrently, in the order given."""
        for k in keys:
            self._record("read", k)
        return self._read_many(list(keys))

    def read_ranges(self, requests: Sequence[RangeRequest]) -> list[bytes | None]:
        """Byte ranges, fetched concurrently, in the order given.

        Nearby ranges of one key are fetched as one request (see :attr:`coalesce_gap`);
        :attr:`stats` and :attr:`request_log` record the requests actually made.
        """
        merged, parts = coalesce_ranges(requests, self.coalesce_gap, self.coalesce_limit)
        for k, a, b in merged:
            self._record("read_range", k, a, b)
        blobs = self._read_ranges(merged)
        out: list[bytes | None] = [None] * len(requests)
        for blob, (start, members) in zip(blobs, parts, strict=True):
            if len(members) == 1 and start is None:
                out[members[0]] = blob
                continue
            for i in members:
                _, a, b = requests[i]
                out[i] = None if blob is None else blob[a - start : b - start]  # type: ignore[operator]
        return out

    def read_into(self, key: str, buffer: Any) -> bool | None:
        """Fill the writable ``buffer`` with the whole object if its size is exactly
        ``len(buffer)`` bytes: True. None when the key is missing; False when the sizes
        differ or the store cannot read in place (then nothing is counted: use :meth:`read`).
        """
        got = self._read_into(key, buffer)
        if got is not False:
            self._record("read", key)
        return got

    def _read_into(self, key: str, buffer: Any) -> bool | None:
        return False

    def read_with_generation(self, key: str) -> tuple[bytes | None, Generation]:
        """Whole object and its generation (``NO_VALUE`` when missing)."""
        self._record("read", key)
        return self._read_with_generation(key)

    def write(self, key: str, data: bytes) -> None:
        self._check_writable(key)
        self._record("write", key)
        self._write(key, bytes(data) if not isinstance(data, bytes) else data)

    def write_if(self, key: str, data: bytes | None, if_generation: Generation) -> bool:
        """Write (or delete when ``data is None``) only if the stored generation still
        equals ``if_generation`` (``NO_VALUE``: only if absent). Returns False when the
        condition failed. Stores without conditional writes write unconditionally."""
        self._check_writable(key)
        self._record("write" if data is not None else "delete", key)
        return self._write_if(key, data, if_generation)

    def delete(self, key: str) -> None:
        """Delete one key; deleting a missing key is not an error."""
        self._check_writable(key)
        self._record("delete", key)
        self._delete(key)

    def delete_many(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if not keys:
            return
        self._check_writable(keys[0])
        for k in keys:
            self._record("delete", k)
        self._delete_many(keys)

    def delete_prefix(self, prefix: str) -> None:
        """Delete every key starting with ``prefix`` (``""``: the whole store)."""
        self._check_writable(prefix)
        self._record("delete", prefix + "*")
        self._delete_prefix(prefix)

    def list(self, prefix: str = "") -> list[str]:
        """All keys starting with ``prefix``, sorted."""
        self._record("list", prefix)
        return sorted(self._list(prefix))

    def exists(self, key: str) -> bool:
        return self.read_range(key, 0, 0) is not None

    def _check_writable(self, key: str) -> None:
        if self.read_only:
            from ..errors import ReadOnlyError

            raise ReadOnlyError(f"cannot write {key!r}: the store {self.url!r} is read-only")

    # -- backend hooks ----------------------------------------------------------------
    @abstractmethod
    def _read(self, key: str) -> bytes | None: ...

    @abstractmethod
    def _read_range(self, key: str, start: int, stop: int | None) -> bytes | None: ...

    @abstractmethod
    def _read_with_generation(self, key: str) -> tuple[bytes | None, Generation]: ...

    @abstractmethod
    def _write(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def _write_if(self, key: str, data: bytes | None, if_generation: Generation) -> bool: ...

    @abstractmethod
    def _delete(self, key: str) -> None: ...

    @abstractmethod
    def _list(self, prefix: str) -> Iterable[str]: ...

    def _delete_many(self, keys: builtins.list[str]) -> None:
        for k in keys:
            self._delete(k)

    def _delete_prefix(self, prefix: str) -> None:
        self._delete_many(list(self._list(prefix)))

    # Default batch implementations use a thread pool; async backends override them.
    def _pool(self) -> ThreadPoolExecutor:
        pool = getattr(self, "_executor", None)
        if pool is None:
            pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="kvstore")
            self._executor = pool
        return pool

    def _read_many(self, keys: builtins.list[str]) -> builtins.list[bytes | None]:
        if len(keys) <= 1:
            return [self._read(k) for k in keys]
        return list(self._pool().map(self._read, keys))

    def _read_ranges(self, requests: builtins.list[RangeRequest]) -> builtins.list[bytes | None]:
        if len(requests) <= 1:
            return [self._read_range(*r) for r in requests]
        return list(self._pool().map(lambda r: self._read_range(*r), requests))

    def __getstate__(self) -> dict[str, Any]:
        # Pickle by spec-relevant state only: pools and locks are rebuilt on the worker.
        state = self.__dict__.copy()
        state.pop("_executor", None)
        state.pop("_log_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._log_lock = threading.Lock()

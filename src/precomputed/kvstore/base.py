"""The small key-value store interface every backend implements.

Keys are ``/``-separated strings relative to the store's root, never starting with ``/``
(checked by :func:`.keys.check_key` in every public method, before any I/O). Missing
keys read as ``None`` (never an exception), so chunk code can treat absence as "fill
with zeros" without try/except on every read; every other failure raises a
:class:`~precomputed.errors.PrecomputedError` naming the URL and key.

This is the one place of the store layer's contract: generations (:data:`Generation`,
:data:`NO_VALUE`), reads that report and can be pinned to a generation
(:meth:`KvStore.read_ranges_pinned`), revalidation (:meth:`KvStore.read_if_changed`),
conditional writes (:meth:`KvStore.write_conditional`, :meth:`KvStore.write_if`) and the
capability flags callers test instead of looking at URLs or probing with ``hasattr``.
docs/stores.md describes what each store does for them.
"""

from __future__ import annotations

import builtins
import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import GenerationChangedError, PermissionDeniedError, PrecomputedError, StorageError
from .keys import CHECKED_KEYS as _checked_keys
from .keys import check_key, check_prefix

__all__ = ["KvStore", "Deliver", "Generation", "RangeRequest", "NO_VALUE", "UNVERSIONED"]

#: Opaque version token of a stored object; ``NO_VALUE`` means "the key does not exist".
#: Two reads reporting the same generation saw the same bytes; every write of a key
#: changes it (S3 ETags are content hashes: rewriting identical bytes keeps the ETag,
#: which can lose no one's update).
Generation = str
NO_VALUE: Generation = ""
#: The generation of bytes whose version the store cannot tell: an HTTP server that
#: sends neither ``ETag`` nor ``Last-Modified`` (:attr:`KvStore.pinned_reads` is then
#: False). Reads pinned to it are not checked; it never matches in a revalidation.
UNVERSIONED: Generation = "?"

#: ``(key, start, stop)``; ``stop=None`` reads to the end of the object.
RangeRequest = tuple[str, int, int | None]
#: ``deliver(index, bytes or None, generation or None)``: one answer of
#: :meth:`KvStore.read_ranges_each`, called as soon as it has arrived.
Deliver = Callable[[int, "bytes | None", "Generation | None"], None]


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


def _slice(blob: bytes, start: int, stop: int | None) -> bytes:
    """``blob[start:stop]`` with the store's range rules (``start < 0``: a suffix)."""
    return blob[start:stop]


def _keys_of(keys: Iterable[str]) -> str:
    """A few keys of a batch, for messages."""
    keys = list(dict.fromkeys(keys))
    shown = ", ".join(keys[:3])
    return shown + (f" (and {len(keys) - 3} more)" if len(keys) > 3 else "")


def _split(
    requests: Sequence[RangeRequest],
    parts: Sequence[tuple[int | None, Sequence[int]]],
    blobs: Sequence[bytes | None],
) -> list[bytes | None]:
    """Answers to the original requests from the answers to the coalesced ones."""
    out: list[bytes | None] = [None] * len(requests)
    for blob, (start, members) in zip(blobs, parts, strict=True):
        if len(members) == 1 and start is None:
            out[members[0]] = blob
            continue
        for i in members:
            _, a, b = requests[i]
            out[i] = None if blob is None else blob[a - start : b - start]  # type: ignore[operator]
    return out


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
    #: True when every read reports a real generation, so :meth:`read_ranges_pinned`
    #: really holds all ranges of a key to one version. False for an HTTP server seen
    #: to send neither ETag nor Last-Modified (its reads report :data:`UNVERSIONED`).
    pinned_reads: bool = True
    #: True when :meth:`read_if_changed` costs a metadata check or a conditional
    #: request, not a download, when nothing changed.
    cheap_revalidation: bool = True
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

    # Hot paths test the keys module's memo of valid keys inline (a dict lookup) and
    # call check_key only for keys not seen before.
    def read(self, key: str) -> bytes | None:
        if key not in _checked_keys:
            check_key(key)
        self._record("read", key)
        try:
            return self._read(key)
        except PrecomputedError:
            raise
        except OSError as exc:
            raise self._os_failure(exc, "reading", key) from exc

    def read_range(self, key: str, start: int, stop: int | None) -> bytes | None:
        """Bytes ``[start, stop)`` of ``key`` (clipped at the end); ``None`` if missing.
        ``start < 0`` with ``stop=None`` reads the last ``-start`` bytes."""
        if key not in _checked_keys:
            check_key(key)
        self._record("read_range", key, start, stop)
        try:
            return self._read_range(key, start, stop)
        except PrecomputedError:
            raise
        except OSError as exc:
            raise self._os_failure(exc, "reading", key) from exc

    def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Whole objects, fetched concurrently, in the order given."""
        for k in keys:
            if k not in _checked_keys:
                check_key(k)
        for k in keys:
            self._record("read", k)
        try:
            return self._read_many(list(keys))
        except PrecomputedError:
            raise
        except OSError as exc:
            raise self._os_failure(exc, "reading", _keys_of(keys)) from exc

    def read_ranges(self, requests: Sequence[RangeRequest]) -> list[bytes | None]:
        """Byte ranges, fetched concurrently, in the order given.

        Nearby ranges of one key are fetched as one request (see :attr:`coalesce_gap`);
        :attr:`stats` and :attr:`request_log` record the requests actually made.
        """
        for k, _, _ in requests:
            if k not in _checked_keys:
                check_key(k)
        merged, parts = coalesce_ranges(requests, self.coalesce_gap, self.coalesce_limit)
        for k, a, b in merged:
            self._record("read_range", k, a, b)
        try:
            return _split(requests, parts, self._read_ranges(merged))
        except PrecomputedError:
            raise
        except OSError as exc:
            raise self._os_failure(exc, "reading", _keys_of(k for k, _, _ in requests)) from exc

    def read_ranges_sized(
        self, requests: Sequence[RangeRequest]
    ) -> tuple[list[bytes | None], dict[str, int]]:
        """Byte ranges like :meth:`read_ranges`, with the size in bytes of every object
        read, taken from the same answers (a ranged HTTP answer's ``Content-Range``, a
        file's ``fstat``): no extra request. A key absent from the sizes was missing, or
        the store could not tell its size (a ``Content-Range`` of ``*``)."""
        for k, _, _ in requests:
            if k not in _checked_keys:
                check_key(k)
        merged, parts = coalesce_ranges(requests, self.coalesce_gap, self.coalesce_limit)
        for k, a, b in merged:
            self._record("read_range", k, a, b)
        try:
            blobs, sizes = self._read_ranges_sized(merged)
        except PrecomputedError:
            raise
        except OSError as exc:
            raise self._os_failure(exc, "reading", _keys_of(k for k, _, _ in requests)) from exc
        return _split(requests, parts, blobs), sizes

    def read_range_with_generation(
        self, key: str, start: int, stop: int | None
    ) -> tuple[bytes | None, Generation]:
        """Like :meth:`read_range`, with the generation the bytes came from."""
        blobs, generations = self.read_ranges_pinned([(key, start, stop)])
        return blobs[0], generations[key]

    def read_ranges_pinned(
        self,
        requests: Sequence[RangeRequest],
        generations: Mapping[str, Generation] | None = None,
        sizes: dict[str, int] | None = None,
    ) -> tuple[list[bytes | None], dict[str, Generation]]:
        """Byte ranges like :meth:`read_ranges`, where all ranges of one key come from
        one generation of it.

        When ``sizes`` is given, it receives the size in bytes of every object read, of
        the generation returned and taken from the same answers (as
        :meth:`read_ranges_sized`); a key it lacks was missing or of unknown size.

        Returns the bytes (``None`` for a missing key) and, for every key requested,
        the generation they came from (``NO_VALUE`` when missing). A key listed in
        ``generations`` is read at that generation only: pass the generations one call
        returned to the next call, and every range of all calls comes from one version.
        If such a key now holds another version (or is gone, or appeared), no bytes of
        it are returned: :class:`~precomputed.errors.GenerationChangedError` is raised
        after the whole batch, naming the keys that changed and carrying the results
        for the others. Keys not listed are pinned to whatever generation the store
        reads first; a concurrent replacement during the call is retried internally.
        Raises ``GenerationChangedError`` only for keys listed in ``generations``, or
        for unlisted ones that kept changing during several attempts.
        """
        for k, _, _ in requests:
            check_key(k)
        pins = dict(generations) if generations else {}
        merged, parts = coalesce_ranges(requests, self.coalesce_gap, self.coalesce_limit)
        for k, a, b in merged:
            self._record("read_range", k, a, b)
        found: dict[str, int] = {}
        blobs, got, changed = self._guard(
            "reading", _keys_of(k for k, _, _ in requests), self._read_ranges_pinned, merged, pins,
            found,
        )
        if sizes is not None:
            sizes.update((k, n) for k, n in found.items() if k in got and k not in changed)
        out = _split(requests, parts, blobs)
        if changed:
            for k in changed:
                got.pop(k, None)
            for i, (k, _, _) in enumerate(requests):
                if k in changed:
                    out[i] = None
            detail = {k: (pins.get(k), actual) for k, actual in changed.items()}
            names = ", ".join(
                f"{k!r} (expected generation {e!r}, found {a!r})" for k, (e, a) in detail.items()
            )
            raise GenerationChangedError(
                f"{self.url}: changed while being read: {names}", detail, (out, got)
            )
        return out, got

    def read_ranges_each(
        self,
        requests: Sequence[RangeRequest],
        deliver: Deliver,
        *,
        pinned: bool = False,
        generations: Mapping[str, Generation] | None = None,
    ) -> dict[str, Generation]:
        """Byte ranges like :meth:`read_ranges` (or, with ``pinned``, like
        :meth:`read_ranges_pinned`), each handed to ``deliver(i, bytes, generation)`` as
        soon as its answer has arrived instead of all at the end, so a caller can
        decode the first answers while the others are still on the way.

        ``deliver`` is called once per request, in the order the answers arrive, on
        whatever thread the store reads on (the network stores' event-loop thread): it
        must be quick (hand the work to another thread) and thread-safe. ``generation``
        is None unless ``pinned``; then it is the generation the bytes came from
        (``NO_VALUE``: missing), all ranges of one key from one generation as in
        :meth:`read_ranges_pinned`. Returns each key's generation (``{}`` unless
        ``pinned``).

        Errors: the first failure (a request that fails after its retries, or an
        exception ``deliver`` raises) ends the call at once, cancelling the requests
        still under way, and is raised as it is; some requests may have been delivered
        before. A key listed in ``generations`` that now holds another version raises
        :class:`~precomputed.errors.GenerationChangedError` after the others are
        delivered; ranges of it that were delivered came from the pinned generation.
        """
        for k, _, _ in requests:
            if k not in _checked_keys:
                check_key(k)
        pins = dict(generations) if generations else {}
        pinned = pinned or bool(pins)
        merged, parts = coalesce_ranges(requests, self.coalesce_gap, self.coalesce_limit)
        for k, a, b in merged:
            if a == 0 and b is None and not pinned:
                self._record("read", k)  # counted as read_many counts it
            else:
                self._record("read_range", k, a, b)

        def on_answer(j: int, blob: bytes | None, gen: Generation | None) -> None:
            start, members = parts[j]
            if start is None:
                deliver(members[0], blob, gen)
                return
            for i in members:
                _, a, b = requests[i]
                deliver(i, None if blob is None else blob[a - start : b - start], gen)  # type: ignore[operator]

        got, changed = self._guard(
            "reading", _keys_of(k for k, _, _ in requests), self._read_ranges_each, merged,
            on_answer, pinned, pins,
        )  # fmt: skip
        if changed:
            detail = {k: (pins.get(k), actual) for k, actual in changed.items()}
            names = ", ".join(
                f"{k!r} (expected generation {e!r}, found {a!r})" for k, (e, a) in detail.items()
            )
            raise GenerationChangedError(
                f"{self.url}: changed while being read: {names}", detail,
                ([], {k: g for k, g in got.items() if k not in changed}),
            )  # fmt: skip
        return got

    def read_if_changed(
        self, key: str, generation: Generation
    ) -> tuple[bytes | None, Generation] | None:
        """Revalidate a cached copy: ``None`` when ``key`` still has ``generation``,
        else its new bytes and generation (``(None, NO_VALUE)`` when it is gone).

        A conditional request or a metadata check, not a download, where the store
        allows (:attr:`cheap_revalidation`)."""
        check_key(key)
        self._record("revalidate", key)
        return self._guard("revalidating", key, self._read_if_changed, key, generation)

    def current_generation(self, key: str) -> Generation:
        """The generation ``key`` has now (``NO_VALUE`` if missing), from metadata only."""
        check_key(key)
        self._record("stat", key)
        return self._guard("reading metadata of", key, self._current_generation, key)

    def read_into(self, key: str, buffer: Any) -> bool | None:
        """Fill the writable ``buffer`` with the whole object if its size is exactly
        ``len(buffer)`` bytes: True. None when the key is missing; False when the sizes
        differ or the store cannot read in place (then nothing is counted: use :meth:`read`).
        """
        if key not in _checked_keys:
            check_key(key)
        try:
            got = self._read_into(key, buffer)
        except PrecomputedError:
            raise
        except OSError as exc:
            raise self._os_failure(exc, "reading", key) from exc
        if got is not False:
            self._record("read", key)
        return got

    def _read_into(self, key: str, buffer: Any) -> bool | None:
        return False

    def read_with_generation(self, key: str) -> tuple[bytes | None, Generation]:
        """Whole object and its generation (``NO_VALUE`` when missing)."""
        check_key(key)
        self._record("read", key)
        try:
            return self._read_with_generation(key)
        except PrecomputedError:
            raise
        except OSError as exc:
            raise self._os_failure(exc, "reading", key) from exc

    def write(self, key: str, data: bytes) -> Generation:
        """Write unconditionally; returns the new generation."""
        self._check_writable(key)
        self._record("write", key)
        data = bytes(data) if not isinstance(data, bytes) else data
        return self._guard("writing", key, self._write, key, data)

    def write_conditional(
        self, key: str, data: bytes | None, if_generation: Generation
    ) -> Generation | None:
        """Write (or delete when ``data is None``) only if the stored generation still
        equals ``if_generation`` (``NO_VALUE``: only if absent). Returns the new
        generation (``NO_VALUE`` after a delete), or ``None`` when the condition failed
        and nothing was written. Atomic against every writer on stores with
        :attr:`conditional_writes`; elsewhere only against this process."""
        self._check_writable(key)
        self._record("write" if data is not None else "delete", key)
        if data is not None and not isinstance(data, bytes):
            data = bytes(data)
        return self._guard("writing", key, self._write_if, key, data, if_generation)

    def write_if(self, key: str, data: bytes | None, if_generation: Generation) -> bool:
        """:meth:`write_conditional` answering only whether it wrote."""
        return self.write_conditional(key, data, if_generation) is not None

    def delete(self, key: str) -> None:
        """Delete one key; deleting a missing key is not an error."""
        self._check_writable(key)
        self._record("delete", key)
        self._guard("deleting", key, self._delete, key)

    def delete_many(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if not keys:
            return
        for k in keys:
            self._check_writable(k)
        for k in keys:
            self._record("delete", k)
        self._guard("deleting", _keys_of(keys), self._delete_many, keys)

    def delete_prefix(self, prefix: str) -> None:
        """Delete every key starting with ``prefix`` (``""``: the whole store)."""
        check_prefix(prefix)
        self._check_read_only(prefix or "*")
        self._record("delete", prefix + "*")
        self._guard("deleting", prefix + "*", self._delete_prefix, prefix)

    def list(self, prefix: str = "") -> list[str]:
        """All keys starting with ``prefix``, sorted."""
        check_prefix(prefix)
        self._record("list", prefix)
        return sorted(self._guard("listing", prefix + "*", self._list, prefix))

    def exists(self, key: str) -> bool:
        return self.read_range(key, 0, 0) is not None

    def _os_failure(self, exc: OSError, op: str, key: str) -> PrecomputedError:
        """A library error for an ``OSError`` a backend let through (local files: a
        permission, a full disk, a file where a directory should be)."""
        what = f"{op} {self.url}{key}"
        if isinstance(exc, PermissionError):
            return PermissionDeniedError(f"{what}: {exc.strerror or exc} ({exc.filename})")
        return StorageError(f"{what}: {exc.strerror or exc} ({type(exc).__name__})")

    def _guard(self, op: str, key: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except PrecomputedError:
            raise
        except OSError as exc:
            raise self._os_failure(exc, op, key) from exc

    def _check_writable(self, key: str) -> None:
        check_key(key)
        self._check_read_only(key)

    def _check_read_only(self, key: str) -> None:
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
    def _write(self, key: str, data: bytes) -> Generation: ...

    @abstractmethod
    def _write_if(
        self, key: str, data: bytes | None, if_generation: Generation
    ) -> Generation | None: ...

    @abstractmethod
    def _delete(self, key: str) -> None: ...

    @abstractmethod
    def _list(self, prefix: str) -> Iterable[str]: ...

    def _delete_many(self, keys: builtins.list[str]) -> None:
        for k in keys:
            self._delete(k)

    def _delete_prefix(self, prefix: str) -> None:
        self._delete_many(list(self._list(prefix)))

    # Generations: correct defaults built on whole reads; backends override them with
    # pinned range reads, conditional requests and metadata checks.
    def _read_ranges_pinned(
        self,
        requests: builtins.list[RangeRequest],
        pins: dict[str, Generation],
        sizes: dict[str, int],
    ) -> tuple[builtins.list[bytes | None], dict[str, Generation], dict[str, Generation | None]]:
        """Hook of :meth:`read_ranges_pinned`: ``(bytes per request, generation per
        key read, {key: generation found} for pinned keys that changed)``; fills
        ``sizes`` with the size of each object read, where known."""
        whole: dict[str, tuple[bytes | None, Generation]] = {}
        for k, _, _ in requests:
            if k not in whole:
                whole[k] = self._read_with_generation(k)
                data = whole[k][0]
                if data is not None:
                    sizes[k] = len(data)
        changed: dict[str, Generation | None] = {
            k: gen for k, (_, gen) in whole.items() if k in pins and pins[k] not in (gen, UNVERSIONED)
        }
        blobs = [
            None if k in changed or whole[k][0] is None else _slice(whole[k][0], a, b)  # type: ignore[arg-type]
            for k, a, b in requests
        ]
        return blobs, {k: gen for k, (_, gen) in whole.items()}, changed

    def _read_ranges_each(
        self,
        requests: builtins.list[RangeRequest],
        deliver: Deliver,
        pinned: bool,
        pins: dict[str, Generation],
    ) -> tuple[dict[str, Generation], dict[str, Generation | None]]:
        """Hook of :meth:`read_ranges_each` (requests already coalesced): ``(generation
        per key read, {key: generation found} for pinned keys that changed)``. This
        default reads the whole batch, then delivers every answer; the network stores
        deliver each as it arrives."""
        if not pinned:
            for j, blob in enumerate(self._read_ranges(requests)):
                deliver(j, blob, None)
            return {}, {}
        blobs, gens, changed = self._read_ranges_pinned(requests, pins, {})
        for j, ((k, _, _), blob) in enumerate(zip(requests, blobs, strict=True)):
            if k not in changed:
                deliver(j, blob, gens[k])
        return gens, changed

    def _read_if_changed(
        self, key: str, generation: Generation
    ) -> tuple[bytes | None, Generation] | None:
        data, gen = self._read_with_generation(key)
        return None if gen == generation and gen != UNVERSIONED else (data, gen)

    def _current_generation(self, key: str) -> Generation:
        return self._read_with_generation(key)[1]

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

    def _read_ranges_sized(
        self, requests: builtins.list[RangeRequest]
    ) -> tuple[builtins.list[bytes | None], dict[str, int]]:
        """Hook of :meth:`read_ranges_sized`. This default is correct but costs a whole
        read per key; every store of the library answers from its range reads instead."""
        blobs = self._read_ranges(requests)
        sizes: dict[str, int] = {}
        for k, _, _ in requests:
            if k not in sizes:
                whole = self._read(k)
                if whole is not None:
                    sizes[k] = len(whole)
        return blobs, sizes

    def __getstate__(self) -> dict[str, Any]:
        # Pickle by spec-relevant state only: pools and locks are rebuilt on the worker.
        state = self.__dict__.copy()
        state.pop("_executor", None)
        state.pop("_log_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._log_lock = threading.Lock()

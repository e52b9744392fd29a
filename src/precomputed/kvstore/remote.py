"""The network stores' common half: ranges, generations, retries, batches.

A network store (:mod:`.gcs`, :mod:`.s3`, :mod:`.http`) implements one *attempt* of
four requests: :meth:`RemoteKvStore._get_once` (a GET, optionally ranged and
conditional), :meth:`~RemoteKvStore._head_once`, :meth:`~RemoteKvStore._put_once` and
:meth:`~RemoteKvStore._delete_once`, plus listing. Everything else lives here, once:

* every attempt runs under :func:`.retry.retrying` (backoff, ``Retry-After``, the time
  budget), so transient failures are retried the same way on every store;
* answers are checked before they become data: a ``206`` must carry the
  ``Content-Range`` asked for and exactly that many bytes, a ``200`` to a ranged request
  is sliced locally (the server ignored ``Range``), a ``416`` past the end is confirmed
  with a metadata request;
* reads report the generation the server sent with the bytes; pinned reads send it as a
  precondition *and* compare it with the generation of each answer, so a server that
  ignores the precondition (fake-gcs-server does) still cannot mix versions;
* a conditional write whose answer was lost and whose retry then loses is resolved by
  looking at the object's metadata: if it carries the write's own token, the first
  attempt won.

All coroutines run on fsspec's I/O loop; batch calls are one ``gather`` bounded by
:attr:`~.base.KvStore.concurrency`. Exceptions that are not the library's become
:class:`~precomputed.errors.StorageError` at the public boundary.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import fsspec.asyn

from ..errors import InvalidArgumentError, PrecomputedError, StorageError
from .base import NO_VALUE, UNVERSIONED, Deliver, Generation, KvStore, RangeRequest
from .retry import RetryPolicy, Timeouts, Transient, retrying

__all__ = ["RemoteKvStore", "Response", "hash_generation"]

T = TypeVar("T")

#: Rounds of a pinned read of one key before a key that keeps changing is reported.
_PIN_ROUNDS = 4
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


def hash_generation(data: bytes | None) -> Generation:
    """A content hash as generation, for servers that report no version of their own:
    rewriting identical bytes (ABA) cannot lose anyone's update."""
    import hashlib

    return NO_VALUE if data is None else "h" + hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass
class Response:
    """One attempt's answer, in HTTP terms whatever the protocol.

    ``status``: 200, 206, 304 (not modified), 404 (missing), 412 (precondition failed)
    or 416 (range past the end); stores raise for anything else. ``generation``: the
    version the server reported (None: it reported none). ``size``: the object's size
    (HEAD answers).
    """

    status: int
    data: bytes = b""
    generation: Generation | None = None
    content_range: str | None = None
    size: int | None = None
    #: The token of the conditional write that stored the object (HEAD answers).
    token: str | None = None


@dataclass
class _Got:
    """A checked read. ``outcome``: "ok", "missing", "unchanged" or "changed"."""

    outcome: str
    data: bytes | None = None
    generation: Generation | None = None
    #: The object's size in bytes, where the answer told it (None: missing or unknown).
    size: int | None = None


async def gather_or_cancel(coros: list[Awaitable[T]]) -> list[T]:
    """``asyncio.gather`` that cancels the others when one fails: a batch with a
    failed request ends at once instead of retrying the rest in the background."""
    if len(coros) == 1:
        return [await coros[0]]
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _plan(start: int, stop: int | None) -> tuple[str, str | None]:
    """How to ask for ``[start, stop)``: ``(kind, Range header)``."""
    if start == 0 and stop is None:
        return "whole", None
    if start >= 0 and stop is None:
        return "open", f"bytes={start}-"
    if start >= 0 and stop is not None and stop >= 0:
        if stop <= start:
            return "empty", None
        return "range", f"bytes={start}-{stop - 1}"
    if start < 0 and stop is None:
        return "suffix", f"bytes=-{-start}"
    return "local", None  # negative stop: fetch the object, slice like Python


class RemoteKvStore(KvStore):
    """Base of the network stores. ``retries`` and ``timeouts`` default to
    :class:`.retry.RetryPolicy` and :class:`.retry.Timeouts` defaults."""

    conditional_writes = True
    #: Appended to 401/403 errors: how to give credentials for this store.
    auth_hint: str = "Check the credentials given in storage_options."

    def __init__(
        self,
        *,
        concurrency: int | None = None,
        retries: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        read_only: bool | None = None,
    ) -> None:
        super().__init__()
        if concurrency is not None:
            if concurrency < 1:
                raise InvalidArgumentError(f"concurrency must be >= 1, got {concurrency}")
            self.concurrency = concurrency
        if read_only is not None:
            self.read_only = read_only
        self.retries = retries or RetryPolicy()
        self.timeouts = timeouts or Timeouts()

    # -- what subclasses provide ----------------------------------------------------
    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        raise NotImplementedError

    def _describe(self, key: str) -> str:
        """The URL of ``key`` for messages."""
        return self.url + key

    async def _get_once(
        self,
        key: str,
        range_header: str | None,
        if_match: Generation | None,
        if_none_match: Generation | None,
    ) -> Response:
        """One GET. ``if_match``/``if_none_match`` are real generations of this store
        (never NO_VALUE or UNVERSIONED); send them as the protocol's preconditions."""
        raise NotImplementedError

    async def _head_once(self, key: str) -> Response:
        """Metadata only: 200 with ``generation`` and ``size``, or 404."""
        raise NotImplementedError

    async def _put_once(
        self, key: str, data: bytes, if_generation: Generation | None, token: str | None
    ) -> Generation | None:
        """One upload; with ``if_generation`` (NO_VALUE: only if absent) conditional.
        The new generation, or None when the precondition failed. ``token`` goes into
        the object's metadata, where :meth:`_head_once` finds it (:attr:`Response.token`)."""
        raise NotImplementedError

    async def _delete_once(self, key: str, if_generation: Generation | None) -> bool:
        """One delete (a missing key is fine unconditionally); False when
        ``if_generation`` (never NO_VALUE) is not the current generation."""
        raise NotImplementedError

    async def _list_once(self, prefix: str) -> list[str]:
        """Every key starting with ``prefix`` (pages may retry via :meth:`_retry`)."""
        raise NotImplementedError

    # -- plumbing ---------------------------------------------------------------------
    def _run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            return fsspec.asyn.sync(self._loop, fn, *args)
        except PrecomputedError:
            raise
        except Exception as exc:  # nothing third-party escapes the public methods
            raise StorageError(f"{self.url}: {type(exc).__name__}: {exc}") from exc

    async def _retry(self, what: str, attempt: Callable[[int], Awaitable[T]]) -> tuple[T, int]:
        return await retrying(self.retries, what, attempt)

    async def _bounded(self, coros: Iterable[Awaitable[T]]) -> list[T]:
        sem = asyncio.Semaphore(self.concurrency)

        async def one(c: Awaitable[T]) -> T:
            async with sem:
                return await c

        return await gather_or_cancel([one(c) for c in coros])

    def _seen_generation(self, gen: Generation | None) -> Generation:
        """A generation from a ranged read; no validator means unpinnable reads."""
        if gen is None:
            self.pinned_reads = False
            return UNVERSIONED
        return gen

    # -- reads ------------------------------------------------------------------------
    def _check(
        self,
        resp: Response,
        kind: str,
        start: int,
        stop: int | None,
        rng: str | None,
        conditional: tuple[bool, bool] = (False, False),
        what: str = "reading",
    ) -> _Got | None:
        """The checked outcome of one answer, None for "416: look at the size".
        ``conditional``: whether a match / none-match precondition was sent (a 412 or
        304 without one is a broken answer, never "missing")."""
        status = resp.status
        if status == 404:
            return _Got("missing", None, NO_VALUE)
        if status == 412 and conditional[0]:
            return _Got("changed", None, None)
        if status == 304 and conditional[1]:
            return _Got("unchanged", None, resp.generation)
        if status in (304, 412):
            raise StorageError(f"{what}: unexpected HTTP {status} to a request without preconditions")
        if status == 416:
            return None
        data = resp.data
        if status == 200:
            size = len(data)
            if kind not in ("whole",):
                data = data[start:stop]  # the server sent the whole object: slice it
            return _Got("ok", data, resp.generation, size)
        if status != 206 or kind == "whole" or kind == "local":
            raise Transient(f"unexpected HTTP {status} to {rng or 'a whole-object GET'}")
        if data == b"" and (resp.content_range or "").endswith("/0"):
            return _Got("ok", b"", resp.generation, 0)  # an empty object (fake-gcs: "bytes 0--1/0")
        m = _CONTENT_RANGE.match(resp.content_range or "")
        if m is None:
            raise Transient(f"a 206 answer with Content-Range {resp.content_range!r} to {rng}")
        a, b, total_s = int(m[1]), int(m[2]), m[3]
        total = None if total_s == "*" else int(total_s)
        if kind == "suffix":
            ok = total is not None and a == max(total + start, 0) and b == total - 1
        elif kind == "open":
            ok = a == start and (total is None or b == total - 1)
        else:  # "range"
            assert stop is not None
            last = stop - 1 if total is None else min(stop - 1, total - 1)
            ok = a == start and (b == last if total is not None else b <= last)
        if not ok or b < a:
            raise Transient(f"the server answered bytes {a}-{b}/{total_s} to {rng}")
        if len(data) != b - a + 1:
            raise Transient(f"the body was cut short: {len(data)} of {b - a + 1} bytes")
        return _Got("ok", data, resp.generation, total)

    async def _a_head(self, key: str) -> Response:
        what = f"reading metadata of {self._describe(key)}"
        resp, _ = await self._retry(what, lambda n: self._head_once(key))
        return resp

    async def _a_get(
        self,
        key: str,
        start: int,
        stop: int | None,
        *,
        if_match: Generation | None = None,
        if_none_match: Generation | None = None,
    ) -> _Got:
        """Bytes ``[start, stop)`` of ``key``, checked, with retries.

        ``if_match``: the read must come from this generation (NO_VALUE: the key must be
        absent; UNVERSIONED: no check); a different one gives outcome "changed" with the
        generation found, if known. ``if_none_match``: "unchanged" when the key still
        has this generation."""
        kind, rng = _plan(start, stop)
        send_match = if_match if if_match not in (None, NO_VALUE, UNVERSIONED) else None
        send_none = if_none_match if if_none_match not in (None, NO_VALUE, UNVERSIONED) else None
        what = f"reading {self._describe(key)}" + (f" ({rng})" if rng else "")
        got: _Got | None = None
        for _ in range(3):
            if kind == "empty":
                head = await self._a_head(key)
                got = (
                    _Got("missing", None, NO_VALUE)
                    if head.status == 404
                    else _Got("ok", b"", head.generation, head.size)
                )
                break

            async def attempt(n: int) -> _Got | None:
                resp = await self._get_once(key, rng, send_match, send_none)
                sent = (send_match is not None, send_none is not None)
                return self._check(resp, kind, start, stop, rng, sent, what)

            got, _ = await self._retry(what, attempt)
            if got is not None:
                break
            # 416: the range starts at or past the end (or the object is empty). Confirm
            # with the size; if the object grew meanwhile, ask again.
            head = await self._a_head(key)
            if head.status == 404:
                got = _Got("missing", None, NO_VALUE)
                break
            size = head.size or 0
            if size == 0 or (kind in ("range", "open") and start >= size):
                got = _Got("ok", b"", head.generation, head.size)
                break
            got = None
        if got is None:
            raise StorageError(f"{what}: the server keeps refusing a satisfiable range (HTTP 416)")
        if if_match is not None and if_match != UNVERSIONED and got.outcome != "changed":
            found = NO_VALUE if got.outcome == "missing" else got.generation
            if found != if_match:
                return _Got("changed", None, found)
        if send_none is not None and got.outcome == "ok" and got.generation == send_none:
            return _Got("unchanged", None, got.generation)  # the server ignored the condition
        return got

    def _read(self, key: str) -> bytes | None:
        return self._run(self._a_read, key, 0, None)

    async def _a_read(self, key: str, start: int, stop: int | None) -> bytes | None:
        got = await self._a_get(key, start, stop)
        return got.data

    def _read_range(self, key: str, start: int, stop: int | None) -> bytes | None:
        return self._run(self._a_read, key, start, stop)

    def _read_many(self, keys: list[str]) -> list[bytes | None]:
        async def batch() -> list[bytes | None]:
            return await self._bounded([self._a_read(k, 0, None) for k in keys])

        return self._run(batch)

    def _read_ranges(self, requests: list[RangeRequest]) -> list[bytes | None]:
        async def batch() -> list[bytes | None]:
            return await self._bounded([self._a_read(k, a, b) for k, a, b in requests])

        return self._run(batch)

    def _read_ranges_sized(
        self, requests: list[RangeRequest]
    ) -> tuple[list[bytes | None], dict[str, int]]:
        async def batch() -> list[_Got]:
            return await self._bounded([self._a_get(k, a, b) for k, a, b in requests])

        answers = self._run(batch)
        sizes: dict[str, int] = {}
        torn: set[str] = set()  # replaced by another size during the call: size unknown
        for (k, _, _), got in zip(requests, answers, strict=True):
            if got.size is not None:
                if sizes.setdefault(k, got.size) != got.size:
                    torn.add(k)
        for k in torn:
            del sizes[k]
        return [got.data for got in answers], sizes

    async def _a_read_with_generation(self, key: str) -> tuple[bytes | None, Generation]:
        got = await self._a_get(key, 0, None)
        if got.data is None:
            return None, NO_VALUE
        if got.generation is None:  # no validator: the bytes themselves are the version
            self.pinned_reads = False
            return got.data, hash_generation(got.data)
        return got.data, got.generation

    def _read_with_generation(self, key: str) -> tuple[bytes | None, Generation]:
        return self._run(self._a_read_with_generation, key)

    def _read_ranges_pinned(
        self, requests: list[RangeRequest], pins: dict[str, Generation], sizes: dict[str, int]
    ) -> tuple[list[bytes | None], dict[str, Generation], dict[str, Generation | None]]:
        by_key: dict[str, list[int]] = {}
        for i, (k, _, _) in enumerate(requests):
            by_key.setdefault(k, []).append(i)

        async def batch() -> list[tuple[list[bytes | None] | None, Generation | None]]:
            sem = asyncio.Semaphore(self.concurrency)
            return await gather_or_cancel([
                self._a_read_key_pinned(k, [requests[i][1:] for i in idx], pins, sizes, sem)
                for k, idx in by_key.items()
            ])  # fmt: skip

        results = self._run(batch)
        out: list[bytes | None] = [None] * len(requests)
        gens: dict[str, Generation] = {}
        changed: dict[str, Generation | None] = {}
        for (k, idx), (blobs, gen) in zip(by_key.items(), results, strict=True):
            if blobs is None:
                changed[k] = gen
                continue
            assert gen is not None
            gens[k] = gen
            for i, blob in zip(idx, blobs, strict=True):
                out[i] = blob
        return out, gens, changed

    async def _a_read_key_pinned(
        self,
        k: str,
        ranges: list[tuple[int, int | None]],
        pins: dict[str, Generation],
        sizes: dict[str, int],
        sem: asyncio.Semaphore,
    ) -> tuple[list[bytes | None] | None, Generation | None]:
        """All ``ranges`` of key ``k`` from one generation of it (the caller's pin, if
        ``pins`` has one): ``(bytes per range, generation)``, or ``(None, generation
        found)`` when the pinned key changed or an unpinned one kept changing."""

        async def get(a: int, b: int | None, pin: Generation | None) -> _Got:
            async with sem:
                return await self._a_get(k, a, b, if_match=pin)

        by_caller = k in pins
        pin = pins.get(k)
        found: Generation | None = None
        for _ in range(_PIN_ROUNDS):
            gots = await gather_or_cancel([get(a, b, pin) for a, b in ranges])
            lost = [g for g in gots if g.outcome == "changed"]
            if lost:
                found = lost[0].generation
                if by_caller:
                    return None, found
                pin = None  # our own pin went stale: start over
                continue
            gens = [self._seen_generation(g.generation) for g in gots]
            if len(set(gens)) == 1:
                known = {g.size for g in gots if g.size is not None}
                if len(known) == 1:  # one version: one size
                    sizes[k] = known.pop()
                return [g.data for g in gots], gens[0]
            pin = found = gens[0]  # mixed versions: hold the rest to the first
        return None, found

    def _read_ranges_each(
        self,
        requests: list[RangeRequest],
        deliver: Deliver,
        pinned: bool,
        pins: dict[str, Generation],
    ) -> tuple[dict[str, Generation], dict[str, Generation | None]]:
        # Every answer is delivered from the event loop the moment it is checked; one
        # bound of requests in flight for the whole batch, no barrier between answers.
        failure: list[BaseException] = []
        gens: dict[str, Generation] = {}
        changed: dict[str, Generation | None] = {}

        def hand(j: int, blob: bytes | None, gen: Generation | None) -> None:
            try:
                deliver(j, blob, gen)
            except BaseException as e:
                failure.append(e)
                raise

        async def batch() -> None:
            sem = asyncio.Semaphore(self.concurrency)

            async def one(j: int, pin: Generation | None) -> None:
                k, a, b = requests[j]
                async with sem:
                    got = await self._a_get(k, a, b, if_match=pin)
                if not pinned:
                    hand(j, got.data, None)
                    return
                if got.outcome == "changed":  # only with a caller's pin
                    changed[k] = got.generation
                    return
                gen = gens[k] = self._seen_generation(got.generation)
                hand(j, got.data, gen)

            async def key_whole(k: str, idx: list[int]) -> None:
                # Several ranges of a key nobody pinned: held to one version together.
                blobs, gen = await self._a_read_key_pinned(
                    k, [requests[j][1:] for j in idx], pins, {}, sem
                )
                if blobs is None:
                    changed[k] = gen
                    return
                assert gen is not None
                gens[k] = gen
                for j, blob in zip(idx, blobs, strict=True):
                    hand(j, blob, gen)

            if not pinned:
                await gather_or_cancel([one(j, None) for j in range(len(requests))])
                return
            by_key: dict[str, list[int]] = {}
            for j, (k, _, _) in enumerate(requests):
                by_key.setdefault(k, []).append(j)
            coros: list[Awaitable[None]] = []
            for k, idx in by_key.items():
                if k in pins or len(idx) == 1:
                    # Each answer is checked on its own: against the caller's pin, or
                    # the only range of its key (one answer, one version).
                    coros.extend(one(j, pins.get(k)) for j in idx)
                else:
                    coros.append(key_whole(k, idx))
            await gather_or_cancel(coros)

        try:
            self._run(batch)
        except BaseException:
            if failure:
                raise failure[0] from None
            raise
        for k in changed:
            gens.pop(k, None)
        return gens, changed

    async def _a_read_if_changed(
        self, key: str, generation: Generation
    ) -> tuple[bytes | None, Generation] | None:
        if generation.startswith("h") or generation in (NO_VALUE, UNVERSIONED):
            # No server-side version to compare: read and compare what we can.
            data, gen = await self._a_read_with_generation(key)
            return None if gen == generation and gen != UNVERSIONED else (data, gen)
        got = await self._a_get(key, 0, None, if_none_match=generation)
        if got.outcome == "unchanged":
            return None
        if got.outcome == "missing" or got.data is None:
            return None, NO_VALUE
        gen = got.generation if got.generation is not None else hash_generation(got.data)
        return got.data, gen

    def _read_if_changed(
        self, key: str, generation: Generation
    ) -> tuple[bytes | None, Generation] | None:
        return self._run(self._a_read_if_changed, key, generation)

    async def _a_current_generation(self, key: str) -> Generation:
        head = await self._a_head(key)
        if head.status == 404:
            return NO_VALUE
        return head.generation if head.generation is not None else UNVERSIONED

    def _current_generation(self, key: str) -> Generation:
        return self._run(self._a_current_generation, key)

    # -- writes -----------------------------------------------------------------------
    async def _a_write(
        self, key: str, data: bytes, if_generation: Generation | None
    ) -> Generation | None:
        what = f"writing {self._describe(key)}"
        # A conditional write carries a token of its own in the object's metadata, so a
        # lost answer can be told apart from a lost race (below).
        token = None if if_generation is None else uuid.uuid4().hex
        gen, _ = await self._retry(
            what, lambda n: self._put_once(key, data, if_generation, token)
        )
        if gen is None and token is not None:
            # The precondition failed. An earlier attempt may have been applied and only
            # its answer lost (ours, or aiohttp's silent resend of a PUT on a reused
            # connection), so that the retry failed against our own write: then the
            # object carries our token. Equal bytes would prove nothing: two writers
            # incrementing one counter write equal bytes, and one increment is lost.
            head = await self._a_head(key)
            if head.status == 200 and head.token == token:
                return head.generation
        return gen

    async def _a_delete(self, key: str, if_generation: Generation | None) -> Generation | None:
        if if_generation == NO_VALUE:  # "delete if absent" holds exactly when it is absent
            head = await self._a_head(key)
            return NO_VALUE if head.status == 404 else None
        what = f"deleting {self._describe(key)}"
        ok, attempts = await self._retry(what, lambda n: self._delete_once(key, if_generation))
        if not ok and attempts > 1:
            head = await self._a_head(key)  # as for writes: did a lost answer delete it?
            if head.status == 404:
                return NO_VALUE
        return NO_VALUE if ok else None

    def _write(self, key: str, data: bytes) -> Generation:
        gen = self._run(self._a_write, key, data, None)
        assert gen is not None
        return gen

    def _write_if(
        self, key: str, data: bytes | None, if_generation: Generation
    ) -> Generation | None:
        if data is None:
            return self._run(self._a_delete, key, if_generation)
        return self._run(self._a_write, key, data, if_generation)

    def _delete(self, key: str) -> None:
        self._run(self._a_delete, key, None)

    def _delete_many(self, keys: list[str]) -> None:
        async def batch() -> None:
            await self._bounded([self._a_delete(k, None) for k in keys])

        self._run(batch)

    def _list(self, prefix: str) -> Iterable[str]:
        return self._run(self._list_once, prefix)

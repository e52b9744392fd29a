"""Retries and timeouts of the network stores (GCS, S3, HTTP).

One policy object per store, :class:`RetryPolicy`, read from TensorStore's context
resources ``gcs_request_retries`` / ``s3_request_retries`` / ``http_request_retries``
(members ``max_retries``, ``initial_delay``, ``max_delay``; given inline in the kvstore
spec or under its ``context``) or from ``open_kvstore(..., retries={...})``, plus our
own ``total_timeout`` (a time budget for all attempts of one request) and the
:class:`Timeouts` of each attempt. docs/stores.md lists the defaults and why.

Store code runs one attempt at a time through :func:`retrying`; an attempt signals a
failure worth repeating by raising :class:`Transient`. When retries or their time budget
run out, the last failure becomes an :class:`~precomputed.errors.UnavailableError`.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

from ..errors import InvalidArgumentError, UnavailableError

__all__ = [
    "RetryPolicy",
    "Timeouts",
    "Transient",
    "retrying",
    "parse_duration",
    "parse_retry_after",
    "TRANSIENT_STATUS",
]

T = TypeVar("T")

#: HTTP statuses worth retrying: request timeout, too many requests, server errors.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ns|us|ms|s|m|h)?\s*$")
_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any, name: str) -> float:
    """Seconds from TensorStore's duration strings (``"1s"``, ``"250ms"``, ``"2m"``) or a
    plain number of seconds."""
    if isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be a duration such as \"1s\", got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m[1]) * _UNITS[m[2]]
    else:
        raise InvalidArgumentError(f"{name} must be a duration such as \"1s\", got {value!r}")
    if not seconds >= 0 or seconds == float("inf"):
        raise InvalidArgumentError(f"{name} must be a finite duration >= 0, got {value!r}")
    return seconds


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a failed request is repeated.

    Attempt ``n`` (1-based) that failed transiently is followed by a sleep of
    ``min(max_delay, initial_delay * 2**(n-1))`` times a random factor in [0.5, 1]
    (exponential backoff with jitter), or by the server's ``Retry-After`` when it sent
    one. At most ``max_retries`` retries, and none that would start after
    ``total_timeout`` seconds from the first attempt.
    """

    max_retries: int = 8
    initial_delay: float = 0.5
    max_delay: float = 16.0
    total_timeout: float = 60.0

    #: TensorStore's members of ``*_request_retries``.
    TENSORSTORE_MEMBERS = ("max_retries", "initial_delay", "max_delay")

    def __post_init__(self) -> None:
        if not isinstance(self.max_retries, int) or isinstance(self.max_retries, bool):
            raise InvalidArgumentError(f"max_retries must be an integer, got {self.max_retries!r}")
        if self.max_retries < 0:
            raise InvalidArgumentError(f"max_retries must be >= 0, got {self.max_retries}")
        for f in ("initial_delay", "max_delay", "total_timeout"):
            object.__setattr__(self, f, parse_duration(getattr(self, f), f))

    @classmethod
    def from_json(
        cls, obj: Any, name: str, *, base: RetryPolicy | None = None, extensions: bool = True
    ) -> RetryPolicy:
        """A policy from a JSON object (missing members from ``base``, else defaults).
        ``extensions=False`` allows only TensorStore's members (as in a spec)."""
        if isinstance(obj, RetryPolicy):
            return obj
        if not isinstance(obj, Mapping):
            raise InvalidArgumentError(f"{name} must be an object, got {obj!r}")
        allowed = (
            {f.name for f in fields(cls)} if extensions else set(cls.TENSORSTORE_MEMBERS)
        )
        extra = set(obj) - allowed
        if extra:
            raise InvalidArgumentError(
                f"{name}: unknown member(s) {sorted(extra)} (expected {sorted(allowed)})"
            )
        return replace(base or cls(), **dict(obj))

    def backoff(self, retry: int) -> float:
        """Seconds to sleep before retry number ``retry`` (1-based)."""
        ceiling = min(self.max_delay, self.initial_delay * 2.0 ** min(retry - 1, 60))
        return ceiling * random.uniform(0.5, 1.0)


@dataclass(frozen=True)
class Timeouts:
    """Per-attempt timeouts in seconds: ``connect`` (TCP and TLS set-up) and ``read``
    (the longest silence while waiting for the response or its next bytes)."""

    connect: float = 10.0
    read: float = 30.0

    def __post_init__(self) -> None:
        for f in ("connect", "read"):
            value = parse_duration(getattr(self, f), f"{f}_timeout")
            if value <= 0:
                raise InvalidArgumentError(f"{f}_timeout must be > 0, got {value!r}")
            object.__setattr__(self, f, value)


class Transient(Exception):
    """One attempt failed in a way that may succeed when repeated. ``retry_after``:
    the seconds the server asked us to wait, if it did."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


async def retrying(
    policy: RetryPolicy, what: str, attempt: Callable[[int], Awaitable[T]]
) -> tuple[T, int]:
    """Run ``attempt(0)``, ``attempt(1)``, ... until one does not raise
    :class:`Transient`; returns its result and the number of attempts made.
    ``what`` names the operation and the URL for the final error."""
    t0 = time.monotonic()
    n = 0
    while True:
        try:
            return await attempt(n), n + 1
        except Transient as exc:
            failure = exc
        n += 1
        elapsed = time.monotonic() - t0
        if n > policy.max_retries:
            raise UnavailableError(
                f"{what}: {failure.reason} (gave up after {n} attempt{'s' if n > 1 else ''} "
                f"in {elapsed:.1f} s: max_retries={policy.max_retries})"
            )
        if failure.retry_after is not None:
            delay = failure.retry_after
        else:
            delay = policy.backoff(n)
        if elapsed + delay > policy.total_timeout:
            asked = " the server's Retry-After" if failure.retry_after is not None else ""
            raise UnavailableError(
                f"{what}: {failure.reason} (gave up after {n} attempt{'s' if n > 1 else ''} "
                f"in {elapsed:.1f} s: waiting{asked} {delay:.1f} s more would exceed "
                f"total_timeout={policy.total_timeout:g} s)"
            )
        await asyncio.sleep(delay)

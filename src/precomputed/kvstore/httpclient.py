"""One HTTP request over aiohttp, for the HTTP and GCS stores: timeouts, and every
aiohttp failure and HTTP status turned into :class:`.retry.Transient` or a library
error naming the URL. Nothing from aiohttp escapes this module."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping
from typing import Any

import aiohttp

from ..errors import InvalidArgumentError, PermissionDeniedError, StorageError, UnavailableError
from .retry import TRANSIENT_STATUS, Timeouts, Transient, parse_retry_after

__all__ = ["request", "transport_failure", "status_failure", "client_timeout"]


@functools.lru_cache(maxsize=64)
def client_timeout(timeouts: Timeouts) -> aiohttp.ClientTimeout:
    # No total: a large object may take long, as long as bytes keep coming.
    return aiohttp.ClientTimeout(
        total=None, connect=None, sock_connect=timeouts.connect, sock_read=timeouts.read
    )


def transport_failure(exc: BaseException, what: str, timeouts: Timeouts) -> Exception:
    """The library error (or :class:`Transient`) for an exception raised while sending a
    request or reading its answer."""
    if isinstance(exc, aiohttp.TooManyRedirects):
        # Deterministic (a redirect loop or a very long chain): retrying cannot help.
        hops = len(getattr(exc, "history", ()) or ())
        return UnavailableError(f"{what}: too many redirects (a redirect loop? {hops} followed)")
    if isinstance(exc, (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError)):
        return StorageError(f"{what}: TLS failure: {exc}")
    if isinstance(exc, aiohttp.InvalidURL):
        return InvalidArgumentError(f"{what}: invalid URL: {exc}")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return Transient(f"no connection within connect_timeout={timeouts.connect:g} s")
    if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError, TimeoutError)):
        return Transient(f"no answer within read_timeout={timeouts.read:g} s")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return Transient(f"the body was cut short ({exc})")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return Transient("the server closed the connection")
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return Transient(f"{type(exc).__name__}: {exc}")
    return StorageError(f"{what}: {type(exc).__name__}: {exc}")


def _message(body: bytes) -> str:
    text = body[:300].decode("utf-8", "replace").strip()
    return f": {text}" if text else ""


def status_failure(
    status: int, headers: Mapping[str, str], body: bytes, what: str, auth_hint: str
) -> Exception:
    """The library error (or :class:`Transient`) for an HTTP status the caller does not
    handle itself."""
    if status in TRANSIENT_STATUS:
        return Transient(f"HTTP {status}", parse_retry_after(headers.get("Retry-After")))
    if status in (401, 403):
        return PermissionDeniedError(f"{what}: HTTP {status}{_message(body)}. {auth_hint}")
    if status == 400:
        return InvalidArgumentError(f"{what}: HTTP 400 Bad Request{_message(body)}")
    return StorageError(f"{what}: unexpected HTTP {status}{_message(body)}")


async def request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    what: str,
    timeouts: Timeouts,
    *,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    data: bytes | None = None,
    read_body: bool = True,
    **kwargs: Any,
) -> tuple[int, Mapping[str, str], bytes]:
    """``(status, headers, body)`` of one request; transport failures raised as
    :func:`transport_failure` maps them. A body shorter than its ``Content-Length``
    is a :class:`Transient` failure, never data."""
    try:
        async with session.request(
            method,
            url,
            headers=dict(headers or {}),
            params=dict(params or {}),
            data=data,
            timeout=client_timeout(timeouts),
            **kwargs,
        ) as r:
            body = await r.read() if read_body and method != "HEAD" else b""
            status, got = r.status, r.headers
    except Exception as exc:
        raise transport_failure(exc, what, timeouts) from exc
    if read_body and method != "HEAD" and status in (200, 206):
        length = got.get("Content-Length")
        encoded = got.get("Content-Encoding", "identity").lower() not in ("", "identity")
        if length is not None and not encoded and length.isdigit() and int(length) != len(body):
            raise Transient(f"the body was cut short: {len(body)} of {length} bytes")
    return status, got, body

"""Read-only HTTP(S) over aiohttp (the session and options of fsspec's HTTP filesystem).

Generations are the server's ``ETag`` (as sent, e.g. ``"abc"`` or ``W/"abc"``), else
``lm:`` + its ``Last-Modified``. Pinned reads send ``If-Match`` (strong ETags) or
``If-Unmodified-Since`` and compare each answer's validator with the pinned one;
revalidation sends ``If-None-Match`` / ``If-Modified-Since`` and accepts a 304. A server
that sends neither validator still serves reads, reported as :data:`.base.UNVERSIONED`
(whole reads: a content hash), and :attr:`pinned_reads` becomes False.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from fsspec import AbstractFileSystem

from ..errors import InvalidArgumentError, UnimplementedError
from .base import Generation
from .httpclient import request, status_failure
from .remote import RemoteKvStore, Response

__all__ = ["HttpKvStore"]

_HANDLED = (200, 206, 304, 404, 412, 416)


def _validator(headers: Mapping[str, str]) -> Generation | None:
    etag = headers.get("ETag")
    if etag:
        return etag.strip()
    modified = headers.get("Last-Modified")
    return f"lm:{modified.strip()}" if modified else None


class HttpKvStore(RemoteKvStore):
    """Read-only store under an HTTP(S) URL. Keys are percent-encoded and appended to the
    URL path; a query string in the base URL is kept on every request. ``fs`` is an
    fsspec ``HTTPFileSystem``: its aiohttp session and per-request options (headers,
    ``ssl``, ``auth``, ...) are used for every request."""

    driver = "http"
    read_only = True
    conditional_writes = False
    auth_hint = (
        "Pass credentials as headers, e.g. storage_options={'headers': {'Authorization': "
        "'Bearer ...'}} or the spec's \"headers\" member."
    )

    def __init__(self, fs: AbstractFileSystem, url: str, **kwargs: Any) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidArgumentError(f"invalid HTTP(S) URL {url!r}")
        super().__init__(**kwargs)
        self.fs = fs
        self.base_url = urlunsplit((parts.scheme, parts.netloc, "", parts.query, ""))
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._query = f"?{parts.query}" if parts.query else ""
        self.path = parts.path.rstrip("/") + "/"
        self.pinned_reads = True  # until the server answers without ETag or Last-Modified

    # -- naming -----------------------------------------------------------------------
    @property
    def _base(self) -> str:
        return self._origin + self.path

    def _key_url(self, key: str) -> str:
        return self._base + quote(key, safe="/:@!$&'()*+,;=~-._") + self._query

    def _describe(self, key: str) -> str:
        return self._key_url(key)

    @property
    def url(self) -> str:
        return self._base + self._query

    def spec(self) -> dict[str, Any]:
        return {"driver": "http", "base_url": self.base_url, "path": self.path}

    def __repr__(self) -> str:
        return f"HttpKvStore({self.url!r})"

    # -- requests -----------------------------------------------------------------------
    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        return self.fs.loop

    async def _send(
        self, method: str, key: str, headers: dict[str, str], what: str
    ) -> tuple[int, Mapping[str, str], bytes]:
        session = await self.fs.set_session()
        options = dict(self.fs.kwargs)
        merged = {**(options.pop("headers", None) or {}), **headers}
        options.pop("timeout", None)  # ours apply
        status, got, body = await request(
            session, method, self._key_url(key), what, self.timeouts, headers=merged, **options
        )
        if status not in _HANDLED:
            raise status_failure(status, got, body, what, self.auth_hint)
        return status, got, body

    async def _get_once(
        self,
        key: str,
        range_header: str | None,
        if_match: Generation | None,
        if_none_match: Generation | None,
    ) -> Response:
        headers: dict[str, str] = {}
        if range_header:
            headers["Range"] = range_header
        if if_match is not None:
            if if_match.startswith("lm:"):
                headers["If-Unmodified-Since"] = if_match[3:]
            elif not if_match.startswith("W/"):  # If-Match compares strongly: never weak
                headers["If-Match"] = if_match
        if if_none_match is not None:
            if if_none_match.startswith("lm:"):
                headers["If-Modified-Since"] = if_none_match[3:]
            else:
                headers["If-None-Match"] = if_none_match
        what = f"reading {self._key_url(key)}" + (f" ({range_header})" if range_header else "")
        status, got, body = await self._send("GET", key, headers, what)
        return Response(status, body, _validator(got), got.get("Content-Range"))

    async def _head_once(self, key: str) -> Response:
        status, got, _ = await self._send("HEAD", key, {}, f"reading metadata of {self._key_url(key)}")
        if status == 404:
            return Response(404)
        length = got.get("Content-Length")
        size = int(length) if length is not None and length.isdigit() else None
        return Response(200, b"", _validator(got), size=size)

    async def _put_once(
        self, key: str, data: bytes, if_generation: Generation | None, token: str | None
    ) -> Generation | None:
        raise AssertionError("HTTP stores are read-only")  # the base raises ReadOnlyError first

    async def _delete_once(self, key: str, if_generation: Generation | None) -> bool:
        raise AssertionError("HTTP stores are read-only")

    def _list(self, prefix: str) -> Iterable[str]:
        raise UnimplementedError(f"cannot list {self.url!r}: HTTP has no listing")

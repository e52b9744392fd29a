"""Read-only HTTP(S) through fsspec's HTTP filesystem (aiohttp)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from fsspec import AbstractFileSystem

from ..errors import InvalidArgumentError, UnimplementedError
from .fsspec import FsspecKvStore
from .keys import check_key

__all__ = ["HttpKvStore"]


class HttpKvStore(FsspecKvStore):
    """Read-only store under an HTTP(S) URL. Keys are percent-encoded and appended to the
    URL path; a query string in the base URL is kept on every request."""

    driver = "http"
    read_only = True

    def __init__(self, fs: AbstractFileSystem, url: str, **kwargs: Any) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidArgumentError(f"invalid HTTP(S) URL {url!r}")
        self.base_url = urlunsplit((parts.scheme, parts.netloc, "", parts.query, ""))
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._query = f"?{parts.query}" if parts.query else ""
        self.path = parts.path.rstrip("/") + "/"
        super().__init__(fs, self._origin + self.path, **kwargs)

    def _path(self, key: str) -> str:
        return self._base + quote(check_key(key), safe="/:@!$&'()*+,;=~-._") + self._query

    @property
    def url(self) -> str:
        return self._base + self._query

    def spec(self) -> dict[str, Any]:
        return {"driver": "http", "base_url": self.base_url, "path": self.path}

    def _list(self, prefix: str) -> Iterable[str]:
        raise UnimplementedError(f"cannot list {self.url!r}: HTTP has no listing")

"""Google Cloud Storage over its JSON API, with gcsfs for credentials and the session.

Every request is ours (gcsfs's own calls retry up to 6 times with up to 32 s sleeps,
which would defeat the store's retry policy and time budget): media GETs with ``Range``,
``ifGenerationMatch`` (pinned reads) and ``ifGenerationNotMatch`` (revalidation);
metadata GETs; multipart uploads with ``ifGenerationMatch`` (``0``: only if absent) for
conditional writes; DELETE with ``ifGenerationMatch``; paged listing. Generations are
GCS object generations, read from each answer's ``x-goog-generation``.

fake-gcs-server (the test emulator) ignores preconditions on GET and DELETE: pinned
reads therefore also compare the generation of every answer, and conditional deletes
check the generation first (real GCS honours both preconditions).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from fsspec import AbstractFileSystem

from ..errors import InvalidArgumentError, PermissionDeniedError
from .base import Generation
from .httpclient import request, status_failure
from .remote import RemoteKvStore, Response
from .retry import Transient

__all__ = ["GcsKvStore"]

_HANDLED = (200, 204, 206, 304, 404, 412, 416)
#: Custom metadata naming the conditional write that stored an object.
_TOKEN = "precomputed-write"


class GcsKvStore(RemoteKvStore):
    """GCS bucket ``bucket`` under ``path``; ``fs`` is a gcsfs ``GCSFileSystem`` (its
    endpoint, credentials, ``requester_pays`` and session are used)."""

    driver = "gcs"
    auth_hint = (
        "Give Google credentials (GOOGLE_APPLICATION_CREDENTIALS, or `gcloud auth "
        "application-default login`, or storage_options={'token': '/path/key.json'}); for "
        "a public bucket use anonymous access: storage_options={'token': 'anon'}."
    )

    def __init__(self, fs: AbstractFileSystem, bucket: str, path: str = "", **kwargs: Any) -> None:
        if not bucket or "/" in bucket:
            raise InvalidArgumentError(f"invalid GCS bucket name {bucket!r}")
        super().__init__(**kwargs)
        self.fs = fs
        self.bucket = bucket
        self.prefix = path.strip("/")

    # -- naming -------------------------------------------------------------------------
    @property
    def _base(self) -> str:
        return f"{self.bucket}/{self.prefix}/" if self.prefix else f"{self.bucket}/"

    @property
    def url(self) -> str:
        return f"gs://{self._base}"

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {"driver": "gcs", "bucket": self.bucket}
        if self.prefix:
            out["path"] = self.prefix + "/"
        return out

    def __repr__(self) -> str:
        return f"GcsKvStore({self.url!r})"

    def _object(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    # -- requests -----------------------------------------------------------------------
    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        return self.fs.loop

    async def _send(
        self,
        method: str,
        url: str,
        what: str,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        fs: Any = self.fs
        session = await fs._set_session()
        try:
            # gcsfs: User-Agent, the credentials' Authorization (refreshed when due).
            all_headers = fs._get_headers(headers)
        except Exception as exc:
            raise _credentials_failure(exc, what, self.auth_hint) from exc
        status, got, body = await request(
            session,
            method,
            url,
            what,
            self.timeouts,
            params=fs._get_params(params or {}),  # adds userProject for requester pays
            headers=all_headers,
            data=data,
        )
        if status not in _HANDLED:
            raise status_failure(status, got, body, what, self.auth_hint)
        return status, got, body

    def _object_url(self, key: str, *, media: bool) -> str:
        fs: Any = self.fs
        obj = quote(self._object(key), safe="")
        bucket = quote(self.bucket, safe="")
        if media:
            return f"{fs._location}/download/storage/v1/b/{bucket}/o/{obj}"
        return f"{fs._location}/storage/v1/b/{bucket}/o/{obj}"

    async def _get_once(
        self,
        key: str,
        range_header: str | None,
        if_match: Generation | None,
        if_none_match: Generation | None,
    ) -> Response:
        params = {"alt": "media"}
        if if_match is not None:
            params["ifGenerationMatch"] = if_match
        if if_none_match is not None:
            params["ifGenerationNotMatch"] = if_none_match
        headers = {"Range": range_header} if range_header else {}
        what = f"reading {self.url}{key}" + (f" ({range_header})" if range_header else "")
        status, got, body = await self._send(
            "GET", self._object_url(key, media=True), what, params=params, headers=headers
        )
        return Response(status, body, got.get("x-goog-generation"), got.get("Content-Range"))

    async def _head_once(self, key: str) -> Response:
        what = f"reading metadata of {self.url}{key}"
        status, _, body = await self._send("GET", self._object_url(key, media=False), what)
        if status == 404:
            return Response(404)
        meta = _json(body, what)
        token = (meta.get("metadata") or {}).get(_TOKEN)
        return Response(200, b"", str(meta["generation"]), size=int(meta.get("size", 0)), token=token)

    async def _put_once(
        self, key: str, data: bytes, if_generation: Generation | None, token: str | None
    ) -> Generation | None:
        fs: Any = self.fs
        # A multipart upload: one request on real GCS, and the only upload type whose
        # preconditions fake-gcs-server honours.
        boundary = uuid.uuid4().hex
        resource: dict[str, Any] = {"name": self._object(key), "contentType": "application/octet-stream"}
        if token is not None:
            resource["metadata"] = {_TOKEN: token}
        body = b"".join(
            [
                f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(),
                json.dumps(resource).encode(),
                f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode(),
                data,
                f"\r\n--{boundary}--".encode(),
            ]
        )
        params = {"uploadType": "multipart"}
        if if_generation is not None:
            params["ifGenerationMatch"] = if_generation or "0"
        what = f"writing {self.url}{key}"
        status, _, answer = await self._send(
            "POST",
            f"{fs._location}/upload/storage/v1/b/{quote(self.bucket, safe='')}/o",
            what,
            params=params,
            headers={"Content-Type": f'multipart/related; boundary="{boundary}"'},
            data=body,
        )
        if status == 412:
            return None
        if status not in (200, 201):
            raise Transient(f"unexpected HTTP {status} to an upload")
        return str(_json(answer, what)["generation"])

    async def _delete_once(self, key: str, if_generation: Generation | None) -> bool:
        what = f"deleting {self.url}{key}"
        params: dict[str, str] = {}
        if if_generation is not None:
            # fake-gcs-server ignores ifGenerationMatch on DELETE: look first (real GCS
            # honours it, so there the check below is what decides).
            head = await self._head_once(key)
            if head.status == 404 or head.generation != if_generation:
                return False
            params["ifGenerationMatch"] = if_generation
        status, _, _ = await self._send(
            "DELETE", self._object_url(key, media=False), what, params=params
        )
        if status in (404, 412):
            if if_generation is None:
                return True
            # It was at if_generation a moment ago: gone now means our DELETE did it and
            # a resend (aiohttp repeats a DELETE on a reused connection) found it gone.
            return (await self._head_once(key)).status == 404
        return True

    async def _list_once(self, prefix: str) -> list[str]:
        fs: Any = self.fs
        full = self._object(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        url = f"{fs._location}/storage/v1/b/{quote(self.bucket, safe='')}/o"
        what = f"listing {self.url}{prefix}"
        out: list[str] = []
        token: str | None = None
        skip = len(self.prefix) + 1 if self.prefix else 0
        while True:
            params = {"prefix": full, "fields": "items(name),nextPageToken"}
            if token:
                params["pageToken"] = token

            async def page(n: int, params: dict[str, str] = params) -> dict[str, Any]:
                _, _, body = await self._send("GET", url, what, params=params)
                return _json(body, what)

            answer, _ = await self._retry(what, page)
            out.extend(item["name"][skip:] for item in answer.get("items", ()))
            token = answer.get("nextPageToken")
            if not token:
                return [k for k in out if k and not k.endswith("/")]


def _json(body: bytes, what: str) -> dict[str, Any]:
    try:
        out = json.loads(body)
    except ValueError as exc:
        raise Transient(f"an answer that is not JSON ({body[:100]!r})") from exc
    if not isinstance(out, dict):
        raise Transient(f"an unexpected JSON answer ({body[:100]!r})")
    return out


def _credentials_failure(exc: Exception, what: str, hint: str) -> Exception:
    """google-auth failing to produce a token: a network hiccup is transient, the rest
    means the credentials are unusable."""
    try:
        import google.auth.exceptions as gae
    except ImportError:  # pragma: no cover - gcsfs depends on google-auth
        gae = None  # type: ignore[assignment]
    if gae is not None and isinstance(exc, gae.TransportError):
        return Transient(f"fetching credentials failed: {exc}")
    return PermissionDeniedError(f"{what}: the credentials could not be used ({exc}). {hint}")


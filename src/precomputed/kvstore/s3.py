"""Amazon S3 (and compatible servers) over aiobotocore, the client of an s3fs filesystem.

Requests go to the botocore client directly (s3fs's wrappers retry on their own and map
errors to bare ``OSError``\\ s): GetObject with ``Range``, ``IfMatch`` (pinned reads) and
``IfNoneMatch`` (revalidation, 304), HeadObject, PutObject with ``IfMatch`` /
``IfNoneMatch='*'`` (conditional writes; AWS since 2024, moto), DeleteObject with
``IfMatch``, ListObjectsV2. botocore's own retries are turned off when this module's
``open_kvstore`` builds the filesystem (``retries: total_max_attempts=1``), so the
store's policy is the only one. Generations are ETags.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fsspec import AbstractFileSystem

from ..errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    StorageError,
    UnavailableError,
)
from .base import NO_VALUE, Generation
from .remote import RemoteKvStore, Response
from .retry import TRANSIENT_STATUS, Transient

__all__ = ["S3KvStore"]

_TRANSIENT_CODES = {
    "RequestTimeout",
    "RequestTimeoutException",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "InternalError",
    "ServiceUnavailable",
    "ConditionalRequestConflict",  # a concurrent conditional write: ask again
}
#: User metadata naming the conditional write that stored an object.
_TOKEN = "precomputed-write"
_AUTH_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
}


class S3KvStore(RemoteKvStore):
    """S3 bucket ``bucket`` under ``path``; ``fs`` is an s3fs ``S3FileSystem`` (its
    endpoint, credentials and client are used)."""

    driver = "s3"
    auth_hint = (
        "Give AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile in "
        "~/.aws, or storage_options={'key': ..., 'secret': ...}); for a public bucket use "
        "anonymous access: storage_options={'anon': True}. Without s3:ListBucket, S3 "
        "answers 403 instead of 404 for missing keys."
    )

    def __init__(
        self,
        fs: AbstractFileSystem,
        bucket: str,
        path: str = "",
        *,
        endpoint: str | None = None,
        aws_region: str | None = None,
        **kwargs: Any,
    ) -> None:
        if not bucket or "/" in bucket:
            raise InvalidArgumentError(f"invalid S3 bucket name {bucket!r}")
        super().__init__(**kwargs)
        self.fs = fs
        self.bucket = bucket
        self.prefix = path.strip("/")
        self.endpoint = endpoint
        self.aws_region = aws_region

    @property
    def _base(self) -> str:
        return f"{self.bucket}/{self.prefix}/" if self.prefix else f"{self.bucket}/"

    @property
    def url(self) -> str:
        return f"s3://{self._base}"

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {"driver": "s3", "bucket": self.bucket}
        if self.prefix:
            out["path"] = self.prefix + "/"
        if self.endpoint:
            out["endpoint"] = self.endpoint
        if self.aws_region:
            out["aws_region"] = self.aws_region
        return out

    def __repr__(self) -> str:
        return f"S3KvStore({self.url!r})"

    def _object(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        return self.fs.loop

    async def _call(self, op: str, what: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        """One client call: ``(HTTP status, response)``; 304/404/412/416 come back as
        statuses (with the error response), the rest as library errors or Transient."""
        import botocore.exceptions as bce

        fs: Any = self.fs
        try:
            client = await fs.set_session()
            resp = await getattr(client, op)(Bucket=self.bucket, **kwargs)
            if "Body" in resp:
                body = resp["Body"]
                try:
                    resp["Body"] = await body.read()
                finally:
                    body.close()
        except bce.ClientError as exc:
            return self._client_error(exc, what)
        except (bce.NoCredentialsError, bce.PartialCredentialsError) as exc:
            raise PermissionDeniedError(f"{what}: {exc}. {self.auth_hint}") from exc
        except bce.ParamValidationError as exc:
            raise InvalidArgumentError(f"{what}: {exc}") from exc
        except (bce.HTTPClientError, bce.ConnectionError, bce.IncompleteReadError) as exc:
            raise _transport(exc) from exc
        except Exception as exc:
            import aiohttp

            if isinstance(exc, (aiohttp.ClientError, asyncio.TimeoutError, OSError)):
                raise _transport(exc) from exc
            if isinstance(exc, bce.BotoCoreError):
                raise StorageError(f"{what}: {type(exc).__name__}: {exc}") from exc
            raise
        return int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode", 200)), resp

    def _client_error(self, exc: Any, what: str) -> tuple[int, dict[str, Any]]:
        response = exc.response or {}
        error = response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code == "NoSuchBucket":
            raise NotFoundError(f"{what}: the bucket {self.bucket!r} does not exist") from exc
        if status in (304, 404, 412, 416) or code in ("304", "NoSuchKey", "PreconditionFailed", "InvalidRange"):
            status = {"304": 304, "NoSuchKey": 404, "PreconditionFailed": 412, "InvalidRange": 416}.get(code, status)
            return status, response
        if status in TRANSIENT_STATUS or code in _TRANSIENT_CODES or status == 409:
            headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            from .retry import parse_retry_after

            raise Transient(f"HTTP {status} {code}", parse_retry_after(headers.get("retry-after"))) from exc
        if status in (401, 403) or code in _AUTH_CODES:
            raise PermissionDeniedError(f"{what}: HTTP {status} {code}: {error.get('Message', '')}. {self.auth_hint}") from exc
        if status == 400:
            raise InvalidArgumentError(f"{what}: HTTP 400 {code}: {error.get('Message', '')}") from exc
        raise StorageError(f"{what}: HTTP {status} {code}: {error.get('Message', '')}") from exc

    async def _get_once(
        self,
        key: str,
        range_header: str | None,
        if_match: Generation | None,
        if_none_match: Generation | None,
    ) -> Response:
        kwargs: dict[str, Any] = {"Key": self._object(key)}
        if range_header:
            kwargs["Range"] = range_header
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        if if_none_match is not None:
            kwargs["IfNoneMatch"] = if_none_match
        what = f"reading {self.url}{key}" + (f" ({range_header})" if range_header else "")
        status, resp = await self._call("get_object", what, **kwargs)
        if status not in (200, 206):
            return Response(status)
        data = resp["Body"]
        length = resp.get("ContentLength")
        if length is not None and int(length) != len(data):
            raise Transient(f"the body was cut short: {len(data)} of {length} bytes")
        return Response(status, data, resp.get("ETag"), resp.get("ContentRange"))

    async def _head_once(self, key: str) -> Response:
        what = f"reading metadata of {self.url}{key}"
        status, resp = await self._call("head_object", what, Key=self._object(key))
        if status != 200:
            if status == 404:
                return Response(404)
            raise Transient(f"unexpected HTTP {status} to HEAD")
        token = (resp.get("Metadata") or {}).get(_TOKEN)
        return Response(200, b"", resp.get("ETag"), size=int(resp.get("ContentLength", 0)), token=token)

    async def _put_once(
        self, key: str, data: bytes, if_generation: Generation | None, token: str | None
    ) -> Generation | None:
        kwargs: dict[str, Any] = {"Key": self._object(key), "Body": data}
        if token is not None:
            kwargs["Metadata"] = {_TOKEN: token}
        if if_generation == NO_VALUE:
            kwargs["IfNoneMatch"] = "*"
        elif if_generation is not None:
            kwargs["IfMatch"] = if_generation
        status, resp = await self._call("put_object", f"writing {self.url}{key}", **kwargs)
        if status in (412, 404):  # 404: IfMatch on a key that is gone
            return None
        if status != 200:
            raise Transient(f"unexpected HTTP {status} to PUT")
        return resp["ETag"]

    async def _delete_once(self, key: str, if_generation: Generation | None) -> bool:
        kwargs: dict[str, Any] = {"Key": self._object(key)}
        what = f"deleting {self.url}{key}"
        if if_generation is not None:
            # Look first, then delete with IfMatch: servers without conditional deletes
            # still refuse a stale generation unless it changes in between.
            head = await self._head_once(key)
            if head.status == 404 or head.generation != if_generation:
                return False
            kwargs["IfMatch"] = if_generation
        status, _ = await self._call("delete_object", what, **kwargs)
        if status in (412, 404):
            if if_generation is None:
                return True
            # It was at if_generation a moment ago: gone now means our DELETE did it and
            # a resend (aiohttp repeats a DELETE on a reused connection) found it gone.
            return (await self._head_once(key)).status == 404
        return True

    async def _list_once(self, prefix: str) -> list[str]:
        full = self._object(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        what = f"listing {self.url}{prefix}"
        skip = len(self.prefix) + 1 if self.prefix else 0
        out: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": full}
            if token:
                kwargs["ContinuationToken"] = token

            async def page(n: int, kwargs: dict[str, Any] = kwargs) -> dict[str, Any]:
                status, resp = await self._call("list_objects_v2", what, **kwargs)
                if status != 200:
                    raise Transient(f"unexpected HTTP {status} to a listing")
                return resp

            resp, _ = await self._retry(what, page)
            out.extend(item["Key"][skip:] for item in resp.get("Contents", ()))
            if not resp.get("IsTruncated"):
                return [k for k in out if k and not k.endswith("/")]
            token = resp.get("NextContinuationToken")


def _transport(exc: BaseException) -> Exception:
    name = type(exc).__name__
    if "Timeout" in name or isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return Transient(f"timed out ({name})")
    if isinstance(exc, UnavailableError):
        return exc
    return Transient(f"{name}: {exc}")

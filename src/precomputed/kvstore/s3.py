"""Amazon S3 (and compatible servers) through s3fs, with conditional PutObject."""

from __future__ import annotations

from typing import Any

from fsspec import AbstractFileSystem

from ..errors import InvalidArgumentError
from .base import NO_VALUE, Generation
from .fsspec import FsspecKvStore
from .keys import check_key

__all__ = ["S3KvStore"]


def _is_precondition_failure(exc: BaseException) -> bool:
    """True when ``exc`` (or what it wraps) is S3's 412 PreconditionFailed or 409
    ConditionalRequestConflict (a concurrent conditional write won)."""
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (412, 409):
                return True
        seen = seen.__cause__ or seen.__context__
    return False


class S3KvStore(FsspecKvStore):
    """S3 via s3fs. Generations are ETags; ``write_if`` uses ``IfMatch`` /
    ``IfNoneMatch='*'`` on PutObject (supported by AWS since 2024 and by moto)."""

    driver = "s3"
    conditional_writes = True

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
        self.bucket = bucket
        self.prefix = path.strip("/")
        self.endpoint = endpoint
        self.aws_region = aws_region
        super().__init__(fs, f"{bucket}/{self.prefix}" if self.prefix else bucket, **kwargs)

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

    def _object(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    async def _a_cat(self, path: str, start: int | None, stop: int | None) -> bytes:
        if start is None and stop is None:
            # s3fs otherwise sends a HEAD first to decide on a parallel download.
            return await self._afs._cat_file(path, max_concurrency=1)
        return await self._afs._cat_file(path, start=start, end=stop)

    async def _a_read_with_generation(self, key: str) -> tuple[bytes | None, Generation]:
        try:
            resp = await self._afs._call_s3("get_object", Bucket=self.bucket, Key=self._object(key))
        except FileNotFoundError:
            return None, NO_VALUE
        try:
            data = await resp["Body"].read()
        finally:
            resp["Body"].close()
        return data, resp["ETag"]

    def _read_with_generation(self, key: str) -> tuple[bytes | None, Generation]:
        return self._run(self._a_read_with_generation, key)

    async def _a_etag(self, key: str) -> Generation:
        try:
            head = await self._afs._call_s3(
                "head_object", Bucket=self.bucket, Key=self._object(key)
            )
        except FileNotFoundError:
            return NO_VALUE
        return head["ETag"]

    async def _a_write_if(self, key: str, data: bytes | None, if_generation: Generation) -> bool:
        fs = self._afs
        obj = self._object(key)
        cond = {"IfNoneMatch": "*"} if if_generation == NO_VALUE else {"IfMatch": if_generation}
        try:
            if data is None:
                if if_generation == NO_VALUE:
                    return await self._a_etag(key) == NO_VALUE
                if await self._a_etag(key) != if_generation:
                    return False
                await fs._call_s3("delete_object", Bucket=self.bucket, Key=obj, **cond)
            else:
                await fs._call_s3("put_object", Bucket=self.bucket, Key=obj, Body=data, **cond)
            return True
        except FileNotFoundError:
            return False
        except Exception as exc:
            if _is_precondition_failure(exc):
                return False
            raise
        finally:
            fs.invalidate_cache(self._path(key))

    def _write_if(self, key: str, data: bytes | None, if_generation: Generation) -> bool:
        return self._run(self._a_write_if, key, data, if_generation)

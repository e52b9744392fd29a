"""Key-value stores over fsspec filesystems: generic, GCS, S3 and HTTP(S).

All I/O goes through the filesystem's coroutines on fsspec's I/O loop, so batch reads
are one ``asyncio.gather`` bounded by a semaphore rather than a thread per request.
Synchronous filesystems are wrapped with fsspec's ``AsyncFileSystemWrapper``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import fsspec.asyn
from fsspec import AbstractFileSystem

from ..errors import InvalidArgumentError, UnimplementedError
from .base import NO_VALUE, Generation, KvStore, RangeRequest

__all__ = ["FsspecKvStore", "GcsKvStore", "S3KvStore", "HttpKvStore", "check_key"]

T = TypeVar("T")


def check_key(key: str) -> str:
    """Reject keys that would escape the root or alias another key after normalisation."""
    if not isinstance(key, str) or not key:
        raise InvalidArgumentError(f"kvstore key must be a non-empty string, got {key!r}")
    # String tests rather than split(): this runs for every key of every read.
    framed = f"/{key}/"
    if "//" in framed or "/./" in framed or "/../" in framed:
        raise InvalidArgumentError(f"invalid kvstore key {key!r}: empty, '.' or '..' segment")
    return key


def _hash_generation(data: bytes | None) -> Generation:
    # Backends without a native version token: a content hash is a safe generation,
    # because rewriting identical bytes (ABA) cannot lose anyone's update.
    return NO_VALUE if data is None else "h" + hashlib.blake2b(data, digest_size=16).hexdigest()


def _positive_range(start: int, stop: int | None) -> bool:
    return start >= 0 and (stop is None or stop >= 0)


class FsspecKvStore(KvStore):
    """A store rooted at directory ``root`` of any fsspec filesystem.

    ``root`` is in the filesystem's own path form (``bucket/dir`` for object stores,
    ``/dir`` for memory, a full URL for HTTP); keys are joined to it with ``/``.
    Conditional writes here are check-then-write under a process-local lock only
    (``supports_conditional_writes`` is False); GCS and S3 subclasses do it server-side.
    """

    #: TensorStore driver name reported by :meth:`spec`.
    driver: str = "fsspec"

    def __init__(
        self,
        fs: AbstractFileSystem,
        root: str = "",
        *,
        concurrency: int | None = None,
        read_only: bool | None = None,
    ) -> None:
        super().__init__()
        self.fs = fs
        self.root = root.rstrip("/")
        if concurrency is not None:
            if concurrency < 1:
                raise InvalidArgumentError(f"concurrency must be >= 1, got {concurrency}")
            self.concurrency = concurrency
        if read_only is not None:
            self.read_only = read_only
        self._cas_lock = threading.Lock()

    # -- naming ---------------------------------------------------------------------
    @property
    def _base(self) -> str:
        return f"{self.root}/"

    def _path(self, key: str) -> str:
        return self._base + check_key(key)

    @property
    def url(self) -> str:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return f"{protocol}://{self._base.lstrip('/')}"

    def spec(self) -> dict[str, Any]:
        return {"driver": self.driver, "url": self.url}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # -- async plumbing -------------------------------------------------------------
    @property
    def _afs(self) -> Any:
        afs = self.__dict__.get("_afs_cache")
        if afs is None:
            if getattr(self.fs, "async_impl", False):
                afs = self.fs
            else:
                from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

                afs = AsyncFileSystemWrapper(self.fs, asynchronous=False)
            self.__dict__["_afs_cache"] = afs
        return afs

    def _run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return fsspec.asyn.sync(self._afs.loop, fn, *args)

    async def _bounded(self, coros: list[Awaitable[T]]) -> list[T]:
        # One semaphore per batch: at most `concurrency` requests in flight.
        sem = asyncio.Semaphore(self.concurrency)

        async def one(c: Awaitable[T]) -> T:
            async with sem:
                return await c

        return list(await asyncio.gather(*(one(c) for c in coros)))

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_afs_cache", None)
        state.pop("_cas_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._cas_lock = threading.Lock()

    # -- async primitives (subclasses refine these) --------------------------------
    async def _a_cat(self, path: str, start: int | None, stop: int | None) -> bytes:
        """Raw fetch; raises FileNotFoundError for a missing object."""
        if start is None and stop is None:
            return await self._afs._cat_file(path)
        return await self._afs._cat_file(path, start=start, end=stop)

    async def _a_size(self, path: str) -> int | None:
        """Size of the object at ``path``, None if it does not exist (or is a directory)."""
        try:
            info = await self._afs._info(path)
        except FileNotFoundError:
            return None
        if info.get("type", "file") != "file":
            return None
        size = info.get("size")
        return None if size is None else int(size)

    async def _a_read(self, path: str) -> bytes | None:
        try:
            return await self._a_cat(path, None, None)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    async def _a_read_range(self, path: str, start: int, stop: int | None) -> bytes | None:
        if start == 0 and stop is None:
            return await self._a_read(path)
        if _positive_range(start, stop) and stop is not None and stop <= start:
            # Empty request: no byte-range header can express it, so just check existence.
            return None if await self._a_size(path) is None else b""
        try:
            out = await self._a_cat(path, start, stop)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        except Exception:
            # GCS/HTTP answer 416 and S3 InvalidRange for start >= size; each surfaces as
            # a different exception type, so decide from the object's size instead.
            size = await self._a_size(path)
            if size is None:
                return None
            if start >= size:
                return b""
            raise
        if _positive_range(start, stop) and stop is not None and len(out) > stop - start:
            out = out[start:stop]  # the server ignored Range and sent the whole object
        return out

    async def _a_delete(self, path: str) -> None:
        try:
            await self._afs._rm_file(path)
        except FileNotFoundError:
            pass

    # -- KvStore hooks ----------------------------------------------------------------
    def _read(self, key: str) -> bytes | None:
        return self._run(self._a_read, self._path(key))

    def _read_range(self, key: str, start: int, stop: int | None) -> bytes | None:
        return self._run(self._a_read_range, self._path(key), start, stop)

    def _read_many(self, keys: list[str]) -> list[bytes | None]:
        paths = [self._path(k) for k in keys]

        async def batch() -> list[bytes | None]:
            return await self._bounded([self._a_read(p) for p in paths])

        return self._run(batch)

    def _read_ranges(self, requests: list[RangeRequest]) -> list[bytes | None]:
        reqs = [(self._path(k), a, b) for k, a, b in requests]

        async def batch() -> list[bytes | None]:
            return await self._bounded([self._a_read_range(*r) for r in reqs])

        return self._run(batch)

    def _read_with_generation(self, key: str) -> tuple[bytes | None, Generation]:
        data = self._read(key)
        return data, _hash_generation(data)

    def _write(self, key: str, data: bytes) -> None:
        self._run(self._afs._pipe_file, self._path(key), data)

    def _write_if(self, key: str, data: bytes | None, if_generation: Generation) -> bool:
        # Best effort only: atomic against threads of this process, not other writers.
        with self._cas_lock:
            if self._read_with_generation(key)[1] != if_generation:
                return False
            if data is None:
                self._delete(key)
            else:
                self._write(key, data)
            return True

    def _delete(self, key: str) -> None:
        self._run(self._a_delete, self._path(key))

    def _delete_many(self, keys: list[str]) -> None:
        paths = [self._path(k) for k in keys]

        async def batch() -> None:
            await self._bounded([self._a_delete(p) for p in paths])

        self._run(batch)

    def _delete_prefix(self, prefix: str) -> None:
        self._delete_many(list(self._list(prefix)))

    def _list(self, prefix: str) -> Iterable[str]:
        base = self._base
        # List only the deepest directory the prefix names, then filter by the rest.
        directory = base + prefix.rpartition("/")[0]
        names = self._run(self._afs._find, directory.rstrip("/") or self._afs.root_marker)
        out = []
        for name in names:
            name = self._afs._strip_protocol(name)
            if name.startswith(base):
                key = name[len(base) :]
                if key.startswith(prefix) and key and not key.endswith("/"):
                    out.append(key)
        return out


# -- Google Cloud Storage ---------------------------------------------------------------


class _Drop416(logging.Filter):
    """gcsfs logs every non-retriable HTTP error with a traceback, including the 416 we
    provoke (and handle) when a range starts past the end of an object."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return getattr(exc, "code", None) != 416


_gcsfs_filter_installed = False


def _install_gcsfs_log_filter() -> None:
    global _gcsfs_filter_installed
    if not _gcsfs_filter_installed:
        logging.getLogger("gcsfs").addFilter(_Drop416())
        _gcsfs_filter_installed = True


class GcsKvStore(FsspecKvStore):
    """GCS via gcsfs. Generations are GCS object generations; ``write_if`` is a multipart
    upload with ``ifGenerationMatch`` (0 = create only), so the server decides."""

    driver = "gcs"
    supports_conditional_writes = True

    def __init__(self, fs: AbstractFileSystem, bucket: str, path: str = "", **kwargs: Any) -> None:
        if not bucket or "/" in bucket:
            raise InvalidArgumentError(f"invalid GCS bucket name {bucket!r}")
        self.bucket = bucket
        self.prefix = path.strip("/")
        super().__init__(fs, f"{bucket}/{self.prefix}" if self.prefix else bucket, **kwargs)
        _install_gcsfs_log_filter()

    @property
    def url(self) -> str:
        return f"gs://{self._base}"

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {"driver": "gcs", "bucket": self.bucket}
        if self.prefix:
            out["path"] = self.prefix + "/"
        return out

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        _install_gcsfs_log_filter()

    def _object(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    async def _a_read_with_generation(self, key: str) -> tuple[bytes | None, Generation]:
        fs = self._afs
        path = self._path(key)
        try:
            headers, data = await fs._call("GET", fs.url(path))
        except FileNotFoundError:
            return None, NO_VALUE
        gen = headers.get("x-goog-generation")
        if gen is None:
            # No header (some emulators): the generation read *before* the data is safe,
            # since a concurrent change then makes the later write_if fail, never succeed.
            try:
                meta = await fs._call(
                    "GET", "b/{}/o/{}", self.bucket, self._object(key), json_out=True
                )
                data = await fs._cat_file(path)
            except FileNotFoundError:
                return None, NO_VALUE
            gen = meta["generation"]
        return data, str(gen)

    def _read_with_generation(self, key: str) -> tuple[bytes | None, Generation]:
        return self._run(self._a_read_with_generation, key)

    async def _a_generation(self, key: str) -> Generation:
        try:
            meta = await self._afs._call(
                "GET", "b/{}/o/{}", self.bucket, self._object(key), json_out=True
            )
        except FileNotFoundError:
            return NO_VALUE
        return str(meta["generation"])

    async def _a_write_if(self, key: str, data: bytes | None, if_generation: Generation) -> bool:
        fs = self._afs
        obj = self._object(key)
        try:
            if data is None:
                if if_generation == NO_VALUE:
                    return await self._a_generation(key) == NO_VALUE
                # Pre-check too: fake-gcs-server ignores preconditions on DELETE (real GCS
                # honours them), so this narrows the window there.
                if await self._a_generation(key) != if_generation:
                    return False
                await fs._call(
                    "DELETE", "b/{}/o/{}", self.bucket, obj, ifGenerationMatch=if_generation
                )
                return True
            # Multipart upload: the only upload type whose preconditions fake-gcs-server
            # honours, and a single request on real GCS. gcsfs has no public API for it.
            boundary = uuid.uuid4().hex
            body = b"".join(
                [
                    f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(),
                    json.dumps({"name": obj, "contentType": "application/octet-stream"}).encode(),
                    f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode(),
                    data,
                    f"\r\n--{boundary}--".encode(),
                ]
            )
            await fs._call(
                "POST",
                f"{fs._location}/upload/storage/v1/b/{quote(self.bucket, safe='')}/o",
                uploadType="multipart",
                ifGenerationMatch=if_generation or "0",
                headers={"Content-Type": f'multipart/related; boundary="{boundary}"'},
                data=body,
                json_out=True,
            )
            return True
        except (FileExistsError, FileNotFoundError):
            return False  # gcsfs maps 412 Precondition Failed to FileExistsError
        finally:
            fs.invalidate_cache(self._path(key))

    def _write_if(self, key: str, data: bytes | None, if_generation: Generation) -> bool:
        return self._run(self._a_write_if, key, data, if_generation)


# -- Amazon S3 ----------------------------------------------------------------------------


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
    supports_conditional_writes = True

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


# -- HTTP(S), read-only -----------------------------------------------------------------


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

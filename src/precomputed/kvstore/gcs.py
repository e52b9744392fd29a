"""Google Cloud Storage through gcsfs, with server-side conditional writes."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any
from urllib.parse import quote

from fsspec import AbstractFileSystem

from ..errors import InvalidArgumentError
from .base import NO_VALUE, Generation
from .fsspec import FsspecKvStore
from .keys import check_key

__all__ = ["GcsKvStore"]


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
    conditional_writes = True

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

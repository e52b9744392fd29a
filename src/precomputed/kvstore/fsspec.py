"""The base of the network stores: a key-value store over an fsspec filesystem.

All I/O goes through the filesystem's coroutines on fsspec's I/O loop, so batch reads
are one ``asyncio.gather`` bounded by a semaphore rather than a thread per request.
Synchronous filesystems are wrapped with fsspec's ``AsyncFileSystemWrapper``. The GCS,
S3 and HTTP stores (:mod:`.gcs`, :mod:`.s3`, :mod:`.http`) refine it.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import fsspec.asyn
from fsspec import AbstractFileSystem

from ..errors import InvalidArgumentError
from .base import NO_VALUE, Generation, KvStore, RangeRequest
from .keys import check_key

__all__ = ["FsspecKvStore", "hash_generation"]

T = TypeVar("T")


def hash_generation(data: bytes | None) -> Generation:
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
    (``conditional_writes`` is False); GCS and S3 subclasses do it server-side.
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
        return data, hash_generation(data)

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

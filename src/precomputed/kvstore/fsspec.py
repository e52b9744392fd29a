"""A key-value store over any other fsspec filesystem (best effort).

All I/O goes through the filesystem's coroutines on fsspec's I/O loop, so batch reads
are one ``asyncio.gather`` bounded by a semaphore rather than a thread per request.
Synchronous filesystems are wrapped with fsspec's ``AsyncFileSystemWrapper``. fsspec
offers no versions, preconditions or status codes, so generations are content hashes,
pinned reads and revalidation read whole objects (:attr:`pinned_reads` holds: a whole
object is one version), conditional writes are check-then-write under a process lock,
and there are no retries. The GCS, S3 and HTTP stores (:mod:`.gcs`, :mod:`.s3`,
:mod:`.http`) do all of that properly, on :mod:`.remote`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from typing import Any

from fsspec import AbstractFileSystem

from .base import Generation, KvStore, RangeRequest
from .remote import RemoteKvStore, hash_generation

__all__ = ["FsspecKvStore", "hash_generation"]


def _positive_range(start: int, stop: int | None) -> bool:
    return start >= 0 and (stop is None or stop >= 0)


class FsspecKvStore(RemoteKvStore):
    """A store rooted at directory ``root`` of any fsspec filesystem.

    ``root`` is in the filesystem's own path form (``bucket/dir`` for object stores,
    ``/dir`` for memory, a full URL for HTTP); keys are joined to it with ``/``.
    Conditional writes here are check-then-write under a process-local lock only
    (``conditional_writes`` is False); GCS and S3 subclasses do it server-side.
    """

    #: TensorStore driver name reported by :meth:`spec`.
    driver: str = "fsspec"
    conditional_writes = False
    cheap_revalidation = False

    def __init__(
        self,
        fs: AbstractFileSystem,
        root: str = "",
        *,
        concurrency: int | None = None,
        read_only: bool | None = None,
    ) -> None:
        super().__init__(concurrency=concurrency, read_only=read_only)
        self.fs = fs
        self.root = root.rstrip("/")
        self._cas_lock = threading.Lock()

    # -- naming ---------------------------------------------------------------------
    @property
    def _base(self) -> str:
        return f"{self.root}/"

    def _path(self, key: str) -> str:
        return self._base + key

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

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        return self._afs.loop

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_afs_cache", None)
        state.pop("_cas_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._cas_lock = threading.Lock()

    # -- async primitives (subclasses refine these) --------------------------------
    async def _f_cat(self, path: str, start: int | None, stop: int | None) -> bytes:
        """Raw fetch; raises FileNotFoundError for a missing object."""
        if start is None and stop is None:
            return await self._afs._cat_file(path)
        return await self._afs._cat_file(path, start=start, end=stop)

    async def _f_size(self, path: str) -> int | None:
        """Size of the object at ``path``, None if it does not exist (or is a directory)."""
        try:
            info = await self._afs._info(path)
        except FileNotFoundError:
            return None
        if info.get("type", "file") != "file":
            return None
        size = info.get("size")
        return None if size is None else int(size)

    async def _f_read(self, path: str) -> bytes | None:
        try:
            return await self._f_cat(path, None, None)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    async def _f_read_range(self, path: str, start: int, stop: int | None) -> bytes | None:
        if start == 0 and stop is None:
            return await self._f_read(path)
        if _positive_range(start, stop) and stop is not None and stop <= start:
            # Empty request: no byte-range header can express it, so just check existence.
            return None if await self._f_size(path) is None else b""
        try:
            out = await self._f_cat(path, start, stop)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        except Exception:
            # GCS/HTTP answer 416 and S3 InvalidRange for start >= size; each surfaces as
            # a different exception type, so decide from the object's size instead.
            size = await self._f_size(path)
            if size is None:
                return None
            if start >= size:
                return b""
            raise
        if _positive_range(start, stop) and stop is not None and len(out) > stop - start:
            out = out[start:stop]  # the server ignored Range and sent the whole object
        return out

    async def _f_delete(self, path: str) -> None:
        try:
            await self._afs._rm_file(path)
        except FileNotFoundError:
            pass

    # -- KvStore hooks ----------------------------------------------------------------
    def _read(self, key: str) -> bytes | None:
        return self._run(self._f_read, self._path(key))

    def _read_range(self, key: str, start: int, stop: int | None) -> bytes | None:
        return self._run(self._f_read_range, self._path(key), start, stop)

    def _read_many(self, keys: list[str]) -> list[bytes | None]:
        paths = [self._path(k) for k in keys]

        async def batch() -> list[bytes | None]:
            return await self._bounded([self._f_read(p) for p in paths])

        return self._run(batch)

    def _read_ranges(self, requests: list[RangeRequest]) -> list[bytes | None]:
        reqs = [(self._path(k), a, b) for k, a, b in requests]

        async def batch() -> list[bytes | None]:
            return await self._bounded([self._f_read_range(*r) for r in reqs])

        return self._run(batch)

    def _read_ranges_sized(
        self, requests: list[RangeRequest]
    ) -> tuple[list[bytes | None], dict[str, int]]:
        # fsspec's range reads do not report the object's size: ask for it alongside
        # (one metadata request per key, concurrent with the ranges; best effort).
        reqs = [(self._path(k), a, b) for k, a, b in requests]
        keys = list(dict.fromkeys(k for k, _, _ in requests))

        async def batch() -> list[Any]:
            ranges = [self._f_read_range(*r) for r in reqs]
            return await self._bounded([*ranges, *(self._f_size(self._path(k)) for k in keys)])

        got = self._run(batch)
        blobs, found = got[: len(reqs)], got[len(reqs) :]
        return blobs, {k: n for k, n in zip(keys, found, strict=True) if n is not None}

    def _read_with_generation(self, key: str) -> tuple[bytes | None, Generation]:
        data = self._read(key)
        return data, hash_generation(data)

    # The hooks of KvStore's own generation defaults (whole reads), not RemoteKvStore's.
    _read_ranges_pinned = KvStore._read_ranges_pinned
    _read_ranges_each = KvStore._read_ranges_each  # whole batch, then every answer
    _read_if_changed = KvStore._read_if_changed
    _current_generation = KvStore._current_generation

    def _write(self, key: str, data: bytes) -> Generation:
        self._run(self._afs._pipe_file, self._path(key), data)
        return hash_generation(data)

    def _write_if(
        self, key: str, data: bytes | None, if_generation: Generation
    ) -> Generation | None:
        # Best effort only: atomic against threads of this process, not other writers.
        with self._cas_lock:
            if self._read_with_generation(key)[1] != if_generation:
                return None
            if data is None:
                self._delete(key)
                return hash_generation(None)
            return self._write(key, data)

    def _delete(self, key: str) -> None:
        self._run(self._f_delete, self._path(key))

    def _delete_many(self, keys: list[str]) -> None:
        paths = [self._path(k) for k in keys]

        async def batch() -> None:
            await self._bounded([self._f_delete(p) for p in paths])

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

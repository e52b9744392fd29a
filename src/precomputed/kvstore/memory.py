"""In-memory store on fsspec's process-wide memory filesystem.

Backed by ``MemoryFileSystem.store`` so that ``memory://`` data is shared with any other
fsspec user in the process (and reopening a spec sees the same bytes), but operating on
that dict directly: fsspec's own ``open()`` hands out one shared, seekable object per file,
which is not safe for concurrent readers.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable
from typing import Any

from fsspec.implementations.memory import MemoryFile, MemoryFileSystem

from .base import NO_VALUE, Generation, KvStore
from .keys import check_key

__all__ = ["MemoryKvStore"]

# Every write creates a new MemoryFile stamped with the next number, so the generation of
# a key changes on every write; one lock serialises compare-and-swap across all stores.
_generations = itertools.count(1)
_lock = threading.RLock()  # re-entrant: _generation() may stamp while held


def _generation(f: MemoryFile) -> Generation:
    gen = getattr(f, "_kv_generation", None)
    if gen is None:  # written through plain fsspec: stamp it on first sight
        with _lock:
            gen = getattr(f, "_kv_generation", None)
            if gen is None:
                gen = f._kv_generation = str(next(_generations))
    return gen


class MemoryKvStore(KvStore):
    """Store under ``memory://<path>/``; keys live in fsspec's global memory store."""

    conditional_writes = True
    cheap_misses = True

    def __init__(self, path: str = "", *, concurrency: int | None = None) -> None:
        super().__init__()
        self.fs = MemoryFileSystem()
        self.path = path.strip("/")
        # fsspec's memory paths are absolute: "/x/y/key".
        self._base = f"/{self.path}/" if self.path else "/"
        if concurrency is not None:
            self.concurrency = concurrency

    @property
    def url(self) -> str:
        return f"memory://{self.path}/" if self.path else "memory://"

    def spec(self) -> dict[str, Any]:
        return {"driver": "memory", "path": self.path + "/"} if self.path else {"driver": "memory"}

    def __repr__(self) -> str:
        return f"MemoryKvStore({self.url!r})"

    def _file(self, key: str) -> MemoryFile | None:
        return self.fs.store.get(self._base + check_key(key))

    def _read(self, key: str) -> bytes | None:
        f = self._file(key)
        return None if f is None else f.getvalue()

    def _read_range(self, key: str, start: int, stop: int | None) -> bytes | None:
        f = self._file(key)
        if f is None:
            return None
        with f.getbuffer() as view:
            return bytes(view[start:stop])

    def _read_many(self, keys: list[str]) -> list[bytes | None]:
        return [self._read(k) for k in keys]  # no I/O to overlap: threads would only cost

    def _read_ranges(self, requests: list[tuple[str, int, int | None]]) -> list[bytes | None]:
        return [self._read_range(*r) for r in requests]

    def _read_with_generation(self, key: str) -> tuple[bytes | None, Generation]:
        f = self._file(key)
        if f is None:
            return None, NO_VALUE
        return f.getvalue(), _generation(f)

    def _put(self, key: str, data: bytes) -> None:
        path = self._base + check_key(key)
        f = MemoryFile(self.fs, path, data)
        f._kv_generation = str(next(_generations))
        self.fs.store[path] = f

    def _write(self, key: str, data: bytes) -> None:
        with _lock:
            self._put(key, data)

    def _write_if(self, key: str, data: bytes | None, if_generation: Generation) -> bool:
        with _lock:
            f = self._file(key)
            if (NO_VALUE if f is None else _generation(f)) != if_generation:
                return False
            if data is None:
                self.fs.store.pop(self._base + key, None)
            else:
                self._put(key, data)
            return True

    def _delete(self, key: str) -> None:
        with _lock:
            self.fs.store.pop(self._base + check_key(key), None)

    def _list(self, prefix: str) -> Iterable[str]:
        start = self._base + prefix
        n = len(self._base)
        return [p[n:] for p in list(self.fs.store) if p.startswith(start)]

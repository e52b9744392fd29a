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

from .base import NO_VALUE, Generation, KvStore, RangeRequest

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
        return self.fs.store.get(self._base + key)  # keys were checked by the public method

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

    def _read_ranges_sized(
        self, requests: list[RangeRequest]
    ) -> tuple[list[bytes | None], dict[str, int]]:
        # One file object per key for the whole call: one generation, so its size is the
        # size of every range taken from it.
        files: dict[str, MemoryFile | None] = {}
        sizes: dict[str, int] = {}
        out: list[bytes | None] = []
        for k, a, b in requests:
            if k not in files:
                files[k] = self._file(k)
            f = files[k]
            if f is None:
                out.append(None)
                continue
            with f.getbuffer() as view:
                out.append(bytes(view[a:b]))
                sizes[k] = view.nbytes
        return out, sizes

    def _read_with_generation(self, key: str) -> tuple[bytes | None, Generation]:
        f = self._file(key)
        if f is None:
            return None, NO_VALUE
        return f.getvalue(), _generation(f)

    # Every write stores a new MemoryFile, so one file object is one generation: ranges
    # taken from the object fetched once are all of that generation.
    def _read_ranges_pinned(
        self, requests: list[RangeRequest], pins: dict[str, Generation]
    ) -> tuple[list[bytes | None], dict[str, Generation], dict[str, Generation | None]]:
        files: dict[str, MemoryFile | None] = {}
        gens: dict[str, Generation] = {}
        changed: dict[str, Generation | None] = {}
        for k, _, _ in requests:
            if k not in files:
                f = files[k] = self._file(k)
                gen = NO_VALUE if f is None else _generation(f)
                if k in pins and pins[k] != gen:
                    changed[k] = gen
                else:
                    gens[k] = gen
        out: list[bytes | None] = []
        for k, a, b in requests:
            f = files[k]
            if f is None or k in changed:
                out.append(None)
            else:
                with f.getbuffer() as view:
                    out.append(bytes(view[a:b]))
        return out, gens, changed

    def _read_if_changed(
        self, key: str, generation: Generation
    ) -> tuple[bytes | None, Generation] | None:
        f = self._file(key)
        gen = NO_VALUE if f is None else _generation(f)
        if gen == generation:
            return None
        return (None if f is None else f.getvalue()), gen

    def _current_generation(self, key: str) -> Generation:
        f = self._file(key)
        return NO_VALUE if f is None else _generation(f)

    def _put(self, key: str, data: bytes) -> Generation:
        path = self._base + key
        f = MemoryFile(self.fs, path, data)
        gen = f._kv_generation = str(next(_generations))
        self.fs.store[path] = f
        return gen

    def _write(self, key: str, data: bytes) -> Generation:
        with _lock:
            return self._put(key, data)

    def _write_if(
        self, key: str, data: bytes | None, if_generation: Generation
    ) -> Generation | None:
        with _lock:
            f = self._file(key)
            if (NO_VALUE if f is None else _generation(f)) != if_generation:
                return None
            if data is None:
                self.fs.store.pop(self._base + key, None)
                return NO_VALUE
            return self._put(key, data)

    def _delete(self, key: str) -> None:
        with _lock:
            self.fs.store.pop(self._base + key, None)

    def _list(self, prefix: str) -> Iterable[str]:
        start = self._base + prefix
        n = len(self._base)
        return [p[n:] for p in list(self.fs.store) if p.startswith(start)]

"""Local-filesystem store with atomic and conditional writes.

Every write (conditional or not) goes through a per-key lock file ``<key>.__lock``:
take an exclusive ``flock`` on it, check the generation if asked to, write the new bytes
*into the lock file* and ``os.replace`` it onto the key. Readers therefore only ever see a
complete old or complete new file, nothing is left behind on success, and a lock file
left by a crash is harmlessly reused (truncated) by the next writer. This is the same
scheme TensorStore's file driver uses, so the two can write one volume side by side.

Generations are ``"<mtime_ns>:<inode>:<size>"``, taken by ``fstat`` on the very file
descriptor the bytes are read from: writers never modify a file in place (they rename a
new inode over it), so an open descriptor's bytes and its stat always match. Because
the kernel reuses freed inode numbers at once and file times tick coarsely (a few ms),
two quick writes of equal size could otherwise produce equal generations (ABA); so each
writer sets the new file's mtime, under the lock, strictly above the mtime of the file
it replaces.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any
from urllib.parse import quote

from ..errors import InvalidArgumentError
from .base import NO_VALUE, Generation, KvStore, RangeRequest

try:
    import fcntl
except ImportError:  # Windows: only threads of this process are serialised
    fcntl = None  # type: ignore[assignment]

__all__ = ["FileKvStore", "LOCK_SUFFIX"]

LOCK_SUFFIX = ".__lock"
_process_lock = threading.Lock()  # the fallback when flock is unavailable
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)
#: Bytes above which a batch of local reads is spread over the store's threads.
_LARGE = 4 * 1024 * 1024


def _seek_read(fd: int, n: int, offset: int) -> bytes:
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, n)


_pread = getattr(os, "pread", _seek_read)  # Windows has no pread; our fds are private


def _pread_all(fd: int, n: int, offset: int) -> bytes:
    data = _pread(fd, n, offset)
    if len(data) == n or not data:
        return data
    parts = [data]  # a short read (file changed size meanwhile): keep reading
    got = len(data)
    while got < n:
        more = _pread(fd, n - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


#: Validated key -> path entries kept per store (cleared when full).
_PATH_MEMO = 1 << 16


def _generation(st: os.stat_result) -> Generation:
    return f"{st.st_mtime_ns}:{st.st_ino}:{st.st_size}"


def _stat_generation(path: str) -> Generation:
    """The generation of the file at ``path`` now (``NO_VALUE``: missing or a directory)."""
    try:
        st = os.stat(path)
    except _MISSING:
        return NO_VALUE
    return NO_VALUE if stat.S_ISDIR(st.st_mode) else _generation(st)


_UTIME_FD = os.utime in os.supports_fd
#: Steps tried when the filesystem stores coarser times than nanoseconds.
_MTIME_STEPS = (1, 1_000, 1_000_000, 1_000_000_000, 2_000_000_000)


def _stamp_mtime(fd: int, path: str, floor_ns: int) -> os.stat_result:
    """Give the file open as ``fd`` an mtime above ``floor_ns`` (the replaced file's),
    so its generation differs from every earlier one of the key; returns its stat."""
    target = time.time_ns()
    for step in _MTIME_STEPS:
        target = max(target, floor_ns + step)
        os.utime(fd if _UTIME_FD else path, ns=(target, target))
        st = os.fstat(fd)
        if st.st_mtime_ns > floor_ns:
            return st
    return st


class FileKvStore(KvStore):
    """Store rooted at a local directory. ``fsync=True`` also makes writes durable."""

    conditional_writes = True
    cheap_misses = True
    reads_into = hasattr(os, "readv")

    def __init__(
        self, root: str | os.PathLike[str], *, fsync: bool = False, concurrency: int | None = None
    ) -> None:
        super().__init__()
        self.root = os.path.abspath(os.fspath(root))
        self.fsync = fsync
        if concurrency is not None:
            self.concurrency = concurrency
        # Validated key -> path: small reads of the same chunks repeat the same keys.
        self._paths: dict[str, str] = {}

    @property
    def url(self) -> str:
        return "file://" + quote(self._dir_prefix())

    def _dir_prefix(self) -> str:
        return self.root if self.root.endswith("/") else self.root + "/"

    def spec(self) -> dict[str, Any]:
        return {"driver": "file", "path": self._dir_prefix()}

    def __repr__(self) -> str:
        return f"FileKvStore({self.root!r})"

    def _path(self, key: str) -> str:
        path = self._paths.get(key)
        if path is None:
            # The key rule itself was checked by the public method (keys.check_key).
            if key.endswith(LOCK_SUFFIX):
                raise InvalidArgumentError(f"invalid key {key!r}: {LOCK_SUFFIX!r} is reserved")
            if os.name == "nt" and ":" in key:
                raise InvalidArgumentError(f"invalid key {key!r}: ':' names a drive or stream")
            if len(self._paths) >= _PATH_MEMO:
                self._paths.clear()
            path = self._paths[key] = os.path.join(self.root, key.replace("/", os.sep))
        return path

    # -- reads ----------------------------------------------------------------------
    def _read(self, key: str) -> bytes | None:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except _MISSING:
            return None

    def _read_range(self, key: str, start: int, stop: int | None) -> bytes | None:
        return self._read_ranges_of(key, [(start, stop)])[0][0]

    def _read_ranges_of(
        self, key: str, ranges: list[tuple[int, int | None]], sized: bool = False
    ) -> tuple[list[bytes | None], int | None]:
        """Several ranges of one file: one open, one ``pread`` each (no buffered reader);
        with the file's size when ``sized`` (None: missing, or not asked for)."""
        try:
            fd = os.open(self._path(key), os.O_RDONLY | _O_CLOEXEC | _O_BINARY)
        except _MISSING:
            return [None] * len(ranges), None
        try:
            if not sized and all(stop is not None and 0 <= start < stop for start, stop in ranges):
                # Explicit ranges need no size: pread stops at the end of the file, and
                # on a directory (not a key) it fails.
                try:
                    return [_pread_all(fd, b - a, a) for a, b in ranges], None  # type: ignore[operator]
                except IsADirectoryError:
                    return [None] * len(ranges), None
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):  # a directory is not a key
                return [None] * len(ranges), None
            size = st.st_size
            out: list[bytes | None] = []
            for start, stop in ranges:
                a, b, _ = slice(start, stop).indices(size)  # Python slice semantics, clipped
                out.append(_pread_all(fd, b - a, a) if b > a else b"")
            # The descriptor's inode is never modified in place (writers rename a new
            # file over it), so this size is the size of the bytes read.
            return out, size
        finally:
            os.close(fd)

    def _read_into(self, key: str, buffer: Any) -> bool | None:
        try:
            fd = os.open(self._path(key), os.O_RDONLY | _O_CLOEXEC | _O_BINARY)
        except _MISSING:
            return None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                return None
            view = memoryview(buffer).cast("B")
            if st.st_size != view.nbytes or not hasattr(os, "readv"):
                return False
            while view:
                n = os.readv(fd, [view])
                if n == 0:
                    return False  # truncated meanwhile
                view = view[n:]
            return True
        finally:
            os.close(fd)

    def _read_ranges(self, requests: list[tuple[str, int, int | None]]) -> list[bytes | None]:
        return self._ranges_by_file(requests, False)[0]

    def _read_ranges_sized(
        self, requests: list[RangeRequest]
    ) -> tuple[list[bytes | None], dict[str, int]]:
        return self._ranges_by_file(requests, True)

    def _ranges_by_file(
        self, requests: list[RangeRequest], sized: bool
    ) -> tuple[list[bytes | None], dict[str, int]]:
        by_key: dict[str, list[int]] = {}
        for i, (k, _, _) in enumerate(requests):
            by_key.setdefault(k, []).append(i)
        keys = list(by_key)

        def one(k: str) -> tuple[list[bytes | None], int | None]:
            return self._read_ranges_of(k, [requests[i][1:] for i in by_key[k]], sized)

        # Small reads from the page cache take microseconds: a thread hand-off per file
        # costs more than the read, so only large batches fan out.
        total = sum(
            (b - a) if b is not None and a >= 0 else _LARGE for _, a, b in requests
        )
        if len(keys) > 1 and total >= _LARGE:
            results = list(self._pool().map(one, keys))
        else:
            results = [one(k) for k in keys]
        out: list[bytes | None] = [None] * len(requests)
        sizes: dict[str, int] = {}
        for k, (blobs, size) in zip(keys, results, strict=True):
            if size is not None:
                sizes[k] = size
            for i, blob in zip(by_key[k], blobs, strict=True):
                out[i] = blob
        return out, sizes

    def _read_with_generation(self, key: str) -> tuple[bytes | None, Generation]:
        try:
            with open(self._path(key), "rb") as f:
                # The open file is an inode that writers never modify (they rename a new
                # one into place), so its stat matches the bytes read.
                gen = _generation(os.fstat(f.fileno()))
                return f.read(), gen
        except _MISSING:
            return None, NO_VALUE

    def _pinned_of(
        self, key: str, ranges: list[tuple[int, int | None]], pin: Generation | None
    ) -> tuple[list[bytes | None], Generation, bool]:
        """Ranges of one file through one descriptor, with the generation ``fstat`` of
        that descriptor reports; the last item is False when ``pin`` differs."""
        try:
            fd = os.open(self._path(key), os.O_RDONLY | _O_CLOEXEC | _O_BINARY)
        except _MISSING:
            return [None] * len(ranges), NO_VALUE, pin in (None, NO_VALUE)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                return [None] * len(ranges), NO_VALUE, pin in (None, NO_VALUE)
            gen = _generation(st)
            if pin is not None and pin != gen:
                return [None] * len(ranges), gen, False
            size = st.st_size
            out: list[bytes | None] = []
            for start, stop in ranges:
                a, b, _ = slice(start, stop).indices(size)
                out.append(_pread_all(fd, b - a, a) if b > a else b"")
            return out, gen, True
        finally:
            os.close(fd)

    def _read_ranges_pinned(
        self, requests: list[RangeRequest], pins: dict[str, Generation]
    ) -> tuple[list[bytes | None], dict[str, Generation], dict[str, Generation | None]]:
        by_key: dict[str, list[int]] = {}
        for i, (k, _, _) in enumerate(requests):
            by_key.setdefault(k, []).append(i)
        out: list[bytes | None] = [None] * len(requests)
        gens: dict[str, Generation] = {}
        changed: dict[str, Generation | None] = {}
        for k, idx in by_key.items():
            blobs, gen, ok = self._pinned_of(k, [requests[i][1:] for i in idx], pins.get(k))
            if not ok:
                changed[k] = gen
                continue
            gens[k] = gen
            for i, blob in zip(idx, blobs, strict=True):
                out[i] = blob
        return out, gens, changed

    def _read_if_changed(
        self, key: str, generation: Generation
    ) -> tuple[bytes | None, Generation] | None:
        if _stat_generation(self._path(key)) == generation:
            return None  # one stat: no open, no read
        data, gen = self._read_with_generation(key)
        return None if gen == generation else (data, gen)

    def _current_generation(self, key: str) -> Generation:
        return _stat_generation(self._path(key))

    # -- writes ---------------------------------------------------------------------
    def _acquire(self, lock_path: str) -> int:
        """Open and exclusively lock ``lock_path``; returns the fd. Retries when another
        writer renamed or removed the file between our open and our lock."""
        while True:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(lock_path), exist_ok=True)
                continue
            if fcntl is None:
                return fd
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                st = os.stat(lock_path)
            except FileNotFoundError:
                os.close(fd)
                continue
            mine = os.fstat(fd)
            if (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev):
                return fd
            os.close(fd)

    def _commit(self, key: str, data: bytes | None, expect: Generation | None) -> Generation | None:
        """Write or delete under the key's lock; the new generation (``NO_VALUE`` after a
        delete), or None when ``expect`` is given and no longer current."""
        path = self._path(key)
        lock_path = path + LOCK_SUFFIX
        with _process_lock if fcntl is None else nullcontext():
            fd = self._acquire(lock_path)
            renamed = False
            try:
                # Only writers holding this lock replace the file: its stat now is the
                # generation every reader of the current version has seen.
                try:
                    current_st: os.stat_result | None = os.stat(path)
                except _MISSING:
                    current_st = None
                if current_st is not None and stat.S_ISDIR(current_st.st_mode):
                    current_st = None
                if expect is not None:
                    current = NO_VALUE if current_st is None else _generation(current_st)
                    if current != expect:
                        return None
                if data is None:
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
                    return NO_VALUE
                os.ftruncate(fd, 0)  # a lock file left by a crash may hold stale bytes
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                st = _stamp_mtime(fd, lock_path, 0 if current_st is None else current_st.st_mtime_ns)
                if self.fsync:
                    os.fsync(fd)
                os.replace(lock_path, path)  # keeps the inode and its mtime
                renamed = True
                if self.fsync:
                    _fsync_dir(os.path.dirname(path))
                return _generation(st)
            finally:
                # Unlink before unlocking, so a waiter sees its inode is stale and retries.
                if not renamed:
                    try:
                        os.unlink(lock_path)
                    except FileNotFoundError:
                        pass
                os.close(fd)

    def _write(self, key: str, data: bytes) -> Generation:
        gen = self._commit(key, data, None)
        assert gen is not None  # unconditional writes always succeed
        return gen

    def _write_if(
        self, key: str, data: bytes | None, if_generation: Generation
    ) -> Generation | None:
        return self._commit(key, data, if_generation)

    def _delete(self, key: str) -> None:
        path = self._path(key)
        if os.path.lexists(path):  # don't create directories just to delete nothing
            self._commit(key, None, None)

    def _delete_prefix(self, prefix: str) -> None:
        self._delete_many(list(self._list(prefix)))
        # Prune directories the deletes emptied, deepest first; a concurrent writer that
        # loses its directory recreates it in _acquire.
        top = os.path.join(self.root, *prefix.rpartition("/")[0].split("/"))
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: -len(t[0])):
            if dirpath != self.root:
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass

    def _list(self, prefix: str) -> Iterable[str]:
        top = os.path.join(self.root, *prefix.rpartition("/")[0].split("/"))
        out = []
        for dirpath, _dirs, files in os.walk(top):
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            rel = "" if rel == "." else rel + "/"
            for name in files:
                key = rel + name
                if key.startswith(prefix) and not name.endswith(LOCK_SUFFIX):
                    out.append(key)
        return out


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

"""Crash recovery: while a creation runs, an ``INCOMPLETE`` object next to ``info`` lists
what to remove, so a failed or cancelled operation removes what it wrote and a crash
leaves a clearly marked volume that :func:`discard_incomplete` cleans up."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .. import metadata as md
from ..driver import open as open_volume
from ..driver import read_info
from ..errors import AlreadyExistsError, FailedPreconditionError, PrecomputedError, ReadOnlyError
from ..kvstore import KvStore, open_kvstore
from ..spec import parse_spec
from ..volume import Volume
from .plan import DRIVER

__all__ = [
    "MARKER",
    "IncompleteVolumeError",
    "Destination",
    "open_destination",
    "Marker",
    "check_writable",
    "claim_new_volume",
    "remove_scales",
    "find_incomplete",
    "discard_incomplete",
    "cleanup",
]

log = logging.getLogger("precomputed")

MARKER = "INCOMPLETE"
#: Bytes of source data processed per block (before decoding overheads).


_RETRIES = 32


class IncompleteVolumeError(PrecomputedError):
    """An operation failed and what it wrote could not be removed. The volume is marked
    by an ``INCOMPLETE`` object; :func:`discard_incomplete` removes the partial data."""

    def __init__(self, message: str, destination: str) -> None:
        super().__init__(message)
        self.destination = destination


@dataclass
class Destination:
    kv: KvStore
    path: str
    context: Any
    label: str

    def spec(self, **members: Any) -> dict[str, Any]:
        return {"driver": DRIVER, "kvstore": self.kv.spec(), "path": self.path, **members}

    def open(self, *, create: bool = False, **members: Any) -> Volume:
        options: dict[str, Any] = {"create": True} if create else {}
        return open_volume(self.spec(**members), kvstore=self.kv, context=self.context, **options)


def open_destination(
    destination: str | Mapping[str, Any] | Volume,
    kvstore: KvStore | None = None,
    context: Any = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Destination:
    if isinstance(destination, Volume):
        return Destination(
            destination.kvstore,
            destination.path,
            context or destination.context,
            destination.kvstore.url + destination.path,
        )
    spec: Any = destination if isinstance(destination, str) else dict(destination)
    if isinstance(spec, dict):
        spec.setdefault("driver", DRIVER)
    req = parse_spec(spec)
    opts = {**(req.storage_options or {}), **(storage_options or {})}
    kv = kvstore or open_kvstore(req.kvstore, **opts)
    label = destination if isinstance(destination, str) else kv.url + req.path
    return Destination(kv, req.path, context, str(label))


class Marker:
    """The ``INCOMPLETE`` object: scales to remove (and whether ``info`` was new)."""

    def __init__(self, dest: Destination, new_volume: bool) -> None:
        self.dest = dest
        self.new_volume = new_volume
        self.keys: list[str] = []
        self.key = dest.path + MARKER

    def _update(self, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
        kv = self.dest.kv
        for _ in range(_RETRIES):
            data, gen = kv.read_with_generation(self.key)
            current = _parse_marker(data) if data is not None else None
            new = change(current or {"scales": [], "delete_info": False})
            payload = None if new is None else json.dumps(new, indent=1, sort_keys=True).encode()
            if payload is None and data is None:
                return
            if kv.write_if(self.key, payload, gen):
                return
        raise FailedPreconditionError(f'Error writing "{self.key}": too many concurrent changes')

    def add(self, scale_key: str) -> None:
        self.keys.append(scale_key)

        def change(m: dict[str, Any]) -> dict[str, Any]:
            m = dict(m)
            m["scales"] = [*m.get("scales", []), scale_key]
            m["delete_info"] = bool(m.get("delete_info")) or self.new_volume
            m.setdefault("started", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            m["written_by"] = "napari-precomputed"
            m["note"] = (
                "A creation did not finish. Remove what it wrote with "
                "precomputed.create.discard_incomplete(<volume>)."
            )
            return m

        self._update(change)

    def done(self) -> None:
        """Success: forget our scales; the marker goes when nothing else is listed."""
        mine = set(self.keys)

        def change(m: dict[str, Any]) -> dict[str, Any] | None:
            rest = [k for k in m.get("scales", []) if k not in mine]
            if not rest:
                return None
            return {**m, "scales": rest, "delete_info": bool(m.get("delete_info"))}

        self._update(change)

    def discard(self) -> None:
        """Failure: remove our scales (and ``info`` if it was new), then the marker."""
        remove_scales(self.dest, self.keys, self.new_volume)
        self.done()


def check_writable(dest: Destination) -> None:
    if dest.kv.read_only:
        raise ReadOnlyError(f"{dest.label} is on a read-only store ({dest.kv.url})")


def claim_new_volume(dest: Destination, replace: bool, taken: str | None = None) -> None:
    """Make ``dest`` ready for a new volume: writable;
    emptied first when ``replace``, else refused with ``AlreadyExistsError`` when it
    holds an ``info`` (``taken``: the message; by default the command line's)."""
    check_writable(dest)
    info_key = dest.path + "info"
    if replace:
        dest.kv.delete_prefix(dest.path)
    elif dest.kv.read(info_key) is not None:
        raise AlreadyExistsError(
            taken
            or f"{dest.label} already holds a volume ({dest.kv.url}{info_key} exists): choose a "
            "new destination, or overwrite it (--overwrite, overwrite=True)"
        )


def _parse_marker(data: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def remove_scales(dest: Destination, keys: Sequence[str], delete_info: bool) -> None:
    """Drop scales ``keys`` from ``info`` (conditionally, retried on conflicts), delete
    ``info`` itself when it was new and is left without scales, then their chunks."""
    kv, path = dest.kv, dest.path
    info_key = path + "info"
    drop = set(keys)
    for _ in range(_RETRIES):
        meta, gen = read_info(kv, path)
        if meta is None:
            break
        remaining = [s for s in meta.scales if s.key not in drop]
        if len(remaining) == len(meta.scales) and not (delete_info and not remaining):
            break
        if delete_info and not remaining:
            payload = None
        else:
            payload = replace(meta, scales=remaining, extra=dict(meta.extra)).dumps()
        if kv.write_if(info_key, payload, gen):
            break
    else:
        raise FailedPreconditionError(f'Error writing "{info_key}": too many concurrent changes')
    for key in keys:
        prefix = _scale_prefix(path, key)
        if prefix is None:
            log.warning("not deleting the chunks of scale %r: its key leaves the volume", key)
            continue
        kv.delete_prefix(prefix)


def _scale_prefix(path: str, key: str) -> str | None:
    """``<scale directory>/`` for ``key``, or ``None`` if that is not strictly inside the
    volume directory (a key like ``""``, ``"."`` or ``"../x"``)."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts):
        return None
    directory = md.resolve_scale_key(path, key)
    if not directory.startswith(path) or len(directory) <= len(path):
        return None
    return directory + "/"


def find_incomplete(
    destination: str | Mapping[str, Any] | Volume, *, kvstore: KvStore | None = None
) -> dict[str, Any] | None:
    """The ``INCOMPLETE`` marker of a volume (what an unfinished creation wrote), or
    ``None`` when there is none."""
    dest = open_destination(destination, kvstore)
    data = dest.kv.read(dest.path + MARKER)
    if data is None:
        return None
    return _parse_marker(data) or {"scales": [], "delete_info": False}


def discard_incomplete(
    destination: str | Mapping[str, Any] | Volume, *, kvstore: KvStore | None = None
) -> bool:
    """Remove what an unfinished creation wrote (scales listed in the ``INCOMPLETE``
    marker, and ``info`` if the creation made it), then the marker. Returns ``False``
    when there was nothing to remove."""
    dest = open_destination(destination, kvstore)
    marker = find_incomplete(destination, kvstore=dest.kv)
    if marker is None:
        return False
    keys = [k for k in marker.get("scales", []) if isinstance(k, str)]
    remove_scales(dest, keys, bool(marker.get("delete_info")))
    dest.kv.delete(dest.path + MARKER)
    return True


def cleanup(marker: Marker, error: BaseException) -> None:
    """Remove what a failed operation wrote; if that fails too, say how to finish it."""
    try:
        marker.discard()
    except Exception as e:
        raise IncompleteVolumeError(
            f"{error} -- and removing the partial data of {marker.dest.label} failed ({e}); "
            f'it is marked by "{marker.key}": remove it with '
            "precomputed.create.discard_incomplete()",
            marker.dest.label,
        ) from error

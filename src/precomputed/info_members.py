"""Sub-sources named by a volume's ``info`` (``mesh``, ``segment_properties``, ...).

Three small jobs shared by :mod:`precomputed.meshes` and
:mod:`precomputed.segment_properties`:

- :func:`volume_location` — the kvstore and path of an opened volume (read structurally:
  this module sits beside :mod:`precomputed.metadata`, below the volume);
- :func:`resolve_subdir` — the store and key prefix a member value names (a relative
  directory as Neuroglancer resolves it, or an absolute URL);
- :func:`set_info_member` — set one top-level member of the volume ``info``
  conditionally on the generation read (retried when another writer got there first),
  keeping every other member as it is;
- :func:`read_json` — a JSON file of bounded size (:data:`MAX_JSON_BYTES`).
"""

from __future__ import annotations

from typing import Any, Protocol

from . import metadata as md
from .errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from .kvstore import KvStore, open_kvstore

__all__ = [
    "VolumeLocation",
    "volume_location",
    "resolve_subdir",
    "set_info_member",
    "read_json",
    "MAX_JSON_BYTES",
]

_MAX_RETRIES = 32
#: Largest JSON metadata file (info, legacy manifest) parsed; larger is refused.
MAX_JSON_BYTES = 256 * 1024 * 1024


class VolumeLocation(Protocol):
    """What :func:`volume_location` reads of a volume (a :class:`precomputed.Volume`)."""

    @property
    def kvstore(self) -> KvStore: ...

    @property
    def path(self) -> str: ...


def volume_location(volume: VolumeLocation) -> tuple[KvStore, str]:
    """``(kvstore, path)`` of an opened volume; ``path`` is "" or ends with ``/``."""
    return volume.kvstore, volume.path


def resolve_subdir(
    kvstore: KvStore, path: str, value: Any, member: str, **storage_options: Any
) -> tuple[KvStore, str]:
    """Store and key prefix (ending with ``/``) of the directory a member names.

    A relative value (``"mesh"``, ``"../props"``) is resolved against ``path`` in the same
    store and may not leave it; a URL (``gs://...``, ``precomputed://...``) opens its own.
    """
    if not isinstance(value, str) or not value.strip("/"):
        raise FailedPreconditionError(
            f'Error reading "{path}info": member "{member}" must be a non-empty string, '
            f"but received: {value!r}"
        )
    if value.startswith("precomputed://"):
        value = value[len("precomputed://") :]
    if "://" in value:
        return open_kvstore(value.rstrip("/") + "/", **storage_options), ""
    if value.startswith("/"):
        raise FailedPreconditionError(
            f'Error reading "{path}info": member "{member}" must be relative or a URL, '
            f"but received: {value!r}"
        )
    parts: list[str] = []
    for part in (path + value).split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise FailedPreconditionError(
                    f'Error reading "{path}info": member "{member}" ({value!r}) leaves the store'
                )
            parts.pop()
        else:
            parts.append(part)
    if not parts:
        raise FailedPreconditionError(
            f'Error reading "{path}info": member "{member}" ({value!r}) names the volume itself'
        )
    return kvstore, "/".join(parts) + "/"


def read_json(kvstore: KvStore, key: str, *, required: bool = True) -> Any:
    """Parse the JSON object at ``key`` (at most :data:`MAX_JSON_BYTES`)."""
    import json

    data = kvstore.read(key)
    if data is None:
        if required:
            raise NotFoundError(f'"{kvstore.url}{key}" does not exist')
        return None
    if len(data) > MAX_JSON_BYTES:
        raise FailedPreconditionError(
            f'Error reading "{key}": {len(data)} bytes is more than the {MAX_JSON_BYTES} '
            "bytes of JSON accepted"
        )

    def reject(name: str) -> None:
        raise ValueError(name)

    try:
        return json.loads(data, parse_constant=reject)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise FailedPreconditionError(f'Error reading "{key}": Invalid JSON') from None


def set_info_member(kvstore: KvStore, path: str, name: str, value: Any) -> bool:
    """Set top-level member ``name`` of ``<path>info`` to ``value`` (JSON); returns
    False when it already had that value (nothing written)."""
    if name in ("@type", "type", "data_type", "num_channels", "scales"):
        raise InvalidArgumentError(f"{name!r} is not an extra member of the volume info")
    key = path + "info"
    for _ in range(_MAX_RETRIES):
        data, generation = kvstore.read_with_generation(key)
        if data is None:
            raise NotFoundError(f'Metadata at "{key}" does not exist')
        meta = md.MultiscaleMetadata.loads(data, key=key)
        if meta.extra.get(name) == value:
            return False
        meta.extra = {**meta.extra, name: value}
        if kvstore.write_if(key, meta.dumps(), generation):
            return True
    raise FailedPreconditionError(
        f'Error writing "{key}": too many concurrent modifications, giving up'
    )

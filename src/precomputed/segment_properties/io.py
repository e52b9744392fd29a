"""Segment properties in stores: :func:`read` them from a volume (following its ``info``'s
``segment_properties`` member) or a properties directory, :func:`write` them next to a
volume and link them from its ``info`` (conditionally on the info's generation).

The format: docs/format/segment-properties.md; the data model: :mod:`.model`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import NotFoundError
from ..info_members import read_json, resolve_subdir, set_info_member, volume_location
from ..kvstore import KvStore, open_kvstore
from .model import SEGMENT_PROPERTIES_TYPE, SegmentProperties, parse

__all__ = ["read", "write"]


def _locate(source: Any, storage_options: Mapping[str, Any]) -> tuple[KvStore, str, Any]:
    """(store, path, info JSON at path) of a volume, a URL or a (store, path) pair."""
    if hasattr(source, "kvstore") and hasattr(source, "info"):
        kv, path = volume_location(source)
        return kv, path, read_json(kv, path + "info")  # current, not as opened
    if isinstance(source, tuple):
        kv, path = source
    else:
        url = str(source)
        if url.startswith("precomputed://"):
            url = url[len("precomputed://") :]
        kv, path = open_kvstore(url.rstrip("/") + "/", **storage_options), ""
    return kv, path, read_json(kv, path + "info")


def read(source: Any, **storage_options: Any) -> SegmentProperties:
    """Segment properties of a volume (opened, or its URL: follows the info's
    ``segment_properties`` member) or of a properties directory URL."""
    kv, path, info = _locate(source, storage_options)
    if isinstance(info, Mapping) and info.get("@type") == SEGMENT_PROPERTIES_TYPE:
        return parse(info, kv.url + path + "info")
    if not isinstance(info, Mapping) or "segment_properties" not in info:
        raise NotFoundError(
            f'"{kv.url}{path}info" has no "segment_properties" member (and is not a '
            "segment properties info)"
        )
    pkv, prefix = resolve_subdir(
        kv, path, info["segment_properties"], "segment_properties", **storage_options
    )
    key = prefix + "info"
    return parse(read_json(pkv, key), pkv.url + key)


def write(
    target: Any,
    properties: SegmentProperties,
    *,
    directory: str = "segment_properties",
    link: bool = True,
    **storage_options: Any,
) -> str:
    """Write ``properties`` to ``<directory>/info`` next to a volume's ``info`` and (with
    ``link``) set the volume's ``segment_properties`` member to ``directory``
    conditionally on the info's generation. Returns the key written."""
    doc = properties.to_json()  # validates
    if hasattr(target, "kvstore") and hasattr(target, "info"):
        kv, path = volume_location(target)
    elif isinstance(target, tuple):
        kv, path = target
    else:
        kv, path = open_kvstore(str(target).rstrip("/") + "/", **storage_options), ""
    pkv, prefix = resolve_subdir(kv, path, directory, "segment_properties")
    key = prefix + "info"
    pkv.write(key, json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    if link:
        set_info_member(kv, path, "segment_properties", directory)
    return key

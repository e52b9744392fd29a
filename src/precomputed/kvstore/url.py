"""THE URL parser: a volume or kvstore URL as a TensorStore kvstore spec and a path.

Every URL the driver and the plugin accept goes through :func:`parse_url` (the spec
parser for ``precomputed.open``, :func:`~precomputed.kvstore.open_kvstore`, the napari
reader's probe). The forms, and what each becomes, are listed in docs/driver.md ("URLs"):

* ``gs://bucket/path`` (also ``gcs://``), ``s3://bucket/path``;
* ``http(s)://host[:port]/path[?query]`` (the query is kept on every request);
* ``file:///absolute/path`` (percent-escapes decoded) and plain paths, relative or with
  ``~``, made absolute;
* ``memory://path``;
* each optionally prefixed ``precomputed://`` (as Neuroglancer and CloudVolume write
  them) or suffixed ``|neuroglancer-precomputed:`` (as TensorStore writes them).

Anything else (another scheme, ``file://host/...``, a bucket-less ``gs:///p``, another
``|`` pipeline) is an :class:`~precomputed.errors.InvalidArgumentError`.

A URL names a kvstore *root* (the driver and its members without ``path``; ``"/"`` for
local files) and a directory inside it, as TensorStore splits them, so that ``info`` and
scale keys with ``..`` resolve alike; :func:`join_path` and :func:`normalize_path` are
TensorStore's rules for those paths.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlsplit

from ..errors import InvalidArgumentError
from ..internal.jsonparse import dump_json

__all__ = [
    "PREFIX",
    "parse_url",
    "kvstore_spec_from_url",
    "join_path",
    "normalize_path",
]

#: The prefix Neuroglancer and CloudVolume put in front of a volume URL.
PREFIX = "precomputed://"
_SUFFIXES = ("|neuroglancer-precomputed:", "|neuroglancer_precomputed:")


def _undecorate(url: str) -> str:
    """``url`` without the ``precomputed://`` prefix or TensorStore's driver suffix."""
    if url[: len(PREFIX)].lower() == PREFIX:
        url = url[len(PREFIX) :]
    for suffix in _SUFFIXES:
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    if "|" in url:
        raise InvalidArgumentError(f"Unsupported URL pipeline: {dump_json(url)}")
    return url


def parse_url(url: str) -> tuple[dict[str, Any], str]:
    """Split a URL into ``(root kvstore spec, path)``; the path is not yet normalised
    (no trailing ``/`` added). Local paths come back as ``({"driver": "file", "path":
    "/"}, <absolute path without its leading "/">)``."""
    url = _undecorate(url)
    if "://" not in url:
        return {"driver": "file", "path": "/"}, os.path.abspath(os.path.expanduser(url))[1:]
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if scheme == "file":
        if not rest.startswith("/"):  # file://localhost/abs is not worth supporting
            raise InvalidArgumentError(f"file URL must be absolute (file:///...): {url!r}")
        return {"driver": "file", "path": "/"}, unquote(rest)[1:]
    if scheme == "memory":
        return {"driver": "memory"}, rest
    if scheme in ("gs", "gcs", "s3"):
        bucket, _, path = rest.partition("/")
        if not bucket:
            raise InvalidArgumentError(f"missing bucket name in {url!r}")
        return {"driver": "s3" if scheme == "s3" else "gcs", "bucket": bucket}, path
    if scheme in ("http", "https"):
        parts = urlsplit(url)
        base = f"{parts.scheme}://{parts.netloc}" + (f"?{parts.query}" if parts.query else "")
        return {"driver": "http", "base_url": base}, unquote(parts.path).lstrip("/")
    raise InvalidArgumentError(
        f"Unsupported URL scheme {scheme!r} in {url!r} (expected gs, s3, http, https, file, "
        "memory or a local path)"
    )


def kvstore_spec_from_url(url: str) -> dict[str, Any]:
    """The kvstore spec of the directory a URL names (what ``open_kvstore(url)`` opens):
    the root of :func:`parse_url` with its path. HTTP keeps the URL as ``base_url``, so
    its path stays percent-encoded as given."""
    root, path = parse_url(url)
    driver = root["driver"]
    if driver == "http":
        return {"driver": "http", "base_url": _undecorate(url)}
    if driver == "file":
        return {"driver": "file", "path": "/" + path}
    return {**root, "path": path}


def normalize_path(path: str) -> str:
    """A directory path: ``""`` stays empty, ``"/"`` becomes empty, else ends with ``/``."""
    if not path or path == "/":
        return ""
    return path if path.endswith("/") else path + "/"


def join_path(base: str, component: str) -> str:
    """TensorStore's path append: a ``/`` is inserted only if neither side has one."""
    if base and component and not base.endswith("/") and not component.startswith("/"):
        return f"{base}/{component}"
    return base + component

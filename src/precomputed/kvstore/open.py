"""Build a :class:`KvStore` from a TensorStore kvstore spec or a URL."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import fsspec
import fsspec.config

from ..errors import InvalidArgumentError
from .base import KvStore
from .file import FileKvStore
from .gcs import GcsKvStore
from .http import HttpKvStore
from .memory import MemoryKvStore
from .retry import RetryPolicy, Timeouts
from .s3 import S3KvStore
from .url import kvstore_spec_from_url

__all__ = ["open_kvstore"]

# TensorStore spec members we accept but have no use for (context resources, tuning).
_IGNORED = {"context", "cache_pool", "data_copy_concurrency", "recheck_cached_data"}
_MEMBERS = {
    "file": {"path", "file_io_concurrency", "file_io_sync", "file_io_locking"},
    "memory": {"path", "memory_key_value_store", "atomic"},
    "gcs": {"bucket", "path", "gcs_request_concurrency", "gcs_request_retries", "gcs_user_project"},
    "s3": {
        "bucket",
        "path",
        "endpoint",
        "aws_region",
        "host_header",
        "requester_pays",
        "aws_credentials",
        "s3_request_concurrency",
        "s3_request_retries",
    },
    "http": {"base_url", "path", "headers", "http_request_concurrency", "http_request_retries"},
}
_DRIVER_ALIASES = {"gs": "gcs", "https": "http", "local": "file"}


def open_kvstore(spec_or_url: Any, **storage_options: Any) -> KvStore:
    """Open the store a TensorStore kvstore spec (dict) or URL names.

    URLs are parsed by :func:`.url.parse_url` (``file:///abs``, a plain path,
    ``memory://x/``, ``gs://bucket/p``, ``s3://bucket/p``, ``http(s)://host/p``, each
    optionally with ``precomputed://`` in front). ``storage_options`` go to
    the fsspec filesystem (``token``, ``endpoint_url``, ``key``/``secret``, ...), on top of
    ``fsspec.config.conf``, except the store's own:

    * ``concurrency``: requests in flight per batch call;
    * ``fsync``: the file store's durability;
    * ``retries``: the network stores' :class:`.retry.RetryPolicy`, or a dict of its
      members (``max_retries``, ``initial_delay``, ``max_delay``, ``total_timeout``;
      durations in seconds or as ``"250ms"``). Overrides the spec's
      ``gcs_request_retries``/``s3_request_retries``/``http_request_retries`` (inline or
      under ``context``), which take TensorStore's members;
    * ``connect_timeout``, ``read_timeout``: seconds per attempt (:class:`.retry.Timeouts`).

    A :class:`KvStore` is returned unchanged.
    """
    if isinstance(spec_or_url, KvStore):
        return spec_or_url
    if isinstance(spec_or_url, os.PathLike):
        spec_or_url = os.fspath(spec_or_url)
    if isinstance(spec_or_url, str):
        spec = kvstore_spec_from_url(spec_or_url)
    elif isinstance(spec_or_url, Mapping):
        spec = dict(spec_or_url)
    else:
        raise InvalidArgumentError(f"expected a kvstore spec or URL, got {spec_or_url!r}")
    return _open_spec(spec, dict(storage_options))


def _open_spec(spec: dict[str, Any], options: dict[str, Any]) -> KvStore:
    driver = spec.get("driver")
    if not isinstance(driver, str):
        raise InvalidArgumentError(f"kvstore spec needs a 'driver' member, got {spec!r}")
    driver = _DRIVER_ALIASES.get(driver, driver)
    if driver not in _MEMBERS:
        raise InvalidArgumentError(
            f"unsupported kvstore driver {spec['driver']!r} (expected one of {sorted(_MEMBERS)})"
        )
    unknown = set(spec) - _MEMBERS[driver] - _IGNORED - {"driver"}
    if unknown:
        raise InvalidArgumentError(f"unknown member(s) {sorted(unknown)} in {driver} kvstore spec")
    path = spec.get("path", "")
    if not isinstance(path, str):
        raise InvalidArgumentError(f"kvstore 'path' must be a string, got {path!r}")
    concurrency = options.pop("concurrency", None)
    remote = _remote_options(driver, spec, options)

    if driver == "file":
        if not path:
            raise InvalidArgumentError("file kvstore spec needs a non-empty 'path'")
        fsync = options.pop("fsync", spec.get("file_io_sync", False))
        # Other options are fsspec-style and meaningless for local files: ignored, so
        # callers can pass one set of storage_options whatever the URL.
        return FileKvStore(path, fsync=bool(fsync), concurrency=concurrency)
    if driver == "memory":
        return MemoryKvStore(path, concurrency=concurrency)
    if driver == "gcs":
        bucket = _bucket(spec, driver)
        return GcsKvStore(
            _gcs_filesystem(options), bucket, path, concurrency=concurrency, **remote
        )
    if driver == "s3":
        bucket = _bucket(spec, driver)
        endpoint = spec.get("endpoint")
        region = spec.get("aws_region")
        fs = _s3_filesystem(options, endpoint, region, remote["timeouts"])
        if endpoint is None:  # report a custom endpoint given as an fsspec option
            endpoint = getattr(fs, "endpoint_url", None) or fs.client_kwargs.get("endpoint_url")
        return S3KvStore(
            fs,
            bucket,
            path,
            endpoint=endpoint,
            aws_region=region,
            concurrency=concurrency,
            **remote,
        )
    # http
    base_url = spec.get("base_url")
    if not isinstance(base_url, str):
        raise InvalidArgumentError(f"http kvstore spec needs a 'base_url', got {spec!r}")
    if "headers" in spec:
        options.setdefault("headers", _headers(spec["headers"]))
    return HttpKvStore(
        fsspec.filesystem("http", **options),
        _join_http(base_url, path),
        concurrency=concurrency,
        **remote,
    )


def _remote_options(driver: str, spec: Mapping[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The retry policy and timeouts of a network store (popped from ``options``)."""
    given = options.pop("retries", None)
    connect = options.pop("connect_timeout", None)
    read = options.pop("read_timeout", None)
    if driver not in ("gcs", "s3", "http"):
        return {}
    name = f"{driver}_request_retries"
    policy = RetryPolicy()
    context = spec.get("context") or {}
    if not isinstance(context, Mapping):
        raise InvalidArgumentError(f"kvstore 'context' must be an object, got {context!r}")
    member = spec.get(name)
    if isinstance(member, str):  # a reference to a context resource: "name" or "name#id"
        member = context.get(member)
    elif member is None:
        member = context.get(name)
    if member is not None:
        policy = RetryPolicy.from_json(member, name, extensions=False)
    if given is not None:
        policy = RetryPolicy.from_json(given, "retries", base=policy)
    defaults = Timeouts()
    timeouts = Timeouts(
        connect=defaults.connect if connect is None else connect,
        read=defaults.read if read is None else read,
    )
    return {"retries": policy, "timeouts": timeouts}


def _bucket(spec: Mapping[str, Any], driver: str) -> str:
    bucket = spec.get("bucket")
    if not isinstance(bucket, str) or not bucket or "/" in bucket:
        raise InvalidArgumentError(f"{driver} kvstore spec needs a valid 'bucket', got {bucket!r}")
    return bucket


def _join_http(base_url: str, path: str) -> str:
    """TensorStore's rule: ``path`` is appended to the URL path of ``base_url``; the
    query string stays at the end."""
    parts = urlsplit(base_url)
    if not path:
        return base_url
    joined = parts.path.rstrip("/") + "/" + path.lstrip("/")
    return parts._replace(path=joined).geturl()


def _headers(headers: Any) -> dict[str, str]:
    # TensorStore writes headers as ["Name: value", ...].
    if isinstance(headers, Mapping):
        return {str(k): str(v) for k, v in headers.items()}
    out = {}
    for h in headers:
        name, sep, value = str(h).partition(":")
        if not sep:
            raise InvalidArgumentError(f"invalid HTTP header {h!r}: expected 'Name: value'")
        out[name.strip()] = value.strip()
    return out


def _conf(*protocols: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in protocols:
        out.update(fsspec.config.conf.get(p, {}))
    return out


def _gcs_filesystem(options: dict[str, Any]) -> Any:
    # The plain class, not gcsfs's default "extended" one: that asks a gRPC API for the
    # bucket type before bucket operations, which stalls for a minute against emulators
    # and buys nothing for whole-object I/O.
    from gcsfs.core import GCSFileSystem

    conf = _conf("gs", "gcs")
    if "token" not in options and "token" not in conf:
        # Public buckets are the common case; use real credentials only when configured.
        options["token"] = None if _have_google_credentials() else "anon"
    if "use_listings_cache" not in options and "use_listings_cache" not in conf:
        options["use_listings_cache"] = False  # other writers must be visible at once
    return GCSFileSystem(**options)


def _have_google_credentials() -> bool:
    if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        return True
    config_dir = os.environ.get("CLOUDSDK_CONFIG") or (
        os.path.join(os.environ.get("APPDATA", ""), "gcloud")
        if os.name == "nt"
        else os.path.expanduser("~/.config/gcloud")
    )
    return os.path.isfile(os.path.join(config_dir, "application_default_credentials.json"))


def _s3_filesystem(
    options: dict[str, Any], endpoint: str | None, region: str | None, timeouts: Timeouts
) -> Any:
    from s3fs import S3FileSystem

    conf = _conf("s3", "s3a")
    # The store retries (and bounds the time); botocore must not retry underneath it.
    config = dict(options.get("config_kwargs") or conf.get("config_kwargs") or {})
    config.setdefault("retries", {"total_max_attempts": 1})
    config.setdefault("connect_timeout", timeouts.connect)
    config.setdefault("read_timeout", timeouts.read)
    options["config_kwargs"] = config
    if endpoint is not None:
        options.setdefault("endpoint_url", endpoint)
    if region is not None:
        client_kwargs = dict(options.get("client_kwargs") or conf.get("client_kwargs") or {})
        client_kwargs.setdefault("region_name", region)
        options["client_kwargs"] = client_kwargs
    auth = {"anon", "key", "secret", "token", "profile", "session"}
    if not (auth & (set(options) | set(conf))) and not _have_aws_credentials():
        options["anon"] = True  # like TensorStore: anonymous when no credentials exist
    if "use_listings_cache" not in options and "use_listings_cache" not in conf:
        options["use_listings_cache"] = False
    return S3FileSystem(**options)


@functools.cache
def _have_aws_credentials() -> bool:
    # botocore's own chain (env, profiles, SSO, containers, EC2 metadata), asked once.
    try:
        import botocore.session

        return botocore.session.get_session().get_credentials() is not None
    except Exception:
        return False

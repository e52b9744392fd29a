"""Open/create requests: a TensorStore ``neuroglancer_precomputed`` JSON spec or a URL,
parsed and normalized into an :class:`OpenRequest`; and the bound spec of an open scale.

URLs are parsed by :func:`precomputed.kvstore.url.parse_url` (``gs://``, ``s3://``,
``http(s)://``, ``file://``, ``memory://``, plain paths; ``precomputed://`` prefixes and
``|neuroglancer-precomputed:`` suffixes).

The kvstore is split TensorStore-style into a *root* (``OpenRequest.kvstore``: the driver
and its members without ``path``; ``"/"`` for local files) and the volume directory
``OpenRequest.path`` inside it, so that ``<path>info`` is the info key and scale keys with
``..`` resolve as in TensorStore. :meth:`OpenRequest.kvstore_spec` recombines them into
the kvstore spec TensorStore itself would print.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from .codecs.table import check_data_type
from .constraints import MultiscaleConstraints, ScaleConstraints, constraint_domain
from .errors import InvalidArgumentError
from .internal.jsonparse import (
    MISSING,
    check_extra_members,
    concerning,
    dump_json,
    fail,
    member,
    parse_bool,
    parse_dtype_name,
    parse_int,
    parse_string,
    parse_uint64,
    require_object,
)
from .kvstore.url import join_path, normalize_path, parse_url
from .metadata import MultiscaleMetadata
from .schema import (
    DRIVER_ALIASES,
    DRIVER_ID,
    LABELS,
    RANK,
    CodecSpec,
    Schema,
)

__all__ = ["OpenRequest", "parse_spec", "parse_url", "bound_spec"]

_MODE_FLAGS = ("open", "create", "delete_existing", "assume_metadata", "assume_cached_metadata")
_BOOL_OPTIONS = ("fill_missing_data_reads", "store_data_equal_to_fill_value")
# TensorStore context resources a spec may name; accepted, kept, not interpreted.
_RESOURCES = ("context", "cache_pool", "data_copy_concurrency", "metadata_cache_pool")
_SPEC_MEMBERS = (
    "driver",
    "kvstore",
    "path",
    "dtype",
    "rank",
    "schema",
    "transform",
    "recheck_cached_metadata",
    "recheck_cached_data",
    "scale_index",
    "multiscale_metadata",
    "scale_metadata",
    *_MODE_FLAGS,
    *_BOOL_OPTIONS,
    *_RESOURCES,
)
# tensorstore.open keyword arguments that are schema constraints.
_SCHEMA_OPTIONS = (
    "rank",
    "dtype",
    "domain",
    "chunk_layout",
    "codec",
    "fill_value",
    "dimension_units",
)


@dataclass
class OpenRequest:
    """Everything ``open()`` needs, parsed and validated."""

    #: Kvstore *root* spec (TensorStore JSON without ``path``).
    kvstore: dict[str, Any]
    #: Volume directory inside the kvstore root: ends with ``/`` or is empty.
    path: str = ""
    open: bool = True
    create: bool = False
    delete_existing: bool = False
    assume_metadata: bool = False
    assume_cached_metadata: bool = False
    scale_index: int | None = None
    multiscale: MultiscaleConstraints = field(default_factory=MultiscaleConstraints)
    scale: ScaleConstraints = field(default_factory=ScaleConstraints)
    schema: Schema = field(default_factory=Schema)
    dtype: str | None = None
    fill_missing_data_reads: bool = True
    store_data_equal_to_fill_value: bool = False
    recheck_cached_metadata: bool | str | float = "open"
    recheck_cached_data: bool | str | float = True
    #: A TensorStore ``context`` object, kept for the caller.
    context: dict[str, Any] | None = None
    #: Other context resource references (``cache_pool``, ...), accepted and kept.
    resources: dict[str, Any] = field(default_factory=dict)
    #: fsspec options for the kvstore (our extension; never part of a TensorStore spec).
    storage_options: dict[str, Any] = field(default_factory=dict)
    #: The ``transform`` member as given (only a box over x, y, z, channel is supported).
    transform: dict[str, Any] | None = None
    #: The JSON this request was parsed from, keyword overrides applied.
    spec_json: dict[str, Any] = field(default_factory=dict)

    @property
    def info_key(self) -> str:
        return self.path + "info"

    def kvstore_spec(self) -> dict[str, Any]:
        """The TensorStore kvstore spec of the volume directory (reopenable by TS)."""
        return combine_kvstore(self.kvstore, self.path)

    def transform_index(self) -> list[slice | int] | None:
        """The x, y, z, channel index the ``transform`` selects (slices for box bounds,
        integers for dimensions fixed to an index), or ``None`` without a transform."""
        return None if self.transform is None else _transform_index(self.transform)

    def for_scale(self, index: int) -> OpenRequest:
        """The request that opens scale ``index`` of the same volume (open only)."""
        spec = {
            k: v for k, v in self.spec_json.items() if k not in (*_MODE_FLAGS, "scale_metadata")
        }
        return replace(
            self,
            spec_json={**spec, "scale_index": index},
            scale_index=index,
            scale=ScaleConstraints(),
            open=True,
            create=False,
            delete_existing=False,
            assume_metadata=False,
            assume_cached_metadata=False,
        )


# ---------------------------------------------------------------------------------------
# URLs and kvstores
# ---------------------------------------------------------------------------------------


def _split_kvstore(kvstore: Any) -> tuple[dict[str, Any], str]:
    """A kvstore member (URL or spec) as ``(root spec, path)``."""
    if isinstance(kvstore, os.PathLike):
        kvstore = os.fspath(kvstore)
    if isinstance(kvstore, str):
        return parse_url(kvstore)
    spec = dict(require_object(kvstore))
    with member("path"):
        path = parse_string(spec.pop("path", ""))
    driver = spec.get("driver")
    if driver == "file":
        # Local files: the root is the filesystem root, the path is absolute without "/".
        spec["path"] = "/"
        return spec, os.path.abspath(os.path.expanduser(path or "."))[1:]
    if driver == "http" and isinstance(spec.get("base_url"), str):
        parts = urlsplit(spec["base_url"])
        spec["base_url"] = f"{parts.scheme}://{parts.netloc}" + (
            f"?{parts.query}" if parts.query else ""
        )
        path = join_path(parts.path.lstrip("/"), path.lstrip("/"))
    return spec, path


def combine_kvstore(root: Mapping[str, Any], path: str) -> dict[str, Any]:
    """A kvstore root spec plus a path inside it, as TensorStore writes the pair."""
    spec = dict(root)
    base = spec.pop("path", "") or ""
    if spec.get("driver") == "http" and isinstance(spec.get("base_url"), str):
        parts = urlsplit(spec["base_url"])
        spec["base_url"] = f"{parts.scheme}://{parts.netloc}" + (
            f"?{parts.query}" if parts.query else ""
        )
        full = join_path(join_path(parts.path.strip("/"), base.strip("/")), path)
        full = normalize_path(full)
        if full:
            spec["path"] = "/" + full.lstrip("/")
        return spec
    full = normalize_path(join_path(base, path))
    if full:
        spec["path"] = full
    return spec


# ---------------------------------------------------------------------------------------
# Spec parsing
# ---------------------------------------------------------------------------------------


def parse_spec(spec: dict[str, Any] | str | OpenRequest, **options: Any) -> OpenRequest:
    """Parse a spec (JSON dict, URL, or an earlier request) plus ``tensorstore.open``-like
    keyword overrides: ``open``, ``create``, ``delete_existing``, ``assume_metadata``,
    ``assume_cached_metadata``, ``scale_index``, ``dtype``, ``rank``, ``domain``,
    ``shape``, ``chunk_layout``, ``codec``, ``fill_value``, ``dimension_units``,
    ``schema``, ``fill_missing_data_reads``, ``store_data_equal_to_fill_value``,
    ``recheck_cached_metadata``, ``recheck_cached_data``, ``context``, ``kvstore``,
    ``path``, ``storage_options``.
    """
    storage_options = dict(options.pop("storage_options", None) or {})
    if isinstance(spec, OpenRequest):
        if not options:  # nothing to re-parse: keep programmatic changes (for_scale, ...)
            return replace(spec, storage_options={**spec.storage_options, **storage_options})
        storage_options = {**spec.storage_options, **storage_options}
        spec = spec.spec_json
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if isinstance(spec, str):
        obj: dict[str, Any] = {"driver": DRIVER_ID, "kvstore": spec}
    elif isinstance(spec, Mapping):
        obj = copy.deepcopy(dict(spec))
    else:
        raise InvalidArgumentError(
            f"Expected a JSON spec, URL or OpenRequest, but received: {spec!r}"
        )
    _apply_options(obj, options)
    req = _parse_object(obj)
    req.spec_json = obj
    req.storage_options = storage_options
    return req


def _apply_options(obj: dict[str, Any], options: dict[str, Any]) -> None:
    """Fold keyword options into the JSON object, with tensorstore.open's semantics."""
    modes = {k: options.pop(k) for k in _MODE_FLAGS if k in options}
    if any(modes.get(k) for k in ("open", "create")):
        # open/create keywords replace the spec's open/create mode (observed in TS 0.1.86);
        # delete_existing / assume_* keywords add to it.
        for k in ("open", "create"):
            obj.pop(k, None)
    for k, v in modes.items():
        if v:
            obj[k] = True
    schema_kw: dict[str, Any] = {}
    codecs: list[Any] = []  # codec constraints of the schema option, then the keyword
    if "schema" in options:
        s = options.pop("schema")
        schema_kw.update(s.to_json() if isinstance(s, Schema) else dict(s or {}))
        if "codec" in schema_kw:
            codecs.append(schema_kw.pop("codec"))
    if "shape" in options:
        schema_kw["domain"] = {**schema_kw.get("domain", {}), "shape": list(options.pop("shape"))}
    for k in _SCHEMA_OPTIONS:
        if k in options:
            v = options.pop(k)
            v = v.to_json() if hasattr(v, "to_json") else v
            if k == "codec":
                codecs.append(v)
            else:
                schema_kw[k] = v
    if schema_kw or codecs:
        merged = dict(obj.get("schema") or {})
        for k, v in schema_kw.items():
            if k in merged and merged[k] != v:
                raise InvalidArgumentError(
                    f"Schema constraint {dump_json(k)} of {dump_json(v)} does not match "
                    f"existing value {dump_json(merged[k])}"
                )
            merged[k] = v
        for v in codecs:  # merged member by member, as TensorStore merges codecs
            merged["codec"] = merge_codec_json(merged["codec"], v) if "codec" in merged else v
        obj["schema"] = merged
    for k in (
        "scale_index",
        "kvstore",
        "path",
        "context",
        "transform",
        "recheck_cached_metadata",
        "recheck_cached_data",
        *_BOOL_OPTIONS,
    ):
        if k in options:
            obj[k] = options.pop(k)
    for k in ("multiscale_metadata", "scale_metadata"):
        if k in options:
            obj[k] = options.pop(k)
    if options:
        raise InvalidArgumentError(f"Unexpected option(s): {', '.join(sorted(options))}")


def merge_codec_json(existing: Any, given: Any) -> dict[str, Any]:
    """Two ``codec`` constraints as one, TensorStore's way: members set in only one are
    taken from it (``{}`` + jpeg is jpeg; raw + ``shard_data_encoding: gzip`` is a raw
    encoding in gzip shards); a member set in both to different values (or a codec of
    another driver) is an :class:`InvalidArgumentError` naming it
    (``member_path`` ``("schema", "codec", name)``)."""
    with member("schema"), member("codec"):
        a = CodecSpec.from_json(existing)
    with member("codec"):
        b = CodecSpec.from_json(given)
    try:
        return a.merge(b).to_json()
    except InvalidArgumentError as e:
        clash = [
            n
            for n in ("encoding", "jpeg_quality", "png_level", "shard_data_encoding")
            if None not in (getattr(a, n), getattr(b, n)) and getattr(a, n) != getattr(b, n)
        ]
        raise InvalidArgumentError(
            str(e), member_path=("schema", "codec", *clash[:1])
        ) from None


def _parse_recheck(value: Any) -> bool | str | float:
    if isinstance(value, bool) or value == "open":
        return value
    if isinstance(value, (int, float)) and math.isfinite(value):
        return value
    raise fail('"open", boolean, or number', value)


def _parse_object(obj: dict[str, Any]) -> OpenRequest:
    driver = obj.get("driver", DRIVER_ID)
    if driver not in DRIVER_ALIASES:
        with member("driver"):
            raise fail(dump_json(DRIVER_ID), driver)
    req = OpenRequest(kvstore={})
    for name in _RESOURCES:
        if name in obj:
            with member(name):
                value = require_object(obj[name])
            if name == "context":
                req.context = dict(value)
            else:
                req.resources[name] = value
    schema = Schema()
    if "schema" in obj:
        with member("schema"):
            schema = Schema.from_json(obj["schema"])
    if "rank" in obj:
        with member("rank"):
            rank = parse_int(obj["rank"], 0, 32)
        if rank != RANK:
            raise InvalidArgumentError(
                f"Rank specified by rank ({RANK}) does not match existing rank specified by "
                f"schema ({rank})"
            )
    if "dtype" in obj:
        with member("dtype"):
            schema.merge_dtype(parse_dtype_name(obj["dtype"]))
    if "transform" in obj:
        with member("transform"):
            req.transform = dict(require_object(obj["transform"]))
            _transform_index(req.transform)  # validate early
    kvstore = obj.get("kvstore", MISSING)
    if kvstore is not MISSING:
        with member("kvstore"):
            if kvstore is None or not isinstance(kvstore, (str, Mapping, os.PathLike)):
                raise fail("object", kvstore)
            root, base = _split_kvstore(kvstore)
        req.kvstore = root
    path = ""
    if "path" in obj:
        with member("path"):
            path = parse_string(obj["path"])
    req.open = False  # decided by _check_open_mode when neither open nor create is given
    for name in _MODE_FLAGS + _BOOL_OPTIONS:
        if name in obj:
            with member(name):
                setattr(req, name, parse_bool(obj[name]))
    for name in ("recheck_cached_metadata", "recheck_cached_data"):
        if name in obj:
            with member(name):
                setattr(req, name, _parse_recheck(obj[name]))
    if "scale_index" in obj:
        with member("scale_index"):
            req.scale_index = parse_uint64(obj["scale_index"])
    with member("multiscale_metadata"):
        mm = obj.get("multiscale_metadata", MISSING)
        if mm is not MISSING:
            require_object(mm)
        req.multiscale = MultiscaleConstraints.from_json(
            None if mm is MISSING else mm, dtype=schema.dtype
        )
    with member("scale_metadata"):
        sm = obj.get("scale_metadata", MISSING)
        if sm is not MISSING:
            require_object(sm)
        req.scale = ScaleConstraints.from_json(
            None if sm is MISSING else sm,
            data_type=req.multiscale.data_type,
            num_channels=req.multiscale.num_channels,
        )
    check_extra_members(obj, _SPEC_MEMBERS)
    if kvstore is MISSING:
        raise InvalidArgumentError('"kvstore" must be specified')
    req.path = normalize_path(join_path(base, path))
    if req.multiscale.data_type is not None:
        with concerning("multiscale_metadata", "data_type"):
            check_data_type(req.multiscale.data_type)
    schema.dtype = schema.dtype or req.multiscale.data_type
    req.schema = schema
    req.dtype = schema.dtype
    constraint_domain(req.multiscale, req.scale, schema)  # raises on conflicts
    _check_open_mode(req)
    return req


def _check_open_mode(req: OpenRequest) -> None:
    """TensorStore's open-mode rules; neither ``open`` nor ``create`` means open."""
    if not req.open and not req.create and not req.delete_existing:
        req.open = True
    if req.delete_existing:
        if not req.create:
            raise _mode_error("delete_existing", "without", "create")
        for other in ("open", "assume_metadata", "assume_cached_metadata"):
            if getattr(req, other):
                raise _mode_error("delete_existing", "with", other)
    for flag in ("assume_metadata", "assume_cached_metadata"):
        if getattr(req, flag) and not req.open:
            raise _mode_error(flag, "without", "open")


def _mode_error(flag: str, relation: str, other: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"Cannot specify an open mode of `{flag}` {relation} `{other}`")


def _transform_index(transform: Mapping[str, Any]) -> list[slice | int]:
    """The x, y, z, channel index equivalent to ``transform`` (else an error).

    Supported: each output dimension either maps one input dimension with offset 0 and
    stride 1 (input dimensions in increasing order: a box) or is a constant ``offset``
    (an integer index that drops the dimension) — exactly what ``Volume.spec()`` emits.
    """
    output = transform.get("output")
    bad = InvalidArgumentError(
        "Only transforms that restrict the domain to a box or fix dimensions to an index "
        "are supported, but received: " + dump_json(dict(transform))
    )
    rank = None
    for name in (
        "input_inclusive_min",
        "input_exclusive_max",
        "input_inclusive_max",
        "input_shape",
        "input_labels",
    ):
        if isinstance(transform.get(name), list):
            rank = len(transform[name])
            break
    if output is None:
        maps: list[Any] = [{"input_dimension": d} for d in range(RANK)]
        rank = RANK if rank is None else rank
    else:
        if not isinstance(output, list) or len(output) != RANK:
            raise bad
        maps = list(output)
    if rank is None:
        rank = sum(1 for m in maps if isinstance(m, Mapping) and "input_dimension" in m)
    lo: list[int | None] = [None] * rank
    hi: list[int | None] = [None] * rank
    for name in (
        "input_inclusive_min",
        "input_exclusive_max",
        "input_inclusive_max",
        "input_shape",
    ):
        if name not in transform:
            continue
        values = transform[name]
        if not isinstance(values, list) or len(values) != rank:
            raise InvalidArgumentError(f'"{name}" must be an array of length {rank}')
        for d, v in enumerate(values):
            if isinstance(v, list) and len(v) == 1:
                v = v[0]
            if v in ("-inf", "+inf"):
                continue
            if isinstance(v, bool) or not isinstance(v, int):
                raise InvalidArgumentError(f'Invalid "{name}" value: {dump_json(v)}')
            if name == "input_inclusive_min":
                lo[d] = v
            elif name == "input_exclusive_max":
                hi[d] = v
            elif name == "input_inclusive_max":
                hi[d] = v + 1
            else:
                hi[d] = (lo[d] or 0) + v
    index: list[slice | int] = []
    last = -1
    for m in maps:
        if not isinstance(m, Mapping) or set(m) - {"input_dimension", "offset", "stride"}:
            raise bad
        if "input_dimension" in m:
            i = m["input_dimension"]
            if (
                not isinstance(i, int)
                or not last < i < rank
                or m.get("offset", 0) != 0
                or m.get("stride", 1) != 1
            ):
                raise bad
            last = i
            index.append(slice(lo[i], hi[i]))
        elif isinstance(m.get("offset"), int) and not isinstance(m.get("offset"), bool):
            index.append(int(m["offset"]))
        else:
            raise bad
    if last != rank - 1 and rank:
        raise bad
    return index


# ---------------------------------------------------------------------------------------
# Bound spec
# ---------------------------------------------------------------------------------------


def bound_spec(
    meta: MultiscaleMetadata,
    scale_index: int,
    chunk_size: tuple[int, int, int] | list[int],
    kvstore_spec: Mapping[str, Any],
    path: str | OpenRequest = "",
    options: OpenRequest | Mapping[str, Any] | None = None,
    *,
    minimal: bool = False,
) -> dict[str, Any]:
    """What ``spec()`` returns for an open scale (§2.8), reopenable by TensorStore.

    ``kvstore_spec`` is the kvstore root (e.g. ``KvStore.spec()``) and ``path`` the volume
    directory inside it, or an :class:`OpenRequest` supplying both the path and the
    options. ``options`` (a request or a dict of option values) adds non-default options.
    """
    if isinstance(path, OpenRequest):
        options = options if options is not None else path
        path = path.path
    opts: Mapping[str, Any]
    transform = None
    if isinstance(options, OpenRequest):
        opts = {
            "fill_missing_data_reads": options.fill_missing_data_reads,
            "store_data_equal_to_fill_value": options.store_data_equal_to_fill_value,
            "recheck_cached_metadata": options.recheck_cached_metadata,
            "recheck_cached_data": options.recheck_cached_data,
            "assume_metadata": options.assume_metadata,
        }
        transform = options.transform
    else:
        opts = dict(options or {})
        transform = opts.get("transform")
    scale = meta.scales[scale_index]
    out: dict[str, Any] = {
        "driver": DRIVER_ID,
        "dtype": meta.data_type,
        "kvstore": combine_kvstore(kvstore_spec, path),
        "scale_index": scale_index,
    }
    if not minimal:
        out["multiscale_metadata"] = {"num_channels": meta.num_channels, "type": meta.type}
        sm: dict[str, Any] = {
            "chunk_size": list(chunk_size),
            "encoding": scale.encoding,
            "key": scale.key,
            "resolution": [float(r) for r in scale.resolution],
            "sharding": None if scale.sharding is None else scale.sharding.to_json(),
            "size": list(scale.size),
            "voxel_offset": list(scale.voxel_offset),
        }
        if scale.encoding == "compressed_segmentation":
            sm["compressed_segmentation_block_size"] = list(
                scale.compressed_segmentation_block_size or ()
            )
        if scale.encoding == "jpeg":
            sm["jpeg_quality"] = scale.jpeg_quality
        if scale.encoding == "png" and scale.png_level is not None:
            sm["png_level"] = scale.png_level
        out["scale_metadata"] = sm
    defaults = {
        "fill_missing_data_reads": True,
        "store_data_equal_to_fill_value": False,
        "recheck_cached_metadata": "open",
        "recheck_cached_data": True,
        "assume_metadata": False,
    }
    for name, default in defaults.items():
        value = opts.get(name, default)
        if value != default or type(value) is not type(default):
            out[name] = value
    if transform is not None:
        out["transform"] = dict(transform)
    else:
        lo = [*scale.voxel_offset, 0]
        hi = [o + s for o, s in zip(scale.voxel_offset, scale.size, strict=True)]
        out["transform"] = {
            "input_exclusive_max": [*hi, meta.num_channels],
            "input_inclusive_min": lo,
            "input_labels": list(LABELS),
        }
    return out

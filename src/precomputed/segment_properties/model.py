"""Segment properties as data: the ``neuroglancer_segment_properties`` ``info`` parsed,
validated and dumped, with no I/O (reading and writing stores: :mod:`.io`).

- :func:`parse` — a properties ``info`` object to :class:`SegmentProperties`, following
  Neuroglancer's parser (what it accepts, we accept, with clearer errors);
- :class:`SegmentProperties` — ids as a uint64 array, properties as columns, conversion
  to a plain dict of columns (napari ``features``), search by label and by tag;
  :meth:`SegmentProperties.to_json` also enforces the format's "must" rules (unique ids and
  property ids, at most one label, description and tags property, tag indices in range);
- :class:`Property` — one column, with constructors per property type.
"""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import FailedPreconditionError, InvalidArgumentError

__all__ = [
    "SEGMENT_PROPERTIES_TYPE",
    "PROPERTY_TYPES",
    "NUMBER_TYPES",
    "MAX_TAGS",
    "Property",
    "SegmentProperties",
    "parse",
]

SEGMENT_PROPERTIES_TYPE = "neuroglancer_segment_properties"
PROPERTY_TYPES = ("label", "description", "string", "tags", "number")
#: Data types of ``number`` properties (uint64/int64/float64 are not in the format).
NUMBER_TYPES: dict[str, np.dtype] = {
    n: np.dtype(n) for n in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32")
}
_ID = re.compile(r"[0-9]{1,20}\Z")
_U64_MAX = (1 << 64) - 1
#: Tags per property: Neuroglancer stores a segment's tag indices as UTF-16 code units.
MAX_TAGS = 0xFFFF
_STRING_TYPES = ("label", "description", "string")


def _dump(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Where:
    """Builds error messages naming the member at fault, e.g. ``inline.properties[2].values``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(
        self, member: str, message: str, cls: type[Exception] = FailedPreconditionError
    ) -> Exception:
        return cls(
            f'Error reading segment properties "{self.source}": member "{member}": {message}'
        )


@dataclass(frozen=True, eq=False)
class Property:
    """One column of values, one per segment id.

    ``values``: an object array of ``str`` (label, description, string), an array of
    ``data_type`` (number), or for tags a tuple of sorted tuples of indices into ``tags``.
    """

    id: str
    type: str
    values: Any
    description: str | None = None
    data_type: str | None = None
    tags: tuple[str, ...] | None = None
    tag_descriptions: tuple[str, ...] | None = None

    # -- constructors -----------------------------------------------------------------
    @classmethod
    def label(
        cls, values: Sequence[str], id: str = "label", description: str | None = None
    ) -> Property:
        """The segments' names (shown next to the id in Neuroglancer)."""
        return cls(id, "label", _strings(values, id), description)

    @classmethod
    def text(
        cls, id: str, values: Sequence[str], *, type: str = "string", description: str | None = None
    ) -> Property:
        """A string column (``type`` ``"string"`` or ``"description"``)."""
        if type not in ("string", "description"):
            raise InvalidArgumentError(f'property "{id}": type must be "string" or "description"')
        return cls(id, type, _strings(values, id), description)

    @classmethod
    def number(
        cls,
        id: str,
        values: Sequence[float] | np.ndarray,
        data_type: str | None = None,
        description: str | None = None,
    ) -> Property:
        """A numeric column; ``data_type`` defaults to that of ``values`` (if allowed)."""
        arr = np.asarray(values)
        if data_type is None:
            data_type = "float32" if arr.dtype.kind == "f" else str(arr.dtype)
        if data_type not in NUMBER_TYPES:
            raise InvalidArgumentError(
                f'property "{id}": data_type must be one of {list(NUMBER_TYPES)}, got {data_type!r}'
            )
        return cls(id, "number", _numbers(arr, data_type, id), description, data_type=data_type)

    @classmethod
    def tag_sets(
        cls,
        values: Sequence[Iterable[str]],
        *,
        tags: Sequence[str] | None = None,
        tag_descriptions: Sequence[str] | None = None,
        id: str = "tags",
    ) -> Property:
        """Tags from each segment's tag names; ``tags`` (default: sorted names seen) fixes
        the tag list and its order."""
        sets = [list(v) for v in values]
        names = list(tags) if tags is not None else sorted({t for s in sets for t in s})
        index = {t: i for i, t in enumerate(names)}
        try:
            idx = tuple(tuple(sorted({index[t] for t in s})) for s in sets)
        except KeyError as e:
            raise InvalidArgumentError(
                f'property "{id}": tag {e.args[0]!r} is not in tags'
            ) from None
        descr = tuple(tag_descriptions) if tag_descriptions is not None else None
        return cls(id, "tags", idx, tags=tuple(names), tag_descriptions=descr)

    # -- views ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.values)

    def tag_names(self) -> list[tuple[str, ...]]:
        """Each segment's tag names (tags properties only)."""
        if self.type != "tags" or self.tags is None:
            raise InvalidArgumentError(f'property "{self.id}" is not a tags property')
        names = self.tags
        return [tuple(names[i] for i in v) for v in self.values]

    def column(self) -> np.ndarray:
        """The values as one numpy column: strings as objects; tags as space-separated
        tag names (``"axon soma"``)."""
        if self.type == "tags":
            return np.array([" ".join(t) for t in self.tag_names()], dtype=object)
        return np.asarray(self.values)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": self.type}
        if self.description is not None:
            out["description"] = self.description
        if self.type == "tags":
            out["tags"] = list(self.tags or ())
            if self.tag_descriptions is not None:
                out["tag_descriptions"] = list(self.tag_descriptions)
            out["values"] = [list(v) for v in self.values]
        elif self.type == "number":
            out["data_type"] = self.data_type
            out["values"] = np.asarray(self.values).tolist()
        else:
            out["values"] = [str(v) for v in self.values]
        return out


def _strings(values: Sequence[Any], id: str) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise InvalidArgumentError(
                f'property "{id}": values[{i}] must be a string, got {_dump(v)}'
            )
        out[i] = v
    return out


def _numbers(arr: np.ndarray, data_type: str, id: str) -> np.ndarray:
    dtype = NUMBER_TYPES[data_type]
    if arr.dtype.kind not in "biuf" or arr.dtype.kind == "b":
        raise InvalidArgumentError(
            f'property "{id}": values must be numbers, got dtype {arr.dtype}'
        )
    if dtype.kind in "iu":
        as_float = arr.astype(np.float64)
        info = np.iinfo(dtype)
        bad = ~np.isfinite(as_float) | (as_float != np.round(as_float))
        bad |= (as_float < info.min) | (as_float > info.max)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InvalidArgumentError(
                f'property "{id}": values[{i}] = {arr.reshape(-1)[i]!r} is not a {data_type}'
            )
    else:
        with np.errstate(over="ignore"):
            converted = arr.astype(dtype)
        bad = np.isfinite(arr.astype(np.float64)) & ~np.isfinite(converted)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InvalidArgumentError(
                f'property "{id}": values[{i}] = {arr.reshape(-1)[i]!r} overflows float32'
            )
    return arr.astype(dtype).reshape(-1)


@dataclass(frozen=True, eq=False)
class SegmentProperties:
    """Inline segment properties: ``ids`` (uint64) and one :class:`Property` per column."""

    ids: np.ndarray
    properties: tuple[Property, ...] = ()
    _index: dict[int, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = _id_array(self.ids)
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "properties", tuple(self.properties))
        for p in self.properties:
            if len(p) != ids.shape[0]:
                raise InvalidArgumentError(
                    f'property "{p.id}" has {len(p)} values, but there are {ids.shape[0]} ids'
                )

    # -- lookups ----------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __contains__(self, segment_id: object) -> bool:
        return self._position(segment_id) is not None

    def _position(self, segment_id: object) -> int | None:
        if not self._index and len(self):
            # First occurrence wins for a repeated id (as lookups in Neuroglancer do).
            index = {int(i): k for k, i in reversed(list(enumerate(self.ids.tolist())))}
            object.__setattr__(self, "_index", index)
        try:
            return self._index.get(int(segment_id))  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return None

    def property(self, id: str) -> Property:
        """The property named ``id`` (``KeyError`` naming the ones there are)."""
        for p in self.properties:
            if p.id == id:
                return p
        raise KeyError(f"no property {id!r}; properties: {[p.id for p in self.properties]}")

    def _of_type(self, type: str) -> Property | None:
        return next((p for p in self.properties if p.type == type), None)

    @builtins.property
    def label(self) -> Property | None:
        """The label property, if any."""
        return self._of_type("label")

    @builtins.property
    def description(self) -> Property | None:
        return self._of_type("description")

    @builtins.property
    def tags(self) -> Property | None:
        return self._of_type("tags")

    def get(self, segment_id: int) -> dict[str, Any]:
        """One segment's values by property id (tags as a tuple of names)."""
        k = self._position(segment_id)
        if k is None:
            raise KeyError(f"segment {segment_id} has no properties")
        out: dict[str, Any] = {}
        for p in self.properties:
            if p.type == "tags":
                out[p.id] = tuple(p.tags[i] for i in p.values[k])  # type: ignore[index]
            else:
                v = p.values[k]
                out[p.id] = v.item() if isinstance(v, np.generic) else v
        return out

    def to_columns(self, id_column: str = "id") -> dict[str, np.ndarray]:
        """A dict of equal-length numpy columns (``id_column`` first), e.g. for napari
        ``features`` or ``pandas.DataFrame``."""
        cols: dict[str, np.ndarray] = {id_column: self.ids.copy()}
        for p in self.properties:
            if p.id in cols:
                raise InvalidArgumentError(f"property id {p.id!r} clashes with the id column")
            cols[p.id] = p.column()
        return cols

    # -- search -----------------------------------------------------------------------
    def find_by_label(
        self,
        text: str,
        *,
        regex: bool = False,
        case_sensitive: bool = False,
        property: str | None = None,
    ) -> np.ndarray:
        """Ids whose label (or string ``property``) contains ``text``, or matches the
        regular expression ``text`` anywhere (``regex=True``)."""
        prop = self.property(property) if property is not None else self.label
        if prop is None:
            return np.empty(0, dtype=np.uint64)
        if prop.type not in _STRING_TYPES:
            raise InvalidArgumentError(f'property "{prop.id}" is not a string property')
        flags = 0 if case_sensitive else re.IGNORECASE
        try:
            pattern = re.compile(text if regex else re.escape(text), flags)
        except re.error as e:
            raise InvalidArgumentError(f"invalid regular expression {text!r}: {e}") from None
        hits = np.fromiter(
            (pattern.search(v) is not None for v in prop.values), dtype=bool, count=len(self)
        )
        return self.ids[hits]

    def find_by_tag(self, *tags: str, match_all: bool = True) -> np.ndarray:
        """Ids having all (or, with ``match_all=False``, any) of ``tags``; tags match
        case-insensitively and a leading ``#`` is ignored. No tags: every id."""
        prop = self.tags
        if prop is None:
            return np.empty(0, dtype=np.uint64)
        if not tags:
            return self.ids.copy()
        lower = {t.lower(): i for i, t in enumerate(prop.tags or ())}
        idx = [lower.get(t.lstrip("#").lower()) for t in tags]
        known = [i for i in idx if i is not None]
        if not known or (match_all and len(known) < len(idx)):
            return np.empty(0, dtype=np.uint64)
        hits = self._tag_matrix(prop)[:, known]
        return self.ids[hits.all(axis=1) if match_all else hits.any(axis=1)]

    def _tag_matrix(self, prop: Property) -> np.ndarray:
        """(n ids, n tags) booleans."""
        n, t = len(self), len(prop.tags or ())
        counts = np.fromiter((len(v) for v in prop.values), dtype=np.int64, count=n)
        flat = np.fromiter(
            (i for v in prop.values for i in v), dtype=np.int64, count=int(counts.sum())
        )
        out = np.zeros((n, t), dtype=bool)
        out[np.repeat(np.arange(n), counts), flat] = True
        return out

    # -- JSON -------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The ``info`` JSON object (validated as :func:`write` would)."""
        self.validate()
        return {
            "@type": SEGMENT_PROPERTIES_TYPE,
            "inline": {
                "ids": [str(i) for i in self.ids.tolist()],
                "properties": [p.to_json() for p in self.properties],
            },
        }

    def validate(self) -> None:
        """Raise :class:`InvalidArgumentError` unless this may be written (the format's
        rules: unique ids and property ids, at most one label/description/tags property,
        tags without description, tag indices in range and increasing)."""
        uniq, counts = np.unique(self.ids, return_counts=True)
        if (counts > 1).any():
            raise InvalidArgumentError(f"ids must be unique; {int(uniq[counts > 1][0])} repeats")
        seen: set[str] = set()
        kinds: set[str] = set()
        for p in self.properties:
            where = f'property "{p.id}"'
            if not isinstance(p.id, str):
                raise InvalidArgumentError(f"property id must be a string, got {p.id!r}")
            if p.id in seen:
                raise InvalidArgumentError(f"{where}: property ids must be unique")
            seen.add(p.id)
            if p.type not in PROPERTY_TYPES:
                raise InvalidArgumentError(f"{where}: type must be one of {list(PROPERTY_TYPES)}")
            if p.type in ("label", "description", "tags"):
                if p.type in kinds:
                    raise InvalidArgumentError(
                        f'{where}: at most one property may have type "{p.type}"'
                    )
                kinds.add(p.type)
            if p.description is not None and not isinstance(p.description, str):
                raise InvalidArgumentError(f"{where}: description must be a string")
            if p.type == "tags":
                _check_tags(p, where)
            elif p.type == "number":
                if p.data_type not in NUMBER_TYPES:
                    raise InvalidArgumentError(
                        f"{where}: data_type must be one of {list(NUMBER_TYPES)}"
                    )
                _numbers(np.asarray(p.values), p.data_type, p.id)
            else:
                _strings(list(p.values), p.id)


def _check_tags(p: Property, where: str) -> None:
    if p.description is not None:
        raise InvalidArgumentError(f"{where}: a tags property has no description")
    tags = list(p.tags or ())
    if len(tags) > MAX_TAGS:
        raise InvalidArgumentError(f"{where}: at most {MAX_TAGS} tags, got {len(tags)}")
    if len({t.lower() for t in tags}) != len(tags):
        raise InvalidArgumentError(f"{where}: tags must be distinct (case-insensitively)")
    for t in tags:
        if not isinstance(t, str) or not t or t.startswith("#") or any(c.isspace() for c in t):
            raise InvalidArgumentError(
                f"{where}: tag {t!r} must be a non-empty string without spaces or a leading '#'"
            )
    if p.tag_descriptions is not None and len(p.tag_descriptions) != len(tags):
        raise InvalidArgumentError(
            f"{where}: tag_descriptions has {len(p.tag_descriptions)} entries, tags has {len(tags)}"
        )
    for k, v in enumerate(p.values):
        v = list(v)
        if any(not isinstance(i, (int, np.integer)) or not 0 <= i < len(tags) for i in v):
            raise InvalidArgumentError(
                f"{where}: values[{k}] = {v} has a tag index outside [0, {len(tags)})"
            )
        if any(a >= b for a, b in zip(v, v[1:], strict=False)):
            raise InvalidArgumentError(f"{where}: values[{k}] = {v} must be increasing")


def _id_array(ids: Any) -> np.ndarray:
    if isinstance(ids, np.ndarray):
        if ids.dtype.kind not in "iu":
            raise InvalidArgumentError(f"ids must be integers, got dtype {ids.dtype}")
        if ids.dtype.kind == "i" and ids.size and int(ids.min()) < 0:
            raise InvalidArgumentError("ids must be in [0, 2**64)")
        return ids.astype(np.uint64).reshape(-1)
    ids = list(ids)
    for i in ids:
        if (
            isinstance(i, bool)
            or not isinstance(i, (int, np.integer))
            or not 0 <= int(i) <= _U64_MAX
        ):
            raise InvalidArgumentError(f"ids must be integers in [0, 2**64), got {i!r}")
    return np.array([int(i) for i in ids], dtype=np.uint64)


# ---------------------------------------------------------------------------------------
# Parsing stored JSON
# ---------------------------------------------------------------------------------------


def parse(obj: Any, source: str = "info") -> SegmentProperties:
    """Parse a segment properties ``info`` object; errors name ``source`` and the member."""
    w = _Where(source)
    if not isinstance(obj, Mapping):
        raise w.error("", f"Expected object, but received: {_dump(obj)}")
    if obj.get("@type") != SEGMENT_PROPERTIES_TYPE:
        raise w.error(
            "@type",
            f'Expected "{SEGMENT_PROPERTIES_TYPE}", but received: {_dump(obj.get("@type"))}',
        )
    inline = obj.get("inline")
    if inline is None:
        return SegmentProperties(np.empty(0, dtype=np.uint64))
    if not isinstance(inline, Mapping):
        raise w.error("inline", f"Expected object, but received: {_dump(inline)}")
    raw_ids = inline.get("ids")
    if not isinstance(raw_ids, list):
        raise w.error("inline.ids", f"Expected array of strings, but received: {_dump(raw_ids)}")
    ids = np.empty(len(raw_ids), dtype=np.uint64)
    for k, s in enumerate(raw_ids):
        if not isinstance(s, str) or not _ID.match(s) or int(s) > _U64_MAX:
            raise w.error(
                f"inline.ids[{k}]", f"Expected a base-10 uint64 string, but received: {_dump(s)}"
            )
        ids[k] = int(s)
    raw_props = inline.get("properties")
    if not isinstance(raw_props, list):
        raise w.error("inline.properties", f"Expected array, but received: {_dump(raw_props)}")
    props = []
    seen: set[str] = set()
    for k, po in enumerate(raw_props):
        p = _parse_property(po, len(ids), f"inline.properties[{k}]", w)
        if p.id in seen:
            raise w.error(f"inline.properties[{k}].id", f"{_dump(p.id)} is not unique")
        seen.add(p.id)
        props.append(p)
    return SegmentProperties(ids, tuple(props))


def _parse_property(po: Any, n: int, where: str, w: _Where) -> Property:
    if not isinstance(po, Mapping):
        raise w.error(where, f"Expected object, but received: {_dump(po)}")
    pid = po.get("id")
    if not isinstance(pid, str):
        raise w.error(f"{where}.id", f"Expected string, but received: {_dump(pid)}")
    type_ = po.get("type")
    if type_ not in PROPERTY_TYPES:
        raise w.error(
            f"{where}.type", f"Expected one of {list(PROPERTY_TYPES)}, but received: {_dump(type_)}"
        )
    description = po.get("description")
    if description is not None and not isinstance(description, str):
        raise w.error(
            f"{where}.description", f"Expected string, but received: {_dump(description)}"
        )
    values = po.get("values")
    if not isinstance(values, list) or len(values) != n:
        got = f"{len(values)} values" if isinstance(values, list) else _dump(values)
        raise w.error(f"{where}.values", f"Expected {n} values (one per id), but received: {got}")
    if type_ == "tags":
        tags = po.get("tags")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise w.error(
                f"{where}.tags", f"Expected array of strings, but received: {_dump(tags)}"
            )
        if len(tags) > MAX_TAGS:
            raise w.error(
                f"{where}.tags", f"at most {MAX_TAGS} tags are supported, got {len(tags)}"
            )
        descr = po.get("tag_descriptions")
        if descr is not None and (
            not isinstance(descr, list)
            or len(descr) != len(tags)
            or not all(isinstance(t, str) for t in descr)
        ):
            raise w.error(
                f"{where}.tag_descriptions",
                f"Expected {len(tags)} strings, but received: {_dump(descr)}",
            )
        parsed = []
        for k, v in enumerate(values):
            ok = isinstance(v, list) and all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(tags) for i in v
            )
            if not ok:
                raise w.error(
                    f"{where}.values[{k}]",
                    f"Expected array of tag indices in [0, {len(tags)}), but received: {_dump(v)}",
                )
            parsed.append(tuple(sorted(set(v))))
        return Property(
            pid, "tags", tuple(parsed), description, tags=tuple(tags),
            tag_descriptions=None if descr is None else tuple(descr),
        )  # fmt: skip
    if type_ == "number":
        data_type = po.get("data_type")
        if data_type not in NUMBER_TYPES:
            raise w.error(
                f"{where}.data_type",
                f"Expected one of {list(NUMBER_TYPES)}, but received: {_dump(data_type)}",
            )
        for k, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise w.error(f"{where}.values[{k}]", f"Expected number, but received: {_dump(v)}")
        try:
            arr = _numbers(
                np.array(values, dtype=np.float64 if values else np.float32), data_type, pid
            )
        except InvalidArgumentError as e:
            raise w.error(f"{where}.values", str(e)) from None
        except OverflowError:
            raise w.error(f"{where}.values", "a value is out of range") from None
        return Property(pid, "number", arr, description, data_type=data_type)
    for k, v in enumerate(values):
        if not isinstance(v, str):
            raise w.error(f"{where}.values[{k}]", f"Expected string, but received: {_dump(v)}")
    return Property(pid, type_, np.array(values, dtype=object).reshape(-1), description)

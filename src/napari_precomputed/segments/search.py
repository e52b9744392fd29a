"""Searching the segments of a Labels layer by label and tag (no Qt).

The reader gives a segmentation's Labels layer its segment properties as ``features``
(one row per segment: the ``index`` column holds the segment id, as napari's Labels
expect, then one column per property; tags as space-separated names).
:class:`SegmentTable` searches that table with the library's own rules
(:meth:`precomputed.segment_properties.SegmentProperties.find_by_label` and
``find_by_tag``): a label substring (case-insensitive) or regular expression, tags all of
which a segment must have (case-insensitive, a leading ``#`` ignored). A search text that
is a whole number also finds the segment with that id (one without properties too).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from precomputed.segment_properties import Property, SegmentProperties

from .._reader import FEATURES_ID_COLUMN

__all__ = ["SegmentRow", "SegmentTable", "ID_COLUMN", "properties_metadata"]

#: The features column napari's Labels map label values with.
ID_COLUMN = FEATURES_ID_COLUMN


@dataclass(frozen=True)
class SegmentRow:
    """One search hit: the segment id, its label and its tags."""

    id: int
    label: str
    tags: tuple[str, ...]


def properties_metadata(layer: Any) -> dict[str, Any]:
    """What the reader recorded of the layer's segment properties (may be empty)."""
    meta = getattr(layer, "metadata", {}).get("precomputed") or {}
    found = meta.get("segment_properties")
    return found if isinstance(found, dict) else {}


class SegmentTable:
    """The segments of a features table (see the module notes)."""

    def __init__(
        self,
        features: Any,
        *,
        label_column: str | None = None,
        tags_column: str | None = None,
    ) -> None:
        columns = list(getattr(features, "columns", ()))
        if ID_COLUMN in columns:
            ids = np.asarray(features[ID_COLUMN]).astype(np.uint64)
        else:
            ids = np.zeros(0, np.uint64)
        label_column = label_column if label_column in columns else None
        if label_column is None and "label" in columns:
            label_column = "label"
        tags_column = tags_column if tags_column in columns else None
        if tags_column is None and "tags" in columns:
            tags_column = "tags"
        self.label_column = label_column
        self.tags_column = tags_column
        props: list[Property] = []
        n = ids.shape[0]
        if label_column is not None and n:
            props.append(Property.label(_texts(features[label_column]), id=label_column))
        if tags_column is not None and n:
            sets = [t.split() for t in _texts(features[tags_column])]
            props.append(Property.tag_sets(sets, id=tags_column))
        self.properties = SegmentProperties(ids, tuple(props))

    @classmethod
    def from_layer(cls, layer: Any) -> SegmentTable:
        meta = properties_metadata(layer)
        return cls(layer.features, label_column=meta.get("label"), tags_column=meta.get("tags"))

    def __len__(self) -> int:
        return len(self.properties)

    @property
    def ids(self) -> np.ndarray:
        return self.properties.ids

    @property
    def tag_names(self) -> tuple[str, ...]:
        """Every tag, in the table's order."""
        tags = self.properties.tags
        return tuple(tags.tags or ()) if tags is not None else ()

    def search(
        self, text: str = "", *, regex: bool = False, tags: Sequence[str] = ()
    ) -> np.ndarray:
        """Ids (in table order) whose label contains ``text`` (or matches the regular
        expression, ``regex``), or whose id is ``text``, and that have all ``tags``.
        Empty ``text`` and no tags: every id. A bad regular expression raises
        :class:`~precomputed.InvalidArgumentError`."""
        p = self.properties
        text = text.strip()
        hits = np.ones(len(p), dtype=bool)
        number = int(text) if text.isdigit() and int(text) < 2**64 else None
        if text:
            found = p.find_by_label(text, regex=regex) if p.label is not None else p.ids[:0]
            match = np.isin(p.ids, found)
            if number is not None:
                match |= p.ids == np.uint64(number)
            hits &= match
        tags = [t for t in tags if t.strip()]
        if number is not None and not tags and number not in p:
            return np.array([number], np.uint64)  # an id without properties
        if tags:
            hits &= np.isin(p.ids, p.find_by_tag(*tags))
        return p.ids[hits]

    def rows(self, ids: Iterable[int]) -> list[SegmentRow]:
        """Label and tags of each id (empty for ids without properties)."""
        p = self.properties
        out = []
        for i in ids:
            try:
                values = p.get(int(i))
            except KeyError:
                out.append(SegmentRow(int(i), "", ()))
                continue
            name = str(values[self.label_column]) if self.label_column in values else ""
            tag_names = tuple(values[self.tags_column]) if self.tags_column in values else ()
            out.append(SegmentRow(int(i), name, tag_names))
        return out

    def label_of(self, segment_id: int) -> str:
        """The segment's label ("" without one)."""
        return self.rows([segment_id])[0].label


def _texts(column: Any) -> list[str]:
    return ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
            for v in column]  # fmt: skip

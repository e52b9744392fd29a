"""Segment properties: names, descriptions, tags and numbers attached to segment ids.

The ``neuroglancer_segment_properties`` format (see docs/format/segment-properties.md): a
directory with one ``info`` JSON file holding, in its ``inline`` member, the segment ids
(base-10 strings) and one column of values per property. A segmentation volume names the
directory in its ``info`` as ``"segment_properties"``.

- :func:`read` — from a volume (or its URL) or the properties directory's URL;
- :func:`write` — validate, write ``<dir>/info`` and link it from the volume ``info``
  (conditionally on the info's generation);
- :class:`SegmentProperties` — ids as a uint64 array, properties as columns, conversion
  to a plain dict of columns (napari ``features``), search by label and by tag;
- :func:`parse` — a properties ``info`` object (no I/O).

The data model is :mod:`.model`, the store I/O :mod:`.io`.
"""

from .io import read, write
from .model import (
    MAX_TAGS,
    NUMBER_TYPES,
    PROPERTY_TYPES,
    SEGMENT_PROPERTIES_TYPE,
    Property,
    SegmentProperties,
    parse,
)

__all__ = [
    "MAX_TAGS",
    "NUMBER_TYPES",
    "PROPERTY_TYPES",
    "SEGMENT_PROPERTIES_TYPE",
    "Property",
    "SegmentProperties",
    "parse",
    "read",
    "write",
]

"""Segment properties as Neuroglancer's spec spells them, for the tests of
``precomputed.segment_properties``: no installed library writes this format (CloudVolume 12
and Igneous have no segment properties), so the stored JSON is written out from
Neuroglancer's spec (src/datasource/precomputed/segment_properties.md and its JSON schema)
and parser (frontend.ts ``parseInlinePropertyMap``)."""

from __future__ import annotations

from typing import Any

# The shape of the spec's example: every property type, ids not sorted, a big id.
STORED: dict[str, Any] = {
    "@type": "neuroglancer_segment_properties",
    "inline": {
        "ids": ["42", "7", "18446744073709551615"],
        "properties": [
            {"id": "label", "type": "label", "values": ["Pyramidal cell", "astro", ""]},
            {"id": "description", "type": "description", "values": ["a", "b", "c"]},
            {
                "id": "region",
                "type": "string",
                "description": "brain area",
                "values": ["V1", "V2", "V1"],
            },
            {
                "id": "tags",
                "type": "tags",
                "tags": ["soma", "axon", "Glia"],
                "tag_descriptions": ["has a soma", "is an axon", "a glial cell"],
                "values": [[0, 1], [2], []],
            },
            {"id": "volume", "type": "number", "data_type": "float32", "values": [1.5, 2, -3e5]},
            {"id": "synapses", "type": "number", "data_type": "uint16", "values": [3, 0, 65535]},
        ],
    },
}

"""Segment properties as data (``precomputed.segment_properties.model``): parse every
property type, columns for napari, search, hostile input naming the member, the writer's
validation, round trips. The stored JSON: tests/segment_properties_cases.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from precomputed import segment_properties as sp
from precomputed.errors import FailedPreconditionError, InvalidArgumentError
from segment_properties_cases import STORED


def test_parse_every_property_type() -> None:
    props = sp.parse(STORED)
    assert props.ids.dtype == np.uint64
    assert props.ids.tolist() == [42, 7, (1 << 64) - 1]
    assert props.label is not None and list(props.label.values) == ["Pyramidal cell", "astro", ""]
    assert props.property("region").description == "brain area"
    assert props.property("volume").values.dtype == np.float32
    assert props.property("synapses").values.tolist() == [3, 0, 65535]
    assert props.tags is not None and props.tags.tag_names() == [("soma", "axon"), ("Glia",), ()]
    assert props.get(7) == {
        "label": "astro",
        "description": "b",
        "region": "V2",
        "tags": ("Glia",),
        "volume": 2.0,
        "synapses": 0,
    }
    assert 42 in props and 43 not in props


def test_columns_for_napari_features() -> None:
    cols = sp.parse(STORED).to_columns()
    assert list(cols) == ["id", "label", "description", "region", "tags", "volume", "synapses"]
    assert all(len(c) == 3 for c in cols.values())
    assert cols["id"].dtype == np.uint64
    assert cols["tags"].tolist() == ["soma axon", "Glia", ""]
    assert cols["synapses"].dtype == np.uint16


def test_search_by_label_and_tag() -> None:
    props = sp.parse(STORED)
    assert props.find_by_label("pyram").tolist() == [42]
    assert props.find_by_label("PYRAM", case_sensitive=True).tolist() == []
    assert props.find_by_label(r"^a.tro$", regex=True).tolist() == [7]
    assert props.find_by_label("V1", property="region").tolist() == [42, (1 << 64) - 1]
    assert props.find_by_tag("#glia").tolist() == [7]
    assert props.find_by_tag("soma", "axon").tolist() == [42]
    assert props.find_by_tag("soma", "glia", match_all=False).tolist() == [42, 7]
    assert props.find_by_tag("nope").tolist() == []
    with pytest.raises(InvalidArgumentError, match="regular expression"):
        props.find_by_label("(", regex=True)


def _with(member_path: list, value: object) -> dict:
    doc = json.loads(json.dumps(STORED))
    target = doc
    for k in member_path[:-1]:
        target = target[k]
    target[member_path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (["@type"], "neuroglancer_mesh", '"@type"'),
        (["inline"], [], '"inline"'),
        (["inline", "ids"], ["1", "x"], r'"inline\.ids\[1\]"'),
        (["inline", "ids"], ["1", "2", "18446744073709551616"], r'"inline\.ids\[2\]"'),
        (["inline", "ids"], [1, 2, 3], r'"inline\.ids\[0\]"'),
        (["inline", "properties", 0, "values"], ["a"], r"properties\[0\]\.values.*3 values"),
        (["inline", "properties", 0, "type"], "color", r"properties\[0\]\.type"),
        (["inline", "properties", 1, "id"], "label", r"properties\[1\]\.id.*not unique"),
        (["inline", "properties", 2, "values"], ["a", 1, "b"], r"properties\[2\]\.values\[1\]"),
        (["inline", "properties", 3, "values"], [[0], [3], []], r"properties\[3\]\.values\[1\]"),
        (["inline", "properties", 3, "values"], [[0], [True], []], r"properties\[3\]\.values\[1\]"),
        (
            ["inline", "properties", 3, "tag_descriptions"],
            ["x"],
            r"properties\[3\]\.tag_descriptions",
        ),
        (["inline", "properties", 4, "data_type"], "float64", r"properties\[4\]\.data_type"),
        (["inline", "properties", 4, "values"], [1, "2", 3], r"properties\[4\]\.values\[1\]"),
        (["inline", "properties", 4, "values"], [1, 1e39, 3], r"properties\[4\]\.values.*float32"),
        (["inline", "properties", 5, "values"], [1, 65536, 3], r"properties\[5\]\.values.*uint16"),
        (["inline", "properties", 5, "values"], [1, 0.5, 3], r"properties\[5\]\.values.*uint16"),
    ],
)
def test_hostile_input_names_the_member(path: list, value: object, named: str) -> None:
    with pytest.raises(FailedPreconditionError, match=named):
        sp.parse(_with(path, value), "props/info")


def test_writer_validates() -> None:
    ids = np.array([1, 2], dtype=np.uint64)
    with pytest.raises(InvalidArgumentError, match="unique"):
        sp.SegmentProperties(np.array([1, 1], dtype=np.uint64)).to_json()
    with pytest.raises(InvalidArgumentError, match="3 values"):
        sp.SegmentProperties(ids, (sp.Property.label(["a", "b", "c"]),))
    with pytest.raises(InvalidArgumentError, match="at most one"):
        sp.SegmentProperties(
            ids, (sp.Property.label(["a", "b"]), sp.Property.label(["a", "b"], id="l2"))
        ).to_json()
    with pytest.raises(InvalidArgumentError, match="property ids must be unique"):
        sp.SegmentProperties(
            ids, (sp.Property.text("x", ["a", "b"]), sp.Property.text("x", ["a", "b"]))
        ).to_json()
    with pytest.raises(InvalidArgumentError, match="int8"):
        sp.Property.number("n", [1, 300], "int8")
    with pytest.raises(InvalidArgumentError, match="data_type"):
        sp.Property.number("n", np.array([1, 2], dtype=np.int64))
    with pytest.raises(InvalidArgumentError, match="not in tags"):
        sp.Property.tag_sets([["a"], ["b"]], tags=["a"])
    bad_tags = sp.Property("t", "tags", ((0,), (5,)), tags=("a",))
    with pytest.raises(InvalidArgumentError, match="outside"):
        sp.SegmentProperties(ids, (bad_tags,)).to_json()
    spaced = sp.Property.tag_sets([["a b"], []])
    with pytest.raises(InvalidArgumentError, match="without spaces"):
        sp.SegmentProperties(ids, (spaced,)).to_json()
    with pytest.raises(InvalidArgumentError, match="values\\[1\\] must be a string"):
        sp.Property.label(["a", 3])  # type: ignore[list-item]
    with pytest.raises(InvalidArgumentError):
        sp.SegmentProperties(np.array([-1]))


def test_round_trip_preserves_everything() -> None:
    props = sp.parse(STORED)
    again = sp.parse(json.loads(json.dumps(props.to_json())))
    assert again.to_json() == props.to_json()
    assert props.to_json()["inline"]["properties"][3] == STORED["inline"]["properties"][3]

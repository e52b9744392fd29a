"""Segment properties in stores (``precomputed.segment_properties.io``): write, link from
the volume info, read back through a volume, its URL or the directory; missing members and
directories; hostile files. The stored JSON: tests/segment_properties_cases.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

import precomputed
from precomputed import segment_properties as sp
from precomputed.errors import FailedPreconditionError, NotFoundError
from precomputed.info_members import set_info_member
from precomputed.kvstore import MemoryKvStore
from segment_properties_cases import STORED
from volumes import volume_spec


def test_write_links_the_volume_and_reads_back(memory_store: MemoryKvStore) -> None:
    vol = precomputed.open(
        volume_spec(
            memory_store.spec(),
            "uint64",
            type="segmentation",
            size=[8, 8, 8],
            resolution=[4, 4, 40],
        ),
        create=True,
    )
    props = sp.SegmentProperties(
        np.array([3, 1, 2], dtype=np.uint64),
        (
            sp.Property.label(["c", "a", "b"]),
            sp.Property.number("size", np.array([10, 20, 30], dtype=np.int32)),
            sp.Property.tag_sets([["x"], ["y", "x"], []], tags=["x", "y"]),
        ),
    )
    key = sp.write(vol, props)
    assert key.endswith("segment_properties/info")
    info = json.loads(memory_store.read("info"))
    assert info["segment_properties"] == "segment_properties"
    stored = json.loads(memory_store.read("segment_properties/info"))
    assert stored["inline"]["ids"] == ["3", "1", "2"]
    assert stored["inline"]["properties"][2]["values"] == [[0], [0, 1], []]
    # Read back through the volume (reopened: the info changed), through its URL, and
    # from the properties directory itself.
    for source in (
        precomputed.open(memory_store.url),
        memory_store.url,
        memory_store.url + "segment_properties",
    ):
        back = sp.read(source)
        assert back.ids.tolist() == [3, 1, 2]
        assert back.get(1) == {"label": "a", "size": 20, "tags": ("x", "y")}
    # The rest of the info survived, byte-for-byte what the driver writes.
    reopened = precomputed.open(memory_store.url)
    assert reopened.shape == vol.shape


def test_missing_member_and_missing_directory(memory_store: MemoryKvStore) -> None:
    precomputed.open(
        volume_spec(
            memory_store.spec(), "uint32", type="segmentation", size=[4, 4, 4], resolution=[1, 1, 1]
        ),
        create=True,
    )
    with pytest.raises(NotFoundError, match='"segment_properties"'):
        sp.read(memory_store.url)
    set_info_member(memory_store, "", "segment_properties", "props")
    with pytest.raises(NotFoundError, match="props/info"):
        sp.read(memory_store.url)
    set_info_member(memory_store, "", "segment_properties", "../../elsewhere")
    with pytest.raises(FailedPreconditionError, match="leaves the store"):
        sp.read(memory_store.url)


def test_hostile_files(memory_store: MemoryKvStore, monkeypatch: pytest.MonkeyPatch) -> None:
    memory_store.write("p/info", b'{"@type": "neuroglancer_segment_properties", "inline": NaN}')
    with pytest.raises(FailedPreconditionError, match="Invalid JSON"):
        sp.read(memory_store.url + "p")
    memory_store.write("p/info", b"[" * 100000 + b"]" * 100000)
    with pytest.raises(FailedPreconditionError, match="Invalid JSON"):
        sp.read(memory_store.url + "p")
    import precomputed.info_members as im

    monkeypatch.setattr(im, "MAX_JSON_BYTES", 100)
    memory_store.write("p/info", json.dumps(STORED).encode())
    with pytest.raises(FailedPreconditionError, match="bytes of JSON"):
        sp.read(memory_store.url + "p")

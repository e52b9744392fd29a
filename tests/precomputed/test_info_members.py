"""``precomputed.info_members``: one member of a volume ``info`` set conditionally
(resolving member directories and bounded JSON reads are covered through their users,
tests/precomputed/segment_properties/test_properties_io.py and meshes/)."""

from __future__ import annotations

import json
import threading

import precomputed
from precomputed.info_members import set_info_member
from precomputed.kvstore import MemoryKvStore
from volumes import volume_spec


def test_info_link_is_conditional(memory_store: MemoryKvStore) -> None:
    precomputed.open(
        volume_spec(
            memory_store.spec(), "uint32", type="segmentation", size=[4, 4, 4], resolution=[1, 1, 1]
        ),
        create=True,
    )
    # Another writer changes the info between our read and our write: ours retries and
    # both members end up in the file.
    real = memory_store.write_if
    raced = threading.Event()

    def write_if(key: str, data: bytes | None, gen: str) -> bool:
        if key == "info" and not raced.is_set():
            raced.set()
            set_info_member(memory_store, "", "mesh", "mesh")
        return real(key, data, gen)

    memory_store.write_if = write_if  # type: ignore[method-assign]
    assert set_info_member(memory_store, "", "segment_properties", "props")
    info = json.loads(memory_store.read("info"))
    assert info["mesh"] == "mesh" and info["segment_properties"] == "props"
    assert not set_info_member(memory_store, "", "segment_properties", "props")  # unchanged

"""Mesh reads see one version of what a writer stored: a cached manifest is never combined
with fragment bytes of a newer shard (or a resized unsharded data file); a shard replaced
on every read gives up with ``ConditionFailedError`` naming it. (The process race is
tests/precomputed/concurrency/test_mesh_races.py.)"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("DracoPy")
pytest.importorskip("zmesh")

sys.path.insert(0, str(Path(__file__).parents[1] / "concurrency"))
from mesh_worker import IDS, mesh_of, write_version  # noqa: E402

from precomputed import meshes  # noqa: E402
from precomputed.errors import ConditionFailedError  # noqa: E402
from precomputed.kvstore import MemoryKvStore  # noqa: E402
from precomputed.meshes import LodOptions, MultiLodWriter  # noqa: E402


def _arrays(got: dict[int, Any]) -> dict[int, tuple[bytes, bytes]]:
    return {s: (m.vertices.tobytes(), m.faces.tobytes()) for s, m in got.items()}


def reference(version: int, lod: int = 0, sharded: bool = True) -> dict[int, tuple[bytes, bytes]]:
    """The meshes of ``version`` as read from a store holding only that version."""
    kv = MemoryKvStore(f"reference-{version}-{sharded}")
    try:
        if sharded:
            write_version(kv.url, version)
        else:
            _write_unsharded(kv, version)
        return _arrays(meshes.open(kv.url).get_many(IDS, lod))
    finally:
        kv.delete_prefix("")


def _write_unsharded(kv: MemoryKvStore, version: int) -> None:
    w = MultiLodWriter(kv, "", resolution=(1, 1, 1), options=LodOptions(chunk_voxels=4.0, max_lods=1))
    for s in IDS:
        w.put(s, mesh_of(s, version))
    w.close()


@pytest.mark.parametrize("lod", [0, -1])
def test_cached_manifests_are_never_read_with_fragments_of_a_newer_shard(
    memory_store: MemoryKvStore, lod: int
) -> None:
    write_version(memory_store.url, 0)
    src = meshes.open(memory_store.url)
    assert _arrays(src.get_many(IDS, lod)) == _arrays(meshes.open(memory_store.url).get_many(IDS, lod))
    write_version(memory_store.url, 1)  # every manifest and fragment moves
    got = src.get_many(IDS, lod)  # the cached manifests are of version 0
    assert _arrays(got) == reference(1, lod) != reference(0, lod)
    assert src.manifest(IDS[0]).num_lods >= 1


def test_locations_come_with_the_generation_of_their_shard(memory_store: MemoryKvStore) -> None:
    write_version(memory_store.url, 0)
    src = meshes.open(memory_store.url)
    assert isinstance(src, meshes.MultiLodMeshSource) and src.shards is not None
    gens: dict[str, str] = {}
    locs = src.shards.locate_many(IDS, generations=gens)
    assert {loc.key for loc in locs if loc is not None} == set(gens) == {"0.shard"}
    assert gens["0.shard"] == memory_store.current_generation("0.shard")


def test_a_shard_replaced_on_every_read_gives_up_naming_it(memory_store: MemoryKvStore) -> None:
    write_version(memory_store.url, 0)
    src = meshes.open(memory_store.url)
    src.get_many(IDS)  # manifests cached
    real = src.kvstore.read_ranges_pinned
    replaced = [0]

    def replaced_first(requests: Any, generations: Any = None, sizes: Any = None) -> Any:
        replaced[0] += 1
        write_version(memory_store.url, replaced[0], write_info=False)
        return real(requests, generations, sizes)

    src.kvstore.read_ranges_pinned = replaced_first  # type: ignore[method-assign]
    with pytest.raises(ConditionFailedError, match=r'0\.shard".*changed while being read'):
        src.get_many(IDS)
    src.kvstore.read_ranges_pinned = real  # type: ignore[method-assign]
    assert replaced[0] >= src.MAX_READ_ATTEMPTS  # (index reads are pinned calls too)
    assert _arrays(src.get_many(IDS)) == reference(replaced[0])


def test_an_unsharded_data_file_resized_after_its_manifest_was_cached_is_read_again(
    memory_store: MemoryKvStore,
) -> None:
    _write_unsharded(memory_store, 0)
    src = meshes.open(memory_store.url)
    assert _arrays(src.get_many(IDS)) == reference(0, sharded=False)
    _write_unsharded(memory_store, 2)  # bigger data files, new manifests
    assert _arrays(src.get_many(IDS)) == reference(2, sharded=False) != reference(0, sharded=False)


"""Issue 14 for meshes: a sharded mesh read (shard index, minishard index, manifest, then
fragments, with manifests cached in between) is pinned to one version of the shard. One
process replaces the shard over and over (every version moves every manifest and
fragment) while another fetches meshes, with a source that keeps its cached manifests and
with fresh ones: every mesh read equals one of the versions written, exactly; no
corruption errors, nothing else raised.

Before the pinning the reader got torn meshes and corrupt-data errors (see the commit
message for the rates measured).
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

pytest.importorskip("DracoPy")
pytest.importorskip("zmesh")

from mesh_worker import IDS, VERSIONS, _key, read_until, replace_repeatedly, write_version  # noqa: E402

from precomputed import meshes  # noqa: E402

pytestmark = pytest.mark.timeout(180)

#: Shard replacements while the reader runs.
REPLACEMENTS = 300


def expected_meshes(tmp_path: Path) -> dict[tuple[int, int], set[tuple[bytes, bytes]]]:
    """Each segment's decoded mesh, per LOD (0 and the coarsest, -1), of every version."""
    out: dict[tuple[int, int], set[tuple[bytes, bytes]]] = {}
    for v in range(VERSIONS):
        url = f"file://{tmp_path / f'v{v}'}/"
        write_version(url, v)
        src = meshes.open(url)
        for lod in (0, -1):
            for s, m in src.get_many(IDS, lod).items():
                out.setdefault((s, lod), set()).add(_key(m))
    return out


def test_a_mesh_reader_racing_shard_replacement_only_ever_reads_written_versions(
    tmp_path: Path,
) -> None:
    expected = expected_meshes(tmp_path)
    assert all(len(v) == VERSIONS for v in expected.values())  # versions tell apart
    url = f"file://{tmp_path / 'mesh'}/"
    write_version(url, 0)
    ctx = multiprocessing.get_context("spawn")
    stop, results = ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=read_until, args=(url, stop, expected, results))
    writer = ctx.Process(target=replace_repeatedly, args=(url, REPLACEMENTS, results))
    reader.start()
    writer.start()
    try:
        first = results.get(timeout=150)
    finally:
        stop.set()
    second = results.get(timeout=60)
    writer.join(60)
    reader.join(60)
    by = {g["who"]: g for g in (first, second)}
    assert by["writer"]["errors"] == []
    r = by["reader"]
    assert r["wrong"] == [] and r["corrupt"] == [] and r["other"] == [], (
        f"{len(r['wrong'])} wrong, {len(r['corrupt'])} corrupt, {len(r['other'])} other "
        f"of {r['reads']} reads: {(r['wrong'] + r['corrupt'] + r['other'])[:3]}"
    )
    assert r["reads"] > 10  # the reader really ran alongside
    # After the last replacement a reader sees the last version.
    last = (REPLACEMENTS - 1) % VERSIONS
    got = meshes.open(url).get_many(IDS, 0)
    want = {s: _key(m) for s, m in meshes.open(f"file://{tmp_path / f'v{last}'}/").get_many(IDS, 0).items()}
    assert {s: _key(m) for s, m in got.items()} == want

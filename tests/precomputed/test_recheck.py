"""Cache coherence: ``recheck_cached_data`` as TensorStore defines it (``true``: cached
chunks are revalidated on every read, ``"open"``: those cached before the open, ``false``:
never, a number: those cached before that time), with the other writer a real process
(TensorStore), threads on the memory store, and the GCS and S3 emulators. Revalidation
is a metadata check (a ``stat``, a metadata request), never a download."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import precomputed
from precomputed import Context, CorruptDataError

DRIVER = "neuroglancer_precomputed"
SIZE = [16, 16, 8]
CHUNK = [8, 8, 8]  # 2 x 2 x 1 chunks
SHARDING = {
    "@type": "neuroglancer_uint64_sharded_v1",
    "preshift_bits": 0,
    "hash": "identity",
    "minishard_bits": 0,
    "shard_bits": 0,
    "minishard_index_encoding": "raw",
    "data_encoding": "raw",
}


def spec_of(path: Path) -> dict[str, Any]:
    return {"driver": DRIVER, "kvstore": {"driver": "file", "path": str(path) + "/"}}


def make(path: Path, sharded: bool = False, value: int = 1) -> Path:
    import tensorstore as ts

    scale: dict[str, Any] = {"size": SIZE, "chunk_size": CHUNK, "encoding": "raw"}
    if sharded:
        scale["sharding"] = SHARDING
    store = ts.open(
        {
            **spec_of(path),
            "multiscale_metadata": {"type": "image", "data_type": "uint8", "num_channels": 1},
            "scale_metadata": scale,
        },
        create=True,
    ).result()
    store[...] = value
    return path


def write_elsewhere(path: Path, value: int, box: str = "...") -> None:
    """Another process (TensorStore) writes ``value`` into ``box`` of the volume."""
    code = (
        "import sys, json, tensorstore as ts\n"
        "spec = json.loads(sys.argv[1])\n"
        f"s = ts.open(spec, open=True).result()\n"
        f"s[{box}] = {value}\n"
    )
    import json

    subprocess.run([sys.executable, "-c", code, json.dumps(spec_of(path))], check=True, timeout=60)


def first_voxels(reads: list[Any]) -> list[int]:
    return [int(np.asarray(r)[0, 0, 0, 0]) for r in reads]


@pytest.mark.parametrize(
    "recheck",
    [True, False, "open", "future", "past"],
    ids=["true", "false", "open", "timestamp-future", "timestamp-past"],
)
def test_recheck_cached_data_behaves_as_tensorstore_across_processes(
    tmp_path: Path, recheck: Any
) -> None:
    import tensorstore as ts

    path = make(tmp_path / "vol")
    value = {"future": time.time() + 3600, "past": 1.0}.get(recheck, recheck)
    ctx = Context(cache_bytes=1 << 26)
    ts_ctx = ts.Context({"cache_pool": {"total_bytes_limit": 1 << 26}})
    spec = {**spec_of(path), "recheck_cached_data": value}

    ours = precomputed.open(spec, context=ctx)
    theirs = ts.open(spec, context=ts_ctx).result()
    first = [ours.read(), theirs.read().result()]
    write_elsewhere(path, 2)
    same_handle = [ours.read(), theirs.read().result()]
    opened_after = [
        precomputed.open(spec, context=ctx).read(),
        ts.open(spec, context=ts_ctx).result().read().result(),
    ]

    got = [first_voxels(first), first_voxels(same_handle), first_voxels(opened_after)]
    expected = {
        True: [[1, 1], [2, 2], [2, 2]],
        False: [[1, 1], [1, 1], [1, 1]],
        "open": [[1, 1], [1, 1], [2, 2]],
        "future": [[1, 1], [2, 2], [2, 2]],
        "past": [[1, 1], [1, 1], [1, 1]],
    }[recheck]
    assert got == expected  # [ours, TensorStore] after each step: the same
    for a, b in [first, same_handle, opened_after]:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("sharded", [False, True], ids=["unsharded", "sharded"])
def test_revalidation_is_a_metadata_check_not_a_download(tmp_path: Path, sharded: bool) -> None:
    path = make(tmp_path / "vol", sharded)
    vol = precomputed.open(spec_of(path), context=Context(cache_bytes=1 << 26))
    assert (vol.read() == 1).all()
    stats = vol.kvstore.stats
    reads, stats_before = stats["read"] + stats["read_range"], stats["stat"]
    assert (vol.read() == 1).all()
    assert stats["read"] + stats["read_range"] == reads  # nothing downloaded again
    assert stats["stat"] - stats_before == (1 if sharded else 4)  # one per chunk key or shard
    assert vol.context.cache.revalidated >= 4 and vol.context.cache.changed == 0

    write_elsewhere(path, 5, "0:8, 0:8, :")  # one chunk (of the one shard)
    got = vol.read()
    assert (got[0:8, 0:8] == 5).all() and (got[8:] == 1).all() and (got[:, 8:] == 1).all()
    # unsharded: only the changed chunk is read again; sharded: the shard's chunks.
    assert stats["read"] + stats["read_range"] > reads
    assert vol.context.cache.changed == (4 if sharded else 1)


def test_recheck_open_and_false_check_nothing(tmp_path: Path) -> None:
    path = make(tmp_path / "vol")
    for recheck in ("open", False):
        vol = precomputed.open(
            {**spec_of(path), "recheck_cached_data": recheck}, context=Context(cache_bytes=1 << 26)
        )
        vol.read()
        before = dict(vol.kvstore.stats)
        vol.read()
        assert dict(vol.kvstore.stats) == before  # served from the cache: no I/O at all


def test_a_volume_opened_after_another_process_wrote_never_reads_older_data(tmp_path: Path) -> None:
    """The shared default context's cache holds the old chunks; a volume opened after
    the write (default options, or "open") reads the new ones."""
    path = make(tmp_path / "vol")
    early = precomputed.open(str(path))  # the default context
    early_open = precomputed.open({**spec_of(path), "recheck_cached_data": "open"})
    assert (early.read() == 1).all() and (early_open.read() == 1).all()
    write_elsewhere(path, 3)
    assert (precomputed.open(str(path)).read() == 3).all()
    late_open = precomputed.open({**spec_of(path), "recheck_cached_data": "open"})
    assert (late_open.read() == 3).all()
    assert (early.read() == 3).all()  # true: every read revalidates
    assert (early_open.read() == 3).all()  # its entries were refreshed by the reads above


def test_a_corrupted_chunk_overwritten_on_disk_is_noticed_by_the_same_handle(tmp_path: Path) -> None:
    path = make(tmp_path / "vol")
    vol = precomputed.open(str(path), context=Context(cache_bytes=1 << 26))
    assert (vol.read() == 1).all()  # every chunk cached
    (key,) = [k for k in vol.kvstore.list(vol.path) if k.endswith("0-8_0-8_0-8")]
    chunk_file = Path(vol.kvstore.root) / key  # type: ignore[attr-defined]
    good = chunk_file.read_bytes()
    chunk_file.write_bytes(b"not a chunk")  # rewritten in place by someone else
    with pytest.raises(CorruptDataError, match="0-8_0-8_0-8"):
        vol.read()
    chunk_file.write_bytes(good)  # repaired
    assert (vol.read() == 1).all()


def test_threads_on_the_memory_store_see_each_others_writes(memory_store: Any) -> None:
    """A writer thread (its own context) and a reader thread whose cache holds every
    chunk: after each write the reader's next read sees it, round after round."""
    spec = {
        "driver": DRIVER,
        "kvstore": {"driver": "memory"},
        "multiscale_metadata": {"type": "image", "data_type": "uint8", "num_channels": 1},
        "scale_metadata": {"size": SIZE, "chunk_size": CHUNK, "encoding": "raw"},
    }
    writer = precomputed.open(spec, create=True, kvstore=memory_store, context=Context())
    writer[...] = 0
    reader = precomputed.open(
        {"driver": DRIVER, "kvstore": {"driver": "memory"}}, kvstore=memory_store, context=Context()
    )
    rounds = 60
    written, seen = threading.Event(), threading.Event()
    stale: list[tuple[int, int]] = []

    def write() -> None:
        for r in range(1, rounds + 1):
            writer[(r % 2) * 8 : (r % 2) * 8 + 8, :, :, :] = r  # one column of chunks
            written.set()
            assert seen.wait(30)
            seen.clear()

    def read() -> None:
        for r in range(1, rounds + 1):
            assert written.wait(30)
            written.clear()
            got = int(reader[(r % 2) * 8, 0, 0, 0].read())
            if got != r:
                stale.append((r, got))
            reader.read()  # keep every chunk cached
            seen.set()

    threads = [threading.Thread(target=f) for f in (write, read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not stale, f"{len(stale)} of {rounds} reads saw an older chunk: {stale[:5]}"


@pytest.mark.parametrize("backend", ["gcs", "s3"])
def test_revalidation_on_gcs_and_s3(request: pytest.FixtureRequest, backend: str) -> None:
    bucket = request.getfixturevalue(f"{backend}_bucket")
    options = request.getfixturevalue(f"{backend}_storage_options")
    url = f"{'gs' if backend == 'gcs' else 's3'}://{bucket}/vol"
    writer = precomputed.open(
        url,
        create=True,
        multiscale_metadata={"type": "image", "data_type": "uint8", "num_channels": 1},
        scale_metadata={"size": SIZE, "chunk_size": CHUNK, "encoding": "raw"},
        storage_options=options,
        context=Context(),
    )
    writer[...] = 1
    reader = precomputed.open(url, storage_options=options, context=Context())
    assert (reader.read() == 1).all()
    stats = reader.kvstore.stats
    reads = stats["read"] + stats["read_range"]
    assert (reader.read() == 1).all()
    assert stats["read"] + stats["read_range"] == reads  # revalidated by metadata only
    writer[0:8, 0:8, :, :] = 4  # another handle and context
    got = reader.read()
    assert (got[0:8, 0:8] == 4).all() and (got[8:] == 1).all()
    assert reader.context.cache.changed == 1


@pytest.mark.parametrize("sharded", [False, True], ids=["unsharded", "sharded"])
def test_a_chunk_another_process_adds_is_seen_where_the_cache_knew_it_missing(
    tmp_path: Path, sharded: bool
) -> None:
    """Absence is cached too (sparse volumes): a chunk written later by another process,
    into the same shard file, is found by the next read of the same handle."""
    path = make(tmp_path / "vol", sharded, value=0)
    write_elsewhere(path, 9, "0:8, 0:8, :")  # one chunk stored, the others absent
    vol = precomputed.open(str(path), context=Context(cache_bytes=1 << 26))
    assert (vol[8:16, 8:16, :, :].read() == 0).all()  # absent, and cached as absent
    assert (vol[0:8, 0:8, :, :].read() == 9).all()
    write_elsewhere(path, 4, "8:16, 8:16, :")
    assert (vol[8:16, 8:16, :, :].read() == 4).all()
    assert (vol[0:8, 0:8, :, :].read() == 9).all()

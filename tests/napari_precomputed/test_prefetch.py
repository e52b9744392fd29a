"""Prefetch of neighbouring planes: what reaches the cache, within which budget, and on
which thread (napari's async slicing never reads chunks on the UI thread)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import precomputed
from napari_precomputed import PREFETCH, prefetch_idle, read_volume

PLUGIN = "napari-precomputed"
SIZE = (32, 32, 32)  # x, y, z; chunks 16x16x4: 8 chunk rows in z of 4 chunks each


def _data() -> np.ndarray:
    x, y, z = np.meshgrid(*(np.arange(n) for n in SIZE), indexing="ij")
    # uint8: the contrast limits come from the type, so opening reads no chunk.
    return (1 + (x + 7 * y + 13 * z) % 250).astype(np.uint8)[..., None]  # x, y, z, c


@pytest.fixture
def volume(make_volume) -> tuple[Path, np.ndarray]:
    data = _data()
    return make_volume("v", [(data, (0, 0, 0), (4.0, 4.0, 30.0))], chunk=(16, 16, 4)), data


@pytest.fixture
def prefetch(monkeypatch):
    """Prefetch on, for local files too (every setting a test changes goes back)."""
    monkeypatch.setattr(PREFETCH, "enabled", True)
    monkeypatch.setattr(PREFETCH, "local", True)
    yield PREFETCH
    assert prefetch_idle(30)


#: Requests that move chunk bytes. With ``recheck_cached_data`` true (the default, as in
#: TensorStore) a read of cached chunks also checks their generation ("stat",
#: "revalidate"): metadata only, never the bytes again.
DATA_OPS = ("read", "read_range")


def _chunk_reads(log: list[tuple[Any, ...]] | None) -> set[str]:
    return {key for op, key, _, _ in log or [] if op in DATA_OPS and not key.endswith("info")}


class ThreadLog(list):
    """A kvstore ``request_log`` that also notes the thread of each chunk-data request."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def append(self, entry: tuple[Any, ...]) -> None:
        super().append(entry)
        if entry[0] in DATA_OPS and not entry[1].endswith("info"):
            self.threads.append(threading.current_thread().name)


def _rows(keys: set[str]) -> set[int]:
    """The chunk rows in z (chunk z index) of chunk keys ``x0-x1_y0-y1_z0-z1``."""
    return {int(k.rsplit("_", 1)[1].split("-")[0]) // 4 for k in keys}


def test_reading_a_plane_prefetches_the_neighbouring_chunk_rows(volume, prefetch):
    path, data = volume
    [(level, _, _)] = read_volume(str(path), context=precomputed.Context())
    kv = level.volume.kvstore
    kv.request_log = []
    np.testing.assert_array_equal(np.asarray(level[5]), data[:, :, 5, 0].T)
    assert prefetch_idle(30)
    # Plane 5 is in row 1 (z 4..7); one chunk depth each way (z 1..9) reaches rows 0 and 2.
    assert _rows(_chunk_reads(kv.request_log)) == {0, 1, 2}
    prefetch.enabled = False
    kv.request_log = []
    for z in range(0, 12):
        np.testing.assert_array_equal(np.asarray(level[z]), data[:, :, z, 0].T)
    assert _chunk_reads(kv.request_log) == set()  # every plane of rows 0-2 from memory
    # ... checked against storage by generation only (recheck_cached_data true)
    assert {op for op, *_ in kv.request_log} <= {"stat", "revalidate"}
    np.testing.assert_array_equal(np.asarray(level[12]), data[:, :, 12, 0].T)
    assert _rows(_chunk_reads(kv.request_log)) == {3}  # row 3 was not prefetched


def test_prefetch_covers_only_the_region_read(volume, prefetch):
    path, data = volume
    [(level, _, _)] = read_volume(str(path), context=precomputed.Context())
    kv = level.volume.kvstore
    kv.request_log = []
    np.testing.assert_array_equal(np.asarray(level[6, :16, :16]), data[:16, :16, 6, 0].T)
    assert prefetch_idle(30)
    keys = _chunk_reads(kv.request_log)
    assert all("/4_4_30/0-16_0-16_" in k for k in keys), keys
    assert _rows(keys) == {0, 1, 2}


def test_prefetch_planes_setting_bounds_how_far(volume, prefetch, monkeypatch):
    path, _ = volume
    monkeypatch.setattr(prefetch, "planes", 1)
    [(level, _, _)] = read_volume(str(path), context=precomputed.Context())
    kv = level.volume.kvstore
    kv.request_log = []
    np.asarray(level[7])  # the last plane of row 1: z 6 and 8 are its neighbours
    assert prefetch_idle(30)
    assert _rows(_chunk_reads(kv.request_log)) == {1, 2}


def test_no_prefetch_beyond_the_cache_budget(volume, prefetch):
    path, _ = volume
    # A chunk row is 4 chunks of 16x16x4 uint8 = 4 KiB; a quarter of 8 KiB holds none.
    [(level, _, _)] = read_volume(str(path), context=precomputed.Context(cache_bytes=8 * 1024))
    kv = level.volume.kvstore
    kv.request_log = []
    np.asarray(level[5])
    assert prefetch_idle(30)
    assert _rows(_chunk_reads(kv.request_log)) == {1}
    # A cache that keeps nothing: no prefetch either (it would be thrown away).
    [(level, _, _)] = read_volume(str(path), context=precomputed.Context(cache_bytes=0))
    kv = level.volume.kvstore
    kv.request_log = []
    np.asarray(level[5])
    assert prefetch_idle(30)
    assert _rows(_chunk_reads(kv.request_log)) == {1}


def test_local_files_are_not_prefetched_by_default(volume, monkeypatch):
    monkeypatch.setattr(PREFETCH, "enabled", True)
    monkeypatch.setattr(PREFETCH, "local", False)
    path, _ = volume
    [(level, _, _)] = read_volume(str(path), context=precomputed.Context())
    kv = level.volume.kvstore
    kv.request_log = []
    np.asarray(level[5])
    assert prefetch_idle(30)
    assert _rows(_chunk_reads(kv.request_log)) == {1}


def test_volume_prefetch_fills_the_cache_without_reading_twice(volume):
    path, data = volume
    vol = precomputed.open(str(path), context=precomputed.Context())
    vol.kvstore.request_log = []
    assert vol[:, :, 4:8].prefetch() == 4
    assert len(_chunk_reads(vol.kvstore.request_log)) == 4
    assert vol[:, :, 4:8].prefetch() == 0  # all cached: nothing requested
    vol.kvstore.request_log = []
    np.testing.assert_array_equal(vol[:, :, 6].read()[..., 0], data[:, :, 6, 0])
    assert _chunk_reads(vol.kvstore.request_log) == set()


@pytest.mark.parametrize("kind", ["image", "segmentation"])
def test_async_slicing_of_a_remote_volume_reads_chunks_off_the_ui_thread_and_steps_z_from_memory(
    viewer_model, http_server, make_volume, monkeypatch, kind
):
    """napari's async slicing: every chunk read (slices and prefetches) runs on a worker
    thread, and the next chunk row in z is in memory before the user steps into it (an
    image of raw chunks; a sharded compressed_segmentation, whose planes decode partly)."""
    monkeypatch.setattr(PREFETCH, "enabled", True)
    data = _data()
    options: dict[str, Any] = {"chunk": (16, 16, 4)}
    if kind == "segmentation":
        data = data.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C1)
        options.update(kind=kind, encoding="compressed_segmentation", sharded=True)
    path = make_volume(kind, [(data, (0, 0, 0), (4.0, 4.0, 30.0))], **options)
    http_server.root = path.parent
    [layer] = viewer_model.open(f"{http_server.url}/{path.name}", plugin=PLUGIN)
    assert prefetch_idle(30)
    log = ThreadLog()
    layer.data.volume.kvstore.request_log = log
    threads = log.threads
    slicer = viewer_model._layer_slicer
    slicer._force_sync = False
    try:
        for z in (25, 26, 29, 30):  # within a chunk row, then into the next one
            viewer_model.dims.set_point(0, z * 30.0)
            task = slicer.submit(layers=[layer], dims=viewer_model.dims, force=True)
            assert task is not None
            [response] = task.result(timeout=30).values()
            slicer.wait_until_idle(timeout=30)  # the task set_point itself submitted, too
            np.testing.assert_array_equal(np.asarray(response.image.raw), data[:, :, z, 0].T)
            if z == 25:
                assert prefetch_idle(30)
                fetched = len(threads)
                assert fetched > 0
        assert prefetch_idle(30)
    finally:
        slicer._force_sync = True
    assert threading.main_thread().name not in threads
    # z 26 (same row) and 29, 30 (the next row) were prefetched after z 25: their slices read
    # nothing; only prefetches of the rows beyond followed.
    assert all(name == "napari-precomputed-prefetch" for name in threads[fetched:]), threads


def test_prefetch_in_smaller_steps_fetches_the_same_rows(volume, prefetch, monkeypatch):
    path, _ = volume
    monkeypatch.setattr(prefetch, "step", 1)  # one chunk at a time
    [(level, _, _)] = read_volume(str(path), context=precomputed.Context())
    kv = level.volume.kvstore
    kv.request_log = []
    np.asarray(level[5])
    assert prefetch_idle(30)
    keys = _chunk_reads(kv.request_log)
    assert _rows(keys) == {0, 1, 2} and len(keys) == 3 * 4

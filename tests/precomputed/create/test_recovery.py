"""``create.recovery``: cancelled and failed operations leave nothing half-written."""

from __future__ import annotations

import pytest

from create_cases import (
    IMAGE,
    ODD,
    files,
    image_data,
    info,
)
from precomputed import create as C
from precomputed.downsample import downsample as downsample_array

ts = pytest.importorskip("tensorstore")


# -- cancellation and failure leave nothing half-written ---------------------------------------


class Counter:
    """A cancel callable that says yes after ``n`` checks."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls > self.n


def test_cancelled_new_volume_leaves_nothing(tmp_path):
    path = tmp_path / "v"
    cancel = Counter(5)
    seen = []
    with pytest.raises(C.Cancelled):
        C.create_volume(
            str(path),
            IMAGE,
            {**ODD, "chunk_size": [8, 8, 2]},
            data=image_data(),
            levels=2,
            block_bytes=1000,
            cancel=cancel,
            progress=lambda done, total: seen.append((done, total)),
        )
    assert files(path) == []
    assert seen and seen[-1][0] < seen[-1][1]


def test_cancelled_or_failed_added_scale_leaves_the_volume_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "v"
    C.create_volume(str(path), IMAGE, {**ODD, "chunk_size": [8, 8, 2]}, data=image_data())
    before_info, before_files = (path / "info").read_bytes(), files(path)
    with pytest.raises(C.Cancelled):
        C.add_scale(str(path), factor=(2, 2, 1), block_bytes=500, cancel=Counter(3))
    assert (path / "info").read_bytes() == before_info and files(path) == before_files

    calls = []

    def broken(arr, factor, method):
        calls.append(1)
        if len(calls) > 2:
            raise OSError("disk on fire")
        return downsample_array(arr, factor, method)

    monkeypatch.setattr(C.blocks, "downsample_array", broken)
    with pytest.raises(OSError, match="disk on fire"):
        C.add_scale(str(path), factor=(2, 2, 1), block_bytes=500)
    assert (path / "info").read_bytes() == before_info and files(path) == before_files


def test_failed_cleanup_leaves_a_marked_volume_that_discard_removes(tmp_path, monkeypatch):
    path = tmp_path / "v"
    vol = C.create_volume(str(path), IMAGE, {**ODD, "chunk_size": [8, 8, 2]}, data=image_data())
    before_info, before_files = (path / "info").read_bytes(), files(path)

    def broken(arr, factor, method):
        raise OSError("network down")

    monkeypatch.setattr(C.blocks, "downsample_array", broken)
    monkeypatch.setattr(
        C.recovery, "remove_scales", lambda *a: (_ for _ in ()).throw(OSError("still down"))
    )
    with pytest.raises(C.IncompleteVolumeError, match="discard_incomplete") as e:
        C.build_pyramid(vol, 2)
    assert isinstance(e.value.__cause__, OSError)
    marker = C.find_incomplete(str(path))
    assert marker is not None and marker["scales"] == ["8_8_30"] and not marker["delete_info"]
    assert len(info(path)["scales"]) == 2  # the half-made scale is still listed...
    monkeypatch.undo()
    assert C.discard_incomplete(str(path))  # ...until the marker's instructions are run
    assert (path / "info").read_bytes() == before_info and files(path) == before_files
    assert C.find_incomplete(str(path)) is None and not C.discard_incomplete(str(path))


def test_failed_new_volume_is_removed_entirely(tmp_path, monkeypatch):
    path = tmp_path / "v"

    def broken(block, dtype):
        raise RuntimeError("bad block")

    monkeypatch.setattr(C.blocks, "_cast", broken)
    with pytest.raises(RuntimeError, match="bad block"):
        C.create_volume(str(path), IMAGE, {**ODD}, data=image_data())
    assert files(path) == []

"""How the reader's volumes revalidate cached chunks: locally at every read (a ``stat``,
TensorStore's default ``recheck_cached_data: true``); over a network as of the open
(``"open"``, as Neuroglancer shows data), unless ``$NAPARI_PRECOMPUTED_RECHECK`` says
otherwise."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from test_prefetch import DATA_OPS, _data

from napari_precomputed import PREFETCH
from napari_precomputed._reader import RECHECK_ENV, remote_recheck

PLUGIN = "napari-precomputed"


def _second_read_ops(layer: Any, z: int) -> list[str]:
    """Read plane ``z`` twice; the requests of the second read (all served from the
    cache, except what revalidation asks of storage)."""
    level = layer.data
    kv = level.volume.kvstore
    first = np.asarray(level[z])
    kv.request_log = []
    second = np.asarray(level[z])
    np.testing.assert_array_equal(first, second)
    return [op for op, key, *_ in kv.request_log if not key.endswith("info")]


@pytest.fixture
def served(make_volume, http_server, monkeypatch) -> tuple[str, Any]:
    monkeypatch.setattr(PREFETCH, "enabled", False)  # only the reads of the test
    path = make_volume("v", [(_data(), (0, 0, 0), (4.0, 4.0, 30.0))], chunk=(16, 16, 4))
    http_server.root = path.parent
    return f"{http_server.url}/{path.name}", path


def test_a_remote_volume_is_shown_as_of_its_open_without_a_request_per_redraw(
    viewer_model, served, monkeypatch
) -> None:
    monkeypatch.delenv(RECHECK_ENV, raising=False)
    url, _ = served
    [layer] = viewer_model.open(url, plugin=PLUGIN)
    assert layer.data.volume.spec()["recheck_cached_data"] == "open"
    assert _second_read_ops(layer, 5) == []


def test_the_setting_turns_revalidation_on_for_remote_volumes(viewer_model, served, monkeypatch) -> None:
    monkeypatch.setenv(RECHECK_ENV, "true")
    url, _ = served
    [layer] = viewer_model.open(url, plugin=PLUGIN)
    ops = _second_read_ops(layer, 5)
    assert ops and not set(ops) & set(DATA_OPS)  # metadata checks only, no bytes again


def test_local_volumes_revalidate_at_every_read(viewer_model, served) -> None:
    _, path = served
    [layer] = viewer_model.open(str(path), plugin=PLUGIN)
    ops = _second_read_ops(layer, 5)
    assert ops and not set(ops) & set(DATA_OPS)


@pytest.mark.parametrize(
    ("raw", "want"), [("", "open"), ("open", "open"), ("TRUE", True), ("0", False), ("maybe", "open")]
)
def test_recheck_setting_values(monkeypatch, raw: str, want: object) -> None:
    monkeypatch.setenv(RECHECK_ENV, raw)
    assert remote_recheck() == want

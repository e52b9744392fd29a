"""A volume that cannot be opened says why in napari's notification, never "refused".

Each case opens a URL with ``ViewerModel.open(url, plugin=None)`` (what napari's File menu
and drag and drop do) on a thread, as a GUI event would, inside napari's notification
manager: the uncaught error reaches it through its thread hook, as in a real window.
Every server is on 127.0.0.1.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from napari_precomputed import get_reader

PLUGIN = "napari-precomputed"


@pytest.fixture
def viewer_model() -> Any:
    """A viewer without Qt, with our plugin known to npe2. Not the shared fixture's
    ``_initialize_plugins()``: that also registers the commands in napari's app model,
    which a later ``make_napari_viewer`` teardown makes fail when it runs again."""
    from napari.components import ViewerModel
    from npe2 import PluginManager

    PluginManager.instance().discover()
    return ViewerModel()


@pytest.fixture
def short_budget(monkeypatch: pytest.MonkeyPatch) -> float:
    """The probe's time budget, 1 s, through its documented environment variable."""
    monkeypatch.setenv("NAPARI_PRECOMPUTED_PROBE_TIMEOUT", "1")
    return 1.0


def notified(viewer: Any, url: str) -> str:
    """Open ``url`` as a GUI event would; the message napari's notification shows."""
    from napari.utils.notifications import notification_manager

    before = len(notification_manager.records)
    with notification_manager:
        t = threading.Thread(target=viewer.open, args=(url,), kwargs={"plugin": None})
        t.start()
        t.join(60)
    assert not t.is_alive()
    records = notification_manager.records[before:]
    assert len(records) == 1, [str(r.message) for r in records]
    message = str(records[0].message)
    assert "refused the file" not in message
    assert not viewer.layers
    return message


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_port_says_the_server_does_not_answer(viewer_model, short_budget):
    url = f"http://127.0.0.1:{unused_port()}/vol"
    message = notified(viewer_model, url)
    assert f"{url}/info" in message
    assert "could not reach" in message and "NAPARI_PRECOMPUTED_PROBE_TIMEOUT" in message


def test_forbidden_info_says_how_to_give_credentials(viewer_model, fault_server, short_budget):
    fault_server.inject("status", status=403, times=None, path="/private/info")
    url = f"{fault_server.url}/private"
    message = notified(viewer_model, url)
    assert f"{url}/info" in message and "HTTP 403" in message
    assert "Authorization" in message and "FSSPEC_HTTP" in message


def test_missing_info_says_there_is_no_volume_at_the_url(viewer_model, http_server):
    url = f"{http_server.url}/no/volume/here"
    message = notified(viewer_model, url)
    assert f"{url}/info does not exist" in message and "no Precomputed volume at" in message


def test_no_answer_fails_within_the_probe_budget(viewer_model, fault_server, short_budget):
    # A server that never answers stands for a network that is not there.
    stall = fault_server.inject("stall", times=None, stall=30.0)
    url = f"{fault_server.url}/far/away"
    try:
        message = notified(viewer_model, url)
    finally:
        fault_server.heal()
    assert stall.fired >= 1
    assert f"{url}/info" in message
    assert "within 1 s" in message and "NAPARI_PRECOMPUTED_PROBE_TIMEOUT" in message


def test_forbidden_gcs_bucket_suggests_anonymous_access(viewer_model, gcs_proxy, monkeypatch):
    import fsspec

    # A budget that covers importing gcsfs and google-auth on a loaded machine.
    monkeypatch.setenv("NAPARI_PRECOMPUTED_PROBE_TIMEOUT", "30")
    monkeypatch.setitem(
        fsspec.config.conf, "gs", {"endpoint_url": gcs_proxy.url, "project": "test"}
    )
    monkeypatch.setenv("CLOUDSDK_CONFIG", "/nonexistent")  # no user credentials: anonymous
    gcs_proxy.inject("status", status=403, times=None)
    message = notified(viewer_model, "gs://private-bucket/vol")
    assert "gs://private-bucket/vol/info" in message and "HTTP 403" in message
    assert "anonymous access" in message and "FSSPEC_GS" in message


def test_probe_and_reader_share_one_info_read(viewer_model, http_server, pyramid_volume):
    path = pyramid_volume("once")
    http_server.root = path.parent
    url = f"{http_server.url}/once"
    [layer] = viewer_model.open(url, plugin=PLUGIN)
    infos = [p for m, p, _ in http_server.requests if p.endswith("/once/info")]
    assert infos == ["/once/info"], http_server.requests
    local = get_reader(str(path))
    assert local is not None and local(str(path))[0][1]["name"] == "once"


def test_a_bad_budget_falls_back_to_the_default(monkeypatch, caplog):
    from napari_precomputed._probe import DEFAULT_PROBE_TIMEOUT, probe_timeout

    for bad in ("soon", "0", "-1", "inf"):
        monkeypatch.setenv("NAPARI_PRECOMPUTED_PROBE_TIMEOUT", bad)
        assert probe_timeout() == DEFAULT_PROBE_TIMEOUT
        assert "NAPARI_PRECOMPUTED_PROBE_TIMEOUT" in caplog.text
    monkeypatch.setenv("NAPARI_PRECOMPUTED_PROBE_TIMEOUT", "2.5")
    assert probe_timeout() == 2.5


def test_file_urls_of_other_formats_are_left_to_other_readers(http_server):
    # A URL naming a file (an extension, no info beside it) is not claimed.
    assert get_reader(f"{http_server.url}/images/cells.tif") is None

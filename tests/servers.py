"""Loopback test servers shared by the test suite and the benchmarks.

``RangeServer`` is a small stdlib HTTP/1.1 server with real ``Range`` support (Python's
``http.server`` ignores ``Range``, and fsspec then silently returns whole files), latency
injection, a request log and a count of simultaneously open requests. It serves an
in-memory dict keyed by decoded URL path, a local directory, or both (the dict wins),
with validators (``ETag``, ``Last-Modified``, either or none) and the conditional
headers that use them (``If-Match``, ``If-None-Match``, ``If-Unmodified-Since``,
``If-Modified-Since``).

``FaultServer`` is a RangeServer that misbehaves on request (:meth:`FaultServer.inject`):
error statuses with or without ``Retry-After``, every N-th request failing, connections
reset mid-body, bodies shorter than their ``Content-Length``, a wrong ``Content-Range``,
requests never answered, redirect loops. With ``upstream=`` it is instead a reverse proxy
in front of another server (fake-gcs-server, moto) that injects the same faults, plus
"apply the request, then lose the answer".

With ``cors=True`` a RangeServer also serves web pages from another origin (the Neuroglancer client
in tests/neuroglancer_client.py): CORS headers on every response, ``OPTIONS`` preflights
answered, and ``Cache-Control: no-store`` so the browser's HTTP cache never hides a
request from the log.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = ["RangeServer", "FaultServer", "Fault"]

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailers", "transfer-encoding", "upgrade", "content-length", "expect",
}  # fmt: skip


def _etag(data: bytes) -> str:
    return '"' + hashlib.md5(data).hexdigest() + '"'


def _http_date(t: float) -> str:
    return email.utils.formatdate(t, usegmt=True)


def _parse_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def _etag_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


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
    - ``validators``: ``"both"`` (``ETag``, an MD5 of the bytes, and ``Last-Modified``),
      ``"etag"``, ``"last-modified"`` or ``"none"``. :meth:`put` stamps an object's
      ``Last-Modified``; objects set directly in ``objects`` get the server's start time.
    - ``request_headers``: the headers of each request, parallel to ``requests``.
    """

    def __init__(
        self,
        objects: Mapping[str, bytes] | None = None,
        *,
        root: str | os.PathLike[str] | None = None,
        latency: float = 0.0,
        max_connections: int | None = None,
        cors: bool = False,
        validators: str = "both",
    ) -> None:
        self.objects: dict[str, bytes] = dict(objects or {})
        self.modified: dict[str, float] = {}
        self.started = time.time()
        self.validators = validators
        self.root = Path(root) if root is not None else None
        self.latency = latency
        self.cors = cors
        self.requests: list[tuple[str, str, str | None]] = []
        self.request_headers: list[dict[str, str]] = []
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

            def do_PUT(self) -> None:
                owner._handle(self, body=True)

            def do_POST(self) -> None:
                owner._handle(self, body=True)

            def do_DELETE(self) -> None:
                owner._handle(self, body=True)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            # The default listen backlog of 5 drops SYNs when a client opens dozens of
            # connections at once, which costs 1-3 s per retry.
            request_queue_size = 1024

            def handle_error(self, request: object, client_address: object) -> None:
                # A client that gave up (timeouts, cancelled batches) is normal here.
                import sys

                if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
                    super().handle_error(request, client_address)  # type: ignore[arg-type]

        self._stopping = threading.Event()
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
            self.modified.clear()
            self.root = None
            self.latency = 0.0
            self.validators = "both"
            self.max_connections = None
            self.requests.clear()
            self.request_headers.clear()
            self.max_in_flight = 0

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()
            self.request_headers.clear()
            self.max_in_flight = self.in_flight

    def put(self, path: str, data: bytes, modified: float | None = None) -> None:
        """Set ``objects[path]`` and its ``Last-Modified`` (default: now)."""
        with self._lock:
            self.objects[path] = data
            self.modified[path] = time.time() if modified is None else modified

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> RangeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        # Open keep-alive connections are still served by their daemon threads.
        self._stopping.set()  # ends stalled requests
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
            self.request_headers.append(dict(h.headers.items()))
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
        found = self._lookup_with_time(path)
        return None if found is None else found[0]

    def _lookup_with_time(self, path: str) -> tuple[bytes, float] | None:
        path = unquote(path)  # objects are keyed by decoded paths, like files on disk
        data = self.objects.get(path)
        if data is not None:
            return data, self.modified.get(path, self.started)
        if self.root is None:
            return None
        root = self.root.resolve()
        target = (root / path.lstrip("/")).resolve()
        if root != target and root not in target.parents:  # no escaping the root
            return None
        try:
            with open(target, "rb") as f:
                return f.read(), os.fstat(f.fileno()).st_mtime
        except OSError:  # missing, a directory, unreadable
            return None

    def _handle(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        rng = h.headers.get("Range")
        limit = self._limit
        with self._lock:
            self.requests.append((h.command, h.path, rng))
            self.request_headers.append(dict(h.headers.items()))
        if h.command in ("PUT", "POST", "DELETE"):
            length = int(h.headers.get("Content-Length") or 0)
            h.request_body = h.rfile.read(length) if length else b""  # type: ignore[attr-defined]
        if self._intercept(h, body):
            return
        if limit is not None:
            limit.acquire()
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                time.sleep(self.latency)
            status, payload, headers = self._response(h.path.split("?", 1)[0], rng, h)
            headers.update(self._cors_headers())
        finally:
            # Count the request as finished *before* answering: the client may start its
            # next request as soon as it has the answer, and must not be counted twice.
            with self._lock:
                self.in_flight -= 1
            if limit is not None:
                limit.release()
        _send(h, status, payload, body, headers)

    def _intercept(self, h: BaseHTTPRequestHandler, body: bool) -> bool:
        """FaultServer's hook: True when it answered (or dropped) the request itself."""
        return False

    def _response(
        self, path: str, rng: str | None, h: BaseHTTPRequestHandler | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        if h is not None and h.command not in ("GET", "HEAD"):
            return 405, b"read-only", {}
        found = self._lookup_with_time(path)
        if found is None:
            if h is not None and h.headers.get("If-Match"):
                return 412, b"", {}
            return 404, b"not found", {}
        data, mtime = found
        n = len(data)
        headers = {"Accept-Ranges": "bytes"}
        etag = _etag(data)
        if self.validators in ("both", "etag"):
            headers["ETag"] = etag
        if self.validators in ("both", "last-modified"):
            headers["Last-Modified"] = _http_date(mtime)
        if h is not None:
            refused = self._preconditions(h, etag, int(mtime))
            if refused:
                return refused, b"", headers
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

    def _preconditions(self, h: BaseHTTPRequestHandler, etag: str, mtime: int) -> int | None:
        """RFC 9110 §13.2.2 order: If-Match, If-Unmodified-Since, If-None-Match,
        If-Modified-Since. Returns 412 or 304 when one fails. Validators the server
        does not send are not evaluated (as a server without them cannot)."""
        has_etag = self.validators in ("both", "etag")
        has_lm = self.validators in ("both", "last-modified")
        if_match = h.headers.get("If-Match")
        if if_match and has_etag:
            tags = _etag_list(if_match)
            if "*" not in tags and etag not in [t for t in tags if not t.startswith("W/")]:
                return 412
        elif has_lm:
            since = _parse_date(h.headers.get("If-Unmodified-Since"))
            if since is not None and mtime > since:
                return 412
        if_none = h.headers.get("If-None-Match")
        if if_none and has_etag:
            tags = [t.removeprefix("W/") for t in _etag_list(if_none)]
            if "*" in tags or etag in tags:
                return 304
        elif has_lm and not if_none:
            since = _parse_date(h.headers.get("If-Modified-Since"))
            if since is not None and mtime <= since:
                return 304
        return None


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
    if not any(k.lower() == "content-type" for k in headers or {}):
        h.send_header("Content-Type", "application/octet-stream")
    if status == 304:
        payload = b""
    h.send_header("Content-Length", str(len(payload)))
    h.end_headers()
    if body:
        h.wfile.write(payload)


# -- faults ---------------------------------------------------------------------------------

#: What a :class:`Fault` does to the requests it matches.
FAULT_KINDS = (
    "status",  # answer ``status`` (with ``Retry-After`` if given), not applying the request
    "reset",  # send the headers and half the body, then reset the connection (RST)
    "truncate",  # Content-Length of the whole body, half of it, then close (FIN)
    "wrong_range",  # a 206 for the range one byte further on, saying so in Content-Range
    "stall",  # read the request, never answer (until the server stops or ``stall`` s)
    "redirect_loop",  # 302 to the same URL, forever
    "drop_response",  # (proxy) apply the request upstream, then reset without answering
)


@dataclass
class Fault:
    """One injected misbehaviour. It matches requests by ``method`` and ``path`` prefix
    (None: any) and fires on the first ``times`` matches (None: on all of them), or on
    every ``every``-th match instead. ``fired`` counts how often it did."""

    kind: str
    status: int = 503
    retry_after: str | None = None
    times: int | None = 1
    every: int | None = None
    path: str | None = None
    method: str | None = None
    stall: float = 30.0
    seen: int = 0
    fired: int = 0
    released: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r} (one of {FAULT_KINDS})")

    def fires(self, method: str, path: str, ranged: bool = False) -> bool:
        if self.method is not None and method != self.method:
            return False
        if self.kind == "wrong_range" and not ranged:
            return False  # only a ranged answer has a Content-Range to get wrong
        if self.path is not None and not unquote(path).startswith(self.path):
            return False
        with self._lock:
            self.seen += 1
            if self.every is not None:
                hit = self.seen % self.every == 0
            else:
                hit = self.times is None or self.fired < self.times
            if hit:
                self.fired += 1
            return hit


class FaultServer(RangeServer):
    """A RangeServer (or, with ``upstream="http://127.0.0.1:PORT"``, a reverse proxy in
    front of another server) that injects :class:`Fault`\\ s. ``answered`` counts the
    requests served normally (proxied or from ``objects``)."""

    def __init__(self, *args: object, upstream: str | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.upstream = urlsplit(upstream) if upstream else None
        self.faults: list[Fault] = []
        self.answered = 0

    def inject(self, kind: str, **kwargs: object) -> Fault:
        """Add a fault (see :data:`FAULT_KINDS` and :class:`Fault`); returns it."""
        fault = Fault(kind, **kwargs)  # type: ignore[arg-type]
        with self._lock:
            self.faults.append(fault)
        return fault

    def heal(self) -> None:
        """Remove every fault (and end the requests they stall)."""
        with self._lock:
            for f in self.faults:
                f.released.set()
            self.faults.clear()

    def reset(self) -> None:
        super().reset()
        self.heal()
        with self._lock:
            self.answered = 0

    # -- serving -------------------------------------------------------------------------
    def _intercept(self, h: BaseHTTPRequestHandler, body: bool) -> bool:
        with self._lock:
            faults = list(self.faults)
        ranged = bool(h.headers.get("Range"))
        fault = next((f for f in faults if f.fires(h.command, h.path, ranged)), None)
        if fault is None:
            if self.upstream is None:
                return False  # RangeServer serves it
            self._send_upstream(h, body, *self._forward(h))
            return True
        kind = fault.kind
        if kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            _send(h, fault.status, b"injected fault", body, headers)
        elif kind == "stall":
            deadline = time.monotonic() + fault.stall
            while not (self._stopping.is_set() or fault.released.wait(0.05)):
                if time.monotonic() > deadline:
                    break
            h.close_connection = True
        elif kind == "redirect_loop":
            _send(h, 302, b"", body, {"Location": h.path})
        elif kind == "drop_response":
            if self.upstream is not None:
                self._forward(h)  # applied upstream; the answer is lost
            _reset(h)
        else:  # reset, truncate, wrong_range: misbehave while sending a real answer
            status, payload, headers = (
                self._forward(h)
                if self.upstream is not None
                else self._response(h.path.split("?", 1)[0], h.headers.get("Range"), h)
            )
            if kind == "wrong_range":
                self._send_shifted(h, body, status, payload, headers)
            else:
                self._send_partial(h, body, status, payload, headers, rst=kind == "reset")
        return True

    def _forward(self, h: BaseHTTPRequestHandler) -> tuple[int, bytes, dict[str, str]]:
        assert self.upstream is not None
        conn = http.client.HTTPConnection(
            self.upstream.hostname or "127.0.0.1", self.upstream.port, timeout=30
        )
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP_BY_HOP}
            data = getattr(h, "request_body", None)
            conn.request(h.command, h.path, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            keep = {"content-length"} if h.command == "HEAD" or resp.status == 304 else set()
            out = {
                k: v
                for k, v in resp.getheaders()
                if k.lower() not in _HOP_BY_HOP or k.lower() in keep
            }
            return resp.status, payload, out
        finally:
            conn.close()

    def _send_upstream(
        self, h: BaseHTTPRequestHandler, body: bool, status: int, payload: bytes, headers: dict[str, str]
    ) -> None:
        with self._lock:
            self.answered += 1
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        if not any(k.lower() == "content-length" for k in headers):
            h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        if body and h.command != "HEAD" and status != 304:
            h.wfile.write(payload)

    def _send_partial(
        self,
        h: BaseHTTPRequestHandler,
        body: bool,
        status: int,
        payload: bytes,
        headers: dict[str, str],
        rst: bool,
    ) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        if body:
            h.wfile.write(payload[: len(payload) // 2])
        h.wfile.flush()
        if rst:
            _reset(h)
        else:
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _send_shifted(
        self, h: BaseHTTPRequestHandler, body: bool, status: int, payload: bytes, headers: dict[str, str]
    ) -> None:
        name = next((k for k in headers if k.lower() == "content-range"), "Content-Range")
        m = re.match(r"bytes (\d+)-(\d+)/(\d+)", headers.get(name, ""))
        if status != 206 or m is None:
            return _send(h, status, payload, body, headers)
        a, b, n = int(m[1]), int(m[2]), int(m[3])
        found = self._lookup(h.path.split("?", 1)[0]) if self.upstream is None else None
        if found is not None and b + 1 < n:
            a, b = a + 1, b + 1
            payload = found[a : b + 1]
        else:  # can't shift past the end: claim a range one byte earlier
            a, b = max(a - 1, 0), b - 1
        headers = {**{k: v for k, v in headers.items() if k != name}, "Content-Range": f"bytes {a}-{b}/{n}"}
        _send(h, status, payload, body, headers)


def _reset(h: BaseHTTPRequestHandler) -> None:
    """Close the connection with a TCP RST (SO_LINGER 0) instead of a clean FIN."""
    h.close_connection = True
    try:
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.connection.close()
    except OSError:
        pass

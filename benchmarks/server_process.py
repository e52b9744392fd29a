"""Run ``tests/servers.py``'s RangeServer in a child process for the HTTP benchmarks.

A real server is never inside the client's process. In the same process its request
handling would compete with a Python client for the GIL (TensorStore's C++ client does
not hold it), so the latency workloads serve from a child process. The parent proxies the
few attributes the benchmarks read: ``url``, ``requests``, ``timed_requests`` and
``clear_log()``.

Protocol on the child's stdin/stdout, one line each: ``log`` answers the request log as
JSON, ``tlog`` the timed log (below), ``clear`` clears both (answers ``ok``), end of input
stops the server.

The timed log has one ``[method, path, range, status, start, end]`` per request, with
``start`` and ``end`` in ``time.monotonic()`` seconds (CLOCK_MONOTONIC, the same clock in
every process on the machine): when the request arrived and when its answer was sent,
latency included. ``benchmarks/bench_napari.py`` uses it to count sequential rounds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent / "tests"


class ServerProcess:
    """A RangeServer over ``root`` with ``latency`` seconds per request, in a child."""

    def __init__(self, root: str | Path, latency: float) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, __file__, str(root), repr(float(latency))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._lock = threading.Lock()
        self.url = self._answer()

    def _answer(self) -> str:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the benchmark's HTTP server process exited")
        return line.strip()

    def _ask(self, command: str) -> str:
        assert self._proc.stdin is not None
        with self._lock:
            self._proc.stdin.write(command + "\n")
            self._proc.stdin.flush()
            return self._answer()

    @property
    def requests(self) -> list[tuple[str, str, str | None]]:
        return [tuple(r) for r in json.loads(self._ask("log"))]  # type: ignore[misc]

    @property
    def timed_requests(self) -> list[tuple[str, str, str | None, int, float, float]]:
        """``(method, path, range, status, start, end)`` per request (see the module doc)."""
        return [tuple(r) for r in json.loads(self._ask("tlog"))]  # type: ignore[misc]

    def clear_log(self) -> None:
        self._ask("clear")

    def stop(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _serve(root: str, latency: float) -> None:
    sys.path.insert(0, str(TESTS))
    from servers import RangeServer

    server = RangeServer(root=root, latency=latency)
    # Clients closing keep-alive connections make the stdlib server print tracebacks.
    server._httpd.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
    timed = _time_requests(server)
    server.start()
    print(server.url, flush=True)
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "log":
                print(json.dumps(list(server.requests)), flush=True)
            elif command == "tlog":
                with server._lock:
                    print(json.dumps(list(timed)), flush=True)
            elif command == "clear":
                server.clear_log()
                with server._lock:
                    timed.clear()
                print("ok", flush=True)
    finally:
        server.stop()


def _time_requests(server: Any) -> list[list[Any]]:
    """Wrap the server's request handling to log start, end and status of each request."""
    import time

    timed: list[list[Any]] = []
    local = threading.local()
    handle, response = server._handle, server._response

    def timed_response(path: str, rng: str | None, *rest: Any) -> Any:
        out = response(path, rng, *rest)
        local.status = out[0]
        return out

    def timed_handle(h: Any, body: bool) -> None:
        start = time.monotonic()
        local.status = 0
        try:
            handle(h, body)
        finally:
            with server._lock:
                timed.append(
                    [h.command, h.path, h.headers.get("Range"), local.status, start, time.monotonic()]
                )

    server._response = timed_response
    server._handle = timed_handle
    return timed


if __name__ == "__main__":
    _serve(sys.argv[1], float(sys.argv[2]))

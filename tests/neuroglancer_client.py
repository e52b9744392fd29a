"""Neuroglancer's own web client as a test oracle: headless Chromium around the client
shipped in the ``neuroglancer`` wheel.

One browser and one ``neuroglancer.Viewer`` (both on 127.0.0.1) serve the whole session;
volumes are served from a temporary directory by a :class:`servers.RangeServer` with CORS.
Tests use the ``ng`` fixture (a :class:`NeuroglancerClient` prepared for one test):

* ``ng.path(name)`` -- a new directory to write a volume into; ``ng.url(path)`` -- its
  ``precomputed://http://127.0.0.1:PORT/...`` source. Every test gets its own directories,
  so the client's chunk cache (keyed by URL) never shows one test another test's data.
* ``ng.show(layers, position=..., size=...)`` -- replace the whole viewer state.
* ``ng.screenshot(timeout)`` -- the canvas as an RGBA array; raises :class:`ChunksFailed`
  as soon as the client reports failed chunks and :class:`ScreenshotTimeout` after
  ``timeout`` (the pending request is withdrawn, so later screenshots still work).
* ``ng.values_at(layer, z, x=..., y=..., dtype=...)`` -- voxel values as decoded by the
  client (JS ``getValueAt``; exact for uint64, where ``viewer.volume()`` fails).
* ``ng.read_volume(layer)`` -- a whole layer read back through the client (not uint64).
* ``ng.requests()`` / ``ng.chunk_requests(path)`` -- what the client fetched.
* ``ng.layer_error(layer)`` -- the data source's load error, if any;
  ``ng.console_errors()`` -- the browser console's messages.
* ``ng.show_meshes(...)`` -- the hook for meshes: 3-D view, selected segments, the mesh
  requests the client made and the pixels the meshes cover; ``ng.mesh_fragments()`` --
  the multi-resolution fragments the client decoded; ``ng.segment_properties(layer)``
  -- the segment properties as the client parsed them.
* ``ng.client_errors()`` -- the console's errors and warnings, without the viewer's own
  harmless ones.

On a test failure, a page screenshot, the last client screenshot, the viewer state, the
console log and the request log are saved under the session's temporary directory; the
path is added to the failure report. docs/dev/neuroglancer-harness.md has the details.

The browser needs Debian's ``chromium`` and ``chromium-driver``. Without them the tests
are skipped -- except with ``CI=true``, where a missing browser is an error.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote

import numpy as np
import pytest

from servers import RangeServer

if TYPE_CHECKING:
    import neuroglancer

__all__ = [
    "ChunksFailed",
    "ClientError",
    "MESH_RENDER_SCALE_RANGE",
    "MeshFragment",
    "MeshRender",
    "NeuroglancerClient",
    "Request",
    "ScreenshotTimeout",
    "browser_binaries",
]

START_TIMEOUT = 30.0  # browser start + client loaded (about 2 s on an idle machine)
SCREENSHOT_TIMEOUT = 10.0
QUIT_TIMEOUT = 10.0  # for driver.quit(), then as long again for the processes to exit
WINDOW_SIZE = (800, 600)
# The client's bounds for a segmentation layer's meshRenderScale (trackableRenderScaleTarget
# in src/render_scale_statistics.ts, 2.41): outside them it falls back to its default, 1.
MESH_RENDER_SCALE_RANGE = (2.0**-4, 2.0**16 - 1)

# Chromium flags: software WebGL (SwiftShader), no background services, and no name
# resolution except 127.0.0.1, so nothing leaves the machine.
CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-breakpad",
    "--no-first-run",
    "--no-default-browser-check",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    f"--window-size={WINDOW_SIZE[0]},{WINDOW_SIZE[1]}",
)


class ClientError(Exception):
    """The client did not deliver what was asked for; ``artifacts`` names the saved
    debugging files (see :meth:`NeuroglancerClient.save_artifacts`)."""

    def __init__(self, message: str, artifacts: Path | None = None) -> None:
        if artifacts is not None:
            message = f"{message}\n(debugging files: {artifacts})"
        super().__init__(message)
        self.artifacts = artifacts


class ScreenshotTimeout(ClientError):
    """No screenshot within the timeout; ``statistics`` holds the client's last chunk
    statistics (``visibleChunksTotal``, ``...Downloading``, ``...Failed``, ...)."""

    def __init__(
        self, message: str, statistics: dict[str, Any], artifacts: Path | None = None
    ) -> None:
        super().__init__(message, artifacts)
        self.statistics = statistics


class ChunksFailed(ScreenshotTimeout):
    """The client reported visible chunks it failed to load (``visibleChunksFailed``);
    ``errors`` holds the matching console messages."""

    def __init__(
        self,
        message: str,
        statistics: dict[str, Any],
        errors: list[str],
        artifacts: Path | None = None,
    ) -> None:
        super().__init__(message, statistics, artifacts)
        self.errors = errors

    @property
    def failed(self) -> int:
        return int(self.statistics.get("visibleChunksFailed", 0))


class Request(NamedTuple):
    """One request the data server answered: path relative to the served directory (or
    to the volume asked about) and the ``Range`` header."""

    method: str
    path: str
    range: str | None


@dataclass
class MeshRender:
    """What :meth:`NeuroglancerClient.show_meshes` saw."""

    image: np.ndarray  # (height, width, 4) uint8
    foreground: np.ndarray  # (height, width) bool: pixels differing from the background
    manifest_requests: list[str] = field(default_factory=list)  # "{id}:{lod}" and the like
    fragment_requests: list[str] = field(default_factory=list)
    # Every GET under the mesh directory but its info, in order, with the Range header:
    # sharded meshes are only byte ranges of ``.shard`` files.
    requests: list[Request] = field(default_factory=list)
    pixel_size: float = 1.0  # world units (nm) per screen pixel (orthographic view)
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0)  # world position at the centre

    def project(self, x: float, y: float) -> tuple[float, float]:
        """Screen (column, row) of the world point (x, y) in nm: the view looks along
        +z, x to the right and y down, like the 2-D xy view."""
        h, w = self.foreground.shape
        return (
            w / 2 + (x - self.centre[0]) / self.pixel_size,
            h / 2 + (y - self.centre[1]) / self.pixel_size,
        )

    def box_pixels(self, lo: Sequence[float], hi: Sequence[float]) -> tuple[slice, slice]:
        """(rows, columns) of the screen rectangle that world box ``lo``-``hi`` (x, y
        in nm) projects to."""
        c0, r0 = self.project(lo[0], lo[1])
        c1, r1 = self.project(hi[0], hi[1])
        return slice(round(r0), round(r1)), slice(round(c0), round(c1))


def browser_binaries() -> tuple[str | None, str | None]:
    """Paths of ``chromium`` and ``chromedriver`` (None when not installed)."""
    return shutil.which("chromium"), shutil.which("chromedriver")


# -- processes ----------------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (None if gone or a zombie): a (pid, start time)
    pair names one process even if the pid is reused later."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else fields[19]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            pass
    return out


def _descendants(pid: int) -> dict[int, str]:
    """``pid`` and all its descendants, with their start times."""
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        start = _start_time(p)
        if start is None or p in found:
            continue
        found[p] = start
        todo += _children(p)
    return found


def _processes_mentioning(marker: str, exclude: int | None = None) -> dict[int, str]:
    """Live processes whose command line contains ``marker`` (our browser profile
    directory; catches helpers Chromium re-parents to init, like the crash handler),
    except ``exclude``."""
    found: dict[int, str] = {}
    needle = marker.encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == exclude:
            continue
        try:
            cmdline = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            start = _start_time(int(d.name))
            if start is not None:
                found[int(d.name)] = start
    return found


def _alive(procs: Mapping[int, str]) -> dict[int, str]:
    return {p: s for p, s in procs.items() if _start_time(p) == s}


# Run by a small helper process while the browser lives: if the test process dies without
# closing the browser (SIGKILL, OOM, a cancelled CI job), the helper's stdin reaches EOF
# without the word "done", and it kills chromedriver's process group (chromedriver and
# Chromium run in a session of their own) and every other process naming our browser
# profile, then removes the profile (which also holds Chromium's temporary files).
_WATCHDOG = r"""
import os, shutil, signal, sys
pgid, profile = int(sys.argv[1]), sys.argv[2]
if sys.stdin.buffer.read() == b"done":
    sys.exit(0)
try:
    os.killpg(pgid, signal.SIGKILL)
except OSError:
    pass
for d in os.listdir("/proc"):
    if not d.isdigit() or int(d) == os.getpid():
        continue
    try:
        with open(f"/proc/{d}/cmdline", "rb") as f:
            if profile.encode() in f.read():
                os.kill(int(d), signal.SIGKILL)
    except OSError:
        pass
shutil.rmtree(profile, ignore_errors=True)
"""


# -- the client ---------------------------------------------------------------------------

_VALUES_JS = """
const [name, x0, x1, y0, y1, z] = arguments;
const managed = window.viewer.layerManager.getLayerByName(name);
if (managed === undefined || managed.layer == null) return {error: "no layer " + name};
const layer = managed.layer;
const out = [];
const p = new Float32Array(3);
for (let y = y0; y < y1; ++y) {
  for (let x = x0; x < x1; ++x) {
    p[0] = x + 0.5; p[1] = y + 0.5; p[2] = z + 0.5;
    const v = layer.getValueAt(p, {});
    out.push(v == null ? null : String(v));
  }
}
return {values: out};
"""

_LAYER_STATE_JS = """
const managed = window.viewer.layerManager.getLayerByName(arguments[0]);
if (managed === undefined) return {missing: true};
if (managed.layer == null) return {loading: true};
const sources = managed.layer.dataSources.map((s) => {
  const st = s.loadState;
  if (st === undefined) return {loading: true};
  if (st.error !== undefined) return {error: String(st.error.message || st.error)};
  return {ok: true};
});
return {sources};
"""

# The segment properties as the client parsed them: the layer's preprocessed property
# map (null until the layer's sources have loaded it), its inline ids and properties
# (ids as decimal strings: exact for uint64), and getSegmentLabel (label + "#tag"s, as
# the segment list shows it) of the ids asked about.
_SEGMENT_PROPERTIES_JS = """
const [name, ids] = arguments;
const managed = window.viewer.layerManager.getLayerByName(name);
if (managed === undefined || managed.layer == null) return {error: "no layer " + name};
const map = managed.layer.displayState.segmentationGroupState.value.segmentPropertyMap.value;
if (map === undefined) return {map: null};
const inline = map.segmentPropertyMap.inlineProperties;
if (inline === undefined) return {map: {ids: [], properties: [], labels: {}}};
const properties = inline.properties.map((p) => {
  const out = {id: p.id, type: p.type, description: p.description ?? null};
  if (p.type === "tags") {
    out.tags = Array.from(p.tags);
    out.values = Array.from(p.values, (v) => Array.from(v, (c) => p.tags[c.charCodeAt(0)]));
  } else if (p.type === "number") {
    out.data_type = p.dataType;  // the client's DataType enum (a number)
    out.values = Array.from(p.values, (v) => Number(v));
  } else {
    out.values = Array.from(p.values);
  }
  return out;
});
const labels = {};
for (const id of ids) labels[id] = map.getSegmentLabel(BigInt(id)) ?? null;
return {map: {ids: Array.from(inline.ids, String), properties, labels}};
"""

# The multi-resolution mesh fragments the client holds on its main thread (decoded;
# a fragment that failed to download or decode never gets there: the client silently
# draws its parent instead). Keys are "{id}/{lod}:{octree row}" (getMultiscaleFragmentKey).
_MESH_FRAGMENTS_JS = """
const managed = window.viewer.layerManager.getLayerByName(arguments[0]);
if (managed === undefined || managed.layer == null) return {error: "no layer " + arguments[0]};
const out = [];
for (const renderLayer of managed.layer.renderLayers) {
  const source = renderLayer.source;
  if (source == null || source.fragmentSource === undefined) continue;
  for (const [key, chunk] of source.fragmentSource.chunks) {
    const m = chunk.meshData;
    out.push({key, strips: m.strips, indices: m.indices.length,
              type: m.vertexPositions.constructor.name,
              positions: Array.from(m.vertexPositions)});
  }
}
return {fragments: out};
"""


class MeshFragment(NamedTuple):
    """A decoded multi-resolution mesh fragment as the client holds it: ``positions``
    are the quantized vertex positions, ``(n, 3)`` uint32 (the client's 10-bit format
    unpacked), ``triangles`` its triangle count."""

    segment: int
    lod: int
    row: int
    positions: np.ndarray
    triangles: int


class NeuroglancerClient:
    """One headless Chromium running the Neuroglancer client of the ``neuroglancer``
    wheel, its Python viewer, and a data server for ``data_root``. Create it with
    :meth:`start`; always :meth:`close` it (the fixtures do)."""

    def __init__(self, data_root: Path, artifacts_root: Path) -> None:
        self.data_root = data_root
        self.artifacts_root = artifacts_root
        self.server = RangeServer(root=data_root, cors=True)
        self.viewer: neuroglancer.Viewer | None = None
        self.driver: Any = None  # selenium.webdriver.Chrome
        self.profile = Path(tempfile.mkdtemp(prefix="ng-harness-chromium-"))
        self.timings: dict[str, float] = {}
        self._console: list[str] = []
        self._console_lock = threading.Lock()
        self._last_image: np.ndarray | None = None
        self._last_stats: dict[str, Any] = {}
        self._layer_names: list[str] = []
        self._check = 0
        self._test = "session"
        self._dirs = 0
        self._shows = 0
        self._size: tuple[int, int] = (0, 0)
        self._position: tuple[float, ...] = (0.0, 0.0, 0.0)
        self._procs: dict[int, str] = {}
        self._watchdog: subprocess.Popen[bytes] | None = None
        self.driver_log = artifacts_root / "chromedriver.log"  # chromedriver + Chromium
        self._driver_log: Any = None
        self._server_started = False
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------
    @classmethod
    def start(
        cls, data_root: Path, artifacts_root: Path, timeout: float = START_TIMEOUT
    ) -> NeuroglancerClient:
        """Start the data server, the viewer and the browser, and wait until the client
        runs; on any failure everything started is stopped again."""
        client = cls(data_root, artifacts_root)
        atexit.register(client.close)  # if the session dies before its teardown
        try:
            client._start(timeout)
        except BaseException:
            client.close()
            raise
        return client

    def _start(self, timeout: float) -> None:
        import neuroglancer
        import selenium.webdriver
        from selenium.webdriver.chrome.service import Service

        t0 = time.perf_counter()
        chromium, chromedriver = browser_binaries()
        if chromium is None or chromedriver is None:
            raise ClientError("chromium and chromedriver must be installed")
        self.server.start()
        self._server_started = True
        neuroglancer.set_server_bind_address("127.0.0.1")
        self.viewer = neuroglancer.Viewer()
        options = selenium.webdriver.ChromeOptions()
        options.binary_location = chromium
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        for arg in CHROMIUM_ARGS:
            options.add_argument(arg)
        options.add_argument(f"--user-data-dir={self.profile}")
        # Everything Chromium writes goes into the profile: its crash handler's database
        # (else in ~/.config; its command line then names the profile) and its
        # temporary files (else /tmp/org.chromium.*, left behind if it is killed).
        env = dict(os.environ)
        for var, sub in (
            ("XDG_CONFIG_HOME", "config"),
            ("XDG_CACHE_HOME", "cache"),
            ("TMPDIR", "tmp"),
        ):
            (self.profile / sub).mkdir()
            env[var] = str(self.profile / sub)
        self._driver_log = open(self.driver_log, "ab")  # closed in close()
        # An explicit driver path: Selenium Manager (which phones home) never runs.
        # Its own session: one process group to kill if this process dies (_WATCHDOG).
        service = Service(
            executable_path=chromedriver,
            log_output=self._driver_log,
            env=env,
            popen_kw={"start_new_session": True},
        )
        self.driver = selenium.webdriver.Chrome(options=options, service=service)
        pid = service.process.pid
        self._procs = _descendants(pid)
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(pid), str(self.profile)],
            stdin=subprocess.PIPE,
            start_new_session=True,
        )
        self.driver.set_page_load_timeout(timeout)
        self.driver.set_script_timeout(timeout)
        self.driver.get(self.viewer.get_viewer_url())
        self.wait_for(
            lambda: self.driver.execute_script("return !!window.viewer"),
            timeout - (time.perf_counter() - t0),
            "the Neuroglancer client to start",
        )
        self._procs.update(_descendants(service.process.pid))
        self.timings["start"] = time.perf_counter() - t0

    def close(self) -> list[int]:
        """Quit the browser and chromedriver, stop the servers and remove the browser
        profile. Returns the pids of browser processes that outlived ``quit()`` (they
        are killed); empty when the cleanup was clean. Safe to call twice."""
        if self._closed:
            return []
        self._closed = True
        atexit.unregister(self.close)
        leftovers: list[int] = []
        if self.driver is not None:
            pid = self.driver.service.process.pid if self.driver.service.process else None
            if pid is not None:
                self._procs.update(_descendants(pid))
            # quit() closes Chromium, then stops chromedriver. Bounded: a hung browser
            # must not hang the session; whatever survives is killed below.
            quitter = threading.Thread(target=_quietly, args=(self.driver.quit,), daemon=True)
            quitter.start()
            quitter.join(QUIT_TIMEOUT)
            watchdog = self._watchdog.pid if self._watchdog is not None else None
            self._procs.update(_processes_mentioning(str(self.profile), watchdog))
            deadline = time.monotonic() + QUIT_TIMEOUT
            while _alive(self._procs) and time.monotonic() < deadline:
                time.sleep(0.05)
            survivors = _alive(self._procs) | _processes_mentioning(str(self.profile), watchdog)
            for p in survivors:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            leftovers = sorted(survivors)
        if self._watchdog is not None:
            assert self._watchdog.stdin is not None
            try:
                self._watchdog.stdin.write(b"done")
                self._watchdog.stdin.close()
                self._watchdog.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self._watchdog.kill()
                self._watchdog.wait()
        if self._driver_log is not None:
            self._driver_log.close()
        if self.viewer is not None:
            import neuroglancer.server

            neuroglancer.server.stop()
        if self._server_started:  # stop() waits for a serve loop that must have started
            self.server.stop()
        shutil.rmtree(self.profile, ignore_errors=True)
        return leftovers

    def _fetch_console(self) -> None:
        """Move the browser's buffered console messages into ``_console``."""
        try:
            entries = self.driver.get_log("browser")
        except Exception:  # the browser may be gone
            return
        with self._console_lock:
            self._console += [f"{e.get('level')}: {e.get('message')}" for e in entries]

    # -- per test -------------------------------------------------------------------------
    def begin(self, test: str) -> None:
        """Prepare for one test: empty state, logs cleared."""
        self._test = test
        self._check += 1
        self._last_image = None
        self._last_stats = {}
        self.reset()

    def reset(self) -> None:
        """Withdraw a pending screenshot, drop all layers and clear the logs."""
        import neuroglancer

        assert self.viewer is not None
        self._withdraw_screenshot()
        self.viewer.set_state(neuroglancer.ViewerState())
        self._layer_names = []
        self.server.clear_log()
        self._fetch_console()
        with self._console_lock:
            self._console.clear()

    def path(self, name: str) -> Path:
        """A new empty directory under the served root, unique in the session (its URL
        has never been seen by the client)."""
        self._dirs += 1
        p = self.data_root / f"{self._dirs:03d}-{_safe(self._test)}" / name
        p.mkdir(parents=True)
        return p

    def url(self, path: str | os.PathLike[str]) -> str:
        """The ``precomputed://`` source of the volume in ``path`` (under the root)."""
        rel = Path(path).resolve().relative_to(self.data_root.resolve()).as_posix()
        return f"precomputed://{self.server.url}/{rel}"

    # -- showing --------------------------------------------------------------------------
    def show(
        self,
        layers: Mapping[str, Any],
        *,
        position: Sequence[float],
        size: tuple[int, int] = (256, 256),
        resolution: Sequence[float] = (1.0, 1.0, 1.0),
        cross_section_scale: float = 1.0,
        layout: Any = "xy",
        **state: Any,
    ) -> None:
        """Replace the viewer state: ``layers`` (name -> ``neuroglancer`` layer, or a
        source URL for an image layer), global x/y/z ``dimensions`` in nm of
        ``resolution``, ``position`` in those units (voxel centres are at i + 0.5),
        canvas ``size`` (width, height) in pixels. With ``cross_section_scale`` 1 and
        the default ``xy`` layout, pixel (row r, column c) shows voxel
        (x = position[0] - width/2 + c, y = position[1] - height/2 + r). ``state`` sets
        further ``ViewerState`` members. Annotations, axis lines, the scale bar and all
        UI are hidden; the background is black."""
        import neuroglancer

        assert self.viewer is not None
        self._withdraw_screenshot()
        s = neuroglancer.ViewerState()
        s.dimensions = neuroglancer.CoordinateSpace(
            names=["x", "y", "z"], units="nm", scales=list(resolution)
        )
        for name, layer in layers.items():
            if isinstance(layer, str):
                layer = neuroglancer.ImageLayer(source=layer)
            s.layers[name] = layer
        s.layout = layout
        s.position = list(position)
        s.cross_section_scale = cross_section_scale
        s.show_axis_lines = False
        s.show_scale_bar = False
        s.show_default_annotations = False
        # The client's default is grey (#808080): black makes "nothing here" unambiguous.
        s.cross_section_background_color = "#000000"
        for k, v in state.items():
            setattr(s, k, v)
        # A unique title marks this state: once the client shows it, the client has
        # applied the whole state, and no query can reach the previous state's layers.
        self._shows += 1
        token = s.title = f"ng-harness {self._shows}"
        self.viewer.set_state(s)
        with self.viewer.config_state.txn() as cs:
            cs.show_ui_controls = False
            cs.show_panel_borders = False
            cs.show_layer_panel = False
            cs.viewer_size = list(size)
        self._layer_names = list(layers)
        self._size = tuple(size)
        self._position = tuple(position)
        self.wait_for(
            lambda: self.driver.execute_script("return window.viewer.title.value") == token,
            SCREENSHOT_TIMEOUT,
            "the client to apply the new viewer state",
        )

    def screenshot(self, timeout: float = SCREENSHOT_TIMEOUT) -> np.ndarray:
        """The canvas as an (height, width, 4) uint8 array once every visible chunk is
        loaded. Raises :class:`ChunksFailed` as soon as the client reports failed
        chunks, :class:`ScreenshotTimeout` after ``timeout`` s."""
        assert self.viewer is not None
        deadline = time.monotonic() + timeout
        while True:
            reply = self._screenshot_once(deadline, timeout)
            shot = reply.screenshot
            names = [layer.name for layer in reply.viewer_state.layers]
            if (shot.width, shot.height) == self._size and names == self._layer_names:
                break
            if time.monotonic() >= deadline:  # the client kept an older state or size
                raise ClientError(
                    f"screenshot of {shot.width}x{shot.height} with layers {names}, "
                    f"expected {self._size[0]}x{self._size[1]} with {self._layer_names}",
                    self.save_artifacts("wrong-screenshot"),
                )
        image = np.array(reply.screenshot.image_pixels)
        if image.ndim != 3 or image.shape[2] != 4:
            raise ClientError(f"screenshot is not RGBA: shape {image.shape}")
        self._last_image = image
        return image

    def _screenshot_once(self, deadline: float, timeout: float) -> Any:
        assert self.viewer is not None
        done = threading.Event()
        failed = threading.Event()
        result: list[Any] = []

        def on_reply(reply: Any) -> None:
            result.append(reply)
            done.set()

        def on_statistics(stats: Any) -> None:
            total = stats.total.to_json() if stats.total is not None else {}
            self._last_stats = dict(total)
            if total.get("visibleChunksFailed"):
                failed.set()
                done.set()

        self.viewer.async_screenshot(on_reply, statistics_callback=on_statistics)
        t0 = time.perf_counter()
        done.wait(max(deadline - time.monotonic(), 0))
        self.timings["last_screenshot"] = time.perf_counter() - t0
        if result:
            return result[0]
        self._withdraw_screenshot()
        stats = dict(self._last_stats)
        if failed.is_set():
            errors = [m for m in self.console_errors() if "chunk" in m.lower()]
            raise ChunksFailed(
                f"the client failed to load {stats.get('visibleChunksFailed')} of "
                f"{stats.get('visibleChunksTotal')} visible chunks: "
                + ("; ".join(errors[:3]) or "(no console message)"),
                stats,
                errors,
                self.save_artifacts("chunks-failed"),
            )
        raise ScreenshotTimeout(
            f"no screenshot within {timeout:g} s; last chunk statistics: {stats or 'none'}",
            stats,
            self.save_artifacts("screenshot-timeout"),
        )

    def _withdraw_screenshot(self) -> None:
        """Cancel a pending screenshot request: otherwise the next one waits behind it."""
        assert self.viewer is not None
        with self.viewer.config_state.txn() as cs:
            cs.screenshot = None

    # -- reading values back ------------------------------------------------------------
    def values_at(
        self,
        layer: str,
        z: int,
        *,
        x: tuple[int, int] | None = None,
        y: tuple[int, int] | None = None,
        dtype: Any,
        missing: Any = None,
    ) -> np.ndarray:
        """Voxel values of slice ``z`` (global voxel coordinates), ``x`` and ``y``
        half-open ranges (default: the area on screen), as decoded by the client, shaped
        (y, x) like a screenshot. Only chunks the client has loaded have values: take a
        :meth:`screenshot` of the slice first. Voxels without a value raise, unless
        ``missing`` gives the value to use for them."""
        w, h = self._size
        if x is None:
            x0 = round(self._position[0] - w / 2)
            x = (x0, x0 + w)
        if y is None:
            y0 = round(self._position[1] - h / 2)
            y = (y0, y0 + h)
        out = self.driver.execute_script(_VALUES_JS, layer, x[0], x[1], y[0], y[1], z)
        if "error" in out:
            raise ClientError(out["error"])
        raw = out["values"]
        n_missing = sum(v is None for v in raw)
        if n_missing and missing is None:
            raise ClientError(
                f"layer {layer!r}: {n_missing} of {len(raw)} voxels of z={z}, x={x}, "
                f"y={y} have no value in the client (not loaded, or outside the volume)",
                self.save_artifacts("values-missing"),
            )
        dt = np.dtype(dtype)
        conv: Callable[[str], Any] = int if dt.kind in "iub" else float
        vals = [missing if v is None else conv(v) for v in raw]
        return np.array(vals, dtype=dt).reshape(y[1] - y[0], x[1] - x[0])

    def read_volume(self, layer: str, timeout: float = SCREENSHOT_TIMEOUT) -> np.ndarray:
        """All of ``layer``'s scale-0 data, fetched and decoded by the client
        (``viewer.volume()``), as an x, y, z array (x, y, z, channel with several
        channels). Not for uint64 (the
        client hands over its internal compressed form) nor volumes with a nonzero
        ``voxel_offset`` (misplaced by neuroglancer 2.41): use :meth:`values_at`."""
        assert self.viewer is not None
        store = self.viewer.volume(layer).result(timeout=timeout)
        return np.asarray(store.read().result(timeout=timeout))

    # -- what the client did ------------------------------------------------------------
    def requests(self) -> list[Request]:
        """Every request since the test (or :meth:`reset`) began, paths (decoded,
        without the query) relative to the served root."""
        return [
            Request(m, unquote(p.split("?", 1)[0]).lstrip("/"), r)
            for m, p, r in list(self.server.requests)
        ]

    def chunk_requests(self, volume: str | os.PathLike[str]) -> list[Request]:
        """GET requests under ``volume``'s directory other than ``info`` files, paths
        relative to that directory (``"8_8_8/0-64_0-64_0-16"``, ``"8_8_8/0.shard"``)."""
        prefix = Path(volume).resolve().relative_to(self.data_root.resolve()).as_posix()
        out: list[Request] = []
        for r in self.requests():
            if r.method != "GET" or not r.path.startswith(prefix + "/"):
                continue
            rel = r.path[len(prefix) + 1 :]
            if rel != "info" and not rel.endswith("/info"):
                out.append(Request(r.method, rel, r.range))
        return out

    def layer_error(self, layer: str, timeout: float = 5.0) -> str | None:
        """The load error of ``layer``'s data sources (bad ``info``, missing volume,
        unsupported metadata), or None once all loaded fine. Waits up to ``timeout`` s
        for the sources to finish loading. Failed chunks are not load errors: those are
        reported by :meth:`screenshot` (:class:`ChunksFailed`)."""
        state: dict[str, Any] = {}

        def settled() -> bool:
            state.clear()
            state.update(self.driver.execute_script(_LAYER_STATE_JS, layer))
            if state.get("missing"):
                raise ClientError(f"no layer {layer!r} in the viewer")
            sources = state.get("sources")
            return bool(sources) and not any(s.get("loading") for s in sources)

        self.wait_for(settled, timeout, f"layer {layer!r} to load")
        errors = [s["error"] for s in state["sources"] if "error" in s]
        return "; ".join(errors) if errors else None

    def segment_properties(
        self, layer: str, ids: Sequence[int] = (), timeout: float = 5.0
    ) -> dict[str, Any]:
        """The inline segment properties of segmentation ``layer`` as the client parsed
        them, waiting up to ``timeout`` s for the client to have them: ``{"ids":
        [int], "properties": [{"id", "type", "description", "values", ("tags" |
        "data_type")}], "labels": {id: str | None}}``. Tags come as lists of tag names,
        numbers as floats (``data_type`` is the client's DataType enum number);
        ``labels`` is what ``getSegmentLabel`` gives for each of ``ids`` (the label and
        then ``#tag``s, as the segment list shows them)."""
        found: dict[str, Any] = {}

        def ready() -> bool:
            out = self.driver.execute_script(
                _SEGMENT_PROPERTIES_JS, layer, [str(int(i)) for i in ids]
            )
            if "error" in out:
                raise ClientError(out["error"])
            found.update(out)
            return out["map"] is not None

        self.wait_for(ready, timeout, f"the segment properties of layer {layer!r}")
        got = found["map"]
        for prop in got["properties"]:
            if prop["type"] == "number":  # every allowed type fits a double exactly
                prop["values"] = [float(v) for v in prop["values"]]
        return {
            "ids": [int(i) for i in got["ids"]],
            "properties": got["properties"],
            "labels": {int(k): v for k, v in got["labels"].items()},
        }

    def console_errors(self) -> list[str]:
        """Browser console messages (all levels, uncaught exceptions too) since the
        test (or :meth:`reset`) began."""
        self._fetch_console()
        with self._console_lock:
            return list(self._console)

    def mesh_fragments(self, layer: str = "seg") -> list[MeshFragment]:
        """The multi-resolution mesh fragments segmentation ``layer`` has decoded (and
        still holds): what reached the renderer, where the request log only says what
        was fetched."""
        out = self.driver.execute_script(_MESH_FRAGMENTS_JS, layer)
        if "error" in out:
            raise ClientError(out["error"])
        found = []
        for f in out["fragments"]:
            segment, rest = f["key"].split("/")
            if ":" not in rest or f["type"] not in ("Uint16Array", "Uint32Array"):
                continue  # a legacy mesh's fragment (float32 nm positions)
            lod, row = rest.split(":")
            raw = np.array(f["positions"], np.uint32)
            if f["type"] == "Uint32Array":  # uint10 format: x | y << 10 | z << 20 per vertex
                raw = np.stack([(raw >> s) & 1023 for s in (0, 10, 20)], axis=1)
            if f["strips"]:
                raise ClientError("the client stored triangle strips: counts would differ")
            found.append(
                MeshFragment(
                    int(segment), int(lod), int(row), raw.reshape(-1, 3), f["indices"] // 3
                )
            )
        return found

    def client_errors(self) -> list[str]:
        """The console's errors and warnings since the test (or :meth:`reset`) began,
        but for two of the Python viewer's own server: the browser's ``/favicon.ico``
        (404) and the state sync (the client posts its state to ``/state/<token>``; the
        server answers 412 when Python changed the state meanwhile, e.g. a new
        :meth:`show`, and the client retries)."""
        import neuroglancer.server

        viewer = neuroglancer.server.get_server_url().rstrip("/")
        benign = (f"{viewer}/favicon.ico - ", f"{viewer}/state/")
        return [
            m
            for m in self.console_errors()
            if m.startswith(("SEVERE", "WARNING"))
            and not (
                "Failed to load resource" in m
                and any(m.split(": ", 1)[-1].startswith(b) for b in benign)
            )
        ]

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """Poll ``predicate`` until it returns something true; :class:`ClientError`
        after ``timeout`` s."""
        deadline = time.monotonic() + max(timeout, 0)
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise ClientError(
                    f"timed out after {timeout:.3g} s waiting for {what}",
                    self.save_artifacts("wait-timeout"),
                )
            time.sleep(0.02)

    # -- meshes ---------------------------------------------------------------------------
    def show_meshes(
        self,
        source: str,
        segments: Sequence[int],
        *,
        mesh_dir: str | os.PathLike[str],
        centre: Sequence[float],
        pixel_size: float,
        size: tuple[int, int] = (256, 256),
        timeout: float = SCREENSHOT_TIMEOUT,
        layer: str = "seg",
        segment_colors: Mapping[int, str] | None = None,
        mesh_render_scale: float | None = None,
    ) -> MeshRender:
        """Render the meshes of ``segments`` of the segmentation at ``source`` (whose
        ``info`` names a ``mesh`` directory, ``mesh_dir`` on disk) in a 3-D view.

        The view is orthographic, looks along the z axis with x to the right and y down,
        is centred on ``centre`` (x, y, z in nm) and shows ``pixel_size`` nm per pixel,
        so :meth:`MeshRender.project` maps a world point to its pixel. Only the meshes
        are drawn (no slices, no bounding box), on a black background. Returns the
        image, the pixels the meshes cover and the mesh requests the client made (none
        for meshes it has already loaded from the same URL).

        ``segment_colors`` (id -> ``"#rrggbb"``) tells segments apart on screen (shading
        scales the colour). ``mesh_render_scale`` is the layer's LOD detail cutoff, in
        ``[1/16, 65535]`` (:data:`MESH_RENDER_SCALE_RANGE`; the client silently replaces
        a value outside by its default, 1): starting from the coarsest LOD, the client
        requests and draws a node's children while cutoff x (a pixel's size at the
        node, in stored model units) is below the node's ``lod_scale``, so 65535 gives
        the coarsest LOD only (src/mesh/multiscale.ts)."""
        import neuroglancer

        seg = neuroglancer.SegmentationLayer(source=source, segments=[int(s) for s in segments])
        seg.selected_alpha = 1.0
        if segment_colors is not None:
            seg.segment_colors = {int(k): v for k, v in segment_colors.items()}
        if mesh_render_scale is not None:
            lo, hi = MESH_RENDER_SCALE_RANGE
            if not lo <= mesh_render_scale <= hi:
                raise ValueError(f"mesh_render_scale {mesh_render_scale} is not in [{lo}, {hi}]")
            seg.mesh_render_scale = float(mesh_render_scale)
        self.server.clear_log()
        self.show(
            {layer: seg},
            position=[float(c) for c in centre],
            size=size,
            resolution=(1.0, 1.0, 1.0),  # global units are nm, whatever the volume's
            layout=neuroglancer.DataPanelLayout("3d", orthographic_projection=True),
            projection_orientation=[0.0, 0.0, 0.0, 1.0],
            projection_scale=pixel_size * size[1],  # the view's height in global units
            show_slices=False,
            projection_background_color="#000000",
        )
        image = self.screenshot(timeout)
        foreground = (image[:, :, :3] > 8).any(axis=2)
        manifests: list[str] = []
        fragments: list[str] = []
        requests = self.chunk_requests(mesh_dir)
        for r in requests:
            (manifests if _is_manifest(r.path, segments) else fragments).append(r.path)
        return MeshRender(
            image=image,
            foreground=foreground,
            manifest_requests=manifests,
            fragment_requests=fragments,
            requests=requests,
            pixel_size=pixel_size,
            centre=(float(centre[0]), float(centre[1]), float(centre[2])),
        )

    # -- debugging ------------------------------------------------------------------------
    def save_artifacts(self, reason: str) -> Path:
        """Save what helps debug a failure and return the directory: ``page.png`` (the
        browser page as it is, even when the client never finished a screenshot),
        ``last-screenshot.png``, ``state.json``, ``console.txt``, ``requests.txt`` and
        ``statistics.json``."""
        out = self.artifacts_root / f"{self._check:03d}-{_safe(self._test)}-{_safe(reason)}"
        n = 1
        while out.exists():
            n += 1
            out = out.with_name(f"{out.name.rsplit('~', 1)[0]}~{n}")
        out.mkdir(parents=True)
        try:
            if self.driver is not None:
                (out / "page.png").write_bytes(self.driver.get_screenshot_as_png())
        except Exception as e:  # the browser may be the thing that broke
            (out / "page-error.txt").write_text(repr(e))
        if self._last_image is not None:
            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(self._last_image).save(buf, format="PNG")
            (out / "last-screenshot.png").write_bytes(buf.getvalue())
        if self.viewer is not None:
            (out / "state.json").write_text(json.dumps(self.viewer.state.to_json(), indent=1))
        (out / "console.txt").write_text("\n".join(self.console_errors()) + "\n")
        (out / "requests.txt").write_text(
            "\n".join(f"{r.method} {r.path} {r.range or ''}" for r in self.requests()) + "\n"
        )
        (out / "statistics.json").write_text(json.dumps(self._last_stats, indent=1))
        return out


def _quietly(f: Callable[[], Any]) -> None:
    try:
        f()
    except Exception:
        pass


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]


def _is_manifest(name: str, segments: Sequence[int]) -> bool:
    """Legacy manifests are ``{id}:{lod}``; multi-resolution ones ``{id}.index``."""
    head = name.split(":", 1)[0].split(".", 1)[0]
    tail = name[len(head) :]
    return head in {str(int(s)) for s in segments} and (
        tail == ".index" or (tail.startswith(":") and tail[1:].isdigit())
    )


# -- pytest fixtures and hooks (registered from tests/conftest.py) ------------------------


_SESSION: dict[str, Any] = {}  # timings for the terminal summary


def _check_browser_available() -> None:
    chromium, chromedriver = browser_binaries()
    missing = [n for n, p in (("chromium", chromium), ("chromedriver", chromedriver)) if not p]
    if not missing:
        return
    reason = (
        f"Neuroglancer client tests need {' and '.join(missing)} on PATH "
        "(Debian: apt-get install chromium chromium-driver)"
    )
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason}; CI is set, so a missing browser is an error", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def neuroglancer_client(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[NeuroglancerClient]:
    """The session's browser + viewer + data server (started on first use)."""
    _check_browser_available()
    t0 = time.perf_counter()
    client = NeuroglancerClient.start(
        tmp_path_factory.mktemp("neuroglancer-data"),
        tmp_path_factory.mktemp("neuroglancer-artifacts"),
    )
    _SESSION.update(start=client.timings["start"], tests=0)
    _SESSION["artifacts"] = str(client.artifacts_root)
    yield client
    t1 = time.perf_counter()
    leftovers = client.close()
    _SESSION.update(close=time.perf_counter() - t1, session=time.perf_counter() - t0)
    _SESSION["leftovers"] = leftovers
    if leftovers:
        pytest.fail(f"browser processes outlived driver.quit() (killed): {leftovers}")


@pytest.fixture
def ng(
    neuroglancer_client: NeuroglancerClient, request: pytest.FixtureRequest
) -> Iterator[NeuroglancerClient]:
    """The session's :class:`NeuroglancerClient`, with an empty state and empty logs."""
    neuroglancer_client.begin(request.node.name)
    _SESSION["tests"] += 1
    yield neuroglancer_client
    neuroglancer_client.reset()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On a failed test that used ``ng``, save the debugging files and name them in the
    report."""
    report: pytest.TestReport = yield
    client = getattr(item, "funcargs", {}).get("ng")
    if report.when == "call" and report.failed and isinstance(client, NeuroglancerClient):
        err = call.excinfo.value if call.excinfo is not None else None
        path = err.artifacts if isinstance(err, ClientError) else None
        if path is None:
            try:
                path = client.save_artifacts("failed")
            except Exception as e:  # never hide the test's own failure
                path = Path(f"(could not save debugging files: {e!r})")
        report.sections.append(("neuroglancer client", f"debugging files: {path}"))
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line on the browser session, when there was one."""
    if "session" not in _SESSION:
        return
    t = _SESSION
    terminalreporter.write_line(
        f"neuroglancer client: {t['tests']} tests, session {t['session']:.1f} s "
        f"(browser start {t['start']:.1f} s, close {t['close']:.1f} s), leftover browser "
        f"processes: {t['leftovers'] or 'none'}; debugging files under {t['artifacts']}"
    )

"""napari in a real window: napari-precomputed against napari-ome-zarr on the same data.

    .venv/bin/python benchmarks/bench_napari.py              # full size, 5 runs, ~11 min on 2 cores
    .venv/bin/python benchmarks/bench_napari.py --smoke      # tiny data, 1 run, one process: < 60 s
    .venv/bin/python benchmarks/bench_napari.py --repeats 1 --only ours/remote --stall-stacks --requests
    .venv/bin/python benchmarks/bench_napari.py --baseline   # also napari alone (in-memory levels)
    pip install "napari-precomputed[bench]"                  # napari, napari-ome-zarr, zarr

See docs/performance.md ("napari") for the measured table and what the numbers mean.

Data (written once into ``--workdir``, reused while its configuration is unchanged): an
EM-like uint8 image (unsharded jpeg, default 1024x1024x24, 8x8x40 nm, 64x64x8 chunks) and
its segmentation (uint64 compressed_segmentation, sharded), 4 scales each (2x2x1 steps),
written by our driver; and the same voxels (read back from those volumes, so jpeg's loss is
shared) as one OME-Zarr (NGFF 0.5, zarr v3, sharded, zstd): the image at ``em.ome.zarr/0..3``,
the segmentation as its ``labels/seg`` label image, written with zarr itself.

Every run is a fresh napari process (``--child``) with a shown viewer of a fixed size,
under Xvfb (started here, ``Xvfb -displayfd``, when ``DISPLAY`` is unset; never with
``QT_QPA_PLATFORM=offscreen``, whose GL gives black screenshots), with its own napari
settings file (``NAPARI_CONFIG``) and ``NAPARI_ASYNC`` on or off. It opens both layers —
ours: ``viewer.open([image, segmentation], plugin="napari-precomputed")``; theirs:
``viewer.open(em.ome.zarr, plugin="napari-ome-zarr")``, whose label layer is made visible
(it opens hidden) in the same call — then steps z within the chunk, steps z into another
chunk, zooms in 2x (one pyramid level finer), pans by half a canvas, and finally closes
both layers and opens the same data again under another path ("first view, warm": napari's
and the reader's modules are imported by then, so this is what the reader itself costs; in a
fresh process napari's own first Image and Labels layers import pandas, scipy.ndimage and
skimage, ~2 s here, see ``--baseline``). Every run reads the data under new paths (symlinks
``vN`` -> ``data``), so no cache keyed by path or URL serves one run from another. Local runs read
files; remote runs read the same directories over HTTP from ``tests/servers.py``'s
RangeServer (30 ms per request) in a child process (``server_process.py``).

Measured per action, on the UI thread's clock (``time.monotonic``):

* **time**: from the action to the first canvas draw after the last layer data update,
  once the view is quiet: no slicing task pending, every layer ``loaded``, a draw after
  the last ``set_data``, and nothing new for ``quiet`` seconds (0.25 s; not counted).
  Each action must update both layers, and each layer's slice must hold non-zero data.
* **stall**: the longest gap between ticks of a 10 ms ``QTimer`` (precise) on the UI
  thread, from the action to the end of the quiet wait: how long the window froze.
* **requests / rounds** (remote): from the server's timed log, the requests that started
  during the action, and the sequential rounds they took (the longest chain of requests
  each starting after the previous one's answer was sent).
* **network floor** (remote first view): the round trips the view strictly needs x
  latency. Per layer, the dependent stages it read: for Precomputed ``info`` (1), shard
  index, minishard index, chunk data (1 each, when present); for OME-Zarr each depth of
  ``zarr.json`` documents on the layer's path (the image: group, arrays = 2; the labels:
  ``labels``, ``labels/seg``, arrays = 3), shard index, chunk data. Successful requests
  only (404 probes are not needed); repeated or parallel reads of one stage count once.
  The layers load independently, so the view's floor is the larger layer's. Decoding is
  not included (the local first view bounds it).
* **info reads per open**: GET ``.../info`` during the first view per volume.

Medians of ``--repeats`` runs; brackets give the min-max over runs. ``--stall-stacks``
samples the UI thread's Python stack every 2 ms and prints where each stall above
100 ms was spent; ``--requests`` prints each remote first view's requests in order;
``--profile DIR`` writes a cProfile (UI thread) per action; ``--baseline`` adds napari
alone (the same levels as memory-mapped numpy arrays, no reader) as a reference.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

READERS = ("ours", "ome-zarr")
LOCATIONS = ("local", "remote")
MODES = ("async", "sync")
ACTIONS = ("first view", "z-step, same chunk", "z-step, new chunk", "zoom across a level", "pan",
           "first view, warm")  # fmt: skip
PLUGIN = {"ours": "napari-precomputed", "ome-zarr": "napari-ome-zarr"}


# -- configuration ---------------------------------------------------------------------------


@dataclass
class Config:
    size: tuple[int, int, int] = (1024, 1024, 24)  # x, y, z
    chunk: tuple[int, int, int] = (64, 64, 8)
    scales: int = 4
    resolution: tuple[float, float, float] = (8.0, 8.0, 40.0)
    image_encoding: str = "jpeg"
    zarr_shard: tuple[int, int, int] = (256, 256, 24)  # x, y, z voxels per zarr shard
    latency: float = 0.03
    repeats: int = 5
    canvas: tuple[int, int] = (480, 480)  # fixed: the fit view needs level 1 (see the doc)
    window: tuple[int, int] = (1100, 800)
    quiet: float = 0.25
    timeout: float = 90.0
    single_process: bool = False  # every case in one napari process (smoke)

    def data_key(self) -> str:
        keep = (self.size, self.chunk, self.scales, self.resolution, self.image_encoding,
                self.zarr_shard, DATA_VERSION)  # fmt: skip
        return hashlib.sha1(repr(keep).encode()).hexdigest()[:12]


DATA_VERSION = 1  # bump when the generated data changes


def make_config(args: argparse.Namespace) -> Config:
    cfg = Config()
    if args.smoke:
        cfg.size, cfg.chunk, cfg.scales, cfg.zarr_shard = (512, 512, 16), (64, 64, 4), 3, (256, 256, 16)
        cfg.latency, cfg.repeats, cfg.quiet = 0.005, 1, 0.1
        cfg.canvas, cfg.window = (240, 240), (800, 500)
        cfg.single_process, cfg.timeout = True, 20.0
    if args.size:
        cfg.size = tuple(args.size)
    if args.chunk:
        cfg.chunk = tuple(args.chunk)
    if args.scales:
        cfg.scales = args.scales
    if args.image_encoding:
        cfg.image_encoding = args.image_encoding
    if args.latency is not None:
        cfg.latency = args.latency
    if args.canvas:
        cfg.canvas = tuple(args.canvas)
    if args.repeats:
        cfg.repeats = args.repeats
    if args.single_process:
        cfg.single_process = True
    cfg.zarr_shard = tuple(  # a whole number of chunks, at most the (rounded-up) size
        min(max(c, s // c * c), -(-n // c) * c)
        for s, c, n in zip(cfg.zarr_shard, cfg.chunk, cfg.size, strict=True)
    )
    return cfg


# -- display ----------------------------------------------------------------------------------


@contextlib.contextmanager
def x_display() -> Iterator[str]:
    """``$DISPLAY``, or a private Xvfb for the duration (its number chosen by Xvfb)."""
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise SystemExit("bench_napari: no DISPLAY and no Xvfb (apt-get install xvfb)")
    r, w = os.pipe()
    proc = subprocess.Popen(
        [xvfb, "-displayfd", str(w), "-screen", "0", "1920x1200x24", "-nolisten", "tcp",
         "-noreset"],
        pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(w)
    try:
        with os.fdopen(r) as f:
            number = f.readline().strip()
        if not number:
            raise SystemExit("bench_napari: Xvfb did not start")
        yield f":{number}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


# -- data ---------------------------------------------------------------------------------------


def segmentation_zyx(size: tuple[int, int, int], cell: int = 40) -> Any:
    """Cells ~``cell`` voxels across with wavy boundaries that drift with z, label values
    spread over 64 bits as in connectomics segmentations; z, y, x uint64."""
    import numpy as np

    nx, ny, nz = size
    x = np.arange(nx, dtype=np.int64)[None, :]
    y = np.arange(ny, dtype=np.int64)[:, None]
    out = np.empty((nz, ny, nx), np.uint64)
    for z in range(nz):
        wx = x + (6 * np.sin((y + 9 * z) / 13.0)).astype(np.int64) + 2 * z
        wy = y + (5 * np.cos((x + 7 * z) / 11.0)).astype(np.int64) + z
        lab = wx // cell + 1000 * (wy // (cell + 7)) + 1_000_000 * ((z + (x // 29) % 3) // 12) + 1
        out[z] = lab.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15 >> 4)
    return out


def build_data(cfg: Config, root: Path) -> dict[str, Any]:
    """Write (or reuse) both formats under ``root``; returns the layout (paths, facts)."""
    root.mkdir(parents=True, exist_ok=True)
    done = root / "data.json"
    key = cfg.data_key()
    if done.exists():
        layout = json.loads(done.read_text())
        if layout.get("key") == key:
            return layout
    for sub in ("precomputed", "em.ome.zarr"):
        shutil.rmtree(root / sub, ignore_errors=True)
    t0 = time.monotonic()
    import numpy as np

    import precomputed
    from precomputed import create
    from precomputed.samples import _make_image

    labels = segmentation_zyx(cfg.size)
    image = _make_image(labels[None])[0]  # EM-like grey levels from the cells (zyx)
    res = list(cfg.resolution)
    nx, ny, nz = cfg.size
    img_scale: dict[str, Any] = {"size": [nx, ny, nz], "resolution": res, "voxel_offset": [0, 0, 0],
                                 "chunk_size": list(cfg.chunk), "encoding": cfg.image_encoding}  # fmt: skip
    if cfg.image_encoding == "jpeg":
        img_scale["jpeg_quality"] = 90
    create.create_volume(
        str(root / "precomputed" / "em"),
        {"type": "image", "data_type": "uint8", "num_channels": 1},
        img_scale, data=image, axes="zyx", levels=cfg.scales - 1, factor=(2, 2, 1),
    )  # fmt: skip
    # Rectangular shards (identity hash, every Morton bit used): 2x2x2-chunk preshift
    # blocks, 8 minishards, shards of 64 chunks (fewer bits on small grids).
    grid_bits = sum((-(-n // c) - 1).bit_length() for n, c in zip(cfg.size, cfg.chunk, strict=True))
    preshift = min(3, grid_bits)
    minishard = min(3, grid_bits - preshift)
    shard_bits = grid_bits - preshift - minishard
    sharding = {"@type": "neuroglancer_uint64_sharded_v1", "hash": "identity",
                "preshift_bits": preshift, "minishard_bits": minishard,
                "shard_bits": shard_bits, "minishard_index_encoding": "gzip",
                "data_encoding": "gzip"}  # fmt: skip
    create.create_volume(
        str(root / "precomputed" / "seg"),
        {"type": "segmentation", "data_type": "uint64", "num_channels": 1},
        {"size": [nx, ny, nz], "resolution": res, "voxel_offset": [0, 0, 0],
         "chunk_size": list(cfg.chunk), "encoding": "compressed_segmentation",
         "compressed_segmentation_block_size": [8, 8, 8], "sharding": sharding},
        data=labels, axes="zyx", levels=cfg.scales - 1, factor=(2, 2, 1),
    )  # fmt: skip
    del labels, image
    t1 = time.monotonic()

    # The same voxels as OME-Zarr (NGFF 0.5 on zarr v3), read back from our volumes.
    import zarr

    zroot = zarr.open_group(str(root / "em.ome.zarr"), mode="w", zarr_format=3)
    labels_group = zroot.create_group("labels")
    seg_group = labels_group.create_group("seg")
    chunks = tuple(reversed(cfg.chunk))
    shards = tuple(reversed(cfg.zarr_shard))
    datasets = []
    for name, group in (("em", zroot), ("seg", seg_group)):
        datasets = []
        for i in range(cfg.scales):
            vol = precomputed.open(str(root / "precomputed" / name), scale_index=i)
            data = np.ascontiguousarray(vol.zyx())
            arr = group.create_array(
                str(i), shape=data.shape, dtype=data.dtype, chunks=chunks,
                shards=tuple(min(s, -(-n // c) * c) for s, n, c in zip(shards, data.shape, chunks, strict=True)),
                dimension_names=("z", "y", "x"),
            )  # fmt: skip
            arr[...] = data
            f = [float(r) for r in vol.scale.resolution]
            datasets.append({"path": str(i), "coordinateTransformations": [
                {"type": "scale", "scale": [f[2], f[1], f[0]]}]})  # fmt: skip
        multiscale = {"version": "0.5", "multiscales": [{
            "name": name, "axes": [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"],
            "datasets": datasets}]}  # fmt: skip
        if name == "seg":
            multiscale["image-label"] = {"source": {"image": "../../"}}
        group.attrs["ome"] = multiscale
    labels_group.attrs["ome"] = {"version": "0.5", "labels": ["seg"]}
    t2 = time.monotonic()

    layout = {
        "key": key,
        "ours": ["precomputed/em", "precomputed/seg"],
        "ome-zarr": "em.ome.zarr",
        "minishard_index_ranges": minishard_index_ranges(root / "precomputed" / "seg"),
        "write_s": {"precomputed": round(t1 - t0, 1), "ome-zarr": round(t2 - t1, 1)},
        "bytes": {"precomputed": du(root / "precomputed"), "ome-zarr": du(root / "em.ome.zarr")},
    }
    done.write_text(json.dumps(layout))
    return layout


def baseline_arrays(root: Path, layout: dict[str, Any], scales: int) -> dict[str, Any]:
    """``--baseline``: every level of both volumes as .npy files (the child memory-maps
    them with numpy alone, so napari's own cost is measured without any reader)."""
    import numpy as np

    import precomputed

    out: dict[str, Any] = {}
    for name, rel in zip(("em", "seg"), layout["ours"], strict=True):
        files = []
        for i in range(scales):
            f = root / "npy" / f"{name}-{i}.npy"
            if not f.exists():
                f.parent.mkdir(parents=True, exist_ok=True)
                np.save(f, np.ascontiguousarray(precomputed.open(str(root / rel), scale_index=i).zyx()))
            files.append(str(f))
        out[name] = files
    info = json.loads((root / layout["ours"][0] / "info").read_text())
    out["scale"] = list(reversed(info["scales"][0]["resolution"]))
    return out


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def minishard_index_ranges(volume: Path) -> dict[str, list[tuple[int, int]]]:
    """URL path of each shard file -> byte ranges of its minishard indices (to tell a
    minishard-index request from a chunk-data request in the server log)."""
    import numpy as np

    info = json.loads((volume / "info").read_text())
    out: dict[str, list[tuple[int, int]]] = {}
    for scale in info["scales"]:
        sharding = scale.get("sharding")
        if not sharding:
            continue
        n = 1 << sharding["minishard_bits"]
        for shard in (volume / scale["key"]).glob("*.shard"):
            with open(shard, "rb") as f:
                index = np.frombuffer(f.read(16 * n), "<u8").reshape(n, 2)
            ranges = [(16 * n + int(a), 16 * n + int(b)) for a, b in index if b > a]
            out["/" + str(shard.relative_to(volume.parent.parent))] = ranges
    return out


# -- the child: one napari process --------------------------------------------------------------


class StackSampler:
    """Samples the UI thread's Python stack every ``interval`` s (``--stall-stacks``)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.samples: list[tuple[float, tuple[str, ...]]] = []
        self._main = threading.main_thread().ident
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="stack-sampler")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            frame = sys._current_frames().get(self._main)  # type: ignore[arg-type]
            stack: list[str] = []
            while frame is not None and len(stack) < 80:
                code = frame.f_code
                stack.append(f"{_short(code.co_filename)}:{code.co_name}")
                frame = frame.f_back
            self.samples.append((time.monotonic(), tuple(stack)))

    def summary(self, t0: float, t1: float, top: int = 8) -> list[tuple[str, float]]:
        """Where the UI thread was during [t0, t1]: each sample attributed by
        :func:`_attribute`, as shares of the samples."""
        window = [s for t, s in self.samples if t0 <= t <= t1]
        if not window:
            return []
        counts = Counter(_attribute(stack) for stack in window)
        return [(f, n / len(window)) for f, n in counts.most_common(top)]


_OURS = ("napari_precomputed/", "precomputed/")
_LIBS = ("napari/", "vispy/", "napari_ome_zarr/", "zarr/", "dask/", "fsspec/", "aiohttp/", "numpy/")
_PLUMBING = re.compile(r"^(napari/utils/events/|vispy/util/event|napari/_qt/qt_main_window.py:event"
                       r"|vispy/app/backends/_qt.py:(event|paintGL)|superqt/|psygnal/|<frozen)")  # fmt: skip


def _attribute(stack: tuple[str, ...]) -> str:
    """One label per sampled stack (innermost frame first): an import in progress is
    ``import <module> (from <the code importing it>)``; otherwise the innermost frame of
    our packages, else the innermost frame of napari, vispy or another library that is
    not event plumbing, else the innermost frame."""
    outer = max((i for i, f in enumerate(stack) if f.endswith(":_find_and_load")), default=None)
    if outer is not None:
        modules = [f for f in stack[:outer] if f.endswith(":<module>")]
        module = modules[-1].rsplit(":", 1)[0] if modules else "?"
        j = outer + 1
        while j < len(stack) and ("importlib" in stack[j] or stack[j].startswith("<frozen")):
            j += 1
        return f"import {module} (from {stack[j] if j < len(stack) else '?'})"
    for f in stack:
        if f.startswith(_OURS):
            return f
    for f in stack:
        if f.startswith(_LIBS) and not _PLUMBING.match(f):
            return f
    return stack[0] if stack else "?"


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        i = filename.rfind(marker)
        if i >= 0:
            return filename[i + len(marker) :]
    return filename


class Recorder:
    """Ticks, draws and layer events of one viewer, and the actions' completion."""

    def __init__(self, viewer: Any, quiet: float, timeout: float) -> None:
        from qtpy.QtCore import Qt, QTimer

        self.viewer = viewer
        self.quiet = quiet
        self.timeout = timeout
        self.ticks: list[float] = []
        self.draws: list[float] = []
        self.data: list[tuple[float, str]] = []  # (time, layer name) per data update on screen
        self.last_event = time.monotonic()
        self.error: BaseException | None = None
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.timer.start()
        canvas = viewer.window._qt_viewer.canvas._scene_canvas
        canvas.events.draw.connect(self._draw, position="last")
        viewer.layers.events.inserted.connect(self._inserted)
        _hook_vispy_data(self._data)

    def _tick(self) -> None:
        self.ticks.append(time.monotonic())

    def _draw(self, event: Any = None) -> None:
        self.draws.append(time.monotonic())
        self.last_event = self.draws[-1]

    def _inserted(self, event: Any) -> None:
        event.value.events.loaded.connect(lambda e: self._touch())

    def _data(self, name: str) -> None:
        self.data.append((time.monotonic(), name))
        self.last_event = self.data[-1][0]

    def _touch(self) -> None:
        self.last_event = time.monotonic()

    def idle(self) -> bool:
        slicer = self.viewer._layer_slicer
        return not slicer._layers_to_task and all(layer.loaded for layer in self.viewer.layers)

    def wait(self, cond: Callable[[], bool], timeout: float) -> bool:
        from qtpy.QtCore import QEventLoop, QTimer

        loop = QEventLoop()
        deadline = time.monotonic() + timeout
        state = {"ok": False}

        def check() -> None:
            if self.error is not None or time.monotonic() > deadline:
                loop.quit()
            elif cond():
                state["ok"] = True
                loop.quit()

        poll = QTimer()
        poll.setInterval(5)
        poll.timeout.connect(check)
        poll.start()
        loop.exec()
        poll.stop()
        return state["ok"]

    def settle(self, quiet: float | None = None) -> None:
        q = self.quiet if quiet is None else quiet
        self.wait(lambda: self.idle() and time.monotonic() - self.last_event > q, self.timeout)

    def run(self, name: str, action: Callable[[], None], sampler: StackSampler | None,
            profile_dir: Path | None, tag: str) -> dict[str, Any]:  # fmt: skip
        """Run ``action`` from the event loop and wait until its view is complete."""
        from qtpy.QtCore import QTimer

        self.settle()
        names = [layer.name for layer in self.viewer.layers]
        mark = len(self.data)
        out: dict[str, Any] = {"action": name}
        prof = None
        if profile_dir is not None:
            import cProfile

            prof = cProfile.Profile()

        def start() -> None:
            out["t0"] = time.monotonic()
            try:
                if prof is not None:
                    prof.enable()
                action()
            except BaseException as e:  # reported, and the wait stops
                self.error = e
            finally:
                out["action_s"] = time.monotonic() - out["t0"]
            self.last_event = time.monotonic()

        def complete() -> bool:
            if "t0" not in out or not self.idle():
                return False
            now = time.monotonic()
            if now - self.last_event <= self.quiet:
                return False
            layers = [layer.name for layer in self.viewer.layers]
            updated = {n for _, n in self.data[mark:]}
            if not layers or not set(layers) <= updated:
                return False
            last = max(t for t, _ in self.data[mark:])
            return any(d > last for d in self.draws)

        QTimer.singleShot(0, start)
        ok = self.wait(complete, self.timeout)
        t_end = time.monotonic()
        if prof is not None:
            prof.disable()
            assert profile_dir is not None
            profile_dir.mkdir(parents=True, exist_ok=True)
            prof.dump_stats(str(profile_dir / f"{tag}-{name.replace(' ', '_').replace(',', '')}.prof"))
        if self.error is not None:
            err, self.error = self.error, None
            out.update(ok=False, error=f"{type(err).__name__}: {err}")
            return out
        t0 = out.get("t0", t_end)
        events = self.data[mark:]
        if events:
            last = max(t for t, _ in events)
            t_done = min((d for d in self.draws if d > last), default=t_end)
        else:
            t_done = t_end
        gaps = [(b - a, a, b) for a, b in zip(self.ticks, self.ticks[1:], strict=False)
                if b > t0 and a < t_end]  # fmt: skip
        stall = max(gaps, default=(0.0, t0, t0))
        out.update(
            ok=ok,
            t_done=t_done,
            t_end=t_end,
            time=t_done - t0,
            stall=stall[0],
            stall_at=[stall[1] - t0, stall[2] - t0],
            updates={n: sum(1 for _, m in events if m == n) for n in names or
                     [layer.name for layer in self.viewer.layers]},  # fmt: skip
            levels={layer.name: int(getattr(layer, "data_level", 0)) for layer in self.viewer.layers},
            data_nonzero=all(_slice_nonzero(layer) for layer in self.viewer.layers),
        )
        if not ok:
            out["error"] = "timed out waiting for a complete view"
        if sampler is not None:
            out["stalls"] = [
                {"s": round(b - a, 3), "at": round(a - t0, 3), "where": sampler.summary(a, b)}
                for d, a, b in sorted(gaps, reverse=True)[:3] if d > 0.1
            ]  # fmt: skip
        return out


def _hook_vispy_data(record: Callable[[str], None]) -> None:
    """Call ``record(layer name)`` whenever a layer's vispy node receives new slice data.

    That is the moment data reaches the GPU side, in sync and async mode alike (in sync
    mode a new layer's first slice emits no ``set_data`` event: its vispy layer reads the
    slice when it is created). Image and Labels vispy layers only, which is all we add.
    """
    from napari._vispy.layers.labels import VispyLabelsLayer
    from napari._vispy.layers.scalar_field import VispyScalarFieldBaseLayer

    for cls in (VispyScalarFieldBaseLayer, VispyLabelsLayer):
        original = cls.__dict__["_on_data_change"]
        if getattr(original, "_bench_hook", False):
            continue

        cls._on_data_change = _recording(original, record)  # type: ignore[method-assign]


def _recording(original: Any, record: Callable[[str], None]) -> Any:
    def hooked(self: Any) -> Any:  # no event argument: napari checks the signature
        out = original(self)
        record(self.layer.name)
        return out

    hooked._bench_hook = True  # type: ignore[attr-defined]
    return hooked


def _slice_nonzero(layer: Any) -> bool:
    import numpy as np

    view = getattr(getattr(getattr(layer, "_slice", None), "image", None), "view", None)
    if view is None:
        return False
    return bool(np.any(np.asarray(view)))


def screenshot_check(viewer: Any, save: Path | None) -> dict[str, Any]:
    """Whether the canvas shows an image with labels on it (not the background)."""
    import numpy as np

    shot = viewer.screenshot(canvas_only=True, flash=False)
    if save is not None:
        from PIL import Image

        Image.fromarray(shot).save(save)
    rgb = shot[..., :3].astype(np.int16)
    covered = float(np.any(np.abs(rgb - rgb[0, 0]) > 8, axis=-1).mean())
    colourful = float(((rgb.max(axis=-1) - rgb.min(axis=-1)) > 40).mean())
    return {
        "covered": round(covered, 3),
        "colourful": round(colourful, 3),
        "std": round(float(rgb.std()), 1),
        "ok": covered > 0.2 and colourful > 0.02 and float(rgb.std()) > 10,
    }


def child_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    t_start = time.monotonic()
    import napari
    from napari.settings import get_settings

    viewer = napari.Viewer(show=True)
    # A fixed canvas: docks that widen with layer names must not change what is loaded.
    viewer.window._qt_viewer.canvas._scene_canvas.native.setFixedSize(*spec["canvas"])
    viewer.window._qt_window.resize(*spec["window"])
    t_viewer = time.monotonic()
    rec = Recorder(viewer, spec["quiet"], spec["timeout"])
    rec.settle(0.5)
    canvas = viewer.window._qt_viewer.canvas._scene_canvas
    sampler = StackSampler() if spec.get("stall_stacks") else None
    if sampler is not None:
        sampler.start()
    profile_dir = Path(spec["profile"]) if spec.get("profile") else None
    for n, case in enumerate(spec["cases"]):
        settings = get_settings()
        if settings.experimental.async_ != (case["mode"] == "async"):
            settings.experimental.async_ = case["mode"] == "async"
        tag = f"{case['reader']}-{case['location']}-{case['mode']}"
        result: dict[str, Any] = {"case": case, "actions": [], "canvas": list(canvas.size),
                                  "napari_start_s": t_viewer - t_start,
                                  "async": bool(settings.experimental.async_)}  # fmt: skip
        try:
            run_case(viewer, rec, case, result, sampler, profile_dir, tag)
            shot = Path(spec["screenshots"]) / f"{tag}.png" if spec.get("screenshots") else None
            result["screenshot"] = screenshot_check(viewer, shot)
        except Exception as e:  # reported to the parent, which fails the run
            import traceback

            result["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
        print("RESULT " + json.dumps(result), flush=True)
        if n + 1 < len(spec["cases"]):
            viewer.layers.clear()
            rec.settle()
    if sampler is not None:
        sampler.stop()
    viewer.close()
    return 0


def run_case(viewer: Any, rec: Recorder, case: dict[str, Any], result: dict[str, Any],
             sampler: StackSampler | None, profile_dir: Path | None, tag: str) -> None:  # fmt: skip
    import numpy as np

    reader = case["reader"]
    source = case["source"]

    def do(name: str, action: Callable[[], None]) -> dict[str, Any]:
        r = rec.run(name, action, sampler, profile_dir, tag)
        result["actions"].append(r)
        if r.get("error"):
            raise RuntimeError(f"{name}: {r['error']}")
        return r

    def open_layers(source: Any) -> None:
        if reader == "memory":  # napari alone: the same levels as memory-mapped numpy
            em = [np.load(f, mmap_mode="r") for f in source["em"]]
            seg = [np.load(f, mmap_mode="r") for f in source["seg"]]
            viewer.add_image(em, multiscale=True, scale=source["scale"], name="em",
                             contrast_limits=(0, 255))  # fmt: skip
            viewer.add_labels(seg, multiscale=True, scale=source["scale"], name="seg")
            return
        viewer.open(source, plugin=PLUGIN[reader])
        for layer in viewer.layers:  # napari-ome-zarr opens label images hidden
            if not layer.visible:
                layer.visible = True

    do("first view", lambda: open_layers(source))
    result["layers"] = [
        {"name": layer.name, "type": type(layer).__name__, "levels": len(layer.data) if layer.multiscale else 1,
         "shape": list(layer.data[0].shape if layer.multiscale else layer.data.shape),
         "dtype": str(layer.dtype)}
        for layer in viewer.layers
    ]  # fmt: skip
    nz = int(viewer.dims.nsteps[0])
    z0 = int(viewer.dims.current_step[0])
    cz = int(case["chunk_z"])
    same = z0 + 1 if (z0 + 1) // cz == z0 // cz and z0 + 1 < nz else z0 - 1
    new = z0 + cz if z0 + cz < nz else z0 - cz
    result["z"] = {"start": z0, "same chunk": same, "new chunk": new, "planes": nz}
    do("z-step, same chunk", lambda: viewer.dims.set_current_step(0, same))
    do("z-step, new chunk", lambda: viewer.dims.set_current_step(0, new))
    levels = [getattr(layer, "data_level", 0) for layer in viewer.layers]
    if min(levels) == 0:
        raise RuntimeError(f"the whole image fits the canvas {result['canvas']} at level 0: "
                           "no zoom across a level (use a larger --size or a smaller window)")  # fmt: skip
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    factor = 2.0

    def zoom() -> None:
        camera.zoom = camera.zoom * factor

    r = do("zoom across a level", zoom)
    r["level_changed"] = [a != b for a, b in zip(levels, r["levels"].values(), strict=False)]

    def pan() -> None:
        width = viewer.window._qt_viewer.canvas._scene_canvas.size[0]
        center = list(camera.center)
        center[-1] += width / camera.zoom / 2  # half a canvas to the right
        camera.center = tuple(center)

    do("pan", pan)
    # The same data again under another path, in this now warm process (napari's and the
    # reader's modules imported, connections open): what a second volume costs.
    viewer.layers.clear()
    rec.settle()
    do("first view, warm", lambda: open_layers(case["source_warm"]))


# -- the server's request log ---------------------------------------------------------------------

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
_META = ("zarr.json", ".zattrs", ".zgroup", ".zarray", ".zmetadata")
_STAGE_ORDER = {"shard index": 100, "minishard index": 101, "data": 102}


def classify(path: str, rng: str | None, layout: dict[str, Any]) -> tuple[str, Any] | None:
    """(layer, stage) of a request: stage ``("meta", depth)``, ``"shard index"``,
    ``"minishard index"`` or ``"data"`` (see the module doc, "network floor")."""
    from urllib.parse import unquote

    parts = unquote(path.split("?", 1)[0]).strip("/").split("/")[1:]  # less the run's alias
    path = "/" + "/".join(parts)
    if parts[0] == "precomputed" and len(parts) >= 3:
        layer = parts[1]
        if parts[-1] == "info":
            return layer, ("meta", 0)
        if path.endswith(".shard"):
            m = _RANGE.match((rng or "").strip())
            start = int(m[1]) if m and m[1] else (0 if not rng else -1)
            if start == 0:
                return layer, "shard index"
            if m and m[1]:
                end = int(m[2]) + 1 if m[2] else 1 << 62
                for a, b in layout["minishard_index_ranges"].get(path, []):
                    if a < end and start < b:
                        return layer, "minishard index"
            return layer, "data"
        return layer, "data"
    if parts[0] == layout["ome-zarr"]:
        rest = parts[1:]
        layer = "image"
        if rest and rest[0] == "labels":
            layer, rest = "labels", rest[1:]
        if not rest or rest[-1] in _META:
            return layer, ("meta", max(0, len(rest) - 1))
        if (rng or "").strip().startswith("bytes=-"):
            return layer, "shard index"
        return layer, "data"
    return None


def _stage_key(stage: Any) -> int:
    return stage[1] if isinstance(stage, tuple) else _STAGE_ORDER[stage]


def rounds(requests: list[tuple[float, float]]) -> int:
    """The longest chain of requests each starting after the previous one was answered."""
    reqs = sorted(requests)
    depth: list[int] = []
    for i, (start, _) in enumerate(reqs):
        depth.append(1 + max((depth[j] for j in range(i) if reqs[j][1] <= start), default=0))
    return max(depth, default=0)


def analyse_requests(log: list[tuple[Any, ...]], t0: float, t1: float,
                     layout: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Requests that started in [t0, t1]: counts, rounds, stages per layer, info reads."""
    window = [r for r in log if t0 <= r[4] <= t1]
    stages: dict[str, set[Any]] = {}
    for method, path, rng, status, _, _ in window:
        if method != "GET" or status not in (200, 206):
            continue
        c = classify(path, rng, layout)
        if c is not None:
            stages.setdefault(c[0], set()).add(c[1])
    needed = {layer: len(s) for layer, s in stages.items()}
    timeline = []
    for _, path, rng, status, start, end in sorted(window, key=lambda r: r[4]):
        c = classify(path, rng, layout)
        timeline.append([round((start - t0) * 1000), round((end - start) * 1000), status,
                         c[0] if c else "?", str(c[1]) if c else "?", path, rng])  # fmt: skip
    return {
        "timeline": timeline,
        "requests": len(window),
        "failed": sum(1 for r in window if r[3] not in (200, 206)),
        "rounds": rounds([(r[4], r[5]) for r in window]),
        "needed_rounds": needed,
        "stages": {k: sorted((str(x) for x in v), key=str) for k, v in stages.items()},
        "info_reads": sum(1 for r in window if r[0] == "GET" and r[1].endswith("/info") and r[3] == 200),
        "zarr_json_reads": sum(1 for r in window if r[0] == "GET" and r[1].endswith("zarr.json")),
        "last_answer": max((r[5] for r in window), default=t0) - t0,
    }


# -- orchestration --------------------------------------------------------------------------------


@dataclass
class Case:
    reader: str
    location: str
    mode: str
    source: Any = None
    chunk_z: int = 8
    alias: str = ""  # this run's name for the data directory (a symlink, see fresh_aliases)
    source_warm: Any = None  # the same data under a second alias, for "first view, warm"

    def label(self) -> str:
        return f"{self.reader}/{self.location}/{self.mode}"


@dataclass
class Run:
    case: Case
    result: dict[str, Any]
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)  # per action


def sources(reader: str, location: str, base: str, layout: dict[str, Any]) -> Any:
    if reader == "memory":
        return layout["baseline"]
    if reader == "ours":
        return [f"{base}/{p}" for p in layout["ours"]]
    return f"{base}/{layout['ome-zarr']}"


_ALIASES = iter(range(1, 1 << 30))


def fresh_aliases(cases: list[Case], root: Path, url: str | None, layout: dict[str, Any]) -> list[Case]:
    """The cases with a new path to the data each (``root/vN`` -> ``root/data``): no run
    finds another run's data in a cache keyed by path or URL (ours, dask's, the OS's
    dentries aside), even when runs share a process (``--single-process``)."""
    out = []
    for c in cases:
        found = []
        for _ in range(2):
            alias = f"v{next(_ALIASES)}"
            (root / alias).symlink_to("data", target_is_directory=True)
            base = str(root / alias) if c.location == "local" else f"{url}/{alias}"
            found.append((alias, sources(c.reader, c.location, base, layout)))
        out.append(replace(c, alias=found[0][0], source=found[0][1], source_warm=found[1][1]))
    return out


def pycache_dir() -> Path:
    """Where the napari processes keep compiled bytecode (``PYTHONPYCACHEPREFIX``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "napari-precomputed" / "bench-pycache"


def child_env() -> dict[str, str]:
    """The napari processes import from compiled bytecode, as an installed package does
    (pip compiles it on install; a first import writes it): with
    ``PYTHONDONTWRITEBYTECODE`` set and no bytecode, every import would compile its
    sources and a cold first view would time the compiler (~3x the import time)."""
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(pycache_dir()))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def compile_bytecode() -> float:
    """Compile every installed module and ours into :func:`pycache_dir` (once: ~1.5 min
    on 2 cores; a few seconds when current). Returns the seconds it took."""
    import sysconfig

    t0 = time.monotonic()
    dirs = [sysconfig.get_paths()["purelib"], str(ROOT / "src")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", *dirs],
                   env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return time.monotonic() - t0


def run_children(cases: list[Case], cfg: Config, args: argparse.Namespace, display: str,
                 workdir: Path, server: Any, layout: dict[str, Any]) -> list[Run]:  # fmt: skip
    cases = fresh_aliases(cases, workdir, server.url if server is not None else None, layout)
    spec = {
        "cases": [asdict(c) for c in cases],
        "window": list(cfg.window),
        "canvas": list(cfg.canvas),
        "quiet": cfg.quiet,
        "timeout": cfg.timeout,
        "stall_stacks": args.stall_stacks,
        "profile": args.profile,
        "screenshots": args.screenshots,
    }
    spec_file = workdir / "child-spec.json"
    spec_file.write_text(json.dumps(spec))
    env = dict(child_env(), DISPLAY=display, NAPARI_CONFIG=str(workdir / "napari-settings.yaml"),
               NAPARI_ASYNC="1" if cases[0].mode == "async" else "0")  # fmt: skip
    if env.get("QT_QPA_PLATFORM") == "offscreen":  # no GL there: black screenshots
        del env["QT_QPA_PLATFORM"]
    if server is not None:
        server.clear_log()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(spec_file)],
        env=env, capture_output=True, text=True, timeout=60 + cfg.timeout * 6 * len(cases),
    )  # fmt: skip
    results = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or len(results) != len(cases):
        tail = (proc.stdout[-2000:] + "\n" + proc.stderr[-4000:]).strip()
        raise RuntimeError(f"napari child failed (exit {proc.returncode}) for "
                           f"{[c.label() for c in cases]}:\n{tail}")  # fmt: skip
    log = server.timed_requests if server is not None else []
    runs = []
    for case, result in zip(cases, results, strict=True):
        run = Run(case, result)
        if case.location == "remote":
            for a in result["actions"]:
                if "t0" in a:
                    run.requests[a["action"]] = analyse_requests(log, a["t0"], a["t_end"], layout)
        runs.append(run)
    return runs


def check_run(run: Run) -> list[str]:
    """What went wrong in a run (empty when every action completed with data on screen)."""
    problems = []
    r = run.result
    if r.get("error"):
        problems.append(r["error"].splitlines()[0])
    for a in r.get("actions", []):
        if not a.get("ok"):
            problems.append(f"{a['action']}: {a.get('error', 'not completed')}")
        elif not a.get("data_nonzero"):
            problems.append(f"{a['action']}: a layer's slice is all zeros")
        elif not all(a.get("updates", {}).values()):
            problems.append(f"{a['action']}: not every layer was updated ({a.get('updates')})")
    done = {a["action"] for a in r.get("actions", [])}
    problems += [f"{name}: did not run" for name in ACTIONS if name not in done]
    if not r.get("screenshot", {}).get("ok"):
        problems.append(f"screenshot shows no image with labels: {r.get('screenshot')}")
    if not r.get("async") == (run.case.mode == "async"):
        problems.append("the async setting did not take")
    return problems


def median_range(values: list[float]) -> tuple[float, float, float] | None:
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def fmt(v: tuple[float, float, float] | None, runs: int) -> str:
    if v is None:
        return "–"
    m, lo, hi = v
    return f"{m:.2f}" if runs < 2 else f"{m:.2f} [{lo:.2f}–{hi:.2f}]"


def table(runs: list[Run], cfg: Config) -> tuple[str, dict[str, Any]]:
    groups: dict[tuple[str, str, str, str], list[Run]] = {}
    for run in runs:
        c = run.case
        groups.setdefault((c.location, c.mode, c.reader, ""), []).append(run)
    lines = [
        "| where | slicing | action | ours (s) | napari-ome-zarr (s) | ours/ome-zarr "
        "| longest stall, ours (s) | longest stall, ome-zarr (s) | requests / rounds, ours "
        "| requests / rounds, ome-zarr | network floor (s): ours, ome-zarr |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary: dict[str, Any] = {}
    for location in LOCATIONS:
        for mode in MODES:
            per = {reader: groups.get((location, mode, reader, ""), []) for reader in READERS}
            if not any(per.values()):
                continue
            for action in ACTIONS:
                vals: dict[str, dict[str, Any]] = {}
                for reader, rs in per.items():
                    acts = [a for r in rs for a in r.result.get("actions", []) if a["action"] == action and a.get("ok")]
                    reqs = [r.requests[action] for r in rs if action in r.requests]
                    vals[reader] = {
                        "n": len(acts),
                        "time": median_range([a["time"] for a in acts]),
                        "stall": median_range([a["stall"] for a in acts]),
                        "requests": statistics.median([q["requests"] for q in reqs]) if reqs else None,
                        "rounds": statistics.median([q["rounds"] for q in reqs]) if reqs else None,
                        "floor": statistics.median([max(q["needed_rounds"].values(), default=0) for q in reqs]) * cfg.latency
                        if reqs and action.startswith("first view") else None,
                    }  # fmt: skip
                o, z = vals["ours"], vals["ome-zarr"]
                ratio = f"{o['time'][0] / z['time'][0]:.2f}" if o["time"] and z["time"] and z["time"][0] > 0 else "–"

                def rq(v: dict[str, Any]) -> str:
                    return "–" if v["requests"] is None else f"{v['requests']:g} / {v['rounds']:g}"

                floor = "–"
                if o["floor"] is not None or z["floor"] is not None:
                    floor = ", ".join("–" if v["floor"] is None else f"{v['floor']:.2f}" for v in (o, z))
                lines.append(
                    f"| {location} | {mode} | {action} | {fmt(o['time'], o['n'])} | {fmt(z['time'], z['n'])} "
                    f"| {ratio} | {fmt(o['stall'], o['n'])} | {fmt(z['stall'], z['n'])} | {rq(o)} | {rq(z)} | {floor} |"
                )  # fmt: skip
                summary[f"{location}/{mode}/{action}"] = vals
    return "\n".join(lines), summary


def baseline_table(runs: list[Run]) -> str:
    """``--baseline``: napari alone (in-memory levels), local, per slicing mode."""
    lines = ["| slicing | action | napari alone (s) | longest stall (s) |", "|---|---|---|---|"]
    for mode in MODES:
        rs = [r for r in runs if r.case.reader == "memory" and r.case.mode == mode]
        if not rs:
            continue
        for action in ACTIONS:
            acts = [a for r in rs for a in r.result.get("actions", []) if a["action"] == action and a.get("ok")]
            lines.append(f"| {mode} | {action} | {fmt(median_range([a['time'] for a in acts]), len(acts))} "
                         f"| {fmt(median_range([a['stall'] for a in acts]), len(acts))} |")  # fmt: skip
    return "\n".join(lines)


def facts(runs: list[Run], layout: dict[str, Any], cfg: Config) -> list[str]:
    out = []
    remote_first = {
        reader: [r.requests["first view"] for r in runs if r.case.reader == reader and "first view" in r.requests]
        for reader in READERS
    }  # fmt: skip
    ours = remote_first["ours"]
    if ours:
        per_open = Counter(q["info_reads"] / len(layout["ours"]) for q in ours)
        out.append(f"info reads per open (ours, remote first view): {dict(per_open)} (runs per value)")
        stages = ours[0]["stages"]
        out.append(f"ours, stages read in the first view per layer: {stages}; floor rounds "
                   f"{ours[0]['needed_rounds']}")  # fmt: skip
    theirs = remote_first["ome-zarr"]
    if theirs:
        out.append(f"zarr.json reads per open (napari-ome-zarr): "
                   f"{dict(Counter(q['zarr_json_reads'] for q in theirs))}; floor rounds "
                   f"{theirs[0]['needed_rounds']}")  # fmt: skip
    first = runs[0].result if runs else {}
    out.append(f"canvas {first.get('canvas')} px, window {list(cfg.window)}; levels after each action "
               f"(ours): " + "; ".join(f"{a['action']}: {sorted(set(a['levels'].values()))}"
                                       for a in first.get("actions", [])))  # fmt: skip
    zs = first.get("z")
    if zs:
        out.append(f"z-steps: start plane {zs['start']}, same chunk -> {zs['same chunk']}, "
                   f"new chunk -> {zs['new chunk']} (of {zs['planes']})")  # fmt: skip
    starts = [r.result.get("napari_start_s", 0) for r in runs]
    out.append(f"napari start (import + shown viewer, not timed above): median {statistics.median(starts):.2f} s")
    shots = [r.result.get("screenshot", {}) for r in runs]
    out.append(f"screenshots with image + labels on screen: {sum(1 for s in shots if s.get('ok'))}/{len(shots)}")
    return out


def floor_report(runs: list[Run], cfg: Config) -> list[str]:
    """Each remote first view against its floor: the round trips it strictly needs x
    latency, plus what the same view costs without a network (the local run's median:
    decoding and napari's own work, an upper bound of "decode")."""
    out = []
    for reader in READERS:
        for mode in MODES:
            for action in (a for a in ACTIONS if a.startswith("first view")):
                remote, local = (_action_times(runs, (reader, where, mode), action)
                                 for where in ("remote", "local"))  # fmt: skip
                reqs = [r.requests[action] for r in runs if action in r.requests
                        and (r.case.reader, r.case.mode) == (reader, mode)]  # fmt: skip
                if not remote or not reqs:
                    continue
                t = statistics.median(remote)
                net = statistics.median([max(q["needed_rounds"].values(), default=0) for q in reqs]) * cfg.latency
                line = f"{reader} {mode} {action}: {t:.2f} s; network floor {net:.2f} s ({t / net:.1f}x)" if net else ""
                if local and net:
                    lo = statistics.median(local)
                    line += f"; floor with the local time {net:.2f} + {lo:.2f} = {net + lo:.2f} s: {t / (net + lo):.2f}x"
                if line:
                    out.append(line)
    return out


def _action_times(runs: list[Run], case: tuple[str, str, str], action: str) -> list[float]:
    return [a["time"] for r in runs if (r.case.reader, r.case.location, r.case.mode) == case
            for a in r.result.get("actions", []) if a["action"] == action and a.get("ok")]  # fmt: skip


def request_report(runs: list[Run]) -> list[str]:
    """The remote first view's requests in order: start and duration (ms), stage, path."""
    out = []
    for run, action in ((r, a) for r in runs for a in ACTIONS):
        q = run.requests.get(action)
        if not q or not action.startswith("first view"):
            continue
        took = next(a["time"] for a in run.result["actions"] if a["action"] == action)
        out.append(f"{run.case.label()} ({action} {took:.2f} s, "
                   f"{q['requests']} requests, {q['rounds']} rounds):")  # fmt: skip
        for start, dur, status, layer, stage, path, rng in q["timeline"]:
            path = "/".join(path.split("/")[2:])
            out.append(f"  +{start:5d} ms {dur:4d} ms {status} {layer:6s} {stage:16s} {path} {rng or ''}")
    return out


def stall_report(runs: list[Run]) -> list[str]:
    out = []
    for run in runs:
        for a in run.result.get("actions", []):
            for s in a.get("stalls", []):
                where = ", ".join(f"{f} {p:.0%}" for f, p in s["where"][:10])
                out.append(f"{run.case.label()} {a['action']}: {s['s'] * 1000:.0f} ms at "
                           f"+{s['at'] * 1000:.0f} ms: {where}")  # fmt: skip
    return out


@contextlib.contextmanager
def workdir(keep: str | None) -> Iterator[Path]:
    if keep:
        path = Path(keep)
        path.mkdir(parents=True, exist_ok=True)
        for old in path.glob("v*"):  # the previous run's aliases
            if old.is_symlink():
                old.unlink()
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix="bench-napari-") as d:
            yield Path(d)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--smoke", action="store_true", help="tiny data, 1 run, one process (< 60 s)")
    p.add_argument("--repeats", type=int, help="runs per case (default 5)")
    p.add_argument("--size", type=int, nargs=3, metavar=("X", "Y", "Z"))
    p.add_argument("--chunk", type=int, nargs=3, metavar=("X", "Y", "Z"))
    p.add_argument("--scales", type=int)
    p.add_argument("--image-encoding", choices=("jpeg", "raw"))
    p.add_argument("--latency", type=float, help="seconds per request (default 0.03)")
    p.add_argument("--canvas", type=int, nargs=2, metavar=("W", "H"), help="canvas pixels (480 480)")
    p.add_argument("--only", action="append", default=[],
                   help="run cases whose reader/location/mode contains this (repeatable, all must match)")  # fmt: skip
    p.add_argument("--single-process", action="store_true", help="all cases in one napari process")
    p.add_argument("--stall-stacks", action="store_true", help="where each UI stall > 100 ms went")
    p.add_argument("--profile", metavar="DIR", help="cProfile of the UI thread per action")
    p.add_argument("--requests", action="store_true", help="print each remote first view's requests")
    p.add_argument("--baseline", action="store_true",
                   help="also napari alone: the same levels as in-memory numpy arrays, no reader")  # fmt: skip
    p.add_argument("--screenshots", metavar="DIR", help="save each run's final screenshot")
    p.add_argument("--workdir", help="keep the data here (reused when unchanged)")
    p.add_argument("--json", help="write every run and the medians here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)
    cfg = make_config(args)
    for name in ("profile", "screenshots"):
        if getattr(args, name):
            d = Path(getattr(args, name)).resolve()
            d.mkdir(parents=True, exist_ok=True)
            setattr(args, name, str(d))
    from server_process import ServerProcess

    t_start = time.monotonic()
    with workdir(args.workdir) as root, x_display() as display:
        t0 = time.monotonic()
        layout = build_data(cfg, root / "data")
        print(f"data ready in {time.monotonic() - t0:.1f} s ({root}); display {display}", flush=True)
        if not args.smoke:  # smoke: the children write what they import as they go
            print(f"bytecode current in {compile_bytecode():.0f} s ({pycache_dir()})", flush=True)
        cases = [
            Case(reader, location, mode, chunk_z=cfg.chunk[2])
            for location in LOCATIONS for mode in MODES for reader in READERS
        ]  # fmt: skip
        if args.baseline:
            layout["baseline"] = baseline_arrays(root / "data", layout, cfg.scales)
            cases += [Case("memory", "local", mode, chunk_z=cfg.chunk[2]) for mode in MODES]
        cases = [c for c in cases if all(o in c.label() for o in args.only)]
        need_server = any(c.location == "remote" for c in cases)
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(ServerProcess(root, cfg.latency)) if need_server else None
            runs: list[Run] = []
            if cfg.single_process:
                for _ in range(cfg.repeats):
                    runs += run_children(cases, cfg, args, display, root, server, layout)
            else:
                for rep in range(cfg.repeats):
                    for location in LOCATIONS:
                        for mode in MODES:
                            group = [c for c in cases if c.location == location and c.mode == mode]
                            group.sort(key=lambda c: c.reader == "memory")
                            if rep % 2:  # alternate which reader goes first
                                group.reverse()
                            for c in group:
                                runs += run_children([c], cfg, args, display, root, server, layout)
                    print(f"run {rep + 1}/{cfg.repeats} done ({time.monotonic() - t_start:.0f} s)", flush=True)
    problems = {run.case.label(): check_run(run) for run in runs}
    text, summary = table(runs, cfg)
    print()
    print(f"napari benchmark: image {cfg.size[0]}x{cfg.size[1]}x{cfg.size[2]} uint8 {cfg.image_encoding} + "
          f"segmentation uint64 compressed_segmentation sharded, {cfg.scales} scales, chunks "
          f"{'x'.join(map(str, cfg.chunk))}; OME-Zarr v3 sharded {'x'.join(map(str, cfg.zarr_shard))} (zstd); "
          f"remote: {cfg.latency * 1000:g} ms per request; medians of {cfg.repeats} run(s) "
          f"[min–max]{', one process' if cfg.single_process else ', a fresh napari process each'}")  # fmt: skip
    print()
    print(text)
    print()
    if args.baseline:
        print("napari alone, the same levels as memory-mapped numpy arrays (local, no reader):\n")
        print(baseline_table(runs))
        print()
    for line in facts(runs, layout, cfg):
        print(f"* {line}")
    floors = floor_report(runs, cfg)
    if floors:
        print("\nRemote first views against their floor (round trips needed x latency, plus the "
              "same view's local time: decoding and napari's own work):")  # fmt: skip
        for line in floors:
            print(f"* {line}")
    if args.stall_stacks:
        print("\nUI stalls above 100 ms (share of UI-thread samples inside each function):")
        for line in stall_report(runs):
            print(f"  {line}")
    if args.requests:
        print("\nRequests of each remote first view (start after the action, duration, status, "
              "layer, stage, path, range):")  # fmt: skip
        for line in request_report(runs):
            print(f"  {line}")
    bad = {k: v for k, v in problems.items() if v}
    for label, issues in bad.items():
        print(f"PROBLEM {label}: " + "; ".join(issues))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "config": asdict(cfg), "layout": {k: v for k, v in layout.items() if k != "minishard_index_ranges"},
            "runs": [{"case": asdict(r.case), "result": r.result, "requests": r.requests} for r in runs],
            "summary": summary, "problems": problems,
        }, indent=1, default=str))  # fmt: skip
    print(f"\ntotal {time.monotonic() - t_start:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

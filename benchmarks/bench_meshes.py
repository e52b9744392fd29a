"""Mesh benchmarks: fetching over a slow server, and generating meshes, against
CloudVolume and Igneous on the same data.

1. Coarsest LOD of one segment over a 20 ms-latency HTTP server (benchmarks/server_process.py):
   requests, sequential round trips and time, unsharded and sharded (goal: <= 3 round trips).
2. All LODs of 50 segments over the same server: ``precomputed.meshes`` ``get_many`` per LOD
   vs CloudVolume's ``vol.mesh.get`` (cold caches each).
3. Mesh generation throughput of a 512³ segmentation (``--small``: 128³): ``meshes.write``
   (sharded, multi-resolution) vs Igneous' ``MeshTask`` + ``MultiResShardedMeshMergeTask``
   (LocalTaskQueue, one process each).

    python benchmarks/bench_meshes.py [--small | --size N] [--keep DIR]

Prints times and ratios (ours / theirs: below 1 means faster).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TQDM_DISABLE", "1")

import precomputed  # noqa: E402
from precomputed import meshes  # noqa: E402
from server_process import ServerProcess  # noqa: E402

LATENCY = 0.020
RESOLUTION = (8.0, 8.0, 8.0)


def segmentation(n: int, cell: int) -> np.ndarray:
    """A dense (x, y, z) uint64 segmentation: warped cells of about ``cell`` voxels."""
    rng = np.random.default_rng(0)
    grid = n // cell + 2
    table = rng.permutation(grid**3).astype(np.uint64).reshape(grid, grid, grid) + 1
    x = np.arange(n)
    out = np.empty((n, n, n), np.uint64)
    for z0 in range(0, n, 64):
        z = np.arange(z0, min(z0 + 64, n))
        X, Y, Z = np.meshgrid(x, x, z, indexing="ij", sparse=True)
        wx = (X + 0.3 * cell * np.sin(Y / 17.0) + 0.2 * cell * np.sin(Z / 29.0)) // cell + 1
        wy = (Y + 0.3 * cell * np.sin(Z / 19.0) + 0.2 * cell * np.sin(X / 23.0)) // cell + 1
        wz = (Z + 0.3 * cell * np.sin(X / 13.0) + 0.2 * cell * np.sin(Y / 31.0)) // cell + 1
        wx, wy, wz = (np.clip(w, 0, grid - 1).astype(np.int64) for w in (wx, wy, wz))
        out[:, :, z0 : z0 + len(z)] = table[wx, wy, wz]
    return out


def write_volume(path: Path, seg: np.ndarray) -> str:
    from cloudvolume import CloudVolume

    info = CloudVolume.create_new_info(
        num_channels=1, layer_type="segmentation", data_type="uint64", encoding="raw",
        resolution=list(RESOLUTION), voxel_offset=[0, 0, 0], chunk_size=[64, 64, 64],
        volume_size=list(seg.shape),
    )  # fmt: skip
    url = "file://" + str(path)
    vol = CloudVolume(url, info=info, compress=False, progress=False)
    vol.commit_info()
    vol[:, :, :] = seg
    return url


def timed(fn):  # noqa: ANN001, ANN201
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def bench_generation(root: Path, seg: np.ndarray) -> tuple[str, str]:
    import igneous.task_creation as tc
    from taskqueue import LocalTaskQueue

    ours_url = write_volume(root / "ours", seg)
    theirs_url = write_volume(root / "igneous", seg)
    block = 256 if seg.shape[0] >= 256 else 128
    t_ours, stats = timed(
        lambda: meshes.write(
            precomputed.open(ours_url), sharding="auto", block_shape=(block,) * 3,
            options=meshes.LodOptions(chunk_voxels=32, max_lods=4),
        )
    )  # fmt: skip

    def igneous() -> None:
        tq = LocalTaskQueue(parallel=1, progress=False)
        tq.insert(
            tc.create_meshing_tasks(
                theirs_url, mip=0, shape=(block,) * 3, sharded=True, mesh_dir="mesh"
            )
        )
        tq.execute(progress=False)
        tq.insert(
            tc.create_sharded_multires_mesh_tasks(
                theirs_url, num_lod=3, min_chunk_size=(32, 32, 32), progress=False
            )
        )
        tq.execute(progress=False)

    t_theirs, _ = timed(igneous)
    mvox = seg.size / 1e6
    print(f"\n## Mesh generation, {seg.shape[0]}^3 voxels, {stats.segments_written} segments")
    print(
        f"  ours    {t_ours:8.2f} s  {mvox / t_ours:6.2f} Mvoxel/s  ({stats.fragments} fragments)"
    )
    print(f"  igneous {t_theirs:8.2f} s  {mvox / t_theirs:6.2f} Mvoxel/s")
    print(f"  ratio ours/igneous: {t_ours / t_theirs:.2f}")
    return ours_url, theirs_url


def round_trips(server: ServerProcess, fn) -> tuple[float, int, int]:  # noqa: ANN001
    server.clear_log()
    t, _ = timed(fn)
    return t, len(server.requests), round(t / LATENCY)


def bench_fetch(root: Path, seg: np.ndarray) -> None:
    from cloudvolume import CloudVolume

    # Unsharded copy of the meshes for the unsharded rows.
    crop = seg[:128, :128, :128] if seg.shape[0] > 128 else seg
    vol_u = write_volume(root / "unsharded", crop)
    meshes.write(
        precomputed.open(vol_u),
        block_shape=(128,) * 3,
        options=meshes.LodOptions(chunk_voxels=32, max_lods=4),
    )
    with ServerProcess(root, LATENCY) as server:
        print(f"\n## Coarsest LOD of one segment over a {LATENCY * 1e3:.0f} ms server (cold)")
        for name in ("unsharded", "ours"):
            url = f"{server.url}/{name}"
            first = _ids(crop if name == "unsharded" else seg, 1)[0]
            src = meshes.open(url)  # cold: no manifest or shard index cached
            t, n, rt = round_trips(server, lambda src=src, first=first: src.coarsest(first))
            label = "sharded" if name == "ours" else name
            print(
                f"  {label:10s} {t * 1e3:7.1f} ms = {rt} x latency, {n} requests (goal <= 3 round "
                "trips; the test suite proves they are sequential steps; the stdlib server "
                "re-reads the whole file per range, which a big shard makes slow)"
            )
        print(
            f"\n## All LODs of 50 segments over the {LATENCY * 1e3:.0f} ms server (sharded, cold)"
        )
        url = f"{server.url}/ours"
        probe = meshes.open(url)
        ids = _ids(seg, 50)
        nlods = {i: probe.lods(i) for i in ids}
        by_lod = [[i for i in ids if nlods[i] > lod] for lod in range(max(nlods.values()))]

        def ours() -> int:
            src = meshes.open(url)
            return sum(
                m.num_faces
                for lod, group in enumerate(by_lod)
                for m in src.get_many(group, lod).values()
            )

        def theirs() -> int:
            cv = CloudVolume(url, progress=False, cache=False)
            return sum(
                len(m.faces)
                for lod, group in enumerate(by_lod)
                for m in cv.mesh.get(group, lod=lod).values()
            )

        t_o, n_o, _ = round_trips(server, ours)
        t_t, n_t, _ = round_trips(server, theirs)
        print(f"  ours        {t_o:7.2f} s  {n_o} requests")
        print(f"  cloudvolume {t_t:7.2f} s  {n_t} requests")
        print(f"  ratio ours/cloudvolume: {t_o / t_t:.2f}")


def _ids(seg: np.ndarray, n: int) -> list[int]:
    """``n`` segment ids of ``seg`` spread over its id range (no probing of the server)."""
    ids = np.unique(seg)
    ids = ids[ids != 0]
    pick = np.linspace(0, len(ids) - 1, min(n, len(ids))).astype(int)
    return [int(i) for i in ids[pick]]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--small", action="store_true", help="a 128^3 segmentation (quick run)")
    ap.add_argument("--size", type=int, help="edge of the segmentation (default 512, --small 128)")
    ap.add_argument("--keep", type=Path, help="work in this directory and keep it")
    ap.add_argument(
        "--only",
        choices=("generate", "fetch"),
        help="run one part (fetch still meshes the data, untimed)",
    )
    args = ap.parse_args()
    n = args.size or (128 if args.small else 512)
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_meshes_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        seg = segmentation(n, cell=64 if n >= 512 else 24)
        if args.only != "fetch":
            bench_generation(root, seg)
        else:
            url = write_volume(root / "ours", seg)
            meshes.write(
                precomputed.open(url),
                sharding="auto",
                block_shape=(min(n, 256),) * 3,
                options=meshes.LodOptions(chunk_voxels=32, max_lods=4),
            )
        if args.only != "generate":
            bench_fetch(root, seg)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

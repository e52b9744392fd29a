"""A worker process for the multi-process store tests (test_file_processes.py).

    python kv_worker.py increment ROOT KEY ROUNDS SYNC   conditional read-modify-write +1
    python kv_worker.py replace ROOT KEY VERSIONS SYNC   replace KEY with versions 1..N
    python kv_worker.py read ROOT KEY SYNC               pinned reads until SYNC/done exists

Each worker writes SYNC/ready-<pid>, waits for SYNC/go (so all start together) and
prints one JSON line of counts. A version-``v`` object is ``struct.pack("<Q", v)``
repeated (its size varies with ``v``), so every 8-byte-aligned range says which version
it came from.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time

from precomputed.errors import GenerationChangedError
from precomputed.kvstore import FileKvStore


def version_bytes(v: int) -> bytes:
    return struct.pack("<Q", v) * (1024 + 128 * (v % 7))


def _start(sync: str) -> None:
    open(os.path.join(sync, f"ready-{os.getpid()}"), "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(sync, "go")):
        if time.monotonic() > deadline:
            sys.exit("no go signal")
        time.sleep(0.001)


def increment(store: FileKvStore, key: str, rounds: int) -> dict[str, int]:
    conflicts = 0
    for _ in range(rounds):
        while True:
            data, gen = store.read_with_generation(key)
            value = 0 if data is None else int(data)
            if store.write_if(key, b"%d" % (value + 1), gen):
                break
            conflicts += 1
    return {"conflicts": conflicts}


def replace(store: FileKvStore, key: str, versions: int) -> dict[str, int]:
    for v in range(1, versions + 1):
        store.write(key, version_bytes(v))
    return {"written": versions}


def read(store: FileKvStore, key: str, sync: str) -> dict[str, int]:
    counts = {"consistent": 0, "changed": 0, "mixed": 0, "single_consistent": 0, "single_mixed": 0}
    done = os.path.join(sync, "done")
    while not os.path.exists(done):
        # One call, three ranges: one descriptor, one version.
        blobs, _ = store.read_ranges_pinned([(key, 0, 8), (key, 4096, 4104), (key, -8, None)])
        if all(b is not None for b in blobs):
            seen = {struct.unpack("<Q", b)[0] for b in blobs if b}
            counts["single_consistent" if len(seen) == 1 else "single_mixed"] += 1
        # Two calls, as the sharded reader does (index first, data later), the second
        # pinned to the generation the first saw.
        first, gens = store.read_ranges_pinned([(key, 0, 8)])
        if first[0] is None:
            continue
        want = struct.unpack("<Q", first[0])[0]
        try:
            rest, _ = store.read_ranges_pinned([(key, 4096, 4104), (key, -8, None)], gens)
        except GenerationChangedError:
            counts["changed"] += 1
            continue
        seen = {struct.unpack("<Q", b)[0] for b in rest if b}
        counts["consistent" if seen == {want} else "mixed"] += 1
    return counts


def main() -> None:
    mode, root, key = sys.argv[1:4]
    store = FileKvStore(root)
    if mode == "increment":
        rounds, sync = int(sys.argv[4]), sys.argv[5]
        _start(sync)
        out = increment(store, key, rounds)
    elif mode == "replace":
        versions, sync = int(sys.argv[4]), sys.argv[5]
        _start(sync)
        out = replace(store, key, versions)
    elif mode == "read":
        sync = sys.argv[4]
        _start(sync)
        out = read(store, key, sync)
    else:
        sys.exit(f"unknown mode {mode!r}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

"""Worker processes of the concurrent edit-session tests (test_session_race.py): each
opens its own edit session per round, paints, waits for the other worker and commits at
the same moment, and reports what its commit said."""

from __future__ import annotations

from multiprocessing.synchronize import Barrier
from typing import Any

#: The edited region (x, y, z): chunk (0, 0, 0) of 16 x 16 x 4 and its neighbour in x.
REGION = ((0, 32), (0, 16), (0, 4))
#: z, y, x boxes each worker paints in chunk (0, 0, 0); "both" is painted by both workers
#: in the overlapping rounds, with different values.
OWN = {0: (slice(0, 1), slice(0, 4), slice(0, 8)), 1: (slice(2, 3), slice(8, 12), slice(4, 16))}
BOTH = (slice(3, 4), slice(12, 14), slice(0, 4))
#: Voxels both paint in an overlapping round.
BOTH_VOXELS = 1 * 2 * 4


def value(who: int, rnd: int) -> int:
    """The label worker ``who`` paints in round ``rnd``: distinct for every round and worker."""
    return 1000 * (who + 1) + rnd


def run(
    path: str,
    who: int,
    rounds: list[str],
    barrier: Barrier,
    results: Any,
    open_options: dict[str, Any] | None = None,
) -> None:
    """``rounds``: ``"disjoint"`` or ``"overlap"`` per round. Puts ``(who, round, report)``
    on ``results`` after each commit. ``open_options["context"] == "own"``: this worker's
    sessions open the volume in a context of their own (threads standing in for
    processes); else in the default context."""
    from napari.components import ViewerModel

    import precomputed
    from napari_precomputed import edit_labels

    open_options = dict(open_options or {})
    if open_options.get("context") == "own":
        open_options["context"] = precomputed.Context()
    viewer = ViewerModel()
    for rnd, mode in enumerate(rounds):
        barrier.wait(60)  # the previous round is checked
        report: dict[str, Any] = {}
        try:
            session = edit_labels(
                viewer, path, region=REGION, downsample=False, **open_options
            )
            v = value(who, rnd)
            session.layer.data[OWN[who]] = v
            if mode == "overlap":
                session.layer.data[BOTH] = v
        except BaseException as e:  # report, and keep the rounds in step
            report["error"] = f"opening or painting: {e!r}"
            session = None
        barrier.wait(60)  # both painted: commit at the same moment
        if session is not None:
            try:
                result = session.commit(downsample=False)
                report["conflicts"] = [(list(c.position), c.voxels) for c in result.conflicts]
                report["written"] = result.chunks_written
                report["summary"] = result.summary()  # what the edit dock shows
            except BaseException as e:
                report["error"] = repr(e)
            report["dirty"] = session.dirty_chunks
            session.close(force=True)
        results.put((who, rnd, report))
        barrier.wait(60)  # both committed: the test checks storage

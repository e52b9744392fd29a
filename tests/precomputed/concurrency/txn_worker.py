"""A writer that commits plain transactions, run as a process (local files) or a thread
(memory) by test_transaction_races.py.

The volume is race_worker's (8^3 uint32, 4^3 chunks; sharded: one shard). Both writers
write every chunk each round, each its own x half of it, inside one
``with vol.transaction():`` block: the partial chunks are read into the transaction's
buffer, then both writers wait for each other (so each buffered the chunk before the
other committed), then both commit at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from race_worker import ORIGINS, value

import precomputed


def transaction_rounds(
    open_volume: Callable[[], precomputed.Volume],
    who: str,
    rounds: int,
    pair: Any,
    barrier: Any,
    results: Any,
) -> None:
    """Writer ``who`` ("a": x half 0..1 of every chunk, "b": 2..3), ``rounds`` rounds;
    ``pair`` (2 parties) lines the writers up between buffering and committing,
    ``barrier`` (3 parties, with the checker) brackets the check of each round."""
    vol = open_volume()
    errors: list[str] = []
    retries = 0
    try:
        for r in range(1, rounds + 1):
            try:
                txn = vol.transaction()
                with txn:
                    for i, (x, y, z) in enumerate(ORIGINS):
                        x0 = x + (0 if who == "a" else 2)
                        vol[x0 : x0 + 2, y : y + 4, z : z + 4, :] = value(i, r)
                    pair.wait()  # both buffered: each read every chunk before either commits
                if txn.last_stats is not None:
                    retries += txn.last_stats.retries
            except Exception as e:  # reported, never hidden: the test fails on any
                errors.append(f"round {r}: {type(e).__name__}: {e}")
            barrier.wait()  # round committed
            barrier.wait()  # round checked
    finally:
        results.put({"who": who, "errors": errors, "retries": retries})

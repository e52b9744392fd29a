"""A short random pause before retrying after another writer got in first (a changed
shard or chunk): contention clears in microseconds to milliseconds, so the pause grows
from sub-millisecond, and its randomness keeps racing retries apart."""

from __future__ import annotations

import random
import time

__all__ = ["pause"]


def pause(attempt: int, base: float = 0.0005, doublings: int = 6, limit: float = 0.2) -> None:
    """Sleep up to ``base · 2^min(attempt, doublings)`` seconds (at most ``limit``)."""
    time.sleep(random.uniform(0, min(limit, base * (1 << min(attempt, doublings)))))

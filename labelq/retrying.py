"""Backoff with full jitter: the one delay rule for every retry labelq writes itself.

(Clients with their own retry machinery — botocore, redis-py, kombu — keep theirs.)
"""

from __future__ import annotations

import random


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): uniform in [0, min(cap, base * 2**(attempt-1))].

    Full jitter ("Exponential Backoff And Jitter", AWS Architecture Blog): spreads the retries of
    many clients that failed together. ``base`` and ``cap`` are seconds.
    """
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))

"""Backoff with full jitter: the one delay rule for every retry labelq writes itself.

(Clients with their own retry machinery — botocore, redis-py, kombu — keep theirs.)
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): uniform in [0, min(cap, base * 2**(attempt-1))].

    Full jitter ("Exponential Backoff And Jitter", AWS Architecture Blog): spreads the retries of
    many clients that failed together. ``base`` and ``cap`` are seconds.
    """
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says a service is unreachable (down, restarting, loading its data), not that a request is bad.

    Redis connection/timeout errors (``BusyLoadingError`` included), kombu/amqp connection errors and OS-level
    connection failures. Out-of-memory or read-only refusals are not outages: the chunk path handles those.
    """
    if isinstance(exc, (ConnectionError, TimeoutError)):  # builtins: refused, reset, timed out
        return True
    names = {cls.__module__.split(".")[0] + "." + cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"redis.ConnectionError", "redis.TimeoutError", "kombu.OperationalError",
                         "amqp.ConnectionError", "amqp.RecoverableConnectionError"})


def through_outage(step: Callable[[], T], *, what: str, wait: float, base: float = 0.5, cap: float = 10.0,
                   on_wait: Callable[[BaseException, float], None] | None = None) -> T:
    """Run ``step``; while it fails with an outage (:func:`is_outage`), wait with backoff and run it again.

    Gives up after ``wait`` seconds of outage and re-raises the last error. ``step`` must be idempotent
    (every labelq write is: records are upserts, counts are per position). ``on_wait(exc, delay)`` is
    told before each wait (for a log line); ``what`` names the step in the default one.
    """
    deadline = time.monotonic() + wait
    attempt = 0
    while True:
        try:
            return step()
        except Exception as exc:
            if not is_outage(exc) or time.monotonic() >= deadline:
                raise
            attempt += 1
            delay = min(max(0.05, backoff(attempt, base, cap)), max(0.0, deadline - time.monotonic()))
            if on_wait is not None:
                on_wait(exc, delay)
            else:
                logger.warning("could not %s (%s: %s); trying again in %.1fs", what, type(exc).__name__, exc, delay)
            time.sleep(delay)

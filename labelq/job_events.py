"""A job's events: a wake-up call to whoever waits on it (``Client.wait``: ``enqueue --wait``, ``status --follow``).

When a chunk of a job is done or dead-lettered, when its listing ends or fails, and when a verification settles
it, the script that writes it also publishes the job's new state on the job's channel
(``labelq:job:{job}:events``, Redis pub/sub; :mod:`labelq.jobs`). A waiter subscribes before it first reads the
job, then sleeps until an event or its poll interval, whichever comes first, and reads the job again. Events
are a cache: a waiter that misses one (not yet subscribed, a reconnect, a Redis failover) reads the job at
its next poll, so a lost event costs at most one poll interval, never a hang.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from . import keys

logger = logging.getLogger(__name__)


class JobEvents:
    """A subscription to one job's channel; :meth:`wait` returns on an event or after ``timeout``."""

    def __init__(self, redis: Any, job_id: str) -> None:
        self.channel = keys.job_events(job_id)
        self.received = 0  # events that woke the waiter
        self._pubsub: Any = None
        try:
            pubsub = redis.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(self.channel)
            self._pubsub = pubsub
        except Exception as exc:  # noqa: BLE001 - no pub/sub (a proxy that refuses it): polls only
            logger.debug("cannot subscribe to %s (%s: %s); polling", self.channel, type(exc).__name__, exc)

    def wait(self, timeout: float) -> bool:
        """Sleep until the job's next event (True; every event already here is taken too) or ``timeout`` (False)."""
        deadline = time.monotonic() + max(0.0, timeout)
        while self._pubsub is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                msg = self._pubsub.get_message(timeout=left)
                if msg is None:
                    continue  # the subscription's own confirmation, or the time is up
                while self._pubsub.get_message(timeout=0) is not None:  # a burst of events is one wake-up
                    pass
            except Exception as exc:  # noqa: BLE001 - Redis went away: the poll goes on without events
                logger.debug("events of %s lost (%s: %s); polling", self.channel, type(exc).__name__, exc)
                self.close()
                break
            self.received += 1
            return True
        left = deadline - time.monotonic()
        if left > 0:
            time.sleep(left)
        return False

    def close(self) -> None:
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self._pubsub = None

    def __enter__(self) -> JobEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""labelq.retrying.backoff: exponential growth to a cap, with full jitter."""

from __future__ import annotations

from typing import Any

import pytest

from labelq import retrying
from labelq.retrying import backoff


def test_the_upper_bound_doubles_per_attempt_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retrying.random, "uniform", lambda low, high: (low, high))
    bounds = [backoff(attempt, 0.1, 1.0) for attempt in range(1, 7)]
    assert bounds == [(0, 0.1), (0, 0.2), (0, 0.4), (0, 0.8), (0, 1.0), (0, 1.0)]


def test_delays_are_jittered_within_the_bound() -> None:
    delays = [backoff(4, 0.2, 5.0) for _ in range(200)]
    assert all(0 <= d <= 1.6 for d in delays)
    assert len(set(delays)) > 100  # spread out, not one fixed delay
    assert max(delays) > 0.8 and min(delays) < 0.8


def test_through_outage_retries_a_real_redis_outage_until_it_is_back(tmp_path: Any) -> None:
    """A write to a redis-server that is down is retried with backoff and lands once the server is back."""
    import threading

    from labelq.redis_client import connect
    from labelq.retrying import is_outage, through_outage
    from tests.support.redis import RedisServer

    server = RedisServer(tmp_path)
    client = connect(server.url, check=False, retries=0)
    waits: list[float] = []
    threading.Timer(1.0, server.start).start()
    try:
        assert through_outage(lambda: client.set("k", "v"), what="set k", wait=30, base=0.1, cap=0.5,
                              on_wait=lambda exc, delay: waits.append(delay)) is True
        assert client.get("k") == b"v"
        assert waits and all(0.05 <= d <= 0.5 for d in waits)
    finally:
        server.stop()
    with pytest.raises(Exception) as caught:  # down for longer than the wait: the outage error goes up
        through_outage(lambda: client.set("k", "v"), what="set k", wait=0.5, base=0.1, cap=0.2)
    assert is_outage(caught.value)


def test_a_refused_write_is_not_an_outage() -> None:
    from redis.exceptions import OutOfMemoryError, ResponseError

    from labelq.retrying import is_outage

    assert not is_outage(OutOfMemoryError("OOM command not allowed"))
    assert not is_outage(ResponseError("WRONGTYPE"))
    assert not is_outage(ValueError("bad"))
    assert is_outage(ConnectionRefusedError(111, "refused"))

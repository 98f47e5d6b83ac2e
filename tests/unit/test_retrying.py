"""labelq.retrying.backoff: exponential growth to a cap, with full jitter."""

from __future__ import annotations

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

"""Console sessions and sign-in throttling against a real Redis."""

from __future__ import annotations

from typing import Any


def test_console_sessions_end_everywhere_and_sign_ins_are_throttled(redis_client: Any) -> None:
    from labelq.console.auth import Sessions, Throttle

    sessions = Sessions(redis_client, seconds=60)
    a, b, c = sessions.start("alice"), sessions.start("alice"), sessions.start("bob")
    assert (sessions.user(a), sessions.user(b), sessions.user(c)) == ("alice", "alice", "bob")
    assert 0 < redis_client.ttl(f"labelq:console:session:{a}") <= 60
    assert sessions.end_all("alice") == 2
    assert (sessions.user(a), sessions.user(b), sessions.user(c), sessions.user(None)) == (None, None, "bob", None)

    throttle = Throttle(redis_client, window=60, per_user=3, per_address=5)
    for _ in range(3):
        assert throttle.wait("dave", "10.0.0.1") == 0
        throttle.failed("dave", "10.0.0.1")
    assert 0 < throttle.wait("dave", "10.0.0.9") <= 60  # the user, from anywhere
    assert throttle.wait("erin", "10.0.0.2") == 0
    throttle.failed("erin", "10.0.0.1")
    throttle.failed("frank", "10.0.0.1")
    assert throttle.wait("gina", "10.0.0.1") > 0  # the address, for any user
    assert throttle.wait("gina", "10.0.0.3") == 0
    throttle.succeeded("dave")
    assert throttle.wait("dave", "10.0.0.9") == 0

"""Redis Sentinel for real: a master, a replica and three sentinels on free ports (tests/support/redis.py).

labelq's Redis client and Celery's broker connection both find the master through the
sentinels, and find the new one after the master is SIGKILLed and the replica promoted;
``labelq ping``'s check names the master the sentinels point at.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from labelq.config import load_settings
from labelq.errors import UsageError
from labelq.health import check_broker, check_redis
from labelq.redis_client import connect, master_address
from labelq.tasks import make_app
from tests.conftest import _need
from tests.support.redis import SentinelGroup


def test_the_client_follows_the_master_through_a_failover(sentinel_group: SentinelGroup) -> None:
    client = connect(sentinel_group.url, master=sentinel_group.name)
    old = sentinel_group.master.port
    assert master_address(sentinel_group.url, sentinel_group.name) == ("127.0.0.1", old)
    client.set("before", "1")
    assert client.wait(1, 2000) == 1  # the replica has it: a promoted replica keeps it
    killed = time.monotonic()
    sentinel_group.kill_master()
    client.incr("after")  # the same client: it retries until the sentinels name the new master
    took = time.monotonic() - killed
    new = sentinel_group.wait_failover(old, timeout=5)  # already done: the write above needed it
    assert new is sentinel_group.replica and master_address(sentinel_group.url, sentinel_group.name) == ("127.0.0.1", sentinel_group.replica.port)
    assert client.get("before") == b"1" and client.get("after") == b"1"
    assert client.connection_pool.get_master_address() == ("127.0.0.1", sentinel_group.replica.port)
    print(f"failover seen by labelq's client: {took:.2f} s (down-after 1 s)")
    assert took < 15


def test_a_master_name_the_sentinels_do_not_know_is_one_clear_error(sentinel_group: SentinelGroup) -> None:
    with pytest.raises(UsageError) as caught:
        connect(sentinel_group.url, master="nosuch", retries=0)
    assert "cannot reach Redis at sentinel://" in str(caught.value) and "'nosuch'" in str(caught.value)


def test_a_broker_message_published_before_the_failover_is_consumed_after_it(sentinel_group: SentinelGroup) -> None:
    settings = load_settings(broker_url=sentinel_group.url, sentinel_master=sentinel_group.name, queue="ha-test")
    app = make_app(settings)
    with app.connection_for_write() as conn:
        queue = conn.SimpleQueue("ha-test")
        queue.put({"n": 1})
        queue.close()
    assert connect(sentinel_group.url, master=sentinel_group.name).wait(1, 2000) == 1
    old = sentinel_group.master.port
    sentinel_group.kill_master()
    sentinel_group.wait_failover(old)
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue("ha-test")
        message = queue.get(timeout=20)
        assert message.payload == {"n": 1}
        message.ack()
        queue.close()


def test_ping_names_the_master_the_sentinels_point_at(sentinel_group: SentinelGroup) -> None:
    settings = load_settings(broker_url=sentinel_group.url, sentinel_master=sentinel_group.name)
    app = make_app(settings)
    redis, broker = check_redis(settings), check_broker(settings, app)
    assert redis.ok and broker.ok
    assert f"(master labelq at 127.0.0.1:{sentinel_group.master.port})" in redis.detail
    assert f"(master labelq at 127.0.0.1:{sentinel_group.master.port})" in broker.detail
    old = sentinel_group.master.port
    sentinel_group.kill_master()
    sentinel_group.wait_failover(old)
    assert f"(master labelq at 127.0.0.1:{sentinel_group.replica.port})" in check_redis(settings).detail


def test_a_password_protected_master_is_reached_through_the_sentinels_and_never_shown(tmp_path: Path) -> None:
    secret = "Zq7se/cret"  # a / in it: percent-encoded in the URL
    with _need(lambda: SentinelGroup(tmp_path / "pw", sentinels=1, password=secret)) as sentinel_group:
        url = sentinel_group.url.replace(secret, "Zq7se%2Fcret")
        settings = load_settings(broker_url=url, sentinel_master=sentinel_group.name)
        client = connect(settings.broker_url, master=sentinel_group.name)
        client.set("k", "v")
        assert sentinel_group.master.client().get("k") == b"v"
        app = make_app(settings)
        with app.connection_for_write() as conn:  # kombu's sentinel transport sends the master the password too
            queue = conn.SimpleQueue("pw-test")
            queue.put({"n": 1})
            assert queue.get(timeout=5).payload == {"n": 1}
            queue.close()
        checks = [check_redis(settings), check_broker(settings, app)]
        assert all(c.ok for c in checks) and not any("Zq7se" in c.detail for c in checks)
        assert all(f"(master labelq at 127.0.0.1:{sentinel_group.master.port})" in c.detail for c in checks)
        with pytest.raises(UsageError) as caught:
            connect(url.replace("Zq7se%2Fcret", "wrong"), master=sentinel_group.name, retries=0)
        assert "cannot reach Redis" in str(caught.value) and "wrong" not in str(caught.value)

"""Each server fixture really answers, over the network, as the code under test will use it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.moto import MotoServer
from tests.support.postgres import PostgresServer
from tests.support.procs import group_members as _group_members
from tests.support.rabbit import RabbitServer
from tests.support.redis import RedisServer


def test_redis_answers(redis_server: RedisServer, redis_client: Any) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_server.port != 6379
    assert redis_client.ping() is True
    redis_client.set("labelq:test", "1")
    assert redis_client.get("labelq:test") == b"1"


def test_redis_url_is_flushed(redis_url: str) -> None:
    import redis

    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0  # the previous test's key is gone
        client.set("left-behind", "x")


def test_redis_aof_survives_restart(redis_factory: Any) -> None:
    server = redis_factory(aof=True)
    port = server.port
    with server.client() as client:
        client.set("kept", "yes")
    server.stop()
    assert not server.alive()
    server.start()
    assert server.port == port
    with server.client() as client:
        assert client.get("kept") == b"yes"


def test_redis_without_aof_restarts_empty(redis_factory: Any) -> None:
    server = redis_factory()
    with server.client() as client:
        client.set("lost", "yes")
    server.stop()
    server.start()
    with server.client() as client:
        assert client.get("lost") is None


def test_s3_put_get_over_http(s3_server: MotoServer, s3_client: Any, s3_bucket: str) -> None:
    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")
    s3_client.put_object(Bucket=s3_bucket, Key="a/b.jpg", Body=b"bytes")
    assert s3_client.get_object(Bucket=s3_bucket, Key="a/b.jpg")["Body"].read() == b"bytes"
    listed = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="a/")
    assert [item["Key"] for item in listed["Contents"]] == ["a/b.jpg"]


def test_s3_reachable_from_another_process(s3_server: MotoServer, s3_client: Any, s3_bucket: str) -> None:
    """Workers are separate processes: they must reach moto with only the endpoint and the env's credentials."""
    s3_client.put_object(Bucket=s3_bucket, Key="k", Body=b"from-parent")
    code = (
        "import boto3, sys; c = boto3.client('s3', endpoint_url=sys.argv[1]); "
        "sys.stdout.write(c.get_object(Bucket=sys.argv[2], Key='k')['Body'].read().decode())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, s3_server.endpoint_url, s3_bucket],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=dict(os.environ),
    )
    assert out.stdout == "from-parent"


def test_s3_bucket_is_fresh(s3_client: Any, s3_bucket: str) -> None:
    assert s3_client.list_objects_v2(Bucket=s3_bucket)["KeyCount"] == 0


def test_postgres_select_1(postgres_server: PostgresServer, postgres_url: str) -> None:
    import sqlalchemy as sa

    assert postgres_url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select 1")).scalar_one() == 1
            assert conn.execute(sa.text("select current_database()")).scalar_one() == postgres_server.dbname
    finally:
        engine.dispose()
    if postgres_server.mode == "private":
        assert postgres_server.port != 5432


def test_amqp_connects(rabbitmq_server: RabbitServer, amqp_url: str) -> None:
    import kombu

    with kombu.Connection(amqp_url, connect_timeout=5) as conn:
        queue = conn.SimpleQueue(f"labelq-test-{os.getpid()}")
        queue.put({"hello": "world"}, serializer="json")
        message = queue.get(timeout=5)
        assert message.payload == {"hello": "world"}
        message.ack()
        queue.close()
    if rabbitmq_server.mode == "private":
        assert rabbitmq_server.port != 5672


@pytest.mark.parametrize("env", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_session_is_offline(env: str) -> None:
    assert os.environ[env] == "1"
    assert "labelq-test-home-" in os.environ["HF_HOME"]


def test_orphaned_server_is_reaped(tmp_path: Any) -> None:
    """A server whose owner dies without stopping it is killed by its watchdog, its folder deleted."""
    script = (
        "import sys, pathlib; sys.path.insert(0, sys.argv[1]); "
        "from tests.support.moto import MotoServer; "
        "s = MotoServer(pathlib.Path(sys.argv[2])).start(); print(s.process.pgid, flush=True)"
    )
    root = str(Path(__file__).resolve().parents[2])
    owner = subprocess.run(
        [sys.executable, "-c", script, root, str(tmp_path / "moto")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    pgid = int(owner.stdout.split()[-1])
    deadline = time.monotonic() + 20
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _group_members(pgid)

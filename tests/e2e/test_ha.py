"""High availability, done for real (issue 19): the Redis master SIGKILLed mid-job behind Sentinel, and
RabbitMQ (quorum queues) restarted mid-job. Each ends with the job done, every object labelled exactly
once and ``enqueue --wait`` exiting 0.

Timing: a ViT-S (``slow_vit``, ~0.1 s per image per core) over 48 images in chunks of 8 keeps the
job running for several seconds: long enough to strike in the middle of it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from labelq.redis_client import connect
from tests.conftest import _need
from tests.e2e.conftest import export_job, file_uris, job_hash, once_each, write_photos
from tests.support.procs import wait_until
from tests.support.redis import SentinelGroup
from tests.support.workers import Procs, cli, labelq_env

pytestmark = pytest.mark.slow

N, CHUNK, BATCH = 48, 8, 8


def test_the_redis_master_killed_mid_job_fails_over_and_the_job_ends_done(
    sentinel_group: SentinelGroup, tmp_path: Path, procs: Procs, slow_vit: Path, photo_bytes: list[bytes]
) -> None:
    """Broker, job state and records all behind Sentinel; the master is SIGKILLed once records are coming in."""
    uris = file_uris(write_photos(tmp_path / "in", photo_bytes[:N]))
    # replication is asynchronous: a chunk the old master took may be gone from the new one; the heal publishes
    # it again once its deadline passes (short here), decided from the records
    env = labelq_env(broker=sentinel_group.url, models=[slow_vit], sentinel_master=sentinel_group.name, local_root=tmp_path,
                     chunk_size=CHUNK, batch_size=BATCH, visibility_timeout=10, stall_timeout=90,
                     chunk_deadline=6, heal_interval=2)
    worker = procs.worker(env, timeout=180)
    client = connect(sentinel_group.url, master=sentinel_group.name)
    producer = procs.spawn(["enqueue", str(tmp_path / "in"), "--job", "ha", "--wait"], env, name="enqueue")
    wait_until(lambda: 0 < int(job_hash(client, "ha").get("ok", 0)) < N - 2 * CHUNK, timeout=120, every=0.02,
               what="the job half-way", describe=lambda: f"{job_hash(client, 'ha')}\n{worker.tail(30)}")
    old = sentinel_group.master.port
    killed = time.monotonic()
    sentinel_group.kill_master()
    sentinel_group.wait_failover(old)
    promoted = time.monotonic() - killed
    at_promotion = int(job_hash(client, "ha").get("ok", 0))  # what the replica had (asynchronous: maybe less)
    wait_until(lambda: int(job_hash(client, "ha").get("ok", 0)) > at_promotion or
               job_hash(client, "ha").get("state") == "done", timeout=90, every=0.02,
               what="a record written on the new master", describe=lambda: worker.tail(40))
    first_write = time.monotonic() - killed
    print(f"\nSentinel failover: promoted {promoted:.2f} s after the kill; the worker's first record on the new "
          f"master {first_write:.2f} s after it")
    assert producer.wait(150) == 0, producer.tail(30)
    state = job_hash(client, "ha")
    assert state["state"] == "done", state
    once_each(export_job(env, "ha", tmp_path), uris, str(slow_vit))
    assert "Traceback" not in producer.text()
    ping = cli(["ping"], env, cwd=tmp_path).check().stdout  # the worker answers through the new master too
    master = f"(master labelq at 127.0.0.1:{sentinel_group.replica.port})"
    assert f"broker: {sentinel_group.url} {master}" in ping and f"job state (redis): {sentinel_group.url} {master}" in ping
    assert "1 answering" in ping


def test_rabbitmq_quorum_queues_restarted_mid_job_lose_nothing(
    tmp_path: Path, redis_url: str, redis_client: Any, procs: Procs, slow_vit: Path, photo_bytes: list[bytes]
) -> None:
    """``LABELQ_AMQP_QUORUM=true``: the bulk queue is a quorum queue; RabbitMQ is stopped and started again while
    chunks wait in it and one is in flight. The waiting ones come back, the one in flight is redelivered."""
    from tests.support.rabbit import RabbitServer

    rabbit = RabbitServer()
    try:
        _need(lambda: rabbit.start_private(timeout=90))  # a node of its own to restart: no shared fallback
        uris = file_uris(write_photos(tmp_path / "in", photo_bytes[:N]))
        env = labelq_env(broker=rabbit.url, redis=redis_url, models=[slow_vit], amqp_quorum="true",
                         local_root=tmp_path, chunk_size=CHUNK, batch_size=BATCH, stall_timeout=90)
        worker = procs.worker(env, timeout=180)
        producer = procs.spawn(["enqueue", str(tmp_path / "in"), "--job", "rq", "--wait"], env, name="enqueue")
        wait_until(lambda: 0 < int(job_hash(redis_client, "rq").get("ok", 0)) < N - 2 * CHUNK, timeout=120,
                   every=0.02, what="the job half-way", describe=lambda: worker.tail(30))
        assert rabbit.queues("type").get("labelq") == "quorum"
        down = rabbit.restart()
        print(f"\nRabbitMQ restarted: AMQP unreachable for {down:.2f} s")
        assert producer.wait(150) == 0, producer.tail(30)
        assert job_hash(redis_client, "rq")["state"] == "done"
        once_each(export_job(env, "rq", tmp_path), uris, str(slow_vit))
        log = worker.text()
        assert "Global QoS is disabled" in log and "Connection to broker lost" in log
        # what the worker could not acknowledge on the closed connection came back and was settled as a duplicate
        wait_until(lambda: rabbit.queues("messages").get("labelq") == "0", timeout=30, what="the bulk queue empty",
                   describe=lambda: str(rabbit.queues("messages")))
    finally:
        procs.close()
        rabbit.stop()

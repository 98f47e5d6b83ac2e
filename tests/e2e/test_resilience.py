"""Nothing lost, never stuck (issue 19, the process side): outages of Redis and the broker, dead device
processes, a listener whose broker is down, webhooks that hang, and a broker without job-state Redis.

Every test runs real processes (``labelq worker``, ``labelq listen``, redis-server, a loopback HTTP server) and
ends with "every object exactly once, job done, nothing hangs" or a one-line error.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_faults import export, file_uris, once_each, photos, status
from tests.procs import Procs, cli, labelq_env, wait_until
from tests.support.redis import RedisServer

pytestmark = pytest.mark.slow


@pytest.fixture
def own_redis(tmp_path: Path) -> Any:
    """A private redis-server that keeps its data across stop/start (AOF): an outage, not a wipe."""
    server = RedisServer(tmp_path / "redis", aof=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_worker_rides_out_a_redis_outage_and_the_job_finishes_once_each(
        tmp_path: Path, own_redis: RedisServer, procs: Procs, slow_vit: Path, photo_bytes: list[bytes]) -> None:
    """Redis (broker, job state and records) stopped for 15 s mid-job: the worker stays up and says "degraded",
    `ping` says degraded, and once Redis is back the job ends done with every object labelled exactly once."""
    paths = photos(tmp_path / "in", photo_bytes[:96])
    env = labelq_env(broker=own_redis.url, models=[slow_vit], local_root=str(tmp_path), chunk_size=8, batch_size=8,
                     stall_timeout=120, visibility_timeout=60)
    w = procs.worker(env)
    cli(["enqueue", str(tmp_path / "in"), "--job", "R"], env, cwd=tmp_path).check()
    client = own_redis.client()
    wait_until(lambda: int(client.hget("labelq:job:R", "ok") or 0) >= 8, timeout=90, what="some records written")
    client.close()
    own_redis.stop()
    down_at = time.monotonic()
    w.wait_for(lambda t: "degraded" in t, timeout=30, what="the worker's log to say degraded")
    ping = cli(["ping", "--timeout", "1"], env, cwd=tmp_path, timeout=60)
    assert ping.returncode != 0 and "degraded" in ping.stdout, ping.stdout + ping.stderr
    time.sleep(max(0.0, 15 - (time.monotonic() - down_at)))
    assert w.alive(), w.tail()
    own_redis.start()
    w.wait_for(lambda t: "recovered" in t, timeout=60, what="the worker's log to say recovered")
    wait_until(lambda: status(env, "R", tmp_path)["state"] == "done", timeout=120, every=1.0, what="job R done")
    once_each(export(env, "R", tmp_path), file_uris(paths), str(slow_vit))
    assert w.alive(), w.tail()

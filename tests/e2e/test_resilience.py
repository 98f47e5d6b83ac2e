"""Nothing lost, never stuck (issue 19, the process side): outages of Redis and the broker, dead device
processes, a listener whose broker is down, webhooks that hang, and a broker without job-state Redis.

Every test runs real processes (``labelq worker``, ``labelq listen``, redis-server, a loopback HTTP server) and
ends with "every object exactly once, job done, nothing hangs" or a one-line error.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import threading
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from labelq import keys as lq_keys
from tests.e2e.conftest import broken_copy, export_job, file_uris, job_hash, job_status, once_each, write_photos
from tests.support.procs import free_port, group_members, wait_until
from tests.support.redis import RedisServer
from tests.support.workers import Procs, cli, labelq_env

pytestmark = pytest.mark.slow


def test_a_worker_rides_out_a_redis_outage_and_the_job_finishes_once_each(
        tmp_path: Path, redis_factory: Any, procs: Procs, slow_vit: Path, photo_bytes: list[bytes]) -> None:
    """Redis (broker, job state and records; AOF, so an outage and not a wipe) stopped for 15 s mid-job: the worker
    stays up and says "degraded" (log and metrics), `ping` says degraded, the job state survives the restart, and once
    Redis is back the job ends done with every object labelled exactly once and nothing counted twice."""
    own_redis: RedisServer = redis_factory(aof=True)
    paths = write_photos(tmp_path / "in", photo_bytes[:96])
    metrics = free_port()
    env = labelq_env(broker=own_redis.url, models=[slow_vit], local_root=str(tmp_path), chunk_size=8, batch_size=8,
                     stall_timeout=120, visibility_timeout=60, metrics_port=metrics)
    w = procs.worker(env)
    cli(["enqueue", str(tmp_path / "in"), "--job", "R"], env, cwd=tmp_path).check()
    client = own_redis.client()
    wait_until(lambda: int(client.hget("labelq:job:R", "ok") or 0) >= 8, timeout=90, what="some records written")
    before = job_hash(client, "R")
    client.close()
    own_redis.stop()  # SIGTERM: the AOF is flushed; fsync=always besides
    down_at = time.monotonic()
    w.wait_for(lambda t: "degraded" in t, timeout=30, what="the worker's log to say degraded")
    ping = cli(["ping", "--timeout", "1"], env, cwd=tmp_path, timeout=60)
    assert ping.returncode != 0 and "degraded" in ping.stdout, ping.stdout + ping.stderr
    scrape = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read().decode()
    assert "labelq_degraded 1.0" in scrape and 'labelq_service_up{service="job state (redis)"} 0.0' in scrape
    time.sleep(max(0.0, 15 - (time.monotonic() - down_at)))
    assert w.alive(), w.tail()
    own_redis.start()
    with own_redis.client() as client:
        after_restart = job_hash(client, "R")
    assert after_restart["listed"] == before["listed"] == "96"  # job state survived
    assert int(before["ok"]) < 96  # the outage was mid-job
    assert int(after_restart["ok"]) >= int(before["ok"])
    w.wait_for(lambda t: "recovered" in t, timeout=60, what="the worker's log to say recovered")
    wait_until(lambda: job_status(env, "R", tmp_path)["state"] == "done", timeout=120, every=1.0, what="job R done")
    st = job_status(env, "R", tmp_path)
    assert (st["ok"], st["error"], st["total"]) == (96, 0, 96), st
    once_each(export_job(env, "R", tmp_path), file_uris(paths), str(slow_vit))
    assert w.alive(), w.tail()
    assert "Connection to broker lost" in w.text()


def celery_children(leader: int) -> list[int]:
    """The device processes (celery workers) under a `labelq worker` launcher."""
    out = []
    for pid in group_members(leader):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if pid != leader and b"celery" in argv:
            out.append(pid)
    return out


def test_a_sigkilled_device_process_is_restarted_and_the_job_finishes_once_each(
        tmp_path: Path, redis_url: str, redis_client: Any, procs: Procs, slow_vit: Path,
        photo_bytes: list[bytes]) -> None:
    """SIGKILL the celery child of `labelq worker` mid-job: the launcher logs it and starts a new one; the chunk it
    held comes back after the visibility timeout; the job ends done, each object once; SIGTERM then stops all."""
    paths = write_photos(tmp_path / "in", photo_bytes[:32])
    env = labelq_env(broker=redis_url, models=[slow_vit], local_root=str(tmp_path), chunk_size=8, batch_size=8,
                     visibility_timeout=10, stall_timeout=120)
    w = procs.worker(env)
    [child] = celery_children(w.pid)
    cli(["enqueue", str(tmp_path / "in"), "--job", "K"], env, cwd=tmp_path).check()
    wait_until(lambda: int(redis_client.hget("labelq:job:K", "ok") or 0) >= 8, timeout=90, what="some records")
    os.kill(child, signal.SIGKILL)
    w.wait_for(lambda t: "restarting it in" in t and "killed by signal 9" in t, timeout=30, what="the restart line")
    wait_until(lambda: len([c for c in celery_children(w.pid) if c != child]) == 1, timeout=30, what="a new child")
    wait_until(lambda: job_status(env, "K", tmp_path)["state"] == "done", timeout=180, every=1.0, what="job K done")
    once_each(export_job(env, "K", tmp_path), file_uris(paths), str(slow_vit))
    started = time.monotonic()
    assert w.terminate(60) == 0, w.tail()
    assert time.monotonic() - started < 60


def test_a_device_process_that_keeps_dying_at_start_stops_the_launcher_with_its_reason(
        tmp_path: Path, redis_url: str, procs: Procs, tiny_vit: Path) -> None:
    """A model that does not load: the child exits 3 right after its start; it is restarted with backoff
    LABELQ_WORKER_RESTARTS times, then the launcher exits non-zero with one line naming the reason."""
    bad = broken_copy(tiny_vit, tmp_path / "bad-model")
    env = labelq_env(broker=redis_url, models=[bad], worker_restarts=1)
    w = procs.worker(env, ready=False)
    started = time.monotonic()
    assert w.wait(150) == 3
    took = time.monotonic() - started
    lines = [line for line in w.text().splitlines() if line.startswith("labelq worker: device process")]
    assert len(lines) == 1, w.tail()
    assert "2 times in a row" in lines[0] and "not restarting" in lines[0] and "cannot start" in lines[0]
    assert "bad-model" in lines[0]
    assert w.text().count("restarting it in") == 1
    assert "Traceback" not in w.text()
    assert took < 150
    assert not w.group_alive()


def minio_event(*keys: str, bucket: str = "uploads") -> str:
    """One entry as MinIO's Redis target (access format) RPUSHes it."""
    records = [{"eventName": "s3:ObjectCreated:Put", "eventTime": "2026-12-06T11:00:00.000Z",
                "s3": {"bucket": {"name": bucket}, "object": {"key": k, "size": 10, "eTag": uuid.uuid4().hex,
                                                             "sequencer": uuid.uuid4().hex[:16]}}}
               for k in keys]
    return json.dumps([{"Event": records, "EventTime": "2026-12-06T11:00:00.000Z"}])


LIVE = "labelq.live"


@pytest.fixture
def broker(redis_factory: Any) -> RedisServer:
    """A second redis-server as the broker, to take down while job state stays up."""
    return redis_factory()


def listen_then_broker_down(procs: Procs, broker: RedisServer, redis_url: str, redis_client: Any, model: Path,
                            job: str, outage_wait: float, *keys: str) -> tuple[str, dict[str, str], Any]:
    """`labelq listen --minio` started on ``broker`` (job state in ``redis_url``), then the broker stopped and a
    MinIO event of ``keys`` pushed: (the events list's key, the listener's environment, the listener)."""
    events = f"events-{uuid.uuid4().hex[:8]}"
    env = labelq_env(broker=broker.url, redis=redis_url, models=[model], events_key=events, outage_wait=outage_wait)
    listen = procs.spawn(["listen", "--minio", "--job", job], env, name="listen")
    listen.wait_for(lambda t: "listening to" in t, timeout=60, what="'listening to'")
    broker.stop()
    redis_client.rpush(events, minio_event(*keys))
    return events, env, listen


def test_listen_keeps_an_event_through_a_broker_outage_and_queues_it_once_the_broker_is_back(
        redis_url: str, redis_client: Any, broker: RedisServer, procs: Procs, tiny_vit: Path) -> None:
    events, _env, listen = listen_then_broker_down(procs, broker, redis_url, redis_client, tiny_vit, "L1", 120,
                                                   "a.jpg", "b.jpg")
    listen.wait_for(lambda t: "listen degraded" in t, timeout=30, what="'listen degraded'")
    assert redis_client.llen(events) == 0 and redis_client.llen(f"{events}:processing") == 1  # taken, kept
    time.sleep(3)
    broker.start()
    with broker.client() as b:
        wait_until(lambda: b.llen(LIVE) == 2, timeout=60, what="2 live tasks on the broker")
        wait_until(lambda: redis_client.llen(f"{events}:processing") == 0, timeout=10, what="the event removed")
        names = {json.loads(m)["headers"]["argsrepr"] for m in b.lrange(LIVE, 0, -1)}
        assert {n for n in names if "a.jpg" in n} and {n for n in names if "b.jpg" in n}
    assert listen.alive(), listen.tail()
    assert "Traceback" not in listen.text()


def test_listen_exits_non_zero_with_one_line_when_the_broker_stays_down_and_the_next_one_replays_the_event(
        redis_url: str, redis_client: Any, broker: RedisServer, procs: Procs, tiny_vit: Path) -> None:
    events, env, listen = listen_then_broker_down(procs, broker, redis_url, redis_client, tiny_vit, "L2", 4, "c.jpg")
    assert listen.wait(60) == 1
    errors = [line for line in listen.text().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "could not queue" in errors[0] and "labelq listen" in errors[0], listen.tail()
    assert "Traceback" not in listen.text()
    assert redis_client.llen(f"{events}:processing") == 1  # kept for the next listener
    broker.start()
    again = procs.spawn(["listen", "--minio", "--job", "L2"], env, name="listen-again")
    with broker.client() as b:
        wait_until(lambda: b.llen(LIVE) == 1, timeout=60, what="the kept event queued by the next listener")
    # removed from the processing list only once queued (an instant after the broker has it)
    wait_until(lambda: redis_client.llen(f"{events}:processing") == 0, timeout=10, what="the kept event released")
    with broker.client() as b:
        assert b.llen(LIVE) == 1  # queued once
    assert "replaying 1 events" in again.text()


class Webhook:
    """A loopback HTTP server that records every POST's Idempotency-Key and answers per ``mode``:
    ``hang`` never answers; ``flaky`` answers 500 to the first POST of each key, then 200."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.posts: list[tuple[str, int | None]] = []  # (key, status sent; None: never answered)
        self.release = threading.Event()
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                key = self.headers.get("Idempotency-Key", "")
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if hook.mode == "hang":
                    hook.posts.append((key, None))
                    hook.release.wait(120)
                    return
                status = 500 if all(k != key for k, _ in hook.posts) else 200
                hook.posts.append((key, status))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def notify_policy(path: Path, model: Path, webhook: str, attempts: int) -> Path:
    path.write_text(f'version = "v1"\n\n[notify]\nwebhook = {json.dumps(webhook)}\nwebhook_attempts = {attempts}\n\n'
                    f'[[rule]]\nmodel = {json.dumps(str(model))}\nlabel = "nsfw"\nthreshold = 0.0\n'
                    'actions = ["notify"]\n', encoding="utf-8")
    return path


@pytest.mark.parametrize("mode", ["hang", "flaky"])
def test_a_webhook_never_holds_a_chunk_and_each_object_is_posted_once_per_policy_version(
        mode: str, tmp_path: Path, redis_url: str, redis_client: Any, procs: Procs, tiny_vit: Path,
        photo_bytes: list[bytes]) -> None:
    """Every record fires a notify rule. ``hang``: the webhook never answers; the chunk is still acknowledged at
    once (before: it waited out 4 x 5 s per object and ran twice), one POST per object, then each notification is
    dead-lettered (webhook_attempts = 1) and shows in `moderate outbox` and the audit. ``flaky``: 500 then 200;
    exactly one successful POST per object, nothing dead."""
    hook = Webhook(mode)
    try:
        write_photos(tmp_path / "in", photo_bytes[:8])
        policy = notify_policy(tmp_path / "policy.toml", tiny_vit, hook.url, attempts=1 if mode == "hang" else 3)
        env = labelq_env(broker=redis_url, models=[tiny_vit], local_root=str(tmp_path), chunk_size=8, batch_size=8,
                         policy=str(policy), outbox_timeout=2, visibility_timeout=20)
        w = procs.worker(env)
        started = time.monotonic()
        cli(["enqueue", str(tmp_path / "in"), "--job", f"W{mode}", "--wait"], env, cwd=tmp_path, timeout=60).check()
        assert time.monotonic() - started < 15  # acknowledged long before a hanging webhook's timeouts add up
        assert len(w.chunks_done()) == 1
        wait_until(lambda: len({k for k, _ in hook.posts}) == 8 and redis_client.zcard(lq_keys.OUTBOX_DUE) == 0,
                   timeout=60, every=0.5, what="every notification delivered or dead-lettered")
        keys = Counter(k for k, _ in hook.posts)
        assert len(keys) == 8
        outbox = cli(["moderate", "outbox"], env, cwd=tmp_path).check().stdout
        audit = cli(["moderate", "audit"], env, cwd=tmp_path).check().stdout
        if mode == "hang":
            assert set(keys.values()) == {1}  # one POST per object and policy version
            assert outbox.startswith("waiting 0, dead 8")
            assert audit.count("webhook dead-lettered after 1 attempts") == 8
        else:
            ok = Counter(k for k, status in hook.posts if status == 200)
            assert set(ok.values()) == {1} and len(ok) == 8  # one successful POST per object
            assert outbox.startswith("waiting 0, dead 0")
            assert "dead-lettered" not in audit
        # the job again, as a redelivered chunk would: nothing new is posted
        before = len(hook.posts)
        cli(["enqueue", str(tmp_path / "in"), "--job", f"W{mode}b", "--wait", "--force"], env, cwd=tmp_path,
            timeout=60).check()
        time.sleep(3)
        assert len(hook.posts) == before
    finally:
        hook.close()


@pytest.mark.parametrize("args", [["enqueue", "in", "--job", "J"], ["worker", "--devices", "cpu"], ["status", "J"],
                                  ["ping"], ["console"]], ids=lambda a: a[0])
def test_rabbitmq_without_a_job_state_redis_is_one_line_naming_what_to_set(args: list[str], tmp_path: Path) -> None:
    """Before: job state and records went silently to redis://localhost:6379/0, whatever answered there."""
    (tmp_path / "in").mkdir()
    env = labelq_env(broker="amqp://guest:guest@127.0.0.1:1//", results="postgresql://u:s3cret@127.0.0.1:1/db")
    result = cli(args, env, cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "LABELQ_REDIS_URL" in lines[0] and "job state needs Redis" in lines[0], lines
    assert "s3cret" not in lines[0]

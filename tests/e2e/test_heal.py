"""Records are the truth (issue 19): what Redis or the broker loses is healed from the record store and the source.

Real workers, real redis-servers: a purged queue mid-job, a message lost between the broker's BRPOP and
its ``unacked`` write (Redis at ``maxmemory``), Redis restarted empty mid-job and the job enqueued again
(records in the same Redis, then in PostgreSQL), a later job naming an object a moderation ``move`` took
away, and a chunk delivered twice. Each ends the same way: every object exactly once, the job ``done``,
``enqueue --wait`` exit 0, no operator.

Workers heal every second (``LABELQ_HEAL_INTERVAL=1``) and a chunk is lost after four seconds unseen
(``LABELQ_CHUNK_DEADLINE=4``).
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from labelq import keys
from tests.e2e.conftest import export_job, job_hash, job_status, once_each, write_photos
from tests.support.procs import free_port, wait_until
from tests.support.redis import queue_length
from tests.support.workers import Procs, cli, labelq_env

pytestmark = pytest.mark.slow

CHUNK = 8
HEAL = {"heal_interval": 1, "chunk_deadline": 4, "stall_timeout": 90, "chunk_retry_delay": 0.2}


def env_of(broker: str, model: Path, root: Path, **settings: Any) -> dict[str, str]:
    base: dict[str, Any] = {"batch_size": CHUNK, "chunk_size": CHUNK, "local_root": str(root), **HEAL}
    base.update(settings)
    return labelq_env(broker=broker, models=[model], **base)


def exactly_once(env: dict[str, str], job: str, cwd: Path, paths: list[Path], model: Path) -> list[dict[str, Any]]:
    """The job's export holds one record per object, none twice, and nothing else; its status agrees."""
    records = export_job(env, job, cwd)
    once_each(records, {p.as_uri() for p in paths}, str(model))
    st = job_status(env, job, cwd)
    assert st["state"] == "done", st
    assert (st["ok"] + st["error"], st["total"]) == (len(paths), len(paths)), st  # counters never past the total
    assert st["chunks_done"] <= st["chunks"], st
    return records


def wait_ok(client: Any, job: str, n: int, timeout: float = 90) -> None:
    wait_until(lambda: int(job_hash(client, job).get("ok", 0)) >= n, timeout=timeout, what=f"{n} records of {job}",
               every=0.05, describe=lambda: str(job_hash(client, job)))


# ---------------------------------------------------------------- the broker loses messages


def test_a_queue_purged_mid_job_is_published_again_and_the_job_ends_done(
        redis_url: str, redis_client: Any, procs: Procs, slow_vit: Path, photo_bytes: list[bytes],
        tmp_path: Path) -> None:
    paths = write_photos(tmp_path / "in", photo_bytes[:64])
    port = free_port()
    env = env_of(redis_url, slow_vit, tmp_path, chunks_in_flight=1, metrics_port=port)
    procs.worker(env)
    producer = procs.spawn(["enqueue", str(tmp_path / "in"), "--job", "P", "--wait"], env, name="producer")
    wait_ok(redis_client, "P", CHUNK)
    purged = queue_length(redis_client)
    redis_client.delete("labelq")  # the Celery queue list: what `celery purge` or a DEL does
    assert purged >= 2, "the queue was drained before it could be purged"
    assert producer.wait(120) == 0, producer.tail()
    st = job_status(env, "P", tmp_path)
    assert st["republished"] == purged  # each lost chunk published again once, no more
    exactly_once(env, "P", tmp_path, paths, slow_vit)
    shown = cli(["status", "P"], env, cwd=tmp_path).check().stdout
    assert f"republished {purged}" in " ".join(shown.split())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        scraped = resp.read().decode()
    assert f"labelq_chunks_republished_total {float(purged)}" in scraped


def test_a_message_lost_between_brpop_and_unacked_is_published_again(
        redis_url: str, redis_client: Any, procs: Procs, tiny_vit: Path, photo_bytes: list[bytes],
        tmp_path: Path) -> None:
    """kombu's Redis transport takes a message with BRPOP, then writes it to ``unacked``. A consumer that
    dies between the two (SIGKILL; or the write refused at ``maxmemory``) leaves it in neither place.
    Here a consumer connection does the BRPOP, as kombu does, and never writes ``unacked``."""
    paths = write_photos(tmp_path / "in", photo_bytes[:24])
    env = env_of(redis_url, tiny_vit, tmp_path)
    cli(["enqueue", str(tmp_path / "in"), "--job", "B"], env, cwd=tmp_path).check()
    assert queue_length(redis_client) == 3
    popped = redis_client.brpop(["labelq"], timeout=1)  # kombu's first step; the second never comes
    assert popped is not None and redis_client.hlen("unacked") == 0
    procs.worker(env)
    done = cli(["status", "B", "--follow"], env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    st = job_status(env, "B", tmp_path)
    assert st["republished"] == 1  # the one message lost, published again once
    exactly_once(env, "B", tmp_path, paths, tiny_vit)


# ---------------------------------------------------------------- Redis restarted empty


@pytest.mark.parametrize("records", ["redis", "postgresql"])
def test_redis_restarted_empty_mid_job_then_the_same_enqueue_again_labels_every_object_once(
        records: str, redis_factory: Any, procs: Procs, slow_vit: Path, photo_bytes: list[bytes], tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    server = redis_factory()  # no AOF, no RDB: a restart comes back empty
    results = request.getfixturevalue("postgres_url") if records == "postgresql" else server.url
    paths = write_photos(tmp_path / "in", photo_bytes[:24])
    env = env_of(server.url, slow_vit, tmp_path, results_url=results, chunks_in_flight=1, batch_size=2)
    worker = procs.worker(env)
    args = ["enqueue", str(tmp_path / "in"), "--job", "W"]
    cli(args, env, cwd=tmp_path).check()
    with server.client() as client:
        wait_until(lambda: (k := _bits(client, "W")) is not None and client.bitcount(k) > 0, timeout=90,
                   what="a chunk partly written", every=0.02, describe=worker.tail)
    server.stop()
    server.start()
    with server.client() as client:
        assert not client.keys("*"), "Redis came back with data"
    again = cli([*args, "--wait"], env, cwd=tmp_path, timeout=180)
    assert again.returncode == 0, again.stderr + worker.tail()
    exactly_once(env, "W", tmp_path, paths, slow_vit)


def _bits(client: Any, job: str) -> str | None:
    """The key of a chunk of ``job`` in flight (its bits), if any."""
    found = [k.decode() for k in client.scan_iter(match=keys.job_chunk_bits(job, "*"))]
    return found[0] if found else None


# ---------------------------------------------------------------- every object that reaches a worker has a record


def test_a_later_job_naming_an_object_moderation_moved_ends_with_not_found_records(
        redis_url: str, procs: Procs, tiny_vit: Path, photo_bytes: list[bytes], tmp_path: Path) -> None:
    paths = write_photos(tmp_path / "in", photo_bytes[:4])
    policy = tmp_path / "policy.toml"
    policy.write_text('version = "v1"\nquarantine_prefix = "quarantine/"\n\n'
                      f'[[rule]]\nmodel = {json.dumps(str(tiny_vit))}\nlabel = "nsfw"\nthreshold = 0.0\n'
                      'actions = ["move"]\n', encoding="utf-8")
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("".join(f"{p}\n" for p in paths), encoding="utf-8")
    env = env_of(redis_url, tiny_vit, tmp_path, policy=policy)
    procs.worker(env)
    cli(["enqueue", str(manifest), "--job", "first", "--wait"], env, cwd=tmp_path, timeout=120).check()
    wait_until(lambda: not any(p.exists() for p in paths), timeout=30, what="every object moved")
    later = cli(["enqueue", str(manifest), "--job", "later", "--wait"], env, cwd=tmp_path, timeout=120)
    assert later.returncode == 0, later.stderr
    recs = exactly_once(env, "later", tmp_path, paths, tiny_vit)
    assert {(r["status"], r["error_kind"]) for r in recs} == {("error", "not_found")}
    first = exactly_once(env, "first", tmp_path, paths, tiny_vit)
    assert {r["status"] for r in first} == {"ok"}  # the first job's records stand


# ---------------------------------------------------------------- double delivery


@pytest.mark.parametrize("records", ["redis", "sqlite"])
def test_a_chunk_delivered_twice_counts_once_in_records_and_counters(
        records: str, redis_url: str, redis_client: Any, procs: Procs, tiny_vit: Path, photo_bytes: list[bytes],
        tmp_path: Path) -> None:
    """Every message of the job is sent a second time (same task id: a broker redelivery) and each chunk is
    also sent under another chunk id (what a republish after a lost ack can do), while the workers run."""
    from labelq.config import Settings
    from labelq.objects import ObjectRef
    from labelq.producer import publish
    from labelq.tasks import make_app

    results = f"sqlite:///{tmp_path / 'records.db'}" if records == "sqlite" else redis_url
    paths = write_photos(tmp_path / "in", photo_bytes[:32])
    env = env_of(redis_url, tiny_vit, tmp_path, results_url=results)
    cli(["enqueue", str(tmp_path / "in"), "--job", "D"], env, cwd=tmp_path).check()
    payloads = {c.decode(): json.loads(v) for c, v in redis_client.hgetall(keys.job_payloads("D")).items()}
    assert len(payloads) == 32 // CHUNK
    settings = Settings(broker_url=redis_url, queue="labelq")
    app = make_app(settings)
    try:
        for chunk, doc in payloads.items():
            refs = [ObjectRef.from_json(r) for r in doc["refs"]]
            publish(app, settings, "D", refs, doc["models"], chunk)  # the same chunk again
            publish(app, settings, "D", refs, doc["models"], chunk + ":copy")  # the same objects, another chunk id
    finally:
        app.close()
    procs.workers(env, [None, None], names=[None, "w2"])
    cli(["status", "D", "--follow"], env, cwd=tmp_path, timeout=120).check()
    wait_until(lambda: queue_length(redis_client) == 0, timeout=60, what="every copy consumed")
    time.sleep(2)  # copies still running write their records: they must count nothing
    exactly_once(env, "D", tmp_path, paths, tiny_vit)
    h = job_hash(redis_client, "D")
    assert (int(h["ok"]) + int(h["error"]), h["state"]) == (32, "done")

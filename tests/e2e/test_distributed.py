"""Distributed mode end to end: real `labelq worker` processes, Redis, moto's S3 over HTTP.

The module starts two workers once and shares them: ``cpu@host`` through the
launcher (``labelq worker --devices cpu``) and ``w2@host`` through the Celery CLI
(``celery -A labelq.worker worker --pool solo -n w2@%h``), both on their own Redis
database. Tests that need other settings (RabbitMQ, a SQL result table, no
workers at all) start their own and use the per-test database ``redis_url``.
"""

from __future__ import annotations

import re
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from labelq import keys
from labelq.jobs import JobBook
from labelq.records import Record
from labelq.results import TABLE
from labelq.testing import CORPUS_MAX_PIXELS
from tests.e2e.conftest import RedisDB, job_hash, put_objects
from tests.support.procs import wait_until
from tests.support.redis import RedisMonitor, queue_length, queued_chunks
from tests.support.workers import Procs, Worker, by_key, cli, labelq_env, read_jsonl

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
VIT_LABELS = {"normal", "nsfw"}
BATCH = 8
CHUNK = 16


class Cluster:
    """Two workers on one Redis database, and what a test needs to drive them."""

    def __init__(self, env: dict[str, str], db: RedisDB, workers: list[Worker], bucket: str, s3: Any,
                 folder: Path, model: str) -> None:
        self.env, self.db, self.workers, self.bucket, self.s3 = env, db, workers, bucket, s3
        self.folder, self.model = folder, model

    def cli(self, *args: str, timeout: float = 120, **extra: str) -> Any:
        return cli(list(args), {**self.env, **extra}, timeout=timeout, cwd=self.folder)

    def enqueue_wait(self, source: str, job: str, *models: str, extra: tuple[str, ...] = (), timeout: float = 180) -> Any:
        args = ["enqueue", source, "--job", job, "--chunk-size", str(CHUNK), "--wait", *extra]
        for m in models or (self.model,):
            args += ["--model", m]
        return self.cli(*args, timeout=timeout).check()

    def export(self, job: str) -> list[dict[str, Any]]:
        out = self.folder / f"{job}.jsonl"
        result = self.cli("export", job, "--format", "jsonl", "-o", str(out)).check()
        records = read_jsonl(out)
        assert f"wrote {len(records)} records" in result.stderr
        return records

    def status(self, job: str) -> dict[str, Any]:
        import json

        return json.loads(self.cli("status", job, "--json").check().stdout)


@pytest.fixture(scope="module")
def cluster(redis_db: RedisDB, module_bucket: str, s3_client: Any, s3_server: Any, tiny_vit: Path,
            module_procs: Procs, tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    env = labelq_env(broker=redis_db.url, models=[tiny_vit], s3=s3_server.endpoint_url, batch_size=BATCH,
                     max_pixels=CORPUS_MAX_PIXELS)
    # Load the job book's scripts into the server now, so no EVALSHA below fails with NOSCRIPT.
    book = JobBook(redis_db.client)
    book.open("warm-up", source="-", models=["-"])
    book.record("warm-up", [("c", 0, Record("s3://warm/up.jpg", None, "-"))])
    book.finish_listing("warm-up", 1, 1)
    redis_db.flush()
    workers = module_procs.workers(env, [None, "w2"])
    return Cluster(env, redis_db, workers, module_bucket, s3_client, tmp_path_factory.mktemp("cluster"), str(tiny_vit))


# ---------------------------------------------------------------- a whole job across two workers


def test_a_job_of_224_images_across_two_workers(cluster: Cluster, photo_bytes: list[bytes],
                                                corpus_bytes: dict[str, bytes], corpus: Any) -> None:
    objects = {f"big/p_{i:04d}.jpg": data for i, data in enumerate(photo_bytes[:200])}
    objects.update({f"big/c_{name}": data for name, data in corpus_bytes.items()})
    etags = put_objects(cluster.s3, cluster.bucket, objects)
    put_objects(cluster.s3, cluster.bucket, {"big/README.txt": b"not an image suffix"})
    expected = {uri: "ok" for uri in etags}
    for name, kind in corpus.expected.items():
        expected[f"s3://{cluster.bucket}/big/c_{name}"] = kind
    n, n_bad = len(expected), sum(1 for k in expected.values() if k != "ok")
    assert (n, n_bad) == (224, 6)
    before = [w.chunks_done() for w in cluster.workers]

    with RedisMonitor(lambda: redis.Redis.from_url(cluster.db.url)) as monitor:
        result = cluster.enqueue_wait(f"s3://{cluster.bucket}/big", "big")
    assert result.stdout.strip() == "big"  # the job id is what stdout carries
    assert f"listed {n}, enqueued {n} in {n // CHUNK} chunks" in result.stderr

    records = cluster.export("big")
    pairs = by_key(records)
    assert len(records) == len(pairs) == n  # one record per (image, model), none twice
    assert {uri for uri, _ in pairs} == set(expected)
    nodes = {w.node for w in cluster.workers}
    for rec in records:
        assert rec["model"] == cluster.model and rec["job"] == "big"
        assert rec["etag"] == etags[rec["uri"]]
        assert rec["worker"] in nodes
        assert TIMESTAMP.fullmatch(rec["processed_at"])
        if expected[rec["uri"]] == "ok":
            assert rec["status"] == "ok" and rec["error_kind"] is None, rec
            assert rec["label"] in VIT_LABELS and 0 < rec["score"] <= 1
            assert rec["top_k"][0] == {"label": rec["label"], "score": rec["score"]} and len(rec["top_k"]) == 2
        else:
            assert (rec["status"], rec["error_kind"]) == ("error", expected[rec["uri"]]), rec
            assert rec["error"] and rec["label"] is None and rec["top_k"] == []

    # both workers did some of it, and their logs agree with the records
    by_worker = Counter(rec["worker"] for rec in records)
    assert set(by_worker) == nodes and min(by_worker.values()) > 0, by_worker
    for w, old in zip(cluster.workers, before, strict=True):
        done = [c for c in w.chunks_done() if c not in old and c[0] == "big"]
        assert sum(images for _, _, images, _ in done) == by_worker[w.node]
    # two round trips per batch written: the records (one pipeline of HSETs into the record hashes), then one
    # EVALSHA of the job book's record script that counts them; nothing else writes per object
    import hashlib

    from labelq.jobs import _RECORD_LUA

    batches = (n // CHUNK) * (CHUNK // BATCH)
    sent = monitor.from_clients()
    record_sha = hashlib.sha1(_RECORD_LUA.encode()).hexdigest()
    writes = [c for c in sent if c[0].upper() == "EVALSHA" and c[1] == record_sha]
    assert len(writes) == batches, (len(writes), batches)
    record_hashes = {keys.records(cluster.model), keys.job_records("big", cluster.model)}
    in_flight = {keys.job_payloads("big"), keys.job_inflight("big")}  # per chunk: what the heal republishes
    writes = [c for c in sent if c[0].upper() in ("HSET", "HMSET", "HSETNX", "HDEL", "HINCRBY", "DEL")
              and any(w.startswith(keys.PREFIX) for w in c[1:2]) and c[1] != keys.job("big")
              and c[1] not in record_hashes]
    writes_outside = [c for c in writes if c[1] not in in_flight]
    assert not writes_outside, writes_outside[:3]  # every count is written by the script
    assert len(writes) - len(writes_outside) <= 2 * (n // CHUNK)  # the chunk registry: once a chunk, not once an object

    status = cluster.status("big")
    assert (status["state"], status["total"], status["processed"]) == ("done", n, n)
    assert (status["ok"], status["error"]) == (n - n_bad, n_bad)
    assert status["errors"] == dict(Counter(k for k in corpus.expected.values() if k != "ok"))
    text = cluster.cli("status", "big").check().stdout
    assert re.search(r"state\s*│\s*done", text) and re.search(rf"total\s*│\s*{n}\b", text)
    assert re.search(rf"records failed\s*│\s*{n_bad}\b", text)
    # nothing waits in the queue and nothing is held unacknowledged
    assert queue_length(cluster.db.client) == 0
    assert cluster.db.client.hlen("unacked") == 0


def test_a_worker_with_two_models_writes_two_records_per_image(cluster: Cluster, photo_bytes: list[bytes],
                                                                tiny_timm: Path) -> None:
    etags = put_objects(cluster.s3, cluster.bucket, {f"two/p_{i:03d}.jpg": d for i, d in enumerate(photo_bytes[:40])})
    models = [cluster.model, str(tiny_timm)]
    cluster.enqueue_wait(f"s3://{cluster.bucket}/two", "two", *models)
    records = cluster.export("two")
    pairs = by_key(records)
    assert len(records) == len(pairs) == 2 * len(etags)
    assert set(pairs) == {(uri, m) for uri in etags for m in models}
    for rec in records:
        assert rec["status"] == "ok", rec
        if rec["model"] == models[0]:
            assert rec["label"] in VIT_LABELS and len(rec["top_k"]) == 2
        else:
            assert rec["label"] not in VIT_LABELS and len(rec["top_k"]) == 5  # ImageNet classes
    status = cluster.status("two")
    assert (status["state"], status["total"], status["expected"], status["ok"]) == ("done", 40, 80, 80)
    # the second model was loaded on first use, once per worker that got a chunk, and kept
    logs = "".join(w.text() for w in cluster.workers)
    assert 1 <= logs.count(f"{tiny_timm} ready") <= 2


def test_a_second_job_skips_what_is_labelled_and_force_relabels(cluster: Cluster, photo_bytes: list[bytes]) -> None:
    objects = {f"skip/p_{i:03d}.jpg": d for i, d in enumerate(photo_bytes[40:60])}
    etags = put_objects(cluster.s3, cluster.bucket, objects)
    source = f"s3://{cluster.bucket}/skip"
    cluster.enqueue_wait(source, "skip-a")
    first = {r["uri"]: r for r in cluster.export("skip-a")}

    again = cluster.enqueue_wait(source, "skip-b", timeout=30)
    assert "enqueued 0 in 0 chunks, skipped 20 already labelled" in again.stderr
    status = cluster.status("skip-b")
    assert (status["state"], status["total"], status["ok"], status["skipped"], status["chunks"]) == ("done", 20, 20, 20, 0)
    second = {r["uri"]: r for r in cluster.export("skip-b")}
    # the stored records, not new ones (processed_at and all), now part of skip-b's result
    assert {u: {**r, "job": "skip-a"} for u, r in second.items()} == first
    assert {r["job"] for r in second.values()} == {"skip-b"}

    changed = "skip/p_007.jpg"
    new_etag = put_objects(cluster.s3, cluster.bucket, {changed: photo_bytes[61]})
    assert set(new_etag.values()) != {etags[f"s3://{cluster.bucket}/{changed}"]}
    third = cluster.enqueue_wait(source, "skip-c")
    assert "enqueued 1 in 1 chunk, skipped 19 already labelled" in third.stderr
    records = {r["uri"]: r for r in cluster.export("skip-c")}
    uri = f"s3://{cluster.bucket}/{changed}"
    assert records[uri]["etag"] == new_etag[uri] and records[uri]["processed_at"] > first[uri]["processed_at"]
    assert all({**records[u], "job": "skip-a"} == first[u] for u in records if u != uri)

    forced = cluster.enqueue_wait(source, "skip-d", extra=("--force",))
    assert "enqueued 20 in 2 chunks, skipped 0" in forced.stderr
    relabelled = cluster.export("skip-d")
    assert len(relabelled) == 20
    assert all(r["job"] == "skip-d" and r["processed_at"] > records[r["uri"]]["processed_at"] for r in relabelled)


def test_no_visibility_warning_with_default_settings(cluster: Cluster) -> None:
    """Chunks of tiny-model images are far inside the default visibility timeout: no start-up warning."""
    assert all("visibility_timeout" not in w.text() for w in cluster.workers)


# ---------------------------------------------------------------- resume of an interrupted enqueue


def test_an_enqueue_killed_mid_listing_resumes_without_duplicates(redis_url: str, redis_client: Any, procs: Procs,
                                                                 tmp_path: Path, tiny_vit: Path) -> None:
    """No workers: what the producer published stays in the queue, where the test counts it.

    A kill that lands between reserving a chunk's place and moving the cursor makes the resumed producer
    relist that one group: its chunk id comes from its content, and it is published again (the first copy
    may never have gone out): at most that one chunk twice, under one task id, which a worker runs once
    (see test_reliability). Everything else is listed, counted and published once.
    """
    n, size = 5000, 5
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("".join(f"s3://bkt/m/{i:05d}.jpg\n" for i in range(n)))
    env = labelq_env(broker=redis_url, models=[tiny_vit], max_queued_chunks=0)
    args = ["enqueue", str(manifest), "--job", "resume", "--chunk-size", str(size)]

    producer = procs.spawn(args, env, name="producer")
    wait_until(lambda: int(job_hash(redis_client, "resume").get("listed", 0)) >= 1000, timeout=60,
               what="1000 objects listed", every=0.01, describe=producer.tail)
    producer.signal(signal.SIGKILL, group=True)
    producer.wait(10)
    killed = job_hash(redis_client, "resume")
    assert killed["state"] == "listing" and 1000 <= int(killed["listed"]) < n, killed

    result = cli(args, env, cwd=tmp_path).check()
    assert f"(resumed after {killed['listed']})" in result.stderr

    state = job_hash(redis_client, "resume")
    assert (int(state["total"]), int(state["listed"]), int(state["enqueued"])) == (n, n, n), state
    assert int(state["chunks"]) == n // size
    chunks = queued_chunks(redis_client)
    twice = sorted(str(c) for c, k in Counter(c.chunk for c in chunks).items() if k > 1)
    assert len(twice) <= 1, f"published twice: {twice} (killed at listed={killed['listed']}, chunks={killed['chunks']})"
    assert all(c.task_id == c.chunk for c in chunks)
    assert queue_length(redis_client) == len(chunks) == n // size + len(twice)
    listed = Counter(uri for c in {c.chunk: c for c in chunks}.values() for uri in c.uris)
    assert set(listed.values()) == {1} and len(listed) == n


# ---------------------------------------------------------------- other brokers and result stores


def test_rabbitmq_broker_with_redis_job_state(amqp_url: str, redis_url: str, redis_client: Any, s3_server: Any,
                                             s3_client: Any, s3_bucket: str, tiny_vit: Path, photo_bytes: list[bytes],
                                             corpus_bytes: dict[str, bytes], corpus: Any, procs: Procs,
                                             tmp_path: Path) -> None:
    objects = {f"r/p_{i:03d}.jpg": d for i, d in enumerate(photo_bytes[100:130])}
    broken = {name: kind for name, kind in corpus.expected.items() if kind != "ok"}
    objects.update({f"r/c_{name}": corpus_bytes[name] for name in broken})
    put_objects(s3_client, s3_bucket, objects)
    env = labelq_env(broker=amqp_url, redis=redis_url, models=[tiny_vit], s3=s3_server.endpoint_url,
                     max_pixels=CORPUS_MAX_PIXELS)
    worker = procs.worker(env, name="rabbit")
    result = cli(["enqueue", f"s3://{s3_bucket}/r", "--job", "rmq", "--chunk-size", "8", "--wait"], env,
                 cwd=tmp_path, timeout=120).check()
    assert "listed 36, enqueued 36" in result.stderr
    out = tmp_path / "r.jsonl"
    cli(["export", "rmq", "-o", str(out)], env, cwd=tmp_path).check()
    records = read_jsonl(out)
    assert len(records) == len(by_key(records)) == 36
    kinds = {r["uri"].rsplit("/c_", 1)[-1]: r["error_kind"] for r in records if r["status"] == "error"}
    assert kinds == broken
    assert {r["worker"] for r in records} == {worker.node}
    assert "Connected to amqp://" in worker.text()
    assert not any(redis_client.llen(k) for k in redis_client.keys("labelq*") if redis_client.type(k) == b"list")


def test_records_land_in_postgresql_and_export_still_works(postgres_url: str, redis_url: str, redis_client: Any,
                                                           s3_server: Any, s3_client: Any, s3_bucket: str,
                                                           tiny_vit: Path, photo_bytes: list[bytes], procs: Procs,
                                                           tmp_path: Path) -> None:
    import sqlalchemy as sa

    etags = put_objects(s3_client, s3_bucket, {f"sql/p_{i:03d}.jpg": d for i, d in enumerate(photo_bytes[200:230])})
    env = labelq_env(broker=redis_url, results=postgres_url, models=[tiny_vit], s3=s3_server.endpoint_url)
    procs.worker(env, name="sql")
    cli(["enqueue", f"s3://{s3_bucket}/sql", "--job", "sql-job", "--chunk-size", "8", "--wait"], env, cwd=tmp_path,
        timeout=120).check()

    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT uri, etag, status, label FROM {TABLE} WHERE job = 'sql-job'")).all()
    finally:
        engine.dispose()
    assert {r.uri: r.etag for r in rows} == etags
    assert all(r.status == "ok" and r.label in VIT_LABELS for r in rows)
    assert not redis_client.keys(keys.records("*"))  # records went to SQL only; Redis holds job state

    out = tmp_path / "sql.jsonl"
    cli(["export", "sql-job", "-o", str(out)], env, cwd=tmp_path).check()
    exported = read_jsonl(out)
    assert {(r["uri"], r["label"]) for r in exported} == {(r.uri, r.label) for r in rows}
    assert len(exported) == 30

    # a second job over the same source finds the records in PostgreSQL and skips them
    again = cli(["enqueue", f"s3://{s3_bucket}/sql", "--job", "sql-again", "--wait"], env, cwd=tmp_path,
                timeout=60).check()
    assert "enqueued 0 in 0 chunks, skipped 30" in again.stderr

"""Reliability and security, with the damage done for real (issue 4).

Workers are SIGKILLed and SIGTERMed mid-chunk (Redis restarted mid-job: test_resilience.py),
the producer is killed mid-listing, bad and hostile input goes through the whole
distributed path, a pickled message is pushed into the queue, and credentials are
looked for in every log and output. Every test here is marked ``slow``.

Timing: ``pair`` runs two workers with ``LABELQ_VISIBILITY_TIMEOUT=20`` (twice the
smallest allowed: a chunk held on a loaded machine must not be redelivered by the
timeout) and a ViT-S (~0.1 s per image per core), so a chunk of 16 takes about two
seconds: long enough to kill a worker in the middle of one.
"""

from __future__ import annotations

import json
import pickle
import random
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import pytest

from labelq import keys
from labelq.testing import CORPUS_MAX_PIXELS
from tests.e2e.conftest import PasswordRedis, RedisDB, job_hash, jpeg, png, put_objects
from tests.support.moto import empty_bucket
from tests.support.procs import wait_until
from tests.support.redis import queue_length, queued_chunks, unacked_chunks
from tests.support.workers import Procs, Worker, by_key, chunk_executions, cli, labelq_env, read_jsonl

pytestmark = pytest.mark.slow

VT = 20  # LABELQ_VISIBILITY_TIMEOUT of `pair`: seconds (a loaded 2-core CI machine can take over 10 s for a chunk)
CHUNK = 16
BATCH = 8


def export(env: dict[str, str], job: str, folder: Path) -> list[dict[str, Any]]:
    out = folder / f"{job}-{uuid.uuid4().hex[:6]}.jsonl"
    cli(["export", job, "-o", str(out)], env, cwd=folder).check()
    return read_jsonl(out)


def wait_done(client: Any, job: str, timeout: float, describe: Any = None) -> dict[str, str]:
    return wait_until(lambda: (h := job_hash(client, job)).get("state") == "done" and h, timeout=timeout,
                      what=f"job {job} done", every=0.25,
                      describe=lambda: f"job: {job_hash(client, job)}\n" + (describe() if describe else ""))


def assert_exactly_once(records: list[dict[str, Any]], uris: set[str], model: str) -> None:
    pairs = by_key(records)
    twice = {k: len(v) for k, v in pairs.items() if len(v) > 1}
    assert not twice, f"records written twice: {twice}"
    assert set(pairs) == {(u, model) for u in uris}


# ---------------------------------------------------------------- two workers to kill


class Pair:
    """Two launcher workers (``cpu@host``, ``w2@host``) on one Redis database, restartable."""

    def __init__(self, env: dict[str, str], db: RedisDB, w1: Worker, w2: Worker, bucket: str, s3: Any,
                 folder: Path, model: str, procs: Procs) -> None:
        self.env, self.db, self.w1, self.w2 = env, db, w1, w2
        self.bucket, self.s3, self.folder, self.model, self.procs = bucket, s3, folder, model, procs

    @property
    def workers(self) -> list[Worker]:
        return [self.w1, self.w2]

    def ensure_up(self) -> None:
        for w in self.workers:
            if not w.alive():
                w.stop()
                w.start()
        for w in self.workers:
            w.wait_ready(180)

    def upload(self, prefix: str, photos: list[bytes]) -> set[str]:
        return set(put_objects(self.s3, self.bucket, {f"{prefix}/p_{i:04d}.jpg": d for i, d in enumerate(photos)}))

    def enqueue(self, prefix: str, job: str) -> Any:
        return cli(["enqueue", f"s3://{self.bucket}/{prefix}", "--job", job, "--chunk-size", str(CHUNK)], self.env,
                   cwd=self.folder).check()

    def items_written(self, job: str, chunk: str) -> int:
        """(object, model) pairs of a chunk in flight counted so far (its bits: one set bit per pair)."""
        return int(self.db.client.bitcount(keys.job_chunk_bits(job, chunk)))

    def wait_in_flight(self, w: Worker, job: str, timeout: float = 60, *,
                       skip: Collection[str] = ()) -> tuple[str, Any]:
        """A task of ``job`` that ``w`` is running now, and its chunk (read from the broker's unacked hash)."""

        def running() -> tuple[str, Any] | None:
            held = unacked_chunks(self.db.client)
            for task_id in w.in_flight():
                chunk = held.get(task_id)
                if chunk is not None and chunk.job == job and chunk.chunk not in skip:
                    return task_id, chunk
            return None

        return wait_until(running, timeout=timeout, what=f"a chunk of {job} in flight on {w.node}", every=0.02,
                          describe=lambda: w.tail(20))

    def kill_mid_chunk(self, w: Worker, job: str, *, skip: set[str], timeout: float = 90) -> dict[str, Any]:
        """SIGKILL ``w`` once a chunk it runs is partly written: its first batch is in, the rest is not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task_id, chunk = self.wait_in_flight(w, job, skip=skip)
            while task_id in w.in_flight():
                if 0 < self.items_written(job, chunk.chunk) < len(chunk.uris):
                    w.kill()  # launcher and worker, SIGKILL, no warning
                    return {"chunk": chunk.chunk, "refs": len(chunk.uris), "at": time.monotonic(),
                            "written": self.items_written(job, chunk.chunk)}
                time.sleep(0.02)
        raise AssertionError(f"never caught {w.node} in the middle of a chunk of {job}")


@pytest.fixture(scope="module")
def pair(redis_db: RedisDB, module_bucket: str, s3_client: Any, s3_server: Any, slow_vit: Path,
         module_procs: Procs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    env = labelq_env(broker=redis_db.url, models=[slow_vit], s3=s3_server.endpoint_url, visibility_timeout=VT,
                     batch_size=BATCH, chunk_size=CHUNK)
    w1, w2 = module_procs.workers(env, [None, None], names=[None, "w2"])
    p = Pair(env, redis_db, w1, w2, module_bucket, s3_client, tmp_path_factory.mktemp("pair"), str(slow_vit),
             module_procs)
    yield p


@pytest.fixture
def up(pair: Pair) -> Iterator[Pair]:
    """``pair`` with both workers running at the start of the test; their log tails are printed if it fails."""
    pair.ensure_up()
    try:
        yield pair
    finally:
        print("\n".join(f"==== {w.node}\n{w.tail(40)}" for w in pair.workers))


def test_sigkill_mid_chunk_three_times_loses_nothing_and_counts_nothing_twice(up: Pair,
                                                                               photo_bytes: list[bytes]) -> None:
    """Kill w1, w2, then w1 again, each in the middle of a chunk, restarting each at once but the last."""
    pair, job = up, "kill"
    n_images = 256
    uris = pair.upload("kill", photo_bytes[:n_images])
    pair.enqueue("kill", job)
    kills: list[dict[str, Any]] = []
    victims = [pair.w1, pair.w2, pair.w1]
    for n, victim in enumerate(victims):
        victim.wait_ready(180)
        kills.append(pair.kill_mid_chunk(victim, job, skip={k["chunk"] for k in kills}))
        if n < len(victims) - 1:
            victim.start()
        else:
            # kombu puts an unacknowledged message back when a worker's consumer starts (or on a sweep
            # every ~100 s, see test_a_dead_workers_chunk_is_redelivered...): start the last one once
            # the visibility timeout has passed, so that its start-up returns every killed chunk.
            time.sleep(max(0.0, kills[-1]["at"] + VT + 1 - time.monotonic()))
            victim.start()
    state = wait_done(pair.db.client, job, timeout=150, describe=pair.procs.logs)

    assert len(kills) == 3
    assert all(0 < k["written"] < k["refs"] for k in kills), f"a kill did not land mid-chunk: {kills}"
    done = chunk_executions(pair.workers, job)
    assert all(done.get(k["chunk"], 0) >= 1 for k in kills), (kills, done)  # every killed chunk was redone
    finished = {c.decode() for c in pair.db.client.smembers(keys.job_chunks_done(job))}
    assert set(done) == finished and len(finished) == n_images // CHUNK
    assert (int(state["total"]), int(state["ok"]), int(state["error"])) == (n_images, n_images, 0)
    records = export(pair.env, job, pair.folder)
    assert_exactly_once(records, uris, pair.model)
    assert all(r["status"] == "ok" for r in records)
    assert queue_length(pair.db.client) == 0 and pair.db.client.hlen("unacked") == 0


def test_sigterm_finishes_the_current_chunk_and_nothing_is_redelivered(up: Pair, photo_bytes: list[bytes]) -> None:
    pair, job = up, "term"
    earlier = Counter(t for w in pair.workers for t in w.received(since_start=False))
    uris = pair.upload("term", photo_bytes[400:496])
    pair.enqueue("term", job)
    task_id, chunk = pair.wait_in_flight(pair.w1, job)
    # `labelq worker` works on LABELQ_CHUNKS_IN_FLIGHT (2) chunks at once: the second decodes beside the first
    wait_until(lambda: len(pair.w1.in_flight()) == 2, timeout=20, what="two chunks in flight on w1", every=0.02)
    time.sleep(0.3)
    assert task_id in pair.w1.in_flight()
    held = unacked_chunks(pair.db.client)
    holding = {held[t].chunk for t in pair.w1.in_flight() if t in held}  # its chunks in flight (up to 2)
    code = pair.w1.terminate(timeout=60)  # SIGTERM to `labelq worker`, which passes it on
    assert code == 0, pair.w1.tail()
    log = pair.w1.text(since_start=True)
    finished = [c for j, c, _, _ in pair.w1.chunks_done(since_start=True) if j == job]
    assert chunk.chunk in holding and len(holding) == 2
    assert holding <= set(finished), f"{holding - set(finished)} not finished before the worker stopped\n{log[-3000:]}"
    assert set(finished[-len(holding):]) == holding  # the last ones it finished: it took no new one after the signal
    assert "Warm shutdown" in log

    pair.w1.start()
    state = wait_done(pair.db.client, job, timeout=120, describe=pair.procs.logs)
    done = chunk_executions(pair.workers, job)
    finished = {c.decode() for c in pair.db.client.smembers(keys.job_chunks_done(job))}
    assert done == dict.fromkeys(finished, 1) and len(finished) == 96 // CHUNK  # each chunk ran exactly once
    received = Counter(t for w in pair.workers for t in w.received(since_start=False)) - earlier
    assert len(received) == 96 // CHUNK and max(received.values()) == 1, f"a task was delivered twice: {received}"
    assert (int(state["ok"]), int(state["total"])) == (96, 96)
    assert_exactly_once(export(pair.env, job, pair.folder), uris, pair.model)


def test_a_dead_workers_chunk_is_redelivered_after_the_visibility_timeout(up: Pair, photo_bytes: list[bytes]) -> None:
    """DESIGN: LABELQ_VISIBILITY_TIMEOUT is the "seconds before an unacknowledged chunk is redelivered".

    A worker dies for good (no restart) in the middle of a chunk; the surviving worker
    must pick the chunk up once the timeout has passed (a few seconds of slack), not
    whenever kombu's throttled sweep next runs.
    """
    pair, job = up, "dead"
    # A fresh w2: kombu sweeps for expired messages when a consumer starts and then every
    # unacked_restore_interval × unacked_restore_throttle seconds (10 × 10 by default).
    pair.w2.terminate()
    pair.w2.start()
    pair.w2.wait_ready(180)
    pair.upload("dead", photo_bytes[560:608])
    pair.enqueue("dead", job)
    _, chunk = pair.wait_in_flight(pair.w1, job)
    time.sleep(0.5)
    pair.w1.kill()
    killed_at = time.monotonic()
    try:
        wait_until(lambda: chunk.chunk in {c for j, c, _, _ in pair.w2.chunks_done() if j == job},
                   timeout=VT + 15, what=f"{chunk.chunk} redone by {pair.w2.node} within {VT + 15}s of the kill",
                   every=0.25)
        assert time.monotonic() - killed_at >= VT - 1  # and not before the timeout
    finally:
        pair.w1.start()  # its start-up returns the chunk; the job ends before the next test
        wait_done(pair.db.client, job, timeout=60)


# ---------------------------------------------------------------- the producer dies


def test_a_producer_killed_right_after_a_publish_runs_that_chunk_once(redis_url: str, redis_client: Any,
                                                                       procs: Procs, tmp_path: Path,
                                                                       tiny_vit: Path) -> None:
    """The worst moment to die: a chunk is in the queue but the job does not know yet.

    The producer is frozen (SIGSTOP) at random moments until it is caught exactly
    there (the queue holds more chunks than the job's ``chunks`` counter), then
    SIGKILLed. Publishing to the broker and moving the listing cursor cannot be one
    atomic step, so enqueueing the same job again relists that group: its chunk has the
    same content-derived id, is found still waiting and is not published again (and were
    it published twice, both copies carry the chunk id as their task id, and the worker
    that finishes the first skips the second: JobBook.started).
    """
    n, size = 3000, 5
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("".join(f"s3://bkt/m/{i:05d}.jpg\n" for i in range(n)))
    env = labelq_env(broker=redis_url, models=[tiny_vit], max_queued_chunks=0)
    args = ["enqueue", str(manifest), "--job", "worst", "--chunk-size", str(size)]
    producer = procs.spawn(args, env, name="producer")
    wait_until(lambda: int(job_hash(redis_client, "worst").get("chunks", 0)) >= 10, timeout=60, what="10 chunks",
               every=0.01, describe=producer.tail)
    caught = False
    for _ in range(500):
        producer.signal(signal.SIGSTOP, group=True)
        time.sleep(0.02)  # let commands already on the wire land
        state = job_hash(redis_client, "worst")
        if queue_length(redis_client) > int(state.get("chunks", 0)):
            caught = True
            break
        if state.get("state") != "listing":
            break
        producer.signal(signal.SIGCONT, group=True)
        time.sleep(random.uniform(0.0005, 0.004))
    if not caught:
        pytest.skip("never caught the producer between a publish and its bookkeeping (it was too quick)")
    producer.signal(signal.SIGKILL, group=True)
    producer.wait(10)

    cli(args, env, cwd=tmp_path).check()
    state = job_hash(redis_client, "worst")
    assert (int(state["total"]), int(state["enqueued"]), int(state["chunks"])) == (n, n, n // size)
    chunks = queued_chunks(redis_client)
    twice = [c for c, k in Counter(c.chunk for c in chunks).items() if k > 1]
    assert len(twice) <= 1, f"more than the one chunk caught mid-publish went out twice: {twice}"
    assert all(c.task_id == c.chunk for c in chunks)  # a chunk's copies share one task id
    once = {c.chunk: c for c in chunks}
    assert Counter(u for c in once.values() for u in c.uris) == Counter(
        {f"s3://bkt/m/{i:05d}.jpg": 1 for i in range(n)})
    if twice:  # what a worker does with the two copies: label the first, skip the second
        from labelq.jobs import JobBook

        book = JobBook(redis_client)
        assert book.started("worst", twice[0]) is False
        book.chunk_done("worst", twice[0])
        assert book.started("worst", twice[0]) is True


# ---------------------------------------------------------------- bad input through the distributed path


class BadWorker:
    """One worker with small limits, started on demand (after an enqueue, when a test needs that)."""

    def __init__(self, env: dict[str, str], procs: Procs, db: RedisDB, folder: Path) -> None:
        self.env, self.procs, self.db, self.folder = env, procs, db, folder
        self.worker: Worker | None = None

    def start(self) -> Worker:
        if self.worker is None:
            self.worker = self.procs.worker(self.env, name="bad")
        return self.worker


MAX_BYTES = 600_000  # every corpus file fits (the largest is ~0.5 MB)


@pytest.fixture(scope="module")
def bad(second_db: RedisDB, s3_server: Any, tiny_vit: Path, module_procs: Procs,
        tmp_path_factory: pytest.TempPathFactory) -> BadWorker:
    # Its own database: `pair` must not take these chunks. A chunk size of 4000 with a 10 s visibility
    # timeout is a misconfiguration the worker must warn about at start-up (enqueues pass --chunk-size).
    env = labelq_env(broker=second_db.url, models=[tiny_vit], s3=s3_server.endpoint_url, max_bytes=MAX_BYTES,
                     max_pixels=CORPUS_MAX_PIXELS, batch_size=BATCH, visibility_timeout=VT, chunk_size=4000)
    return BadWorker(env, module_procs, second_db, tmp_path_factory.mktemp("bad"))


def test_bad_input_becomes_typed_error_records_and_batch_mates_are_labelled(
    bad: BadWorker, s3_client: Any, s3_bucket: str, corpus: Any, corpus_bytes: dict[str, bytes],
    photo_bytes: list[bytes]
) -> None:
    expected: dict[str, str] = {}
    objects: dict[str, bytes] = {}
    special = {
        "too_big.jpg": (jpeg((900, 700), noise=True, quality=98), "too_large"),  # > MAX_BYTES
        "too_many_pixels.png": (png((4000, 3000)), "too_large"),  # 12 Mpx > 10 Mpx, under twice
        "deleted.jpg": (photo_bytes[700], "not_found"),  # deleted after listing
        "denied.jpg": (photo_bytes[701], "access_denied"),  # bucket policy denies GetObject
    }
    assert len(special["too_big.jpg"][0]) > MAX_BYTES
    files = {name: (corpus_bytes[name], kind) for name, kind in corpus.expected.items()} | special
    broken = sorted(n for n, (_, k) in files.items() if k != "ok")
    good = sorted(n for n, (_, k) in files.items() if k == "ok") + [f"photo_{i}.jpg" for i in range(12)]
    # listing order = key order: one broken file between good ones, so every batch of 8 mixes them
    order = []
    for i, name in enumerate(good):
        order.append(name)
        if i % 3 == 2 and broken:
            order.append(broken.pop())
    order += broken
    for i, name in enumerate(order):
        key = f"bad/{i:03d}_{name}"
        objects[key] = files[name][0] if name in files else photo_bytes[710 + int(name[6:-4])]
        expected[f"s3://{s3_bucket}/{key}"] = files[name][1] if name in files else "ok"
    put_objects(s3_client, s3_bucket, objects)
    denied = next(k for k in objects if k.endswith("_denied.jpg"))
    s3_client.put_bucket_policy(Bucket=s3_bucket, Policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:GetObject",
                       "Resource": f"arn:aws:s3:::{s3_bucket}/{denied}"}],
    }))
    try:
        result = cli(["enqueue", f"s3://{s3_bucket}/bad", "--job", "bad", "--chunk-size", "16"], bad.env,
                     cwd=bad.folder).check()
        assert f"listed {len(objects)}" in result.stderr
        s3_client.delete_object(Bucket=s3_bucket, Key=next(k for k in objects if k.endswith("_deleted.jpg")))
        worker = bad.start()  # only now: the object was listed, then deleted, before any worker saw it
        state = wait_done(bad.db.client, "bad", timeout=120, describe=worker.tail)
        records = export(bad.env, "bad", bad.folder)
    finally:
        empty_bucket(s3_client, s3_bucket)  # drops the policy too

    model = bad.env["LABELQ_MODELS"]
    assert_exactly_once(records, set(expected), model)
    got = {r["uri"]: r for r in records}
    for uri, kind in expected.items():
        rec = got[uri]
        if kind == "ok":
            assert rec["status"] == "ok" and rec["label"] in ("normal", "nsfw"), rec
        else:
            assert (rec["status"], rec["error_kind"]) == ("error", kind), rec
            assert rec["error"] and rec["error"].strip(), rec
    assert "LABELQ_MAX_BYTES" in got[f"s3://{s3_bucket}/{next(k for k in objects if k.endswith('_too_big.jpg'))}"]["error"]
    assert "pixels" in got[f"s3://{s3_bucket}/{next(k for k in objects if k.endswith('_too_many_pixels.png'))}"]["error"]
    # batch-mates: in listing order, every batch of 8 that holds a bad file holds good ones, all labelled
    listing = sorted(expected)
    batches = [listing[i : i + 8] for i in range(0, len(listing), 8)]
    mixed = [b for b in batches if {expected[u] == "ok" for u in b} == {True, False}]
    assert len(mixed) >= 4
    assert all(got[u]["status"] == "ok" for b in mixed for u in b if expected[u] == "ok")
    n_bad = sum(1 for k in expected.values() if k != "ok")
    assert (int(state["ok"]), int(state["error"])) == (len(expected) - n_bad, n_bad)


def test_a_visibility_timeout_shorter_than_a_chunk_is_warned_about_at_start_up(bad: BadWorker) -> None:
    text = bad.start().text()
    warnings = [line for line in text.splitlines() if "visibility_timeout" in line]
    assert warnings, text[-3000:]
    assert "LABELQ_VISIBILITY_TIMEOUT" in warnings[0] and "LABELQ_CHUNK_SIZE" in warnings[0]


def test_start_up_logs_go_through_the_workers_logging(bad: BadWorker) -> None:
    """Models load (and the visibility check runs) before Celery sets up logging: nothing may be lost.

    The worker's log lines look like ``[time: LEVEL/MainProcess] message``; the start-up
    warning must be one of them (not a bare line from logging's last-resort handler),
    and the INFO line each model logs when loaded and warmed up must be there at all.
    """
    text = bad.start().text()
    model = bad.env["LABELQ_MODELS"]
    bare = [line for line in text.splitlines() if line.startswith("visibility_timeout")]
    assert not bare, f"logged before Celery set up logging (no time, no level): {bare}"
    assert re.search(r"WARNING/MainProcess\] .*visibility_timeout", text), text[-3000:]
    loaded = re.search(rf"INFO/MainProcess\] .*{re.escape(model)} ready \(warm-up batch", text)
    assert loaded, f"the model's 'ready (warm-up batch ...)' line is missing from the worker log:\n{text[-2000:]}"


def test_retry_reenqueues_only_retryable_failures(bad: BadWorker, s3_client: Any, s3_bucket: str,
                                                  photo_bytes: list[bytes], corpus_bytes: dict[str, bytes]) -> None:
    worker = bad.start()
    objects = {f"retry/p_{i:02d}.jpg": photo_bytes[730 + i] for i in range(10)}
    objects["retry/truncated.jpg"] = corpus_bytes["truncated.jpg"]
    put_objects(s3_client, s3_bucket, objects)
    # GLACIER objects cannot be read (InvalidObjectState): a storage_error, which a retry may fix
    put_objects(s3_client, s3_bucket, {"retry/glacier.jpg": photo_bytes[745]}, StorageClass="GLACIER")
    glacier, truncated = f"s3://{s3_bucket}/retry/glacier.jpg", f"s3://{s3_bucket}/retry/truncated.jpg"
    cli(["enqueue", f"s3://{s3_bucket}/retry", "--job", "retry", "--chunk-size", "8", "--wait"], bad.env,
        cwd=bad.folder, timeout=90).check()
    first = {r["uri"]: r for r in export(bad.env, "retry", bad.folder)}
    assert (first[glacier]["error_kind"], first[truncated]["error_kind"]) == ("storage_error", "corrupt")
    dead = cli(["status", "retry", "--errors"], bad.env, cwd=bad.folder).check().stdout
    assert "storage_error" in dead and "glacier.jpg" in dead and "truncated.jpg" in dead

    put_objects(s3_client, s3_bucket, {"retry/glacier.jpg": photo_bytes[745]})  # restored: readable again
    result = cli(["retry", "retry", "--wait"], bad.env, cwd=bad.folder, timeout=90).check()
    assert "re-enqueued 1 object" in result.stderr

    after = {r["uri"]: r for r in export(bad.env, "retry", bad.folder)}
    assert len(after) == 12
    assert after[glacier]["status"] == "ok" and after[glacier]["processed_at"] > first[glacier]["processed_at"]
    assert after[truncated] == first[truncated]  # not retryable: not touched
    assert all(after[u] == first[u] for u in first if u != glacier)  # nor were the labelled ones
    state = job_hash(bad.db.client, "retry")
    assert (state["state"], state["ok"], state["error"]) == ("done", "11", "1")
    assert worker.alive()


# ---------------------------------------------------------------- security


class _Touch:
    """Unpickling this creates ``path``: proof that a pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def pickled_task(url: str, marker: Path) -> str:
    """Push a Celery-shaped ``labelq.label_chunk`` message whose body is a pickle; returns its task id."""
    from kombu import Connection

    task_id = str(uuid.uuid4())
    body: tuple[Any, ...] = ((_Touch(marker),), {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None})
    with Connection(url) as conn:
        conn.Producer().publish(
            body, serializer="pickle", exchange="", routing_key="labelq",
            headers={"lang": "py", "task": "labelq.label_chunk", "id": task_id, "root_id": task_id,
                     "parent_id": None, "group": None, "retries": 0, "argsrepr": "()", "kwargsrepr": "{}"},
        )
    return task_id


def test_a_pickled_message_is_refused_and_never_executed_and_no_secret_is_printed(
    password_redis: PasswordRedis, s3_server: Any, s3_client: Any, s3_bucket: str, tiny_vit: Path,
    photo_bytes: list[bytes], procs: Procs, tmp_path: Path
) -> None:
    secret = password_redis.password
    marker, control = tmp_path / "PWNED", tmp_path / "control"
    pickle.loads(pickle.dumps(_Touch(control)))
    assert control.exists()  # the payload is live: loading it is enough to create the file

    env = labelq_env(broker=password_redis.url, models=[tiny_vit], s3=s3_server.endpoint_url)
    worker = procs.worker(env)
    pickled_task(password_redis.url, marker)
    wait_until(lambda: "application/x-python-serialize" in worker.text(), timeout=30,
               what="the refusal in the worker log", describe=worker.tail)

    put_objects(s3_client, s3_bucket, {f"sec/p_{i}.jpg": photo_bytes[750 + i] for i in range(10)})
    outputs = []
    run = cli(["enqueue", f"s3://{s3_bucket}/sec", "--job", "sec", "--wait"], env, cwd=tmp_path, timeout=90).check()
    outputs += [run.stdout, run.stderr]
    for args in (["status", "sec"], ["status", "sec", "--json"], ["status", "sec", "--errors"], ["jobs"],
                 ["export", "sec"], ["ping"]):
        r = cli(args, env, cwd=tmp_path)
        assert r.returncode == 0 or args == ["ping"], r
        outputs += [r.stdout, r.stderr]
    unreachable = password_redis.url.replace(f":{password_redis.port}/", ":1/")
    bad_url = cli(["status", "sec"], {**env, "LABELQ_BROKER_URL": unreachable}, cwd=tmp_path)
    assert bad_url.returncode != 0  # Redis unreachable: the error names the URL, without its password
    outputs += [bad_url.stdout, bad_url.stderr]

    assert not marker.exists(), "the pickled message was executed"
    log = worker.text()
    assert re.search(r"Refusing to deserialize untrusted content of type pickle", log), log[-3000:]
    with password_redis.client() as client:
        assert queue_length(client) == 0 and client.hlen("unacked") == 0  # rejected, not looping
        assert job_hash(client, "sec")["state"] == "done"  # and the worker went on working
    assert worker.alive()
    assert f"127.0.0.1:{password_redis.port}" in log  # the broker URL is logged...
    for text in [log, *outputs]:
        assert secret not in text  # ...never its password
    assert any("***" in t or "**@" in t for t in [log, bad_url.stderr])

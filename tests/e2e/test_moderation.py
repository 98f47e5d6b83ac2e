"""Background moderation end to end: uploads → events → `labelq listen` → live worker → policy actions → audit.

Real parts only: the session's redis-server, moto's S3 and SQS over HTTP, and real
`labelq worker --live --devices cpu` and `labelq listen` processes started from the
console script, configured through LABELQ_* variables as a user would.

Thresholds. The tiny random ViT scores every image at about 0.51-0.55 "nsfw", so a
fixed threshold would put everything on one side. The module first scores a few
generated images in this process with the same classifier and engine code the worker
runs (same weights, same decode, CPU fp32: identical scores up to ~1e-7), keeps the
highest and lowest scoring ones (HIGH and LOW, at least 0.01 apart), and writes the
worker's policy with its threshold half-way between them: HIGH is acted on, LOW is
not. The "stricter" policy's threshold is just under LOW's score, so it fires on both,
and only LOW still has actions left to take.

All of the module shares one live worker (its model loads once) on a Redis database
of its own (``redis_db``); each test has its own bucket, job, events list and listener, so tests do
not see each other's objects.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import re
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import numpy as np
import pytest
from PIL import Image

from labelq import keys
from labelq.config import Settings
from labelq.engine import Engine
from labelq.jobs import JobBook
from labelq.models import load_classifier
from labelq.moderation import Action, iter_audit
from labelq.objects import ObjectRef, Stores, file_uri, s3_uri
from labelq.records import Record, decode_body
from labelq.testing import texture
from tests.e2e.conftest import RedisDB
from tests.support.moto import MotoServer
from tests.support.procs import Proc, wait_until
from tests.support.workers import HOSTNAME, Procs, cli, labelq_env

pytestmark = pytest.mark.slow

LIVE_QUEUE = "labelq.live"
NOTIFY_STREAM = "labelq:e2e-notify"
POLICY_VERSION = "e2e-1"
STRICT_VERSION = "e2e-2-stricter"
ACTIONS = ("tag", "notify", "move")  # the order they are applied in: move last
AUDIT_FIELDS = ("uri", "model", "label", "score", "policy_version", "action", "result", "time")
SUCCEEDED = re.compile(r"Task labelq\.label_one\[[0-9a-f-]+\] succeeded in [\d.]+s: (\{.*\})")
RECEIVED = re.compile(r"Task labelq\.label_one\[[0-9a-f-]+\] received")
WAIT = 60.0  # seconds for one upload to be scored and acted on (it takes about a second)


# ------------------------------------------------------------------ images and thresholds


@dataclass(frozen=True)
class Sample:
    data: bytes
    score: float  # "nsfw" score the tiny ViT gives it


@dataclass(frozen=True)
class Scored:
    high: Sample
    low: Sample

    @property
    def threshold(self) -> float:
        return (self.high.score + self.low.score) / 2

    @property
    def stricter(self) -> float:
        return self.low.score - 0.005


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(texture(np.random.default_rng([20261125, seed]), (320, 240)), "RGB").save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def scored(tiny_vit: Path, tmp_path_factory: pytest.TempPathFactory) -> Scored:
    """Score candidates in-process with the worker's own code; keep the highest and the lowest."""
    folder = tmp_path_factory.mktemp("candidates")
    candidates = {}
    for seed in range(10):
        path = folder / f"c{seed}.png"
        candidates[file_uri(path)] = png(seed)
        path.write_bytes(candidates[file_uri(path)])
    settings = Settings(device="cpu")
    clf = load_classifier(str(tiny_vit), settings)
    with Engine([clf], Stores(settings, local_root=folder), settings) as engine:
        records = [r for batch in engine.run(ObjectRef(u) for u in candidates) for r in batch]
    nsfw = {r.uri: next(t["score"] for t in r.top_k if t["label"] == "nsfw") for r in records}
    ranked = sorted(nsfw, key=nsfw.__getitem__)
    low, high = ranked[0], ranked[-1]
    assert nsfw[high] - nsfw[low] > 0.01, f"candidate scores too close to split with a threshold: {nsfw}"
    return Scored(Sample(candidates[high], nsfw[high]), Sample(candidates[low], nsfw[low]))


def flat(text: str) -> str:
    """Console output with rich's line wrapping undone."""
    return " ".join(text.split())


def policy_text(model: str, threshold: float, version: str) -> str:
    return (
        f"version = {json.dumps(version)}\n"
        'quarantine_prefix = "quarantine/"\n\n'
        f"[notify]\nstream = {json.dumps(NOTIFY_STREAM)}\n\n"
        f"[[rule]]\nmodel = {json.dumps(model)}\nlabel = \"nsfw\"\nthreshold = {threshold!r}\n"
        'actions = ["tag", "move", "notify"]\n'
    )


# ------------------------------------------------------------------ the stack


@dataclass
class Stack:
    procs: Procs
    worker: Proc
    env: dict[str, str]
    redis: Any
    s3: Any
    endpoint: str
    model: str
    scored: Scored
    folder: Path

    # --- uploads and events

    def upload(self, bucket: str, key: str, data: bytes) -> tuple[str, str, int]:
        """put_object; the object's (uri, etag, size)."""
        etag = self.s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType="image/png")["ETag"].strip('"')
        return s3_uri(bucket, key), etag, len(data)

    def minio_event(self, bucket: str, key: str, etag: str, size: int) -> str:
        """One entry as MinIO's Redis target (access format) RPUSHes it; keys are URL-encoded."""
        record = {
            "eventVersion": "2.0",
            "eventSource": "minio:s3",
            "awsRegion": "",
            "eventTime": datetime.now().astimezone().isoformat(timespec="milliseconds"),
            "eventName": "s3:ObjectCreated:Put",
            "s3": {
                "s3SchemaVersion": "1.0",
                "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                "object": {"key": quote_plus(key), "size": size, "eTag": etag, "contentType": "image/png",
                           "sequencer": uuid.uuid4().hex[:16].upper()},
            },
        }
        return json.dumps([{"Event": [record], "EventTime": record["eventTime"]}])

    # --- processes

    def listener(self, job: str, *args: str, **settings: Any) -> Proc:
        env = {**self.env, **{f"LABELQ_{k.upper()}": str(v) for k, v in settings.items()}}
        p = self.procs.spawn(["listen", "--job", job, *args], env, name=f"listen-{job}")
        p.wait_for(lambda t: "listening to" in t, timeout=60, what="'listening to ...'")
        return p

    def labelq(self, *args: str, timeout: float = 120) -> Any:
        return cli(list(args), self.env, timeout=timeout, cwd=self.folder)

    # --- what happened

    def succeeded(self) -> list[dict[str, Any]]:
        """The return values of every label_one task the worker finished (from its log)."""
        text = self.worker.text()
        return [ast.literal_eval(m) for m in SUCCEEDED.findall(text)]  # Celery logs the dict's repr

    def tasks_for(self, uri: str) -> int:
        return sum(1 for r in self.succeeded() if r["uri"] == uri)

    def wait_done(self, uri: str, n: int = 1) -> None:
        """Until the worker finished n label_one tasks for uri (a task ends after its record and actions)."""
        wait_until(lambda: self.tasks_for(uri) >= n, timeout=WAIT, what=f"label_one task for {uri}",
                   describe=self.procs.logs)

    def record(self, uri: str) -> Record | None:
        raw = self.redis.hget(keys.records(self.model), uri)
        return decode_body(raw) if raw is not None else None

    def raw_record(self, uri: str) -> bytes | None:
        return self.redis.hget(keys.records(self.model), uri)

    def audit(self, uri: str | None = None) -> list[Action]:
        return [a for a in iter_audit(self.redis) if uri is None or a.uri == uri]

    def notified(self, uri: str) -> list[dict[str, str]]:
        entries = [{k.decode(): v.decode() for k, v in data.items()} for _, data in self.redis.xrange(NOTIFY_STREAM)]
        return [e for e in entries if e["uri"] == uri]

    def keys_in(self, bucket: str) -> set[str]:
        return {o["Key"] for o in self.s3.list_objects_v2(Bucket=bucket).get("Contents", [])}

    def tags(self, bucket: str, key: str) -> dict[str, str]:
        return {t["Key"]: t["Value"] for t in self.s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}

    def job(self, job: str) -> Any:
        return JobBook(self.redis).info(job)


@pytest.fixture(scope="module")
def stack(
    redis_db: RedisDB, s3_server: MotoServer, s3_client: Any, tiny_vit: Path, scored: Scored,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """A live worker for the module, on a Redis database of its own (other tests flush db 0)."""
    url, client = redis_db.url, redis_db.client
    folder = tmp_path_factory.mktemp("moderation")
    policy = folder / "policy.toml"
    policy.write_text(policy_text(str(tiny_vit), scored.threshold, POLICY_VERSION), encoding="utf-8")
    env = labelq_env(
        broker=url, models=[tiny_vit], s3=s3_server.endpoint_url, policy=policy, max_batch_size=4,
        batch_timeout=0.05, fetch_threads=4, decode_threads=1, sqs_endpoint_url=s3_server.endpoint_url,
    )
    procs = Procs(folder / "logs")
    try:
        worker = procs.spawn(["worker", "--live", "--devices", "cpu"], env, name="live-worker")
        node = f"live-cpu@{HOSTNAME}"
        worker.wait_for(lambda t: f"worker {node} ready" in t, timeout=180, what=f"'worker {node} ready'")
        yield Stack(procs, worker, env, client, s3_client, s3_server.endpoint_url, str(tiny_vit), scored, folder)
    finally:
        procs.close()


# ------------------------------------------------------------------ tests


def test_an_upload_over_threshold_is_acted_on_and_one_under_is_untouched(stack: Stack, s3_bucket: str) -> None:
    job = "acted"
    events = f"events:{job}"
    listener = stack.listener(job, "--minio", events_key=events)
    hi_key, lo_key = "uploads/high one.png", "uploads/low.png"  # a space: '+' in the event, %20 in the uri
    hi_uri, hi_etag, hi_size = stack.upload(s3_bucket, hi_key, stack.scored.high.data)
    lo_uri, lo_etag, lo_size = stack.upload(s3_bucket, lo_key, stack.scored.low.data)
    stack.redis.rpush(events, stack.minio_event(s3_bucket, hi_key, hi_etag, hi_size))
    stack.redis.rpush(events, stack.minio_event(s3_bucket, lo_key, lo_etag, lo_size))
    stack.wait_done(hi_uri)
    stack.wait_done(lo_uri)

    # Scored: one ok record each, with the score this process computed for the same bytes.
    for uri, etag, image in ((hi_uri, hi_etag, stack.scored.high), (lo_uri, lo_etag, stack.scored.low)):
        rec = stack.record(uri)
        assert rec is not None and rec.ok, rec
        assert rec.etag == etag and rec.job == job and rec.model == stack.model
        nsfw = next(t["score"] for t in rec.top_k if t["label"] == "nsfw")
        assert nsfw == pytest.approx(image.score, abs=1e-4)
    info = stack.job(job)
    assert (info.listed, info.ok, info.error) == (2, 2, 0)

    # Over the threshold: tagged, moved to quarantine/, notified; each action audited once, ok.
    assert stack.keys_in(s3_bucket) == {lo_key, f"quarantine/{hi_key}"}
    tags = stack.tags(s3_bucket, f"quarantine/{hi_key}")
    assert tags["labelq-label"] == "nsfw"
    assert tags["labelq-policy"] == POLICY_VERSION
    assert float(tags["labelq-score"]) == pytest.approx(stack.scored.high.score, abs=1e-4)
    [note] = stack.notified(hi_uri)
    assert note["label"] == "nsfw" and note["policy_version"] == POLICY_VERSION and note["job"] == job
    assert note["model"] == stack.model
    audit = stack.audit(hi_uri)
    assert sorted(a.action for a in audit) == sorted(ACTIONS)
    assert all(a.result == "ok" for a in audit), audit
    [move] = [a for a in audit if a.action == "move"]
    assert move.detail == s3_uri(s3_bucket, f"quarantine/{hi_key}")  # the quarantine copy's canonical URI

    # Under the threshold: still in place, no tags, no notification, nothing audited.
    assert stack.tags(s3_bucket, lo_key) == {}
    assert stack.notified(lo_uri) == []
    assert stack.audit(lo_uri) == []
    assert listener.alive()


def test_a_stricter_policy_acts_on_stored_scores_only_after_a_dry_run(stack: Stack, s3_bucket: str) -> None:
    job = "live"  # the listener's default job
    events = f"events:{job}"
    stack.listener(job, "--minio", events_key=events)
    hi_key, lo_key = "strict/high.png", "strict/low.png"
    hi_uri, hi_etag, hi_size = stack.upload(s3_bucket, hi_key, stack.scored.high.data)
    lo_uri, lo_etag, lo_size = stack.upload(s3_bucket, lo_key, stack.scored.low.data)
    for key, etag, size in ((hi_key, hi_etag, hi_size), (lo_key, lo_etag, lo_size)):
        stack.redis.rpush(events, stack.minio_event(s3_bucket, key, etag, size))
    stack.wait_done(hi_uri)
    stack.wait_done(lo_uri)
    assert stack.keys_in(s3_bucket) == {lo_key, f"quarantine/{hi_key}"}  # the live policy acted on HIGH only

    stricter = stack.folder / "stricter.toml"
    stricter.write_text(policy_text(stack.model, stack.scored.stricter, STRICT_VERSION), encoding="utf-8")
    records_before = {u: stack.raw_record(u) for u in (hi_uri, lo_uri)}
    tasks_before = (len(RECEIVED.findall(stack.worker.text())), len(stack.succeeded()))
    audit_before = stack.audit()
    applied_before = stack.redis.hgetall(keys.ACTIONS)

    # Dry run: says what would change (LOW's three actions; HIGH's were taken already), changes nothing.
    dry = stack.labelq("moderate", "apply", job, "--policy", str(stricter), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    would = [line for line in dry.stdout.splitlines() if line.startswith("would ")]
    assert sorted(line.split(":")[0] for line in would) == ["would move", "would notify", "would tag"]
    assert all(lo_uri in line and f"nsfw={stack.scored.low.score:.3f}" in line for line in would), would
    assert "would take 3 actions" in flat(dry.stderr)
    assert stack.keys_in(s3_bucket) == {lo_key, f"quarantine/{hi_key}"}
    assert stack.tags(s3_bucket, lo_key) == {}
    assert stack.audit() == audit_before
    assert stack.redis.hgetall(keys.ACTIONS) == applied_before
    assert stack.notified(lo_uri) == []

    # The real thing: LOW is tagged, moved and notified under the new version; HIGH is left alone.
    applied = stack.labelq("moderate", "apply", job, "--policy", str(stricter))
    assert applied.returncode == 0, applied.stderr
    assert "took 3 actions (move ok: 1, notify ok: 1, tag ok: 1)" in flat(applied.stderr)
    assert stack.keys_in(s3_bucket) == {f"quarantine/{lo_key}", f"quarantine/{hi_key}"}
    assert stack.tags(s3_bucket, f"quarantine/{lo_key}")["labelq-policy"] == STRICT_VERSION
    assert stack.tags(s3_bucket, f"quarantine/{hi_key}")["labelq-policy"] == POLICY_VERSION
    lo_audit = stack.audit(lo_uri)
    assert sorted(a.action for a in lo_audit) == sorted(ACTIONS)
    assert {(a.policy_version, a.result) for a in lo_audit} == {(STRICT_VERSION, "ok")}
    assert {a.policy_version for a in stack.audit(hi_uri)} == {POLICY_VERSION}  # not re-applied
    assert len(stack.audit(hi_uri)) == 3
    [note] = stack.notified(lo_uri)
    assert note["policy_version"] == STRICT_VERSION

    # Stored scores only: no task ran, no record was rewritten, nothing waits on the live queue.
    time.sleep(1.0)  # a task sent by mistake would be received well within this
    assert (len(RECEIVED.findall(stack.worker.text())), len(stack.succeeded())) == tasks_before
    assert {u: stack.raw_record(u) for u in (hi_uri, lo_uri)} == records_before
    assert stack.redis.llen(LIVE_QUEUE) == 0

    # Applying the same policy again finds nothing left to do.
    again = stack.labelq("moderate", "apply", job, "--policy", str(stricter))
    assert again.returncode == 0 and "took 0 actions (nothing to do)" in flat(again.stderr)


def test_every_action_is_in_the_audit_export_as_csv_and_jsonl(stack: Stack, s3_bucket: str) -> None:
    job = "audited"
    events = f"events:{job}"
    stack.listener(job, "--minio", events_key=events)
    uri, etag, size = stack.upload(s3_bucket, "a/flagged.png", stack.scored.high.data)
    started = datetime.now().astimezone()
    stack.redis.rpush(events, stack.minio_event(s3_bucket, "a/flagged.png", etag, size))
    stack.wait_done(uri)

    csv_file = stack.folder / "audit.csv"
    out = stack.labelq("moderate", "audit", "--job", job, "--format", "csv", "-o", str(csv_file))
    assert out.returncode == 0, out.stderr
    assert "wrote 3 audit entries" in flat(out.stderr)
    with csv_file.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    jsonl = stack.labelq("moderate", "audit", "--job", job)  # jsonl to stdout is the default
    assert jsonl.returncode == 0, jsonl.stderr
    lines = [json.loads(line) for line in jsonl.stdout.splitlines() if line.strip()]

    assert len(rows) == len(lines) == 3
    for entries in (rows, lines):
        assert sorted(e["action"] for e in entries) == sorted(ACTIONS)
        for e in entries:
            assert all(str(e[f]) for f in AUDIT_FIELDS), e  # every field present and filled
            assert e["uri"] == uri and e["model"] == stack.model and e["label"] == "nsfw"
            assert float(e["score"]) == pytest.approx(stack.scored.high.score, abs=1e-4)
            assert e["policy_version"] == POLICY_VERSION and e["result"] == "ok" and e["job"] == job
            when = datetime.fromisoformat(str(e["time"]).replace("Z", "+00:00"))
            assert started.timestamp() - 5 <= when.timestamp() <= time.time() + 5
    assert [(r["action"], r["time"]) for r in rows] == [(e["action"], e["time"]) for e in lines]

    # --job filters: another job's actions are not in this export.
    others = stack.labelq("moderate", "audit", "--job", "no-such-job")
    assert others.returncode == 0 and others.stdout.strip() == ""
    bad = stack.labelq("moderate", "audit", "--format", "parquet")
    assert bad.returncode != 0 and "audit format must be jsonl or csv" in flat(bad.stderr)


def test_duplicate_events_are_harmless(stack: Stack, s3_bucket: str) -> None:
    job = "dupes"
    events = f"events:{job}"
    key = "dup/flagged.png"
    uri, etag, size = stack.upload(s3_bucket, key, stack.scored.high.data)
    event = stack.minio_event(s3_bucket, key, etag, size)
    s3_format = json.dumps({"Records": json.loads(event)[0]["Event"]})  # the same upload, S3's own format
    for raw in (event, event, s3_format, "{not an event", event):
        stack.redis.rpush(events, raw)
    listener = stack.listener(job, "--minio", events_key=events)
    wait_until(lambda: stack.redis.llen(events) == 0, timeout=WAIT, what="the listener to drain its list")
    stack.wait_done(uri)
    time.sleep(1.5)  # room for a second task, were one sent

    assert stack.tasks_for(uri) == 1
    info = stack.job(job)
    assert (info.listed, info.enqueued, info.ok, info.error) == (1, 1, 1, 0)
    assert stack.redis.hlen(keys.job_records(job, stack.model)) == 1  # one record of the object in the job
    assert sorted(a.action for a in stack.audit(uri)) == sorted(ACTIONS)
    assert len(stack.notified(uri)) == 1
    assert stack.keys_in(s3_bucket) == {f"quarantine/{key}"}

    listener.signal(signal.SIGINT)  # Ctrl-C: the listener prints its counts and exits
    listener.wait(30)
    assert "enqueued 1, duplicates 3, malformed 1" in flat(listener.text())


def test_a_redelivered_task_after_a_move_keeps_the_ok_record(stack: Stack, s3_bucket: str) -> None:
    """At-least-once delivery: a label_one task run twice (a worker lost before its ack) must be harmless.

    The first run moved the object to quarantine/, so the second one finds nothing at its key.
    It must neither act again nor replace the object's ok record with a not_found error.
    """
    from labelq.worker import LIVE_TASK, make_app

    job = "redelivered"
    events = f"events:{job}"
    key = "again/flagged.png"
    stack.listener(job, "--minio", events_key=events)
    uri, etag, size = stack.upload(s3_bucket, key, stack.scored.high.data)
    stack.redis.rpush(events, stack.minio_event(s3_bucket, key, etag, size))
    stack.wait_done(uri)
    first = stack.record(uri)
    assert first is not None and first.ok

    settings = Settings(broker_url=stack.env["LABELQ_BROKER_URL"])
    app = make_app(settings)
    try:  # what the broker hands out again when a worker died between the write and the ack
        app.send_task(LIVE_TASK, args=[job, [uri, size, etag], [stack.model], None], queue=LIVE_QUEUE)
    finally:
        app.close()
    stack.wait_done(uri, n=2)

    assert len(stack.audit(uri)) == 3  # actions once
    after = stack.record(uri)
    assert after is not None
    assert after.ok, f"the redelivered task replaced the ok record with {after.status}/{after.error_kind}: {after.error}"
    info = stack.job(job)
    assert (info.ok, info.error) == (1, 0)


def reencoded(data: bytes) -> bytes:
    """The same pixels (so the same score) in different PNG bytes (so a different etag)."""
    buf = io.BytesIO()
    with Image.open(io.BytesIO(data)) as im:
        im.save(buf, "PNG", compress_level=1)
    assert buf.getvalue() != data
    return buf.getvalue()


@pytest.mark.parametrize("same_bytes", [False, True], ids=["new-content", "same-file-again"])
def test_a_new_upload_at_a_quarantined_key_is_moderated_again(stack: Stack, s3_bucket: str, same_bytes: bool) -> None:
    """Once an object was moved out, whatever is uploaded at its key later is a new object to moderate.

    Neither the event de-duplication nor the once-per-object action bookkeeping may let a second
    flagged upload at that key stay in place (new content, or the very same file uploaded again).
    """
    job = f"reupload-{same_bytes}"
    events = f"events:{job}"
    key = "again/flagged.png"
    stack.listener(job, "--minio", events_key=events)
    uri, etag, size = stack.upload(s3_bucket, key, stack.scored.high.data)
    stack.redis.rpush(events, stack.minio_event(s3_bucket, key, etag, size))
    stack.wait_done(uri)
    assert stack.keys_in(s3_bucket) == {f"quarantine/{key}"}

    second = stack.scored.high.data if same_bytes else reencoded(stack.scored.high.data)
    _, etag2, size2 = stack.upload(s3_bucket, key, second)
    assert (etag2 == etag) is same_bytes
    stack.redis.rpush(events, stack.minio_event(s3_bucket, key, etag2, size2))  # a new PUT: a new event
    wait_until(lambda: stack.redis.llen(events) == 0, timeout=WAIT, what="the listener to take the event")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (stack.tasks_for(uri) < 2 or key in stack.keys_in(s3_bucket)):
        time.sleep(0.2)

    assert stack.tasks_for(uri) == 2, "the second upload was never labelled"
    assert key not in stack.keys_in(s3_bucket), "the second flagged upload was left in place"
    assert [a.action for a in stack.audit(uri)].count("move") == 2
    assert len(stack.notified(uri)) == 2


def test_an_object_moved_into_quarantine_is_not_acted_on_again(stack: Stack, s3_bucket: str) -> None:
    """The move is a CopyObject: a bucket notified on every ObjectCreated (MinIO's usual set-up)
    sends an event for the quarantine copy too. Acting on it again would move it to
    quarantine/quarantine/..., whose own event moves it again, and so on.
    """
    job = "loop"
    events = f"events:{job}"
    key = "loop/flagged.png"
    stack.listener(job, "--minio", events_key=events)
    uri, etag, size = stack.upload(s3_bucket, key, stack.scored.high.data)
    stack.redis.rpush(events, stack.minio_event(s3_bucket, key, etag, size))
    stack.wait_done(uri)
    held = f"quarantine/{key}"
    assert stack.keys_in(s3_bucket) == {held}

    stack.redis.rpush(events, stack.minio_event(s3_bucket, held, etag, size))  # what the bucket sends for the copy
    wait_until(lambda: stack.redis.llen(events) == 0, timeout=WAIT, what="the listener to take the event")
    held_uri = s3_uri(s3_bucket, held)
    deadline = time.monotonic() + 5  # the listener may skip it (no task), or a task may label it: wait for it
    while time.monotonic() < deadline and stack.tasks_for(held_uri) == 0:
        time.sleep(0.2)

    assert stack.keys_in(s3_bucket) == {held}, f"the quarantined copy was moved again: {stack.keys_in(s3_bucket)}"
    assert stack.audit(held_uri) == []
    assert stack.notified(held_uri) == []


def test_an_s3_notification_on_sqs_is_enqueued_and_deleted(stack: Stack, s3_bucket: str) -> None:
    import boto3

    sqs = boto3.client("sqs", endpoint_url=stack.endpoint, region_name="us-east-1")
    queue_url = sqs.create_queue(QueueName=f"labelq-e2e-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    try:
        job = "from-sqs"
        key = "sqs/photo 1.png"
        uri, etag, size = stack.upload(s3_bucket, key, stack.scored.low.data)
        record = json.loads(stack.minio_event(s3_bucket, key, etag, size))[0]["Event"][0]
        record.update(eventSource="aws:s3", eventName="ObjectCreated:Put", awsRegion="us-east-1")
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}))
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"Records": [record]}))

        listener = stack.listener(job, "--sqs", queue_url)
        stack.wait_done(uri)
        rec = stack.record(uri)
        assert rec is not None and rec.ok and rec.job == job and rec.etag == etag
        assert stack.job(job).listed == 1  # the test event was skipped

        def queue_empty() -> bool:
            attrs = sqs.get_queue_attributes(
                QueueUrl=queue_url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )["Attributes"]
            return attrs == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}

        # Deleted, not just received: a received message stays "not visible" for 30 s, then comes back.
        wait_until(queue_empty, timeout=30, what="both SQS messages deleted")
        assert listener.alive()
    finally:
        sqs.delete_queue(QueueUrl=queue_url)

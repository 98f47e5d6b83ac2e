"""Moderation latency: from upload to record and to action, against ``batch_timeout``.

``python -m bench.latency`` starts a private Redis and moto's S3 over HTTP, then for
each ``batch_timeout`` a live worker (``labelq worker --live --devices cpu``) and
``labelq listen --minio``, and uploads a steady stream of JPEGs (``--rate`` per
second for ``--seconds``), each followed by a MinIO-format bucket event pushed to
the Redis list the listener reads, as MinIO's Redis target would. It reports, per
setting, the p50/p95/p99 of

* **upload → record**: the record's ``processed_at`` minus the moment ``put_object``
  returned. ``processed_at`` is stamped when the object's batch goes into the model,
  so this is event + queue + fetch + decode + the batch's wait, not the forward pass;
* **upload → action**: the audit time of the object's last policy action minus the
  same moment: everything, model, record write and the actions (tag, move, notify).

The policy fires on every object (threshold 0 on ``nsfw``: the random-weight
models' scores mean nothing, and every object should have a time to action).
The first few uploads of each setting warm the worker up and are not counted.
Results go to ``bench/out/latency.json``; worker and listener logs to ``bench/out/logs``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from .common import OUT, log, machine, offline_env, write_json
from .servers import Moto, Proc, Redis, wait_until

LABELQ = str(Path(sys.executable).parent / "labelq")
RESULT = OUT / "latency.json"
MAX_OBJECTS = 1200  # per setting: the stream is bounded whatever the flags say
WARMUP = 5  # uploads per setting before the measured stream
PHOTOS = 32  # distinct JPEGs cycled through the stream
POLICY = """\
version = "bench-latency"
quarantine_prefix = "quarantine/"

[notify]
stream = "labelq:bench-notify"

[[rule]]
model = {model}
label = "nsfw"
threshold = 0.0
actions = {actions}
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("tiny", "vit-b"), default="tiny",
                   help="tiny random ViT (default) or random ViT-B/16 at the real model's size")
    p.add_argument("--rate", type=float, default=8.0, help="uploads per second (default 8)")
    p.add_argument("--seconds", type=float, default=30.0, help="length of the stream per setting (default 30)")
    p.add_argument("--timeouts", default="0.01,0.05,0.2", help="batch_timeout values, seconds (default 0.01,0.05,0.2)")
    p.add_argument("--max-batch-size", type=int, default=16, help="LABELQ_MAX_BATCH_SIZE (default 16)")
    p.add_argument("--size", default="640x480", help="photo size: 640x480 (default), 1920x1080 or 4000x3000")
    p.add_argument("--actions", default="tag,move,notify",
                   help="policy actions on every object (default tag,move,notify); 'none': no policy at all")
    p.add_argument("--quick", action="store_true", help="5 uploads/s for 15 s per setting")
    p.add_argument("--out", type=Path, default=RESULT, help=f"JSON results (default {RESULT.relative_to(OUT.parent.parent)})")
    args = p.parse_args(argv)
    if args.quick:
        args.rate, args.seconds = 5.0, 15.0
    if not 0 < args.rate <= 50 or not 0 < args.seconds <= 300:
        p.error("--rate must be in (0, 50] and --seconds in (0, 300]")
    args.timeouts = [float(t) for t in args.timeouts.split(",") if t.strip()]
    args.actions = [] if args.actions == "none" else [a.strip() for a in args.actions.split(",") if a.strip()]
    return args


def when(iso: str) -> float:
    """Unix seconds of an ISO-8601 time such as labelq's ``2026-11-25T10:11:12.345Z``."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def minio_event(bucket: str, key: str, etag: str, size: int) -> str:
    """One entry of MinIO's Redis target in access format (what ``labelq listen --minio`` BLPOPs)."""
    now = datetime.now().astimezone().isoformat(timespec="milliseconds")
    record = {
        "eventVersion": "2.0", "eventSource": "minio:s3", "eventTime": now, "eventName": "s3:ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket},
               "object": {"key": quote_plus(key), "size": size, "eTag": etag, "contentType": "image/jpeg"}},
    }
    return json.dumps([{"Event": [record], "EventTime": now}])


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    if len(values) == 1:
        return {"p50": values[0], "p95": values[0], "p99": values[0], "max": values[0]}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(q[49], 4), "p95": round(q[94], 4), "p99": round(q[98], 4), "max": round(max(values), 4)}


class Run:
    """One setting: a fresh worker and listener on a flushed Redis, a stream of uploads, the latencies."""

    def __init__(self, args: argparse.Namespace, redis: Redis, moto: Moto, s3: Any, bucket: str, model: Path,
                 photos: list[bytes], policy: Path | None, batch_timeout: float) -> None:
        self.args, self.redis, self.moto, self.s3, self.bucket = args, redis, moto, s3, bucket
        self.model, self.photos, self.policy, self.batch_timeout = str(model), photos, policy, batch_timeout
        self.client = redis.client()
        self.job = f"latency-{batch_timeout:g}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LABELQ_")}
        self.env.update({
            "PYTHONUNBUFFERED": "1",
            "LABELQ_BROKER_URL": redis.url,
            "LABELQ_MODELS": self.model,
            "LABELQ_S3_ENDPOINT_URL": moto.endpoint_url,
            "LABELQ_MAX_BATCH_SIZE": str(args.max_batch_size),
            "LABELQ_BATCH_TIMEOUT": str(batch_timeout),
        })
        if policy is not None:
            self.env["LABELQ_POLICY"] = str(policy)
        self.n_actions = len(args.actions)

    def start(self) -> tuple[Proc, Proc]:
        import socket

        self.client.flushdb()
        tag = f"{self.batch_timeout:g}"
        worker = Proc([LABELQ, "worker", "--live", "--devices", "cpu"], f"latency-worker-{tag}", env=self.env)
        node = f"live-cpu@{socket.gethostname()}"
        wait_until(lambda: f"worker {node} ready" in worker.log.read_text(errors="replace"), timeout=600,
                   what=f"live worker (batch_timeout {tag})", alive=worker.alive)
        listener = Proc([LABELQ, "listen", "--minio", "--job", self.job], f"latency-listen-{tag}", env=self.env)
        wait_until(lambda: "listening to" in listener.log.read_text(errors="replace"), timeout=120,
                   what="labelq listen", alive=listener.alive)
        return worker, listener

    def upload(self, key: str, data: bytes) -> tuple[str, float]:
        """put_object, then the bucket event; the object's uri and when the upload completed."""
        from labelq.objects import s3_uri

        etag = self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType="image/jpeg")["ETag"]
        uploaded = time.time()
        self.client.rpush("labelq:minio-events", minio_event(self.bucket, key, etag.strip('"'), len(data)))
        return s3_uri(self.bucket, key), uploaded

    def wait_acted(self, uris: list[str], timeout: float) -> dict[str, list[Any]]:
        """Until every uri has its record and its actions audited; the audit entries per uri."""
        from labelq import keys
        from labelq.moderation import iter_audit

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and None in self.client.hmget(keys.records(self.model), uris):
            time.sleep(0.2)
        want = set(uris)
        acted: dict[str, list[Any]] = {}
        while True:
            acted = {}
            for a in iter_audit(self.client, job=self.job):
                if a.uri in want:
                    acted.setdefault(a.uri, []).append(a)
            if all(len(acted.get(u, [])) >= self.n_actions for u in uris) or time.monotonic() > deadline:
                return acted
            time.sleep(0.5)

    def measure(self) -> dict[str, Any]:
        from labelq import keys
        from labelq.jobs import parse_body

        worker, listener = self.start()
        try:
            tag = f"{self.batch_timeout:g}"
            warm = [self.upload(f"warmup/{tag}/{i}.jpg", self.photos[i % len(self.photos)])[0] for i in range(WARMUP)]
            self.wait_acted(warm, timeout=300)
            n = min(MAX_OBJECTS, int(self.args.rate * self.args.seconds))
            uploaded: dict[str, float] = {}
            start = last = time.monotonic()
            for i in range(n):
                delay = start + i / self.args.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                last = time.monotonic()
                uri, at = self.upload(f"stream/{tag}/{i:05d}-{uuid.uuid4().hex[:6]}.jpg",
                                      self.photos[i % len(self.photos)])
                uploaded[uri] = at
            achieved = (n - 1) / (last - start) if n > 1 and last > start else float(n)
            acted = self.wait_acted(list(uploaded), timeout=120 + n / self.args.rate)
        finally:
            listener.stop()
            worker.stop()
        bodies = self.client.hmget(keys.records(self.model), list(uploaded))
        to_record, to_action, stamps, missing, errors = [], [], [], 0, 0
        for (uri, at), raw in zip(uploaded.items(), bodies, strict=True):
            if raw is None:
                missing += 1
                continue
            rec = parse_body(raw)
            errors += not rec.ok
            to_record.append(when(rec.processed_at) - at)
            stamps.append(rec.processed_at)
            if self.n_actions and len(acted.get(uri, [])) >= self.n_actions:
                to_action.append(max(when(a.time) for a in acted[uri]) - at)
        # Records of one batch share their processed_at (stamped once per batch, in ms): a batch-size estimate.
        batches = len(set(stamps))
        return {
            "batch_timeout_s": self.batch_timeout,
            "objects": n,
            "rate_asked": self.args.rate,
            "rate_achieved": round(achieved, 2),
            "records": len(to_record),
            "missing_records": missing,
            "error_records": errors,
            "acted": len(to_action),
            "mean_batch": round(len(stamps) / batches, 2) if batches else None,
            "upload_to_record_s": percentiles(sorted(to_record)),
            "upload_to_action_s": percentiles(sorted(to_action)),
            "raw_upload_to_record_s": [round(v, 4) for v in to_record],  # in upload order
            "raw_upload_to_action_s": [round(v, 4) for v in to_action],
        }


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def table(results: list[dict[str, Any]]) -> str:
    head = ("| batch_timeout | objects | mean batch | record p50 | p95 | p99 | action p50 | p95 | p99 |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for r in results:
        rec, act = r["upload_to_record_s"], r["upload_to_action_s"]
        rows.append(
            f"| {r['batch_timeout_s'] * 1000:g} ms | {r['records']}/{r['objects']} | {r['mean_batch']} | "
            f"{ms(rec['p50'])} | {ms(rec['p95'])} | {ms(rec['p99'])} | "
            f"{ms(act['p50'])} | {ms(act['p95'])} | {ms(act['p99'])} |"
        )
    return "\n".join([head, *rows])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    offline_env()
    from .data import files, photos, tiny_vit
    from .data import model as bench_model

    model = tiny_vit() if args.model == "tiny" else bench_model("vit")
    images = [p.read_bytes() for p in files(photos(args.size, PHOTOS))]
    OUT.mkdir(parents=True, exist_ok=True)
    policy: Path | None = None
    if args.actions:
        policy = OUT / "latency-policy.toml"
        policy.write_text(POLICY.format(model=json.dumps(str(model)), actions=json.dumps(args.actions)),
                          encoding="utf-8")
    results = []
    with Redis("latency-redis") as redis, Moto() as moto:
        s3 = moto.client()
        bucket = f"latency-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(Bucket=bucket)
        for bt in args.timeouts:
            log(f"batch_timeout {bt:g}s: {args.rate:g} uploads/s for {args.seconds:g}s, model {args.model}")
            r = Run(args, redis, moto, s3, bucket, model, images, policy, bt).measure()
            results.append(r)
            rec, act = r["upload_to_record_s"], r["upload_to_action_s"]
            log(f"  record p50 {ms(rec['p50'])} ms, p99 {ms(rec['p99'])} ms; action p50 {ms(act['p50'])} ms, "
                f"p99 {ms(act['p99'])} ms; mean batch {r['mean_batch']}; achieved {r['rate_achieved']}/s")
    print(f"Moderation latency, model {args.model}, {args.size} JPEGs, {args.rate:g} uploads/s for "
          f"{args.seconds:g}s, max_batch_size {args.max_batch_size}, actions {','.join(args.actions) or 'none'} "
          "(milliseconds)\n")
    print(table(results))
    write_json(args.out, {
        "benchmark": "moderation latency",
        "model": args.model,
        "photo_size": args.size,
        "rate_per_s": args.rate,
        "seconds": args.seconds,
        "max_batch_size": args.max_batch_size,
        "policy": f"threshold 0 on nsfw: {', '.join(args.actions)} on every object" if args.actions else "none",
        "machine": machine(),
        "results": results,
    })
    log(f"wrote {args.out}")
    incomplete = [r for r in results if r["records"] < r["objects"] or (args.actions and r["acted"] < r["objects"])]
    return 1 if incomplete else 0


if __name__ == "__main__":
    raise SystemExit(main())

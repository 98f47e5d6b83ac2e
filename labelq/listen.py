"""`labelq listen`: object-created events → live tasks, within seconds of an upload.

Two sources of events:

* MinIO bucket notifications with a Redis target in ``access`` format: MinIO
  RPUSHes one JSON entry per event to a list (``LABELQ_EVENTS_KEY``); we BLPOP it.
* AWS S3 event notifications to SQS (directly, or through SNS): we long-poll the
  queue (``LABELQ_SQS_QUEUE_URL``) and delete each message once its objects are
  enqueued.

Events are parsed and validated (``s3:ObjectCreated:*`` only; test events and
other kinds are skipped; malformed ones logged and dropped). Duplicates are
harmless: an (uri, etag) seen in the last day is not enqueued twice, and records
are idempotent anyway.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

from . import keys
from .config import Settings
from .jobs import JobBook
from .objects import ObjectRef, s3_uri, split_s3
from .tasks import LIVE_TASK

logger = logging.getLogger(__name__)

DEDUPE_SECONDS = 24 * 3600


class BadEvent(ValueError):
    """An event that is not a valid S3/MinIO notification."""


@dataclass(frozen=True)
class Upload:
    ref: ObjectRef
    at: float | None  # event time, unix seconds
    sequencer: str | None = None  # unique per PUT (S3 and MinIO): the same file uploaded again is a new event


def parse_event(payload: Any) -> list[Upload]:
    """Objects created according to one notification payload (S3, SNS-wrapped S3, or MinIO access format)."""
    if isinstance(payload, (str, bytes)):
        try:
            payload = json.loads(payload)
        except ValueError as exc:  # bad JSON or not UTF-8
            raise BadEvent(f"not JSON: {exc}") from None
    if isinstance(payload, list):  # MinIO access format: [{"Event": [...], "EventTime": "..."}]
        return [u for part in payload for u in parse_event(part)]
    if not isinstance(payload, dict):
        raise BadEvent(f"expected a JSON object, got {type(payload).__name__}")
    if payload.get("Type") == "Notification" and "Message" in payload:  # SNS envelope
        return parse_event(payload["Message"])
    if payload.get("Event") == "s3:TestEvent":
        return []
    records = payload.get("Records", payload.get("Event"))
    if records is None:
        raise BadEvent("no Records (S3) or Event (MinIO) array")
    if not isinstance(records, list):
        raise BadEvent("Records must be an array")
    return [u for u in (_upload(r) for r in records) if u is not None]


def _upload(record: Any) -> Upload | None:
    if not isinstance(record, dict):
        raise BadEvent("an event record must be an object")
    name = str(record.get("eventName", ""))
    if "ObjectCreated:" not in name:
        return None
    try:
        bucket = record["s3"]["bucket"]["name"]
        obj = record["s3"]["object"]
        key = unquote_plus(obj["key"])
    except (KeyError, TypeError):
        raise BadEvent(f"{name} event without s3.bucket.name / s3.object.key") from None
    if not bucket or not key:
        raise BadEvent("empty bucket or key")
    size = obj.get("size")
    try:
        size = int(size) if size is not None else None
    except (TypeError, ValueError):
        raise BadEvent(f"s3.object.size is not a number: {size!r}") from None
    etag = obj.get("eTag") or obj.get("etag")
    at = None
    if record.get("eventTime"):
        try:
            at = datetime.fromisoformat(str(record["eventTime"]).replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise BadEvent(f"bad eventTime {record['eventTime']!r}") from None
    sequencer = obj.get("sequencer")
    return Upload(ObjectRef(s3_uri(bucket, key), size, str(etag).strip('"') if etag else None), at,
                  str(sequencer) if sequencer else None)


class Listener:
    """Turns uploads into live tasks for one job."""

    def __init__(self, settings: Settings, *, app: Any, book: JobBook, job: str, models: list[str]) -> None:
        self.settings = settings
        self.app = app
        self.book = book
        self.redis = book.redis
        self.job = job
        self.models = models
        self.suffixes = tuple(settings.suffixes)
        self.stop = threading.Event()
        self.skip_prefix: str | None = None
        if settings.policy is not None:
            from .moderation import load_policy

            self.skip_prefix = load_policy(settings.policy).quarantine_prefix
        self.enqueued = self.duplicates = self.bad = 0
        book.open(job, source="listen", models=models)

    def handle(self, uploads: Iterable[Upload]) -> int:
        """Enqueue new uploads (skipping suffixes not kept and duplicates); returns how many were sent."""
        sent = 0
        for up in uploads:
            if self.suffixes and not up.ref.uri.lower().endswith(self.suffixes):
                continue
            if self.skip_prefix and split_s3(up.ref.uri)[1].startswith(self.skip_prefix):
                continue  # our own quarantine copies
            seen = keys.seen_event(up.ref.uri, up.ref.etag, up.sequencer)
            if not self.redis.set(seen, 1, nx=True, ex=DEDUPE_SECONDS):
                self.duplicates += 1
                continue
            try:
                self.app.send_task(LIVE_TASK, args=[self.job, up.ref.to_json(), self.models, up.at],
                                   queue=self.settings.live_queue)
            except BaseException:
                self.redis.delete(seen)  # not sent: a redelivered event must get through
                raise
            self.book.received(self.job, 1)
            sent += 1
        self.enqueued += sent
        return sent

    def handle_raw(self, raw: Any) -> int:
        try:
            return self.handle(parse_event(raw))
        except BadEvent as exc:
            self.bad += 1
            logger.warning("dropping a malformed event: %s", exc)
            return 0

    def run_minio(self, key: str | None = None, *, poll: float = 1.0) -> None:
        """BLPOP MinIO's Redis event list until stopped."""
        key = key or self.settings.events_key
        logger.info("listening to MinIO events on Redis list %s", key)
        while not self.stop.is_set():
            item = self.redis.blpop([key], timeout=poll)
            if item is not None:
                self.handle_raw(item[1])

    def run_sqs(self, queue_url: str | None = None, *, client: Any = None, wait: int = 5) -> None:
        """Long-poll an SQS queue of S3 notifications until stopped; delete what was handled."""
        import boto3

        queue_url = queue_url or self.settings.sqs_queue_url
        sqs = client or boto3.client("sqs", endpoint_url=self.settings.sqs_endpoint_url,
                                     region_name=self.settings.s3_region)
        logger.info("listening to S3 events on SQS %s", queue_url)
        while not self.stop.is_set():
            resp = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait)
            for msg in resp.get("Messages", []):
                self.handle_raw(msg.get("Body", ""))
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=msg["ReceiptHandle"])

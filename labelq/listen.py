"""`labelq listen`: object-created events → live tasks, within seconds of an upload.

Two sources of events:

* MinIO bucket notifications with a Redis target in ``access`` format: MinIO
  RPUSHes one JSON entry per event to a list (``LABELQ_EVENTS_KEY``); we BLMOVE each
  to a processing list and remove it from there only once its tasks are published
  (a reliable queue: a listener that stops or dies loses nothing; the next replays it).
* AWS S3 event notifications to SQS (directly, or through SNS): we long-poll the
  queue (``LABELQ_SQS_QUEUE_URL``) and delete each message once its objects are
  enqueued.

Nothing is removed before it is safely queued: while the broker (or Redis) is down,
publishing is retried with backoff for ``LABELQ_OUTAGE_WAIT`` seconds; past that
``listen`` exits non-zero with one line, and the event waits for the next listener.

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
from .errors import UsageError
from .jobs import JobBook
from .objects import ObjectRef, s3_uri, split_s3
from .retrying import is_outage
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
        self.models = list(models)
        self.suffixes = tuple(settings.suffixes)
        self.stop = threading.Event()
        self.skip_prefix: str | None = None
        if settings.policy is not None:
            from .moderation import load_policy

            policy = load_policy(settings.policy)
            self.skip_prefix = policy.quarantine_prefix
            # the policy's shadow models score every upload beside the active ones (the moderator never acts on
            # their records): a candidate is measured on live traffic before it is promoted
            self.models += [m for m in policy.shadow if m not in self.models]
        self.enqueued = self.duplicates = self.bad = 0
        self.failure = ""  # set when a listener thread cannot go on: `listen` exits non-zero with it
        try:
            book.open(job, source="listen", models=self.models)
        except UsageError:
            info = book.info(job)
            if info is None or info.source != "listen" or info.models[:len(models)] != list(models):
                raise
            # the same stream with the same active models: only the policy's shadow models changed
            logger.info("job %s: models %s (were %s)", job, ", ".join(self.models), ", ".join(info.models))
            book.set_models(job, self.models)

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

    def safely(self, step: Any, what: str) -> Any:
        """Run ``step``; while Redis/the broker is unreachable, retry with backoff for up to LABELQ_OUTAGE_WAIT
        seconds (logged once as "degraded"); past that, :class:`CannotGoOn` with one line."""
        from .retrying import through_outage

        told: list[bool] = []

        def waiting(exc: BaseException, delay: float) -> None:
            if not told:
                told.append(True)
                logger.warning("listen degraded: could not %s (%s: %s); retrying with backoff for up to %.0fs, the "
                               "event stays in Redis until it is queued", what, type(exc).__name__, exc,
                               self.settings.outage_wait)

        try:
            out = through_outage(step, what=what, wait=self.settings.outage_wait, on_wait=waiting)
        except Exception as exc:
            if not is_outage(exc):
                raise
            raise CannotGoOn(f"could not {what} for {self.settings.outage_wait:g}s ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:300]}); the event is kept and is queued when "
                             "`labelq listen` starts again") from None
        if told:
            logger.warning("listen recovered: %s", what)
        return out

    def run(self, source: Any) -> None:
        """A listener thread's body: ``source()`` until stopped; a failure stops every thread, with one line."""
        try:
            source()
        except CannotGoOn as exc:
            self.failure = str(exc)
        except Exception as exc:
            logger.debug("listener failed", exc_info=True)
            self.failure = " ".join(f"{type(exc).__name__}: {exc}".split())
        finally:
            if self.failure:
                self.stop.set()

    def run_minio(self, key: str | None = None, *, poll: float = 1.0) -> None:
        """Move MinIO's events one at a time to a processing list; remove each only once it is queued.

        A reliable queue: BLMOVE takes the oldest event from ``key`` to ``key`` + ``:processing``
        in one atomic step; it leaves the processing list only after its live tasks are
        published. Events left there by a listener that stopped (or died) are replayed first.
        """
        key = key or self.settings.events_key
        processing = keys.events_processing(key)
        logger.info("listening to MinIO events on Redis list %s", key)
        left = self.safely(lambda: self.redis.lrange(processing, 0, -1), f"read {processing}")
        if left:
            logger.info("replaying %d events a previous listener took but did not queue", len(left))
        for raw in left:
            self._deliver(raw, processing)
        while not self.stop.is_set():
            raw = self.safely(lambda: self.redis.blmove(key, processing, poll, "LEFT", "RIGHT"), f"read {key}")
            if raw is not None:
                self._deliver(raw, processing)

    def _deliver(self, raw: Any, processing: str) -> None:
        self.safely(lambda: self.handle_raw(raw), "queue an event's live tasks on the broker")
        self.safely(lambda: self.redis.lrem(processing, 1, raw), f"remove a queued event from {processing}")

    def run_sqs(self, queue_url: str | None = None, *, client: Any = None, wait: int = 5) -> None:
        """Long-poll an SQS queue of S3 notifications until stopped; delete a message only once it is queued.

        A message whose tasks cannot be published is not deleted: SQS hands it out again after its
        visibility timeout (to this listener, or to the next one).
        """
        import boto3

        queue_url = queue_url or self.settings.sqs_queue_url
        sqs = client or boto3.client("sqs", endpoint_url=self.settings.sqs_endpoint_url,
                                     region_name=self.settings.s3_region)
        logger.info("listening to S3 events on SQS %s", queue_url)
        while not self.stop.is_set():
            resp = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait)
            for msg in resp.get("Messages", []):
                body = msg.get("Body", "")
                self.safely(lambda body=body: self.handle_raw(body), "queue an event's live tasks on the broker")
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=msg["ReceiptHandle"])


class CannotGoOn(Exception):
    """The broker or Redis stayed unreachable past LABELQ_OUTAGE_WAIT: `listen` exits non-zero with this line."""

"""The Celery app, its task, and the per-process runtime of a worker.

``celery -A labelq.worker worker`` works as is; ``labelq worker --devices ...``
(see :mod:`labelq.launcher`) starts one solo-pool process per device, pinned with
``CUDA_VISIBLE_DEVICES``. Models load once per process, after any fork: in the
process itself for the solo and threads pools, in each child for prefork. The task
is thin: it hands a chunk of refs to the engine and writes each batch's records in
one round trip.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from celery import Celery, signals
from celery.worker.control import inspect_command

from .config import Settings, load_settings, redact

logger = logging.getLogger(__name__)

TASK = "labelq.label_chunk"
LIVE_TASK = "labelq.label_one"


def make_app(settings: Settings) -> Celery:
    """A Celery app configured from settings: JSON only, late acks, one chunk prefetched."""
    app = Celery("labelq", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=settings.queue,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            # kombu looks for expired unacked chunks only every 10 s x 10 polls (~100 s) by default;
            # look often enough that a dead worker's chunk returns close to visibility_timeout.
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 5)),
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_heartbeat=0 if settings.broker_url.startswith("amqp") else None,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        worker_disable_rate_limits=True,
    )
    app.task(name=TASK, bind=True, acks_late=True, reject_on_worker_lost=True)(label_chunk)
    app.task(name=LIVE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)(label_one)
    return app


class Runtime:
    """What one worker process holds: settings, engine, classifiers, job book, sink."""

    def __init__(self, settings: Settings, name: str) -> None:
        from .engine import Engine
        from .jobs import JobBook
        from .logs import quiet_libraries
        from .redis_store import connect
        from .results import SQLStore
        from .storage import Stores

        quiet_libraries()
        self.settings = settings
        self.name = name
        self.redis = connect(settings.jobs_redis)
        self.book = JobBook(self.redis, ttl=settings.result_ttl)
        results = settings.results
        self.sql = None if results.startswith(("redis://", "rediss://", "unix://")) else SQLStore(results)
        if self.sql is None and results != settings.jobs_redis:
            logger.warning("results_url is a second Redis; records go to the job Redis %s", redact(settings.jobs_redis))
        self.classifiers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.metrics = None
        if settings.metrics_port:
            from .metrics import Metrics

            self.metrics = Metrics()
            broker = connect(settings.broker_url) if settings.broker_url.startswith(("redis", "rediss")) else None
            if broker is not None:
                self.metrics.watch_queue(broker, [settings.queue, settings.live_queue], self.book)
            self.metrics.serve(settings.metrics_port)
        self.engine: Engine | None = None  # made with the first chunk's classifiers
        self._stores = Stores(settings)
        self._batcher: Any = None
        self.moderator: Any = None
        self._moderation = ThreadPoolExecutor(1, thread_name_prefix="labelq-moderate")
        self._moderation_slots = threading.BoundedSemaphore(64)
        if settings.policy is not None:
            from .policy import Moderator, load_policy

            self.moderator = Moderator(load_policy(settings.policy), redis=self.redis, stores=self._stores)
            logger.info("moderation policy %s (version %s)", settings.policy, self.moderator.policy.version)
        for model in settings.models:
            self.classifier(model)
        if self.classifiers:
            check_visibility(settings, sum(c.seconds_per_image for c in self.classifiers.values()))

    def classifier(self, name: str) -> Any:
        """A loaded classifier; loaded (and warmed up) on first use, then kept."""
        with self._lock:
            return self._load(name)

    def _load(self, name: str) -> Any:
        from .models import load_classifier

        clf = self.classifiers.get(name)
        if clf is None:
            start = time.perf_counter()
            clf = load_classifier(name, self.settings)
            seconds = clf.warmup(min(self.settings.batch_size, 8))
            if self.metrics is not None:
                self.metrics.model_load.labels(name).set(time.perf_counter() - start)
            logger.info("%s: %s ready (warm-up batch %.2fs)", self.name, name, seconds)
            self.classifiers[name] = clf
        return clf

    def label(self, job: str, refs: list[Any], models: list[str]) -> tuple[int, int]:
        """Label one chunk; every batch's records land in one write. Returns (images, records)."""
        from .engine import Engine
        from .storage import ObjectRef

        classifiers = [self.classifier(m) for m in models]
        if self.engine is None:
            observe = self.metrics.observe_stage if self.metrics is not None else None
            self.engine = Engine(classifiers, self._stores, self.settings, worker=self.name, observe=observe)
        self.engine.use(classifiers)
        images = written = 0
        start = time.perf_counter()
        moderated = []
        for records in self.engine.run((ObjectRef.from_json(r) for r in refs), job=job):
            moderated.append(self.write(job, records))
            images += len(records) // len(classifiers)
            written += len(records)
        for done in moderated:  # the chunk is acknowledged only once its actions ran
            if done is not None:
                done.result()
        seconds = time.perf_counter() - start
        if self.settings.broker_url.startswith(("redis", "rediss")) and seconds > self.settings.visibility_timeout / 2:
            logger.warning(
                "a chunk of %d images took %.0fs, over half of visibility_timeout (%ds): chunks still in progress "
                "may be redelivered to another worker; raise LABELQ_VISIBILITY_TIMEOUT or lower LABELQ_CHUNK_SIZE",
                len(refs), seconds, self.settings.visibility_timeout,
            )
        return images, written

    def write(self, job: str, records: list[Any]) -> Future[None] | None:
        """One batch's records: one Lua call (Redis store), or one SQL upsert + one Lua call.

        With a policy, a redelivered task must not turn an object we moved to quarantine into a
        ``not_found`` record: those records are dropped, the stored ok record stands. The policy's
        actions then run on the moderation thread, so slow S3 calls or webhooks never hold inference;
        the returned future says when they ran (tasks wait for it before they are acknowledged).
        """
        if self.moderator is not None:
            gone = [r.uri for r in records if r.error_kind == "not_found"]
            moved = self.moderator.moved(gone) if gone else set()
            records = [r for r in records if not (r.error_kind == "not_found" and r.uri in moved)]
            if not records:
                return None
        start = time.perf_counter()
        if self.sql is not None:
            self.sql.write(records)
        self.book.record(job, records, bodies=self.sql is None)
        if self.metrics is not None:
            self.metrics.observe_stage("write", time.perf_counter() - start, len(records))
            self.metrics.observe_records(records)
        if self.moderator is None:
            return None
        self._moderation_slots.acquire()  # bounded: a writer far ahead of the actions waits
        return self._moderation.submit(self._moderate, records)

    def _moderate(self, records: list[Any]) -> None:
        try:
            self.moderator.apply(records)
        except Exception:
            logger.exception("moderation of %d records failed", len(records))
        finally:
            self._moderation_slots.release()

    def batcher(self) -> Any:
        """The live path's batcher, made on first use (its engine decodes for the loaded models)."""
        from .engine import Engine
        from .live import Batcher

        with self._lock:
            if self._batcher is None:
                engine = Engine(list(self.classifiers.values()) or [self._load(m) for m in self.settings.models],
                                self._stores, self.settings, worker=self.name)
                self._batcher = Batcher(engine, self.classifier, self.write,
                                        max_batch_size=self.settings.max_batch_size,
                                        batch_timeout=self.settings.batch_timeout)
            return self._batcher


def check_visibility(settings: Settings, model_seconds_per_image: float) -> float:
    """Warn when chunks could outlive the Redis visibility timeout; returns the expected chunk seconds.

    With the Redis broker an unacknowledged chunk is handed to another worker after
    ``visibility_timeout`` seconds, even while the first is still working on it. The
    estimate is the models' warm-up time per image plus a decode allowance, for a full
    chunk; we want it well under half the timeout.
    """
    decode_allowance = 0.02  # seconds per image for fetch + decode on one core (measured ~6-26 ms)
    expected = settings.chunk_size * (model_seconds_per_image + decode_allowance)
    if settings.broker_url.startswith(("redis", "rediss")) and expected > settings.visibility_timeout / 2:
        logger.warning(
            "visibility_timeout is %ds but a chunk of %d images is expected to take about %.0fs: chunks may be "
            "redelivered while still in progress; set LABELQ_VISIBILITY_TIMEOUT above %.0f or lower LABELQ_CHUNK_SIZE",
            settings.visibility_timeout, settings.chunk_size, expected, 2 * expected,
        )
    return expected


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def runtime(hostname: str | None = None) -> Runtime:
    """This process's runtime, made on first use (after any fork)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            name = hostname or os.environ.get("LABELQ_WORKER_NAME") or f"{os.getpid()}@{socket.gethostname()}"
            _runtime = Runtime(load_settings(), name)
        return _runtime


def label_chunk(self: Any, job: str, refs: list[Any], models: list[str], chunk: str | None = None) -> dict[str, Any]:
    """Celery task: label a chunk of refs ``[[uri, size, etag], ...]`` with the named models."""
    rt = runtime(getattr(self.request, "hostname", None))
    if chunk and rt.book.started(job, chunk):
        logger.info("job %s chunk %s was already labelled: a duplicate message, skipped", job, chunk)
        return {"images": 0, "records": 0, "duplicate": True}
    start = time.perf_counter()
    images, records = rt.label(job, refs, models)
    if chunk:
        rt.book.chunk_done(job, chunk)
    seconds = time.perf_counter() - start
    if rt.metrics is not None:
        rt.metrics.chunks.inc()
    logger.info("job %s chunk %s: %d images, %d records in %.2fs", job, chunk, images, records, seconds)
    return {"images": images, "records": records, "seconds": round(seconds, 3)}


def label_one(self: Any, job: str, ref: list[Any], models: list[str], uploaded_at: float | None = None) -> dict[str, Any]:
    """Celery task (live queue): label one new object, batched with its neighbours on this worker."""
    from .storage import ObjectRef

    rt = runtime(getattr(self.request, "hostname", None))
    records = rt.batcher().submit(job, ObjectRef.from_json(ref), models).result()
    out: dict[str, Any] = {"uri": ref[0], "records": len(records)}
    if uploaded_at is not None:
        out["latency_s"] = round(time.time() - uploaded_at, 4)
    return out


# ------------------------------------------------------------------------- signals


@signals.celeryd_after_setup.connect
def _preload_in_process(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """Solo/threads pools run tasks in this process: load models now, before consuming.

    After Celery set up logging (``worker_init`` comes before it, and start-up warnings would be lost).
    """
    pool = str(getattr(instance, "pool_cls", "")).lower()
    if "solo" in pool or "thread" in pool:
        runtime(str(sender) if sender else None)


@signals.worker_process_init.connect
def _preload_in_child(**_: Any) -> None:
    """Prefork: each child loads its own models after the fork (solo sends this signal too: skip it there,
    ``_preload_in_process`` knows the node name)."""
    from billiard.process import current_process

    if current_process().name != "MainProcess":
        runtime()


@signals.worker_ready.connect
def _ready(sender: Any = None, **_: Any) -> None:
    s = load_settings()
    logger.info("worker %s ready: broker %s, models %s", getattr(sender, "hostname", "?"), redact(s.broker_url),
                ", ".join(s.models))


app = make_app(load_settings())


@inspect_command()
def labelq_info(state: Any) -> dict[str, Any]:
    """Remote-control answer for `labelq ping`: this worker's device and loaded models."""
    rt = _runtime
    if rt is None:
        return {"device": None, "models": [], "ready": False}
    models = {name: str(clf.device) for name, clf in rt.classifiers.items()}
    devices = sorted(set(models.values()))
    return {"device": devices[0] if len(devices) == 1 else devices, "models": sorted(models), "ready": True}

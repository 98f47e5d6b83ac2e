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
from typing import Any

from celery import Celery, signals

from .config import Settings, load_settings, redact

logger = logging.getLogger(__name__)

TASK = "labelq.label_chunk"


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
        task_default_priority=5,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            "queue_order_strategy": "priority",
        },
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_heartbeat=0 if settings.broker_url.startswith("amqp") else None,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        worker_disable_rate_limits=True,
    )
    app.task(name=TASK, bind=True, acks_late=True, reject_on_worker_lost=True)(label_chunk)
    return app


class Runtime:
    """What one worker process holds: settings, engine, classifiers, job book, sink."""

    def __init__(self, settings: Settings, name: str) -> None:
        from .engine import Engine
        from .jobs import JobBook
        from .redis_store import connect
        from .results import SQLStore
        from .storage import Stores

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
        self.engine: Engine | None = None  # made with the first chunk's classifiers
        self._stores = Stores(settings)
        for model in settings.models:
            self.classifier(model)

    def classifier(self, name: str) -> Any:
        """A loaded classifier; loaded (and warmed up) on first use, then kept."""
        from .models import load_classifier

        with self._lock:
            clf = self.classifiers.get(name)
            if clf is None:
                clf = load_classifier(name, self.settings)
                seconds = clf.warmup(min(self.settings.batch_size, 8))
                logger.info("%s: %s ready (warm-up batch %.2fs)", self.name, name, seconds)
                self.classifiers[name] = clf
            return clf

    def label(self, job: str, refs: list[Any], models: list[str]) -> tuple[int, int]:
        """Label one chunk; every batch's records land in one write. Returns (images, records)."""
        from .engine import Engine
        from .storage import ObjectRef

        classifiers = [self.classifier(m) for m in models]
        if self.engine is None:
            self.engine = Engine(classifiers, self._stores, self.settings, worker=self.name)
        self.engine.use(classifiers)
        images = written = 0
        for records in self.engine.run((ObjectRef.from_json(r) for r in refs), job=job):
            self.write(job, records)
            images += len(records) // len(classifiers)
            written += len(records)
        return images, written

    def write(self, job: str, records: list[Any]) -> None:
        if self.sql is not None:
            self.sql.write(records)
        self.book.record(job, records, bodies=self.sql is None)


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
    if chunk:
        rt.book.started(job, chunk)
    start = time.perf_counter()
    images, records = rt.label(job, refs, models)
    seconds = time.perf_counter() - start
    logger.info("job %s chunk %s: %d images, %d records in %.2fs", job, chunk, images, records, seconds)
    return {"images": images, "records": records, "seconds": round(seconds, 3)}


# ------------------------------------------------------------------------- signals


@signals.worker_init.connect
def _preload_in_process(sender: Any = None, **_: Any) -> None:
    """Solo/threads pools run tasks in this process: load models now, before consuming."""
    pool = str(getattr(sender, "pool_cls", "")).lower()
    if "solo" in pool or "thread" in pool:
        runtime(getattr(sender, "hostname", None))


@signals.worker_process_init.connect
def _preload_in_child(**_: Any) -> None:
    """Prefork: each child loads its own models after the fork."""
    runtime()


@signals.worker_ready.connect
def _ready(sender: Any = None, **_: Any) -> None:
    s = load_settings()
    logger.info("worker %s ready: broker %s, models %s", getattr(sender, "hostname", "?"), redact(s.broker_url),
                ", ".join(s.models))


app = make_app(load_settings())

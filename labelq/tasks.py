"""The task contract: task names, message shapes and the Celery app configuration.

Producers (``enqueue``, ``retry``, ``listen``), the CLI and the worker all import
this module; it has no import-time side effects (no settings read, no app built).
:mod:`labelq.worker` binds the task bodies to these names.

Messages (JSON only):

* ``labelq.label_chunk(job, refs, models, chunk)``: ``refs`` is ``[[uri, size, etag], ...]``,
  ``chunk`` the chunk id (also the Celery task id): ``{job}:{digest of models and uris}``.
* ``labelq.label_one(job, ref, models, uploaded_at)``: one new upload on the live queue.
"""

from __future__ import annotations

from typing import Any

from .config import Settings

CHUNK_TASK = "labelq.label_chunk"
LIVE_TASK = "labelq.label_one"


def make_app(settings: Settings) -> Any:
    """A Celery app configured from settings: JSON only, late acks, one chunk prefetched.

    A task that fails is never acknowledged-and-gone: ``acks_on_failure_or_timeout`` is
    off and the chunk task retries itself with backoff, then parks the chunk in the
    job's dead letters (see :mod:`labelq.worker`).
    """
    from celery import Celery

    app = Celery("labelq", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=False,
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
    return app

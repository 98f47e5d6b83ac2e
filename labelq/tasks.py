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
from .urls import SENTINEL_TIMEOUT_S, is_sentinel_url

CHUNK_TASK = "labelq.label_chunk"
LIVE_TASK = "labelq.label_one"


def make_app(settings: Settings) -> Any:
    """A Celery app configured from settings: JSON only, late acks, one chunk prefetched.

    A task that fails is never acknowledged-and-gone: ``acks_on_failure_or_timeout`` is
    off and the chunk task retries itself with backoff, then parks the chunk in the
    job's dead letters (see :mod:`labelq.worker`).

    High availability (docs/deploy.md): a ``sentinel://`` broker gets kombu's sentinel
    transport the master's name; ``amqp_quorum`` declares the queues as RabbitMQ quorum
    queues (see :func:`quorum_options`).
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
            **sentinel_options(settings),
        },
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_heartbeat=0 if settings.broker_url.startswith("amqp") else None,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        worker_disable_rate_limits=True,
        **quorum_options(settings),
    )
    return app


def sentinel_options(settings: Settings) -> dict[str, Any]:
    """kombu's sentinel transport options for a ``sentinel://`` broker: the master's name (it has no default)
    and short timeouts towards the sentinels, so a dead one is skipped quickly for the next."""
    if not is_sentinel_url(settings.broker_url):
        return {}
    timeouts = {"socket_timeout": SENTINEL_TIMEOUT_S, "socket_connect_timeout": SENTINEL_TIMEOUT_S}
    return {"master_name": settings.sentinel_master, "sentinel_kwargs": timeouts}


def quorum_options(settings: Settings) -> dict[str, Any]:
    """Celery settings that make the bulk and live queues RabbitMQ quorum queues (``x-queue-type: quorum``).

    Quorum queues are replicated over a cluster's nodes and keep their messages on disk. Celery
    (``worker_detect_quorum_queues``) then turns global QoS off (quorum queues refuse it) and
    sets up native delayed delivery for the chunk retries' countdown, which needs a topic exchange.
    """
    if not settings.amqp_quorum or not settings.broker_url.startswith(("amqp", "pyamqp")):
        return {}
    return {
        "task_default_queue_type": "quorum",  # the bulk queue (task_default_queue)
        "task_create_missing_queue_type": "quorum",  # the live queue, made when first named
        "task_default_exchange_type": "topic",
        "task_create_missing_queue_exchange_type": "topic",
        "worker_detect_quorum_queues": True,
    }

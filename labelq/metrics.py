"""Prometheus metrics of a worker (``LABELQ_METRICS_PORT``).

Counters and histograms are updated by the worker as batches complete; queue
depth and the age of the oldest waiting chunk are read from Redis at scrape time
(for autoscalers: KEDA / HPA recipes in docs/deploy.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from .records import Record

logger = logging.getLogger(__name__)

STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """One registry per worker process."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.images = Counter("labelq_images", "Records written, by model, status and top-1 label",
                              ["model", "status", "label"], registry=self.registry)
        self.errors = Counter("labelq_errors", "Error records by model and kind", ["model", "kind"],
                              registry=self.registry)
        self.batch_size = Histogram("labelq_batch_size", "Images per inference batch", buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.stage = Histogram("labelq_stage_seconds", "Seconds per stage call: fetch and decode per image, "
                               "infer and write per batch", ["stage"], buckets=STAGE_BUCKETS, registry=self.registry)
        self.model_load = Gauge("labelq_model_load_seconds", "Seconds to load and warm up a model", ["model"],
                                registry=self.registry)
        self.chunks = Counter("labelq_chunks", "Chunks finished by this worker", registry=self.registry)
        self.republished = Counter("labelq_chunks_republished", "Chunks past their deadline that the broker no longer "
                                   "held (lost), published again by this worker's heal", registry=self.registry)
        self.chunk_failures = Counter("labelq_chunk_failures", "Chunks that failed as a whole on this worker, by what "
                                      "happened next (retried, dead_lettered)", ["outcome"], registry=self.registry)

    def observe_stage(self, stage: str, seconds: float, items: int) -> None:
        self.stage.labels(stage).observe(seconds)
        if stage == "infer":
            self.batch_size.observe(items)

    def observe_records(self, records: Iterable[Record]) -> None:
        for rec in records:
            if rec.ok:
                self.images.labels(rec.model, "ok", rec.label or "").inc()
            else:
                self.images.labels(rec.model, "error", "").inc()
                self.errors.labels(rec.model, rec.error_kind or "model_error").inc()

    def watch_queue(self, redis: Any, queues: Sequence[str], book: Any) -> None:
        """Queue depth and oldest waiting chunk, read from Redis when scraped."""
        from prometheus_client.core import GaugeMetricFamily

        class QueueCollector:
            def collect(self) -> Iterable[Any]:
                depth = GaugeMetricFamily("labelq_queue_depth", "Chunks waiting in the broker queue", labels=["queue"])
                try:
                    for q in queues:
                        depth.add_metric([q], float(redis.llen(q)))
                    age, waiting = book.oldest_waiting()
                except Exception as exc:  # noqa: BLE001 - a scrape must not crash the worker
                    logger.warning("cannot read queue metrics: %s", exc)
                    return
                yield depth
                yield GaugeMetricFamily("labelq_oldest_waiting_chunk_seconds",
                                        "Age of the oldest enqueued chunk no worker has started", value=age or 0.0)
                yield GaugeMetricFamily("labelq_waiting_chunks", "Enqueued chunks no worker has started",
                                        value=float(waiting))

        self.registry.register(QueueCollector())  # type: ignore[arg-type]

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        from prometheus_client import start_http_server

        start_http_server(port, addr=addr, registry=self.registry)
        logger.info("metrics on :%d/metrics", port)

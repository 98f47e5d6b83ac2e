"""Naive Celery: one task per image, what a user writes before labelq.

The worker is ``celery -A bench.naive_celery worker`` with Celery's defaults (the
prefork pool, one child per core); each child loads a transformers
``pipeline("image-classification")`` once, on its first task, and classifies one
image per task. Results go to Redis (the result backend), as a user would have
them. Broker and model come from ``BENCH_NAIVE_BROKER`` and ``BENCH_NAIVE_MODEL``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from celery import Celery

from .common import Measure, Probe, log, settle
from .servers import Proc, Redis, wait_until

BROKER = os.environ.get("BENCH_NAIVE_BROKER", "redis://127.0.0.1:6379/15")
app = Celery("naive", broker=BROKER, backend=BROKER)
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)

_pipe: Any = None


def _pipeline() -> Any:
    global _pipe
    if _pipe is None:
        from transformers import pipeline

        _pipe = pipeline("image-classification", model=os.environ["BENCH_NAIVE_MODEL"], device="cpu")
    return _pipe


@app.task(name="naive.classify")
def classify(path: str) -> list[dict[str, Any]]:
    """Classify one image file: the pipeline's top 5 labels."""
    return _pipeline()(path, top_k=5)  # type: ignore[no-any-return]


def measure(model: str, paths: list[str], *, repeat: int) -> Measure:
    """Start Redis and a default worker, send one task per image, wait for every result."""
    env = dict(os.environ)
    with Redis("naive-redis") as redis:
        env.update({"BENCH_NAIVE_BROKER": redis.url, "BENCH_NAIVE_MODEL": model})
        worker = Proc([sys.executable, "-m", "celery", "-A", "bench.naive_celery", "worker", "--loglevel", "WARNING",
                       "--without-gossip", "--without-mingle", "--without-heartbeat"], "naive-worker", env=env)
        client = Celery("naive", broker=redis.url, backend=redis.url)
        client.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
        try:
            wait_until(lambda: client.control.ping(timeout=0.5), timeout=120, what="naive celery worker",
                       alive=worker.alive)
            concurrency = _concurrency(client)
            # Warm-up: every child loads its pipeline before the clock starts.
            _send(client, paths[: 4 * concurrency])
            runs, foreign = [], []

            def ours() -> float:
                return time.process_time() + worker.cpu_seconds() + redis.proc.cpu_seconds()

            for _ in range(repeat):
                settle()
                probe = Probe(ours)
                start = time.perf_counter()
                _send(client, paths)
                runs.append(time.perf_counter() - start)
                foreign.append(round(probe.foreign_cores(), 2))
        finally:
            worker.stop()
    m = Measure("naive Celery (1 task per image)", len(paths), runs, {"pool": "prefork", "concurrency": concurrency},
                {"foreign_cores": foreign})
    log(f"  {m.name:<34} {m.ips:8.1f} img/s  ({len(paths)} images, best of {repeat}: {m.best_s:.2f}s, others used "
        f"{m.best_foreign:.2f} cores) pool=prefork concurrency={concurrency}")
    return m


def _send(client: Celery, paths: list[str]) -> None:
    results = [client.send_task("naive.classify", args=[p]) for p in paths]
    for r in results:
        out = r.get(timeout=600)
        assert out and "label" in out[0]
        r.forget()


def _concurrency(client: Celery) -> int:
    stats = client.control.inspect(timeout=2).stats() or {}
    for value in stats.values():
        return int(value.get("pool", {}).get("max-concurrency", 1))
    return 1

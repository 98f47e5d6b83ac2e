"""SIMULATION worker for ``python -m bench scale``: labelq's Celery app, a stand-in for the model.

``celery -A bench.scale_worker worker --pool solo`` consumes labelq's real queue
with labelq's real Celery configuration (:func:`labelq.tasks.make_app`: JSON, late
acks, prefetch 1, visibility timeout) and the real task name
(:data:`labelq.tasks.CHUNK_TASK`), but the task body is a stand-in: per batch of
``LABELQ_BATCH_SIZE`` refs it sleeps ``BENCH_SIM_BATCH_S`` seconds (no fetch, no
decode, NO MODEL). Everything around it is what :func:`labelq.worker.label_chunk`
does: :meth:`JobBook.started`, the records written to the record store that
:func:`labelq.services.open_records` picks (``LABELQ_RESULTS_URL``: Redis, SQL or
Parquet) and counted with :meth:`JobBook.record` as (chunk, position, record) items
(per batch, or once per chunk for a per-chunk store such as Parquet), then
:meth:`JobBook.chunk_done`. What it measures is therefore coordination only:
broker, acks, job book, record store.

Every Redis round trip this process makes is counted (redis-py's
``send_packed_command``: a pipeline or a script call counts once) and written after
each task to ``BENCH_SIM_COUNTS/<pid>.json``, per job, from the BRPOP that delivered
its first chunk here to the end of its latest (idle polling outside a job is not
counted).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import redis.connection
from celery import signals

import labelq.worker as lw
from labelq.config import load_settings
from labelq.jobs import JobBook
from labelq.records import Record, utcnow
from labelq.redis_client import connect
from labelq.services import open_records
from labelq.tasks import CHUNK_TASK, make_app

ROUND_TRIPS = 0
_send = redis.connection.AbstractConnection.send_packed_command


def _counting_send(self: Any, command: Any, check_health: bool = True) -> Any:
    global ROUND_TRIPS
    ROUND_TRIPS += 1
    return _send(self, command, check_health)


redis.connection.AbstractConnection.send_packed_command = _counting_send  # type: ignore[method-assign]

# labelq.worker loads real models in these signal handlers; the simulation has none.
for _signal in (signals.worker_init, signals.celeryd_after_setup, signals.worker_process_init, signals.worker_ready):
    for _receiver in (lw._preload_in_process, lw._preload_in_child, lw._ready):
        _signal.disconnect(_receiver)

settings = load_settings()
app = make_app(settings)
app.tasks.unregister(CHUNK_TASK)  # labelq.worker's label_chunk is a shared task: every app gets it
BATCH_S = float(os.environ.get("BENCH_SIM_BATCH_S", "0.2"))
# "labelq": what labelq.worker does (job-book counts per batch; once per chunk for a per-chunk store).
# "one-write": the chunk's counts in one JobBook.record at its end, whatever the store.
VARIANT = os.environ.get("BENCH_SIM_VARIANT", "labelq")
COUNTS = Path(os.environ.get("BENCH_SIM_COUNTS", "/tmp"))
NAME = os.environ.get("LABELQ_WORKER_NAME") or f"{os.getpid()}@{socket.gethostname()}"
_services: tuple[JobBook, Any] | None = None
_first: dict[str, int] = {}  # job -> round trips before its first chunk here


def services() -> tuple[JobBook, Any]:
    """The job book and the record store, opened once per process (after the fork)."""
    global _services
    if _services is None:
        client = connect(settings.jobs_redis)
        _services = (JobBook(client, ttl=settings.result_ttl), open_records(settings, client))
    return _services


@app.task(name=CHUNK_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, shared=False)
def simulated_label_chunk(self: Any, job: str, refs: list[Any], models: list[str],
                          chunk: str | None = None) -> dict[str, Any]:
    """Stand-in for labelq.label_chunk: sleep per batch instead of a model, real store and job-book writes."""
    from labelq.jobs import chunk_id

    book, store = services()
    _first.setdefault(job, ROUND_TRIPS - 1)  # the BRPOP that delivered this chunk counts too
    chunk = chunk or chunk_id(job, models, [r[0] for r in refs])
    if book.started(job, chunk):
        return {"images": 0, "duplicate": True}
    per_chunk = VARIANT != "labelq" or getattr(store, "per_chunk", False)
    size = settings.batch_size
    n_models = len(models)
    pending: list[tuple[str, int, Record]] = []
    for i in range(0, len(refs), size):
        batch = refs[i : i + size]
        time.sleep(BATCH_S)  # SIMULATED model: a fixed time per batch
        now = utcnow()
        items = [(chunk, (i + k) * n_models + m, Record(ref[0], ref[2], model, "simulated", 1.0,
                                                        [{"label": "simulated", "score": 1.0}], job=job,
                                                        worker=NAME, processed_at=now))
                 for k, ref in enumerate(batch) for m, model in enumerate(models)]
        if per_chunk:
            pending += items
        else:
            store.write([rec for _, _, rec in items], chunk=chunk)
            book.record(job, items)
    if pending:
        store.write([rec for _, _, rec in pending], chunk=chunk)
        book.record(job, pending)
    book.chunk_done(job, chunk)
    counts = {j: ROUND_TRIPS - base for j, base in _first.items()}
    (COUNTS / f"{os.getpid()}.json").write_text(json.dumps({"worker": NAME, "round_trips": counts}))
    return {"images": len(refs)}

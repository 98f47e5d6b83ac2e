"""SIMULATION worker for ``python -m bench scale``: labelq's Celery app, a stand-in for the model.

``celery -A bench.scale_worker worker --pool solo`` consumes labelq's real queue
with labelq's real Celery configuration (:func:`labelq.worker.make_app`: JSON, late
acks, prefetch 1, visibility timeout) and the real task name, but the task body is
a stand-in: per batch of ``LABELQ_BATCH_SIZE`` refs it sleeps
``BENCH_SIM_BATCH_S`` seconds (no fetch, no decode, NO MODEL) and then writes the
batch's records exactly as :meth:`labelq.worker.Runtime.write` does with the
Redis result store (:meth:`JobBook.record` with bodies: one Lua call per batch).
What it measures is therefore coordination only: broker, acks, job book.

Every Redis round trip this process makes is counted (redis-py's
``send_packed_command``: a pipeline counts once) and written after each task to
``BENCH_SIM_COUNTS/<pid>.json``, per job, from the BRPOP that delivered its first
chunk here to the end of its latest (idle polling outside a job is not counted).
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
from labelq.redis_store import connect

ROUND_TRIPS = 0
_send = redis.connection.AbstractConnection.send_packed_command


def _counting_send(self: Any, command: Any, check_health: bool = True) -> Any:
    global ROUND_TRIPS
    ROUND_TRIPS += 1
    return _send(self, command, check_health)


redis.connection.AbstractConnection.send_packed_command = _counting_send  # type: ignore[method-assign]

# labelq.worker loads real models in these signal handlers; the simulation has none.
for _signal, _receiver in ((signals.worker_init, lw._preload_in_process), (signals.worker_process_init,
                           lw._preload_in_child), (signals.worker_ready, lw._ready)):
    _signal.disconnect(_receiver)

settings = load_settings()
app = lw.make_app(settings)
app.tasks.unregister(lw.TASK)
BATCH_S = float(os.environ.get("BENCH_SIM_BATCH_S", "0.2"))
# "labelq": what labelq.worker does today (ZREM on start, one JobBook.record per batch).
# "one-write": PROTOTYPE: the chunk's records in one JobBook.record at its end, pipelined with the ZREM.
VARIANT = os.environ.get("BENCH_SIM_VARIANT", "labelq")
COUNTS = Path(os.environ.get("BENCH_SIM_COUNTS", "/tmp"))
NAME = os.environ.get("LABELQ_WORKER_NAME") or f"{os.getpid()}@{socket.gethostname()}"
_book: JobBook | None = None
_first: dict[str, int] = {}  # job -> round trips before its first chunk here


def book() -> JobBook:
    global _book
    if _book is None:
        _book = JobBook(connect(settings.jobs_redis), ttl=settings.result_ttl)
    return _book


_loaded: list[bool] = []


def _record_with_started(b: JobBook, job: str, chunk: str | None, records: list[Record]) -> None:
    """PROTOTYPE: JobBook.record's script and JobBook.started's ZREM in one round trip."""
    from labelq import keys
    from labelq.jobs import body, status_code

    models = list(dict.fromkeys(r.model for r in records))
    index = {m: i + 1 for i, m in enumerate(models)}
    args: list[Any] = [b.ttl, utcnow(), "1", len(records)]
    for rec in records:
        args += [index[rec.model], keys.item_field(rec.model, rec.uri), status_code(rec), rec.uri, body(rec)]
    job_keys = [keys.job(job), keys.job_items(job), keys.job_errors(job)] + [keys.records(m) for m in models]
    if not _loaded:
        b.redis.script_load(b._record.script)  # once per process, so the pipeline can use EVALSHA blind
        _loaded.append(True)
    pipe = b.redis.pipeline(transaction=False)
    if chunk:
        pipe.zrem(keys.CHUNKS, chunk)
    pipe.evalsha(b._record.sha, len(job_keys), *job_keys, *args)
    pipe.execute()


@app.task(name=lw.TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def simulated_label_chunk(self: Any, job: str, refs: list[Any], models: list[str],
                          chunk: str | None = None) -> dict[str, Any]:
    """Stand-in for labelq.label_chunk: sleep per batch instead of a model, real job-book writes."""
    b = book()
    _first.setdefault(job, ROUND_TRIPS - 1)  # the BRPOP that delivered this chunk counts too
    if chunk and VARIANT == "labelq":
        b.started(job, chunk)
    size = settings.batch_size
    pending: list[Record] = []
    for i in range(0, len(refs), size):
        batch = refs[i : i + size]
        time.sleep(BATCH_S)  # SIMULATED model: a fixed time per batch
        now = utcnow()
        records = [Record(uri, etag, model, "simulated", 1.0, [{"label": "simulated", "score": 1.0}], job=job,
                          worker=NAME, processed_at=now) for uri, _size, etag in batch for model in models]
        if VARIANT == "labelq":
            b.record(job, records, bodies=True)
        else:
            pending += records
    if VARIANT != "labelq":
        _record_with_started(b, job, chunk, pending)
    counts = {j: ROUND_TRIPS - base for j, base in _first.items()}
    (COUNTS / f"{os.getpid()}.json").write_text(json.dumps({"worker": NAME, "round_trips": counts}))
    return {"images": len(refs)}

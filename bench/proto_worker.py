"""PROTOTYPE worker for the distributed bench: bulk chunks through one long-lived pipeline.

``celery -A bench.proto_worker worker --pool threads --concurrency 2`` runs labelq's
own worker (its app, runtime, models, job book) with one change: the bulk task
``labelq.label_chunk`` hands its refs to the process's :class:`labelq.live.Batcher`
(the live path's batcher, with ``LABELQ_MAX_BATCH_SIZE`` = the bulk batch size)
and waits for their records, instead of running ``Engine.run`` over its own
chunk. With two tasks in flight, the next chunk is fetched and decoded while the
current one's last batch is inferred, so the pipeline never drains between
chunks; acknowledgement still comes only after a chunk's records are written.
"""

from __future__ import annotations

import time
from typing import Any

import labelq.worker as lw
from labelq.objects import ObjectRef

app = lw.app
app.tasks.unregister(lw.TASK)


@app.task(name=lw.TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def label_chunk_pipelined(self: Any, job: str, refs: list[Any], models: list[str],
                          chunk: str | None = None) -> dict[str, Any]:
    rt = lw.runtime(getattr(self.request, "hostname", None))
    if chunk:
        rt.book.started(job, chunk)
    start = time.perf_counter()
    batcher = rt.batcher()
    futures = [batcher.submit(job, ObjectRef.from_json(r), models) for r in refs]
    records = sum(len(f.result()) for f in futures)
    return {"images": len(refs), "records": records, "seconds": round(time.perf_counter() - start, 3)}

"""Producer: source → chunks of refs → broker, resumable, skipping what is done.

Listing is lazy; each chunk is published as one ``label_chunk`` task. Objects
whose (etag, model) records already exist are not sent again (unless ``force``):
their stored records are counted into the job instead. The job remembers how far
listing got, so enqueueing the same job name again resumes where it stopped, and
the job's total is recorded when listing ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

from .config import Settings, redact
from .errors import RETRYABLE_KINDS, UsageError
from .jobs import JobBook, JobInfo, new_job_id
from .records import Record
from .results import is_final
from .storage import ObjectRef, Stores, iter_source, parse_source
from .worker import TASK

logger = logging.getLogger(__name__)


@dataclass
class EnqueueResult:
    job: str
    listed: int
    enqueued: int
    skipped: int
    chunks: int
    resumed_from: int
    state: str


def settled(store: Any, refs: Sequence[ObjectRef], models: Sequence[str]) -> tuple[set[str], list[Record]]:
    """URIs whose every model has a final record with the same etag, and those records."""
    want = {r.uri: r.etag for r in refs}
    found: dict[str, list[Record]] = {}
    for model in models:
        for uri, rec in store.get_many(model, list(want)).items():
            if is_final(rec.etag, rec.status, rec.error_kind, want[uri]):
                found.setdefault(uri, []).append(rec)
    done = {uri for uri, recs in found.items() if len(recs) == len(models)}
    return done, [rec for uri in done for rec in found[uri]]


def _groups(refs: Iterator[ObjectRef], size: int) -> Iterator[list[ObjectRef]]:
    while group := list(islice(refs, size)):
        yield group


def enqueue(
    source_text: str,
    settings: Settings,
    *,
    app: Any,
    book: JobBook,
    store: Any,
    job: str | None = None,
    models: Sequence[str] | None = None,
    chunk_size: int | None = None,
    force: bool = False,
    priority: int | None = None,
) -> EnqueueResult:
    """List a source and publish its chunks; returns what was done. Resumes a named job."""
    source = parse_source(source_text)
    models = list(models or settings.models)
    size = chunk_size or settings.chunk_size
    job_id = job or new_job_id()
    info: JobInfo = book.open(job_id, source=str(source), models=models)
    resume_from = info.listed if info.state != "done" else 0
    if info.state == "done" and not force:
        return EnqueueResult(job_id, info.listed, 0, 0, 0, info.listed, "done")
    stores = Stores(settings, local_root=settings.local_root or source.root)
    refs = iter_source(source, stores)
    listed = resume_from
    for _ in islice(refs, resume_from):  # already handled by an earlier run of this job
        pass
    sent = skipped = chunks = 0
    chunk_no = info.chunks
    for group in _groups(refs, size):
        listed += len(group)
        done, existing = (set(), []) if force else settled(store, group, models)
        if existing:
            book.record(job_id, existing)
        todo = [r for r in group if r.uri not in done]
        chunk_id = None
        if todo:
            chunk_id = f"{job_id}:{chunk_no}"
            book.waiting(chunk_id)
            try:
                publish(app, settings, job_id, todo, models, chunk_id, priority)
            except BaseException:
                book.started(job_id, chunk_id)  # never sent: not waiting
                raise
            chunk_no += 1
            chunks += 1
        book.enqueued(job_id, listed=listed, refs=len(todo), chunk_id=chunk_id, skipped=len(done))
        sent += len(todo)
        skipped += len(done)
    state = book.finish_listing(job_id, listed, len(models))
    logger.info("job %s: listed %d, enqueued %d in %d chunks, skipped %d", job_id, listed, sent, chunks, skipped)
    return EnqueueResult(job_id, listed, sent, skipped, chunks, resume_from, state)


def retry(job_id: str, settings: Settings, *, app: Any, book: JobBook, store: Any,
          kinds: Sequence[str] = tuple(sorted(RETRYABLE_KINDS))) -> int:
    """Re-enqueue the job's objects whose records failed with a retryable kind; returns how many."""
    info = book.info(job_id)
    if info is None:
        raise UsageError(f"no such job: {job_id}")
    wanted = {f"e:{k}" for k in kinds}
    failed: dict[str, ObjectRef] = {}
    for page in book.items(job_id):
        uris = [(model, uri) for model, uri, st in page if st in wanted]
        by_model: dict[str, list[str]] = {}
        for model, uri in uris:
            by_model.setdefault(model, []).append(uri)
        for model, group in by_model.items():
            for uri, rec in store.get_many(model, group).items():
                failed.setdefault(uri, ObjectRef(uri, None, rec.etag))
    if not failed:
        return 0
    refs = list(failed.values())
    # The whole object is relabelled with every model of the job (one decode serves them all).
    book.forget(job_id, [(m, r.uri) for r in refs for m in info.models])
    for n, start in enumerate(range(0, len(refs), settings.chunk_size)):
        chunk_id = f"{job_id}:retry-{int(time.time())}-{n}"
        book.waiting(chunk_id)
        publish(app, settings, job_id, refs[start : start + settings.chunk_size], info.models, chunk_id)
    logger.info("job %s: re-enqueued %d objects with retryable errors", job_id, len(refs))
    return len(refs)


def publish(app: Any, settings: Settings, job: str, refs: Sequence[ObjectRef], models: Sequence[str],
            chunk_id: str | None, priority: int | None = None) -> None:
    """Send one chunk task; an unreachable broker is a UsageError."""
    from kombu.exceptions import OperationalError

    try:
        app.send_task(
            TASK,
            args=[job, [r.to_json() for r in refs], list(models), chunk_id],
            queue=settings.queue,
            priority=priority,
            task_id=chunk_id,  # a chunk published twice is one task id: workers run it once
            retry=True,
            retry_policy={"max_retries": 5, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 3},
        )
    except OperationalError as exc:
        raise UsageError(f"cannot reach the broker at {redact(settings.broker_url)}: {exc}") from None

"""Producer: source → chunks of refs → broker; bounded, resumable, skipping what is done.

One producer lists a job at a time (a lease in Redis). Listing is lazy and resumes from
the job's cursor, which advances with each group of objects handled (published, or
skipped as already labelled): a killed producer relists at most one group. Chunk ids are
derived from what a chunk holds, so a relisted group is the same chunk and runs once.
At most ``max_queued_chunks`` chunks wait in the broker (all jobs and producers together):
past that the producer pauses until workers take some. Objects a source repeats are
counted and sent once.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import islice, pairwise
from pathlib import Path
from typing import Any

from . import keys
from .config import Settings, redact
from .errors import SourceError, UsageError
from .jobs import JobBook, JobInfo, chunk_id, new_job_id
from .objects import ObjectRef, Stores
from .results import settled
from .results.base import RecordStore
from .sources import iter_listing, parse_source
from .tasks import CHUNK_TASK

logger = logging.getLogger(__name__)

LEASE_S = 60.0  # a producer renews its listing lease at least this often; a dead one's lapses


@dataclass
class EnqueueResult:
    job: str
    listed: int
    enqueued: int
    skipped: int
    chunks: int
    resumed_from: int
    state: str  # the job's state, or "busy" (another producer holds the listing)
    missing: int = 0  # objects the verification found without records and published again


class QueueFull(Exception):
    """The queue bound is reached and the caller asked not to wait."""


Pair = tuple[ObjectRef, str]  # an object and the listing cursor just past it
MIN_CHUNK = 32  # objects: the ramp and the tail never cut a chunk below this (a batch), nor above the chunk size


@dataclass(frozen=True)
class ChunkPlan:
    """Where a listing is cut into chunks: a pure function of the positions in the listing and its length.

    ``size`` is the largest chunk (``--chunk-size``). ``slots`` is how many chunks the workers work on at
    once (``LABELQ_CHUNK_SLOTS``; 0: fixed chunks of ``size``, the plan of jobs listed before plans existed).
    With slots, the first chunks ramp up (``slots`` chunks of a quarter of ``size``, ``slots`` of a half, then
    ``size``) so the first records come fast and every slot has work from the start; and the last
    ``slots x size`` objects or fewer (seen ahead before they are cut) are cut into up to ``slots`` equal chunks,
    so the slots finish together instead of one working alone on a short last chunk. The cuts depend only on
    the listing, so a producer resuming from a cursor (at a cut) cuts the rest as the first one would have:
    a relisted group is the same chunk (the same content id).
    """

    size: int
    slots: int = 0

    @property
    def floor(self) -> int:
        return min(MIN_CHUNK, self.size)

    @property
    def window(self) -> int:
        """Objects seen ahead of a cut: a listing that ends within it is cut as a tail."""
        return self.slots * self.size

    def ramp(self, index: int) -> int:
        """The size of the ``index``-th chunk of a listing longer than the window from its start."""
        if self.slots <= 0 or index >= 2 * self.slots:
            return self.size
        return max(self.floor, self.size >> (2 - index // self.slots))

    def tail(self, remaining: int) -> list[int]:
        """Sizes of the chunks of the last ``remaining`` (<= window) objects: up to ``slots`` equal parts."""
        if remaining <= 0:
            return []
        k = max(-(-remaining // self.size), min(self.slots, remaining // self.floor), 1)
        return [remaining // k + (i < remaining % k) for i in range(k)]

    def cuts(self, total: int) -> list[int]:
        """End positions of every chunk of a listing of ``total`` objects."""
        out, pos, index = [], 0, 0
        while total - pos > self.window:
            pos += min(self.ramp(index), total - pos)
            index += 1
            out.append(pos)
        for n in self.tail(total - pos):
            pos += n
            out.append(pos)
        return out

    def tail_start(self, total: int) -> int:
        """Where the tail of a listing of ``total`` objects starts (the first cut within a window of its end)."""
        pos, index = 0, 0
        while total - pos > self.window:
            pos += min(self.ramp(index), total - pos)
            index += 1
        return pos

    def encode(self) -> str:
        return f"{self.size}/{self.slots}"

    @classmethod
    def decode(cls, text: str) -> ChunkPlan:
        size, _, slots = text.partition("/")
        return cls(int(size), int(slots or 0))


def planned_groups(pairs: Iterator[Pair], plan: ChunkPlan, start: int = 0) -> Iterator[list[Pair]]:
    """The listing (resumed at position ``start``, a cut) in groups cut by ``plan``."""
    if plan.slots <= 0:
        while group := list(islice(pairs, plan.size)):
            yield group
        return
    pos, index = 0, 0
    while pos < start:  # the ramp's place at the resumed cut (a cut in the tail is found from the total below)
        pos += plan.ramp(index)
        index += 1
    pos = start
    ahead: deque[Pair] = deque()
    while True:
        ahead.extend(islice(pairs, plan.window + 1 - len(ahead)))
        if not ahead:
            return
        if len(ahead) > plan.window:  # the listing goes on past the window: a ramp (or full) chunk
            sizes = [plan.ramp(index)]
        else:  # its end is in sight: the cuts of the whole listing, from here
            sizes = [b - a for a, b in pairwise([pos, *(c for c in plan.cuts(pos + len(ahead)) if c > pos)])]
        for n in sizes:
            yield [ahead.popleft() for _ in range(n)]
            pos += n
            index += 1


def distinct_groups(pairs: Iterator[Pair], size: int | ChunkPlan, seen: set[str] | None,
                    start: int = 0) -> Iterator[tuple[list[Pair], list[ObjectRef]]]:
    """Each group of the listing (``size``: fixed groups, or a :class:`ChunkPlan`) with its objects named once:
    within the group, and (``seen`` not None: sources that can repeat an object, manifests) across groups."""
    plan = size if isinstance(size, ChunkPlan) else ChunkPlan(size)
    for group in planned_groups(pairs, plan, start):
        unique: dict[str, ObjectRef] = {}
        for ref, _ in group:
            if ref.uri not in unique and (seen is None or ref.uri not in seen):
                unique[ref.uri] = ref
        if seen is not None:
            seen.update(unique)
        yield group, list(unique.values())


def enqueue(
    source_text: str,
    settings: Settings,
    *,
    app: Any,
    book: JobBook,
    store: RecordStore,
    job: str | None = None,
    models: Sequence[str] | None = None,
    chunk_size: int | None = None,
    force: bool = False,
    priority: int | None = None,
    wait_for_room: bool = True,
    progress: Callable[[int], None] | None = None,
) -> EnqueueResult:
    """List a source and publish its chunks; resumes a named job from its cursor.

    With ``wait_for_room=False`` the producer raises :class:`QueueFull` the first time the queue is
    full (the caller hands the rest of the listing to a background producer, which resumes from the cursor).
    """
    source = parse_source(source_text, suffixes=settings.suffixes)
    models = list(models or settings.models)
    size = chunk_size or settings.chunk_size
    job_id = job or new_job_id()
    info: JobInfo = book.open(job_id, source=str(source), models=models)
    if info.state in ("done", "failed") and info.total is not None:
        if force:
            raise UsageError(f"job {job_id} has finished ({info.state}); to relabel its objects use --force with a "
                             "new --job name" + (f", or `labelq retry {job_id}` for its failures" if info.error or
                                                  info.dead else ""))
        return EnqueueResult(job_id, info.listed, 0, 0, 0, info.listed, info.state)
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    if not book.lease(job_id, token, LEASE_S) and not _take_dead_lease(book, job_id, token):
        return EnqueueResult(job_id, info.listed, 0, 0, 0, info.listed, "busy")
    try:
        return _produce(source, settings, app=app, book=book, store=store, job_id=job_id, info=info, models=models,
                        size=size, force=force, priority=priority, token=token, wait_for_room=wait_for_room,
                        progress=progress)
    except SourceError as exc:  # the source itself is bad: say so on the job rather than leave it listing
        book.listing_failed(job_id, str(exc))
        raise
    finally:
        book.release(job_id, token)


def _take_dead_lease(book: JobBook, job_id: str, token: str) -> bool:
    """Take the lease of a producer of this host that is gone (SIGKILL, OOM): its lease would
    otherwise block a resume for up to LEASE_S while nobody lists the job."""
    raw = book.redis.get(keys.job_producer(job_id))
    held = raw.decode() if isinstance(raw, bytes) else raw or ""
    host, _, rest = held.partition(":")
    pid = rest.split(":", 1)[0]
    if host != socket.gethostname() or not pid.isdigit() or _pid_alive(int(pid)):
        return False
    book.release(job_id, held)  # compare-and-delete: only that token
    if not book.lease(job_id, token, LEASE_S):
        return False
    logger.info("job %s: took over the listing lease of producer pid %s, which is gone", job_id, pid)
    return True


def _pid_alive(pid: int) -> bool:
    """A running process (a zombie nobody reaped, as a killed detached producer can be in a container
    without an init, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _produce(source: Any, settings: Settings, *, app: Any, book: JobBook, store: RecordStore, job_id: str, info: JobInfo,
             models: list[str], size: int, force: bool, priority: int | None, token: str, wait_for_room: bool,
             progress: Callable[[int], None] | None) -> EnqueueResult:
    book.listing(job_id)
    revisions = _revisions(models)
    cursor = info.cursor
    resumed_from = listed = info.listed
    stores = Stores(settings, local_root=settings.local_root or source.root)
    # Sources that can name an object twice (manifests) are de-duplicated here; a resumed
    # listing first re-reads what it handled before, to know what it already saw.
    seen: set[str] | None = set() if source.kind == "manifest" else None
    pairs = iter_listing(source, stores, after=None if seen is not None or not cursor else cursor)
    position = listed  # objects before the cursor: a listing that names each once
    if seen is not None and cursor:
        position = _replay(pairs, cursor, seen)
    # The first producer's plan stays the job's (a resume cuts the rest as it would have); a job listed
    # before plans existed (a cursor, no plan) was cut in fixed chunks.
    proposed = ChunkPlan(size, settings.slots) if not cursor else ChunkPlan(size)
    plan = ChunkPlan.decode(book.chunk_plan(job_id, proposed.encode()))
    sent = skipped = chunks = 0
    for group, refs in distinct_groups(pairs, plan, seen, start=position):
        done, existing = (set(), []) if force or not refs else settled(store, refs, models, revisions)
        if existing:  # the new job's result holds them too (its export is one record per object and model)
            copies = [replace(rec, job=job_id) for rec in existing]
            store.write(copies, chunk=chunk_id("skip:" + job_id, models, sorted(done)))
            book.count_skipped(job_id, existing, len(done))
        todo = [r for r in refs if r.uri not in done]
        if todo:
            cid = chunk_id(job_id, models, [r.uri for r in todo])
            # "done": a producer killed before it moved the cursor published this very chunk, and a worker
            # labelled it. "waiting": it reserved the chunk's place, and may or may not have published it before
            # it died: publish (again); a second copy has the same task id and runs once (JobBook.started).
            if _reserve(book, job_id, cid, settings, token, wait_for_room, app=app) in ("ok", "waiting"):
                try:
                    book.register(job_id, cid, [r.to_json() for r in todo], models, settings.chunk_deadline)
                    publish(app, settings, job_id, todo, models, cid, priority)
                except BaseException:
                    book.unreserve(cid)
                    raise
        new_cursor = group[-1][1]
        if not book.advance(job_id, cursor_was=cursor, cursor=new_cursor, listed=listed + len(refs),
                            enqueued=len(todo), chunks=int(bool(todo))):
            raise UsageError(f"job {job_id}: another producer moved the listing cursor; this one stops")
        cursor = new_cursor
        listed += len(refs)
        sent += len(todo)
        chunks += int(bool(todo))
        skipped += len(done)
        if progress is not None:
            progress(listed)
        if not book.renew(job_id, token, LEASE_S):
            raise UsageError(f"job {job_id}: lost the listing lease (another producer took over); this one stops")
    state = book.finish_listing(job_id, listed, len(models))
    logger.info("job %s: listed %d, enqueued %d in %d chunks, skipped %d", job_id, listed, sent, chunks, skipped)
    missing = 0
    if state == "verifying" or info.total is not None:
        # Complete by the counters, or a resume of a job listed before: the records decide what is left
        # (a chunk the broker or a Redis restart lost is published again here; what is in flight is not).
        from .heal import verify

        checked = verify(job_id, settings, app=app, book=book, store=store)
        state, missing = checked.state, checked.missing
    return EnqueueResult(job_id, listed, sent, skipped, chunks, resumed_from, state, missing)


def _revisions(models: Sequence[str]) -> dict[str, str | None]:
    """The current revision of each model (hub commit or folder hash): reruns skip only what it labelled."""
    from .hub import resolve_revision

    return {m: resolve_revision(m) for m in models}


def _replay(pairs: Iterator[Pair], cursor: str, seen: set[str]) -> int:
    """Re-read a de-duplicated listing up to its cursor (remembering what it held); how many entries it read
    (the position of the cursor in the listing, where the chunk plan goes on)."""
    read = 0
    for ref, cur in pairs:
        read += 1
        seen.add(ref.uri)
        if cur == cursor:
            break
    return read


RECOUNT_S = 10.0  # while the queue is full, compare the waiting count with the broker's queue this often
PUBLISHED_AFTER_S = 60.0  # a waiting entry this old has been published (or its producer is gone)


def _reserve(book: JobBook, job_id: str, cid: str, settings: Settings, token: str, wait_for_room: bool,
             *, app: Any) -> str:
    """A place in the bounded queue; waits (renewing the lease) while it is full.

    When full, the waiting entries older than ``PUBLISHED_AFTER_S`` are checked against the messages
    the broker's queue really holds (then every ``RECOUNT_S`` seconds): entries of messages lost
    without a worker starting them (a purged queue, a broker that lost its data) are forgotten, so
    the bound never blocks for ever.
    """
    delay = 0.05
    recount_at = 0.0
    while True:
        got = book.reserve(job_id, cid, settings.max_queued_chunks)
        if got != "full":
            return got
        if time.monotonic() >= recount_at:
            recount_at = time.monotonic() + RECOUNT_S
            in_queue = queued_messages(app, settings.queue)
            if in_queue is not None:
                gone = book.trim_waiting(in_queue, older_than=PUBLISHED_AFTER_S)
                if gone:
                    logger.warning("%d chunks counted as waiting were not in the broker's queue %r (purged, or the "
                                   "broker lost them); no longer counted against LABELQ_MAX_QUEUED_CHUNKS", gone,
                                   settings.queue)
                    continue
        if not wait_for_room:
            raise QueueFull(cid)
        if not book.renew(job_id, token, LEASE_S):
            raise UsageError(f"job {job_id}: lost the listing lease while waiting for room in the queue")
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 2.0)


def retry(job_id: str, settings: Settings, *, app: Any, book: JobBook, store: RecordStore) -> int:
    """Re-run a job's dead-lettered chunks, then publish again every object whose records are missing or
    failed with a retryable kind (``RETRYABLE_KINDS``), as the record store says (not Redis' failure list,
    which a Redis loss may have emptied). Returns how many objects were sent again."""
    from .heal import verify

    info = book.info(job_id)
    if info is None:
        raise UsageError(f"no such job: {job_id} (its state is gone: `labelq enqueue SOURCE --job {job_id}` again "
                         "labels what its records lack)")
    if info.total is None:
        raise UsageError(f"job {job_id} is still being listed: run the same `labelq enqueue` again to resume it")
    sent = 0
    for doc in book.unpark(job_id):
        refs = [ObjectRef.from_json(r) for r in doc["refs"]]
        book.reserve(job_id, doc["chunk"], 0)
        book.register(job_id, doc["chunk"], doc["refs"], doc["models"], settings.chunk_deadline)
        publish(app, settings, job_id, refs, doc["models"], doc["chunk"])
        sent += len(refs)
    sent += verify(job_id, settings, app=app, book=book, store=store, retryable=True).missing
    if sent:
        logger.info("job %s: re-enqueued %d objects", job_id, sent)
    return sent


def queued_messages(app: Any, queue: str) -> int | None:
    """Messages ready in the broker's queue (all priorities), or None when the broker cannot say."""
    try:
        with app.connection_for_write() as conn:
            return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
    except Exception as exc:  # noqa: BLE001
        if getattr(exc, "code", None) == 404 or "NOT_FOUND" in str(exc):
            return 0  # no such queue (Redis drops an empty one): nothing waits in it
        logger.debug("cannot count the messages in %s: %s", queue, exc)  # a broker down: do not guess
        return None


def publish(app: Any, settings: Settings, job: str, refs: Sequence[ObjectRef], models: Sequence[str],
            chunk: str | None, priority: int | None = None) -> None:
    """Send one chunk task; a broker that cannot take it is a UsageError (the producer exits non-zero)."""
    from kombu.exceptions import OperationalError

    try:
        app.send_task(
            CHUNK_TASK,
            args=[job, [r.to_json() for r in refs], list(models), chunk],
            queue=settings.queue,
            priority=priority,
            task_id=chunk,  # a chunk published twice is one task id: workers run it once
            retry=True,
            retry_policy={"max_retries": 5, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 3},
        )
    except OperationalError as exc:
        raise UsageError(f"cannot reach the broker at {redact(settings.broker_url)}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - e.g. Redis OOM: the chunk was not published
        raise UsageError(f"the broker at {redact(settings.broker_url)} refused a chunk: {type(exc).__name__}: "
                         f"{exc}") from None


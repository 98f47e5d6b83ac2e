"""The heal: the record store and the source are the truth; Redis counters, "done" marks and the
broker's delivery are caches, healed from them.

Two decisions live here, each in one place:

* :func:`verify` decides whether a job is done. It relists the source (``sources.iter_listing``) and
  looks the job's records up group by group (``job_get_many``: one round trip per group and model),
  so it costs O(chunks) lookups and streams the listing. Objects without a record for every model,
  and not in a chunk in flight or a dead-lettered one, are published again as new chunks; the
  records counted become the job's counters. Nothing missing: the job is ``done`` (``failed`` with
  dead letters). Used by a resumed ``enqueue`` of the job, by ``retry`` (which also redoes records
  with a retryable error kind) and by the heal rounds below.
* :func:`heal_round` decides which chunk the broker lost. Every chunk published is in flight
  (``labelq:job:{job}:inflight``) with a deadline that a worker holding it pushes on (its heartbeat);
  one past its deadline whose message is neither waiting in the broker's queue nor delivered and
  unacknowledged is published again, with the same chunk id (so its records and counts are the same).
  A round also verifies the jobs whose counters say they are complete (``verifying``) or that have
  nothing in flight any more. Workers run rounds every ``LABELQ_HEAL_INTERVAL`` seconds, one worker
  at a time (the ``labelq:heal`` lock).

Messages lost are seen directly on the Redis broker (its queue lists and its ``unacked`` hash are
read in one transaction; the queue is bounded by ``LABELQ_MAX_QUEUED_CHUNKS``). On other brokers
(RabbitMQ) a chunk past its deadline is published again only when the broker's queue is empty (a
passive declare's count): a lost chunk is then redone once the chunks before it have been taken.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import Settings
from .errors import RETRYABLE_KINDS, UsageError
from .jobs import JobBook, chunk_id
from .objects import ObjectRef, Stores
from .producer import distinct_groups, publish, queued_messages
from .redis_client import connect, is_redis_url
from .results.base import RecordStore
from .sources import iter_listing, parse_source

logger = logging.getLogger(__name__)

RECHECK_S = 1.0  # a chunk that looks lost is looked for again this much later (a message between BRPOP and unacked)


@dataclass
class Verified:
    """What a verification found: objects listed, records counted, objects published again."""

    job: str
    listed: int = 0
    ok: int = 0
    error: int = 0
    missing: int = 0  # objects without every record, not in flight and not dead-lettered: published again
    waiting: int = 0  # objects without every record that a chunk in flight still holds
    chunks: int = 0
    state: str = ""


@dataclass
class HealReport:
    republished: dict[str, int] = field(default_factory=dict)  # job → chunks published again
    verified: list[Verified] = field(default_factory=list)

    @property
    def chunks_republished(self) -> int:
        return sum(self.republished.values())


def verify(job_id: str, settings: Settings, *, app: Any, book: JobBook, store: RecordStore, retryable: bool = False,
           tick: Callable[[], object] | None = None) -> Verified:
    """Check the job's records against its source; publish again what is missing; settle the counters.

    ``retryable``: objects whose record failed with a retryable kind are redone too (``labelq retry``).
    ``tick`` is called once per group (the heal renews its lock there).
    """
    info = book.info(job_id)
    if info is None:
        raise UsageError(f"no such job: {job_id} (its state is gone: `labelq enqueue SOURCE --job {job_id}` again "
                         "labels what its records lack)")
    out = Verified(job_id, state=info.state)
    if info.state == "listing" or info.total is None:
        return out  # its producer decides when the listing ends
    models = info.models
    source = parse_source(info.source, suffixes=settings.suffixes)
    stores = Stores(settings, local_root=settings.local_root or source.root)
    refresh = getattr(store, "refresh", None)
    if refresh is not None:
        refresh()  # a store that caches its file index must see what was written since
    held = book.in_flight_uris(job_id)
    dead = {r[0] for d in book.dead_chunks(job_id) for r in d.get("refs", [])}
    seen: set[str] | None = set() if source.kind == "manifest" else None
    todo: list[ObjectRef] = []
    failed: list[tuple[str, str]] = []  # (model, uri) of retryable failures redone
    for _, group in distinct_groups(iter_listing(source, stores), settings.chunk_size, seen):
        out.listed += len(group)
        uris = [ref.uri for ref in group]
        found = {m: store.job_get_many(job_id, m, uris) for m in models}
        for ref in group:
            uri = ref.uri
            recs = [found[m].get(uri) for m in models]
            redo_failed = retryable and any(r is not None and not r.ok and r.error_kind in RETRYABLE_KINDS
                                            for r in recs)
            if any(r is None for r in recs) or redo_failed:
                if uri in held:
                    out.waiting += 1
                elif uri not in dead:
                    todo.append(ref)
                    failed += [(r.model, uri) for r in recs if r is not None and not r.ok]
                    continue  # its records are written (and counted) again by the new chunk
            for r in recs:
                if r is not None:
                    out.ok += r.ok
                    out.error += not r.ok
        if tick is not None:
            tick()
    out.missing = len(todo)
    if failed:
        book.forget(job_id, failed)  # out of `status --errors`: they are being redone
    complete = not todo and not out.waiting
    if complete and info.state in ("done", "failed"):
        return out  # verified before and nothing to redo (objects removed from the source since keep their count)
    out.state = book.settle(job_id, ok=out.ok, error=out.error, expected=out.listed * len(models), complete=complete)
    for start in range(0, len(todo), settings.chunk_size):  # after the settle: these chunks count themselves
        part = todo[start : start + settings.chunk_size]
        cid = chunk_id(f"{job_id}:heal", models, [r.uri for r in part])
        book.reserve(job_id, cid, 0)
        book.register(job_id, cid, [r.to_json() for r in part], models, settings.chunk_deadline)
        publish(app, settings, job_id, part, models, cid)
        out.chunks += 1
    if out.chunks:
        book.added_chunks(job_id, out.chunks)
    level = logging.WARNING if todo else logging.INFO
    logger.log(level, "job %s verified: %d listed, records ok %d, failed %d; %d objects without records published "
               "again in %d chunks, %d still in flight: %s", job_id, out.listed, out.ok, out.error, out.missing,
               out.chunks, out.waiting, out.state)
    return out


# ------------------------------------------------------------------------------------------ the broker


def broker_holds(settings: Settings) -> set[str] | None:
    """Task ids of every bulk message the Redis broker holds (waiting in the queue or delivered and not
    acknowledged), read in one transaction; None when the broker is not Redis or cannot say."""
    if not is_redis_url(settings.broker_url):
        return None
    try:
        client = connect(settings.broker_url, master=settings.sentinel_master, check=False)
        try:
            lists = [settings.queue] + [f"{settings.queue}\x06\x16{step}" for step in range(1, 10)]
            pipe = client.pipeline(transaction=True)
            for name in lists:
                pipe.lrange(name, 0, -1)
            pipe.hvals("unacked")
            *queued, unacked = pipe.execute()
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - a broker down: do not guess
        logger.debug("cannot read the broker's queue: %s", exc)
        return None
    ids: set[str] = set()
    for raw in [m for part in queued for m in part]:
        ids.add(_task_id(raw))
    for raw in unacked:
        try:
            ids.add(_task_id(json.loads(raw)[0]))
        except (ValueError, IndexError, TypeError):
            continue
    return ids


def _task_id(raw: Any) -> str:
    try:
        msg = raw if isinstance(raw, dict) else json.loads(raw)
        return str(msg["headers"]["id"])
    except (ValueError, KeyError, TypeError):
        return ""


def _lost(settings: Settings, app: Any, overdue: dict[str, list[str]]) -> dict[str, list[str]] | None:
    """Of the overdue chunks, those the broker does not hold (None: it cannot say yet)."""
    held = broker_holds(settings)
    if held is not None:
        return {job: [c for c in chunks if c not in held] for job, chunks in overdue.items()}
    if queued_messages(app, settings.queue) == 0:  # RabbitMQ: nothing waits, so nothing overdue is queued
        return overdue
    return None


# ------------------------------------------------------------------------------------------ a round


def heal_round(settings: Settings, *, app: Any, book: JobBook, store: RecordStore,
               tick: Callable[[], object] | None = None) -> HealReport:
    """One heal round over the active jobs (the caller holds the heal lock)."""
    report = HealReport()
    overdue: dict[str, list[str]] = {}
    to_verify: list[str] = []
    for job in book.active():
        info = book.info(job)
        if info is None or info.state in ("done", "failed"):
            book.forget_job(job)
            continue
        late = book.overdue(job)
        if late:
            overdue[job] = late
        if info.state == "verifying" or (info.state == "running" and info.total is not None
                                         and book.in_flight(job) == 0):
            to_verify.append(job)
    if overdue:
        lost = _lost(settings, app, overdue)
        if lost and any(lost.values()):
            time.sleep(RECHECK_S)  # one popped by a worker a moment ago is in its unacked hash by now
            again = _lost(settings, app, {j: book.overdue(j) for j in lost})
            for job, chunks in (again or {}).items():
                for chunk in set(chunks) & set(lost.get(job, [])):
                    if _republish(settings, app, book, job, chunk):
                        report.republished[job] = report.republished.get(job, 0) + 1
        if lost is not None:  # waiting in the broker or delivered: not lost, look again a deadline later
            book.hold([(j, c) for j, cs in overdue.items() for c in cs if c not in lost.get(j, [])],
                      settings.chunk_deadline)
    for job in to_verify:
        if time.monotonic() < _not_before.get(job, 0.0):
            continue
        try:
            report.verified.append(verify(job, settings, app=app, book=book, store=store, tick=tick))
            _not_before.pop(job, None)
        except Exception as exc:  # noqa: BLE001 - one job's source out of reach must not stop the others
            _not_before[job] = time.monotonic() + VERIFY_BACKOFF_S
            logger.warning("job %s: cannot verify against its records now (%s: %s); trying again in %.0fs, or run "
                           "the same `labelq enqueue` where its source can be read", job, type(exc).__name__, exc,
                           VERIFY_BACKOFF_S)
    return report


VERIFY_BACKOFF_S = 300.0  # a job whose source this worker cannot list is tried again this much later
_not_before: dict[str, float] = {}  # job → monotonic time before which this process does not verify it again


def _republish(settings: Settings, app: Any, book: JobBook, job: str, chunk: str) -> bool:
    payload = book.payload(job, chunk)
    if payload is None:  # done or parked since
        return False
    refs = [ObjectRef.from_json(r) for r in payload["refs"]]
    publish(app, settings, job, refs, payload["models"], chunk)
    book.republished(job, chunk, settings.chunk_deadline)
    logger.warning("job %s chunk %s: past its deadline and neither in the broker nor held by a worker (lost by "
                   "the broker): published again (%d objects)", job, chunk, len(refs))
    return True


class Healer:
    """A worker's heal thread: heartbeats for the chunks in its hands, and heal rounds under the lock."""

    def __init__(self, settings: Settings, *, app: Any, book: JobBook, store: RecordStore, name: str,
                 in_hand: Callable[[], Sequence[tuple[str, str]]],
                 on_republish: Callable[[int], None] | None = None) -> None:
        import threading

        self.settings, self.app, self.book, self.store = settings, app, book, store
        self.token = f"{name}:{id(self):x}"
        self.in_hand = in_hand
        self.on_republish = on_republish
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="labelq-heal", daemon=True)

    def start(self) -> Healer:
        self.thread.start()
        return self

    def wake(self) -> None:
        """Run a round now (a job's counters say it is complete)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _lock_ttl(self) -> float:
        return max(60.0, 3 * self.settings.heal_interval)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.heal_interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.once()
            except Exception as exc:  # noqa: BLE001 - Redis away: the next round tries again
                logger.warning("heal round failed: %s: %s", type(exc).__name__, exc)

    def once(self) -> HealReport | None:
        """Push on the deadlines of the chunks in hand; one round if this worker gets the lock."""
        self.book.hold(list(self.in_hand()), self.settings.chunk_deadline)
        ttl = self._lock_ttl()
        if not self.book.heal_lock(self.token, ttl):
            return None
        try:
            report = heal_round(self.settings, app=self.app, book=self.book, store=self.store,
                                tick=lambda: self.book.heal_lock(self.token, ttl))
        finally:
            self.book.heal_unlock(self.token)
        if report.chunks_republished and self.on_republish is not None:
            self.on_republish(report.chunks_republished)
        return report

"""Every Redis key labelq writes, in one place (tests import these instead of retyping).

Job state costs O(chunks in flight) plus O(failures), never O(objects): successes are
counted per chunk, and only failures are listed. ``{model}`` and ``{uri}`` are as in records.

==========================================  ======  ==================================================
key                                         type    holds
==========================================  ======  ==================================================
``labelq:job:{job}``                        hash    job state: state, source, models, created_at,
                                                    finished_at, total, expected, listed, enqueued,
                                                    skipped, chunks, chunks_done, ok, error, dead,
                                                    cursor (where listing resumes), plan (where it
                                                    is cut into chunks: size/slots), producer_at,
                                                    progress_at (last record written), republished
                                                    (chunks the heal published again); state is
                                                    listing, running, verifying, done or failed
``labelq:job:{job}:errors``                 hash    error kind → count of failed (uri, model) pairs
``labelq:job:{job}:failed``                 hash    ``{model}\t{uri}`` → ``{kind}\t{chunk}\t{etag}\t{message}``:
                                                    the failures (``status --errors``, ``retry``)
``labelq:job:{job}:chunk:{chunk}``          string  2 bits per (object, model) of a chunk in flight
                                                    (0 none, 1 ok, 2 error): counts each once under
                                                    redelivery; deleted when the chunk is done
``labelq:job:{job}:chunks-done``            set     chunk ids fully written: a duplicate runs once
``labelq:job:{job}:dead``                   hash    chunk id → JSON (refs, models, error, attempts):
                                                    chunks that failed every attempt; ``retry`` re-runs
``labelq:job:{job}:skips``                  set     ids of groups of already-labelled objects counted
                                                    into the job (a relisted group counts once)
``labelq:job:{job}:producer``               string  the listing lease: one producer lists a job at a time
``labelq:job:{job}:inflight``               zset    chunk id → deadline (unix seconds) of every chunk
                                                    published and not yet done or parked; a worker
                                                    holding it pushes the deadline on (heartbeat)
``labelq:job:{job}:payload``                hash    chunk id → JSON (refs, models) of a chunk in flight:
                                                    what the heal publishes again (deleted when done)
``labelq:job:{job}:events``                 channel pub/sub: the job's state, when a chunk is done or
                                                    parked, its listing ends or fails, or it is verified
                                                    (wakes ``--wait``; a lost message costs one poll)
``labelq:job:{job}:rec:{model}``            hash    uri → the job's record (Redis record store only)
``labelq:rec:{model}``                      hash    uri → latest record across jobs (Redis record store
                                                    only): reruns skip what is here with the same etag
``labelq:jobs``                             zset    job id → created time (unix seconds)
``labelq:active``                           set     ids of jobs not yet done or failed (the heal's rounds)
``labelq:heal``                             string  the heal lock: one worker heals at a time (expires)
``labelq:chunks``                           zset    chunk id → enqueue time while it waits for a worker:
                                                    the queue bound (LABELQ_MAX_QUEUED_CHUNKS) and the
                                                    oldest waiting chunk's age
``labelq:audit``                            stream  moderation audit trail: one entry per action taken
``labelq:actions``                          hash    ``{uri}\t{action}`` → ``{policy version}\t{etag}\t{processed_at}``:
                                                    an action is applied once to each record of an object
``labelq:released``                         hash    uri → etag a reviewer released from quarantine
                                                    (``labelq console``): that version is never acted on again
``labelq:seen-event:{uri}:{etag}``          string  de-duplicates object-created events (expires)
``labelq:review:item:{id}``                 hash    a review item: one object version a policy acted on,
                                                    its state, version, claim and decision
                                                    (:mod:`labelq.reviews`); ``…:log`` list: its history
``labelq:review:ix:{bucket}:{facet}:{sort}``  zset  item ids per state bucket (pending, decided,
                                                    claimed:{reviewer}) and facet (job, model, label,
                                                    policy), by age (seq) or by score
``labelq:review:facets``                    hash    facet id → JSON (job, model, label, policy)
``labelq:review:claims``                    zset    item id → claim expiry (unix seconds)
``labelq:review:buckets``                   set     bucket names in use
``labelq:review:seq``, ``…:timeline``       string, sequence of items; zset seq → unix second (age
                                            zset    filters)
``labelq:review:migrated``                  string  set once the store was rebuilt from ``labelq:audit``
``labelq:console:session:{sid}``            hash    a console session (user, csrf); expires
``labelq:console:user-sessions:{user}``     set     a user's session ids (sign out everywhere)
``labelq:console:throttle:{who}``           string  failed sign-ins per user / address (expires)
``labelq:lake:{table}:pending``             list    ``{unix seconds}\t{file key}``: Delta store chunk files written
                                                    and not yet committed, all writers of one table (a cache:
                                                    ``labelq compact`` commits from the folder listing)
``labelq:lake:{table}:lease``               string  the Delta store committer's lease (expires)
``{LABELQ_EVENTS_KEY}:processing``          list    MinIO events `listen` took and has not yet queued
``labelq:outbox:due``                       zset    moderation outbox: entry id → next attempt (unix s)
``labelq:outbox:items``                     hash    entry id → JSON (webhook URL, body, attempts, error)
``labelq:outbox:seen``                      hash    entry id → ``queued|sent|dead {time}`` (de-duplicates)
``labelq:outbox:dead``                      hash    entry id → JSON of a notification that failed every attempt
==========================================  ======  ==================================================

TTLs: job keys expire ``result_ttl`` seconds after their last write (0 = never);
``labelq:rec:*`` hashes get the same TTL refreshed on every write. Keys are built in
the Lua scripts of :mod:`labelq.jobs` from :func:`job` (``KEYS[1]``) plus these suffixes.
"""

from __future__ import annotations

PREFIX = "labelq:"
JOBS = PREFIX + "jobs"
AUDIT = PREFIX + "audit"
ACTIONS = PREFIX + "actions"
RELEASED = PREFIX + "released"
REVIEW = PREFIX + "review:"  # the review store (labelq.reviews) keeps its keys under this prefix
REVIEW_MIGRATED = REVIEW + "migrated"
CONSOLE = PREFIX + "console:"  # console sessions and sign-in throttling
CHUNKS = PREFIX + "chunks"
ACTIVE = PREFIX + "active"
HEAL_LOCK = PREFIX + "heal"
SEP = "\t"  # between model and uri in a job's item field (hub ids and URIs never hold a tab)


def lake_pending(table: str) -> str:
    return f"{PREFIX}lake:{table}:pending"


def lake_lease(table: str) -> str:
    return f"{PREFIX}lake:{table}:lease"


def records(model: str) -> str:
    return f"{PREFIX}rec:{model}"


def job(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def job_records(job_id: str, model: str) -> str:
    return f"{PREFIX}job:{job_id}:rec:{model}"


def job_failed(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:failed"


def job_chunk_bits(job_id: str, chunk_id: str) -> str:
    return f"{PREFIX}job:{job_id}:chunk:{chunk_id}"


def job_dead(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:dead"


def job_skips(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:skips"


def job_producer(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:producer"


def job_inflight(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:inflight"


def job_payloads(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:payload"


def job_events(job_id: str) -> str:
    """Pub/sub channel: the job's new state, published when a chunk is done or parked, its listing ends or
    fails, or a verification settles it (labelq.job_events: wakes ``--wait``)."""
    return f"{PREFIX}job:{job_id}:events"


def job_errors(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:errors"


def seen_event(uri: str, etag: str | None, sequencer: str | None = None) -> str:
    return f"{PREFIX}seen-event:{uri}:{etag or ''}:{sequencer or ''}"


def job_chunks_done(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:chunks-done"


def item_field(model: str, uri: str) -> str:
    return f"{model}{SEP}{uri}"


def split_item(field: str | bytes) -> tuple[str, str]:
    text = field.decode() if isinstance(field, bytes) else field
    model, uri = text.split(SEP, 1)
    return model, uri


# --- issue 19, process side (labelq.listen, labelq.moderation.outbox): reliable queues and the outbox


OUTBOX_DUE = PREFIX + "outbox:due"  # labelq.moderation.outbox: entry id → next attempt (unix seconds)
OUTBOX_ITEMS = PREFIX + "outbox:items"  # entry id → JSON
OUTBOX_SEEN = PREFIX + "outbox:seen"  # entry id → queued|sent|dead {time}: at most once per object and policy version
OUTBOX_DEAD = PREFIX + "outbox:dead"  # entry id → JSON of an entry that failed every attempt


def events_processing(events_key: str) -> str:
    """The list `labelq listen` moves each MinIO event to until its tasks are published (a reliable queue)."""
    return f"{events_key}:processing"

"""Every Redis key labelq writes, in one place (tests import these instead of retyping).

Layout (``{model}`` and ``{uri}`` are the model name and the object's URI as in records):

========================================  ======  ==================================================
key                                       type    holds
========================================  ======  ==================================================
``labelq:rec:{model}``                    hash    uri → latest record of that object for that model:
                                                  one status char (``o`` ok / ``e`` error) + JSON.
                                                  Global across jobs: reruns skip what is here with
                                                  the same etag. Only with the Redis result store.
``labelq:job:{job}``                      hash    job state: state, source, models, created_at,
                                                  finished_at, total, listed, enqueued, chunks,
                                                  ok, error (counters of (uri, model) pairs)
``labelq:job:{job}:items``                hash    ``{model}\\t{uri}`` → status char (+ error kind);
                                                  each (uri, model) counted once per job, also when
                                                  a chunk is redelivered; export streams it (HSCAN)
``labelq:job:{job}:errors``               hash    error kind → count
``labelq:job:{job}:chunks-done``          set     chunk ids fully written: a chunk published twice (a
                                                  producer killed between publish and bookkeeping) runs once
``labelq:jobs``                           zset    job id → created time (unix seconds)
``labelq:chunks``                         zset    chunk id (``{job}:{n}``) → enqueue time, removed when
                                                  a worker starts it: the oldest waiting chunk's age
``labelq:audit``                          stream  moderation audit trail: one entry per action taken
``labelq:actions``                        hash    ``{uri}\t{action}`` → ``{policy version}\t{etag}\t{processed_at}``:
                                                  an action is applied once to each record of an object
``labelq:seen-event:{uri}:{etag}``        string  de-duplicates object-created events (expires)
========================================  ======  ==================================================

TTLs: job keys expire ``result_ttl`` seconds after their last write (0 = never);
``labelq:rec:*`` hashes get the same TTL refreshed on every write.
"""

from __future__ import annotations

PREFIX = "labelq:"
JOBS = PREFIX + "jobs"
AUDIT = PREFIX + "audit"
ACTIONS = PREFIX + "actions"
CHUNKS = PREFIX + "chunks"
SEP = "\t"  # between model and uri in a job's item field (hub ids and URIs never hold a tab)


def records(model: str) -> str:
    return f"{PREFIX}rec:{model}"


def job(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def job_items(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:items"


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

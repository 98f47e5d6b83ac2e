"""Job bookkeeping in Redis: state, totals, counters that count each (uri, model) once.

A job is created (or resumed) by the producer, fed chunk by chunk, and finished
when every listed object has a record for every model. All writes of one batch
of records go through one Lua script: one round trip, atomic, idempotent — a
redelivered chunk rewrites the same items and moves no counter.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import keys
from .errors import UsageError
from .records import Record, utcnow

logger = logging.getLogger(__name__)

# KEYS: job, items, errors, then one record hash per model (used when ARGV[3] == "1").
# ARGV: ttl, now, bodies, n, then n × (model index, item field, status, uri, body).
_RECORD_LUA = """
local ttl = tonumber(ARGV[1])
local now = ARGV[2]
local bodies = ARGV[3] == '1'
local n = tonumber(ARGV[4])
local dok, derr = 0, 0
local i = 5
for r = 1, n do
  local mi, fld, st, uri, body = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  i = i + 5
  if bodies then redis.call('HSET', KEYS[3 + mi], uri, body) end
  local old = redis.call('HGET', KEYS[2], fld)
  if old ~= st then
    redis.call('HSET', KEYS[2], fld, st)
    if old then
      if string.sub(old, 1, 1) == 'o' then dok = dok - 1
      else derr = derr - 1; redis.call('HINCRBY', KEYS[3], string.sub(old, 3), -1) end
    end
    if string.sub(st, 1, 1) == 'o' then dok = dok + 1
    else derr = derr + 1; redis.call('HINCRBY', KEYS[3], string.sub(st, 3), 1) end
  end
end
local nok = redis.call('HINCRBY', KEYS[1], 'ok', dok)
local nerr = redis.call('HINCRBY', KEYS[1], 'error', derr)
local expected = tonumber(redis.call('HGET', KEYS[1], 'expected') or '-1')
if expected >= 0 and nok + nerr >= expected and redis.call('HGET', KEYS[1], 'state') ~= 'done' then
  redis.call('HSET', KEYS[1], 'state', 'done', 'finished_at', now)
end
if ttl > 0 then
  for k = 1, #KEYS do redis.call('EXPIRE', KEYS[k], ttl) end
end
return {nok, nerr}
"""

# KEYS: job. ARGV: total, expected, now. Listing is over: record totals, maybe finish at once.
_FINISH_LISTING_LUA = """
redis.call('HSET', KEYS[1], 'total', ARGV[1], 'expected', ARGV[2])
local nok = tonumber(redis.call('HGET', KEYS[1], 'ok') or '0')
local nerr = tonumber(redis.call('HGET', KEYS[1], 'error') or '0')
if nok + nerr >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'done', 'finished_at', ARGV[3])
else
  redis.call('HSET', KEYS[1], 'state', 'running')
end
return redis.call('HGET', KEYS[1], 'state')
"""


# KEYS: job, items, errors. ARGV: item fields to forget (their objects are being retried).
_UNMARK_LUA = """
local dok, derr, n = 0, 0, 0
for i = 1, #ARGV do
  local old = redis.call('HGET', KEYS[2], ARGV[i])
  if old then
    redis.call('HDEL', KEYS[2], ARGV[i])
    n = n + 1
    if string.sub(old, 1, 1) == 'o' then dok = dok - 1
    else derr = derr - 1; redis.call('HINCRBY', KEYS[3], string.sub(old, 3), -1) end
  end
end
redis.call('HINCRBY', KEYS[1], 'ok', dok)
redis.call('HINCRBY', KEYS[1], 'error', derr)
if n > 0 then
  redis.call('HSET', KEYS[1], 'state', 'running')
  redis.call('HDEL', KEYS[1], 'finished_at')
end
return n
"""


def status_code(rec: Record) -> str:
    """What a job's item field holds: ``o`` or ``e:<kind>``."""
    return "o" if rec.ok else f"e:{rec.error_kind}"


def body(rec: Record) -> str:
    """What a record hash holds: the status char, then the record's JSON."""
    return ("o" if rec.ok else "e") + rec.to_json()


def parse_body(value: str | bytes) -> Record:
    text = value.decode() if isinstance(value, bytes) else value
    return Record.from_json(text[1:])


@dataclass
class JobInfo:
    id: str
    state: str
    source: str
    models: list[str]
    created_at: str
    finished_at: str | None = None
    total: int | None = None
    expected: int | None = None
    listed: int = 0
    enqueued: int = 0
    skipped: int = 0
    chunks: int = 0
    ok: int = 0
    error: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def processed(self) -> int:
        return self.ok + self.error

    @property
    def done(self) -> bool:
        return self.state == "done"

    @classmethod
    def from_hash(cls, job_id: str, raw: dict[str, str], errors: dict[str, str]) -> JobInfo:
        def num(name: str) -> int | None:
            return int(raw[name]) if raw.get(name) not in (None, "") else None

        return cls(
            id=job_id,
            state=raw.get("state", "unknown"),
            source=raw.get("source", ""),
            models=json.loads(raw.get("models", "[]")),
            created_at=raw.get("created_at", ""),
            finished_at=raw.get("finished_at"),
            total=num("total"),
            expected=num("expected"),
            listed=num("listed") or 0,
            enqueued=num("enqueued") or 0,
            skipped=num("skipped") or 0,
            chunks=num("chunks") or 0,
            ok=num("ok") or 0,
            error=num("error") or 0,
            errors={k: int(v) for k, v in errors.items() if int(v) > 0},
        )

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["processed"] = self.processed
        return out


def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


class JobBook:
    """Job state in Redis; every call takes a client handed in (never a global)."""

    def __init__(self, redis: Any, *, ttl: int = 0) -> None:
        self.redis = redis
        self.ttl = ttl
        self._record = redis.register_script(_RECORD_LUA)
        self._finish = redis.register_script(_FINISH_LISTING_LUA)
        self._unmark = redis.register_script(_UNMARK_LUA)

    # ---------------------------------------------------------------- producer side

    def open(self, job_id: str, *, source: str, models: Sequence[str]) -> JobInfo:
        """Create the job, or resume it when it exists with the same source and models."""
        key = keys.job(job_id)
        created = self.redis.hsetnx(key, "created_at", utcnow())
        if created:
            self.redis.hset(key, mapping={"state": "listing", "source": source, "models": json.dumps(list(models)),
                                          "ok": 0, "error": 0})
            self.redis.zadd(keys.JOBS, {job_id: time.time()})
            self._expire(key)
        info = self.info(job_id)
        assert info is not None
        if not created:
            if info.source != source or info.models != list(models):
                raise UsageError(
                    f"job {job_id} exists with source {info.source} and models {', '.join(info.models)}; "
                    "use another --job name to label something else"
                )
            if info.state != "done":
                self.redis.hset(key, "state", "listing")
        return info

    def enqueued(self, job_id: str, *, listed: int, refs: int, chunk_id: str | None, skipped: int = 0) -> None:
        """Account for one chunk handed to the broker (and the objects skipped before it)."""
        pipe = self.redis.pipeline(transaction=True)
        key = keys.job(job_id)
        pipe.hset(key, "listed", listed)
        pipe.hincrby(key, "enqueued", refs)
        if skipped:
            pipe.hincrby(key, "skipped", skipped)
        if chunk_id:
            pipe.hincrby(key, "chunks", 1)
        pipe.execute()

    def received(self, job_id: str, n: int) -> None:
        """A streaming job (``labelq listen``) took n more objects; it has no total."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrby(keys.job(job_id), "listed", n)
        pipe.hincrby(keys.job(job_id), "enqueued", n)
        pipe.hset(keys.job(job_id), "state", "running")
        pipe.execute()

    def waiting(self, chunk_id: str) -> None:
        """A chunk is about to be published: it waits until a worker starts it (call before publishing,
        so a fast worker's ``started`` cannot come first)."""
        self.redis.zadd(keys.CHUNKS, {chunk_id: time.time()})

    def finish_listing(self, job_id: str, total: int, n_models: int) -> str:
        state = self._finish(keys=[keys.job(job_id)], args=[total, total * n_models, utcnow()])
        return state.decode() if isinstance(state, bytes) else str(state)

    # ---------------------------------------------------------------- worker side

    def record(
        self,
        job_id: str,
        records: Sequence[Record],
        *,
        bodies: bool = False,
    ) -> tuple[int, int]:
        """Mark records in the job (each (uri, model) once) and, with ``bodies``, store them.

        Returns the job's (ok, error) counters after the write.
        """
        models = list(dict.fromkeys(r.model for r in records))
        index = {m: i + 1 for i, m in enumerate(models)}
        args: list[Any] = [self.ttl, utcnow(), "1" if bodies else "0", len(records)]
        for rec in records:
            args += [index[rec.model], keys.item_field(rec.model, rec.uri), status_code(rec), rec.uri,
                     body(rec) if bodies else ""]
        job_keys = [keys.job(job_id), keys.job_items(job_id), keys.job_errors(job_id)]
        nok, nerr = self._record(keys=job_keys + [keys.records(m) for m in models], args=args)
        return int(nok), int(nerr)

    def forget(self, job_id: str, items: Sequence[tuple[str, str]]) -> int:
        """Take (model, uri) items out of the job's counts so they can be labelled again."""
        fields = [keys.item_field(model, uri) for model, uri in items]
        if not fields:
            return 0
        return int(self._unmark(keys=[keys.job(job_id), keys.job_items(job_id), keys.job_errors(job_id)], args=fields))

    # ---------------------------------------------------------------- readers

    def info(self, job_id: str) -> JobInfo | None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.job(job_id))
        pipe.hgetall(keys.job_errors(job_id))
        raw, errors = pipe.execute()
        if not raw:
            return None
        return JobInfo.from_hash(job_id, _text(raw), _text(errors))

    def jobs(self, limit: int = 50) -> list[JobInfo]:
        ids = [i.decode() if isinstance(i, bytes) else i for i in self.redis.zrevrange(keys.JOBS, 0, limit - 1)]
        return [info for info in (self.info(i) for i in ids) if info is not None]

    def items(self, job_id: str, *, count: int = 1000) -> Iterator[list[tuple[str, str, str]]]:
        """The job's (model, uri, status code) items, a page at a time (HSCAN: bounded memory)."""
        cursor = 0
        while True:
            cursor, page = self.redis.hscan(keys.job_items(job_id), cursor, count=count)
            if page:
                out = []
                for fld, st in page.items():
                    model, uri = keys.split_item(fld)
                    out.append((model, uri, st.decode() if isinstance(st, bytes) else st))
                yield out
            if cursor == 0:
                return

    def started(self, job_id: str, chunk_id: str) -> bool:
        """A worker took the chunk: it no longer waits. True when the chunk was already labelled
        (a producer that died between publishing and bookkeeping published it twice)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(keys.CHUNKS, chunk_id)
        pipe.sismember(keys.job_chunks_done(job_id), chunk_id)
        return bool(pipe.execute()[1])

    def chunk_done(self, job_id: str, chunk_id: str) -> None:
        """Every record of the chunk is written: a duplicate message of it can be skipped."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(keys.job_chunks_done(job_id), chunk_id)
        if self.ttl:
            pipe.expire(keys.job_chunks_done(job_id), self.ttl)
        pipe.execute()

    def oldest_waiting(self) -> tuple[float | None, int]:
        """Age in seconds of the oldest enqueued chunk no worker has started, and how many wait."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrange(keys.CHUNKS, 0, 0, withscores=True)
        pipe.zcard(keys.CHUNKS)
        first, waiting = pipe.execute()
        return (time.time() - first[0][1] if first else None), int(waiting)

    def _expire(self, key: str) -> None:
        if self.ttl:
            self.redis.expire(key, self.ttl)


def _text(raw: dict[Any, Any]) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}

"""Job bookkeeping in Redis: state, exact totals, failures and dead letters, at O(chunks in flight).

A job is opened (or resumed) by the producer and fed chunk by chunk. Its counters are a view:
when they say every (object, model) it listed has a record or sits in a dead-lettered chunk, or
when nothing of it is in flight any more, it goes to ``verifying``, and only the verification
against the record store (:mod:`labelq.heal`) makes it ``done`` or ``failed``. Every chunk
published is in flight (``labelq:job:{job}:inflight``, with a deadline and its payload) until it
is done or parked, so a chunk the broker lost is published again (:mod:`labelq.heal`). Counting is per
chunk: each chunk in flight holds two bits per (object, model) (none / ok / error), so a
redelivered or duplicated chunk rewrites its own bits and moves no counter twice; the bits
are dropped when the chunk is done. Successes are only counted; failures are listed (they
are few) for ``status --errors`` and ``retry``. Every write of a batch is one Lua call.

Key layout: :mod:`labelq.keys`. Outcome codes (``o`` / ``e:<kind>``): :mod:`labelq.records`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import keys
from .errors import UsageError
from .records import Record, status_code, utcnow

logger = logging.getLogger(__name__)

# Shared by the scripts: the job hash is KEYS[1]; other job keys are built from ARGV[1] (its prefix).
_FINISH = """
-- Counters are a view: when they say the job is complete, or nothing of it is in flight any more,
-- the job goes to 'verifying'; only the verification against the record store (labelq.heal) makes it
-- 'done' or 'failed'.
local function finish(job, now)
  local st = redis.call('HGET', job, 'state')
  if st ~= 'running' then return end
  local expected = tonumber(redis.call('HGET', job, 'expected') or '-1')
  if expected < 0 then return end
  local nok = tonumber(redis.call('HGET', job, 'ok') or '0')
  local nerr = tonumber(redis.call('HGET', job, 'error') or '0')
  local dead = tonumber(redis.call('HGET', job, 'dead') or '0')
  if nok + nerr + dead >= expected or redis.call('ZCARD', job .. ':inflight') == 0 then
    redis.call('HSET', job, 'state', 'verifying')
  end
end
-- Wake whoever waits on the job (labelq.job_events): its state, on the job's channel.
local function notify(job)
  redis.call('PUBLISH', job .. ':events', redis.call('HGET', job, 'state') or '')
end
"""

# KEYS: job. ARGV: prefix, ttl, now, n, then n x (chunk, pos, field, code, info).
# code is 'o' or 'e:<kind>'; info (errors only) is "<kind>\t<chunk>\t<etag>\t<message>".
_RECORD_LUA = _FINISH + """
local job, prefix, ttl, now, n = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local errors, failed, done = prefix .. ':errors', prefix .. ':failed', prefix .. ':chunks-done'
local state = redis.call('HGET', job, 'state')
if state == 'done' or state == 'failed' then
  -- verified against the records: a late copy rewrites the same records and moves no counter
  return {tonumber(redis.call('HGET', job, 'ok') or '0'), tonumber(redis.call('HGET', job, 'error') or '0')}
end
local dok, derr, i = 0, 0, 5
local function kindof(info) return string.match(info, '^([^\\t]*)') end
local touched, open = {}, {}
for r = 1, n do
  local chunk, pos, fld, code, info = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  i = i + 5
  if open[chunk] == nil then open[chunk] = redis.call('SISMEMBER', done, chunk) == 0 end
  if open[chunk] then
    local bits = prefix .. ':chunk:' .. chunk
    touched[bits] = true
    local new = (code == 'o') and 1 or 2
    local old = redis.call('BITFIELD', bits, 'SET', 'u2', pos * 2, new)[1]
    if old ~= new then
      if old == 1 then dok = dok - 1 elseif old == 2 then
        derr = derr - 1
        local prev = redis.call('HGET', failed, fld)
        if prev then redis.call('HINCRBY', errors, kindof(prev), -1); redis.call('HDEL', failed, fld) end
      end
      if new == 1 then dok = dok + 1 else
        derr = derr + 1
        redis.call('HSET', failed, fld, info)
        redis.call('HINCRBY', errors, string.sub(code, 3), 1)
      end
    elseif new == 2 then
      local prev = redis.call('HGET', failed, fld)
      if prev ~= info then
        local pk = prev and kindof(prev) or nil
        if pk ~= string.sub(code, 3) then
          if pk then redis.call('HINCRBY', errors, pk, -1) end
          redis.call('HINCRBY', errors, string.sub(code, 3), 1)
        end
        redis.call('HSET', failed, fld, info)
      end
    end
  end
end
local nok = redis.call('HINCRBY', job, 'ok', dok)
local nerr = redis.call('HINCRBY', job, 'error', derr)
local expected = tonumber(redis.call('HGET', job, 'expected') or '-1')
local dead = tonumber(redis.call('HGET', job, 'dead') or '0')
if expected >= 0 and nok + nerr + dead > expected then
  -- the same object in two chunk ids (a republish, a copy from before a Redis loss): the counters never
  -- pass the total; the verification (labelq.heal) sets them from the records
  nok = math.max(0, expected - nerr - dead)
  nerr = expected - dead - nok
  redis.call('HSET', job, 'ok', nok, 'error', nerr)
end
redis.call('HSET', job, 'progress_at', now)
finish(job, now)
if ttl > 0 then
  for _, k in ipairs({job, errors, failed}) do redis.call('EXPIRE', k, ttl) end
  for k, _ in pairs(touched) do redis.call('EXPIRE', k, ttl) end
end
return {nok, nerr}
"""

# KEYS: job, waiting zset. ARGV: prefix, chunk, ttl, now. Every record of the chunk is written.
_CHUNK_DONE_LUA = _FINISH + """
local job, prefix, chunk, ttl, now = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local done = prefix .. ':chunks-done'
redis.call('ZREM', KEYS[2], chunk)
local held = redis.call('ZREM', prefix .. ':inflight', chunk)
redis.call('HDEL', prefix .. ':payload', chunk)
if redis.call('SADD', done, chunk) == 1 or held == 1 then
  -- a chunk counts once, and never past the chunks published (a copy from before a Redis loss does not)
  if tonumber(redis.call('HGET', job, 'chunks_done') or '0') < tonumber(redis.call('HGET', job, 'chunks') or '0') then
    redis.call('HINCRBY', job, 'chunks_done', 1)
  end
end
redis.call('DEL', prefix .. ':chunk:' .. chunk)
if ttl > 0 then redis.call('EXPIRE', done, ttl) end
finish(job, now)
notify(job)
return redis.call('HGET', job, 'state') or ''
"""

# KEYS: job, waiting zset. ARGV: prefix, chunk, payload (JSON), items in the chunk, ttl, now.
# The chunk failed every attempt: park it; its (object, model) pairs not yet counted count as dead.
_PARK_LUA = _FINISH + """
local job, prefix, chunk, payload, items, ttl, now = KEYS[1], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
redis.call('ZREM', KEYS[2], chunk)
redis.call('ZREM', prefix .. ':inflight', chunk)
redis.call('HDEL', prefix .. ':payload', chunk)
if redis.call('SISMEMBER', prefix .. ':chunks-done', chunk) == 1 then return 0 end
local dead = prefix .. ':dead'
if redis.call('HEXISTS', dead, chunk) == 1 then return 0 end
local counted = redis.call('BITCOUNT', prefix .. ':chunk:' .. chunk)
local missing = items - counted
local doc = cjson.decode(payload)
doc['missing'] = missing
redis.call('HSET', dead, chunk, cjson.encode(doc))
redis.call('HINCRBY', job, 'dead', missing)
if ttl > 0 then redis.call('EXPIRE', dead, ttl) end
finish(job, now)
notify(job)
return missing
"""

# KEYS: job. ARGV: prefix. Take every dead chunk out (to re-run it); returns their payloads.
_UNPARK_LUA = """
local job, dead = KEYS[1], ARGV[1] .. ':dead'
local all = redis.call('HGETALL', dead)
local out, missing = {}, 0
for i = 1, #all, 2 do
  local doc = cjson.decode(all[i + 1])
  missing = missing + (doc['missing'] or 0)
  table.insert(out, all[i + 1])
end
if #out > 0 then
  redis.call('DEL', dead)
  redis.call('HINCRBY', job, 'dead', -missing)
  redis.call('HSET', job, 'state', 'running')
  redis.call('HDEL', job, 'finished_at')
end
return out
"""

# KEYS: job. ARGV: prefix, fields. Forget failures (their objects are retried); returns the fields forgotten.
_FORGET_LUA = """
local job, prefix = KEYS[1], ARGV[1]
local failed, errors = prefix .. ':failed', prefix .. ':errors'
local out = {}
for i = 2, #ARGV do
  local prev = redis.call('HGET', failed, ARGV[i])
  if prev then
    redis.call('HDEL', failed, ARGV[i])
    redis.call('HINCRBY', errors, string.match(prev, '^([^\\t]*)'), -1)
    table.insert(out, ARGV[i])
  end
end
if #out > 0 then
  redis.call('HINCRBY', job, 'error', -#out)
  local st = redis.call('HGET', job, 'state')
  if st == 'done' or st == 'failed' then redis.call('HSET', job, 'state', 'running') end
  redis.call('HDEL', job, 'finished_at')
end
return out
"""

# KEYS: job. ARGV: prefix, group id, ttl, now, n objects, ok, then pairs (field, info) of failures.
# Objects already labelled (by an earlier job) are counted into this job once per group.
_SKIPPED_LUA = _FINISH + """
local job, prefix, group, ttl, now = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local skips = prefix .. ':skips'
if redis.call('SADD', skips, group) == 0 then return 0 end
redis.call('HINCRBY', job, 'skipped', tonumber(ARGV[5]))
redis.call('HINCRBY', job, 'ok', tonumber(ARGV[6]))
local nerr = 0
for i = 7, #ARGV, 2 do
  local kind = string.match(ARGV[i + 1], '^([^\\t]*)')
  if redis.call('HSETNX', prefix .. ':failed', ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('HINCRBY', prefix .. ':errors', kind, 1)
    nerr = nerr + 1
  end
end
redis.call('HINCRBY', job, 'error', nerr)
if ttl > 0 then
  for _, k in ipairs({skips, prefix .. ':failed', prefix .. ':errors'}) do redis.call('EXPIRE', k, ttl) end
end
finish(job, now)
return 1
"""

# KEYS: job. ARGV: expected cursor, new cursor, listed, enqueued, chunks, now.
# Listing advanced past a group: compare-and-set on the cursor, so a group is accounted once.
_ADVANCE_LUA = """
local job = KEYS[1]
if (redis.call('HGET', job, 'cursor') or '') ~= ARGV[1] then return 0 end
redis.call('HSET', job, 'cursor', ARGV[2], 'listed', ARGV[3], 'producer_at', ARGV[6])
redis.call('HINCRBY', job, 'enqueued', tonumber(ARGV[4]))
redis.call('HINCRBY', job, 'chunks', tonumber(ARGV[5]))
return 1
"""

# KEYS: waiting zset, job's chunks-done set. ARGV: chunk, bound (0 = none), now.
# Reserve a place in the bounded queue for a chunk about to be published.
_RESERVE_LUA = """
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return 'done' end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 'waiting' end
local bound = tonumber(ARGV[2])
if bound > 0 and redis.call('ZCARD', KEYS[1]) >= bound then return 'full' end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 'ok'
"""

# KEYS: waiting zset. ARGV: messages in the broker's queue, cut-off time. Entries reserved before the
# cut-off are published (or their producer died): each is in the queue or its chunk started (which
# removes it). Those the queue cannot account for are forgotten, oldest first. Younger entries may
# be reserved but not yet published, so they are never compared.
_TRIM_WAITING_LUA = """
local extra = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. ARGV[2]) - tonumber(ARGV[1])
if extra <= 0 then return 0 end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, extra - 1)
return extra
"""

# KEYS: job. ARGV: total, expected, now. Listing is over: record totals, maybe finish at once.
_FINISH_LISTING_LUA = _FINISH + """
redis.call('HSET', KEYS[1], 'total', ARGV[1], 'expected', ARGV[2], 'state', 'running')
finish(KEYS[1], ARGV[3])
notify(KEYS[1])
return redis.call('HGET', KEYS[1], 'state')
"""

# KEYS: job, active set. ARGV: ok, error, expected (-1: keep), complete (0/1), now, job id.
# The verification counted the job's records: the counters become that count. Complete (every listed
# object has its records, or sits in a dead-lettered chunk): the job is done (failed with dead letters)
# and its in-flight bookkeeping goes. A producer listing the job decides later.
_SETTLE_LUA = """
local job = KEYS[1]
local st = redis.call('HGET', job, 'state')
if not st or st == 'listing' then return st or '' end
local ok, err = tonumber(ARGV[1]), tonumber(ARGV[2])
if ARGV[4] == '1' then
  -- complete: records of objects gone from the source since they were listed (deleted, moved) are not in the
  -- relisting's count but are the job's records; the counters (each pair counted once, capped) keep them
  ok = math.max(ok, tonumber(redis.call('HGET', job, 'ok') or '0'))
  err = math.max(err, tonumber(redis.call('HGET', job, 'error') or '0'))
end
redis.call('HSET', job, 'ok', ok, 'error', err)
if tonumber(ARGV[3]) >= 0 then redis.call('HSET', job, 'expected', ARGV[3]) end
if ARGV[4] == '1' then
  local dead = tonumber(redis.call('HGET', job, 'dead') or '0')
  st = dead > 0 and 'failed' or 'done'
  redis.call('HSET', job, 'state', st, 'finished_at', ARGV[5])
  if st == 'done' then redis.call('HSET', job, 'chunks_done', redis.call('HGET', job, 'chunks') or '0') end
  redis.call('DEL', job .. ':inflight', job .. ':payload')
  redis.call('SREM', KEYS[2], ARGV[6])
else
  st = 'running'
  redis.call('HSET', job, 'state', st)
  redis.call('HDEL', job, 'finished_at')
end
redis.call('PUBLISH', job .. ':events', st)  -- wakes whoever waits on the job (labelq.job_events)
return st
"""

_OPEN_LUA = """
-- a new job's fields in one step: a second producer of the same job never reads it half written
if redis.call('HSETNX', KEYS[1], 'created_at', ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'state', 'listing', 'source', ARGV[2], 'models', ARGV[3], 'ok', 0, 'error', 0,
           'dead', 0, 'cursor', '')
return 1
"""
_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def failure_info(rec: Record, chunk: str) -> str:
    """What the failure list holds for a failed record: kind, chunk, etag, message (no tabs/newlines)."""
    message = " ".join((rec.error or "").split())[:300]
    return "\t".join([rec.error_kind or "model_error", chunk, rec.etag or "", message])


def chunk_id(job: str, models: Sequence[str], uris: Sequence[str]) -> str:
    """A chunk's id from what it holds: the same objects and models are the same chunk, wherever
    the listing was when it made them (resumes, relists after Redis lost data)."""
    h = hashlib.blake2b(digest_size=10)
    for part in [*list(models), "\n", *list(uris)]:
        h.update(part.encode())
        h.update(b"\0")
    return f"{job}:{h.hexdigest()}"


@dataclass
class Failure:
    model: str
    uri: str
    kind: str
    chunk: str
    etag: str | None
    message: str


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
    chunks_done: int = 0
    ok: int = 0
    error: int = 0
    dead: int = 0
    dead_chunks: int = 0
    republished: int = 0
    cursor: str = ""
    producer_at: float | None = None
    progress_at: str | None = None
    errors: dict[str, int] = field(default_factory=dict)
    listing_error: str = ""  # why listing the source stopped (the job is then ``failed``)

    @property
    def processed(self) -> int:
        return self.ok + self.error

    @property
    def done(self) -> bool:
        """Finished: every (object, model) has a record or sits in a dead-lettered chunk."""
        return self.state in ("done", "failed")

    @classmethod
    def from_hash(cls, job_id: str, raw: dict[str, str], errors: dict[str, str], dead_chunks: int = 0) -> JobInfo:
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
            chunks_done=num("chunks_done") or 0,
            ok=num("ok") or 0,
            error=num("error") or 0,
            dead=num("dead") or 0,
            dead_chunks=dead_chunks,
            republished=num("republished") or 0,
            cursor=raw.get("cursor", ""),
            producer_at=float(raw["producer_at"]) if raw.get("producer_at") else None,
            progress_at=raw.get("progress_at"),
            errors={k: int(v) for k, v in errors.items() if int(v) > 0},
            listing_error=raw.get("listing_error", ""),
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
        self._chunk_done = redis.register_script(_CHUNK_DONE_LUA)
        self._park = redis.register_script(_PARK_LUA)
        self._unpark = redis.register_script(_UNPARK_LUA)
        self._forget = redis.register_script(_FORGET_LUA)
        self._skipped = redis.register_script(_SKIPPED_LUA)
        self._advance = redis.register_script(_ADVANCE_LUA)
        self._reserve = redis.register_script(_RESERVE_LUA)
        self._trim_waiting = redis.register_script(_TRIM_WAITING_LUA)
        self._finish = redis.register_script(_FINISH_LISTING_LUA)
        self._settle = redis.register_script(_SETTLE_LUA)
        self._renew = redis.register_script(_RENEW_LUA)
        self._release = redis.register_script(_RELEASE_LUA)
        self._open = redis.register_script(_OPEN_LUA)

    # ---------------------------------------------------------------- producer side

    def open(self, job_id: str, *, source: str, models: Sequence[str]) -> JobInfo:
        """Create the job, or resume it when it exists with the same source and models."""
        key = keys.job(job_id)
        created = int(self._open(keys=[key], args=[utcnow(), source, json.dumps(list(models))]))
        if created:
            self.redis.zadd(keys.JOBS, {job_id: time.time()})
            self._expire(key)
        self.redis.sadd(keys.ACTIVE, job_id)
        info = self.info(job_id)
        assert info is not None
        if not created and (info.source != source or info.models != list(models)):
            raise UsageError(
                f"job {job_id} exists with source {info.source} and models {', '.join(info.models)}; "
                "use another --job name to label something else"
            )
        return info

    def set_models(self, job_id: str, models: Sequence[str]) -> None:
        """A streaming job's models change (``labelq listen`` with a policy whose shadow models changed)."""
        self.redis.hset(keys.job(job_id), "models", json.dumps(list(models)))

    def chunk_plan(self, job_id: str, proposed: str) -> str:
        """The job's chunk plan (``labelq.producer.ChunkPlan``): the first producer's, kept, so that a producer
        resuming the listing cuts the rest where the first would have."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hsetnx(keys.job(job_id), "plan", proposed)
        pipe.hget(keys.job(job_id), "plan")
        raw = pipe.execute()[1]
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def listing(self, job_id: str) -> None:
        """A producer (re)starts listing: the job cannot finish before the listing does."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(keys.job(job_id), "state", "listing")
        pipe.hdel(keys.job(job_id), "listing_error", "finished_at")
        pipe.execute()

    def listing_failed(self, job_id: str, message: str) -> None:
        """The source cannot be listed (SourceError): the job is ``failed`` with the message, not left ``listing``;
        the same ``labelq enqueue`` again, once the source is fixed, resumes it from its cursor."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(keys.job(job_id), mapping={"state": "failed", "listing_error": message, "finished_at": utcnow()})
        pipe.publish(keys.job_events(job_id), "failed")
        pipe.execute()

    def lease(self, job_id: str, token: str, ttl_s: float) -> bool:
        """Take the job's listing lease (one producer at a time); False when another holds it."""
        return bool(self.redis.set(keys.job_producer(job_id), token, nx=True, px=int(ttl_s * 1000)))

    def renew(self, job_id: str, token: str, ttl_s: float) -> bool:
        return bool(self._renew(keys=[keys.job_producer(job_id)], args=[token, int(ttl_s * 1000)]))

    def release(self, job_id: str, token: str) -> None:
        self._release(keys=[keys.job_producer(job_id)], args=[token])

    def reserve(self, job_id: str, chunk: str, bound: int) -> str:
        """A place in the queue for a chunk: ``ok``, ``full`` (wait), ``waiting`` or ``done`` (already sent)."""
        out = self._reserve(keys=[keys.CHUNKS, keys.job_chunks_done(job_id)], args=[chunk, bound, time.time()])
        return out.decode() if isinstance(out, bytes) else str(out)

    def trim_waiting(self, in_queue: int, *, older_than: float) -> int:
        """Forget waiting entries reserved more than ``older_than`` seconds ago beyond the ``in_queue``
        messages the broker holds (oldest first); how many.

        An entry leaves when a worker starts its chunk. One whose message is gone without a start
        (a purged queue, a flushed or restarted broker) would count against the bound for ever;
        queues are first in, first out, so such entries are the oldest ones. Entries younger than
        ``older_than`` are left alone: their producer may not have published them yet, and counting
        them against the broker's queue would let two producers pass the bound.
        """
        cutoff = time.time() - older_than
        return int(self._trim_waiting(keys=[keys.CHUNKS], args=[max(0, in_queue), repr(cutoff)]))

    def unreserve(self, chunk: str) -> None:
        """A chunk that could not be published does not wait."""
        self.redis.zrem(keys.CHUNKS, chunk)

    def advance(self, job_id: str, *, cursor_was: str, cursor: str, listed: int, enqueued: int, chunks: int) -> bool:
        """Listing got past a group; False when another producer moved the cursor first."""
        return bool(self._advance(keys=[keys.job(job_id)],
                                  args=[cursor_was, cursor, listed, enqueued, chunks, time.time()]))

    def count_skipped(self, job_id: str, records: Sequence[Record], n_objects: int) -> None:
        """Count objects already labelled (their final records) into the job, once per group."""
        group = chunk_id("skip", [], sorted({f"{r.model}\t{r.uri}" for r in records}))
        args: list[Any] = [keys.job(job_id), group, self.ttl, utcnow(), n_objects, sum(r.ok for r in records)]
        for rec in records:
            if not rec.ok:
                args += [keys.item_field(rec.model, rec.uri), failure_info(rec, "skipped")]
        self._skipped(keys=[keys.job(job_id)], args=args)

    def received(self, job_id: str, n: int) -> None:
        """A streaming job (``labelq listen``) took n more objects; it has no total."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrby(keys.job(job_id), "listed", n)
        pipe.hincrby(keys.job(job_id), "enqueued", n)
        pipe.hset(keys.job(job_id), "state", "running")
        pipe.execute()

    def finish_listing(self, job_id: str, total: int, n_models: int) -> str:
        state = self._finish(keys=[keys.job(job_id)], args=[total, total * n_models, utcnow()])
        return state.decode() if isinstance(state, bytes) else str(state)

    # ---------------------------------------------------------------- worker side

    def started(self, job_id: str, chunk: str, deadline_s: float | None = None) -> bool:
        """A worker took the chunk: it no longer waits, and (``deadline_s``) its deadline moves on.
        True when the chunk was marked done (a duplicate, or a copy of a chunk whose records a Redis
        loss may have taken: the caller checks the record store)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(keys.CHUNKS, chunk)
        pipe.sismember(keys.job_chunks_done(job_id), chunk)
        if deadline_s is not None:
            pipe.zadd(keys.job_inflight(job_id), {chunk: time.time() + deadline_s}, xx=True)
        return bool(pipe.execute()[1])

    def hold(self, held: Sequence[tuple[str, str]], deadline_s: float) -> None:
        """A live worker's heartbeat for the (job, chunk) pairs in its hands: their deadlines move on."""
        if not held:
            return
        pipe = self.redis.pipeline(transaction=False)
        for job_id, chunk in held:
            pipe.zadd(keys.job_inflight(job_id), {chunk: time.time() + deadline_s}, xx=True)
        pipe.execute()

    def record(self, job_id: str, items: Sequence[tuple[str, int, Record]]) -> tuple[int, int]:
        """Count (chunk, position, record) items into the job, each (chunk, position) once.

        ``position`` is the record's place in its chunk (object index x models + model index).
        Returns the job's (ok, error) counters after the write.
        """
        args: list[Any] = [keys.job(job_id), self.ttl, utcnow(), len(items)]
        for chunk, pos, rec in items:
            args += [chunk, pos, keys.item_field(rec.model, rec.uri), status_code(rec),
                     "" if rec.ok else failure_info(rec, chunk)]
        nok, nerr = self._record(keys=[keys.job(job_id)], args=args)
        return int(nok), int(nerr)

    def chunk_done(self, job_id: str, chunk: str) -> str:
        """Every record of the chunk is written: its bits go, and a duplicate of it is skipped. Returns the
        job's state (``verifying``: the counters say it is complete; the heal checks the records)."""
        state = self._chunk_done(keys=[keys.job(job_id), keys.CHUNKS],
                                 args=[keys.job(job_id), chunk, self.ttl, utcnow()])
        return state.decode() if isinstance(state, bytes) else str(state or "")

    def park(self, job_id: str, chunk: str, payload: dict[str, Any], items: int) -> int:
        """Dead-letter a chunk that failed every attempt; returns how many (object, model) pairs it left undone."""
        return int(self._park(keys=[keys.job(job_id), keys.CHUNKS],
                              args=[keys.job(job_id), chunk, json.dumps(payload), items, self.ttl, utcnow()]))

    # ---------------------------------------------------------------- retry

    def unpark(self, job_id: str) -> list[dict[str, Any]]:
        """Take every dead-lettered chunk out of the job (to publish it again)."""
        out = [json.loads(p) for p in self._unpark(keys=[keys.job(job_id)], args=[keys.job(job_id)])]
        if out:
            self.redis.sadd(keys.ACTIVE, job_id)
        return out

    def forget(self, job_id: str, items: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """Take failed (model, uri) items out of the job's counts; returns those that were there."""
        fields = [keys.item_field(model, uri) for model, uri in items]
        if not fields:
            return []
        gone = self._forget(keys=[keys.job(job_id)], args=[keys.job(job_id), *fields])
        if gone:
            self.redis.sadd(keys.ACTIVE, job_id)
        return [keys.split_item(f) for f in gone]

    # ---------------------------------------------------------------- chunks in flight (the heal's view)

    def register(self, job_id: str, chunk: str, refs: Sequence[Any], models: Sequence[str],
                 deadline_s: float) -> None:
        """A chunk is about to be published: it is in flight until done or parked, with a deadline and
        what to publish again (``refs`` as in the message) should the broker lose it."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(keys.job_inflight(job_id), {chunk: time.time() + deadline_s})
        pipe.hset(keys.job_payloads(job_id), chunk, json.dumps({"refs": list(refs), "models": list(models)}))
        pipe.sadd(keys.ACTIVE, job_id)
        if self.ttl:
            pipe.expire(keys.job_inflight(job_id), self.ttl)
            pipe.expire(keys.job_payloads(job_id), self.ttl)
        pipe.execute()

    def in_flight(self, job_id: str) -> int:
        return int(self.redis.zcard(keys.job_inflight(job_id)))

    def overdue(self, job_id: str, now: float | None = None) -> list[str]:
        """Chunks of the job whose deadline has passed (nobody pushed it on)."""
        found = self.redis.zrangebyscore(keys.job_inflight(job_id), "-inf", now if now is not None else time.time())
        return [c.decode() if isinstance(c, bytes) else c for c in found]

    def payload(self, job_id: str, chunk: str) -> dict[str, Any] | None:
        raw = self.redis.hget(keys.job_payloads(job_id), chunk)
        return json.loads(raw) if raw else None

    def in_flight_uris(self, job_id: str) -> set[str]:
        """URIs of every chunk of the job in flight: O(chunks in flight x chunk size), bounded by the queue."""
        uris: set[str] = set()
        for _, raw in self.redis.hscan_iter(keys.job_payloads(job_id), count=100):
            uris.update(r[0] for r in json.loads(raw)["refs"])
        return uris

    def republished(self, job_id: str, chunk: str, deadline_s: float) -> None:
        """The heal published a lost chunk again: a new deadline, and the job counts it."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(keys.job_inflight(job_id), {chunk: time.time() + deadline_s}, xx=True)
        pipe.hincrby(keys.job(job_id), "republished", 1)
        pipe.execute()

    def added_chunks(self, job_id: str, n: int) -> None:
        """The verification published n chunks of objects without records."""
        self.redis.hincrby(keys.job(job_id), "chunks", n)

    def settle(self, job_id: str, *, ok: int, error: int, expected: int, complete: bool) -> str:
        """The verification's count of the job's records becomes its counters; complete: done (or failed)."""
        out = self._settle(keys=[keys.job(job_id), keys.ACTIVE],
                           args=[ok, error, expected, int(complete), utcnow(), job_id])
        return out.decode() if isinstance(out, bytes) else str(out or "")

    def active(self) -> list[str]:
        """Jobs not finished: the heal looks at these."""
        return sorted(j.decode() if isinstance(j, bytes) else j for j in self.redis.smembers(keys.ACTIVE))

    def forget_job(self, job_id: str) -> None:
        """A job whose state is gone (expired, Redis lost it) leaves the heal's rounds."""
        self.redis.srem(keys.ACTIVE, job_id)

    def heal_lock(self, token: str, ttl_s: float) -> bool:
        """One worker heals at a time: True when this one holds (or renewed) the lock."""
        if self.redis.set(keys.HEAL_LOCK, token, nx=True, px=int(ttl_s * 1000)):
            return True
        return bool(self._renew(keys=[keys.HEAL_LOCK], args=[token, int(ttl_s * 1000)]))

    def heal_unlock(self, token: str) -> None:
        self._release(keys=[keys.HEAL_LOCK], args=[token])

    # ---------------------------------------------------------------- readers

    def info(self, job_id: str) -> JobInfo | None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.job(job_id))
        pipe.hgetall(keys.job_errors(job_id))
        pipe.hlen(keys.job_dead(job_id))
        raw, errors, dead = pipe.execute()
        if not raw:
            return None
        return JobInfo.from_hash(job_id, _text(raw), _text(errors), int(dead))

    def jobs(self, limit: int = 50) -> list[JobInfo]:
        ids = [i.decode() if isinstance(i, bytes) else i for i in self.redis.zrevrange(keys.JOBS, 0, limit - 1)]
        return [info for info in (self.info(i) for i in ids) if info is not None]

    def failures(self, job_id: str, *, count: int = 1000) -> Iterator[Failure]:
        """The job's failed (object, model) pairs with kind and message (HSCAN: bounded memory)."""
        for fld, info in self.redis.hscan_iter(keys.job_failed(job_id), count=count):
            model, uri = keys.split_item(fld)
            text = info.decode() if isinstance(info, bytes) else info
            kind, chunk, etag, message = ([*text.split("\t", 3), "", "", ""])[:4]
            yield Failure(model, uri, kind, chunk, etag or None, message)

    def dead_chunks(self, job_id: str) -> list[dict[str, Any]]:
        out = []
        for chunk, payload in self.redis.hgetall(keys.job_dead(job_id)).items():
            doc = json.loads(payload)
            doc["chunk"] = chunk.decode() if isinstance(chunk, bytes) else chunk
            out.append(doc)
        return out

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

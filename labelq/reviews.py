"""The review store: one record per object version a policy acted on, its state and version, indexed.

An item is one version (uri, etag) of an object that a moderation policy moved, copied or
tagged. It moves through ``pending → claimed → decided`` (an expired claim goes back to
pending; an undo takes a decided item back to its reviewer's claim), every change bumps its
``version`` and appends to its history. A decision names the version it was made on, and a
stale one is refused with the item as it is now (:class:`Conflict`).

Layout (all keys under ``labelq:review:``; see :mod:`labelq.keys`):

* ``item:{id}`` hash, the item; ``item:{id}:log`` list, its history (JSON, oldest first).
* ``ix:{bucket}:{facet}:{age|score}`` sorted sets of item ids: ``bucket`` is ``pending``,
  ``decided`` or ``claimed:{reviewer}``, ``facet`` a short hash of (job, model, label,
  policy version), registered in the ``facets`` hash. Every zset score is unique: ``age``
  holds the item's sequence number (items are numbered as they arrive, so it sorts by age),
  ``score`` holds ``floor(score·10⁶)·2³⁰ + seq mod 2³⁰`` (sorts by score, ties by age).
* ``timeline`` zset seq → unix second of the first item numbered in that second (age
  filters become sequence ranges), ``claims`` zset id → claim expiry, ``buckets`` set.

A query (state, filters, sort, a page) reads the facets (few: jobs × rules), then one
``ZRANGE … BYSCORE LIMIT`` per matching (bucket, facet) zset from the page cursor, merged:
O(buckets × facets × (log N + page)), never O(queue). Totals are ``ZCOUNT`` over the same
zsets. A score range while sorting by age (or an age range while sorting by score) is the one
case answered by walking the sorted index and checking the other one, at most
``CROSS_BUDGET`` entries per page (the total is then a lower bound).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import keys
from .errors import UsageError

logger = logging.getLogger(__name__)

CLAIM_SECONDS = 300.0  # how long opening an item keeps it yours
UNDO_SECONDS = 600.0  # how long a reviewer may undo their own decision
PAGE_MAX = 200  # items a page may ask for
CROSS_BUDGET = 20_000  # index entries walked per page when a range is on the other dimension
STATES = ("pending", "claimed", "decided")
DECISIONS = ("confirm", "release", "label")
QUEUED = ("move", "copy", "tag")  # policy actions that put an object under review
_SEQ_MOD = 2**30
_SCORE_SCALE = 1_000_000


class Conflict(UsageError):
    """A decision on a stale version or on someone else's claim; carries the item as it is now."""

    def __init__(self, message: str, item: Item | None) -> None:
        super().__init__(message)
        self.item = item


def item_id(uri: str, etag: str | None) -> str:
    return hashlib.blake2b(f"{uri}{keys.SEP}{etag or ''}".encode(), digest_size=10).hexdigest()


def facet_id(job: str | None, model: str, label: str, policy: str) -> str:
    text = keys.SEP.join((job or "", model, label, policy))
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def score_key(score: float, seq: int) -> int:
    return int(max(0.0, min(1.0, score)) * _SCORE_SCALE) * _SEQ_MOD + seq % _SEQ_MOD


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else ("" if v is None else str(v))


@dataclass
class Item:
    """One version (uri, etag) of an object a policy acted on, and what reviewers did about it."""

    id: str
    uri: str
    etag: str
    model: str
    label: str
    score: float
    policy_version: str
    threshold: float | None = None  # the threshold of the rule that acted (from that policy version)
    job: str | None = None
    labelled_at: str | None = None
    created: float = 0.0
    seq: int = 0
    actions: list[str] = field(default_factory=list)
    quarantine_uri: str | None = None
    moved: bool = False
    state: str = "pending"
    version: int = 1
    claimed_by: str | None = None
    claim_until: float = 0.0
    decision: str | None = None
    reviewer: str | None = None
    human_label: str | None = None
    reason: str | None = None
    decided_at: float = 0.0
    detail: str = ""
    undo: dict[str, Any] = field(default_factory=dict)  # what storage looked like before the decision

    @property
    def shown_uri(self) -> str:
        """Where the object is now: its quarantine copy while moved and not released."""
        if self.moved and self.quarantine_uri and not (self.state == "decided" and self.decision == "release"):
            return self.quarantine_uri
        return self.uri

    @property
    def key(self) -> tuple[str, str]:
        return self.uri, self.etag

    def public(self) -> dict[str, Any]:
        """What the console's JSON API says about an item."""
        return {"id": self.id, "uri": self.uri, "etag": self.etag, "model": self.model, "label": self.label,
                "score": self.score, "threshold": self.threshold, "policy_version": self.policy_version,
                "job": self.job, "state": self.state, "version": self.version, "claimed_by": self.claimed_by,
                "decision": self.decision, "reviewer": self.reviewer, "human_label": self.human_label,
                "reason": self.reason, "actions": self.actions, "created": self.created,
                "decided_at": self.decided_at}

    @classmethod
    def from_hash(cls, h: dict[Any, Any]) -> Item:
        d = {_text(k): _text(v) for k, v in h.items()}
        return cls(
            id=d["id"], uri=d["uri"], etag=d.get("etag", ""), model=d.get("model", ""), label=d.get("label", ""),
            score=float(d.get("score") or 0), policy_version=d.get("policy", ""),
            threshold=float(d["threshold"]) if d.get("threshold") else None, job=d.get("job") or None,
            labelled_at=d.get("labelled_at") or None, created=float(d.get("created") or 0), seq=int(d.get("seq") or 0),
            actions=[a for a in d.get("actions", "").split(",") if a], quarantine_uri=d.get("quarantine_uri") or None,
            moved=d.get("moved") == "1", state=d.get("state", "pending"), version=int(d.get("version") or 1),
            claimed_by=d.get("claimed_by") or None, claim_until=float(d.get("claim_until") or 0),
            decision=d.get("decision") or None, reviewer=d.get("reviewer") or None,
            human_label=d.get("human_label") or None, reason=d.get("reason") or None,
            decided_at=float(d.get("decided_at") or 0), detail=d.get("detail", ""),
            undo=json.loads(d["undo"]) if d.get("undo") else {},
        )


@dataclass
class Query:
    """What a page of the queue shows: state, filters, sort, where the page starts."""

    state: str = "pending"  # pending (yours first, then unclaimed) | claimed | decided | all
    job: str | None = None
    model: str | None = None
    label: str | None = None
    policy: str | None = None
    lo: float | None = None  # score range
    hi: float | None = None
    older: float | None = None  # age range, seconds
    newer: float | None = None
    sort: str = "age"  # age | score
    desc: bool = False  # age ascending = oldest first; score descending = highest first
    after: int | None = None  # cursor: the index value of the last item of the previous page
    before: int | None = None  # or of the first item of the next page (going back)
    size: int = 50

    def check(self) -> Query:
        if self.state not in ("pending", "claimed", "decided", "all"):
            raise UsageError("state must be pending, claimed, decided or all")
        if self.sort not in ("age", "score"):
            raise UsageError("sort by age or score")
        if not 1 <= self.size <= PAGE_MAX:
            raise UsageError(f"a page holds 1 to {PAGE_MAX} items")
        for v in (self.lo, self.hi):
            if v is not None and not 0.0 <= v <= 1.0:
                raise UsageError("a score range lies between 0 and 1")
        return self


@dataclass
class Page:
    items: list[Item]
    total: int
    exact: bool  # False: total is a lower bound (a cross-dimension range was walked within a budget)
    next_after: int | None  # cursor of the next page, None on the last
    prev_before: int | None  # cursor of the previous page, None on the first


# --------------------------------------------------------------------------- Lua

_COMMON = """
local P = ARGV[1]
local function ix(bucket, facet, sort) return P .. 'ix:' .. bucket .. ':' .. facet .. ':' .. sort end
local function move(ik, id, to)
  local cur = redis.call('HMGET', ik, 'bucket', 'facet', 'seq', 'skey')
  local facet, seq, skey = cur[2], cur[3], cur[4]
  if cur[1] then
    redis.call('ZREM', ix(cur[1], facet, 'age'), id)
    redis.call('ZREM', ix(cur[1], facet, 'score'), id)
  end
  redis.call('ZADD', ix(to, facet, 'age'), seq, id)
  redis.call('ZADD', ix(to, facet, 'score'), skey, id)
  redis.call('SADD', P .. 'buckets', to)
  redis.call('HSET', ik, 'bucket', to)
end
local function log(ik, entry) redis.call('RPUSH', ik .. ':log', entry) end
local function snapshot(ik) return redis.call('HGETALL', ik) end
"""

# ARGV: prefix, id, now, action, quarantine_uri, moved, facet, facet_json, log_json, then field/value pairs
_ADD = _COMMON + """
local id, now, action, quri, moved = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local ik = P .. 'item:' .. id
if redis.call('EXISTS', ik) == 0 then
  local seq = redis.call('INCR', P .. 'seq')
  local score = 0
  local fields = {}
  for i = 10, #ARGV, 2 do
    fields[#fields + 1] = ARGV[i]; fields[#fields + 1] = ARGV[i + 1]
    if ARGV[i] == 'score' then score = tonumber(ARGV[i + 1]) end
  end
  if score < 0 then score = 0 elseif score > 1 then score = 1 end
  local skey = math.floor(score * 1000000) * 1073741824 + (seq % 1073741824)
  redis.call('HSET', ik, 'id', id, 'seq', seq, 'skey', string.format('%.0f', skey), 'facet', ARGV[7],
             'state', 'pending', 'version', 1, 'actions', action, 'quarantine_uri', quri, 'moved', moved, unpack(fields))
  redis.call('HSETNX', P .. 'facets', ARGV[7], ARGV[8])
  local sec = math.floor(tonumber(now))
  local last = tonumber(redis.call('GET', P .. 'timeline-last') or '-1')
  if sec > last then
    redis.call('ZADD', P .. 'timeline', sec, seq)
    redis.call('SET', P .. 'timeline-last', sec)
  end
  move(ik, id, 'pending')
  log(ik, ARGV[9])
  return 1
end
local acts = redis.call('HGET', ik, 'actions') or ''
if action ~= '' and not string.find(',' .. acts .. ',', ',' .. action .. ',', 1, true) then
  if acts == '' then acts = action else acts = acts .. ',' .. action end
  redis.call('HSET', ik, 'actions', acts)
end
if quri ~= '' then redis.call('HSET', ik, 'quarantine_uri', quri) end
if moved == '1' then redis.call('HSET', ik, 'moved', '1') end
return 0
"""

# ARGV: prefix, reviewer, now, until, ids...
_CLAIM = _COMMON + """
local who, now, untl = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local out = {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local ik = P .. 'item:' .. id
  local h = redis.call('HMGET', ik, 'state', 'claimed_by', 'claim_until')
  if h[1] == 'pending' or (h[1] == 'claimed' and (h[2] == who or tonumber(h[3] or '0') <= now)) then
    if not (h[1] == 'claimed' and h[2] == who) then
      redis.call('HINCRBY', ik, 'version', 1)
      log(ik, cjson.encode({time = now, event = 'claim', who = who}))
    end
    redis.call('HSET', ik, 'state', 'claimed', 'claimed_by', who, 'claim_until', untl)
    move(ik, id, 'claimed:' .. who)
    redis.call('ZADD', P .. 'claims', untl, id)
    out[#out + 1] = id
  end
end
return out
"""

# ARGV: prefix, now, limit
_REAP = _COMMON + """
local now = tonumber(ARGV[2])
local ids = redis.call('ZRANGEBYSCORE', P .. 'claims', '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  local ik = P .. 'item:' .. id
  local h = redis.call('HMGET', ik, 'state', 'claim_until')
  if h[1] == 'claimed' and tonumber(h[2] or '0') <= now then
    redis.call('HINCRBY', ik, 'version', 1)
    redis.call('HSET', ik, 'state', 'pending', 'claimed_by', '', 'claim_until', 0)
    move(ik, id, 'pending')
    log(ik, cjson.encode({time = now, event = 'claim expired'}))
  end
  redis.call('ZREM', P .. 'claims', id)
end
return #ids
"""

# Take an item from pending/claimed to decided, or from decided back to the reviewer's claim (undo), when the
# version the caller saw is the current one. ARGV: prefix, id, version, reviewer, now, kind (decide|undo|
# rollback-decide|rollback-undo), window or claim-until, log_json, then field/value pairs to set.
_MOVE = _COMMON + """
local id, version, who, now, kind, arg = ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7]
local ik = P .. 'item:' .. id
if redis.call('EXISTS', ik) == 0 then return {'missing'} end
local h = redis.call('HMGET', ik, 'state', 'version', 'claimed_by', 'claim_until', 'reviewer', 'decided_at')
local state, cur = h[1], tonumber(h[2])
if kind == 'decide' then
  if version ~= cur then return {'stale', snapshot(ik)} end
  if state == 'decided' then return {'decided', snapshot(ik)} end
  if state == 'claimed' and h[3] ~= who and tonumber(h[4] or '0') > now then return {'claimed', snapshot(ik)} end
  redis.call('ZREM', P .. 'claims', id)
  move(ik, id, 'decided')
elseif kind == 'undo' then
  if version ~= cur then return {'stale', snapshot(ik)} end
  if state ~= 'decided' then return {'notdecided', snapshot(ik)} end
  if h[5] ~= who then return {'notyours', snapshot(ik)} end
  if now - tonumber(h[6] or '0') > tonumber(arg) then return {'late', snapshot(ik)} end
  move(ik, id, 'claimed:' .. who)
elseif kind == 'rollback-decide' then
  move(ik, id, 'claimed:' .. who)
elseif kind == 'rollback-undo' then
  move(ik, id, 'decided')
end
local fields = {}
for i = 9, #ARGV do fields[#fields + 1] = ARGV[i] end
if #fields > 0 then redis.call('HSET', ik, unpack(fields)) end
if kind ~= 'decide' and kind ~= 'rollback-undo' then
  redis.call('ZADD', P .. 'claims', tonumber(redis.call('HGET', ik, 'claim_until') or '0'), id)
end
redis.call('HINCRBY', ik, 'version', 1)
log(ik, ARGV[8])
return {'ok', snapshot(ik)}
"""

_REFUSALS = {
    "stale": "this item changed since you opened it",
    "decided": "this item was decided already",
    "claimed": "another reviewer has this item open",
    "notdecided": "this item has no decision to undo",
    "notyours": "only the reviewer who decided can undo",
    "late": "too late to undo",
    "missing": "no such item in the review queue",
}


def _pairs(flat: Sequence[Any]) -> dict[Any, Any]:
    return dict(zip(flat[0::2], flat[1::2], strict=True))


class ReviewStore:
    """Review items in Redis: add, claim, decide and undo with versions, query a page at a time."""

    def __init__(self, redis: Any, *, claim_seconds: float = CLAIM_SECONDS, undo_seconds: float = UNDO_SECONDS,
                 clock: Any = time.time) -> None:
        self.redis = redis
        self.claim_seconds = claim_seconds
        self.undo_seconds = undo_seconds
        self.clock = clock
        self.p = keys.REVIEW
        self._add = redis.register_script(_ADD)
        self._claim = redis.register_script(_CLAIM)
        self._reap = redis.register_script(_REAP)
        self._move = redis.register_script(_MOVE)

    # ------------------------------------------------------------------ writing

    def add(self, actions: Iterable[Any], *, pipeline: Any = None, now: float | None = None) -> int:
        """Put the objects these (successful, audited) policy actions acted on under review; idempotent.

        ``actions`` are :class:`labelq.moderation.audit.Action`-like objects. Returns how many were queued
        (an action of an item already queued only adds to its list of actions)."""
        pipe = pipeline if pipeline is not None else self.redis.pipeline(transaction=False)
        n = 0
        for a in actions:
            if a.action not in QUEUED or a.result != "ok":
                continue
            self.add_one(pipe, uri=a.uri, etag=a.etag, model=a.model, label=a.label, score=float(a.score),
                         policy=a.policy_version, threshold=getattr(a, "threshold", None), job=a.job,
                         labelled_at=a.labelled_at, action=a.action, detail=a.detail,
                         now=now if now is not None else self.clock())
            n += 1
        if pipeline is None and n:
            pipe.execute()
        return n

    def add_one(self, pipe: Any, *, uri: str, etag: str | None, model: str, label: str, score: float, policy: str,
                threshold: float | None, job: str | None, labelled_at: str | None, action: str, detail: str = "",
                now: float) -> None:
        """Queue the add of one item (or one more action on it) on a pipeline."""
        quarantined = action in ("move", "copy") and detail.startswith(("s3://", "file://"))
        fid = facet_id(job, model, label, policy)
        fields = {"uri": uri, "etag": etag or "", "model": model, "label": label, "score": repr(float(score)),
                  "policy": policy, "threshold": "" if threshold is None else repr(float(threshold)),
                  "job": job or "", "labelled_at": labelled_at or "", "created": repr(float(now))}
        flat = [x for kv in fields.items() for x in kv]
        facet = json.dumps({"job": job or "", "model": model, "label": label, "policy": policy})
        entry = json.dumps({"time": now, "event": "queued", "by": f"policy {policy}", "action": action})
        self._add(keys=[], args=[self.p, item_id(uri, etag), now, action, detail if quarantined else "",
                                 "1" if action == "move" and quarantined else "", fid, facet, entry, *flat],
                  client=pipe)

    def claim(self, ids: Sequence[str], reviewer: str) -> list[str]:
        """Claim pending items (or renew one's own claims) for ``claim_seconds``; returns the ids now yours."""
        if not ids:
            return []
        now = self.clock()
        got = self._claim(keys=[], args=[self.p, reviewer, now, now + self.claim_seconds, *ids])
        return [_text(x) for x in got]

    def reap(self, limit: int = 1000) -> int:
        """Give expired claims back to the pending queue (run before each query; costs O(expired))."""
        return int(self._reap(keys=[], args=[self.p, self.clock(), limit]))

    def _transition(self, item_id_: str, version: int, reviewer: str, kind: str, arg: float, entry: dict[str, Any],
                    fields: dict[str, Any]) -> Item:
        flat = [x for kv in fields.items() for x in (kv[0], "" if kv[1] is None else str(kv[1]))]
        res = self._move(keys=[], args=[self.p, item_id_, version, reviewer, self.clock(), kind, arg,
                                        json.dumps(entry), *flat])
        status = _text(res[0])
        current = Item.from_hash(_pairs(res[1])) if len(res) > 1 else None
        if status != "ok":
            raise Conflict(_refusal(status, current), current)
        assert current is not None
        return current

    def reserve(self, item_id_: str, version: int, reviewer: str, decision: str, *, human_label: str | None = None,
                reason: str | None = None) -> Item:
        """Mark the item decided by ``reviewer`` if ``version`` is current and nobody else holds it; Conflict if not.

        The caller then changes storage and calls :meth:`commit`, or :meth:`rollback` when that failed."""
        if decision not in DECISIONS:
            raise UsageError(f"decision must be one of {', '.join(DECISIONS)}")
        now = self.clock()
        return self._transition(item_id_, version, reviewer, "decide", 0, {
            "time": now, "event": decision, "who": reviewer, "human_label": human_label, "reason": reason,
        }, {"state": "decided", "decision": decision, "reviewer": reviewer, "human_label": human_label or "",
            "reason": reason or "", "decided_at": repr(now), "claimed_by": "", "claim_until": 0, "detail": "",
            "undo": ""})

    def commit(self, item: Item, detail: str, undo: dict[str, Any], *, pipeline: Any = None) -> None:
        """Record what the decision did in storage (and how to reverse it), and count it for its reviewer."""
        pipe = pipeline if pipeline is not None else self.redis.pipeline(transaction=False)
        ik = f"{self.p}item:{item.id}"
        pipe.hset(ik, mapping={"detail": detail, "undo": json.dumps(undo)})
        self._count(pipe, item, +1)
        if pipeline is None:
            pipe.execute()
        item.detail, item.undo = detail, undo

    def uncount(self, item: Item, *, pipeline: Any) -> None:
        """An undone decision no longer counts for its reviewer."""
        self._count(pipeline, item, -1)

    def _count(self, pipe: Any, item: Item, n: int) -> None:
        who = item.reviewer or ""
        agreed = item.decision == "confirm" or (item.decision == "label" and item.human_label == item.label)
        pipe.hincrby(f"{self.p}reviewers", f"{who}{keys.SEP}decided", n)
        if agreed:
            pipe.hincrby(f"{self.p}reviewers", f"{who}{keys.SEP}agreed", n)
        hour = f"{self.p}hour:{int((item.decided_at or self.clock()) // 3600)}"
        pipe.hincrby(hour, who, n)
        pipe.expire(hour, 2 * 86400)

    def reviewer_stats(self) -> list[dict[str, Any]]:
        """Per reviewer: decisions in the last hour and 24 hours, all decisions, and the share that agreed with
        the policy (confirm, or a label equal to the model's)."""
        totals: dict[str, dict[str, int]] = {}
        for k, v in self.redis.hgetall(f"{self.p}reviewers").items():
            who, _, what = _text(k).partition(keys.SEP)
            totals.setdefault(who, {})[what] = int(v)
        now_hour = int(self.clock() // 3600)
        pipe = self.redis.pipeline(transaction=False)
        for h in range(now_hour - 23, now_hour + 1):
            pipe.hgetall(f"{self.p}hour:{h}")
        hours = [{_text(k): int(v) for k, v in h.items()} for h in pipe.execute()]
        out = []
        for who in sorted(totals):
            per_hour = [h.get(who, 0) for h in hours]
            decided, agreed = totals[who].get("decided", 0), totals[who].get("agreed", 0)
            out.append({"reviewer": who, "last_hour": per_hour[-1], "last_24h": sum(per_hour), "decided": decided,
                        "agreement": agreed / decided if decided else None})
        return out

    def rollback(self, item: Item, reviewer: str, error: str) -> Item:
        """The storage change of a reserved decision failed: the item is the reviewer's claim again."""
        now = self.clock()
        return self._transition(item.id, item.version, reviewer, "rollback-decide", 0,
                                {"time": now, "event": "failed", "who": reviewer, "error": error},
                                {"state": "claimed", "claimed_by": reviewer, "claim_until": repr(now + self.claim_seconds),
                                 "decision": "", "reviewer": "", "human_label": "", "reason": "", "decided_at": 0})

    def reserve_undo(self, item_id_: str, version: int, reviewer: str) -> tuple[Item, Item]:
        """Take one's own recent decision back (the item is claimed by the reviewer again); returns (before, after)."""
        before = self.get(item_id_)
        if before is None:
            raise Conflict(_REFUSALS["missing"], None)
        now = self.clock()
        after = self._transition(item_id_, version, reviewer, "undo", self.undo_seconds,
                                 {"time": now, "event": "undo", "who": reviewer, "undid": before.decision},
                                 {"state": "claimed", "claimed_by": reviewer,
                                  "claim_until": repr(now + self.claim_seconds), "decision": "", "reviewer": "",
                                  "human_label": "", "reason": "", "decided_at": 0, "detail": "", "undo": ""})
        before.version = after.version - 1
        return before, after

    def rollback_undo(self, before: Item, after: Item, reviewer: str, error: str) -> Item:
        return self._transition(after.id, after.version, reviewer, "rollback-undo", 0,
                                {"time": self.clock(), "event": "undo failed", "who": reviewer, "error": error},
                                {"state": "decided", "decision": before.decision, "reviewer": before.reviewer,
                                 "human_label": before.human_label or "", "reason": before.reason or "",
                                 "decided_at": repr(before.decided_at), "detail": before.detail,
                                 "undo": json.dumps(before.undo), "claimed_by": "", "claim_until": 0})

    # ------------------------------------------------------------------ reading

    def get(self, id_: str) -> Item | None:
        h = self.redis.hgetall(f"{self.p}item:{id_}")
        return Item.from_hash(h) if h else None

    def get_many(self, ids: Sequence[str]) -> list[Item]:
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(f"{self.p}item:{i}")
        return [Item.from_hash(h) for h in pipe.execute() if h]

    def find(self, uri: str, etag: str | None) -> Item | None:
        return self.get(item_id(uri, etag))

    def history(self, id_: str) -> list[dict[str, Any]]:
        return [json.loads(_text(x)) for x in self.redis.lrange(f"{self.p}item:{id_}:log", 0, -1)]

    def facets(self) -> dict[str, dict[str, str]]:
        return {_text(k): json.loads(_text(v)) for k, v in self.redis.hgetall(f"{self.p}facets").items()}

    def counts(self) -> dict[str, int]:
        """Items per state (claimed: all reviewers together) and per reviewer's claims: ``claimed:NAME``."""
        facets = list(self.facets())
        buckets = sorted(_text(b) for b in self.redis.smembers(f"{self.p}buckets"))
        pipe = self.redis.pipeline(transaction=False)
        for b in buckets:
            for f in facets:
                pipe.zcard(self._ix(b, f, "age"))
        values = iter(pipe.execute())
        out = {"pending": 0, "claimed": 0, "decided": 0}
        for b in buckets:
            n = sum(next(values) for _ in facets)
            if b.startswith("claimed:"):
                out["claimed"] += n
            out[b] = out.get(b, 0) + n
        return out

    def oldest_pending(self) -> float | None:
        """Creation time (unix) of the oldest pending item, or None."""
        best: tuple[int, str] | None = None
        pipe = self.redis.pipeline(transaction=False)
        facets = list(self.facets())
        for f in facets:
            pipe.zrange(self._ix("pending", f, "age"), 0, 0, withscores=True)
        for got in pipe.execute():
            if got and (best is None or got[0][1] < best[0]):
                best = (int(got[0][1]), _text(got[0][0]))
        if best is None:
            return None
        created = self.redis.hget(f"{self.p}item:{best[1]}", "created")
        return float(_text(created)) if created else None

    def _ix(self, bucket: str, facet: str, sort: str) -> str:
        return f"{self.p}ix:{bucket}:{facet}:{sort}"

    def _buckets(self, state: str, reviewer: str | None) -> list[str]:
        if state == "pending":
            return ([f"claimed:{reviewer}"] if reviewer else []) + ["pending"]
        if state == "decided":
            return ["decided"]
        claimed = sorted(b for b in map(_text, self.redis.smembers(f"{self.p}buckets")) if b.startswith("claimed:"))
        return claimed if state == "claimed" else ["pending", *claimed, "decided"]

    def _seq_range(self, older: float | None, newer: float | None) -> tuple[float, float]:
        """Sequence numbers of items created between now-newer and now-older (1 s resolution)."""
        lo, hi = float("-inf"), float("inf")
        now = self.clock()
        tl = f"{self.p}timeline"
        if newer is not None:  # created at or after now - newer
            got = self.redis.zrangebyscore(tl, int(now - newer), "+inf", start=0, num=1)
            lo = float(_text(got[0])) if got else float("inf")
        if older is not None:  # created before now - older: up to the first seq of the next second
            got = self.redis.zrangebyscore(tl, f"({int(now - older)}", "+inf", start=0, num=1)
            hi = float(_text(got[0])) - 1 if got else float("inf")
        return lo, hi

    def query(self, q: Query, reviewer: str | None = None) -> Page:
        """One page of items in the order asked, with the total; O(zsets × (log N + page))."""
        q.check()
        self.reap()
        facets = [f for f, d in self.facets().items()
                  if (q.job is None or d["job"] == q.job) and (q.model is None or d["model"] == q.model)
                  and (q.label is None or d["label"] == q.label) and (q.policy is None or d["policy"] == q.policy)]
        buckets = self._buckets(q.state, reviewer)
        seq_lo, seq_hi = self._seq_range(q.older, q.newer)
        sc_lo = float("-inf") if q.lo is None else float(score_key(q.lo, 0))
        sc_hi = float("inf") if q.hi is None else float(score_key(q.hi, _SEQ_MOD - 1))
        if q.sort == "age":
            sort_lo, sort_hi, other = seq_lo, seq_hi, (sc_lo, sc_hi, "score")
        else:
            sort_lo, sort_hi, other = sc_lo, sc_hi, (seq_lo, seq_hi, "age")
        cross = other[0] != float("-inf") or other[1] != float("inf")
        zsets = [(b, f) for b in buckets for f in facets]
        if not zsets:
            return Page([], 0, True, None, None)
        going_back = q.before is not None and q.after is None
        # the page window: after the cursor in the page's direction
        lo, hi = sort_lo, sort_hi
        forward_desc = q.desc != going_back  # which way this fetch walks the index
        if q.after is not None:
            if q.desc:
                hi = min(hi, q.after - 0.5)
            else:
                lo = max(lo, q.after + 0.5)
        if q.before is not None and going_back:
            if q.desc:
                lo = max(lo, q.before + 0.5)
            else:
                hi = min(hi, q.before - 0.5)
        want = q.size + 1  # one more: is there a next page?
        found, exact = self._fetch(zsets, q.sort, lo, hi, forward_desc, want, other if cross else None)
        has_more = len(found) > q.size
        found = found[: q.size]
        if going_back:
            found.reverse()
        total, total_exact = self._total(zsets, q.sort, sort_lo, sort_hi, other if cross else None)
        items = {i.id: i for i in self.get_many([m for _, m in found])}
        page_items = [items[m] for _, m in found if m in items]
        first, last = (found[0][0], found[-1][0]) if found else (None, None)
        if going_back:
            next_after = last if found else q.before
            prev_before = first if has_more else None
        else:
            next_after = last if has_more else None
            prev_before = first if (q.after is not None and found) else None
        return Page(page_items, total, exact and total_exact, next_after, prev_before)

    def _fetch(self, zsets: list[tuple[str, str]], sort: str, lo: float, hi: float, desc: bool, want: int,
               other: tuple[float, float, str] | None) -> tuple[list[tuple[int, str]], bool]:
        """Up to ``want`` (index value, id) pairs from the union of these zsets, in order."""
        out: list[tuple[int, str]] = []
        budget = CROSS_BUDGET
        # each zset is read in batches from its own position; a min-heap merges them
        cursors = {z: (lo, hi) for z in zsets}
        batch = want if other is None else max(want, 256)
        buffers: dict[tuple[str, str], list[tuple[int, str]]] = {}
        exhausted: set[tuple[str, str]] = set()

        def refill(z: tuple[str, str]) -> None:
            zlo, zhi = cursors[z]
            key = self._ix(z[0], z[1], sort)
            if desc:
                got = self.redis.zrevrangebyscore(key, zhi, zlo, start=0, num=batch, withscores=True)
            else:
                got = self.redis.zrangebyscore(key, zlo, zhi, start=0, num=batch, withscores=True)
            pairs = [(int(s), _text(m)) for m, s in got]
            if len(pairs) < batch:
                exhausted.add(z)
            if pairs:
                edge = pairs[-1][0]
                cursors[z] = (zlo, edge - 0.5) if desc else (edge + 0.5, zhi)
            if other is not None and pairs:
                pairs = self._keep_other(z, pairs, other)
            buffers[z] = pairs

        pipe_first = self.redis.pipeline(transaction=False)
        for z in zsets:  # first batch of every zset in one round trip
            key = self._ix(z[0], z[1], sort)
            if desc:
                pipe_first.zrevrangebyscore(key, hi, lo, start=0, num=batch, withscores=True)
            else:
                pipe_first.zrangebyscore(key, lo, hi, start=0, num=batch, withscores=True)
        for z, got in zip(zsets, pipe_first.execute(), strict=True):
            pairs = [(int(s), _text(m)) for m, s in got]
            if len(pairs) < batch:
                exhausted.add(z)
            if pairs:
                edge = pairs[-1][0]
                cursors[z] = (lo, edge - 0.5) if desc else (edge + 0.5, hi)
                budget -= len(pairs)
            buffers[z] = self._keep_other(z, pairs, other) if other is not None and pairs else pairs
        sign = -1 if desc else 1
        heap = []
        for z in zsets:
            while not buffers[z] and z not in exhausted and budget > 0:
                refill(z)
                budget -= batch
            if buffers[z]:
                v, m = buffers[z].pop(0)
                heap.append((sign * v, m, z))
        heapq.heapify(heap)
        while heap and len(out) < want:
            sv, m, z = heapq.heappop(heap)
            out.append((sign * sv, m))
            while not buffers[z] and z not in exhausted and budget > 0:
                refill(z)
                budget -= batch
            if buffers[z]:
                v, m2 = buffers[z].pop(0)
                heapq.heappush(heap, (sign * v, m2, z))
        exact = other is None or budget > 0
        return out, exact

    def _keep_other(self, z: tuple[str, str], pairs: list[tuple[int, str]],
                    other: tuple[float, float, str]) -> list[tuple[int, str]]:
        """Those of ``pairs`` whose value in the other index lies in its range."""
        olo, ohi, osort = other
        values = self.redis.zmscore(self._ix(z[0], z[1], osort), [m for _, m in pairs])
        return [p for p, v in zip(pairs, values, strict=True) if v is not None and olo <= v <= ohi]

    def _total(self, zsets: list[tuple[str, str]], sort: str, lo: float, hi: float,
               other: tuple[float, float, str] | None) -> tuple[int, bool]:
        pipe = self.redis.pipeline(transaction=False)
        for b, f in zsets:
            pipe.zcount(self._ix(b, f, sort), lo, hi)
        counts = pipe.execute()
        if other is None:
            return sum(counts), True
        # a range on the other dimension: count by walking the smaller side, within the budget
        olo, ohi, osort = other
        pipe = self.redis.pipeline(transaction=False)
        for b, f in zsets:
            pipe.zcount(self._ix(b, f, osort), olo, ohi)
        other_counts = pipe.execute()
        n, budget, exact = 0, CROSS_BUDGET, True
        for (b, f), c, oc in zip(zsets, counts, other_counts, strict=True):
            if not c or not oc:
                continue
            walk_sort, keep = (osort, (lo, hi, sort)) if oc <= c else (sort, other)
            wlo, whi = (olo, ohi) if walk_sort == osort else (lo, hi)
            take = min(c, oc, budget)
            got = self.redis.zrangebyscore(self._ix(b, f, walk_sort), wlo, whi, start=0, num=take, withscores=True)
            budget -= len(got)
            pairs = [(int(s), _text(m)) for m, s in got]
            n += len(self._keep_other((b, f), pairs, keep)) if pairs else 0
            if min(c, oc) > take:
                exact = False
        return n, exact

    # ------------------------------------------------------------------ rebuilding

    def rebuild_from_audit(self, entries: Iterable[Any]) -> int:
        """Fill the store once from an audit trail (oldest first): policy actions queue items, review entries
        decide them. Items already in the store are left as they are. Returns how many items were queued."""
        import datetime as dt

        def ts(text: str) -> float:
            try:
                return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
            except ValueError:
                return self.clock()

        existing: set[str] = set()
        queued = 0
        pipe = self.redis.pipeline(transaction=False)
        decisions: dict[str, Any] = {}
        for a in entries:
            iid = item_id(a.uri, a.etag)
            if a.action.startswith("review:"):
                decisions[iid] = a
                continue
            if a.action not in QUEUED or a.result != "ok":
                continue
            if iid not in existing and self.redis.exists(f"{self.p}item:{iid}"):
                existing.add(iid)
            if iid in existing:
                continue
            self.add_one(pipe, uri=a.uri, etag=a.etag, model=a.model, label=a.label, score=float(a.score),
                         policy=a.policy_version, threshold=getattr(a, "threshold", None), job=a.job,
                         labelled_at=a.labelled_at, action=a.action, detail=a.detail, now=ts(a.time))
            queued += 1
            if len(pipe) >= 500:
                pipe.execute()
        pipe.execute()
        for iid, a in decisions.items():
            decision = a.action.split(":", 1)[1]
            if iid in existing or decision not in DECISIONS:
                continue
            item = self.get(iid)
            if item is None or item.state == "decided":
                continue
            reviewer = getattr(a, "reviewer", None) or "unknown"
            done = self.reserve(iid, item.version, reviewer, decision, human_label=getattr(a, "human_label", None),
                                reason=getattr(a, "reason", None))
            self.redis.hset(f"{self.p}item:{iid}", mapping={"decided_at": repr(ts(a.time)), "detail": a.detail})
            self.commit(done, a.detail, {})
        return queued


def _refusal(status: str, item: Item | None) -> str:
    why = _REFUSALS.get(status, status)
    if item is None:
        return why
    if item.state == "decided":
        now = f"now: {item.decision} by {item.reviewer}"
    elif item.state == "claimed":
        now = f"now: open by {item.claimed_by}"
    else:
        now = "now: pending"
    return f"{why} ({now}, version {item.version})"

"""The moderation outbox: notifications queued in Redis with the action's bookkeeping, delivered by their own thread.

A ``notify`` action never holds a chunk: :func:`queue` runs inside the moderator's audit
transaction (one MULTI with the audit entry and the ``labelq:actions`` mark). It adds the
stream entry at once (a Redis XADD) and, for a webhook, an outbox entry that a
:class:`Deliverer` (a thread of each worker with a policy, and ``labelq moderate apply``)
POSTs later, with a timeout per attempt, retries with backoff, and a dead letter after
the policy's ``webhook_attempts``.

At most once per object and policy version: an entry's id is a digest of (uri, etag,
policy version, action), and :func:`queue` adds nothing for an id it has seen
(``labelq:outbox:seen``), so a redelivered chunk queues nothing new. A successful move
forgets the id (the object is gone from that key; a new upload there is a new object).
Every POST carries the id as ``Idempotency-Key``: a receiver that saw a POST whose answer
was lost (a timeout) can tell the retry from a new notification.

==========================  =====  =========================================================
key                         type   holds
==========================  =====  =========================================================
``labelq:outbox:due``       zset   entry id → unix time of its next attempt (a claimed entry:
                                   the end of its lease)
``labelq:outbox:items``     hash   entry id → JSON (url, body, attempts, max_attempts, error)
``labelq:outbox:seen``      hash   entry id → ``queued|sent|dead {unix time}``: de-duplicates
``labelq:outbox:dead``      hash   entry id → JSON of an entry that failed every attempt
==========================  =====  =========================================================
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from .. import keys
from ..records import utcnow
from ..retrying import backoff
from . import audit
from .audit import Action

logger = logging.getLogger(__name__)

STREAM_MAXLEN = 1_000_000  # entries kept in the notification stream (approximate trim)
RETRY_BACKOFF = (1.0, 300.0)  # seconds: base and cap of the delay between attempts of one entry
IDLE_POLL = 0.5  # seconds a deliverer sleeps when nothing is due

_QUEUE = """
-- KEYS: seen, due, items, stream; ARGV: id, now, entry JSON ('' = no webhook), use stream (0/1), maxlen, fields...
if redis.call('HSETNX', KEYS[1], ARGV[1], 'queued ' .. ARGV[2]) == 0 then return 0 end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
end
if ARGV[4] == '1' then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', unpack(ARGV, 6))
end
return 1
"""

_CLAIM = """
-- KEYS: due, items; ARGV: now, lease end. The first due entry, leased (another deliverer skips it meanwhile).
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)
if #ids == 0 then return false end
redis.call('ZADD', KEYS[1], ARGV[2], ids[1])
local entry = redis.call('HGET', KEYS[2], ids[1])
if not entry then redis.call('ZREM', KEYS[1], ids[1]) return false end
return {ids[1], entry}
"""


def entry_id(a: Action) -> str:
    """The de-duplication id of a notification: (object, its version, policy version, action)."""
    text = keys.SEP.join([a.uri, a.etag or "", a.policy_version, a.action])
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def payload(a: Action) -> dict[str, Any]:
    """What a notification says about an action."""
    return {"uri": a.uri, "model": a.model, "label": a.label, "score": a.score,
            "policy_version": a.policy_version, "job": a.job or "", "id": entry_id(a)}


def queue(pipe: Any, a: Action, *, stream: str | None, webhook: str | None, attempts: int) -> None:
    """Queue one notification on ``pipe`` (the caller's transaction): the stream entry now, the webhook POST in
    the outbox; nothing if this (object, policy version, action) was queued before."""
    body = payload(a)
    entry = json.dumps({"id": body["id"], "url": webhook, "body": body, "attempts": 0, "max_attempts": attempts,
                        "action": a.to_json()}) if webhook else ""
    fields = [x for k, v in body.items() for x in (k, str(v))]
    pipe.register_script(_QUEUE)(keys=[keys.OUTBOX_SEEN, keys.OUTBOX_DUE, keys.OUTBOX_ITEMS, stream or keys.OUTBOX_SEEN],
           args=[body["id"], time.time(), entry, "1" if stream else "0", STREAM_MAXLEN, *fields], client=pipe)


def forget(pipe: Any, a: Action) -> None:
    """After a move: the object is gone from this key; a new upload there is notified again."""
    pipe.hdel(keys.OUTBOX_SEEN, entry_id(Action(a.uri, a.model, a.label, a.score, a.policy_version, "notify",
                                                   etag=a.etag)))


def counts(redis: Any) -> dict[str, int]:
    """How many notifications wait (queued or being retried) and how many are dead-lettered."""
    pipe = redis.pipeline(transaction=False)
    pipe.zcard(keys.OUTBOX_DUE)
    pipe.hlen(keys.OUTBOX_DEAD)
    waiting, dead = pipe.execute()
    return {"waiting": int(waiting), "dead": int(dead)}


def dead_letters(redis: Any) -> list[dict[str, Any]]:
    return [json.loads(v) for v in redis.hvals(keys.OUTBOX_DEAD)]


class PermanentFailure(Exception):
    """A webhook answer that a retry cannot change (4xx other than 408/429)."""


def post(url: str, body: dict[str, Any], *, timeout: float) -> None:
    """One POST of JSON with the entry id as Idempotency-Key; raises on anything but 2xx."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Idempotency-Key": body["id"]})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            if resp.status >= 300:
                raise urllib.error.HTTPError(url, resp.status, "unexpected status", resp.headers, None)
    except urllib.error.HTTPError as exc:
        if 400 <= exc.code < 500 and exc.code not in (408, 429):
            raise PermanentFailure(f"HTTP {exc.code}") from None
        raise


class Deliverer:
    """Delivers the outbox: one entry at a time, each attempt bounded by ``timeout`` seconds."""

    def __init__(self, redis: Any, *, timeout: float) -> None:
        self.redis = redis
        self.timeout = timeout
        self._claim = redis.register_script(_CLAIM)
        self.stop = threading.Event()
        self.sent = self.failed = self.dead = 0
        self._thread: threading.Thread | None = None

    def start(self) -> Deliverer:
        self._thread = threading.Thread(target=self._run, name="labelq-outbox", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                if not self.deliver_one():
                    self.stop.wait(IDLE_POLL)
            except Exception as exc:  # noqa: BLE001 - Redis away: the entries wait in Redis, try later
                logger.warning("outbox: %s: %s; trying again in 2s", type(exc).__name__, exc)
                self.stop.wait(2.0)

    def drain(self, seconds: float) -> dict[str, int]:
        """Deliver until nothing waits (sent or dead-lettered) or ``seconds`` passed; the outbox counts."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and counts(self.redis)["waiting"]:
            if not self.deliver_one():
                time.sleep(IDLE_POLL)
        return counts(self.redis)

    def deliver_one(self) -> bool:
        """Claim and attempt the first due entry; whether there was one."""
        now = time.time()
        got = self._claim(keys=[keys.OUTBOX_DUE, keys.OUTBOX_ITEMS], args=[now, now + self.timeout + 30])
        if not got:
            return False
        entry_id_, raw = (x.decode() if isinstance(x, bytes) else x for x in got)
        entry = json.loads(raw)
        try:
            post(entry["url"], entry["body"], timeout=self.timeout)
        except Exception as exc:  # noqa: BLE001 - any failure is this attempt's
            self._failed(entry_id_, entry, exc)
        else:
            pipe = self.redis.pipeline(transaction=True)
            pipe.zrem(keys.OUTBOX_DUE, entry_id_)
            pipe.hdel(keys.OUTBOX_ITEMS, entry_id_)
            pipe.hset(keys.OUTBOX_SEEN, entry_id_, f"sent {time.time():.3f}")
            pipe.execute()
            self.sent += 1
        return True

    def _failed(self, entry_id_: str, entry: dict[str, Any], exc: BaseException) -> None:
        entry["attempts"] = int(entry.get("attempts", 0)) + 1
        entry["error"] = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
        pipe = self.redis.pipeline(transaction=True)
        if entry["attempts"] >= int(entry.get("max_attempts", 1)) or isinstance(exc, PermanentFailure):
            pipe.zrem(keys.OUTBOX_DUE, entry_id_)
            pipe.hdel(keys.OUTBOX_ITEMS, entry_id_)
            pipe.hset(keys.OUTBOX_DEAD, entry_id_, json.dumps(entry))
            pipe.hset(keys.OUTBOX_SEEN, entry_id_, f"dead {time.time():.3f}")
            action = Action(**json.loads(entry["action"]))
            action.result, action.time = "failed", utcnow()
            action.detail = f"webhook dead-lettered after {entry['attempts']} attempts: {entry['error']}"
            audit.append(pipe, [action])
            self.dead += 1
            logger.warning("outbox: %s on %s %s", action.action, action.uri, action.detail)
        else:
            delay = max(1.0, backoff(entry["attempts"], *RETRY_BACKOFF))
            pipe.hset(keys.OUTBOX_ITEMS, entry_id_, json.dumps(entry))
            pipe.zadd(keys.OUTBOX_DUE, {entry_id_: time.time() + delay})
            self.failed += 1
            logger.info("outbox: webhook for %s failed (attempt %d of %d: %s); next in %.0fs", entry["body"]["uri"],
                        entry["attempts"], entry.get("max_attempts"), entry["error"], delay)
        pipe.execute()

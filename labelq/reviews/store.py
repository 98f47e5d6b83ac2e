"""Writing the review store: queue items, claim them, decide and undo on a version, roll back, rebuild."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from .. import keys
from ..errors import UsageError
from .index import QueueIndex
from .items import (
    CLAIM_SECONDS,
    DECISIONS,
    QUEUED,
    REFUSALS,
    UNDO_SECONDS,
    Conflict,
    Item,
    facet_id,
    item_id,
    pairs,
    refusal,
    text,
)
from .scripts import ADD, CLAIM, MOVE


class ReviewStore(QueueIndex):
    """Review items in Redis: add, claim, decide and undo with versions; reading is :class:`QueueIndex`'s."""

    def __init__(self, redis: Any, *, claim_seconds: float = CLAIM_SECONDS, undo_seconds: float = UNDO_SECONDS,
                 clock: Any = time.time) -> None:
        super().__init__(redis, clock=clock)
        self.claim_seconds = claim_seconds
        self.undo_seconds = undo_seconds
        self._add = redis.register_script(ADD)
        self._claim = redis.register_script(CLAIM)
        self._move = redis.register_script(MOVE)

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
                         sample_rate=getattr(a, "sample_rate", None), now=now if now is not None else self.clock())
            n += 1
        if pipeline is None and n:
            pipe.execute()
        return n

    def add_one(self, pipe: Any, *, uri: str, etag: str | None, model: str, label: str, score: float, policy: str,
                threshold: float | None, job: str | None, labelled_at: str | None, action: str, detail: str = "",
                sample_rate: float | None = None, now: float) -> None:
        """Queue the add of one item (or one more action on it) on a pipeline. An item queued before keeps its
        fields, but gains a threshold or a sample rate it lacked (a rule and a sample of one object version)."""
        quarantined = action in ("move", "copy") and "://" in detail  # the quarantine URI, not a "skipped: …" note
        fid = facet_id(job, model, label, policy)
        fields = {"uri": uri, "etag": etag or "", "model": model, "label": label, "score": repr(float(score)),
                  "policy": policy, "threshold": "" if threshold is None else repr(float(threshold)),
                  "job": job or "", "labelled_at": labelled_at or "", "created": repr(float(now)),
                  "sample_rate": "" if sample_rate is None else repr(float(sample_rate))}
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
        return [text(x) for x in got]

    def _transition(self, item_id_: str, version: int, reviewer: str, kind: str, arg: float, entry: dict[str, Any],
                    fields: dict[str, Any]) -> Item:
        flat = [x for kv in fields.items() for x in (kv[0], "" if kv[1] is None else str(kv[1]))]
        res = self._move(keys=[], args=[self.p, item_id_, version, reviewer, self.clock(), kind, arg,
                                        json.dumps(entry), *flat])
        status = text(res[0])
        current = Item.from_hash(pairs(res[1])) if len(res) > 1 else None
        if status != "ok":
            raise Conflict(refusal(status, current), current)
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
            who, _, what = text(k).partition(keys.SEP)
            totals.setdefault(who, {})[what] = int(v)
        now_hour = int(self.clock() // 3600)
        pipe = self.redis.pipeline(transaction=False)
        for h in range(now_hour - 23, now_hour + 1):
            pipe.hgetall(f"{self.p}hour:{h}")
        hours = [{text(k): int(v) for k, v in h.items()} for h in pipe.execute()]
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
            raise Conflict(REFUSALS["missing"], None)
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
                         labelled_at=a.labelled_at, action=a.action, detail=a.detail,
                         sample_rate=getattr(a, "sample_rate", None), now=ts(a.time))
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

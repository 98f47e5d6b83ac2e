"""A review item, a query of the queue and a page of it; ids and index scores."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import keys
from ..errors import UsageError

CLAIM_SECONDS = 300.0  # how long opening an item keeps it yours
UNDO_SECONDS = 600.0  # how long a reviewer may undo their own decision
PAGE_MAX = 200  # items a page may ask for
CROSS_BUDGET = 20_000  # index entries walked per page when a range is on the other dimension
STATES = ("pending", "claimed", "decided")
DECISIONS = ("confirm", "release", "label")
QUEUED = ("move", "copy", "tag", "sample")  # policy actions that put an object under review
STORAGE_ACTIONS = ("move", "copy", "tag")  # the ones that changed storage (a sample changes nothing)
SEQ_MOD = 2**30  # sequence numbers in a score index value wrap here
SCORE_SCALE = 1_000_000  # score resolution in a score index value


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
    return int(max(0.0, min(1.0, score)) * SCORE_SCALE) * SEQ_MOD + seq % SEQ_MOD


def text(v: Any) -> str:
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
    sample_rate: float | None = None  # an audit sample: the rate it was drawn at (None: only a rule queued it)
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
    def sample_only(self) -> bool:
        """An audit sample no rule acted on: nothing in storage to restore or reverse."""
        return not any(a in STORAGE_ACTIONS for a in self.actions)

    @property
    def key(self) -> tuple[str, str]:
        return self.uri, self.etag

    def public(self) -> dict[str, Any]:
        """What the console's JSON API says about an item."""
        return {"id": self.id, "uri": self.uri, "etag": self.etag, "model": self.model, "label": self.label,
                "score": self.score, "threshold": self.threshold, "sample_rate": self.sample_rate,
                "policy_version": self.policy_version,
                "job": self.job, "state": self.state, "version": self.version, "claimed_by": self.claimed_by,
                "decision": self.decision, "reviewer": self.reviewer, "human_label": self.human_label,
                "reason": self.reason, "actions": self.actions, "created": self.created,
                "decided_at": self.decided_at}

    @classmethod
    def from_hash(cls, h: dict[Any, Any]) -> Item:
        d = {text(k): text(v) for k, v in h.items()}
        return cls(
            id=d["id"], uri=d["uri"], etag=d.get("etag", ""), model=d.get("model", ""), label=d.get("label", ""),
            score=float(d.get("score") or 0), policy_version=d.get("policy", ""),
            threshold=float(d["threshold"]) if d.get("threshold") else None,
            sample_rate=float(d["sample_rate"]) if d.get("sample_rate") else None, job=d.get("job") or None,
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


REFUSALS = {
    "stale": "this item changed since you opened it",
    "decided": "this item was decided already",
    "claimed": "another reviewer has this item open",
    "notdecided": "this item has no decision to undo",
    "notyours": "only the reviewer who decided can undo",
    "late": "too late to undo",
    "missing": "no such item in the review queue",
}


def pairs(flat: Sequence[Any]) -> dict[Any, Any]:
    return dict(zip(flat[0::2], flat[1::2], strict=True))


def refusal(status: str, item: Item | None) -> str:
    why = REFUSALS.get(status, status)
    if item is None:
        return why
    if item.state == "decided":
        now = f"now: {item.decision} by {item.reviewer}"
    elif item.state == "claimed":
        now = f"now: open by {item.claimed_by}"
    else:
        now = "now: pending"
    return f"{why} ({now}, version {item.version})"

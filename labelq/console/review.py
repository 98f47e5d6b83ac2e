"""Reviewers' decisions: the review store (:mod:`labelq.reviews`) says who may decide what, the moderation
actions change storage, the audit trail records it.

A decision is taken in three steps: the item is reserved in the store on the version the reviewer saw
(a stale version or another reviewer's claim is refused, with the item as it is now), storage is
changed (release: the object back at its key, the policy's tags off and review tags on; confirm:
review tags where the object is), then the audit entry (``review:confirm``, ``review:release``,
``review:label``, with reviewer, human label and reason) and ``labelq:released`` are written. When
storage fails, the reservation is rolled back and the item is the reviewer's claim again. Undo is the
same walk backwards, for one's own decision within the store's undo window.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from .. import keys
from ..errors import UsageError
from ..moderation import actions as storage_actions
from ..moderation.audit import Action
from ..records import utcnow
from ..reviews import DECISIONS, PAGE_MAX, Conflict, Item, Query, ReviewStore, item_id

logger = logging.getLogger(__name__)

REVIEW = "review:"
BULK_MAX = 500  # items one bulk decision takes


def _audit_entry(item: Item, action: str, reviewer: str, detail: str, human_label: str | None = None,
                 reason: str | None = None) -> Action:
    return Action(uri=item.uri, model=item.model, label=item.label, score=item.score,
                  policy_version=item.policy_version, action=action, result="ok", detail=detail, time=utcnow(),
                  job=item.job, etag=item.etag, labelled_at=item.labelled_at, reviewer=reviewer,
                  human_label=human_label, reason=reason, threshold=item.threshold)


def _clean(human_label: str | None, reason: str | None, reasons: Sequence[str], decision: str) -> tuple[Any, Any]:
    human_label = (human_label or "").strip() or None
    reason = (reason or "").strip() or None
    if decision not in DECISIONS:
        raise UsageError(f"decision must be one of {', '.join(DECISIONS)}")
    if decision == "label" and not human_label:
        raise UsageError("type the label to set")
    if human_label and len(human_label) > 200:
        raise UsageError("a label is at most 200 characters")
    if reason and reasons and reason not in reasons:
        raise UsageError(f"reason must be one of {', '.join(reasons)}")
    return human_label, reason


def decide(redis: Any, stores: Any, store: ReviewStore, iid: str, version: int, decision: str, reviewer: str, *,
           human_label: str | None = None, reason: str | None = None, reasons: Sequence[str] = ()) -> Item:
    """Carry out and audit a reviewer's decision on the version of the item they saw."""
    human_label, reason = _clean(human_label, reason, reasons, decision)
    item = store.reserve(iid, version, reviewer, decision, human_label=human_label, reason=reason)
    try:
        if decision == "release":
            detail, undo = storage_actions.restore(stores, item, reviewer, reason)
        elif decision == "confirm":
            detail, undo = storage_actions.confirm(stores, item, reviewer, reason)
        else:
            detail, undo = "", {}
    except Exception as exc:  # whatever failed, the reservation is rolled back
        store.rollback(item, reviewer, f"{type(exc).__name__}: {exc}")
        if isinstance(exc, UsageError):
            raise
        raise UsageError(f"{decision} failed, nothing changed: {type(exc).__name__}: {exc}") from None
    pipe = redis.pipeline(transaction=True)
    store.commit(item, detail, undo, pipeline=pipe)
    pipe.xadd(keys.AUDIT, {"a": _audit_entry(item, REVIEW + decision, reviewer, detail, human_label, reason).to_json()})
    if decision == "release":
        pipe.hset(keys.RELEASED, item.uri, item.etag)
    pipe.execute()
    logger.info("review %s of %s by %s", decision, item.uri, reviewer)
    return item


def undo(redis: Any, stores: Any, store: ReviewStore, iid: str, version: int, reviewer: str) -> Item:
    """Reverse one's own decision in storage and in the store; the item is the reviewer's claim again."""
    before, after = store.reserve_undo(iid, version, reviewer)
    try:
        if before.decision == "release":
            detail = storage_actions.requarantine(stores, before)
        elif before.decision == "confirm":
            detail = storage_actions.untag(stores, before)
        else:
            detail = "label withdrawn"
    except Exception as exc:  # noqa: BLE001 - whatever failed, the decision must stand as it was
        store.rollback_undo(before, after, reviewer, f"{type(exc).__name__}: {exc}")
        raise UsageError(f"undo failed, the decision stands: {type(exc).__name__}: {exc}") from None
    pipe = redis.pipeline(transaction=True)
    pipe.xadd(keys.AUDIT, {"a": _audit_entry(before, f"{REVIEW}undo", reviewer, f"undid {before.decision}: {detail}")
                           .to_json()})
    store.uncount(before, pipeline=pipe)
    if before.decision == "release":
        pipe.hdel(keys.RELEASED, before.uri)
    pipe.execute()
    logger.info("review undo of %s on %s by %s", before.decision, before.uri, reviewer)
    return after


def bulk(redis: Any, stores: Any, store: ReviewStore, q: Query, decision: str, reviewer: str, *,
         reason: str | None = None, reasons: Sequence[str] = ()) -> tuple[int, list[str]]:
    """Decide every pending item a query selects (at most BULK_MAX), each on its own version and audited on its
    own; items other reviewers hold or that changed are skipped. Returns (decided, why each skip)."""
    if decision not in ("confirm", "release"):
        raise UsageError("bulk decisions are confirm or release")
    _clean(None, reason, reasons, decision)
    q.state, q.after, q.before = "pending", None, None
    done = 0
    skipped: list[str] = []
    while done + len(skipped) < BULK_MAX:
        q.size = min(200, BULK_MAX - done - len(skipped))
        page = store.query(q, reviewer)
        if not page.items:
            break
        for item in page.items:
            try:
                decide(redis, stores, store, item.id, item.version, decision, reviewer, reason=reason, reasons=reasons)
                done += 1
            except UsageError as exc:
                skipped.append(f"{item.uri}: {exc}")
        if page.next_after is None:
            break
        q.after = page.next_after  # what this page decided was before the cursor
    return done, skipped


def export_rows(store: ReviewStore) -> Iterator[dict[str, Any]]:
    """The decision on each decided item, for retraining."""
    for item in decided_items(store):
        human = item.human_label
        if human is None and item.decision == "confirm":
            human = item.label  # confirming agrees with the model's label
        yield {"uri": item.uri, "model": item.model, "label": item.label, "score": item.score, "human_label": human,
               "decision": item.decision, "reason": item.reason, "reviewer": item.reviewer,
               "time": _iso(item.decided_at), "etag": item.etag, "job": item.job,
               "policy_version": item.policy_version, "sample_rate": item.sample_rate}


def decided_items(store: ReviewStore) -> Iterator[Item]:
    return store.walk(Query(state="decided", size=PAGE_MAX))


def _iso(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if t else ""


def locations(store: ReviewStore, records: Any) -> dict[str, str]:
    """Where moved objects are now: uri → quarantine uri, for those of ``records`` a policy moved and no reviewer
    released (one store read per record)."""
    recs = list(records)
    items = store.get_many([item_id(r.uri, r.etag) for r in recs]) if recs else []
    return {i.uri: i.shown_uri for i in items if i.shown_uri != i.uri}


def migrate(redis: Any, store: ReviewStore) -> int:
    """Once per Redis: queue the items of the audit trail written before the review store existed."""
    from ..moderation.audit import iter_audit

    if not redis.set(keys.REVIEW_MIGRATED, utcnow(), nx=True):
        return 0
    n = store.rebuild_from_audit(iter_audit(redis))
    if n:
        logger.info("review store: %d items rebuilt from the audit trail", n)
    return n


__all__ = ["BULK_MAX", "Conflict", "bulk", "decide", "export_rows", "locations", "migrate", "undo"]

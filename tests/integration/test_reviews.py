"""The review store against a real Redis: the state machine, versions, claims, filters, sorts and paging."""

from __future__ import annotations

import random
from typing import Any

import pytest

from labelq.errors import UsageError
from labelq.moderation.audit import Action
from labelq.reviews import Conflict, Query, ReviewStore, item_id


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _actions(n: int, *, job: str = "j1", model: str = "m", label: str = "nsfw", policy: str = "p1",
             seed: int = 0) -> list[Action]:
    rng = random.Random(seed)
    return [Action(f"s3://b/{job}/{i:05d}.jpg", model, label, round(rng.random(), 4), policy, "move", result="ok",
                   detail=f"s3://b/quarantine/{job}/{i:05d}.jpg", job=job, etag=f"e{i}", threshold=0.5)
            for i in range(n)]


@pytest.fixture
def store(redis_client: Any) -> ReviewStore:
    return ReviewStore(redis_client, clock=Clock(), claim_seconds=60, undo_seconds=120)


def _all(store: ReviewStore, q: Query, reviewer: str | None = None) -> list[Any]:
    """Every item of a query, following next-page cursors."""
    out, after = [], None
    while True:
        q.after = after
        page = store.query(q, reviewer)
        out += page.items
        if page.next_after is None:
            return out
        after = page.next_after


def test_an_item_goes_pending_claimed_decided_with_a_version_and_history(store: ReviewStore) -> None:
    (a,) = _actions(1)
    tag = Action(a.uri, a.model, a.label, a.score, a.policy_version, "tag", result="ok", job=a.job, etag=a.etag)
    assert store.add([a, tag]) == 2
    store.add([a])  # again: idempotent
    item = store.find(a.uri, a.etag)
    assert item is not None and item.id == item_id(a.uri, a.etag)
    assert (item.state, item.version, item.actions, item.moved) == ("pending", 1, ["move", "tag"], True)
    assert item.quarantine_uri == a.detail and item.shown_uri == a.detail and item.threshold == 0.5
    assert store.counts()["pending"] == 1

    assert store.claim([item.id], "alice") == [item.id]
    claimed = store.get(item.id)
    assert claimed is not None and (claimed.state, claimed.claimed_by, claimed.version) == ("claimed", "alice", 2)
    assert store.claim([item.id], "bob") == []  # others are served other items
    assert [i.id for i in store.query(Query(), "bob").items] == []
    assert [i.id for i in store.query(Query(), "alice").items] == [item.id]

    decided = store.reserve(item.id, 2, "alice", "release", reason="not-nsfw")
    assert (decided.state, decided.decision, decided.reviewer, decided.version) == ("decided", "release", "alice", 3)
    assert decided.shown_uri == a.uri  # released: back at its key
    assert [e["event"] for e in store.history(item.id)] == ["queued", "claim", "release"]
    assert store.counts() == {"pending": 0, "claimed": 0, "decided": 1, "claimed:alice": 0}


def test_a_stale_or_foreign_decision_is_refused_with_the_current_state(store: ReviewStore) -> None:
    store.add(_actions(2))
    x, y = store.query(Query()).items
    store.claim([x.id], "alice")
    with pytest.raises(Conflict, match=r"changed since.*open by alice, version 2"):
        store.reserve(x.id, 1, "bob", "confirm")  # Bob's page was rendered before Alice opened it
    with pytest.raises(Conflict, match="another reviewer has this item open"):
        store.reserve(x.id, 2, "bob", "confirm")
    store.reserve(x.id, 2, "alice", "release")
    with pytest.raises(Conflict, match=r"now: release by alice") as refused:
        store.reserve(x.id, 3, "bob", "confirm")
    assert refused.value.item is not None and refused.value.item.decision == "release"
    # an expired claim is anyone's again
    store.claim([y.id], "alice")
    store.clock.t += 61  # type: ignore[attr-defined]
    assert store.reap() == 1
    y2 = store.get(y.id)
    assert y2 is not None and (y2.state, y2.version) == ("pending", 3)
    assert store.reserve(y.id, 3, "bob", "confirm").reviewer == "bob"
    with pytest.raises(UsageError, match="decision must be one of"):
        store.reserve(y.id, 4, "bob", "delete")


def test_undo_is_for_ones_own_decision_within_the_window_and_rollback_restores(store: ReviewStore) -> None:
    store.add(_actions(2))
    x, y = store.query(Query()).items
    d = store.reserve(x.id, 1, "alice", "release", human_label="cat")
    store.commit(d, "restored", {"restored": True, "tags": {"a": "b"}})
    with pytest.raises(Conflict, match="only the reviewer who decided"):
        store.reserve_undo(x.id, d.version, "bob")
    before, after = store.reserve_undo(x.id, d.version, "alice")
    assert (before.decision, before.undo["tags"], before.human_label) == ("release", {"a": "b"}, "cat")
    assert (after.state, after.claimed_by, after.decision) == ("claimed", "alice", None)
    # the storage reversal failed: decided again, as it was
    back = store.rollback_undo(before, after, "alice", "S3 down")
    assert (back.state, back.decision, back.undo["tags"], back.human_label) == ("decided", "release", {"a": "b"}, "cat")
    store.clock.t += 121  # type: ignore[attr-defined]
    with pytest.raises(Conflict, match="too late to undo"):
        store.reserve_undo(x.id, back.version, "alice")
    # what the operator view counts: one decision of alice's, a release (it disagrees with the policy)
    stats = {r["reviewer"]: r for r in store.reviewer_stats()}
    assert {k: stats["alice"][k] for k in ("decided", "last_hour", "last_24h", "agreement")} == {
        "decided": 1, "last_hour": 1, "last_24h": 1, "agreement": 0.0}
    # a decision whose storage change failed goes back to the reviewer's claim
    r = store.reserve(y.id, 1, "alice", "confirm")
    failed = store.rollback(r, "alice", "boom")
    assert (failed.state, failed.claimed_by, failed.decision) == ("claimed", "alice", None)
    assert [e["event"] for e in store.history(y.id)] == ["queued", "confirm", "failed"]


def test_filters_sorts_totals_and_paging(store: ReviewStore) -> None:
    acts = _actions(130, job="j1", seed=1) + _actions(40, job="j2", label="violence", policy="p2", seed=2)
    store.add(acts[:100])
    store.clock.t += 3600  # type: ignore[attr-defined]  # an hour later, the rest
    store.add(acts[100:])
    everything = _all(store, Query(size=25))
    assert len(everything) == 170 and len({i.id for i in everything}) == 170
    assert [i.seq for i in everything] == sorted(i.seq for i in everything)  # oldest first
    page = store.query(Query(size=25))
    assert (page.total, page.exact, len(page.items), page.prev_before) == (170, True, 25, None)
    # back from page 2 to page 1
    p2 = store.query(Query(size=25, after=page.next_after))
    back = store.query(Query(size=25, before=p2.prev_before))
    assert [i.id for i in back.items] == [i.id for i in page.items]

    by_job = _all(store, Query(job="j2", sort="score", desc=True, size=7))
    assert [i.score for i in by_job] == sorted((a.score for a in acts if a.job == "j2"), reverse=True)
    assert {i.label for i in by_job} == {"violence"}
    assert store.query(Query(policy="p1")).total == 130 and store.query(Query(label="violence")).total == 40
    assert store.query(Query(model="other")).total == 0

    lo, hi = 0.2, 0.6
    want = sorted(a.score for a in acts if lo <= a.score <= hi)
    ranged = _all(store, Query(lo=lo, hi=hi, sort="score", size=10))
    assert [i.score for i in ranged] == want and store.query(Query(lo=lo, hi=hi, sort="score")).total == len(want)
    # a score range while sorting by age: walked, still exact at this size
    cross = store.query(Query(lo=lo, hi=hi, sort="age", size=200))
    assert cross.total == len(want) and cross.exact and sorted(i.score for i in cross.items) == want
    # age: older than 30 minutes = the first 100; newer = the rest
    assert store.query(Query(older=1800)).total == 100
    newer = _all(store, Query(newer=1800, sort="score", size=9))
    assert len(newer) == 70 and {i.uri for i in newer} == {a.uri for a in acts[100:]}

    # claimed items leave the pending queue of others, and come first in their reviewer's
    first = [i.id for i in store.query(Query(size=5)).items]
    store.claim(first, "alice")
    assert store.query(Query(), "bob").total == 165
    mine = store.query(Query(size=10), "alice")
    assert [i.id for i in mine.items[:5]] == first and mine.total == 170
    assert store.query(Query(state="claimed")).total == 5
    with pytest.raises(UsageError, match="sort by age or score"):
        store.query(Query(sort="name"))


def test_rebuild_from_the_audit_trail(store: ReviewStore, redis_client: Any) -> None:
    acts = _actions(5)
    decision = Action(acts[0].uri, "m", "nsfw", acts[0].score, "p1", "review:release", result="ok",
                      etag=acts[0].etag, job="j1", reviewer="alice")
    notify = Action(acts[1].uri, "m", "nsfw", 0.9, "p1", "notify", result="ok", etag="e1")
    assert store.rebuild_from_audit([*acts, notify, decision]) == 5
    assert store.counts()["pending"] == 4 and store.counts()["decided"] == 1
    released = store.find(acts[0].uri, acts[0].etag)
    assert released is not None and (released.decision, released.reviewer) == ("release", "alice")


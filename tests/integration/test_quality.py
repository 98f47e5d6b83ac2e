"""labelq.quality over a real Redis: evidence read from the review store in pages, the population from the record
store, hours of review, the report's strata from a policy, and the shadow comparison's join and truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from labelq.config import load_settings
from labelq.errors import UsageError
from labelq.moderation import Moderator, Policy, in_sample, load_policy
from labelq.objects import Stores, file_uri
from labelq.quality import build_report, compare, review_hours, reviewed
from labelq.quality.evidence import population, reviewed_jobs
from labelq.records import Record
from labelq.results.redis import RedisStore
from labelq.reviews import ReviewStore


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _rec(uri: str, model: str, score: float, job: str = "j", etag: str = "e", ok: bool = True) -> Record:
    if not ok:
        return Record(uri, etag, model, status="error", error_kind="corrupt", error="bad", job=job)
    top = sorted([{"label": "nsfw", "score": score}, {"label": "normal", "score": 1 - score}],
                 key=lambda t: -t["score"])
    return Record(uri, etag, model, label=top[0]["label"], score=top[0]["score"], top_k=top, job=job)


def _queue(store: ReviewStore, recs: list[Record], action: str = "tag", label: str = "nsfw") -> None:
    pipe = store.redis.pipeline(transaction=False)
    for r in recs:
        score = next(t["score"] for t in r.top_k if t["label"] == label)
        store.add_one(pipe, uri=r.uri, etag=r.etag, model=r.model, label=label, score=score, policy="p1",
                      threshold=0.5 if action == "tag" else None, job=r.job, labelled_at=r.processed_at,
                      action=action, now=store.clock())
    pipe.execute()


def _policy(folder: Path, text: str) -> Policy:
    path = folder / "policy.toml"
    path.write_text(text, encoding="utf-8")
    return load_policy(path)


def _decide(store: ReviewStore, uri: str, etag: str, decision: str, who: str, human_label: str | None = None) -> None:
    item = store.find(uri, etag)
    assert item is not None
    done = store.reserve(item.id, item.version, who, decision, human_label=human_label)
    store.commit(done, "", {})


def test_evidence_truth_paging_jobs_and_hours(redis_client: Any) -> None:
    clock = Clock()
    store = ReviewStore(redis_client, clock=clock)
    recs = [_rec(f"file:///d/{i:04d}.png", "m", (i % 100) / 100) for i in range(450)]
    _queue(store, recs)
    _queue(store, [_rec("file:///d/other.png", "m2", 0.9)])  # another model's item: not evidence of m
    _queue(store, [_rec("file:///k/x.png", "m", 0.9, job="k")])  # another job
    for i, r in enumerate(recs[:430]):  # 20 stay pending: not evidence
        clock.t += 10 if i % 50 else 3600  # a long pause every 50 decisions
        decision, human = [("confirm", None), ("release", None), ("label", "nsfw"), ("label", "normal")][i % 4]
        _decide(store, r.uri, r.etag, decision, "ann" if i % 2 else "bob", human)
    got = reviewed(store, "m", "nsfw", ["j"])
    assert len(got) == 430  # read over three pages of the index
    truth = {r.uri: r.truth for r in got}
    for i, r in enumerate(recs[:430]):
        assert truth[r.uri] == (i % 4 in (0, 2)), (i, r.uri)
    assert {r.reviewer for r in got} == {"ann", "bob"} and all(r.sampled_rate is None for r in got)
    assert len(reviewed(store, "m", "nsfw")) == 430  # no job named: every job (k's item is pending)
    assert reviewed_jobs(store, "m", "nsfw") == ["j", "k"]
    hours = review_hours(got)
    # each reviewer decides every other item: gaps of 20 s, except the 9 gaps over an hour's pause (capped at 300 s)
    gaps = {who: np.diff(sorted(r.decided_at for r in got if r.reviewer == who)) for who in ("ann", "bob")}
    for who, g in gaps.items():
        assert hours[who] == pytest.approx(float(np.minimum(g, 300).sum()) / 3600)
        assert (g > 300).sum() >= 8
    assert review_hours([]) == {}


@pytest.mark.parametrize("kind", ["redis", "sqlite", "parquet"])
def test_population_counts_ok_records_of_the_model_and_scores_of_the_label(redis_client: Any, tmp_path: Any,
                                                                         kind: str) -> None:
    from labelq.results import open_store

    records = (RedisStore(redis_client) if kind == "redis" else
               open_store(f"sqlite:///{tmp_path}/r.db" if kind == "sqlite" else f"parquet://{tmp_path}/pq"))
    records.write([_rec(f"file:///p/{i}.png", "m", i / 10) for i in range(10)]
                  + [_rec("file:///p/bad.png", "m", 0, ok=False), _rec("file:///p/0.png", "other", 0.5)]
                  + [Record("file:///p/none.png", "e", "m", label="cat", score=0.9, top_k=[{"label": "cat", "score": 0.9}],
                            job="j")])
    pop = population(records, ["j"], "m", "nsfw")
    assert (pop.records, pop.skipped) == (11, 1)
    assert pop.hist[0] == 2  # 0.0 and the record without nsfw in its top-k
    assert pop.hist[900] == 1 and pop.hist.sum() == 11


def test_the_report_stratifies_by_the_policy_and_names_strata_without_reviews(redis_client: Any, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    scores = rng.uniform(0, 1, 600)
    recs = [_rec(f"file:///r/{i}.png", "m", float(s)) for i, s in enumerate(scores)]
    RedisStore(redis_client).write(recs)
    store = ReviewStore(redis_client)
    flagged = [r for r in recs if r.score is not None and next(t["score"] for t in r.top_k if t["label"] == "nsfw") >= 0.7]
    _queue(store, flagged)
    for r in flagged:
        _decide(store, r.uri, r.etag, "confirm", "ann")
    policy = _policy(tmp_path, 'version = "p1"\n[[rule]]\nmodel = "m"\nlabel = "nsfw"\nthreshold = 0.7\n'
                     'actions = ["tag"]\n[[sample]]\nmodel = "m"\nlabel = "nsfw"\nbands = [[0.2, 0.5, 0.1]]\n')
    rep = build_report(RedisStore(redis_client), store, "m", "nsfw", jobs=["j"], policy=policy, target=0.9).to_dict()
    assert [s["lo"] for s in rep["strata"]] == [0.0, 0.2, 0.5, 0.7]
    assert [s["reviewed"] for s in rep["strata"]] == [0, 0, 0, len(flagged)]
    assert [(s["lo"], s["hi"]) for s in rep["strata_without_reviews"]] == [(0.0, 0.2), (0.2, 0.5), (0.5, 0.7)]
    at = {p["threshold"]: p for p in rep["points"]}
    assert at[0.7]["precision"] == 1.0 and at[0.7]["precision_lo"] > 0.9  # the flagged are all reviewed: all true
    assert at[0.7]["recall_lo"] < 0.5 and at[0.7]["recall_hi"] == pytest.approx(1.0)  # nothing below was: recall is wide open
    # a little below 0.7 the precision stays surely >= 0.9 even if every unreviewed record there is negative
    s = rep["suggestion"]
    assert s["threshold"] is not None and 0.6 < s["threshold"] < 0.7 and s["reason"] is None
    blind = sum(1 for x in scores if s["threshold"] <= x < 0.7)
    assert blind > 0 and at[s["threshold"]]["precision_lo"] >= 0.9
    assert at[round(s["threshold"] - 0.01, 2)]["precision_lo"] < 0.9
    rep = build_report(RedisStore(redis_client), store, "m", "nsfw", jobs=["j"], policy=policy, target=0.99).to_dict()
    assert rep["suggestion"]["threshold"] is None
    assert "too little review to tell" in rep["suggestion"]["reason"] and "[0.5, 0.7)" in rep["suggestion"]["reason"]
    # without a policy or a threshold: the strata are cut at the thresholds the queueing rules had (0.5 here)
    rep = build_report(RedisStore(redis_client), store, "m", "nsfw", jobs=["j"]).to_dict()
    assert rep["thresholds"] == [0.5] and [s["lo"] for s in rep["strata"]] == [0.0, 0.5]
    with pytest.raises(UsageError, match="target precision"):
        build_report(RedisStore(redis_client), store, "m", "nsfw", jobs=["j"], target=1.5)
    with pytest.raises(UsageError, match="no ok records"):
        build_report(RedisStore(redis_client), store, "nobody", "nsfw", jobs=["j"])


SAMPLED = """version = "p2"

[[rule]]
model = "m"
label = "nsfw"
threshold = 0.7
actions = ["tag"]

[[sample]]
model = "m"
label = "nsfw"
bands = [[0.0, 0.3, 0.1], [0.3, 0.7, 0.4]]

[[sample]]
model = "m"
label = "normal"
bands = [[0.0, 0.5, 0.3], [0.5, 1.0, 0.3]]
"""


def test_the_moderators_samples_are_evidence_of_their_label_only(redis_client: Any, tmp_path: Path) -> None:
    """The policy's own rule and [[sample]] tables, applied by the moderator, queue the items; once decided, the
    report of (m, nsfw) uses the rule's items and the nsfw samples (strata at the rule's threshold and the nsfw
    bands' edges, never the other label's), and none of the items the normal sample alone queued."""
    root = tmp_path / "root"
    root.mkdir()
    policy = _policy(tmp_path, SAMPLED)
    rng = np.random.default_rng(4)
    recs = [_rec(file_uri(root / f"{i:03d}.png"), "m", round(float(x), 4), etag=f"e{i}")
            for i, x in enumerate(rng.uniform(0, 1, 400))]
    RedisStore(redis_client).write(recs)
    done = Moderator(policy, redis=redis_client, stores=Stores(load_settings(local_root=root))).apply(recs)
    assert {a.result for a in done} == {"ok"}

    def nsfw(r: Record) -> float:
        return next(float(t["score"]) for t in r.top_k if t["label"] == "nsfw")

    band = {(0.0, 0.3): 0.1, (0.3, 0.7): 0.4}
    rate = {r.uri: next(v for (lo, hi), v in band.items() if lo <= nsfw(r) < hi) for r in recs if nsfw(r) < 0.7}
    tagged = {r.uri for r in recs if nsfw(r) >= 0.7}
    drawn = {r.uri for r in recs if r.uri in rate and in_sample(r.uri, r.etag, "m", "nsfw", rate[r.uri])}
    other = {r.uri for r in recs if in_sample(r.uri, r.etag, "m", "normal", 0.3)} - tagged - drawn
    assert {a.uri for a in done if a.action == "sample" and a.label == "nsfw"} == drawn
    assert len(drawn) > 20 and len(other) > 20
    store = ReviewStore(redis_client)
    for r in recs:
        if store.find(r.uri, r.etag) is not None:
            _decide(store, r.uri, r.etag, "confirm", "ann")
    got = reviewed(store, "m", "nsfw", ["j"])
    assert {r.uri for r in got} == tagged | drawn  # the normal sample's own items are not evidence of nsfw
    assert {r.uri: r.sampled_rate for r in got if r.uri in drawn} == {u: rate[u] for u in drawn}
    assert {r.uri for r in reviewed(store, "m", "normal", ["j"])} == other
    rep = build_report(RedisStore(redis_client), store, "m", "nsfw", jobs=["j"], policy=policy).to_dict()
    assert [(s["lo"], s["hi"]) for s in rep["strata"]] == [(0.0, 0.3), (0.3, 0.7), (0.7, 1.0)]
    assert [s["reviewed"] for s in rep["strata"]] == [sum(1 for u in drawn if rate[u] == 0.1),
                                                     sum(1 for u in drawn if rate[u] == 0.4), len(tagged)]
    assert rep["reviewed"] == len(tagged | drawn) and rep["strata_without_reviews"] == []


def test_compare_joins_by_uri_and_etag_and_takes_truth_from_either_models_reviews(redis_client: Any) -> None:
    records = RedisStore(redis_client)
    a = {f"file:///c/{i}.png": i / 20 for i in range(20)}
    b = {u: min(1.0, s + (0.3 if i % 5 == 0 else 0.0)) for i, (u, s) in enumerate(a.items())}
    records.write([_rec(u, "A", s) for u, s in a.items()] + [_rec("file:///c/only-a.png", "A", 0.9)])
    records.write([_rec(u, "B", s, job="shadow") for u, s in b.items()]
                  + [_rec("file:///c/0.png", "B", 0.9, job="shadow", etag="changed")][:0])
    records.write([_rec("file:///c/x.png", "A", 0.1), _rec("file:///c/x.png", "B", 0.9, job="shadow", etag="new")])
    store = ReviewStore(redis_client)
    _queue(store, [_rec("file:///c/15.png", "A", 0.75)])  # reviewed as A's item
    _queue(store, [_rec("file:///c/10.png", "B", 0.8, job="shadow")])  # and as B's
    _decide(store, "file:///c/15.png", "e", "confirm", "ann")
    _decide(store, "file:///c/10.png", "e", "release", "ann")
    c = compare(records, store, "A", "B", "nsfw", job="j", candidate_job="shadow", threshold=0.5)
    flips = {u for u in a if (a[u] >= 0.5) != (b[u] >= 0.5)}
    assert {f.uri for f in c.flips} == flips == {"file:///c/5.png"}
    assert (c.both, c.neither, c.a_only, c.b_only) == (10, 9, 0, 1)
    assert c.unmatched_a == 2 and c.unmatched_b == 1  # only-a.png; x.png has another etag on each side
    assert c.reviewed == 2
    assert c.quality_a is not None and c.quality_a.precision == 0.5  # 15 (true) and 10 (false) both act under A
    d = c.to_dict(flips=0)
    assert d["flips"] == [] and d["flipped"] == 1 and d["agreement"] == pytest.approx(19 / 20)
    with pytest.raises(UsageError, match="no ok records of candidate"):
        compare(records, store, "A", "B", "nsfw", job="j", threshold=0.5)  # B's records are in another job


def test_compare_reads_a_job_larger_than_a_page(redis_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from labelq.quality import evidence

    monkeypatch.setattr(evidence, "SCAN_PAGE", 7)
    records = RedisStore(redis_client)
    rng = np.random.default_rng(9)
    a = {f"file:///big/{i}.png": float(x) for i, x in enumerate(rng.uniform(0, 1, 300))}
    records.write([_rec(u, "A", s) for u, s in a.items()] + [_rec(u, "B", 1 - s) for u, s in a.items()])
    c = compare(records, ReviewStore(redis_client), "A", "B", "nsfw", job="j", threshold=0.5)
    assert c.pairs == 300 and c.unmatched_a == 0 and len(c.flips) == sum(1 for s in a.values() if (s >= 0.5) != (1 - s >= 0.5))
    assert evidence.population(records, ["j"], "A", "nsfw").records == 300

"""``python -m bench quality``: the calibration report and the shadow comparison on a large job.

Writes N records of an active model and N of a candidate into a private redis-server's record store (one job),
queues the active model's objects at or above 0.8 and a 2 % random sample below for review and decides them
all (the review store's own Lua scripts), then times ``build_report`` and ``compare`` by stage: reading the
evidence (decided items, a page of the index at a time), reading the population (every record of the job), the
estimate over 101+ thresholds. Writes ``bench/out/quality.json``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

from .common import OUT, machine, write_json
from .servers import Redis

ACTIVE, CANDIDATE, LABEL, JOB = "acme/active", "acme/candidate", "nsfw", "bench-quality"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("quality", help="moderate report / compare on a job of N records: seconds by stage")
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=3)


def _record(uri: str, model: str, score: float) -> Any:
    from labelq.records import Record

    top = sorted([{"label": LABEL, "score": score}, {"label": "normal", "score": 1 - score}], key=lambda t: -t["score"])
    return Record(uri, "e", model, label=top[0]["label"], score=top[0]["score"], top_k=top, job=JOB)


def generate(client: Any, n: int, seed: int = 1) -> tuple[float, int]:
    """Records of both models, review items decided; seconds taken and items decided."""
    from labelq.results.redis import RedisStore
    from labelq.reviews import ReviewStore

    rng = random.Random(seed)
    t0 = time.perf_counter()
    records, store = RedisStore(client), ReviewStore(client)
    queued = []
    batch: list[Any] = []
    for i in range(n):
        s = rng.betavariate(0.5, 2.0)
        uri = f"s3://photos/{i:08d}.jpg"
        batch += [_record(uri, ACTIVE, s), _record(uri, CANDIDATE, min(1.0, max(0.0, s + rng.gauss(0, 0.05))))]
        if s >= 0.8 or rng.random() < 0.02:
            queued.append((uri, s))
        if len(batch) >= 4000:
            records.write(batch)
            batch = []
    records.write(batch)
    pipe = client.pipeline(transaction=False)
    for uri, s in queued:
        store.add_one(pipe, uri=uri, etag="e", model=ACTIVE, label=LABEL, score=s, policy="p1",
                      threshold=0.8 if s >= 0.8 else None, job=JOB, labelled_at=None,
                      action="tag" if s >= 0.8 else "sample", now=time.time())
    pipe.execute()
    for uri, s in queued:
        item = store.find(uri, "e")
        done = store.reserve(item.id, item.version, "ann", "confirm" if rng.random() < s else "release")
        store.commit(done, "", {})
    return time.perf_counter() - t0, len(queued)


def run(args: argparse.Namespace) -> int:
    from labelq.moderation import Policy, Rule
    from labelq.quality import build_report, compare, curve, edges_for, population, reviewed
    from labelq.results.redis import RedisStore
    from labelq.reviews import ReviewStore

    redis = Redis("quality-bench")
    try:
        client = redis.client()
        print(f"generating {args.records:,} objects × 2 models, reviews …", flush=True)
        gen_s, decided = generate(client, args.records)
        print(f"  {gen_s:.1f} s, {decided:,} decided items", flush=True)
        records, store = RedisStore(client), ReviewStore(client)
        policy = Policy("p1", (Rule(ACTIVE, LABEL, 0.8, ("tag",)),))
        stages: dict[str, list[float]] = {"evidence": [], "population": [], "estimate": [], "report": [], "compare": []}
        for _ in range(args.repeat):
            t = time.perf_counter()
            ev = reviewed(store, ACTIVE, LABEL, [JOB])
            stages["evidence"].append(time.perf_counter() - t)
            t = time.perf_counter()
            pop = population(records, [JOB], ACTIVE, LABEL)
            stages["population"].append(time.perf_counter() - t)
            t = time.perf_counter()
            curve(pop.hist, edges_for([0.8]), [r.score for r in ev], [r.truth for r in ev])
            stages["estimate"].append(time.perf_counter() - t)
            t = time.perf_counter()
            build_report(records, store, ACTIVE, LABEL, jobs=[JOB], policy=policy)
            stages["report"].append(time.perf_counter() - t)
            t = time.perf_counter()
            c = compare(records, store, ACTIVE, CANDIDATE, LABEL, job=JOB, threshold=0.8)
            stages["compare"].append(time.perf_counter() - t)
        assert len(ev) == decided and pop.records == args.records and c.pairs == args.records
    finally:
        redis.stop()
    rows = [{"stage": k, "median_s": statistics.median(v), "max_s": max(v)} for k, v in stages.items()]
    print(f"\n{'stage':12} {'median s':>9} {'worst s':>8}   ({args.records:,} records, {decided:,} reviewed)")
    for r in rows:
        print(f"{r['stage']:12} {r['median_s']:9.2f} {r['max_s']:8.2f}")
    write_json(OUT / "quality.json", {"records": args.records, "reviewed": decided, "generate_s": gen_s,
                                      "rows": rows, "machine": machine()})
    print(f"wrote {OUT / 'quality.json'}")
    return 0

"""``python -m bench review``: the review queue at a million pending items.

Generates N pending items straight into the review store (``labelq.reviews``, the same Lua
``add`` the moderator uses, pipelined) on a private redis-server, then times the queries the
console makes: the first page of the pending queue (a reviewer's claims first, then the rest),
a page filtered by job, by job and label sorted by score, a score range, an age range, a
page deep in the queue (by cursor), and the counts per state. Each query: median and worst of
``--repeat`` runs. Writes ``bench/out/review.json``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

from .common import OUT, machine, write_json
from .servers import Redis

JOBS = [f"job-{i:02d}" for i in range(8)]
RULES = [("Falconsai/nsfw_image_detection", "nsfw"), ("acme/violence-vit", "violence"), ("acme/violence-vit", "weapon")]
POLICIES = ["2026-11-25.1", "2026-12-01.1"]
LIMIT_MS = 300.0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("review", help="the review queue at 1 M pending items: page times (first, filtered, deep)")
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--page", type=int, default=50)


def generate(store: Any, n: int, *, batch: int = 2000, seed: int = 1) -> float:
    """N pending items over 8 jobs × 3 rules × 2 policy versions, created over the last ~3 hours; seconds taken."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    start = time.time() - 3 * 3600
    pipe = store.redis.pipeline(transaction=False)
    for i in range(n):
        model, label = RULES[i % len(RULES)]
        job = JOBS[(i // 7) % len(JOBS)]
        store.add_one(pipe, uri=f"s3://photos/{job}/{i:08d}.jpg", etag=f"{i:032x}", model=model, label=label,
                      score=0.5 + rng.random() / 2, policy=POLICIES[(i // 3) % 2], threshold=0.5, job=job,
                      labelled_at=None, action="move", detail=f"s3://photos/quarantine/{job}/{i:08d}.jpg",
                      now=start + 3 * 3600 * i / n)
        if len(pipe) >= batch:
            pipe.execute()
    pipe.execute()
    return time.perf_counter() - t0


def run(args: argparse.Namespace) -> int:
    from labelq.reviews import Query, ReviewStore

    redis = Redis("review-bench")
    try:
        client = redis.client()
        store = ReviewStore(client)
        print(f"generating {args.items:,} pending items …", flush=True)
        gen_s = generate(store, args.items)
        mem = client.info("memory")["used_memory"]
        print(f"  {gen_s:.1f} s ({args.items / gen_s:,.0f} items/s), Redis {mem / 2**20:,.0f} MiB", flush=True)
        # a reviewer who holds a page of claims, as the console makes them
        first = store.query(Query(size=args.page), "alice")
        store.claim([i.id for i in first.items], "alice")
        deep_cursor = first.next_after
        for _ in range(200):  # 200 pages in: a cursor deep in the queue
            deep_cursor = store.query(Query(size=args.page, after=deep_cursor)).next_after
        queries = {
            "first page (pending, alice's claims first)": (Query(size=args.page), "alice"),
            "filtered: one job, oldest first": (Query(job=JOBS[3], size=args.page), "bob"),
            "filtered: job + label, highest score first": (Query(job=JOBS[5], label="weapon", sort="score",
                                                                 desc=True, size=args.page), "bob"),
            "filtered: score 0.90-0.95, by score": (Query(lo=0.9, hi=0.95, sort="score", size=args.page), "bob"),
            "filtered: policy + older than 1 h": (Query(policy=POLICIES[1], older=3600, size=args.page), "bob"),
            "page 201 (by cursor)": (Query(size=args.page, after=deep_cursor), "bob"),
        }
        rows = []
        for name, (q, who) in queries.items():
            times, page = [], None
            for _ in range(args.repeat):
                t = time.perf_counter()
                page = store.query(q, who)
                times.append((time.perf_counter() - t) * 1000)
            assert page is not None and len(page.items) == args.page, (name, page)
            rows.append({"query": name, "median_ms": statistics.median(times), "max_ms": max(times),
                         "total": page.total, "exact": page.exact})
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            counts = store.counts()
            times.append((time.perf_counter() - t) * 1000)
        rows.append({"query": "counts per state", "median_ms": statistics.median(times), "max_ms": max(times),
                     "total": counts["pending"] + counts["claimed"], "exact": True})
    finally:
        redis.stop()
    print(f"\n{'query':48} {'median ms':>10} {'worst ms':>9} {'total':>10}")
    for r in rows:
        print(f"{r['query']:48} {r['median_ms']:10.1f} {r['max_ms']:9.1f} {r['total']:>10,}")
    ok = all(r["max_ms"] < LIMIT_MS for r in rows)
    print(f"\nevery query under {LIMIT_MS:.0f} ms: {'yes' if ok else 'NO'}")
    write_json(OUT / "review.json", {"items": args.items, "generate_s": gen_s, "redis_bytes": mem,
                                     "page": args.page, "rows": rows, "machine": machine()})
    print(f"wrote {OUT / 'review.json'}")
    return 0 if ok else 1

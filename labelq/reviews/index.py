"""Reading the review queue: one page of items in the order asked, with its total, in O(zsets × (log N + page));
counts per state; the oldest pending item. Claims that ran out are given back before each query."""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from .. import keys
from .items import CROSS_BUDGET, SEQ_MOD, Item, Page, Query, item_id, score_key, text
from .scripts import REAP


class QueueIndex:
    """The read side of the review store (and the expiry of claims, which every read runs first)."""

    def __init__(self, redis: Any, *, clock: Any = time.time) -> None:
        self.redis = redis
        self.clock = clock
        self.p = keys.REVIEW
        self._reap = redis.register_script(REAP)

    def reap(self, limit: int = 1000) -> int:
        """Give expired claims back to the pending queue (run before each query; costs O(expired))."""
        return int(self._reap(keys=[], args=[self.p, self.clock(), limit]))

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
        return [json.loads(text(x)) for x in self.redis.lrange(f"{self.p}item:{id_}:log", 0, -1)]

    def facets(self) -> dict[str, dict[str, str]]:
        return {text(k): json.loads(text(v)) for k, v in self.redis.hgetall(f"{self.p}facets").items()}

    def counts(self) -> dict[str, int]:
        """Items per state (claimed: all reviewers together) and per reviewer's claims: ``claimed:NAME``."""
        facets = list(self.facets())
        buckets = sorted(text(b) for b in self.redis.smembers(f"{self.p}buckets"))
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
                best = (int(got[0][1]), text(got[0][0]))
        if best is None:
            return None
        created = self.redis.hget(f"{self.p}item:{best[1]}", "created")
        return float(text(created)) if created else None

    def _ix(self, bucket: str, facet: str, sort: str) -> str:
        return f"{self.p}ix:{bucket}:{facet}:{sort}"

    def _buckets(self, state: str, reviewer: str | None) -> list[str]:
        if state == "pending":
            return ([f"claimed:{reviewer}"] if reviewer else []) + ["pending"]
        if state == "decided":
            return ["decided"]
        claimed = sorted(b for b in map(text, self.redis.smembers(f"{self.p}buckets")) if b.startswith("claimed:"))
        return claimed if state == "claimed" else ["pending", *claimed, "decided"]

    def _seq_range(self, older: float | None, newer: float | None) -> tuple[float, float]:
        """Sequence numbers of items created between now-newer and now-older (1 s resolution)."""
        lo, hi = float("-inf"), float("inf")
        now = self.clock()
        tl = f"{self.p}timeline"
        if newer is not None:  # created at or after now - newer
            got = self.redis.zrangebyscore(tl, int(now - newer), "+inf", start=0, num=1)
            lo = float(text(got[0])) if got else float("inf")
        if older is not None:  # created before now - older: up to the first seq of the next second
            got = self.redis.zrangebyscore(tl, f"({int(now - older)}", "+inf", start=0, num=1)
            hi = float(text(got[0])) - 1 if got else float("inf")
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
        sc_hi = float("inf") if q.hi is None else float(score_key(q.hi, SEQ_MOD - 1))
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

    def walk(self, q: Query, reviewer: str | None = None) -> Iterator[Item]:
        """Every item of a query, a page (``q.size`` items, one round trip per page) at a time, in its order."""
        q = replace(q, after=None, before=None)
        while True:
            page = self.query(q, reviewer)
            yield from page.items
            if page.next_after is None:
                return
            q.after = page.next_after

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
            pairs = [(int(s), text(m)) for m, s in got]
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
            pairs = [(int(s), text(m)) for m, s in got]
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
            pairs = [(int(s), text(m)) for m, s in got]
            n += len(self._keep_other((b, f), pairs, keep)) if pairs else 0
            if min(c, oc) > take:
                exact = False
        return n, exact

"""The review store: one record per object version a policy acted on, its state and version, indexed.

An item is one version (uri, etag) of an object that a moderation policy moved, copied or
tagged, or drew as an audit sample (``sample``, with the ``sample_rate`` it was drawn at). It moves through ``pending → claimed → decided`` (an expired claim goes back to
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
Modules: :mod:`.items` (the item, the query, the page), :mod:`.scripts` (the Lua state changes),
:mod:`.index` (reading: queries, counts; claims that ran out go back first), :mod:`.store` (writing).

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

from .index import QueueIndex
from .items import (
    CLAIM_SECONDS,
    DECISIONS,
    PAGE_MAX,
    QUEUED,
    STATES,
    UNDO_SECONDS,
    Conflict,
    Item,
    Page,
    Query,
    facet_id,
    item_id,
    score_key,
)
from .store import ReviewStore

__all__ = ["CLAIM_SECONDS", "DECISIONS", "PAGE_MAX", "QUEUED", "STATES", "UNDO_SECONDS", "Conflict", "Item", "Page",
           "Query", "QueueIndex", "ReviewStore", "facet_id", "item_id", "score_key"]

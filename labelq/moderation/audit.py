"""The audit trail: one entry per action taken, in the ``labelq:audit`` Redis stream.

An entry holds the object, model, label, score, policy version, action, result and
time (and, for review decisions made in ``labelq console``, who decided and the label
they set). It is read back in time order a page at a time, and exported as JSONL or CSV.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import keys
from ..records import utcnow


@dataclass
class Action:
    """One action, planned or taken; what the audit trail stores."""

    uri: str
    model: str
    label: str
    score: float
    policy_version: str
    action: str
    result: str = "planned"  # ok | failed: ... | skipped: ...
    detail: str = ""
    time: str = field(default_factory=utcnow)
    job: str | None = None
    etag: str | None = None  # the version of the object acted on:
    labelled_at: str | None = None  # its etag and the record's processed_at
    reviewer: str | None = None  # review decisions (`labelq console`): who decided,
    human_label: str | None = None  # the label they set,
    reason: str | None = None  # and the reason code they chose
    threshold: float | None = None  # the threshold of the rule that acted, in the policy version that acted
    sample_rate: float | None = None  # an audit sample (action "sample"): the rate of the band it was drawn at

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @property
    def version_key(self) -> str:
        return f"{self.etag or ''}{keys.SEP}{self.labelled_at or ''}"


AUDIT_FIELDS = tuple(Action.__dataclass_fields__)


def append(pipe: Any, actions: Iterable[Action]) -> None:
    """Queue one stream entry per action on a Redis pipeline (the caller executes it)."""
    for a in actions:
        pipe.xadd(keys.AUDIT, {"a": a.to_json()})


def parse(raw: bytes | str) -> Action:
    """One stream entry's JSON as an Action; fields this version does not know are ignored."""
    data = json.loads(raw)
    return Action(**{k: v for k, v in data.items() if k in _FIELDS})


_FIELDS = frozenset(Action.__dataclass_fields__)


def _entries(batch: Any) -> Iterator[Action]:
    for _, data in batch:
        raw = data.get(b"a") or data.get("a")
        if raw:
            yield parse(raw)


def _after(batch: Any) -> str:
    last = batch[-1][0]
    return "(" + (last.decode() if isinstance(last, bytes) else last)


def iter_audit(redis: Any, *, job: str | None = None, page: int = 1000) -> Iterator[Action]:
    """The audit trail in time order, a page at a time (XRANGE)."""
    start = "-"
    while True:
        entries = redis.xrange(keys.AUDIT, min=start, max="+", count=page)
        for action in _entries(entries):
            if job is None or action.job == job:
                yield action
        if len(entries) < page:
            return
        start = _after(entries)


def newest(redis: Any, *, limit: int = 500, page: int = 500) -> Iterator[Action]:
    """The audit trail newest first (XREVRANGE), at most ``limit`` entries."""
    end, seen = "+", 0
    while seen < limit:
        count = min(page, limit - seen)
        entries = redis.xrevrange(keys.AUDIT, max=end, min="-", count=count)
        seen += len(entries)
        yield from _entries(entries)
        if len(entries) < count:
            return
        end = _after(entries)


def write_audit(actions: Iterable[Action], fmt: str, out: Any) -> int:
    """Export the audit trail as JSONL or CSV; returns how many entries were written."""
    n = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=AUDIT_FIELDS)
        writer.writeheader()
        for a in actions:
            writer.writerow(asdict(a))
            n += 1
        return n
    for a in actions:
        out.write(a.to_json() + "\n")
        n += 1
    return n

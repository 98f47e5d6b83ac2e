"""What the statistics are made of: reviewers' decisions on (model, label) from the review store, the
population of scores from the record store (everything works on records already stored), hours of review."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..records import Record
from ..reviews import PAGE_MAX, Item, Query, ReviewStore
from .estimate import BINS, bin_of

GAP_CAP_S = 300.0  # a pause between two decisions counts as review time up to this many seconds


@dataclass(frozen=True)
class Reviewed:
    """One reviewed object version: its score for the label, what the reviewer said is true, who and when."""

    uri: str
    etag: str
    score: float
    truth: bool
    reviewer: str
    decided_at: float
    sampled_rate: float | None
    model: str = ""
    label: str = ""
    job: str | None = None
    threshold: float | None = None  # the threshold of the rule that queued it (None: sampled)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def truth_of(item: Item, label: str) -> bool:
    """confirm → the label is right; release → it is wrong; label → right when the human's label is it."""
    if item.decision == "confirm":
        return True
    if item.decision == "label":
        return (item.human_label or "") == label
    return False


def decided(store: ReviewStore, model: str, label: str, jobs: Sequence[str] | None = None) -> Iterator[Item]:
    """The decided review items of (model, label) in these jobs (all jobs: None), read a page of the index at a
    time (one round trip per page of up to PAGE_MAX items, never one per item)."""
    for job in (list(dict.fromkeys(jobs)) if jobs else [None]):
        yield from store.walk(Query(state="decided", job=job, model=model, label=label, size=PAGE_MAX))


def reviewed(store: ReviewStore, model: str, label: str, jobs: Sequence[str] | None = None) -> list[Reviewed]:
    """The evidence: every decided item of (model, label) [in these jobs] as a :class:`Reviewed`."""
    out: dict[str, Reviewed] = {}
    for item in decided(store, model, label, jobs):
        if item.decision is None:
            continue
        out[item.id] = Reviewed(uri=item.uri, etag=item.etag, score=float(item.score), truth=truth_of(item, label),
                                reviewer=item.reviewer or "", decided_at=float(item.decided_at),
                                sampled_rate=item.sample_rate, model=item.model, label=item.label,
                                job=item.job, threshold=item.threshold)
    return sorted(out.values(), key=lambda r: (r.decided_at, r.uri))


def reviewed_jobs(store: ReviewStore, model: str, label: str) -> list[str]:
    """The jobs whose items of (model, label) a policy put under review (from the store's facets)."""
    return sorted({f["job"] for f in store.facets().values()
                   if f["model"] == model and f["label"] == label and f["job"]})


def label_score(rec: Record, label: str) -> float:
    """The record's score of ``label``: from its top-k, else its top label, else 0.0 (not among the top-k)."""
    for t in rec.top_k:
        if t.get("label") == label:
            return float(t["score"])
    if rec.label == label and rec.score is not None:
        return float(rec.score)
    return 0.0


@dataclass
class Population:
    """The scores of ``label`` over a model's ok records in some jobs, as a histogram of BINS bins."""

    hist: np.ndarray
    records: int
    skipped: int  # error records, not counted

    @classmethod
    def of(cls, records: Iterable[Record], model: str, label: str, batch: int = 10_000) -> Population:
        hist = np.zeros(BINS, dtype=np.int64)
        n = skipped = 0
        buf: list[float] = []
        for rec in records:
            if rec.model != model:
                continue
            if not rec.ok:
                skipped += 1
                continue
            buf.append(label_score(rec, label))
            n += 1
            if len(buf) >= batch:
                hist += np.bincount(bin_of(buf), minlength=BINS)
                buf.clear()
        if buf:
            hist += np.bincount(bin_of(buf), minlength=BINS)
        return cls(hist, n, skipped)


SCAN_PAGE = 5000  # records read per page of a store that scans one model's records of a job


def model_records(record_store: Any, job: str, model: str) -> Iterator[Record]:
    """The job's records of ``model``, streamed: a store that can scan one model's records (Redis: its hash of the
    job and model; SQL: by key) reads only those; another store's job is read whole and filtered."""
    scan = getattr(record_store, "scan_page", None)
    if scan is None:
        yield from (r for r in record_store.iter_records(job) if r.model == model)
        return
    cursor: str | None = None
    while True:
        found, cursor = scan(job, model, cursor, SCAN_PAGE, lambda r: True)
        yield from found
        if cursor is None:
            return


def population(record_store: Any, jobs: Sequence[str], model: str, label: str) -> Population:
    """The histogram of the model's scores of ``label`` over the ok records of these jobs (streamed)."""

    def every() -> Iterator[Record]:
        for job in dict.fromkeys(jobs):
            yield from model_records(record_store, job, model)

    return Population.of(every(), model, label)


def review_hours(items: Iterable[Reviewed], cap: float = GAP_CAP_S) -> dict[str, float]:
    """Hours of review per reviewer: the gaps between their consecutive decisions, each at most ``cap`` s."""
    times: dict[str, list[float]] = {}
    for r in items:
        times.setdefault(r.reviewer, []).append(r.decided_at)
    out = {}
    for who, ts in sorted(times.items()):
        ts.sort()
        gaps = np.diff(np.asarray(ts, dtype=float))
        out[who] = float(np.minimum(gaps, cap).sum()) / 3600.0
    return out

"""Shadow comparison: the active model A and a candidate B on the same objects, for a rule's label and
threshold — which objects would act under each, which flip, and how good each is on the reviewed objects.

Records are joined by uri (and etag, when both records know it). A review's truth is about the object, not the
model: the decided items of the label queued for either model give the truth of their object version. Each
model's precision and recall are post-stratified on A's score strata (the review was drawn on A's scores)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UsageError
from ..moderation.shadow import shadow_job_name
from ..reviews import ReviewStore
from .estimate import Point, edges_for, histogram, point, strata_counts, stratum_of, weights
from .evidence import label_score, model_records, reviewed


@dataclass(frozen=True)
class Flip:
    uri: str
    etag: str | None
    score_a: float
    score_b: float

    @property
    def delta(self) -> float:
        return self.score_b - self.score_a

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "etag": self.etag, "score_a": self.score_a, "score_b": self.score_b,
                "delta": self.delta, "acts": "candidate only" if self.delta > 0 else "active only"}


@dataclass
class Comparison:
    model: str
    candidate: str
    label: str
    job: str
    candidate_job: str
    threshold: float
    candidate_threshold: float
    both: int
    neither: int
    a_only: int
    b_only: int
    unmatched_a: int  # records of A with no record of B for the same object version (and the reverse)
    unmatched_b: int
    flips: list[Flip] = field(default_factory=list)
    reviewed: int = 0
    quality_a: Point | None = None
    quality_b: Point | None = None

    @property
    def pairs(self) -> int:
        return self.both + self.neither + self.a_only + self.b_only

    @property
    def agreement(self) -> float | None:
        return (self.both + self.neither) / self.pairs if self.pairs else None

    def to_dict(self, flips: int | None = None) -> dict[str, Any]:
        return {"model": self.model, "candidate": self.candidate, "label": self.label, "job": self.job,
                "candidate_job": self.candidate_job, "threshold": self.threshold,
                "candidate_threshold": self.candidate_threshold, "pairs": self.pairs, "both": self.both,
                "neither": self.neither, "active_only": self.a_only, "candidate_only": self.b_only,
                "agreement": self.agreement, "unmatched_active": self.unmatched_a,
                "unmatched_candidate": self.unmatched_b, "reviewed": self.reviewed,
                "active": self.quality_a.to_dict() if self.quality_a else None,
                "candidate_quality": self.quality_b.to_dict() if self.quality_b else None,
                "flipped": len(self.flips),
                "flips": [f.to_dict() for f in (self.flips if flips is None else self.flips[:flips])]}


def _scores(record_store: Any, job: str, model: str, label: str) -> dict[str, tuple[str | None, float]]:
    out: dict[str, tuple[str | None, float]] = {}
    for rec in model_records(record_store, job, model):
        if rec.ok:
            out[rec.uri] = (rec.etag, label_score(rec, label))
    return out


def _same(ea: str | None, eb: str | None) -> bool:
    return not ea or not eb or ea == eb


def compare(record_store: Any, reviews: ReviewStore, model: str, candidate: str, label: str, *, job: str,
            candidate_job: str | None = None, threshold: float, candidate_threshold: float | None = None,
            band_edges: Sequence[float] = ()) -> Comparison:
    """Join A's and B's records of the job(s) and count who acts where; estimate each one's quality, post-stratified
    on A's scores at the thresholds and ``band_edges`` (the edges of the policy's sample bands for A)."""
    tb = threshold if candidate_threshold is None else candidate_threshold
    for t in (threshold, tb):
        if not 0.0 <= t <= 1.0:
            raise UsageError(f"a threshold lies between 0 and 1, not {t:g}")
    cjob = candidate_job or job
    a = _scores(record_store, job, model, label)
    if not a:
        raise UsageError(f"no ok records of model {model} in job {job}")
    b = _scores(record_store, cjob, candidate, label)
    if not b:
        raise UsageError(f"no ok records of candidate {candidate} in job {cjob}: score the job's objects with it "
                         f"first (`labelq moderate shadow {job} --model {candidate}` makes job "
                         f"{shadow_job_name(job)}, then compare with --candidate-job {shadow_job_name(job)}), "
                         "or name it in the policy's [shadow] models")
    uris = [u for u in a if u in b and _same(a[u][0], b[u][0])]
    sa = np.array([a[u][1] for u in uris], dtype=float)
    sb = np.array([b[u][1] for u in uris], dtype=float)
    act_a, act_b = sa >= threshold, sb >= tb
    flips = [Flip(uris[i], a[uris[i]][0] or b[uris[i]][0], float(sa[i]), float(sb[i]))
             for i in np.flatnonzero(act_a != act_b)]
    flips.sort(key=lambda f: (-abs(f.delta), f.uri))
    out = Comparison(model, candidate, label, job, cjob, threshold, tb, both=int((act_a & act_b).sum()),
                     neither=int((~act_a & ~act_b).sum()), a_only=int((act_a & ~act_b).sum()),
                     b_only=int((~act_a & act_b).sum()), unmatched_a=len(a) - len(uris),
                     unmatched_b=sum(1 for u in b if u not in a or not _same(a[u][0], b[u][0])), flips=flips)
    # truth: decided items of the label for either model, about the object version
    truth: dict[tuple[str, str], bool] = {}
    for m in dict.fromkeys((model, candidate)):
        for r in reviewed(reviews, m, label):
            truth[(r.uri, r.etag)] = r.truth
    index = {u: i for i, u in enumerate(uris)}
    rows = []
    for (uri, etag), y in truth.items():
        i = index.get(uri)
        if i is not None and _same(etag, a[uri][0]):
            rows.append((i, y))
    out.reviewed = len(rows)
    if not rows:
        return out
    idx = np.array([i for i, _ in rows])
    y = np.array([t for _, t in rows], dtype=bool)
    edges = edges_for([threshold, tb], band_edges)
    n_h = strata_counts(histogram(sa), edges)
    strata = stratum_of(sa[idx], edges)
    w, r_h = weights(strata, n_h)
    blind = np.isin(stratum_of(sa, edges), np.flatnonzero((r_h == 0) & (n_h > 0)))
    for name, scores, t in (("a", sa, threshold), ("b", sb, tb)):
        above = scores >= t
        p = point(t, scores[idx], y, w, blind_above=float((blind & above).sum()),
                  blind_below=float((blind & ~above).sum()), records_above=int(above.sum()))
        setattr(out, f"quality_{name}", p)
    return out

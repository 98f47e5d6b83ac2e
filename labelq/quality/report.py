"""The calibration report of (model, label): evidence from the stores, estimates over a grid of thresholds,
the threshold that meets a target precision; rows for export. Shared by ``labelq moderate report`` and the
console's /quality page."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UsageError
from ..moderation.rules import Policy
from ..reviews import ReviewStore
from .estimate import GRID, Curve, Suggestion, curve, edges_for, suggest
from .evidence import Population, Reviewed, population, review_hours, reviewed, reviewed_jobs


def policy_points(policy: Policy | None, model: str, label: str) -> tuple[list[float], list[float]]:
    """The policy's rule thresholds on (model, label), and the edges of its sample bands for them (if any)."""
    if policy is None:
        return [], []
    thresholds = sorted({r.threshold for r in policy.rules if r.model == model and r.label == label})
    bands = {edge for s in policy.samples if s.model == model and s.label == label
             for b in s.bands for edge in (b.lo, b.hi)}
    return thresholds, sorted(bands)


@dataclass
class Report:
    model: str
    label: str
    jobs: list[str]
    policy_version: str | None
    thresholds: list[float]  # the policy's (or the given) thresholds
    target: float
    population: Population
    evidence: list[Reviewed]
    curve: Curve
    strata: np.ndarray  # each reviewed item's stratum
    weights: np.ndarray  # and weight
    suggestion: Suggestion
    hours: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        c = self.curve
        return {
            "model": self.model, "label": self.label, "jobs": self.jobs, "policy_version": self.policy_version,
            "thresholds": self.thresholds, "target_precision": self.target, "records": self.population.records,
            "error_records": self.population.skipped, "reviewed": len(self.evidence),
            "strata": [{"lo": c.edges[h], "hi": c.edges[h + 1], "records": c.records[h], "reviewed": c.reviewed[h]}
                       for h in range(len(c.records))],
            "strata_without_reviews": [{"lo": a, "hi": b, "records": n} for a, b, n in c.blind],
            "review_hours": self.hours, "review_hours_total": sum(self.hours.values()),
            "suggestion": {"threshold": self.suggestion.threshold, "recall": self.suggestion.recall,
                           "recall_lo": self.suggestion.recall_lo, "recall_hi": self.suggestion.recall_hi,
                           "reason": self.suggestion.reason},
            "points": [p.to_dict() for p in c.points],
        }

    def item_rows(self) -> list[dict[str, Any]]:
        """The per-item evidence: (uri, etag, model, label, score, stratum, weight, truth, reviewer, decided_at)."""
        e = self.curve.edges
        return [{"uri": r.uri, "etag": r.etag, "model": self.model, "label": self.label, "score": r.score,
                 "stratum": f"[{e[h]:g}, {e[h + 1]:g}{']' if h == len(e) - 2 else ')'}", "weight": float(w),
                 "truth": r.truth, "reviewer": r.reviewer, "decided_at": r.decided_at, "job": r.job,
                 "sampled_rate": r.sampled_rate}
                for r, h, w in zip(self.evidence, self.strata, self.weights, strict=True)]


def build_report(record_store: Any, reviews: ReviewStore, model: str, label: str, *, jobs: Sequence[str] = (),
                 policy: Policy | None = None, thresholds: Sequence[float] = (), target: float = 0.95) -> Report:
    """Read the evidence and the population, estimate over the grid (plus the policy's thresholds)."""
    if not 0.0 < target <= 1.0:
        raise UsageError(f"the target precision lies in (0, 1], not {target:g}")
    for t in thresholds:
        if not 0.0 <= t <= 1.0:
            raise UsageError(f"a threshold lies between 0 and 1, not {t:g}")
    rule_ts, bands = policy_points(policy, model, label)
    ts = sorted(set(rule_ts) | {float(t) for t in thresholds})
    chosen = list(dict.fromkeys(jobs)) or reviewed_jobs(reviews, model, label)
    if not chosen:
        raise UsageError(f"no job named and no reviewed items of {model} / {label}: give --job")
    evidence = reviewed(reviews, model, label, chosen)
    if policy is None and not ts:  # no policy, no threshold: the thresholds of the rules that queued the items
        ts = sorted({r.threshold for r in evidence if r.threshold is not None})
    pop = population(record_store, chosen, model, label)
    if pop.records == 0:
        raise UsageError(f"no ok records of model {model} in job(s) {', '.join(chosen)}")
    edges = edges_for(ts, bands)
    c, strata, w = curve(pop.hist, edges, [r.score for r in evidence], [r.truth for r in evidence],
                         thresholds=[*GRID, *ts])
    sug = suggest(c, target, reference=ts)
    return Report(model, label, chosen, policy.version if policy else None, ts, target, pop, evidence, c, strata, w,
                  sug, review_hours(evidence))

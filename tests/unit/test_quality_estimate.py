"""The estimator of labelq.quality: exact small cases worked by hand, degenerate cases, and a coverage simulation
(stratified review of synthetic populations whose truth is known: the 95 % intervals must cover)."""

from __future__ import annotations

import numpy as np
import pytest

from labelq.quality.estimate import (
    BINS,
    curve,
    edges_for,
    histogram,
    kish,
    strata_counts,
    stratum_of,
    suggest,
    wilson,
)


def test_wilson_matches_the_textbook_values() -> None:
    lo, hi = wilson(0.5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)  # 5 of 10 (Wilson 1927; Newcombe 1998 table I)
    lo, hi = wilson(0.0, 10)
    assert lo == 0.0 and round(hi, 4) == 0.2775
    lo, hi = wilson(1.0, 29)
    assert hi == 1.0 and round(lo, 4) == 0.8830
    assert wilson(0.3, 0) == (0.0, 1.0)


def test_kish_effective_n() -> None:
    assert kish(np.ones(7)) == pytest.approx(7)
    assert kish(np.array([1.0, 3.0])) == pytest.approx(16 / 10)
    assert kish(np.zeros(0)) == 0.0


def test_edges_strata_and_counts() -> None:
    edges = edges_for([0.8], [0.2, 0.5, 0.5])
    assert edges.tolist() == [0.0, 0.2, 0.5, 0.8, 1.0]
    assert stratum_of([0.0, 0.1999, 0.2, 0.79, 0.8, 1.0], edges).tolist() == [0, 0, 1, 2, 3, 3]
    hist = histogram([0.0, 0.1, 0.3, 0.8, 0.9, 1.0])
    assert hist.sum() == 6 and len(hist) == BINS
    assert strata_counts(hist, edges).tolist() == [2, 1, 0, 3]


def test_a_small_case_by_hand() -> None:
    # 100 records: 20 at 0.9, 80 at 0.1. Strata [0, 0.5) and [0.5, 1]. Reviewed: 4 of the high ones (3 true),
    # 2 of the low ones (1 true). Weights: high 20/4 = 5, low 80/2 = 40.
    hist = histogram([0.9] * 20 + [0.1] * 80)
    edges = edges_for([0.5])
    c, strata, w = curve(hist, edges, [0.9, 0.9, 0.9, 0.9, 0.1, 0.1], [True, True, True, False, True, False],
                         thresholds=[0.5])
    assert strata.tolist() == [1, 1, 1, 1, 0, 0] and w.tolist() == [5, 5, 5, 5, 40, 40]
    p = c.at(0.5)
    assert p is not None
    assert (p.tp, p.fp, p.fn) == (15, 5, 40)
    assert p.precision == pytest.approx(0.75) and p.recall == pytest.approx(15 / 55)
    # equal weights above the threshold: Kish's n is the plain count, 4; the stratified variance of the ratio
    # (residuals .25, .25, .25, -.75, sample variance .25, finite population 20) allows 0.1875 / 0.05 = 3.75
    assert p.n_eff == pytest.approx(3.75)
    assert (p.precision_lo, p.precision_hi) == pytest.approx(wilson(0.75, 3.75))
    r = 15 / 55  # recall: Kish's n of the positives (weights 5, 5, 5, 40), or the stratified variance's, the smaller
    var = (20 * 20 * (1 - 4 / 20) * (1 - r) ** 2 * 0.25 / 4 + 80 * 80 * (1 - 2 / 80) * r * r * 0.5 / 2) / 55 ** 2
    assert p.n_eff_recall == pytest.approx(min((5 * 3 + 40) ** 2 / (25 * 3 + 1600), r * (1 - r) / var))
    assert (p.recall_lo, p.recall_hi) == pytest.approx(wilson(15 / 55, p.n_eff_recall))
    assert p.records_above == 20 and p.reviewed == 4 and p.positives_reviewed == 4
    assert c.records == (80, 20) and c.reviewed == (2, 4) and c.blind == []


def test_a_stratum_without_reviews_takes_the_extremes_and_is_named() -> None:
    # 10 records at 0.9 (all reviewed, all true), 30 at 0.6 nobody reviewed, 60 at 0.1 (3 reviewed, all false).
    hist = histogram([0.9] * 10 + [0.6] * 30 + [0.1] * 60)
    edges = edges_for([0.5, 0.8])
    c, _, _ = curve(hist, edges, [0.9] * 10 + [0.1] * 3, [True] * 10 + [False] * 3, thresholds=[0.5, 0.8])
    assert c.blind == [(0.5, 0.8, 30)]
    p = c.at(0.5)
    assert p is not None and p.precision == 1.0  # the point estimate skips the blind stratum
    lo, _ = wilson(1.0, 10)
    assert p.precision_lo == pytest.approx(lo * 10 / 40)  # all 30 could be negative
    assert p.precision_hi == 1.0
    assert p.recall == 1.0 and p.recall_lo == pytest.approx(wilson(1.0, 10)[0])  # none of the blind is below 0.5
    high = c.at(0.8)
    assert high is not None and high.recall_lo == pytest.approx(wilson(1.0, 10)[0] * 10 / 40)  # 30 could be misses
    s = suggest(c, 0.95)
    assert s.threshold is None and s.reason is not None and "[0.5, 0.8) 30 records" in s.reason


def test_no_reviews_and_all_positive_and_empty_strata() -> None:
    hist = histogram(np.linspace(0, 1, 200))
    c, strata, w = curve(hist, edges_for([0.5]), [], [], thresholds=[0.5])
    p = c.at(0.5)
    assert p is not None and p.precision is None and (p.precision_lo, p.precision_hi) == (0.0, 1.0)
    assert strata.size == 0 and w.size == 0
    s = suggest(c, 0.9, reference=[0.5])
    assert s.threshold is None and s.reason is not None and s.reason.startswith("too little review to tell")

    hist = histogram([0.95] * 50)  # everything in the top stratum; the lower one is empty (no records, no blind)
    c, _, _ = curve(hist, edges_for([0.9]), [0.95] * 40, [True] * 40, thresholds=[0.5, 0.9])
    assert c.blind == [] and c.records == (0, 50)
    p = c.at(0.9)
    assert p is not None and p.precision == 1.0 and p.recall == 1.0
    assert p.precision_lo == pytest.approx(wilson(1.0, 40)[0])
    s = suggest(c, 0.9, reference=[0.9])
    assert s.threshold == 0.5 and s.recall == 1.0  # the lowest threshold whose lower bound reaches 0.9


def test_too_little_review_behind_the_policy_threshold() -> None:
    hist = histogram([0.9] * 100 + [0.2] * 100)
    c, _, _ = curve(hist, edges_for([0.8]), [0.9] * 20 + [0.2] * 20, [True] * 20 + [False] * 20,
                    thresholds=[0.8])
    s = suggest(c, 0.5, reference=[0.8])
    assert s.threshold is None and s.reason is not None and "effective 20.0" in s.reason
    assert suggest(c, 0.5, reference=[0.8], min_n=10).threshold == 0.8


def _simulate(rng: np.random.Generator) -> tuple[dict[float, tuple[float, float]], dict[float, object]]:
    n = 3000
    scores = rng.beta(0.6, 1.4, n)
    truth = rng.random(n) < np.clip(0.05 + 0.9 * scores ** 1.5, 0, 1)
    edges = edges_for([0.6], [0.3])
    strata = stratum_of(scores, edges)
    rates = {0: 0.04, 1: 0.15, 2: 0.6}  # sampled at rates per band (review of everything the rule flags is 0.6)
    picked = np.concatenate([rng.choice(np.flatnonzero(strata == h), size=max(1, int(rates[h] * (strata == h).sum())),
                                        replace=False) for h in rates])
    c, _, _ = curve(histogram(scores), edges, scores[picked], truth[picked], thresholds=[0.3, 0.45, 0.6, 0.8])
    true = {}
    for t in (0.3, 0.45, 0.6, 0.8):
        above = scores >= t
        true[t] = (float((truth & above).sum() / above.sum()), float((truth & above).sum() / truth.sum()))
    return true, {t: c.at(t) for t in true}


def test_the_intervals_cover_the_truth_in_stratified_simulations() -> None:
    covered: dict[tuple[float, str], int] = {}
    runs = 300
    for seed in range(runs):
        true, got = _simulate(np.random.default_rng(seed))
        for t, (prec, rec) in true.items():
            p = got[t]
            covered[(t, "p")] = covered.get((t, "p"), 0) + (p.precision_lo <= prec <= p.precision_hi)
            covered[(t, "r")] = covered.get((t, "r"), 0) + (p.recall_lo <= rec <= p.recall_hi)
    rates = {k: v / runs for k, v in covered.items()}
    print(rates)
    assert min(rates.values()) >= 0.90, rates


def test_the_intervals_are_not_vacuous() -> None:
    _, got = _simulate(np.random.default_rng(12345))
    for p in got.values():
        assert p.precision_hi - p.precision_lo < 0.35 and p.recall_hi - p.recall_lo < 0.35

"""Post-stratified precision and recall with honest intervals (pure: numpy in, numbers out).

The records of a model are cut into strata by score (``edges``: the policy's sample band edges and rule
thresholds, plus 0 and 1). Stratum h holds ``N_h`` records, ``r_h`` of them reviewed; each reviewed item
stands for ``N_h / r_h`` records (the reviewed items of a stratum are taken as a random subset of it).
For a threshold t the estimated true positives are the weighted reviewed positives with score ≥ t, and so on.

Intervals: the Wilson score interval of the weighted proportion, with Kish's effective sample size
``(Σw)² / Σw²`` of the items that enter that proportion. A stratum with records and no review is left out
of the point estimate and widens the interval to its extremes (all its records positive, or all negative).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

Z95 = 1.959963984540054  # the normal quantile of a two-sided 95 % interval
BINS = 1000  # histogram bins over [0, 1]: a stratum edge is rounded to 1/BINS
GRID = tuple(round(i / 100, 2) for i in range(101))  # thresholds the curve is estimated at
MIN_EFFECTIVE_N = 30  # below this effective n behind the precision at the policy's threshold: too little review


def wilson(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``p`` seen in ``n`` (effective) trials; (0, 1) for n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = min(1.0, max(0.0, p))
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def kish(w: np.ndarray) -> float:
    """Kish's effective sample size of weights ``w``: (Σw)² / Σw² (0 for none)."""
    s2 = float(np.sum(w * w))
    return float(np.sum(w)) ** 2 / s2 if s2 > 0 else 0.0


def design_n(y: np.ndarray, x: np.ndarray, strata: np.ndarray, n_h: np.ndarray, ratio: float) -> float:
    """The effective n a stratified sample gives the ratio Σwy / Σwx: R(1-R) / Var(R), with the linearised
    variance of a ratio under stratified sampling (finite population corrected); inf when it cannot be told."""
    if not 0.0 < ratio < 1.0:
        return math.inf
    e = y.astype(float) - ratio * x.astype(float)
    var, total = 0.0, 0.0
    for h in np.unique(strata):
        eh = e[strata == h]
        r, big = eh.size, float(n_h[h])
        total += big * float(x[strata == h].mean())
        if r > 1:
            var += big * big * (1.0 - r / big if big > 0 else 0.0) * float(np.var(eh, ddof=1)) / r
    if total <= 0 or var <= 0:
        return math.inf
    return ratio * (1.0 - ratio) / (var / (total * total))


def edges_for(thresholds: Iterable[float], band_edges: Iterable[float] = ()) -> np.ndarray:
    """Stratum edges: {0, 1} ∪ thresholds ∪ band edges, rounded to the histogram's bins, sorted, unique."""
    points = {0.0, 1.0} | {float(x) for x in thresholds} | {float(x) for x in band_edges}
    return np.unique(np.round(np.clip(np.array(sorted(points)), 0.0, 1.0) * BINS) / BINS)


def bin_of(scores: np.ndarray | Sequence[float]) -> np.ndarray:
    """The histogram bin of each score (a score of 1.0 falls in the last bin)."""
    s = np.clip(np.asarray(scores, dtype=float), 0.0, 1.0)
    return np.minimum((s * BINS + 1e-9).astype(int), BINS - 1)


def histogram(scores: np.ndarray | Sequence[float]) -> np.ndarray:
    """Counts of scores in BINS equal bins over [0, 1]."""
    return np.bincount(bin_of(scores), minlength=BINS).astype(np.int64)


def stratum_of(scores: np.ndarray | Sequence[float], edges: np.ndarray) -> np.ndarray:
    """The stratum index of each score: stratum h is [edges[h], edges[h+1]), the last one closed at 1."""
    starts = np.round(np.asarray(edges[:-1]) * BINS).astype(int)
    return np.searchsorted(starts, bin_of(scores), side="right") - 1


def strata_counts(hist: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """N_h: the records of each stratum, from the histogram."""
    starts = np.round(np.asarray(edges) * BINS).astype(int)
    starts[-1] = BINS
    return np.array([int(hist[a:b].sum()) for a, b in itertools.pairwise(starts)], dtype=np.int64)


def weights(strata: np.ndarray, n_h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each reviewed item's weight N_h / r_h, and r_h per stratum."""
    r_h = np.bincount(strata, minlength=len(n_h)).astype(np.int64)
    per = np.where(r_h > 0, n_h / np.maximum(r_h, 1), 0.0)
    return per[strata].astype(float), r_h


@dataclass(frozen=True)
class Point:
    """Precision and recall at one threshold, with 95 % intervals and what stands behind them."""

    threshold: float
    precision: float | None
    precision_lo: float
    precision_hi: float
    recall: float | None
    recall_lo: float
    recall_hi: float
    reviewed: int  # reviewed items at or above the threshold (behind the precision)
    n_eff: float  # Kish's effective n behind the precision
    positives_reviewed: int  # reviewed positives (behind the recall)
    n_eff_recall: float
    tp: float  # estimated records: true positives, false positives, false negatives
    fp: float
    fn: float
    records_above: int  # records at or above the threshold (from the histogram)

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def unreviewed_counts(hist: np.ndarray, edges: np.ndarray, r_h: np.ndarray,
                      thresholds: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per threshold: records at or above it, and below it, that lie in strata with records and no review."""
    starts = np.round(np.asarray(edges) * BINS).astype(int)
    starts[-1] = BINS
    mask = np.zeros(BINS, dtype=bool)
    for h, (a, b) in enumerate(itertools.pairwise(starts)):
        if r_h[h] == 0:
            mask[a:b] = True
    blind = np.where(mask, hist, 0)
    below = np.concatenate([[0], np.cumsum(blind)])  # below[k]: blind records in bins < k
    ks = bin_of(np.asarray(thresholds, dtype=float))
    ks = np.where(np.asarray(thresholds) >= 1.0 + 1e-12, BINS, ks)
    b = below[ks]
    return below[-1] - b, b


def _proportion(hit: np.ndarray, among: np.ndarray, w: np.ndarray, strata: np.ndarray | None,
                n_h: np.ndarray | None, z: float) -> tuple[float | None, float, float, float]:
    """The weighted share of ``hit`` in ``among``, its Wilson interval and the effective n behind it: Kish's over
    the items of ``among``, lowered to the stratified design's when ``strata`` and ``n_h`` are given."""
    wa = w[among]
    n = kish(wa)
    total = float(np.sum(wa))
    if not wa.size or total <= 0:
        return None, 0.0, 1.0, n
    p = float(np.sum(w[hit])) / total
    if strata is not None and n_h is not None:
        n = min(n, design_n(hit, among, strata, n_h, p))
    lo, hi = wilson(p, n, z)
    return p, lo, hi, n


def point(t: float, scores: np.ndarray, truth: np.ndarray, w: np.ndarray, *, blind_above: float = 0.0,
          blind_below: float = 0.0, records_above: int = 0, strata: np.ndarray | None = None,
          n_h: np.ndarray | None = None, z: float = Z95) -> Point:
    """Precision and recall at threshold ``t`` from reviewed items (score, truth, weight); ``blind_*``: records
    at or above / below ``t`` in strata nobody reviewed (they widen the intervals to their extremes).

    The effective n of each proportion is Kish's over the items that enter it; given the items' ``strata`` and
    the strata's sizes ``n_h``, it is lowered to what the stratified variance of the ratio allows when that is
    smaller (a few heavily weighted positives make a recall less sure than Kish's n says)."""
    above = scores >= t
    wa = w[above]
    tp = float(np.sum(wa[truth[above]]))
    fp = float(np.sum(wa[~truth[above]]))
    pos = truth
    fn = float(np.sum(w[pos & ~above]))
    prec, lo, hi, n_p = _proportion(above & truth, above, w, strata, n_h, z)  # positives among those at or above t
    base = tp + fp
    if blind_above > 0:
        lo = lo * base / (base + blind_above)
        hi = (hi * base + blind_above) / (base + blind_above)
    rec, rlo, rhi, n_r = _proportion(above & pos, pos, w, strata, n_h, z)  # positives at or above t
    positives = tp + fn
    if blind_above or blind_below:
        rlo = rlo * positives / (positives + blind_below) if positives + blind_below > 0 else 0.0
        rhi = (rhi * positives + blind_above) / (positives + blind_above) if positives + blind_above > 0 else 1.0
    lo, hi, rlo, rhi = (min(1.0, max(0.0, v)) for v in (lo, hi, rlo, rhi))
    return Point(threshold=float(t), precision=prec, precision_lo=lo, precision_hi=hi, recall=rec, recall_lo=rlo,
                 recall_hi=rhi, reviewed=int(above.sum()), n_eff=n_p, positives_reviewed=int(pos.sum()),
                 n_eff_recall=n_r, tp=tp, fp=fp, fn=fn, records_above=int(records_above))


@dataclass(frozen=True)
class Curve:
    """The estimates over a grid of thresholds, the strata and what they hold."""

    edges: tuple[float, ...]
    records: tuple[int, ...]  # N_h
    reviewed: tuple[int, ...]  # r_h
    points: tuple[Point, ...]

    @property
    def blind(self) -> list[tuple[float, float, int]]:
        """Strata with records and no review: (lo, hi, records)."""
        return [(self.edges[h], self.edges[h + 1], n) for h, n in enumerate(self.records)
                if n > 0 and self.reviewed[h] == 0]

    def at(self, t: float) -> Point | None:
        return next((p for p in self.points if abs(p.threshold - t) < 1e-9), None)


def curve(hist: np.ndarray, edges: np.ndarray, scores: Sequence[float], truth: Sequence[bool],
          thresholds: Iterable[float] = GRID, z: float = Z95) -> tuple[Curve, np.ndarray, np.ndarray]:
    """Estimate every threshold from the population's histogram and the reviewed items (score, truth).

    Returns the curve, each reviewed item's stratum and its weight."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(truth, dtype=bool)
    n_h = strata_counts(hist, edges)
    strata = stratum_of(s, edges) if s.size else np.zeros(0, dtype=int)
    w, r_h = weights(strata, n_h)
    ts = sorted({round(float(t), 6) for t in thresholds})
    blind_above, blind_below = unreviewed_counts(hist, edges, r_h, ts)
    cum = np.concatenate([np.cumsum(hist[::-1])[::-1], [0]])  # cum[k]: records in bins >= k
    ks = bin_of(np.asarray(ts))
    points = tuple(point(t, s, y, w, blind_above=float(ba), blind_below=float(bb),
                         records_above=int(cum[k]) if t <= 1.0 else 0, strata=strata, n_h=n_h, z=z)
                   for t, ba, bb, k in zip(ts, blind_above, blind_below, ks, strict=True))
    c = Curve(tuple(float(e) for e in edges), tuple(int(n) for n in n_h), tuple(int(r) for r in r_h), points)
    return c, strata, w


@dataclass(frozen=True)
class Suggestion:
    """The threshold that meets a target precision, or why none can be named."""

    target: float
    threshold: float | None
    recall: float | None
    recall_lo: float | None
    recall_hi: float | None
    reason: str | None  # set when threshold is None: "too little review to tell: …"


def suggest(c: Curve, target: float, reference: Sequence[float] = (),
            min_n: float = MIN_EFFECTIVE_N) -> Suggestion:
    """The lowest threshold whose precision's lower bound reaches ``target`` (and its recall), unless the
    review behind the precision at the policy's threshold(s) ``reference`` is too thin (effective n < min_n)."""
    for t in reference:
        p = c.at(round(float(t), 6))
        if p is not None and p.n_eff < min_n:
            return Suggestion(target, None, None, None, None,
                              f"too little review to tell: the precision at the policy's threshold {t:g} rests on an "
                              f"effective {p.n_eff:.1f} reviewed items ({p.reviewed} reviewed), at least "
                              f"{min_n:g} are needed")
    for p in c.points:
        if p.precision is not None and p.precision_lo >= target:
            return Suggestion(target, p.threshold, p.recall, p.recall_lo, p.recall_hi, None)
    best = max((p for p in c.points if p.precision is not None), key=lambda p: p.precision_lo, default=None)
    if best is None:
        why = "no reviewed item has a decision yet"
    else:
        why = (f"no threshold's precision is surely ≥ {target:g}: the best lower bound is "
               f"{best.precision_lo:.3f} at {best.threshold:g} ({best.reviewed} reviewed items)")
    blind = c.blind
    if blind:
        why += "; strata without reviews: " + ", ".join(f"[{a:g}, {b:g}) {n} records" for a, b, n in blind)
    return Suggestion(target, None, None, None, None, f"too little review to tell: {why}")

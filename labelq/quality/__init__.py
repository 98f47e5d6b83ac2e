"""How good the labels are, measured on one's own traffic: reviewers' decisions as evidence, post-stratified
precision and recall with intervals, the threshold that meets a target precision, shadow comparisons.

* :mod:`.evidence` — reviewed items of (model, label) from the review store, the population of scores from the
  record store (a histogram), hours of review
* :mod:`.estimate` — the estimator (pure numpy): strata, weights, Wilson intervals with Kish's effective n
* :mod:`.report` — the calibration report of ``labelq moderate report`` and the console's /quality page
* :mod:`.compare` — active model against a candidate: who acts where, the flips, each one's quality
* :mod:`.export` — rows to JSONL or Parquet
"""

from __future__ import annotations

from .compare import Comparison, Flip, compare
from .estimate import Curve, Point, Suggestion, curve, edges_for, suggest, wilson
from .evidence import Population, Reviewed, population, review_hours, reviewed
from .export import write_rows
from .report import Report, build_report

__all__ = ["Comparison", "Curve", "Flip", "Point", "Population", "Report", "Reviewed", "Suggestion", "build_report",
           "compare", "curve", "edges_for", "population", "review_hours", "reviewed", "suggest", "wilson",
           "write_rows"]

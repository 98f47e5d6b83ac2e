"""The faces of labelq.quality that need no server: the CLI's one-line refusals (exit 2) before any service is
opened, the table it prints, the console chart's geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from labelq.cli import app
from labelq.console.quality_pages import CHART, chart, table_rows
from labelq.quality.estimate import curve, edges_for, histogram, suggest


@pytest.mark.parametrize("args, message", [
    (["report", "--model", "m", "--label", "l", "--items", "x.csv"], "write .jsonl or .parquet"),
    (["report", "--model", "m", "--label", "l", "--policy", "/nonexistent.toml"], "policy file not found"),
    (["compare", "--model", "a", "--candidate", "b", "--label", "l"], "name the job with --job"),
    (["compare", "--model", "a", "--candidate", "b", "--label", "l", "--job", "j", "--output", "f.txt"],
     "write .jsonl or .parquet"),
])
def test_the_commands_refuse_in_one_line_before_opening_anything(args: list[str], message: str) -> None:
    r = CliRunner().invoke(app, ["moderate", *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output


def _report_dict() -> dict:
    rng = np.random.default_rng(1)
    scores = rng.uniform(0, 1, 2000)
    truth = rng.random(2000) < scores
    pick = np.concatenate([np.flatnonzero(scores >= 0.7), rng.choice(np.flatnonzero(scores < 0.7), 200, replace=False)])
    edges = edges_for([0.7])
    c, _, _ = curve(histogram(scores), edges, scores[pick], truth[pick], thresholds=[*np.round(np.arange(101) / 100, 2), 0.7])
    s = suggest(c, 0.9, reference=[0.7])
    return {"points": [p.to_dict() for p in c.points], "thresholds": [0.7],
            "suggestion": {"threshold": s.threshold}}


def test_the_chart_puts_lines_bands_and_marks_inside_the_plot() -> None:
    d = _report_dict()
    g = chart(d)
    assert [s["name"] for s in g["series"]] == ["precision", "recall"]
    xs, ys = [], []
    for s in g["series"]:
        for pair in (s["line"] + " " + s["band"]).split():
            x, y = map(float, pair.split(","))
            xs.append(x)
            ys.append(y)
    assert min(xs) >= CHART["left"] and max(xs) <= CHART["w"] - CHART["right"]
    assert min(ys) >= CHART["top"] and max(ys) <= CHART["h"] - CHART["bottom"]
    kinds = [m["kind"] for m in g["marks"]]
    assert kinds[0] == "policy" and g["marks"][0]["x"] == pytest.approx(CHART["left"] + 0.7 * g["pw"], abs=0.1)
    assert ("suggested" in kinds) == (d["suggestion"]["threshold"] is not None)
    rows = [p["threshold"] for p in table_rows(d)]
    assert rows == [round(i * 0.05, 2) for i in range(21)]  # every 0.05, the policy's 0.7 among them


def test_the_report_table_marks_the_policy_and_the_suggestion(tmp_path: Path) -> None:
    from labelq.cli import quality

    d = _report_dict()
    d.update(model="m", label="l", jobs=["j"], policy_version="p1", records=2000, reviewed=500, review_hours={"ann": 1.5},
             review_hours_total=1.5, target_precision=0.9, strata=[{"lo": 0.0, "hi": 0.7, "records": 1, "reviewed": 1}],
             strata_without_reviews=[], suggestion={"threshold": 0.75, "recall": 0.5, "recall_lo": 0.4, "recall_hi": 0.6,
                                                    "reason": None})
    with quality.out.capture() as cap:
        quality.print_report(d)
    text = cap.get()
    assert "← policy" in text and "← suggested" in text and "ann 1.50 h" in text
    assert "from threshold 0.75" in text

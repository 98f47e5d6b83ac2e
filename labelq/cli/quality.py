"""``labelq moderate report`` and ``labelq moderate compare``: how good the labels are, measured on the
reviewers' decisions (docs/moderation.md, "Measuring the policy")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import UsageError
from .base import clean_errors, err, load_settings, out, setup_logging
from .moderate import moderate_app

REPORT_EVERY = 0.05  # the table shows thresholds at these steps (plus the policy's); --json has every 0.01


def _open(policy: Path | None) -> tuple[Any, Any, Any]:
    from ..moderation import load_policy
    from ..reviews import ReviewStore
    from ..services import open_services

    rules = load_policy(policy) if policy is not None else None  # a bad file is told before any service is opened
    settings = load_settings()
    setup_logging(settings, quiet=True)
    services = open_services(settings)
    return services, ReviewStore(services.redis), rules


def _pct(x: float | None) -> str:
    return "  —  " if x is None else f"{100 * x:5.1f}"


def print_report(d: dict[str, Any]) -> None:
    """The report as a table for people."""
    say = lambda s: out.print(s, markup=False, highlight=False, soft_wrap=True)  # noqa: E731
    say(f"model {d['model']}, label {d['label']}, job(s) {', '.join(d['jobs'])}"
        + (f", policy {d['policy_version']}" if d["policy_version"] else ""))
    say(f"{d['records']} records, {d['reviewed']} reviewed items; review time "
        f"{d['review_hours_total']:.2f} h ("
        + (", ".join(f"{who or '?'} {h:.2f} h" for who, h in d["review_hours"].items()) or "nobody") + ")")
    last = len(d["strata"]) - 1
    say("strata: " + ", ".join(f"[{s['lo']:g}, {s['hi']:g}{']' if i == last else ')'} {s['records']} records / "
                               f"{s['reviewed']} reviewed" for i, s in enumerate(d["strata"])))
    say(f"{'threshold':>9}  {'precision % [95 % interval]':<27}  {'recall % [95 % interval]':<27}  reviewed")
    marks = set(d["thresholds"])
    for p in d["points"]:
        t = p["threshold"]
        if not (t in marks or abs(t / REPORT_EVERY - round(t / REPORT_EVERY)) < 1e-6):
            continue
        prec = f"{_pct(p['precision'])} [{_pct(p['precision_lo'])}–{_pct(p['precision_hi'])}]"
        rec = f"{_pct(p['recall'])} [{_pct(p['recall_lo'])}–{_pct(p['recall_hi'])}]"
        note = "  ← policy" if t in marks else ""
        if d["suggestion"]["threshold"] is not None and abs(t - d["suggestion"]["threshold"]) < 1e-9:
            note += "  ← suggested"
        say(f"{t:9.2f}  {prec:<27}  {rec:<27}  {p['reviewed']:>8} (n_eff {p['n_eff']:.0f}){note}")
    for s in d["strata_without_reviews"]:
        say(f"no reviews in [{s['lo']:g}, {s['hi']:g}): {s['records']} records; its intervals take the extremes")
    s = d["suggestion"]
    if s["threshold"] is not None:
        say(f"precision ≥ {d['target_precision']:g} (lower bound) from threshold {s['threshold']:g}, recall "
            f"{_pct(s['recall']).strip()} % [{_pct(s['recall_lo']).strip()}–{_pct(s['recall_hi']).strip()}]")
    else:
        say(str(s["reason"]))


@moderate_app.command("report")
@clean_errors
def moderate_report(
    model: Annotated[str, typer.Option(help="the model whose labels are measured")],
    label: Annotated[str, typer.Option(help="the label of the rule")],
    job: Annotated[list[str] | None, typer.Option(help="job(s) whose records and reviews count (default: every "
                                                       "job with reviewed items of the model and label)")] = None,
    policy: Annotated[Path | None, typer.Option(help="policy file: its thresholds and sample bands make the strata")]
    = None,
    threshold: Annotated[list[float] | None, typer.Option(help="threshold(s) to stratify by, without a policy")]
    = None,
    precision: Annotated[float, typer.Option(help="target precision for the suggested threshold")] = 0.95,
    as_json: Annotated[bool, typer.Option("--json", help="the whole report as JSON")] = False,
    items: Annotated[Path | None, typer.Option(help="write the per-item evidence to FILE.jsonl or .parquet")] = None,
) -> None:
    """Precision and recall of a label against threshold, estimated from the reviewers' decisions."""
    from ..quality import build_report, write_rows
    from ..quality.export import check_path

    if items is not None:
        check_path(items)
    services, reviews, rules = _open(policy)
    try:
        report = build_report(services.records, reviews, model, label, jobs=job or [], policy=rules,
                              thresholds=threshold or [], target=precision)
    finally:
        services.close()
    d = report.to_dict()
    if as_json:
        out.print(json.dumps(d), markup=False, highlight=False, soft_wrap=True)
    else:
        print_report(d)
    if items is not None:
        n = write_rows(report.item_rows(), items)
        err.print(f"wrote {n} reviewed items to {items}", markup=False, highlight=False)


@moderate_app.command("compare")
@clean_errors
def moderate_compare(
    model: Annotated[str, typer.Option(help="the active model")],
    candidate: Annotated[str, typer.Option(help="the candidate model (run in shadow)")],
    label: Annotated[str, typer.Option(help="the label of the rule")],
    job: Annotated[str | None, typer.Option(help="the job holding the active model's records")] = None,
    candidate_job: Annotated[str | None, typer.Option(help="the job holding the candidate's records (default: --job)")]
    = None,
    threshold: Annotated[float | None, typer.Option(help="the active model's threshold (default: the policy's)")]
    = None,
    candidate_threshold: Annotated[float | None, typer.Option(help="the candidate's threshold (default: the same)")]
    = None,
    policy: Annotated[Path | None, typer.Option(help="policy file, for the rule's threshold")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the comparison as JSON")] = False,
    output: Annotated[Path | None, typer.Option(help="write the flipped items to FILE.jsonl or .parquet")] = None,
    show: Annotated[int, typer.Option(help="flipped items to print")] = 20,
) -> None:
    """Where the candidate would act differently from the active model, and how good each one is."""
    from ..quality import compare, write_rows
    from ..quality.export import check_path

    if output is not None:
        check_path(output)
    if job is None:
        raise UsageError("name the job with --job (the candidate's with --candidate-job when it has its own)")
    services, reviews, rules = _open(policy)
    if threshold is None and rules is not None:
        found = sorted({r.threshold for r in rules.rules if r.model == model and r.label == label})
        threshold = found[0] if found else None
    if threshold is None:
        services.close()
        raise UsageError(f"give --threshold (or a --policy with a rule on {model} / {label})")
    from ..quality.report import policy_points

    try:
        c = compare(services.records, reviews, model, candidate, label, job=job, candidate_job=candidate_job,
                    threshold=threshold, candidate_threshold=candidate_threshold,
                    band_edges=policy_points(rules, model, label)[1])
    finally:
        services.close()
    if as_json:
        out.print(json.dumps(c.to_dict()), markup=False, highlight=False, soft_wrap=True)
    else:
        print_comparison(c.to_dict(flips=show))
    if output is not None:
        n = write_rows([f.to_dict() for f in c.flips], output)
        err.print(f"wrote {n} flipped items to {output}", markup=False, highlight=False)


def print_comparison(d: dict[str, Any]) -> None:
    say = lambda s: out.print(s, markup=False, highlight=False, soft_wrap=True)  # noqa: E731
    say(f"label {d['label']}: active {d['model']} ≥ {d['threshold']:g} (job {d['job']}), candidate "
        f"{d['candidate']} ≥ {d['candidate_threshold']:g} (job {d['candidate_job']})")
    agree = "—" if d["agreement"] is None else f"{100 * d['agreement']:.1f} %"
    say(f"{d['pairs']} objects: both act {d['both']}, neither {d['neither']}, active only {d['active_only']}, "
        f"candidate only {d['candidate_only']}; agreement {agree}")
    if d["unmatched_active"] or d["unmatched_candidate"]:
        say(f"not compared: {d['unmatched_active']} active records and {d['unmatched_candidate']} candidate records "
            "without a record of the other for the same object version")
    for name, key in (("active", "active"), ("candidate", "candidate_quality")):
        q = d[key]
        if q is None:
            say(f"{name}: no reviewed objects among them")
            continue
        say(f"{name}: precision {_pct(q['precision']).strip()} % [{_pct(q['precision_lo']).strip()}–"
            f"{_pct(q['precision_hi']).strip()}], recall {_pct(q['recall']).strip()} % "
            f"[{_pct(q['recall_lo']).strip()}–{_pct(q['recall_hi']).strip()}] on {d['reviewed']} reviewed objects")
    for f in d["flips"]:
        say(f"{f['acts']:>14}  {f['score_a']:.3f} → {f['score_b']:.3f}  {f['uri']}")
    if d["flipped"] > len(d["flips"]):
        say(f"… and {d['flipped'] - len(d['flips'])} more flipped (--output FILE.jsonl for all)")

"""Pages of measurement: /quality (the calibration report of a label, with its chart) and /quality/compare (the
active model against a candidate), and their JSON at /api/quality and /api/quality/compare. Viewers may read."""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import UsageError
from .auth import User
from .web import Console, _float, page, render

logger = logging.getLogger(__name__)

FLIPS_SHOWN = 48  # flipped items the compare page shows with thumbnails
CHART = {"w": 640, "h": 300, "left": 48, "right": 16, "top": 16, "bottom": 40}


def _policy(console: Console) -> Any:
    from ..moderation import load_policy

    return load_policy(console.settings.policy) if console.settings.policy is not None else None


def _choices(console: Console) -> dict[str, list[str]]:
    facets = console.reviews.facets().values()
    return {k: sorted({f[k] for f in facets if f[k]}) for k in ("job", "model", "label")}


def _target(params: Any) -> float:
    t = _float(str(params.get("precision") or ""))
    return 0.95 if t is None else t


def _report(console: Console, params: Any) -> Any:
    from ..quality import build_report

    model, label = str(params.get("model") or ""), str(params.get("label") or "")
    if not model or not label:
        raise UsageError("choose a model and a label")
    jobs = [j for j in params.getlist("job") if j] if hasattr(params, "getlist") else []
    return build_report(console.services.records, console.reviews, model, label, jobs=jobs,
                        policy=_policy(console), target=_target(params))


def chart(d: dict[str, Any]) -> dict[str, Any]:
    """The SVG geometry of precision and recall against threshold: lines, 95 % bands, the marked thresholds."""
    c = CHART
    pw, ph = c["w"] - c["left"] - c["right"], c["h"] - c["top"] - c["bottom"]

    def x(t: float) -> float:
        return round(c["left"] + t * pw, 1)

    def y(v: float) -> float:
        return round(c["top"] + (1 - v) * ph, 1)

    out: dict[str, Any] = {**c, "pw": pw, "ph": ph, "series": []}
    for name, key in (("precision", "precision"), ("recall", "recall")):
        pts = [p for p in d["points"] if p[key] is not None]
        line = " ".join(f"{x(p['threshold'])},{y(p[key])}" for p in pts)
        band = " ".join([f"{x(p['threshold'])},{y(p[key + '_hi'])}" for p in pts]
                        + [f"{x(p['threshold'])},{y(p[key + '_lo'])}" for p in reversed(pts)])
        out["series"].append({"name": name, "line": line, "band": band})
    out["xticks"] = [(x(t / 10), f"{t / 10:g}") for t in range(11)]
    out["yticks"] = [(y(v / 5), f"{v * 20}%") for v in range(6)]
    out["marks"] = [{"x": x(t), "kind": "policy", "text": f"policy {t:g}"} for t in d["thresholds"]]
    s = d["suggestion"]["threshold"]
    if s is not None:
        out["marks"].append({"x": x(s), "kind": "suggested", "text": f"suggested {s:g}"})
    return out


@page()
def quality_page(request: Request, console: Console, user: User, form: Any) -> Response:
    params = request.query_params
    report, error = None, None
    if params.get("model") and params.get("label"):
        try:
            report = _report(console, params).to_dict()
        except UsageError as exc:
            error = str(exc)
    return render(request, "quality.html", nav="quality", report=report, error=error, choices=_choices(console),
                  q={"model": params.get("model") or "", "label": params.get("label") or "",
                     "job": params.get("job") or "", "precision": _target(params)},
                  chart=chart(report) if report else None, rows=table_rows(report) if report else [])


def table_rows(d: dict[str, Any]) -> list[dict[str, Any]]:
    """The table's thresholds: every 0.05 and the policy's."""
    marks = set(d["thresholds"])
    return [p for p in d["points"] if p["threshold"] in marks or abs(p["threshold"] * 20 - round(p["threshold"] * 20)) < 1e-6]


@page(api=True)
def quality_api(request: Request, console: Console, user: User, form: Any) -> Response:
    try:
        return JSONResponse(_report(console, request.query_params).to_dict())
    except UsageError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)


def _comparison(console: Console, params: Any) -> Any:
    from ..quality import compare

    need = {k: str(params.get(k) or "") for k in ("model", "candidate", "label", "job")}
    if not all(need.values()):
        raise UsageError("choose the active model, the candidate, the label and the job")
    from ..quality.report import policy_points

    policy = _policy(console)
    threshold = _float(str(params.get("threshold") or ""))
    if threshold is None:
        found = sorted({r.threshold for r in (policy.rules if policy else ())
                        if r.model == need["model"] and r.label == need["label"]})
        if not found:
            raise UsageError("give the threshold (the console's policy has no rule on this model and label)")
        threshold = found[0]
    return compare(console.services.records, console.reviews, need["model"], need["candidate"], need["label"],
                   job=need["job"], candidate_job=str(params.get("candidate_job") or "") or None, threshold=threshold,
                   candidate_threshold=_float(str(params.get("candidate_threshold") or "")),
                   band_edges=policy_points(policy, need["model"], need["label"])[1])


@page()
def compare_page(request: Request, console: Console, user: User, form: Any) -> Response:
    params = request.query_params
    result, error = None, None
    if params.get("model") and params.get("candidate"):
        try:
            result = _comparison(console, params).to_dict(flips=FLIPS_SHOWN)
        except UsageError as exc:
            error = str(exc)
    keys = ("model", "candidate", "label", "job", "candidate_job", "threshold", "candidate_threshold")
    return render(request, "compare.html", nav="quality", result=result, error=error, choices=_choices(console),
                  q={k: params.get(k) or "" for k in keys})


@page(api=True)
def compare_api(request: Request, console: Console, user: User, form: Any) -> Response:
    try:
        return JSONResponse(_comparison(console, request.query_params).to_dict())
    except UsageError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)

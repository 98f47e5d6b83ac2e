"""Pages of jobs: the list, one job (figures, label chart, dead letters, retry), the label browser, a record,
thumbnails."""

from __future__ import annotations

import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from ..errors import RETRYABLE_KINDS, UsageError
from ..moderation import audit
from ..results.base import page_records
from . import review
from .auth import User
from .progress import DEAD_LETTERS_PER_KIND, Summary, duration
from .thumbs import PLACEHOLDER_SVG
from .web import PAGE_SIZE, RECORD_AUDIT_SCAN, SCORE_RANGES, Console, _float, page, render, render_part, url

logger = logging.getLogger(__name__)

def _figures(console: Console, info: Any) -> dict[str, Any]:
    p = console.rates.progress(info)
    return {"state": info.state, "ok": info.ok, "error": info.error, "done": p.objects_done,
            "total": p.objects_total, "percent": p.percent, "rate": p.rate, "eta_s": p.eta_s,
            "rate_text": "—" if p.rate is None else f"{p.rate:.1f}/s", "eta_text": duration(p.eta_s),
            "percent_text": "—" if p.percent is None else f"{p.percent:.0f}%"}


def _queue(console: Console) -> dict[str, Any]:
    age, waiting = console.services.book.oldest_waiting()
    return {"waiting_chunks": waiting, "oldest_wait_s": age, "oldest_wait_text": duration(age)}


@page()
def jobs_page(request: Request, console: Console, user: User, form: Any) -> Response:
    rows = [(info, _figures(console, info)) for info in console.services.book.jobs(100)]
    if request.query_params.get("part") == "rows":  # the live table's refresh
        return render_part(request, "_jobs_rows.html", rows=rows)
    return render(request, "jobs.html", rows=rows, queue=_queue(console), workers=console.workers())


def _job(console: Console, job: str) -> Any:
    info = console.services.book.info(job) if job else None
    if info is None:
        raise LookupError(job)
    return info


@page()
def job_page(request: Request, console: Console, user: User, form: Any) -> Response:
    job = request.query_params.get("job", "")
    try:
        info = _job(console, job)
    except LookupError:
        return render(request, "missing.html", status_code=404, what=f"job {job}")
    summary = console.summary(info)
    charts = []
    for model in info.models:
        counts = summary.labels.get(model)
        if not counts:
            continue
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:20]  # ties: by name, the same every time
        rest = sum(counts.values()) - sum(n for _, n in top)
        most = top[0][1]
        bars = [(label, n, max(1, round(300 * n / most))) for label, n in top]
        charts.append({"model": model, "bars": bars, "rest": rest, "records": sum(counts.values())})
    if request.query_params.get("part") == "charts":  # the live chart's refresh
        return render_part(request, "_charts.html", info=info, charts=charts, summary=summary,
                           bucket_links=SCORE_RANGES)
    retryable = sum(n for kind, n in info.errors.items() if kind in RETRYABLE_KINDS)
    return render(request, "job.html", info=info, fig=_figures(console, info), queue=_queue(console),
                  workers=console.workers(), charts=charts, summary=summary, retryable=retryable,
                  dead=dead_letters(console, info, summary), dead_chunks=getattr(info, "dead_chunks", 0),
                  bucket_links=SCORE_RANGES)


def dead_letters(console: Console, info: Any, summary: Summary) -> dict[str, list[tuple[str, str, str]]]:
    """Failed objects by error kind: (uri, model, message), the first few of each kind."""
    failures = getattr(console.services.book, "failures", None)
    out: dict[str, list[tuple[str, str, str]]] = {}
    if failures is None:  # a job book without a failure list: from the records read for the chart
        for kind, recs in summary.dead.items():
            out[kind] = [(r.uri, r.model, r.error or "") for r in recs]
        return out
    for f in failures(info.id):
        group = out.setdefault(f.kind, [])
        if len(group) < DEAD_LETTERS_PER_KIND:
            group.append((f.uri, f.model, f.message))
    return out


@page(api=True)
def job_api(request: Request, console: Console, user: User, form: Any) -> Response:
    try:
        info = _job(console, request.query_params.get("job", ""))
    except LookupError:
        return JSONResponse({"error": "no such job"}, status_code=404)
    workers = console.workers()
    return JSONResponse({**_figures(console, info), **_queue(console), "workers": len(workers),
                         "errors": info.errors})


@page(write=True, admin=True)
def job_retry(request: Request, console: Console, user: User, form: Any) -> Response:
    from ..producer import retry

    job = str(form.get("job") or "")
    _job_or_usage(console, job)
    n = retry(job, console.settings, app=console.services.app, book=console.services.book,
              store=console.services.records)
    logger.info("console: %s retried job %s (%d objects)", user.name, job, n)
    request.session["flash"] = f"re-enqueued {n} {'object' if n == 1 else 'objects'} with retryable errors"
    return RedirectResponse(url("/jobs/view", job=job), status_code=303)


def _job_or_usage(console: Console, job: str) -> Any:
    try:
        return _job(console, job)
    except LookupError:
        raise UsageError(f"no such job: {job}") from None


# ----------------------------------------------------------------------------- browse

@page()
def browse_page(request: Request, console: Console, user: User, form: Any) -> Response:
    q = request.query_params
    job = q.get("job", "")
    try:
        info = _job(console, job)
    except LookupError:
        return render(request, "missing.html", status_code=404, what=f"job {job}")
    model = q.get("model") or (info.models[0] if info.models else "")
    label, status = q.get("label") or None, q.get("status") or "ok"
    lo, hi = _float(q.get("lo")), _float(q.get("hi"))
    after = q.get("after") or None  # the store's cursor: a page reads from there, not every record before it

    def keep(rec: Any) -> bool:
        if rec.status != status and status != "all":
            return False
        if label is not None and rec.label != label:
            return False
        if lo is not None and (rec.score is None or rec.score < lo):
            return False
        return not (hi is not None and (rec.score is None or rec.score > hi))

    shown, next_after = page_records(console.services.records, job, model, after=after, limit=PAGE_SIZE, keep=keep)
    summary = console.summary(info)
    labels = sorted(summary.labels.get(model, {}))
    filters = {"job": job, "model": model, "label": label, "lo": q.get("lo"), "hi": q.get("hi"), "status": status}
    return render(request, "browse.html", info=info, records=shown, next_after=next_after, first=after is None,
                  filters=filters, labels=labels, ranges=SCORE_RANGES,
                  where=review.locations(console.reviews, shown))


@page()
def record_page(request: Request, console: Console, user: User, form: Any) -> Response:
    model, uri = request.query_params.get("model", ""), request.query_params.get("uri", "")
    rec = console.services.records.get_many(model, [uri]).get(uri) if model and uri else None
    if rec is None:
        return render(request, "missing.html", status_code=404, what=f"record of {uri} for {model}")
    actions = [a for a in audit.newest(console.services.redis, limit=RECORD_AUDIT_SCAN) if a.uri == uri][:50]
    revision = getattr(rec, "model_revision", None)
    item = console.reviews.find(rec.uri, rec.etag)
    return render(request, "record.html", rec=rec, actions=actions, revision=revision,
                  where=review.locations(console.reviews, [rec]), item=item,
                  history=console.reviews.history(item.id) if item is not None else [])


async def thumb(request: Request) -> Response:
    console: Console = request.app.state.console
    if console.auth.from_request(request) is None:
        return PlainTextResponse("sign in first", status_code=401)
    q = request.query_params
    uri, etag, sig = q.get("u", ""), q.get("e", ""), q.get("s", "")
    if not console.signer.verify(uri, etag, sig):
        return PlainTextResponse("not a thumbnail this console offered", status_code=403)
    try:
        data = await run_in_threadpool(console.thumbs.get, uri, etag)
    except PermissionError:
        return PlainTextResponse("not a stored object", status_code=403)
    except Exception as exc:  # noqa: BLE001 - any failure: a placeholder saying why
        from ..errors import AccessDenied

        status = 403 if isinstance(exc, AccessDenied) else 404
        logger.info("thumbnail of %s: %s", uri, exc)
        text = "outside the store" if status == 403 else "no preview"
        return Response(PLACEHOLDER_SVG.format(text=text), status_code=status, media_type="image/svg+xml")
    return Response(data, media_type="image/jpeg", headers={"cache-control": "private, max-age=86400"})

"""The console's web app: pages over the job book, the record store and the audit trail.

Handlers are plain functions run in a thread (the stores are synchronous clients); the
``page`` wrapper authenticates, checks CSRF and the write permission before any of them runs.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..config import Settings, redact
from ..errors import RETRYABLE_KINDS, UsageError
from ..moderation import audit
from ..reviews import Query, ReviewStore
from ..services import open_services
from . import review
from .auth import SESSION_FIELD, SESSION_SECONDS, Auth, User, csrf_ok, csrf_token
from .progress import DEAD_LETTERS_PER_KIND, RateMeter, Summary, duration, summarise
from .thumbs import PLACEHOLDER_SVG, Signer, Thumbnails

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
PAGE_SIZE = 48
REVIEW_PAGE = 50  # review items a page shows
RECORD_AUDIT_SCAN = 20_000  # newest audit entries the record page looks through for the object's actions
WORKERS_TTL = 10.0  # seconds a "workers answering" broadcast is reused
SUMMARY_TTL = 10.0  # seconds a job's label chart is reused
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


class Console:
    """What the pages share: services, auth, thumbnails, short-lived caches."""

    def __init__(self, settings: Settings, services: Any) -> None:
        from ..storage import Stores

        self.settings = settings
        self.services = services
        self.auth = Auth(settings, getattr(services, "redis", None))
        self.secret = settings.console_secret or secrets.token_urlsafe(32)
        self.signer = Signer(self.secret)
        self.stores = getattr(services, "stores", None) or Stores(settings)
        self.thumbs = Thumbnails(settings, self.stores, self.signer)
        self.rates = RateMeter()
        self._lock = threading.Lock()
        self._workers_lock = threading.Lock()  # one broadcast at a time; pages wait for its answer
        self._workers: tuple[float, dict[str, Any]] = (0.0, {})
        self._stats: tuple[float, dict[str, dict[str, Any]]] = (0.0, {})
        self._summaries: dict[str, tuple[float, int, Summary]] = {}
        self.reviews = ReviewStore(services.redis, claim_seconds=settings.console_claim_seconds,
                                   undo_seconds=settings.console_undo_seconds)

    def workers(self) -> dict[str, Any]:
        """Workers answering a broadcast (name → info), asked at most every WORKERS_TTL seconds."""
        from ..health import check_workers

        with self._workers_lock:
            at, replies = self._workers
            if time.monotonic() - at > WORKERS_TTL:
                _, replies = check_workers(self.services.app, timeout=1.0)
                self._workers = (time.monotonic(), replies)
            return replies

    def worker_stats(self) -> dict[str, dict[str, Any]]:
        """Celery's own figures per worker (tasks processed, active tasks, uptime), asked every WORKERS_TTL s."""
        with self._workers_lock:
            at, stats = self._stats
            if time.monotonic() - at > WORKERS_TTL:
                stats = {}
                try:
                    inspect = self.services.app.control.inspect(timeout=1.0)
                    raw, active = inspect.stats() or {}, inspect.active() or {}
                except Exception as exc:  # noqa: BLE001 - a broker down: the page says no worker answered
                    logger.info("console: worker stats: %s", exc)
                    raw, active = {}, {}
                for name, st in raw.items():
                    stats[name] = {"processed": sum((st.get("total") or {}).values()), "uptime": st.get("uptime"),
                                   "pid": st.get("pid"), "active": len(active.get(name) or [])}
                self._stats = (time.monotonic(), stats)
            return stats

    def summary(self, info: Any) -> Summary:
        with self._lock:
            cached = self._summaries.get(info.id)
        if cached and cached[1] == info.processed and time.monotonic() - cached[0] < SUMMARY_TTL:
            return cached[2]
        s = summarise(self.services.job_records(info.id))
        with self._lock:
            self._summaries[info.id] = (time.monotonic(), info.processed, s)
        return s


# ----------------------------------------------------------------------------- plumbing


def url(path: str, **params: Any) -> str:
    """A console URL with its query string encoded (keys and labels may hold anything)."""
    query = {k: v for k, v in params.items() if v not in (None, "")}
    return path + ("?" + urlencode(query) if query else "")


def shown_key(uri: str | None) -> str:
    """A record URI as people read it: the object key decoded (``%3C`` → ``<``); escaped by the template."""
    if uri and uri.startswith(("s3://", "file://")):
        return unquote(uri)
    return uri or ""


def _when(t: Any) -> str:
    """A unix time as the audit trail writes times (UTC, ISO 8601)."""
    import datetime as dt

    try:
        return dt.datetime.fromtimestamp(float(t), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError):
        return str(t)


def _safe_next(target: str | None, default: str = "/jobs") -> str:
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


Handler = Callable[[Request, Console, User, Any], Response]


def page(*, write: bool = False, api: bool = False, admin: bool = False) -> Callable[[Handler], Callable[[Request], Any]]:
    """Authenticate, then (POST) check the CSRF token and the write permission (``admin``: the admin role),
    then run ``fn`` in a thread."""

    def wrap(fn: Handler) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            console: Console = request.app.state.console
            user = console.auth.from_request(request)
            if user is None:
                if api or request.method != "GET":
                    return PlainTextResponse("sign in first", status_code=401)
                here = request.url.path + ("?" + request.url.query if request.url.query else "")
                return RedirectResponse(url("/login", next=here), status_code=303)
            form = None
            if request.method == "POST":
                form = await request.form()
                if user.via != "token" and not csrf_ok(request, form):
                    return PlainTextResponse("CSRF token missing or wrong: reload the page and try again", 403)
                if write and not user.can_write:
                    return PlainTextResponse("read-only: viewers cannot change anything", status_code=403)
                if admin and not user.is_admin:
                    return PlainTextResponse("only admins may do this (LABELQ_CONSOLE_ROLES)", status_code=403)
            try:
                return await run_in_threadpool(fn, request, console, user, form)
            except UsageError as exc:
                if request.method == "POST":
                    request.session["flash"] = f"error: {exc}"
                    return RedirectResponse(_safe_next(str(form.get("next") or "") if form else None), 303)
                return PlainTextResponse(str(exc), status_code=400)

        endpoint.__name__ = fn.__name__
        return endpoint

    return wrap


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
    console: Console = request.app.state.console
    templates: Jinja2Templates = request.app.state.templates
    context.update(
        user=console.auth.from_request(request),
        csrf=csrf_token(request),
        flash=request.session.pop("flash", None),
        thumb=console.signer.url,
    )
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def render_part(request: Request, name: str, **context: Any) -> Response:
    """A fragment a live page refreshes itself with (no flash taken, nothing else of the session)."""
    console: Console = request.app.state.console
    templates: Jinja2Templates = request.app.state.templates
    context.update(user=console.auth.from_request(request), thumb=console.signer.url)
    return templates.TemplateResponse(request, name, context)


class SecurityHeaders:
    """CSP (no inline script or style), no framing, no sniffing, no referrer, no caching of pages."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for k, v in SECURITY_HEADERS.items():
                    if k not in headers:
                        headers[k] = v
            await send(message)

        await self.app(scope, receive, send_with_headers)


# ----------------------------------------------------------------------------- sign in


async def login(request: Request) -> Response:
    console: Console = request.app.state.console
    next_url = _safe_next(request.query_params.get("next"))
    error, status = None, 200
    if request.method == "POST":
        form = await request.form()
        next_url = _safe_next(str(form.get("next") or ""))
        if not csrf_ok(request, form):
            return PlainTextResponse("CSRF token missing or wrong: reload the page and try again", 403)
        name, password = str(form.get("username") or "")[:128], str(form.get("password") or "")
        address = request.client.host if request.client else "-"
        throttle = console.auth.throttle
        wait = await run_in_threadpool(throttle.wait, name, address) if throttle is not None else 0
        user = None if wait else console.auth.check_password(name, password)
        if user is not None and console.auth.sessions is not None:
            sid = await run_in_threadpool(console.auth.sessions.start, user.name)
            if throttle is not None:
                await run_in_threadpool(throttle.succeeded, user.name)
            request.session.clear()  # a fresh session (and CSRF token) after signing in
            request.session[SESSION_FIELD] = sid
            logger.info("console: %s signed in", user.name)
            return RedirectResponse(next_url, status_code=303)
        if wait:
            error, status = f"too many failed sign-ins: try again in {duration(wait)}", 429
        else:
            error, status = "wrong name or password", 401
            if throttle is not None:
                await run_in_threadpool(throttle.failed, name, address)
        logger.warning("console: failed sign-in for %r from %s%s", name[:64], address, " (throttled)" if wait else "")
    templates: Jinja2Templates = request.app.state.templates
    return templates.TemplateResponse(
        request, "login.html", {"csrf": csrf_token(request), "next": next_url, "error": error, "user": None,
                                "flash": None, "sso": console.auth.header},
        status_code=status,
    )


async def logout(request: Request) -> Response:
    console: Console = request.app.state.console
    form = await request.form()
    if not csrf_ok(request, form):
        return PlainTextResponse("CSRF token missing or wrong", status_code=403)
    user = console.auth.from_request(request)
    if user is not None and user.via == "session" and console.auth.sessions is not None:
        n = await run_in_threadpool(console.auth.sessions.end_all, user.name)
        logger.info("console: %s signed out (%d sessions ended)", user.name, n)
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


FAVICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" '
           'fill="#2456c7"/><text x="8" y="12" font-size="11" text-anchor="middle" fill="#fff" '
           'font-family="sans-serif">q</text></svg>')


async def favicon(request: Request) -> Response:
    return Response(FAVICON, media_type="image/svg+xml", headers={"cache-control": "public, max-age=86400"})


# ----------------------------------------------------------------------------- jobs


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
    request.session["flash"] = f"re-enqueued {n} objects with retryable errors"
    return RedirectResponse(url("/jobs/view", job=job), status_code=303)


def _job_or_usage(console: Console, job: str) -> Any:
    try:
        return _job(console, job)
    except LookupError:
        raise UsageError(f"no such job: {job}") from None


# ----------------------------------------------------------------------------- browse

SCORE_RANGES = ((0.0, 0.5), (0.5, 0.8), (0.8, 0.95), (0.95, 1.0))


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


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
    try:
        page_no = max(1, int(q.get("page", "1")))
    except ValueError:
        page_no = 1
    skip, found = (page_no - 1) * PAGE_SIZE, []
    for rec in console.services.job_records(job):
        if rec.model != model or (rec.status != status and status != "all"):
            continue
        if label is not None and rec.label != label:
            continue
        if lo is not None and (rec.score is None or rec.score < lo):
            continue
        if hi is not None and (rec.score is None or rec.score > hi):
            continue
        if skip:
            skip -= 1
            continue
        found.append(rec)
        if len(found) > PAGE_SIZE:
            break
    summary = console.summary(info)
    labels = sorted(summary.labels.get(model, {}))
    filters = {"job": job, "model": model, "label": label, "lo": q.get("lo"), "hi": q.get("hi"), "status": status}
    shown = found[:PAGE_SIZE]
    return render(request, "browse.html", info=info, records=shown, more=len(found) > PAGE_SIZE,
                  page_no=page_no, filters=filters, labels=labels, ranges=SCORE_RANGES,
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


# ----------------------------------------------------------------------------- review


def _review_query(params: Any) -> Query:
    """The queue's state, filters, sort and page cursor from a query string or a form."""

    def num(name: str) -> float | None:
        return _float(str(params.get(name) or ""))

    def cursor(name: str) -> int | None:
        try:
            return int(str(params.get(name) or "")) if params.get(name) else None
        except ValueError:
            return None

    minutes = {k: num(k) for k in ("older", "newer")}
    state = str(params.get("state") or "pending")
    return Query(
        state=state if state in ("pending", "claimed", "decided", "all") else "pending",
        job=params.get("job") or None, model=params.get("model") or None, label=params.get("label") or None,
        policy=params.get("policy") or None, lo=num("lo"), hi=num("hi"),
        older=None if minutes["older"] is None else minutes["older"] * 60,
        newer=None if minutes["newer"] is None else minutes["newer"] * 60,
        sort="score" if params.get("sort") == "score" else "age", desc=params.get("desc") == "1",
        after=cursor("after"), before=cursor("before"), size=REVIEW_PAGE,
    )


REVIEW_FILTERS = ("state", "job", "model", "label", "policy", "lo", "hi", "older", "newer", "sort", "desc")


def _topk_labels(console: Console, items: list[Any]) -> dict[str, list[str]]:
    """Item id → the labels of its record's top-k (what 1–9 set), one record read per model of the page."""
    out: dict[str, list[str]] = {}
    by_model: dict[str, list[Any]] = {}
    for item in items:
        by_model.setdefault(item.model, []).append(item)
    for model, group in by_model.items():
        try:
            recs = console.services.records.get_many(model, [i.uri for i in group])
        except Exception:  # labels by number are a convenience; the page works without them
            logger.exception("console: top-k labels of the review page")
            recs = {}
        for item in group:
            rec = recs.get(item.uri)
            labels = [str(t["label"]) for t in (rec.top_k if rec is not None else [])][:9]
            out[item.id] = labels or [item.label]
    return out


@page()
def review_page(request: Request, console: Console, user: User, form: Any) -> Response:
    params = request.query_params
    q = _review_query(params)
    try:
        result = console.reviews.query(q, user.name if user.can_write else None)
    except UsageError as exc:
        request.session["flash"] = f"error: {exc}"
        result = console.reviews.query(Query(size=REVIEW_PAGE), user.name if user.can_write else None)
    if q.state == "pending" and user.can_write and result.items:  # what you open is yours for a few minutes
        mine = set(console.reviews.claim([i.id for i in result.items], user.name))
        result.items = [i for i in console.reviews.get_many([i.id for i in result.items]) if i.id in mine]
    filters = {k: params.get(k) for k in REVIEW_FILTERS if params.get(k)}
    try:
        offset = max(0, int(params.get("n", "0")))
    except ValueError:
        offset = 0
    facets = console.reviews.facets().values()
    choices = {k: sorted({f[k] for f in facets if f[k]}) for k in ("job", "model", "label", "policy")}
    now = time.time()
    return render(request, "review.html", page=result, items=result.items, state=q.state, q=q, filters=filters,
                  offset=offset, choices=choices, counts=console.reviews.counts(), labels=_topk_labels(console, result.items),
                  reasons=console.settings.console_reasons, blur=console.settings.console_blur, now=now,
                  undo_seconds=console.reviews.undo_seconds, ago=lambda t: duration(max(0.0, now - t)))


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def _review_result(request: Request, ok: bool, message: str, item: Any, status: int = 200) -> Response:
    if _wants_json(request):
        return JSONResponse({"ok": ok, "message": message, "item": item.public() if item is not None else None},
                            status_code=status)
    request.session["flash"] = message
    return RedirectResponse(_safe_next(str(request.query_params.get("next") or "") or None, "/review"), 303)


def _version(form: Any) -> int:
    try:
        return int(str(form.get("version") or ""))
    except ValueError:
        raise UsageError("the form lacks the item's version: reload the page") from None


@page(write=True)
def review_decide(request: Request, console: Console, user: User, form: Any) -> Response:
    iid, decision = str(form.get("id") or ""), str(form.get("decision") or "")
    next_url = _safe_next(str(form.get("next") or ""), "/review")
    try:
        item = review.decide(console.services.redis, console.stores, console.reviews, iid, _version(form), decision,
                             user.name, human_label=str(form.get("human_label") or ""),
                             reason=str(form.get("reason") or ""), reasons=console.settings.console_reasons)
    except UsageError as exc:
        current = exc.item if isinstance(exc, review.Conflict) else console.reviews.get(iid)
        if _wants_json(request):
            return JSONResponse({"ok": False, "message": f"refused: {exc}",
                                 "item": current.public() if current is not None else None},
                                status_code=409 if isinstance(exc, review.Conflict) else 400)
        request.session["flash"] = f"refused: {exc}"
        return RedirectResponse(next_url, status_code=303)
    message = f"{decision}: {shown_key(item.uri)}"
    if _wants_json(request):
        return JSONResponse({"ok": True, "message": message, "item": item.public()})
    request.session["flash"] = message
    return RedirectResponse(next_url, status_code=303)


@page(write=True)
def review_undo(request: Request, console: Console, user: User, form: Any) -> Response:
    iid = str(form.get("id") or "")
    next_url = _safe_next(str(form.get("next") or ""), "/review")
    try:
        item = review.undo(console.services.redis, console.stores, console.reviews, iid, _version(form), user.name)
    except UsageError as exc:
        current = exc.item if isinstance(exc, review.Conflict) else console.reviews.get(iid)
        if _wants_json(request):
            return JSONResponse({"ok": False, "message": f"refused: {exc}",
                                 "item": current.public() if current is not None else None}, status_code=409)
        request.session["flash"] = f"refused: {exc}"
        return RedirectResponse(next_url, status_code=303)
    message = f"undone: {shown_key(item.uri)}"
    if _wants_json(request):
        return JSONResponse({"ok": True, "message": message, "item": item.public()})
    request.session["flash"] = message
    return RedirectResponse(next_url, status_code=303)


@page(write=True, admin=True)
def review_bulk(request: Request, console: Console, user: User, form: Any) -> Response:
    decision = str(form.get("decision") or "")
    if form.get("sure") != "yes":
        raise UsageError("tick the box to decide every item the filters select")
    q = _review_query(form)
    done, skipped = review.bulk(console.services.redis, console.stores, console.reviews, q, decision, user.name,
                                reason=str(form.get("reason") or ""), reasons=console.settings.console_reasons)
    logger.info("console: %s bulk %s: %d items, %d skipped", user.name, decision, done, len(skipped))
    request.session["flash"] = f"bulk {decision}: {done} items" + (f", {len(skipped)} skipped" if skipped else "")
    params = {k: form.get(k) for k in REVIEW_FILTERS if form.get(k) and k != "state"}
    return RedirectResponse(url("/review", **params), status_code=303)


@page()
def review_export(request: Request, console: Console, user: User, form: Any) -> Response:
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in review.export_rows(console.reviews)]
    return Response("".join(lines), media_type="application/x-ndjson",
                    headers={"content-disposition": 'attachment; filename="review-decisions.jsonl"'})


@page()
def audit_page(request: Request, console: Console, user: User, form: Any) -> Response:
    entries = list(audit.newest(console.services.redis, limit=500))
    return render(request, "audit.html", entries=entries)


# ----------------------------------------------------------------------------- operators

OPS_JOBS = 10  # newest jobs whose records count into the workers' ok / failed figures


@page()
def ops_page(request: Request, console: Console, user: User, form: Any) -> Response:
    from ..producer import queued_messages

    settings, services = console.settings, console.services
    info = console.workers()
    stats = console.worker_stats()
    records: dict[str, list[int]] = {}
    for job in services.book.jobs(OPS_JOBS):
        for name, (ok, failed) in console.summary(job).workers.items():
            counts = records.setdefault(name, [0, 0])
            counts[0] += ok
            counts[1] += failed
    workers = []
    for name in sorted(set(info) | set(stats)):
        st, inf = stats.get(name, {}), info.get(name, {})
        ok, failed = records.get(name, [0, 0])
        workers.append({"name": name, "device": inf.get("device"), "models": inf.get("models") or [],
                        "processed": st.get("processed"), "active": st.get("active"),
                        "uptime": duration(st.get("uptime")), "ok": ok, "failed": failed})
    age, waiting = services.book.oldest_waiting()
    queues = [{"name": f"bulk ({settings.queue})", "messages": queued_messages(services.app, settings.queue),
               "note": f"{waiting} chunks waiting" + (f", oldest {duration(age)}" if age is not None else "")},
              {"name": f"live ({settings.live_queue})", "messages": queued_messages(services.app, settings.live_queue),
               "note": "single new uploads"}]
    counts = console.reviews.counts()
    oldest = console.reviews.oldest_pending()
    backlog = {"pending": counts["pending"], "claimed": counts["claimed"], "decided": counts["decided"],
               "oldest": duration(time.time() - oldest) if oldest else "—"}
    draw = render_part if request.query_params.get("part") else render
    return draw(request, "_ops.html" if draw is render_part else "ops.html", workers=workers, queues=queues,
                backlog=backlog, reviewers=console.reviews.reviewer_stats(), ops_jobs=OPS_JOBS)


async def home(request: Request) -> Response:
    return RedirectResponse("/jobs", status_code=303)


# ----------------------------------------------------------------------------- the app


def create_app(settings: Settings, services: Any = None) -> Starlette:
    """The console over ``services`` (opened from settings when not given); refuses to run open to all."""
    Auth(settings).require_configured()
    console = Console(settings, services if services is not None else open_services(settings))
    review.migrate(console.services.redis, console.reviews)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(url=url, duration=duration, redact=redact)
    templates.env.autoescape = True
    templates.env.filters["key"] = shown_key
    templates.env.filters["when"] = _when
    routes = [
        Route("/", home),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/healthz", healthz),
        Route("/favicon.ico", favicon),
        Route("/jobs", jobs_page),
        Route("/jobs/view", job_page),
        Route("/jobs/browse", browse_page),
        Route("/jobs/retry", job_retry, methods=["POST"]),
        Route("/api/job", job_api),
        Route("/record", record_page),
        Route("/thumb", thumb),
        Route("/review", review_page),
        Route("/review/decide", review_decide, methods=["POST"]),
        Route("/review/undo", review_undo, methods=["POST"]),
        Route("/review/bulk", review_bulk, methods=["POST"]),
        Route("/review/export.jsonl", review_export),
        Route("/audit", audit_page),
        Route("/ops", ops_page),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(SessionMiddleware, secret_key=console.secret, session_cookie="labelq_console",
                   same_site="strict", https_only=settings.console_secure_cookies, max_age=SESSION_SECONDS),
    ]
    app = Starlette(routes=routes, middleware=middleware)
    app.state.console = console
    app.state.templates = templates
    return app


def serve(settings: Settings) -> None:
    """Run the console with uvicorn on LABELQ_CONSOLE_HOST:LABELQ_CONSOLE_PORT until interrupted."""
    import uvicorn

    app = create_app(settings)
    uvicorn.run(app, host=settings.console_host, port=settings.console_port, log_level="warning",
                server_header=False, proxy_headers=True)

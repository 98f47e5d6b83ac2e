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
from ..services import open_services
from . import review
from .auth import Auth, User, csrf_ok, csrf_token
from .progress import DEAD_LETTERS_PER_KIND, RateMeter, Summary, duration, summarise
from .thumbs import PLACEHOLDER_SVG, Signer, Thumbnails

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
PAGE_SIZE = 48
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
        self.auth = Auth(settings)
        self.secret = settings.console_secret or secrets.token_urlsafe(32)
        self.signer = Signer(self.secret)
        self.stores = getattr(services, "stores", None) or Stores(settings)
        self.thumbs = Thumbnails(settings, self.stores, self.signer)
        self.rates = RateMeter()
        self._lock = threading.Lock()
        self._workers_lock = threading.Lock()  # one broadcast at a time; pages wait for its answer
        self._workers: tuple[float, dict[str, Any]] = (0.0, {})
        self._summaries: dict[str, tuple[float, int, Summary]] = {}

    def workers(self) -> dict[str, Any]:
        """Workers answering a broadcast (name → info), asked at most every WORKERS_TTL seconds."""
        from ..health import check_workers

        with self._workers_lock:
            at, replies = self._workers
            if time.monotonic() - at > WORKERS_TTL:
                _, replies = check_workers(self.services.app, timeout=1.0)
                self._workers = (time.monotonic(), replies)
            return replies

    def summary(self, info: Any) -> Summary:
        with self._lock:
            cached = self._summaries.get(info.id)
        if cached and cached[1] == info.processed and time.monotonic() - cached[0] < SUMMARY_TTL:
            return cached[2]
        s = summarise(self.services.job_records(info.id))
        with self._lock:
            self._summaries[info.id] = (time.monotonic(), info.processed, s)
        return s

    def rules(self) -> dict[tuple[str, str], float]:
        """(model, label) → threshold of the configured policy, to show which rule fired."""
        if self.settings.policy is None:
            return {}
        try:
            try:
                from ..moderation import load_policy
            except ImportError:
                from ..policy import load_policy  # type: ignore[no-redef,unused-ignore]

            return {(r.model, r.label): r.threshold for r in load_policy(self.settings.policy).rules}
        except (UsageError, OSError):
            return {}


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


def _safe_next(target: str | None, default: str = "/jobs") -> str:
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


Handler = Callable[[Request, Console, User, Any], Response]


def page(*, write: bool = False, api: bool = False) -> Callable[[Handler], Callable[[Request], Any]]:
    """Authenticate, then (POST) check the CSRF token and the write permission, then run ``fn`` in a thread."""

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
    error = None
    if request.method == "POST":
        form = await request.form()
        next_url = _safe_next(str(form.get("next") or ""))
        if not csrf_ok(request, form):
            return PlainTextResponse("CSRF token missing or wrong: reload the page and try again", 403)
        user = console.auth.check_password(str(form.get("username") or ""), str(form.get("password") or ""))
        if user is not None:
            request.session.clear()  # a fresh session (and CSRF token) after signing in
            request.session["user"] = user.name
            logger.info("console: %s signed in", user.name)
            return RedirectResponse(next_url, status_code=303)
        error = "wrong name or password"
        logger.warning("console: failed sign-in for %r", str(form.get("username") or "")[:64])
    templates: Jinja2Templates = request.app.state.templates
    return templates.TemplateResponse(
        request, "login.html", {"csrf": csrf_token(request), "next": next_url, "error": error, "user": None,
                                "flash": None, "sso": console.auth.header},
        status_code=401 if error else 200,
    )


async def logout(request: Request) -> Response:
    form = await request.form()
    if not csrf_ok(request, form):
        return PlainTextResponse("CSRF token missing or wrong", status_code=403)
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


@page(write=True)
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
                  where=review.locations(console.services.redis, shown))


@page()
def record_page(request: Request, console: Console, user: User, form: Any) -> Response:
    model, uri = request.query_params.get("model", ""), request.query_params.get("uri", "")
    rec = console.services.records.get_many(model, [uri]).get(uri) if model and uri else None
    if rec is None:
        return render(request, "missing.html", status_code=404, what=f"record of {uri} for {model}")
    actions = [a for a in review.audit_newest(console.services.redis, limit=20000) if a.uri == uri][:50]
    revision = getattr(rec, "model_revision", None)
    return render(request, "record.html", rec=rec, actions=actions, revision=revision,
                  where=review.locations(console.services.redis, [rec]),
                  reviewer_of=review.reviewer_of, human_label_of=review.human_label_of)


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


@page()
def review_page(request: Request, console: Console, user: User, form: Any) -> Response:
    state = request.query_params.get("state", "pending")
    if state not in ("pending", "decided", "all"):
        state = "pending"
    items = review.queue(console.services.redis, state=state)
    return render(request, "review.html", items=items, state=state, rules=console.rules(),
                  reviewer_of=review.reviewer_of, human_label_of=review.human_label_of)


@page(write=True)
def review_decide(request: Request, console: Console, user: User, form: Any) -> Response:
    item = review.find(console.services.redis, str(form.get("uri") or ""), str(form.get("etag") or ""))
    decision = str(form.get("decision") or "")
    review.decide(console.services, console.stores, item, decision, user.name, str(form.get("human_label") or ""))
    request.session["flash"] = f"{decision}: {item.uri}"
    return RedirectResponse(_safe_next(str(form.get("next") or ""), "/review"), status_code=303)


@page()
def review_export(request: Request, console: Console, user: User, form: Any) -> Response:
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in review.export_rows(console.services.redis)]
    return Response("".join(lines), media_type="application/x-ndjson",
                    headers={"content-disposition": 'attachment; filename="review-decisions.jsonl"'})


@page()
def audit_page(request: Request, console: Console, user: User, form: Any) -> Response:
    entries = list(review.audit_newest(console.services.redis, limit=500))
    return render(request, "audit.html", entries=entries, reviewer_of=review.reviewer_of,
                  human_label_of=review.human_label_of)


async def home(request: Request) -> Response:
    return RedirectResponse("/jobs", status_code=303)


# ----------------------------------------------------------------------------- the app


def create_app(settings: Settings, services: Any = None) -> Starlette:
    """The console over ``services`` (opened from settings when not given); refuses to run open to all."""
    console = Console(settings, services if services is not None else open_services(settings))
    console.auth.require_configured()
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(url=url, duration=duration, redact=redact)
    templates.env.autoescape = True
    templates.env.filters["key"] = shown_key
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
        Route("/review/export.jsonl", review_export),
        Route("/audit", audit_page),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(SessionMiddleware, secret_key=console.secret, session_cookie="labelq_console",
                   same_site="strict", https_only=settings.console_secure_cookies, max_age=12 * 3600),
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

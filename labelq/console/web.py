"""What the console's pages share: the Console (services, auth, thumbnails, the review store, short-lived
caches), the ``page`` wrapper (authenticate, CSRF, permissions, run in a thread), rendering, URLs.

Handlers are plain functions run in a thread (the stores are synchronous clients); the ``page`` wrapper
authenticates, checks CSRF and the write permission before any of them runs."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from ..config import Settings
from ..errors import UsageError
from ..reviews import ReviewStore
from .auth import Auth, User, csrf_ok, csrf_token
from .progress import RateMeter, Summary, summarise
from .thumbs import Signer, Thumbnails

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
        from ..objects import Stores

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
    from ..objects import scheme_of, store_class

    store = store_class(scheme_of(uri)) if uri else None
    if uri and store is not None and store.listable:  # a bucket key or a path (a URL is shown as it is)
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



SCORE_RANGES = ((0.0, 0.5), (0.5, 0.8), (0.8, 0.95), (0.95, 1.0))


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None

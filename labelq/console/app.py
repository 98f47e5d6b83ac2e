"""The console's web app: sign-in and sign-out, the routes of every page, the middleware; ``serve``."""

from __future__ import annotations

import logging
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..config import Settings, redact
from ..services import open_services
from . import review
from .auth import SESSION_FIELD, SESSION_SECONDS, Auth, csrf_ok, csrf_token
from .jobs_pages import browse_page, job_api, job_page, job_retry, jobs_page, record_page, thumb
from .ops_pages import ops_page
from .progress import duration
from .quality_pages import compare_api, compare_page, quality_api, quality_page
from .review_pages import audit_page, review_bulk, review_decide, review_export, review_page, review_undo
from .web import HERE, Console, SecurityHeaders, _safe_next, _when, shown_key, url

logger = logging.getLogger(__name__)

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
        Route("/quality", quality_page),
        Route("/quality/compare", compare_page),
        Route("/api/quality", quality_api),
        Route("/api/quality/compare", compare_api),
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

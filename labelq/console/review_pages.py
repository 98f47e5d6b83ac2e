"""Pages of the review queue: the queue (claims what it shows), decisions, undo, bulk, the export, the audit
trail."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from ..errors import UsageError
from ..moderation import audit
from ..reviews import Query
from . import review
from .auth import User
from .progress import duration
from .web import REVIEW_PAGE, Console, _float, _safe_next, page, render, shown_key, url

logger = logging.getLogger(__name__)

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


def _version(form: Any) -> int:
    try:
        return int(str(form.get("version") or ""))
    except ValueError:
        raise UsageError("the form lacks the item's version: reload the page") from None


def _item_form(form: Any) -> tuple[str, str]:
    """The item id and the page to go back to, of a single-item form (decide, undo)."""
    return str(form.get("id") or ""), _safe_next(str(form.get("next") or ""), "/review")


def _reply(request: Request, next_url: str, message: str, item: Any, *, ok: bool = True, status: int = 200) -> Response:
    """JSON for the page's script (the item as it now is), else a flash and a redirect back."""
    if _wants_json(request):
        return JSONResponse({"ok": ok, "message": message, "item": item.public() if item is not None else None},
                            status_code=status)
    request.session["flash"] = message
    return RedirectResponse(next_url, status_code=303)


def _refused(request: Request, console: Console, iid: str, next_url: str, exc: UsageError, status: int) -> Response:
    current = exc.item if isinstance(exc, review.Conflict) else console.reviews.get(iid)
    return _reply(request, next_url, f"refused: {exc}", current, ok=False, status=status)


@page(write=True)
def review_decide(request: Request, console: Console, user: User, form: Any) -> Response:
    (iid, next_url), decision = _item_form(form), str(form.get("decision") or "")
    try:
        item = review.decide(console.services.redis, console.stores, console.reviews, iid, _version(form), decision,
                             user.name, human_label=str(form.get("human_label") or ""),
                             reason=str(form.get("reason") or ""), reasons=console.settings.console_reasons)
    except UsageError as exc:
        return _refused(request, console, iid, next_url, exc, 409 if isinstance(exc, review.Conflict) else 400)
    return _reply(request, next_url, f"{decision}: {shown_key(item.uri)}", item)


@page(write=True)
def review_undo(request: Request, console: Console, user: User, form: Any) -> Response:
    iid, next_url = _item_form(form)
    try:
        item = review.undo(console.services.redis, console.stores, console.reviews, iid, _version(form), user.name)
    except UsageError as exc:
        return _refused(request, console, iid, next_url, exc, 409)
    return _reply(request, next_url, f"undone: {shown_key(item.uri)}", item)


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

"""The operator view: workers, queues, the review backlog, reviewers."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .auth import User
from .progress import duration
from .web import Console, page, render, render_part

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
    review_counts = console.reviews.counts()
    oldest = console.reviews.oldest_pending()
    backlog = {"pending": review_counts["pending"], "claimed": review_counts["claimed"],
               "decided": review_counts["decided"],
               "oldest": duration(time.time() - oldest) if oldest else "—"}
    draw = render_part if request.query_params.get("part") else render
    return draw(request, "_ops.html" if draw is render_part else "ops.html", workers=workers, queues=queues,
                backlog=backlog, reviewers=console.reviews.reviewer_stats(), ops_jobs=OPS_JOBS)

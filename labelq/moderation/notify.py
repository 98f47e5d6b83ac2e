"""Notifications of actions taken: a Redis stream entry and/or a webhook POST, retried with backoff."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from ..retrying import backoff
from .audit import Action

STREAM_MAXLEN = 1_000_000  # entries kept in the notification stream (approximate trim)
WEBHOOK_BACKOFF = (0.2, 5.0)  # seconds: base and cap of the delay between webhook attempts


def payload(a: Action) -> dict[str, Any]:
    """What a notification says about an action."""
    return {"uri": a.uri, "model": a.model, "label": a.label, "score": a.score,
            "policy_version": a.policy_version, "job": a.job or ""}


def notify(a: Action, *, redis: Any, stream: str | None, webhook: str | None, attempts: int) -> str:
    """Send one notification to the stream and/or the webhook; returns where it went."""
    sent = []
    body = payload(a)
    if stream:
        redis.xadd(stream, {k: str(v) for k, v in body.items()}, maxlen=STREAM_MAXLEN, approximate=True)
        sent.append(f"stream {stream}")
    if webhook:
        post_json(webhook, body, attempts=attempts)
        sent.append("webhook")
    return ", ".join(sent)


def post_json(url: str, payload: dict[str, Any], *, attempts: int = 4, timeout: float = 5.0) -> None:
    """POST JSON; retry 5xx and connection errors with exponential backoff and jitter."""
    body = json.dumps(payload).encode()
    for attempt in range(1, attempts + 1):
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                if resp.status < 300:
                    return
                raise urllib.error.HTTPError(url, resp.status, "unexpected status", resp.headers, None)
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == attempts:
                raise
        except (urllib.error.URLError, TimeoutError, ConnectionError):
            if attempt == attempts:
                raise
        time.sleep(backoff(attempt, *WEBHOOK_BACKOFF))

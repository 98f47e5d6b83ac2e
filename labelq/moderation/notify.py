"""A webhook POST retried with backoff, for callers that send in the foreground.

The moderator does not send here: its notifications go through the outbox
(:mod:`.outbox`), queued with the action's bookkeeping and delivered by their own thread.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from ..retrying import backoff

WEBHOOK_BACKOFF = (0.2, 5.0)  # seconds: base and cap of the delay between webhook attempts


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

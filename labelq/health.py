"""`labelq ping`: is everything a job needs reachable, and which workers are up?"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Settings, redact
from .errors import UsageError

logger = logging.getLogger(__name__)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def check_broker(settings: Settings, app: Any) -> Check:
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=5)
        return Check("broker", True, redact(settings.broker_url) + _master(settings, settings.broker_url))
    except Exception as exc:  # noqa: BLE001 - any failure is "down"
        return Check("broker", False, f"{redact(settings.broker_url)}: {exc}")


def check_redis(settings: Settings) -> Check:
    from .redis_client import connect

    try:
        client = connect(settings.jobs_redis, master=settings.sentinel_master, check=False, retries=1)
        client.ping()
        return Check("job state (redis)", True, redact(settings.jobs_redis) + _master(settings, settings.jobs_redis))
    except Exception as exc:  # noqa: BLE001
        return Check("job state (redis)", False, f"{redact(settings.jobs_redis)}: {exc}")


def _master(settings: Settings, url: str) -> str:
    """`` (master NAME at HOST:PORT)`` for a sentinel:// URL: where the sentinels say the master is now."""
    from .redis_client import master_address

    try:
        address = master_address(url, settings.sentinel_master)
    except Exception as exc:  # noqa: BLE001 - the check itself passed; say what the sentinels said
        return f" (master {settings.sentinel_master}: {exc})"
    return f" (master {settings.sentinel_master} at {address[0]}:{address[1]})" if address else ""


def check_results(settings: Settings) -> Check | None:
    """The record store, when it is not the job Redis already checked."""
    url = settings.results
    if url == settings.jobs_redis:
        return None
    try:
        from .services import open_records

        store = open_records(settings)
        store.close()
        return Check("results", True, redact(url))
    except (UsageError, Exception) as exc:  # noqa: BLE001
        return Check("results", False, f"{redact(url)}: {exc}")


def check_storage(settings: Settings, source: str | None) -> Check | None:
    """With a source: list one object of it. Without: reach the S3 endpoint if one is set."""
    from .objects import Stores
    from .sources import iter_source, parse_source

    try:
        if source:
            src = parse_source(source)
            next(iter(iter_source(src, Stores(settings, local_root=src.root))), None)
            return Check("storage", True, source)
        if settings.s3_endpoint_url:
            from botocore.exceptions import ClientError

            try:
                Stores(settings).s3.client.list_buckets()
            except ClientError as exc:  # an answer, even "denied", means the endpoint is up
                if exc.response.get("Error", {}).get("Code") not in ("AccessDenied", "403"):
                    raise
            return Check("storage", True, settings.s3_endpoint_url)
    except Exception as exc:  # noqa: BLE001
        return Check("storage", False, f"{source or settings.s3_endpoint_url}: {exc}")
    return None


def check_workers(app: Any, timeout: float, node: str | None = None) -> tuple[Check, dict[str, Any]]:
    try:
        answers = app.control.broadcast("labelq_info", reply=True, timeout=timeout,
                                        destination=[node] if node else None) or []
    except Exception as exc:  # noqa: BLE001
        return Check("workers", False, str(exc)), {}
    replies = {name: info for answer in answers for name, info in answer.items()}
    if not replies:
        return Check("workers", False, f"no worker answered within {timeout:g}s" + (f" ({node})" if node else "")), {}
    return Check("workers", True, f"{len(replies)} answering"), replies


def ping(settings: Settings, *, source: str | None = None, workers: bool = True, node: str | None = None,
         timeout: float = 3.0) -> tuple[list[Check], dict[str, Any]]:
    from .tasks import make_app

    app = make_app(settings)
    optional = [check_results(settings), check_storage(settings, source)]
    checks = [check_broker(settings, app), check_redis(settings)] + [c for c in optional if c is not None]
    replies: dict[str, Any] = {}
    if workers:
        check, replies = check_workers(app, timeout, node)
        checks.append(check)
    return checks, replies


def local_readers(folder: Path, replies: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Of the workers that answered ``labelq_info``: those whose LABELQ_LOCAL_ROOT covers ``folder`` (they may
    read its files), and those that may not (no local root, or one elsewhere). A worker too old to say is
    in neither list."""
    can, cannot = [], []
    for name, info in sorted(replies.items()):
        if "local_root" not in info:
            continue
        root = info["local_root"]
        if root and folder.resolve().is_relative_to(Path(root).resolve()):
            can.append(name)
        else:
            cannot.append(f"{name} ({'LABELQ_LOCAL_ROOT=' + root if root else 'no LABELQ_LOCAL_ROOT'})")
    return can, cannot


def check_local_source(source: Any, settings: Settings, app: Any, *, timeout: float = 1.5) -> str | None:
    """Before a local folder (or image) is enqueued: can a live worker read it? UsageError when workers answer
    and none may (its chunks would only be retried, then dead-lettered); a warning to print when no worker
    answers (the ones started later need LABELQ_LOCAL_ROOT); None when a worker may read it."""
    folder = Path(source.root)
    _, replies = check_workers(app, timeout)
    need = f"LABELQ_LOCAL_ROOT={folder} (or a folder above it) on the workers, and the files at the same path there"
    if not replies:
        return f"no worker answered yet: the workers that label this job need {need}"
    can, cannot = local_readers(folder, replies)
    if can or not cannot:
        return None
    raise UsageError(f"no live worker may read {folder}: it needs {need}; answering: {', '.join(cannot)}")

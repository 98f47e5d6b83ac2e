"""`labelq ping`: is everything a job needs reachable, and which workers are up? And a worker's own view.

:class:`Watch` runs in every worker process: it probes the job Redis and the broker every
``WATCH_EVERY`` seconds and logs one line when one goes down ("degraded") and one when it
is back ("recovered"); ``labelq ping`` shows each worker's view and says "degraded" while a
service a worker needs is down (workers wait for it; nothing is lost).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Settings, redact
from .errors import UsageError

logger = logging.getLogger(__name__)

WATCH_EVERY = 2.0  # seconds between a worker's probes of its services


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

    settings.jobs_redis  # noqa: B018 - no Redis named for job state is a usage error (exit 2), not "down"
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


def summary(checks: list[Check], replies: dict[str, Any]) -> str:
    """One word for the whole: ``ok``; ``degraded`` (a service is down or a worker says so: workers wait for it,
    nothing is lost); ``down`` (no worker answered while every service is up)."""
    services_ok = all(c.ok for c in checks if c.name != "workers")
    worker_degraded = any((info.get("health") or {}).get("status") == "degraded" for info in replies.values())
    if not services_ok or worker_degraded:
        return "degraded"
    return "ok" if all(c.ok for c in checks) else "down"


class Watch:
    """A worker's view of the services it needs: probed in a thread, logged on every change.

    ``probes`` maps a name ("job state (redis)", "broker") to a callable that raises when the
    service is unreachable. Each probe runs every ``every`` seconds.
    """

    def __init__(self, probes: dict[str, Callable[[], Any]], *, every: float = WATCH_EVERY, who: str = "worker") -> None:
        self.probes = probes
        self.every = every
        self.who = who
        self.down: dict[str, tuple[float, str]] = {}  # name -> (since, monotonic; why)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Watch:
        self._thread = threading.Thread(target=self._run, name="labelq-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.probe()

    def probe(self) -> None:
        """Probe every service once; log a change of state."""
        for name, probe in self.probes.items():
            try:
                probe()
            except Exception as exc:  # noqa: BLE001 - any failure is "unreachable"
                self.failed(name, exc)
            else:
                self.ok(name)

    def failed(self, name: str, exc: BaseException) -> None:
        """``name`` is unreachable (also told by the chunk path when a write hits the outage first)."""
        why = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        with self._lock:
            if name in self.down:
                return
            self.down[name] = (time.monotonic(), why)
        logger.warning("%s degraded: %s unreachable (%s); chunks in hand wait for it and nothing is acknowledged "
                       "until their records are written", self.who, name, why)

    def ok(self, name: str) -> None:
        with self._lock:
            was = self.down.pop(name, None)
        if was is not None:
            logger.warning("%s recovered: %s is back after %.0fs", self.who, name, time.monotonic() - was[0])

    def state(self) -> dict[str, Any]:
        """``{"status": "ok"|"degraded", "down": {name: "why (for Ns)"}}`` (for ping and the metrics)."""
        now = time.monotonic()
        with self._lock:
            down = {n: f"{why} (for {now - since:.0f}s)" for n, (since, why) in self.down.items()}
        return {"status": "degraded" if down else "ok", "down": down}


def register_metrics(watch: Watch, registry: Any) -> None:
    """``labelq_degraded`` (0/1) and ``labelq_service_up{service}`` on a worker's Prometheus endpoint, read at scrape."""
    from prometheus_client.core import GaugeMetricFamily

    class HealthCollector:
        def collect(self) -> Any:
            down = watch.state()["down"]
            yield GaugeMetricFamily("labelq_degraded", "1 while a service this worker needs is unreachable",
                                    value=float(bool(down)))
            up = GaugeMetricFamily("labelq_service_up", "Whether a service this worker needs answers",
                                   labels=["service"])
            for name in watch.probes:
                up.add_metric([name], 0.0 if name in down else 1.0)
            yield up

    registry.register(HealthCollector())

"""The one place that decides which Redis, which record store and which broker a command uses.

The CLI, the worker runtime, ``ping`` and the console all call :func:`open_services`;
nothing else picks a store from settings. Job state always lives in Redis
(``settings.jobs_redis``); records go to the store named by ``settings.results``:
the same Redis (one client is shared), a second Redis, a SQL table or a Parquet dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import Settings
from .errors import UsageError
from .jobs import JobBook, JobInfo
from .records import Record
from .redis_client import connect
from .results.base import RecordStore

logger = logging.getLogger(__name__)


@dataclass
class Services:
    """What a command needs to reach: the job Redis, the job book, the record store, the broker app."""

    settings: Settings
    redis: Any
    book: JobBook
    records: RecordStore
    _app: Any = field(default=None, repr=False)

    @property
    def app(self) -> Any:
        """The Celery app (for publishing), made on first use."""
        if self._app is None:
            from .tasks import make_app

            self._app = make_app(self.settings)
        return self._app

    def job(self, job_id: str) -> JobInfo:
        """An existing job's info; UsageError when there is none."""
        info = self.book.info(job_id)
        if info is None:
            raise UsageError(f"no such job: {job_id}")
        return info

    def write(self, records: Sequence[Record], *, chunk: str | None = None) -> None:
        """Store records (without job bookkeeping)."""
        self.records.write(records, chunk=chunk)

    def job_records(self, job_id: str) -> Iterator[Record]:
        """A job's records, one per (uri, model), as the job wrote them."""
        return self.records.iter_records(job_id)

    def close(self) -> None:
        for closer in (getattr(self.records, "close", None), getattr(self.redis, "close", None)):
            if closer is not None:
                try:
                    closer()
                except Exception:
                    logger.debug("close failed", exc_info=True)


def open_records(settings: Settings, redis: Any | None = None) -> Any:
    """The record store named by ``settings.results``; reuses ``redis`` when it is that same Redis."""
    from .results import open_store

    url = settings.results
    if redis is not None and url == settings.jobs_redis:
        from .results.redis import RedisStore

        return RedisStore(redis, ttl=settings.result_ttl)
    return open_store(url, ttl=settings.result_ttl, settings=settings)


def open_services(settings: Settings, *, check: bool = True) -> Services:
    """Connect to the job Redis (pinged when ``check``) and open the record store."""
    redis = connect(settings.jobs_redis, master=settings.sentinel_master, check=check)
    book = JobBook(redis, ttl=settings.result_ttl)
    return Services(settings=settings, redis=redis, book=book, records=open_records(settings, redis))

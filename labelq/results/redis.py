"""The Redis record store (the small-deployment default, with a TTL).

Two hashes per model, uri → record (:func:`labelq.records.encode_body`):

* ``labelq:rec:{model}``: the latest record of each object across jobs, for skipping;
* ``labelq:job:{job}:rec:{model}``: what that job wrote, its export; later jobs never touch it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .. import keys
from ..records import Record, decode_body, encode_body
from ..redis_client import connect
from .base import RevisionCounts, count_revisions

logger = logging.getLogger(__name__)


class RedisStore:
    """Records in Redis hashes; every batch in one pipeline; ``ttl`` seconds refreshed per write (0 = none)."""

    per_chunk = False

    def __init__(self, client: Any, *, ttl: int = 0) -> None:
        self.redis = client
        self.ttl = ttl

    @classmethod
    def from_url(cls, url: str, *, ttl: int = 0, settings: Any = None, **_: Any) -> RedisStore:
        """``settings`` names the Sentinel master of a ``sentinel://`` URL."""
        return cls(connect(url, master=getattr(settings, "sentinel_master", None)), ttl=ttl)

    def write(self, records: Sequence[Record], *, chunk: str | None = None, pipeline: Any = None) -> None:
        """Store records in the global and their job's hashes: one round trip (or into ``pipeline``).

        Idempotent: a redelivered chunk sets the same fields again.
        """
        if not records:
            return
        pipe = pipeline if pipeline is not None else self.redis.pipeline(transaction=False)
        touched: set[str] = set()
        for rec in records:
            body = encode_body(rec)
            names = [keys.records(rec.model)]
            if rec.job:
                names.append(keys.job_records(rec.job, rec.model))
            for name in names:
                pipe.hset(name, rec.uri, body)
                touched.add(name)
        if self.ttl:
            for name in touched:
                pipe.expire(name, self.ttl)
        if pipeline is None:
            pipe.execute()

    def get_many(self, model: str, uris: Sequence[str]) -> dict[str, Record]:
        """The latest record of each object for ``model``, across jobs."""
        if not uris:
            return {}
        values = self.redis.hmget(keys.records(model), list(uris))
        return {uri: decode_body(v) for uri, v in zip(uris, values, strict=True) if v is not None}

    def job_get_many(self, job: str, model: str, uris: Sequence[str]) -> dict[str, Record]:
        """This job's record of each of these objects for ``model`` (one HMGET)."""
        if not uris:
            return {}
        values = self.redis.hmget(keys.job_records(job, model), list(uris))
        return {uri: decode_body(v) for uri, v in zip(uris, values, strict=True) if v is not None}

    def _job_keys(self, job: str) -> list[str]:
        pattern = keys.job_records(_glob_escape(job), "*")
        found = {k.decode() if isinstance(k, bytes) else k for k in self.redis.scan_iter(match=pattern, count=1000)}
        return sorted(found)

    def iter_records(self, job: str | None = None) -> Iterator[Record]:
        """A job's records (all models), a page at a time, one per (uri, model); ``None``: every latest record."""
        names = self._job_keys(job) if job is not None else sorted(
            k.decode() if isinstance(k, bytes) else k for k in self.redis.scan_iter(match=keys.records("*"), count=1000)
        )
        for name in names:
            seen: set[str] = set()  # HSCAN may repeat a field while the hash is rehashed
            for field, value in self.redis.hscan_iter(name, count=1000):
                uri = field.decode() if isinstance(field, bytes) else field
                if uri not in seen:
                    seen.add(uri)
                    yield decode_body(value)

    def scan_page(self, job: str, model: str, after: str | None, limit: int,
                  keep: Callable[[Record], bool]) -> tuple[list[Record], str | None]:
        """Records ``keep`` accepts from the job's hash for ``model``, from HSCAN cursor ``after`` on: whole
        HSCAN batches until ``limit`` are found (a page may hold a few more); the cursor of the next page."""
        name = keys.job_records(job, model)
        cursor = int(after or 0)
        found: list[Record] = []
        while True:
            cursor, items = self.redis.hscan(name, cursor=cursor, count=max(limit, 50))
            found += [rec for rec in (decode_body(v) for v in items.values()) if keep(rec)]
            if cursor == 0:
                return found, None
            if len(found) >= limit:
                return found, str(cursor)

    def count(self, job: str) -> int:
        """Records of a job: one per (uri, model)."""
        pipe = self.redis.pipeline(transaction=False)
        for name in self._job_keys(job):
            pipe.hlen(name)
        return sum(int(n) for n in pipe.execute())

    def revisions(self, job: str) -> RevisionCounts:
        return count_revisions(self.iter_records(job))

    def close(self) -> None:
        self.redis.close()


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)

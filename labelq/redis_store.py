"""Redis: the one retrying connection factory, and the Redis result store."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

from . import keys
from .config import redact
from .errors import UsageError
from .jobs import JobBook, body, parse_body
from .records import Record
from .results import is_final
from .storage import ObjectRef

logger = logging.getLogger(__name__)


def connect(url: str, *, check: bool = True, retries: int = 8) -> Any:
    """A Redis client with timeouts, health checks and retries on dropped connections.

    ``rediss://`` URLs use TLS; a password in the URL is used and never logged.
    With ``check`` the server is pinged and an unreachable one is a UsageError.
    """
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError, TimeoutError
    from redis.retry import Retry

    client = redis.Redis.from_url(
        url,
        socket_timeout=30,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=retries),
        retry_on_error=[ConnectionError, TimeoutError],
    )
    if check:
        try:
            client.ping()
        except redis.RedisError as exc:
            raise UsageError(f"cannot reach Redis at {redact(url)}: {exc}") from None
    return client


class RedisStore:
    """Records in ``labelq:rec:{model}`` hashes (uri → record), global across jobs."""

    def __init__(self, client: Any, *, ttl: int = 0) -> None:
        self.redis = client
        self.ttl = ttl

    @classmethod
    def from_url(cls, url: str, *, ttl: int = 0) -> RedisStore:
        return cls(connect(url), ttl=ttl)

    def write(self, records: Sequence[Record]) -> None:
        """Store records without a job (one pipeline)."""
        pipe = self.redis.pipeline(transaction=False)
        for rec in records:
            pipe.hset(keys.records(rec.model), rec.uri, body(rec))
        if self.ttl:
            for model in {r.model for r in records}:
                pipe.expire(keys.records(model), self.ttl)
        pipe.execute()

    def get_many(self, model: str, uris: Sequence[str]) -> dict[str, Record]:
        if not uris:
            return {}
        values = self.redis.hmget(keys.records(model), list(uris))
        return {uri: parse_body(v) for uri, v in zip(uris, values, strict=True) if v is not None}

    def done(self, refs: Sequence[ObjectRef], models: Sequence[str]) -> set[str]:
        want = {ref.uri: ref.etag for ref in refs}
        uris = list(want)
        settled: dict[str, int] = defaultdict(int)
        for model in models:
            for uri, rec in self.get_many(model, uris).items():
                if is_final(rec.etag, rec.status, rec.error_kind, want[uri]):
                    settled[uri] += 1
        return {uri for uri, n in settled.items() if n == len(models)}

    def iter_records(self, job: str | None = None, *, book: JobBook | None = None) -> Iterator[Record]:
        """A job's records, streamed a page at a time through the job's item index."""
        if job is None:
            for model_key in self.redis.scan_iter(match=keys.records("*"), count=100):
                name = model_key.decode() if isinstance(model_key, bytes) else model_key
                for _, value in self.redis.hscan_iter(name, count=1000):
                    yield parse_body(value)
            return
        yield from job_records(book or JobBook(self.redis), self, job)

    def close(self) -> None:
        self.redis.close()


def job_records(book: JobBook, store: Any, job: str) -> Iterator[Record]:
    """Records of a job from any store with ``get_many(model, uris)``, one index page at a time."""
    for page in book.items(job):
        by_model: dict[str, list[str]] = defaultdict(list)
        for model, uri, _ in page:
            by_model[model].append(uri)
        for model, uris in by_model.items():
            found = store.get_many(model, uris)
            for uri in uris:
                rec = found.get(uri)
                if rec is not None:
                    yield rec
                else:
                    logger.warning("job %s lists %s for %s but the store has no record", job, uri, model)

"""Redis connections: the one URL check and the one retrying client factory.

Every module that talks to Redis gets its client from :func:`connect` (or is
handed one); every "is this a Redis URL?" question is :func:`is_redis_url`.
``redis://``, ``rediss://`` (TLS) and ``unix://`` (a socket path) are accepted,
as redis-py accepts them, everywhere a Redis URL is; so is ``sentinel://h1:26379;sentinel://h2:26379``
(Redis Sentinel, Celery's form), which needs the master's name (``LABELQ_SENTINEL_MASTER``):
the client asks the sentinels where the master is, and asks again after a failover.
"""

from __future__ import annotations

from typing import Any

from .config import redact
from .errors import UsageError
from .urls import REDIS_SCHEMES, SENTINEL_TIMEOUT_S, is_redis_url, is_sentinel_url, parse_sentinel_url

__all__ = ["REDIS_SCHEMES", "connect", "is_redis_url", "master_address"]


def connect(url: str, *, master: str | None = None, check: bool = True, retries: int = 8) -> Any:
    """A Redis client with timeouts, health checks and retries on dropped connections.

    ``rediss://`` URLs use TLS; a password in the URL is used and never logged.
    ``sentinel://`` URLs give a client of the master named ``master``, found through the
    sentinels at each (re)connection: a dropped connection is retried on the new master.
    With ``check`` the server is pinged and an unreachable one is a UsageError.
    """
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError, TimeoutError
    from redis.retry import Retry

    options: dict[str, Any] = {
        "socket_timeout": 30,
        "socket_connect_timeout": 5,
        "health_check_interval": 30,
        "retry": Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=retries),
        "retry_on_error": [ConnectionError, TimeoutError],
    }
    try:
        client = _sentinel_master(url, master, options) if is_sentinel_url(url) else redis.Redis.from_url(url, **options)
    except ValueError as exc:  # a malformed URL: say which, never echo its password
        raise UsageError(f"invalid Redis URL {redact(url)}: {str(exc).split(':', 1)[0]}") from None
    if check:
        try:
            client.ping()
        except redis.RedisError as exc:
            raise UsageError(f"cannot reach Redis at {redact(url)}{_named(url, master)}: {exc}") from None
    return client


def master_address(url: str, master: str | None) -> tuple[str, int] | None:
    """Where the sentinels of ``url`` say master ``master`` is now; None for a plain Redis URL.

    Raises redis' MasterNotFoundError when no sentinel knows a live master of that name.
    """
    if not is_sentinel_url(url):
        return None
    sentinel = _sentinel(url, {"socket_timeout": SENTINEL_TIMEOUT_S, "socket_connect_timeout": SENTINEL_TIMEOUT_S})
    try:
        host, port = sentinel.discover_master(_master_name(url, master))
        return str(host), int(port)
    finally:
        for client in sentinel.sentinels:
            client.close()


def _named(url: str, master: str | None) -> str:
    return f" (master {master!r})" if is_sentinel_url(url) else ""


def _master_name(url: str, master: str | None) -> str:
    if not master:
        raise UsageError(f"{redact(url)} names Redis Sentinels: set the name of the master they watch, "
                         "e.g. LABELQ_SENTINEL_MASTER=mymaster")
    return master


def _sentinel(url: str, options: dict[str, Any]) -> Any:
    from redis.sentinel import Sentinel

    parsed = parse_sentinel_url(url)
    return Sentinel(
        list(parsed.sentinels),
        sentinel_kwargs={"socket_timeout": SENTINEL_TIMEOUT_S, "socket_connect_timeout": SENTINEL_TIMEOUT_S},
        **options,
    )


def _sentinel_master(url: str, master: str | None, options: dict[str, Any]) -> Any:
    """The master's client: redis-py's ``Sentinel(...).master_for(name)`` with the URL's db and credentials."""
    import redis

    name = _master_name(url, master)
    parsed = parse_sentinel_url(url)
    credentials = {k: v for k, v in (("username", parsed.username), ("password", parsed.password)) if v is not None}
    return _sentinel(url, {}).master_for(name, redis_class=redis.Redis, db=parsed.db, **credentials, **options)

"""Redis connections: the one URL check and the one retrying client factory.

Every module that talks to Redis gets its client from :func:`connect` (or is
handed one); every "is this a Redis URL?" question is :func:`is_redis_url`.
``redis://``, ``rediss://`` (TLS) and ``unix://`` (a socket path) are accepted,
as redis-py accepts them, everywhere a Redis URL is.
"""

from __future__ import annotations

from typing import Any

from .config import redact
from .errors import UsageError
from .urls import REDIS_SCHEMES, is_redis_url

__all__ = ["REDIS_SCHEMES", "connect", "is_redis_url"]

def connect(url: str, *, check: bool = True, retries: int = 8) -> Any:
    """A Redis client with timeouts, health checks and retries on dropped connections.

    ``rediss://`` URLs use TLS; a password in the URL is used and never logged.
    With ``check`` the server is pinged and an unreachable one is a UsageError.
    """
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError, TimeoutError
    from redis.retry import Retry

    try:
        client = redis.Redis.from_url(
            url,
            socket_timeout=30,
            socket_connect_timeout=5,
            health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=retries),
            retry_on_error=[ConnectionError, TimeoutError],
        )
    except ValueError as exc:  # a malformed URL: say which, never echo its password
        raise UsageError(f"invalid Redis URL {redact(url)}: {str(exc).split(':', 1)[0]}") from None
    if check:
        try:
            client.ping()
        except redis.RedisError as exc:
            raise UsageError(f"cannot reach Redis at {redact(url)}: {exc}") from None
    return client

"""Service URLs in settings: redacted for logs, and checked so a malformed one is one clear settings error.

Redis URLs are accepted as redis-py accepts them (``redis://``, ``rediss://``,
``unix://``; a password in the userinfo or as ``?password=``). The Celery broker
goes through kombu, which fails on ``?password=``/``?username=``: :func:`check_broker_url`
moves them into the userinfo part (percent-encoded), so both forms work everywhere.
A password holding ``/``, ``?``, ``#``, ``[`` or ``]`` must be percent-encoded in the
userinfo part: unencoded, no parser can tell where it ends, so it is refused with a
message that never repeats it. ``@`` and ``:`` parse either way (the last ``@`` ends
the userinfo, the first ``:`` starts the password).

Redis Sentinel takes Celery's form: ``sentinel://[:PASSWORD@]host[:port][/db]``, several joined
by ``;`` (``sentinel://h1:26379;sentinel://h2:26379/0``). The password and database are the
master's and are read from the first sentinel (as kombu reads them); a later one that names
others is refused. The master's name is not in the URL: it is ``LABELQ_SENTINEL_MASTER``.
Other brokers may be a failover list in the same form (``amqp://n1//;amqp://n2//``, one scheme):
kombu connects to the first that answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeGuard
from urllib.parse import SplitResult, parse_qsl, quote, unquote, unquote_plus, urlsplit

SENTINEL_SCHEME = "sentinel"
REDIS_SCHEMES = ("redis", "rediss", "unix", SENTINEL_SCHEME)
SENTINEL_PORT = 26379  # a sentinel's port when the URL names none
SENTINEL_TIMEOUT_S = 2.0  # seconds: a sentinel that does not answer within this is skipped for the next
# where one URL of a ``;``-joined list ends: before the next ``scheme://``
_NEXT_URL = re.compile(r";(?=\s*[A-Za-z][A-Za-z0-9+.-]*://)")


def is_redis_url(url: str | None) -> TypeGuard[str]:
    """The one "is this a Redis URL?" check: redis://, rediss:// (TLS), unix:// (a socket) and sentinel:// (Sentinel)."""
    return bool(url) and str(url).split("://", 1)[0].lower() in REDIS_SCHEMES


def is_sentinel_url(url: str | None) -> TypeGuard[str]:
    """Whether ``url`` names Redis Sentinels (``sentinel://h1:26379;sentinel://h2:26379``)."""
    return bool(url) and str(url).split("://", 1)[0].lower() == SENTINEL_SCHEME


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``sentinel://`` URL: the sentinels' addresses and the master's database and credentials."""

    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelURL:
    """The sentinels, database and credentials of ``url``; ValueError says what is wrong without echoing secrets."""
    sentinels: list[tuple[str, int]] = []
    given: list[tuple[int, str | None, str | None] | None] = []  # (db, user, password) of each sentinel, if any
    for part in _NEXT_URL.split(url.strip()):
        parts = _split(part.strip())
        if parts.scheme.lower() != SENTINEL_SCHEME:
            raise ValueError(f"every URL of a sentinel list starts with sentinel://, not {parts.scheme}://")
        if not parts.hostname:
            raise ValueError("a sentinel:// URL needs a host, e.g. sentinel://10.0.0.1:26379")
        if parts.query or parts.fragment:
            raise ValueError("a sentinel:// URL takes no ?options: give the password as sentinel://:PASSWORD@host:26379")
        db = unquote(parts.path).strip("/")
        if db and not db.isdigit():
            raise ValueError("the database after the sentinel must be a number, e.g. sentinel://host:26379/0")
        sentinels.append((parts.hostname, parts.port or SENTINEL_PORT))
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        given.append((int(db or 0), user, password) if db or user or password is not None else None)
    first = given[0] or (0, None, None)
    if any(g is not None and g != first for g in given[1:]):
        raise ValueError("the sentinels name different databases or passwords: give them on the first sentinel "
                         "(sentinel://:PASSWORD@h1:26379/0;sentinel://h2:26379), or the same on each")
    return SentinelURL(tuple(sentinels), *first)


# query parameters whose value is hidden by redact(): passwords, tokens, keys, signatures (SQS/S3 presigned URLs)
SECRET_PARAM = re.compile(r"pass|pwd|secret|token|key|sig|auth|credential|session|cookie", re.IGNORECASE)
ENCODE_HINT = (
    "percent-encode it in the userinfo part, e.g. redis://:PASSWORD@host:6379/0 with / as %2F, ? as %3F, # as %23, "
    "[ as %5B, ] as %5D, % as %25 (Python: urllib.parse.quote(password, safe=''))"
)


def redact(url: str | None) -> str:
    """A URL with its password (userinfo) and secret-looking query values replaced by ``***``, for logs and output.

    A URL whose userinfo holds an unencoded ``/``, ``?`` or ``#`` is ambiguous: everything up to its last
    ``@`` is hidden.
    """
    if not url or "://" not in url:
        return url or ""
    if _NEXT_URL.search(url):  # sentinel://h1;sentinel://h2: each URL of the list on its own
        return ";".join(redact(part) for part in _NEXT_URL.split(url))
    scheme, rest = url.split("://", 1)
    parts = _parse(url)
    if parts is None or "@" in parts.path + parts.query + parts.fragment:
        if "@" not in rest:
            return f"{scheme}://{_redact_query(rest)}"
        return f"{scheme}://***@{_redact_query(rest.rsplit('@', 1)[1])}"
    netloc, tail = parts.netloc, rest[len(parts.netloc):]
    if "@" in netloc:
        userinfo, hostport = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
        netloc = f"{user + ':' if user else ''}***@{hostport}"
    return f"{scheme}://{netloc}{_redact_query(tail)}"


def scrub(text: str, *urls: str | None) -> str:
    """Text that may quote a URL (a driver's error message) with the URL's secrets hidden: the URL itself
    becomes :func:`redact`'s form, and its password (raw, percent-decoded, and each piece between URL
    delimiters, since a parser that splits a password at an unencoded ``@`` reports the rest as the host)
    and secret query values become ``***``."""
    for url in urls:
        if not url or "://" not in url:
            continue
        text = text.replace(url, redact(url))
        for secret in sorted(_secrets(url), key=len, reverse=True):
            text = text.replace(secret, "***")
    return text


def _secrets(url: str) -> set[str]:
    rest = url.split("://", 1)[1]
    userinfo = rest.rpartition("@")[0]  # up to the last @: the most any parser may take as the userinfo
    user, colon, password = userinfo.partition(":")
    whole = [password if colon else user]
    for piece in rest.partition("?")[2].split("&"):
        name, eq, value = piece.partition("=")
        if eq and value and SECRET_PARAM.search(unquote_plus(name)):
            whole.append(value.split("#", 1)[0])
    out: set[str] = set()
    for secret in whole:
        for form in {secret, unquote(secret), unquote_plus(secret)}:
            if len(form) >= 3:
                out.add(form)
            out.update(p for p in re.split(r"[@:/?#\[\]]", form) if len(p) >= 4)
    return out


def _parse(url: str) -> SplitResult | None:
    """urlsplit, or None where it (or its port) does not parse."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return None
    return parts


def _redact_query(tail: str) -> str:
    head, sep, query = tail.partition("?")
    if not sep:
        return tail
    query, hash_, fragment = query.partition("#")
    pieces = []
    for piece in query.split("&"):
        name, eq, value = piece.partition("=")
        pieces.append(f"{name}=***" if eq and value and SECRET_PARAM.search(unquote_plus(name)) else piece)
    return f"{head}?{'&'.join(pieces)}{hash_}{fragment}"


def _split(url: str) -> SplitResult:
    """The URL's parts; ValueError (never quoting the URL) where its userinfo or port is malformed."""
    if "://" not in url:
        raise ValueError("is not a URL: it must look like scheme://host")
    try:
        parts = urlsplit(url)
    except ValueError:  # an unbalanced [ or ] in the host part
        raise ValueError(f"cannot be parsed: if a password holds [ or ], {ENCODE_HINT}") from None
    if "@" in parts.path + parts.query + parts.fragment:
        raise ValueError(f"the password (or user name) holds an unencoded /, ? or #: {ENCODE_HINT}")
    try:
        parts.port  # noqa: B018
    except ValueError:
        raise ValueError("the port after the host must be a number between 0 and 65535") from None
    return parts


def check_redis_url(url: str) -> str:
    """A Redis URL as redis-py accepts it, unchanged; ValueError says what is wrong without echoing secrets."""
    from redis.connection import parse_url

    if is_sentinel_url(url):
        parse_sentinel_url(url)
        return url
    parts = _split(url)
    scheme = parts.scheme.lower()
    if scheme not in REDIS_SCHEMES:
        raise ValueError(f"a Redis URL starts with redis://, rediss://, unix:// or sentinel://, not {scheme}://")
    query = _query(parts)
    _given_once(parts, query)
    if scheme != "unix" and "db" not in query:
        db = unquote(parts.path).replace("/", "")
        if db and not db.isdigit():
            raise ValueError("the database after the host must be a number, e.g. redis://host:6379/0")
    try:
        parse_url(url)
    except (ValueError, TypeError) as exc:  # redis-py's messages name the parameter, never its value
        raise ValueError(f"redis-py does not accept it: {exc}") from None
    return url


def check_broker_url(url: str) -> str:
    """A broker URL kombu can use: ``?password=``/``?username=`` (and a Redis ``?db=``) moved into the URL proper."""
    scheme = url.split("://", 1)[0].lower()
    if scheme == "memory":
        return url
    if scheme == SENTINEL_SCHEME:
        parse_sentinel_url(url)
        return url
    if _NEXT_URL.search(url):  # amqp://node1//;amqp://node2//: kombu's failover list (a RabbitMQ cluster)
        brokers = [part.strip() for part in _NEXT_URL.split(url)]
        if len({b.split("://", 1)[0].lower() for b in brokers}) > 1:
            raise ValueError("every URL of a failover list has the same scheme (amqp://node1//;amqp://node2//)")
        return ";".join(check_broker_url(b) for b in brokers)
    if scheme in ("redis", "rediss"):
        check_redis_url(url)
    parts = _split(url)
    query = _query(parts)
    _given_once(parts, query)
    moved = {"password", "username"} | ({"db"} if scheme in ("redis", "rediss") else set())
    if not moved & set(query):
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if "username" in query:
        user = quote(query["username"], safe="")
    if "password" in query:
        password, colon = quote(query["password"], safe=""), ":"
    netloc = f"{user}{colon}{password}@{hostport}" if user or colon else hostport
    path = f"/{query['db']}" if "db" in query and scheme in ("redis", "rediss") else parts.path
    kept = [p for p in parts.query.split("&") if p and unquote_plus(p.partition("=")[0]) not in moved]
    return SplitResult(parts.scheme, netloc, path, "&".join(kept), parts.fragment).geturl()


def _given_once(parts: SplitResult, query: dict[str, str]) -> None:
    if parts.password is not None and "password" in query:
        raise ValueError("the password is given twice (in the userinfo part and as ?password=): keep one")
    if parts.username and "username" in query:
        raise ValueError("the user name is given twice (in the userinfo part and as ?username=): keep one")


def _query(parts: SplitResult) -> dict[str, str]:
    """Query parameters as redis-py reads them: the first value of each, decoded twice (parse_qs, then unquote)."""
    out: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=False):
        out.setdefault(name, unquote(value))
    return out


def check_endpoint_url(url: str) -> str:
    """An S3/SQS endpoint: http:// or https:// with a host; ValueError says what to set."""
    if "://" not in url:
        raise ValueError(f"must be an http:// or https:// URL with a host, e.g. http://localhost:9000, not {redact(url)!r}")
    try:
        parts = _split(url)
    except ValueError as exc:
        raise ValueError(f"{exc} (an endpoint looks like http://localhost:9000)") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL with a host, e.g. http://localhost:9000, not {redact(url)!r}")
    return url

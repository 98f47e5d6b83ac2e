"""Who is asking, and may they change things: users, a token, an SSO proxy's header; CSRF tokens.

Nobody is let in anonymously. Three ways in, any of which settings may enable:

- ``LABELQ_CONSOLE_USERS=alice:pw1,bob:pw2`` (or ``LABELQ_CONSOLE_USERS_FILE``): a sign-in form; the
  session lives in Redis (:class:`Sessions`) and the cookie (signed, SameSite=Strict, HttpOnly) holds
  only its id, so signing out ends it, and every other session of that user, for good. Failed
  sign-ins are throttled per user and per address (:class:`Throttle`).
- ``LABELQ_CONSOLE_TOKEN``: ``Authorization: Bearer TOKEN`` (scripts), or sign in as user ``token``.
- ``LABELQ_CONSOLE_AUTH_HEADER=X-Forwarded-User``: an SSO proxy in front of the console has
  authenticated the user and names them in this header. Trusted as is: the console must then
  be reachable only through the proxy (docs/console.md).

Roles: ``viewer`` looks, ``reviewer`` also decides review items, ``admin`` also retries jobs and
decides in bulk. ``LABELQ_CONSOLE_ROLES=alice:admin,bob:reviewer`` (or a ``role`` in the users
file) names them; without it every user who may write is an admin (as before roles existed).
``LABELQ_CONSOLE_VIEWERS`` and ``LABELQ_CONSOLE_READ_ONLY`` make viewers. Every state change is a POST carrying the session's CSRF token, except
requests authenticated by a bearer token (a browser never sends one by itself).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import keys
from ..config import Settings
from ..errors import UsageError

TOKEN_USER = "token"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_FIELD = "sid"
SESSION_SECONDS = 12 * 3600  # a session's life; the cookie's too
ROLES = ("viewer", "reviewer", "admin")
THROTTLE_WINDOW = 900  # seconds failed sign-ins are remembered
THROTTLE_USER = 5  # failed sign-ins of one user name per window before it is refused
THROTTLE_ADDRESS = 30  # failed sign-ins from one address per window before it is refused


@dataclass(frozen=True)
class User:
    name: str
    can_write: bool
    via: str  # session | token | header
    role: str = "admin"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin" and self.can_write


def parse_users(text: str | None) -> dict[str, str]:
    """``name:password,name:password`` → {name: password}; UsageError on a malformed entry."""
    users: dict[str, str] = {}
    for entry in (text or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, password = entry.partition(":")
        if not sep or not name.strip() or not password:
            raise UsageError("LABELQ_CONSOLE_USERS: write name:password pairs separated by commas")
        users[name.strip()] = password
    return users


def parse_roles(text: str | None) -> dict[str, str]:
    """``name:role,name:role`` → {name: role}; UsageError on an unknown role."""
    roles: dict[str, str] = {}
    for entry in (text or "").split(","):
        if not entry.strip():
            continue
        name, _, role = entry.strip().rpartition(":")
        if not name or role not in ROLES:
            raise UsageError(f"LABELQ_CONSOLE_ROLES: write name:role pairs, role one of {', '.join(ROLES)}")
        roles[name.strip()] = role
    return roles


def read_users_file(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """A TOML file of ``[users.NAME]`` tables with ``password`` and ``role``: (passwords, roles)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"LABELQ_CONSOLE_USERS_FILE {path}: {exc}") from None
    passwords, roles = {}, {}
    for name, entry in (data.get("users") or {}).items():
        if not isinstance(entry, dict) or not entry.get("password"):
            raise UsageError(f"LABELQ_CONSOLE_USERS_FILE {path}: [users.{name}] needs a password")
        role = entry.get("role", "reviewer")
        if role not in ROLES:
            raise UsageError(f"LABELQ_CONSOLE_USERS_FILE {path}: role of {name} must be one of {', '.join(ROLES)}")
        passwords[name], roles[name] = str(entry["password"]), role
    return passwords, roles


class Sessions:
    """Sessions in Redis: the cookie names one; it ends when its user signs out anywhere, or after 12 h."""

    def __init__(self, redis: Any, seconds: int = SESSION_SECONDS) -> None:
        self.redis = redis
        self.seconds = seconds

    def _key(self, sid: str) -> str:
        return f"{keys.CONSOLE}session:{sid}"

    def _user_key(self, name: str) -> str:
        return f"{keys.CONSOLE}user-sessions:{name}"

    def start(self, name: str) -> str:
        sid = secrets.token_urlsafe(32)
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self._key(sid), name, ex=self.seconds)
        pipe.sadd(self._user_key(name), sid)
        pipe.expire(self._user_key(name), self.seconds)
        pipe.execute()
        return sid

    def user(self, sid: str | None) -> str | None:
        if not sid:
            return None
        name = self.redis.get(self._key(sid))
        return (name.decode() if isinstance(name, bytes) else name) if name else None

    def end_all(self, name: str) -> int:
        """Sign a user out everywhere: every session of theirs ends."""
        sids = [s.decode() if isinstance(s, bytes) else s for s in self.redis.smembers(self._user_key(name))]
        pipe = self.redis.pipeline(transaction=True)
        for sid in sids:
            pipe.delete(self._key(sid))
        pipe.delete(self._user_key(name))
        pipe.execute()
        return len(sids)


class Throttle:
    """Failed sign-ins counted per user name and per address in a window; past a limit, refused until it ends."""

    def __init__(self, redis: Any, *, window: int = THROTTLE_WINDOW, per_user: int = THROTTLE_USER,
                 per_address: int = THROTTLE_ADDRESS) -> None:
        self.redis = redis
        self.window, self.per_user, self.per_address = window, per_user, per_address

    def _keys(self, name: str, address: str) -> tuple[str, str]:
        return f"{keys.CONSOLE}throttle:user:{name[:128]}", f"{keys.CONSOLE}throttle:addr:{address}"

    def wait(self, name: str, address: str) -> int:
        """Seconds until this user or address may try again (0: now)."""
        ukey, akey = self._keys(name, address)
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(ukey)
        pipe.get(akey)
        pipe.ttl(ukey)
        pipe.ttl(akey)
        u, a, uttl, attl = pipe.execute()
        waits = [int(ttl) for n, ttl, limit in ((u, uttl, self.per_user), (a, attl, self.per_address))
                 if n is not None and int(n) >= limit]
        return max([max(1, w) for w in waits], default=0)

    def failed(self, name: str, address: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for key in self._keys(name, address):
            pipe.set(key, 0, ex=self.window, nx=True)  # the window starts at the first failure (INCR keeps the TTL)
            pipe.incr(key)
        pipe.execute()

    def succeeded(self, name: str) -> None:
        self.redis.delete(self._keys(name, "")[0])


class Auth:
    def __init__(self, settings: Settings, redis: Any = None) -> None:
        self.users = parse_users(settings.console_users)
        self.roles = parse_roles(settings.console_roles)
        self.explicit_roles = bool(self.roles)
        if settings.console_users_file is not None:
            passwords, file_roles = read_users_file(settings.console_users_file)
            self.users.update(passwords)
            self.roles.update(file_roles)
            self.explicit_roles = True
        self.token = settings.console_token or None
        if self.token:
            self.users.setdefault(TOKEN_USER, self.token)
        self.header = (settings.console_auth_header or "").strip().lower() or None
        self.viewers = set(settings.console_viewers)
        self.read_only = settings.console_read_only
        self.sessions = Sessions(redis) if redis is not None else None
        self.throttle = Throttle(redis) if redis is not None else None

    @property
    def configured(self) -> bool:
        return bool(self.users or self.header)

    def require_configured(self) -> None:
        if not self.configured:
            raise UsageError(
                "the console admits nobody anonymously: set LABELQ_CONSOLE_USERS=name:password, "
                "LABELQ_CONSOLE_TOKEN, or LABELQ_CONSOLE_AUTH_HEADER behind an SSO proxy (docs/console.md)"
            )

    def role(self, name: str) -> str:
        if self.read_only or name in self.viewers:
            return "viewer"
        return self.roles.get(name) or ("reviewer" if self.explicit_roles else "admin")

    def user(self, name: str, via: str) -> User:
        role = self.role(name)
        return User(name, role != "viewer", via, role)

    def check_password(self, name: str, password: str) -> User | None:
        expected = self.users.get(name)
        # compare against something even for unknown names, so timing does not tell which names exist
        ok = hmac.compare_digest((expected or secrets.token_hex(16)).encode(), password.encode())
        return self.user(name, "session") if ok and expected is not None else None

    def from_request(self, request: Any) -> User | None:
        if self.header:
            name = request.headers.get(self.header, "").strip()
            if name:
                return self.user(name, "header")
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if self.token and scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token.encode()):
            return self.user(TOKEN_USER, "token")
        sid = request.session.get(SESSION_FIELD)
        name = self.sessions.user(sid) if self.sessions is not None else None
        if name and name in self.users:  # a user removed from settings is signed out
            return self.user(name, "session")
        return None


def csrf_token(request: Any) -> str:
    """The session's CSRF token (made on first use); every form posts it back."""
    token = request.session.get(CSRF_FIELD)
    if not token:
        token = secrets.token_urlsafe(32)
        request.session[CSRF_FIELD] = token
    return str(token)


def csrf_ok(request: Any, form: Any) -> bool:
    expected = request.session.get(CSRF_FIELD)
    sent = (form.get(CSRF_FIELD) if form is not None else None) or request.headers.get(CSRF_HEADER)
    return bool(expected) and isinstance(sent, str) and hmac.compare_digest(sent.encode(), str(expected).encode())

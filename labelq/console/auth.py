"""Who is asking, and may they change things: users, a token, an SSO proxy's header; CSRF tokens.

Nobody is let in anonymously. Three ways in, any of which settings may enable:

- ``LABELQ_CONSOLE_USERS=alice:pw1,bob:pw2``: a sign-in form; the session is a signed cookie
  (SameSite=Strict, HttpOnly).
- ``LABELQ_CONSOLE_TOKEN``: ``Authorization: Bearer TOKEN`` (scripts), or sign in as user ``token``.
- ``LABELQ_CONSOLE_AUTH_HEADER=X-Forwarded-User``: an SSO proxy in front of the console has
  authenticated the user and names them in this header. Trusted as is: the console must then
  be reachable only through the proxy (docs/console.md).

Viewers (``LABELQ_CONSOLE_VIEWERS``, or everyone with ``LABELQ_CONSOLE_READ_ONLY``) may look
but not change. Every state change is a POST carrying the session's CSRF token, except
requests authenticated by a bearer token (a browser never sends one by itself).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from ..config import Settings
from ..errors import UsageError

TOKEN_USER = "token"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True)
class User:
    name: str
    can_write: bool
    via: str  # session | token | header


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


class Auth:
    def __init__(self, settings: Settings) -> None:
        self.users = parse_users(settings.console_users)
        self.token = settings.console_token or None
        if self.token:
            self.users.setdefault(TOKEN_USER, self.token)
        self.header = (settings.console_auth_header or "").strip().lower() or None
        self.viewers = set(settings.console_viewers)
        self.read_only = settings.console_read_only

    @property
    def configured(self) -> bool:
        return bool(self.users or self.header)

    def require_configured(self) -> None:
        if not self.configured:
            raise UsageError(
                "the console admits nobody anonymously: set LABELQ_CONSOLE_USERS=name:password, "
                "LABELQ_CONSOLE_TOKEN, or LABELQ_CONSOLE_AUTH_HEADER behind an SSO proxy (docs/console.md)"
            )

    def user(self, name: str, via: str) -> User:
        return User(name, not self.read_only and name not in self.viewers, via)

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
        name = request.session.get("user")
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

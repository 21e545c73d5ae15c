"""Who is looking at the dashboard: sessions opened with an API key, their role, and the
CSRF token every form and htmx request must carry.

Sessions live in memory (a restart signs everyone out); the cookie holds only a random
session id. A session of a virtual key ends when the key is revoked (checked on every
request). Roles: ``admin`` (an admin key, or any caller when the server needs no key),
``reviewer`` (a key with that role), ``viewer`` (any other key).
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

from fastapi import Request

from inferline.tenants import Tenants

COOKIE = "inferline_session"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_S = 12 * 3600
ROLES = ("viewer", "reviewer", "admin")


@dataclass
class Session:
    """One signed-in browser."""

    role: str
    name: str
    key_id: str | None = None
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    expires_at: float = field(default_factory=lambda: time.time() + SESSION_S)

    def may(self, role: str) -> bool:
        """Whether this session has ``role`` or a higher one."""
        return ROLES.index(self.role) >= ROLES.index(role)


class Sessions:
    """The open sessions, by cookie value."""

    def __init__(self, tenants: Tenants) -> None:
        self.tenants = tenants
        self._sessions: dict[str, Session] = {}

    def open(self, token: str) -> tuple[str, Session] | None:
        """A new session for an API key (None: not a valid key)."""
        identity = self.tenants.identify(token)
        if identity is None:
            return None
        if identity.is_admin:
            session = Session("admin", "admin")
        else:
            key = identity.key
            assert key is not None
            role = "reviewer" if key.role == "reviewer" else "viewer"
            session = Session(role, key.name or key.id, key.id)
        self._prune()
        cookie = secrets.token_urlsafe(32)
        self._sessions[cookie] = session
        return cookie, session

    def of(self, request: Request) -> Session | None:
        """The request's session; an admin one when the server needs no key."""
        if not self.tenants.requires_auth:
            return Session("admin", "local", csrf="local")
        cookie = request.cookies.get(COOKIE)
        session = self._sessions.get(cookie) if cookie else None
        if session is None or session.expires_at < time.time():
            return None
        if session.key_id is not None and not self.tenants.has_key(session.key_id):
            self._sessions.pop(cookie or "", None)  # revoked since
            return None
        return session

    def close(self, request: Request) -> None:
        """Ends the request's session."""
        self._sessions.pop(request.cookies.get(COOKIE) or "", None)

    def _prune(self) -> None:
        now = time.time()
        for cookie in [c for c, s in self._sessions.items() if s.expires_at < now]:
            del self._sessions[cookie]


def csrf_ok(session: Session, given: str | None) -> bool:
    """Whether a form's (or an htmx request's) CSRF token is the session's."""
    return given is not None and hmac.compare_digest(given.encode(), session.csrf.encode())

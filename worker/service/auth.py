"""Who may use the service: one token (DISPATCH_API_TOKEN, or generated under DISPATCH_HOME), sent as
`Authorization: Bearer` by programs or exchanged once for a session cookie by a browser; forms carry a
CSRF token. Every comparison is constant-time and no token is ever logged."""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from starlette.requests import Request

from worker.settings import Settings

COOKIE = "dispatch_session"
TOKEN_FILE = "api-token"


def api_token(settings: Settings) -> tuple[str, bool]:
    """The service's token and whether it was generated (kept under DISPATCH_HOME, owner-only)."""
    if settings.api_token:
        return settings.api_token, False
    path = Path(settings.home) / TOKEN_FILE
    try:
        stored = path.read_text().strip()
        if stored:
            return stored, True
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token)
    return token, True


class Guard:
    """Checks for one token: bearer headers, session cookies and CSRF form fields."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()
        self.session_value = self._derive("session")
        self.csrf_value = self._derive("csrf")

    def _derive(self, purpose: str) -> str:
        return hmac.new(self._token, purpose.encode(), hashlib.sha256).hexdigest()

    def is_token(self, candidate: str | None) -> bool:
        return bool(candidate) and hmac.compare_digest(candidate.encode(), self._token)

    def has_bearer(self, request: Request) -> bool:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.is_token(value.strip())

    def has_session(self, request: Request) -> bool:
        cookie = request.cookies.get(COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self.session_value.encode())

    def csrf_ok(self, submitted: str | None) -> bool:
        return bool(submitted) and hmac.compare_digest(submitted.encode(), self.csrf_value.encode())

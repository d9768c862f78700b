"""Signed session cookies of the operator console, and their CSRF tokens.

A session cookie is ``<session ID>.<expiry>.<MAC>``. The MAC is HMAC-SHA256
under a key derived with HKDF from the master key, salted with the hash of
the admin token. So every process of the service that shares the
configuration accepts the cookie, and changing either secret ends every
session at once. The CSRF token of a session is a second MAC over its ID.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

COOKIE_NAME = "webhooks_console_session"
_KEY_INFO = b"score-webhooks console session v1"


@dataclass(frozen=True, kw_only=True)
class Session:
    id: str  # 128 random bits, URL-safe base64
    expires_at: int  # Unix time in seconds


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class SessionSigner:
    """Issues and checks console session cookies and their CSRF tokens.

    Logging out revokes the session in this process only. Another process
    with the same configuration accepts the cookie until it expires, though
    the browser deleted it at logout.
    """

    def __init__(self, master_key: bytes, admin_token_hash: str, lifetime_s: float):
        self._key = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=admin_token_hash.encode(),
            info=_KEY_INFO,
        ).derive(master_key)
        self.lifetime_s = lifetime_s
        self._revoked: dict[str, int] = {}  # session ID to its expiry

    def _mac(self, purpose: str, message: str) -> str:
        data = f"{purpose}:{message}".encode()
        return _encode(hmac.new(self._key, data, hashlib.sha256).digest())

    def issue(self, now: float) -> tuple[Session, str]:
        """Start a session, and return it with the cookie value that carries it."""
        session = Session(
            id=secrets.token_urlsafe(16), expires_at=int(now + self.lifetime_s)
        )
        body = f"{session.id}.{session.expires_at}"
        return session, f"{body}.{self._mac('session', body)}"

    def verify(self, cookie: str, now: float) -> Session | None:
        """Return the session of a cookie value, or None if it is forged,
        expired or revoked."""
        session_id, _, rest = cookie.partition(".")
        expiry, _, mac = rest.partition(".")
        if not (session_id and expiry.isdigit() and mac):
            return None
        expected = self._mac("session", f"{session_id}.{expiry}")
        if not hmac.compare_digest(mac.encode(), expected.encode()):
            return None
        if int(expiry) <= now or session_id in self._revoked:
            return None
        return Session(id=session_id, expires_at=int(expiry))

    def revoke(self, session: Session, now: float) -> None:
        self._revoked = {
            session_id: expiry
            for session_id, expiry in self._revoked.items()
            if expiry > now
        }
        self._revoked[session.id] = session.expires_at

    def csrf_token(self, session: Session) -> str:
        return self._mac("csrf", session.id)

    def csrf_matches(self, session: Session, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self.csrf_token(session).encode())


SIGNER = web.AppKey("console_sessions", SessionSigner)


def current_session(request: web.Request) -> Session | None:
    """Return the session of the request's cookie, or None if it has no valid one."""
    cookie = request.cookies.get(COOKIE_NAME, "")
    return request.config_dict[SIGNER].verify(cookie, time.time())

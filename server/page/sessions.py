"""Who is looking at the operator page: sessions held in memory, one per login.

A session is opened by a login (today: an API key with the read or admin scope;
an OIDC login can open one too through `Sessions.start`, with `api_key=None`)
and named by a random id that only the browser holds, in an HttpOnly,
SameSite=Strict cookie. Each session carries its own CSRF token for any form
that writes. Only a hash of the id is kept, sessions end after `lifetime`, and
at most `limit` are held (the oldest leave first). Time and randomness are
passed in.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from server.store.model import ApiScope

__all__ = ["COOKIE", "Session", "Sessions"]

COOKIE = "tailnetd_session"
LIFETIME = timedelta(hours=12)
LIMIT = 1024
_ID_BYTES = 32


@dataclass(frozen=True, slots=True)
class Session:
    csrf: str  # the token a writing form must send back
    who: str  # for people: "API key 3", or an OIDC subject
    scope: ApiScope
    expires: datetime
    # The API key the login used, checked again on every request (an expired or
    # revoked key ends the session); None for a login that is not an API key.
    api_key: str | None = None

    def csrf_ok(self, presented: str) -> bool:
        return hmac.compare_digest(self.csrf.encode(), presented.encode())


def _digest(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()


class Sessions:
    def __init__(
        self,
        rng: Callable[[int], bytes],
        *,
        lifetime: timedelta = LIFETIME,
        limit: int = LIMIT,
    ) -> None:
        self._rng = rng
        self._lifetime = lifetime
        self._limit = limit
        self._held: dict[bytes, Session] = {}  # insertion order: oldest first

    def start(
        self, who: str, scope: ApiScope, now: datetime, *, api_key: str | None = None
    ) -> tuple[str, Session]:
        """A new session: its id (for the cookie, never stored) and the session."""
        self._forget_expired(now)
        while len(self._held) >= self._limit:
            del self._held[next(iter(self._held))]
        session_id = self._rng(_ID_BYTES).hex()
        session = Session(
            csrf=self._rng(_ID_BYTES).hex(),
            who=who,
            scope=scope,
            expires=now + self._lifetime,
            api_key=api_key,
        )
        self._held[_digest(session_id)] = session
        return session_id, session

    def get(self, session_id: str, now: datetime) -> Session | None:
        if not session_id or len(session_id) > 2 * _ID_BYTES:
            return None
        key = _digest(session_id)
        session = self._held.get(key)
        if session is not None and now >= session.expires:
            del self._held[key]
            return None
        return session

    def end(self, session_id: str) -> None:
        self._held.pop(_digest(session_id), None)

    def __len__(self) -> int:
        return len(self._held)

    def _forget_expired(self, now: datetime) -> None:
        for key in [k for k, s in self._held.items() if now >= s.expires]:
            del self._held[key]

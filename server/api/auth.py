"""Who is calling: the unix socket (the admin), or an API key over TCP.

A key is accepted the ways Tailscale's API takes one: `Authorization: Bearer
<key>`, or HTTP Basic with the key as the user name and an empty password
(what gitops-pusher and Tailscale's Go client send). A `read` key may use the
GET routes only; a write with it is a 403 and nothing changes. The refusal
never echoes the presented credential: the answer is unauthenticated.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from starlette.requests import Request

from server.api.problems import Problem
from server.store.interface import Store
from server.store.model import ApiScope, KeyRejected

__all__ = ["Caller", "authenticate", "credential", "require"]

Needs = Literal["public", "read", "admin", "socket"]

NEEDS_KEY = (
    "this API needs an API key: send the header `Authorization: Bearer <key>`"
    " (create a key with `tailnetd apikeys create` on the server)"
)
_SOCKET_ONLY = "API keys are created only on the server: run `tailnetd apikeys create` there"
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tailnetd", Basic realm="tailnetd"'}


@dataclass(frozen=True, slots=True)
class Caller:
    scope: ApiScope
    local: bool  # on the unix socket
    key_id: int | None = None
    key_prefix: str | None = None  # the key's public part, for the audit trail


def credential(header: str) -> str | None:
    """The API key in an Authorization header value, or None if there is none."""
    scheme, _, rest = header.strip().partition(" ")
    rest = rest.strip()
    if scheme.lower() == "bearer":
        return rest or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(rest, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, _, _password = decoded.partition(":")
        return user or None
    return None


def authenticate(request: Request, *, local: bool, store: Store, now: datetime) -> Caller:
    if local:
        return Caller("admin", local=True)
    text = credential(request.headers.get("authorization", ""))
    if text is None:
        raise Problem("unauthorized", NEEDS_KEY, headers=_CHALLENGE)
    try:
        key = store.use_api_key(text, now)
    except KeyRejected as exc:
        raise Problem("unauthorized", exc.reason, headers=_CHALLENGE) from None
    return Caller(key.scope, local=False, key_id=key.id, key_prefix=key.prefix)


def require(caller: Caller, needs: Needs) -> None:
    if needs == "socket" and not caller.local:
        raise Problem("forbidden", _SOCKET_ONLY)
    if needs == "admin" and caller.scope != "admin":
        raise Problem(
            "forbidden",
            "this API key has the read scope: it may look but not change anything"
            " (create an admin key with `tailnetd apikeys create --scope admin`)",
        )

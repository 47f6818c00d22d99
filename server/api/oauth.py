"""OAuth client credentials, as Tailscale's API offers them.

`POST /api/v2/oauth/token` is the client-credentials grant (RFC 6749 §4.4):
a client id and secret, in the form body or as HTTP Basic (how
golang.org/x/oauth2's `clientcredentials` sends them, and so gitops-pusher
with `TS_OAUTH_ID`/`TS_OAUTH_SECRET`), give an access token that lasts one
hour. The token is a bearer credential like an API key. Errors are OAuth's
own `{"error": …}` answers (§5.2), which OAuth clients read, not problem
documents; a wrong secret and an unknown client read alike.

Scopes are Tailscale's names. tailnetd has two levels, so a name maps to one:
`…:read` names (`all:read`, `devices:core:read`, `policy_file:read`, …) give
the read scope (GET routes), the others (`all`, `auth_keys`, `devices:core`,
`policy_file`, …) admin. A token request may name a subset of the client's
scopes (`all` covers every name, `all:read` every read name); its token is
admin only if a write name is among them.

Clients are made on the server (`tailnetd oauth-clients create --scope …`,
`/api/v1/oauth-clients` on the socket); the secret is shown once.
"""

from __future__ import annotations

import base64
import binascii
import logging
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, unquote_plus

from starlette.responses import JSONResponse

from server.api.common import optional_time
from server.api.deps import WebDeps
from server.api.endpoints import Call, Endpoint
from server.api.problems import Problem
from server.bodies import CreateOAuthClient
from server.logs import event
from server.store.model import ApiScope, KeyRejected, OAuthClient
from server.wire import format_time

__all__ = ["SCOPES", "TOKEN_LIFETIME", "endpoints", "token_scope"]

TOKEN_LIFETIME = timedelta(hours=1)  # Tailscale's access tokens last an hour
_MAX_FORM = 4096

# Tailscale's scope names (current and the older ones still accepted there).
_AREAS = (
    "all", "devices", "devices:core", "devices:routes", "devices:posture_attributes",
    "auth_keys", "policy_file", "acl", "routes", "dns", "users", "feature_settings",
    "oauth_keys", "webhooks", "services",
)  # fmt: skip
_READ_ONLY = ("logs:configuration:read", "logs:network:read")
SCOPES = frozenset(_AREAS) | frozenset(f"{a}:read" for a in _AREAS) | frozenset(_READ_ONLY)


def token_scope(names: frozenset[str]) -> ApiScope:
    return "read" if all(n.endswith(":read") for n in names) else "admin"


def _granted(client: OAuthClient, wanted: frozenset[str]) -> bool:
    have = set(client.scopes)
    for name in wanted:
        if name in have or "all" in have or (name.endswith(":read") and "all:read" in have):
            continue
        return False
    return True


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="tailnetd"'
    return JSONResponse({"error": error, "error_description": description}, status, headers)


def _client_credentials(call: Call, form: dict[str, list[str]]) -> tuple[str, str] | None:
    header = call.request.headers.get("authorization", "")
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(rest.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        # RFC 6749 §2.3.1: both are form-encoded before they are joined.
        return (unquote_plus(user), unquote_plus(password)) if sep else None
    ids, secrets = form.get("client_id", []), form.get("client_secret", [])
    if len(ids) == 1 and len(secrets) == 1:
        return ids[0], secrets[0]
    return None


def endpoints(deps: WebDeps) -> list[Endpoint]:
    store, clock = deps.store, deps.clock
    log = deps.log or logging.getLogger("tailnetd")

    def client_json(c: OAuthClient) -> dict[str, Any]:
        return {
            "id": c.id,
            "client_id": c.client_id,
            "scopes": list(c.scopes),
            "description": c.description,
            "created": format_time(c.created),
            "last_used": optional_time(c.last_used),
        }

    async def token(call: Call) -> Any:
        try:
            form = parse_qs(call.body.decode(), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            return _oauth_error(400, "invalid_request", "the body is not form-encoded text")
        if form.get("grant_type") != ["client_credentials"]:
            return _oauth_error(
                400, "unsupported_grant_type", "only grant_type=client_credentials is offered"
            )
        credentials = _client_credentials(call, form)
        if credentials is None:
            return _oauth_error(401, "invalid_client", "send client_id and client_secret")
        now = clock()
        try:
            client = store.use_oauth_client(*credentials, now)
        except KeyRejected as exc:
            return _oauth_error(401, "invalid_client", exc.reason)
        asked = " ".join(form.get("scope", [])).split()
        wanted = frozenset(asked) if asked else frozenset(client.scopes)
        if not _granted(client, wanted):
            return _oauth_error(400, "invalid_scope", "a scope asked for is not the client's")
        scope = token_scope(wanted)
        try:
            text, key = store.issue_oauth_token(
                client, scope=scope, expiration=now + TOKEN_LIFETIME, now=now, rng=deps.rng
            )
        except KeyRejected as exc:
            return _oauth_error(401, "invalid_client", exc.reason)
        log.info(
            "api: OAuth client %s issued a %s token", client.client_id, scope,
            extra=event("api.oauth_token", client=client.client_id, key=key.id, scope=scope),
        )  # fmt: skip
        answer = {
            "access_token": text,
            "token_type": "Bearer",
            "expires_in": int(TOKEN_LIFETIME.total_seconds()),
            "scope": " ".join(sorted(wanted)),
        }
        return JSONResponse(answer, headers={"Cache-Control": "no-store"})

    async def create_client(call: Call) -> Any:
        body: CreateOAuthClient = call.body
        unknown = sorted(set(body.scopes) - SCOPES)
        if unknown or not body.scopes:
            raise Problem(
                "invalid-body",
                f"unknown scope {', '.join(unknown)}: use Tailscale's names, e.g. "
                "all:read, devices:core:read, policy_file:read, auth_keys, all"
                if unknown
                else "an OAuth client needs at least one scope",
            )
        secret, client = store.create_oauth_client(
            scopes=body.scopes, description=body.description, now=clock(), rng=deps.rng
        )
        log.info(
            "api: OAuth client %s created", client.client_id,
            extra=event("api.oauth_client_created", client=client.client_id),
        )  # fmt: skip
        return {"client_secret": secret, **client_json(client)}

    async def list_clients(call: Call) -> Any:
        return [client_json(c) for c in store.list_oauth_clients()]

    async def delete_client(call: Call) -> Any:
        ref = call.path("ref")
        client = store.delete_oauth_client(int(ref) if ref.isdigit() else ref)
        log.info(
            "api: OAuth client %s deleted", client.client_id,
            extra=event("api.oauth_client_deleted", client=client.client_id),
        )  # fmt: skip
        return client_json(client)

    clients = "/api/v1/oauth-clients"
    return [
        Endpoint(
            "POST", "/api/v2/oauth/token", token,
            "OAuth client credentials grant: an access token for an hour", "v2 oauth",
            needs="public", raw_body="application/x-www-form-urlencoded", limit=_MAX_FORM,
        ),
        Endpoint("GET", clients, list_clients, "List OAuth clients", "oauth clients"),
        Endpoint(
            "POST", clients, create_client, "Create an OAuth client (secret shown once)",
            "oauth clients", needs="socket", body=CreateOAuthClient,
        ),
        Endpoint(
            "DELETE", f"{clients}/{{ref}}", delete_client,
            "Delete an OAuth client and its tokens", "oauth clients", needs="socket",
        ),
    ]  # fmt: skip

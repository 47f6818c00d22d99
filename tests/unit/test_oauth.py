"""OAuth client credentials (`POST /api/v2/oauth/token`): what a CI job with
TS_OAUTH_ID/TS_OAUTH_SECRET relies on, and what an admin relies on when
handing one out: a wrong secret gets nothing, a token dies after its hour or
with its client, and a read scope cannot write."""

from __future__ import annotations

import base64
import random
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from server.store import KeyRejected, SqlStore
from tests.unit.test_admin_api import NOW, Answer, Apis, apis, request
from tests.unit.test_api_v2 import v2

__all__ = ["apis"]

TOKEN = "/api/v2/oauth/token"


def new_client(apis: Apis, *scopes: str) -> tuple[str, str]:
    answer = request(apis.socket, "POST", "/api/v1/oauth-clients", body={"scopes": list(scopes)})
    assert answer.status == 200, answer.body
    return str(answer.body["client_id"]), str(answer.body["client_secret"])


def ask(apis: Apis, form: dict[str, str], basic: tuple[str, str] | None = None) -> Answer:
    token = None
    if basic is not None:  # as golang.org/x/oauth2 sends it: each part form-encoded
        joined = f"{quote(basic[0], safe='')}:{quote(basic[1], safe='')}"
        token = "Basic " + base64.b64encode(joined.encode()).decode()
    return request(apis.tcp, "POST", TOKEN, raw=urlencode(form).encode(), token=token)


def grant(apis: Apis, client: tuple[str, str], **extra: str) -> dict[str, Any]:
    answer = ask(apis, {"grant_type": "client_credentials", **extra}, basic=client)
    assert answer.status == 200, answer.body
    return dict(answer.body)


def bearer(token: dict[str, Any]) -> str:
    return f"Bearer {token['access_token']}"


def test_a_client_gets_an_hour_long_token_that_reads(apis: Apis) -> None:
    client = new_client(apis, "devices:core:read", "policy_file:read")
    token = grant(apis, client)
    assert token["token_type"] == "Bearer" and token["expires_in"] == 3600
    assert token["scope"] == "devices:core:read policy_file:read"
    app = v2(apis, local=False)
    listed = request(app, "GET", "/api/v2/tailnet/-/devices", token=bearer(token))
    assert listed.status == 200, listed.body
    # The id and secret in the form body work too (RFC 6749 §2.3.1).
    form = {"grant_type": "client_credentials", "client_id": client[0], "client_secret": client[1]}
    assert ask(apis, form).status == 200


def test_a_read_token_cannot_write_and_a_write_scope_can(apis: Apis) -> None:
    app = v2(apis, local=False)
    body = {"capabilities": {"devices": {"create": {"tags": ["tag:ci"]}}}}
    reader = bearer(grant(apis, new_client(apis, "all:read")))
    refused = request(app, "POST", "/api/v2/tailnet/-/keys", token=reader, body=body)
    assert refused.status == 403
    assert apis.store.list_preauth_keys() == []
    writer = bearer(grant(apis, new_client(apis, "auth_keys")))
    created = request(app, "POST", "/api/v2/tailnet/-/keys", token=writer, body=body)
    assert created.status == 200, created.body


def test_a_token_may_ask_for_less_than_its_client_has_never_more(apis: Apis) -> None:
    client = new_client(apis, "all")
    narrowed = grant(apis, client, scope="devices:core:read")
    assert narrowed["scope"] == "devices:core:read"
    app = v2(apis, local=False)
    body = {"capabilities": {"devices": {"create": {"tags": ["tag:ci"]}}}}
    assert (
        request(app, "POST", "/api/v2/tailnet/-/keys", token=bearer(narrowed), body=body).status
        == 403
    )  # noqa: E501
    reader = new_client(apis, "devices:core:read")
    wider = ask(apis, {"grant_type": "client_credentials", "scope": "all"}, basic=reader)
    assert wider.status == 400 and wider.body["error"] == "invalid_scope"


def test_a_wrong_secret_or_unknown_client_gets_nothing(apis: Apis) -> None:
    client_id, secret = new_client(apis, "all:read")
    other_id, _ = new_client(apis, "all")
    wrong = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    for credentials in ((client_id, wrong), (other_id, secret), ("nobody", secret), ("", "")):
        answer = ask(apis, {"grant_type": "client_credentials"}, basic=credentials)
        assert answer.status == 401 and answer.body["error"] == "invalid_client"
        assert secret not in str(answer.body)
    missing = ask(apis, {"grant_type": "client_credentials"})
    assert missing.status == 401
    grant_type = ask(apis, {"grant_type": "password"}, basic=(client_id, secret))
    assert grant_type.status == 400 and grant_type.body["error"] == "unsupported_grant_type"


def test_a_refused_token_request_is_in_the_audit_trail_a_granted_one_is_not(apis: Apis) -> None:
    client_id, secret = new_client(apis, "all:read")
    grant(apis, (client_id, secret))
    ask(apis, {"grant_type": "client_credentials"}, basic=(client_id, "wrong"))
    answer = request(apis.socket, "GET", "/api/v1/audit")
    token_rows = [r for r in answer.body["audit"] if r["action"] == "v2.token"]
    assert [(r["status"], r["result"]) for r in token_rows] == [(401, "refused")]
    assert secret not in str(answer.body) and "wrong" not in str(token_rows)


def test_a_token_expires_after_its_hour_and_dies_with_its_client(apis: Apis) -> None:
    app = v2(apis, local=False)
    client = new_client(apis, "all:read")
    old = bearer(grant(apis, client))
    apis.clock.now = NOW + timedelta(hours=1)
    expired = request(app, "GET", "/api/v2/tailnet/-/devices", token=old)
    assert expired.status == 401 and "expired" in expired.body["detail"]
    fresh = bearer(grant(apis, client))
    assert request(app, "GET", "/api/v2/tailnet/-/devices", token=fresh).status == 200
    deleted = request(apis.socket, "DELETE", f"/api/v1/oauth-clients/{client[0]}")
    assert deleted.status == 200, deleted.body
    assert request(app, "GET", "/api/v2/tailnet/-/devices", token=fresh).status == 401
    assert ask(apis, {"grant_type": "client_credentials"}, basic=client).status == 401


def test_clients_are_made_on_the_server_with_tailscales_scope_names(apis: Apis) -> None:
    unknown = request(apis.socket, "POST", "/api/v1/oauth-clients", body={"scopes": ["root"]})
    assert unknown.status == 400 and "root" in unknown.body["detail"]
    none = request(apis.socket, "POST", "/api/v1/oauth-clients", body={"scopes": []})
    assert none.status == 400
    admin_key = request(apis.socket, "POST", "/api/v1/apikeys", body={}).body["key"]
    over_tcp = request(
        apis.tcp, "POST", "/api/v1/oauth-clients", body={"scopes": ["all"]},
        token=f"Bearer {admin_key}",
    )  # fmt: skip
    assert over_tcp.status == 403
    client_id, secret = new_client(apis, "all:read")
    assert secret.startswith(f"tskey-client-{client_id}-")
    grant(apis, (client_id, secret))
    listed = request(apis.socket, "GET", "/api/v1/oauth-clients").body
    assert [c["client_id"] for c in listed] == [client_id]
    assert "client_secret" not in listed[0] and secret not in str(listed)
    # Tokens are not API keys an admin has to manage.
    assert [k.id for k in apis.store.list_api_keys()] == [1]


def test_the_store_keeps_clients_hashed_on_both_backends(store: SqlStore) -> None:
    rng = random.Random(3).randbytes
    secret, client = store.create_oauth_client(
        scopes=("all:read",), description="ci", now=NOW, rng=rng
    )
    used = store.use_oauth_client(client.client_id, secret, NOW)
    assert used.scopes == ("all:read",) and used.description == "ci"
    text, key = store.issue_oauth_token(
        used, scope="read", expiration=NOW + timedelta(hours=1), now=NOW, rng=rng
    )
    assert store.use_api_key(text, NOW).scope == "read"
    assert store.list_api_keys() == []
    with pytest.raises(KeyRejected):
        store.use_oauth_client(client.client_id, secret.replace("tskey-client-", "tskey-api-"), NOW)
    store.delete_oauth_client(client.id)
    with pytest.raises(KeyRejected):
        store.use_api_key(text, NOW)
    with pytest.raises(KeyRejected):
        store.issue_oauth_token(used, scope="read", expiration=NOW, now=NOW, rng=rng)
    assert store.list_oauth_clients() == [] and key.id

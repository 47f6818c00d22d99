"""Tailscale's API shapes at /api/v2: devices, keys, and the policy file with
its ETag and validation (the real gitops-pusher is in tests/e2e)."""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any

import pytest
from starlette.applications import Starlette

from gitctl.sources import Documents
from server.api import build_app
from server.wire import Hostinfo
from tests.unit.test_admin_api import NOW, Apis, apis, request, written
from tests.unit.test_store import add_node

__all__ = ["apis"]

USERS = b"users:\n  - {name: alice, email: a@example.com}\n  - {name: bob, email: b@example.com}\n"
POLICY = """// the policy
{
	"tagOwners": {"tag:web": ["a@example.com"]},
	"acls": [{"action": "accept", "src": ["a@example.com"], "dst": ["tag:web:443"]}],
}
"""
DOCS = Documents(
    "tailnet.d",
    {"tailnet.d/policy.hujson": POLICY.encode(), "tailnet.d/users.yaml": USERS},
    None,
)


def v2(apis: Apis, *, local: bool) -> Starlette:
    async def documents() -> Any:
        return DOCS

    return build_app(replace(apis.deps, local=local, documents=documents))


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def new_key(apis: Apis, scope: str = "admin") -> str:
    answer = request(apis.socket, "POST", "/api/v1/apikeys", body={"scope": scope})
    return str(answer.body["key"])


def test_devices_in_tailscale_shape(apis: Apis) -> None:
    add_node(apis.store, 1, "laptop", hostinfo=Hostinfo(os="linux", ipn_version="1.96.4-t1"))
    app = v2(apis, local=False)
    token = basic(new_key(apis, "read"))
    listed = request(app, "GET", "/api/v2/tailnet/-/devices", token=token)
    assert listed.status == 200, listed.body
    (device,) = listed.body["devices"]
    assert device["id"] == "1" and device["hostname"] == "laptop"
    assert (device["os"], device["clientVersion"]) == ("linux", "1.96.4-t1")  # from Hostinfo
    assert device["user"] == "a@example.com" and device["authorized"] is True
    assert device["isEphemeral"] is False
    assert device["addresses"] and device["addresses"][0].startswith("100.")
    one = request(app, "GET", "/api/v2/device/1", token=token)
    assert one.body == device
    routes = request(app, "GET", "/api/v2/device/1/routes", token=token)
    assert routes.body == {"advertisedRoutes": [], "enabledRoutes": []}
    other = request(app, "GET", "/api/v2/tailnet/example.org/devices", token=token)
    assert other.status == 404 and "'-'" in other.body["message"]


def test_device_writes_need_an_admin_key_and_go_through_the_registry(apis: Apis) -> None:
    add_node(apis.store, 1, "laptop")
    app = v2(apis, local=False)
    read, admin = basic(new_key(apis, "read")), basic(new_key(apis))
    before = written(apis)[:2]  # the keys record their last use
    for method, path, body in (
        ("POST", "/api/v2/device/1/tags", {"tags": ["tag:ci"]}),
        ("POST", "/api/v2/device/1/authorized", {"authorized": True}),
        ("DELETE", "/api/v2/device/1", None),
    ):
        assert request(app, method, path, body=body).status == 401
        assert request(app, method, path, token=read, body=body).status == 403
    assert written(apis)[:2] == before
    tagged = request(app, "POST", "/api/v2/device/1/tags", token=admin, body={"tags": ["tag:ci"]})
    assert tagged.status == 200, tagged.body
    assert apis.store.get_node(1).tags == ("tag:ci",)  # type: ignore[union-attr]
    no = request(
        app, "POST", "/api/v2/device/1/authorized", token=admin, body={"authorized": False}
    )
    assert no.status == 400 and "pre-auth key" in no.body["message"]
    routes = request(app, "POST", "/api/v2/device/1/routes", token=admin, body={"routes": []})
    assert routes.status == 405 and "commit" in routes.body["message"]
    assert request(app, "DELETE", "/api/v2/device/1", token=admin).status == 200
    assert apis.store.get_node(1) is None


def test_auth_keys_are_tagged_and_listed(apis: Apis) -> None:
    app = v2(apis, local=True)
    body = {
        "capabilities": {"devices": {"create": {"reusable": True, "tags": ["tag:ci"]}}},
        "expirySeconds": 3600,
    }
    created = request(app, "POST", "/api/v2/tailnet/-/keys", body=body)
    assert created.status == 200, created.body
    assert created.body["key"].startswith("tskey-auth-")
    assert created.body["capabilities"]["devices"]["create"]["tags"] == ["tag:ci"]
    assert created.body["expires"].startswith("2025-03-01T13:00")
    (key,) = request(app, "GET", "/api/v2/tailnet/-/keys").body["keys"]
    assert key["id"] == created.body["id"] and "key" not in key
    assert key["keyType"] == "auth" == created.body["keyType"]
    # Tailscale's Go client sends expirySeconds 0 when unset: the default, 90 days.
    unset = request(app, "POST", "/api/v2/tailnet/-/keys", body={**body, "expirySeconds": 0})
    assert unset.status == 200 and unset.body["expires"].startswith("2025-05-30T12:00"), unset.body
    negative = request(app, "POST", "/api/v2/tailnet/-/keys", body={**body, "expirySeconds": -1})
    assert negative.status == 400
    untagged = request(app, "POST", "/api/v2/tailnet/-/keys", body={})
    assert untagged.status == 400 and untagged.body["field"] == "capabilities.devices.create.tags"
    nested = request(
        app, "POST", "/api/v2/tailnet/-/keys",
        body={"capabilities": {"devices": {"create": {"tags": "tag:ci"}}}},
    )  # fmt: skip
    assert nested.status == 400 and nested.body["field"] == "capabilities.devices.create.tags"
    assert NOW  # the fixture's clock


def test_the_policy_file_is_served_as_committed_with_gitops_pushers_etag(apis: Apis) -> None:
    app = v2(apis, local=True)
    answer = request_text(app, "/api/v2/tailnet/-/acl", accept="application/hujson")
    assert answer[0] == 200 and answer[2] == POLICY
    # sha256 of Go's hujson.Format(POLICY), as gitops-pusher 1.96.4's sumFile prints it
    # (computed with github.com/tailscale/hujson v0.0.0-20221223112325-20486734a56a).
    expected = "df0e4460b481eaf7a7c2f5d2d83ebaf33cc44ef42d2cba74afb462491482c18f"
    assert answer[1]["etag"] == f'"{expected}"'
    as_json = request(app, "GET", "/api/v2/tailnet/-/acl")
    assert as_json.body["tagOwners"] == {"tag:web": ["a@example.com"]}


def request_text(app: Starlette, path: str, accept: str) -> tuple[int, dict[str, str], str]:
    import asyncio

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [(b"host", b"t"), (b"accept", accept.encode())],
        "client": ("127.0.0.1", 1), "server": ("t", 80),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:]).decode()


GOOD = POLICY.replace(
    '"tag:web:443"]}]',
    '"tag:web:443"]}],\n\t"tests": [{"src": "a@example.com", "accept": ["tag:web:443"]}]',
)
FAILING = GOOD.replace('"accept": ["tag:web:443"]}]', '"deny": ["tag:web:443"]}]')


@pytest.mark.parametrize(
    ("policy", "status", "message", "errors"),
    [
        (GOOD, 200, None, None),
        (FAILING, 200, "test(s) failed", "tag:web:443"),
        ('{\n  "acls": [\n    {"action" "accept"}\n  ]\n}\n', 400, "line 3, column", None),
        (
            '{"acls": [{"action": "accept", "src": ["group:missing"], "dst": ["*:*"]}]}',
            400,
            "line 1",
            None,
        ),
    ],
)
def test_validate_answers_tailscales_shape(
    apis: Apis, policy: str, status: int, message: str | None, errors: str | None
) -> None:
    app = v2(apis, local=True)
    answer = request(app, "POST", "/api/v2/tailnet/-/acl/validate", raw=policy.encode())
    assert answer.status == status, answer.body
    if message is None:
        assert answer.body == {}
        return
    assert message in answer.body["message"]
    if errors is not None:
        (entry,) = answer.body["data"]
        assert entry["user"] == "a@example.com"
        assert any(errors in e for e in entry["errors"])


def test_a_policy_write_is_refused_saying_it_arrives_by_commit(apis: Apis) -> None:
    app = v2(apis, local=True)
    answer = request(app, "POST", "/api/v2/tailnet/-/acl", raw=POLICY.encode())
    assert answer.status == 405
    assert answer.headers["content-type"] == "application/problem+json"
    assert "commit" in answer.body["detail"]

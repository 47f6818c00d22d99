"""The admin API's door rules, in process: the unix socket is the admin, TCP
needs an API key, and only the socket mints API keys."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette

from gitctl.policy import parse_policy
from gitctl.snapshot import ALLOW_ALL_POLICY
from server.api import WebDeps, build_app
from server.protocol.keys import MachinePrivate
from server.sources.history import History
from server.sources.repo import RepoStatus
from server.store import SqliteStore, open_store
from server.tailnet import Tailnet, TailnetSource, UserRegistry, running_tailnet
from tests.unit.test_store import NOW, add_node


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


def request(app: Starlette, method: str, path: str, **options: Any) -> Answer:
    """`exchange`, run to completion outside an event loop."""
    return asyncio.run(exchange(app, method, path, **options))


async def exchange(
    app: Starlette,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: Any = None,
    raw: bytes | None = None,
) -> Answer:
    """One HTTP exchange straight through ASGI (no sockets, no httpx); the body
    is `body` as JSON, or `raw` as it is."""
    headers = [(b"host", b"localhost")]
    if token is not None:
        headers.append((b"authorization", token.encode()))
    path, _, query = path.partition("?")
    payload = raw if raw is not None else json.dumps(body).encode() if body is not None else b""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 1), "server": ("t", 80),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": payload, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    data = b"".join(m.get("body", b"") for m in sent[1:])
    return Answer(
        start["status"],
        {k.decode(): v.decode() for k, v in start["headers"]},
        json.loads(data) if data else None,
    )


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Apis:
    socket: Starlette
    tcp: Starlette
    store: SqliteStore
    clock: Clock
    tailnet: Tailnet
    deps: WebDeps
    status: RepoStatus


# Allow-all, and tag:ci declared for the keys these tests create.
CI_TAGGED = parse_policy({**ALLOW_ALL_POLICY, "tagOwners": {"tag:ci": ["a@example.com"]}})


@pytest.fixture
def apis(tmp_path: Path) -> Iterator[Apis]:
    clock = Clock()
    with open_store(tmp_path / "state.db") as store:
        source = TailnetSource(
            id="test",
            domain="",
            dns_config={},
            users={"alice": ("a@example.com", "A")},
            policy=CI_TAGGED,
        )
        registry, tailnet = running_tailnet(
            store, source, derp_regions=[], log=logging.getLogger("t"), clock=clock
        )
        key = MachinePrivate.generate().public()
        rng = random.Random(7).randbytes

        status = RepoStatus(journal=History(tmp_path / "history.jsonl"))
        users = UserRegistry(store, log=logging.getLogger("t"))
        users.subscribe(tailnet.apply_user)
        deps = WebDeps(key, tailnet, registry, store, clock, status, rng, local=True, users=users)
        socket = build_app(deps)
        tcp = build_app(replace(deps, local=False))
        yield Apis(socket, tcp, store, clock, tailnet, deps, status)


def create_key(apis: Apis, expiration: str | None = None) -> str:
    answer = request(apis.socket, "POST", "/api/v1/apikeys", body={"expiration": expiration})
    assert answer.status == 200, answer.body
    return str(answer.body["key"])


def test_the_socket_needs_no_credentials(apis: Apis) -> None:
    assert request(apis.socket, "GET", "/api/v1/nodes").body == []


@pytest.mark.parametrize(
    "token",
    [None, "", "Bearer", "Bearer ", "Basic", "Basic !!", "Basic OnBhc3M=", "tskey-api-aaaa-x"],
)
def test_tcp_without_a_bearer_key_is_told_how_to_get_one(apis: Apis, token: str | None) -> None:
    answer = request(apis.tcp, "GET", "/api/v1/nodes", token=token)
    assert answer.status == 401
    assert "Authorization: Bearer" in answer.body["detail"]
    assert "tailnetd apikeys create" in answer.body["detail"]
    assert answer.headers["www-authenticate"].startswith("Bearer")


def test_tcp_with_a_key_reaches_every_admin_route(apis: Apis) -> None:
    key = create_key(apis)
    for path in ("/api/v1/nodes", "/api/v1/preauthkeys", "/api/v1/apikeys", "/api/v1/status"):
        assert request(apis.tcp, "GET", path, token=f"Bearer {key}").status == 200, path
    created = request(
        apis.tcp, "POST", "/api/v1/preauthkeys", token=f"bearer {key}", body={"user": "alice"}
    )
    assert created.status == 200 and created.body["key"].startswith("tskey-auth-")


def test_unknown_and_expired_keys_are_refused_without_echoing_them(apis: Apis) -> None:
    key = create_key(apis, "1h")
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    unknown = request(apis.tcp, "GET", "/api/v1/nodes", token=f"Bearer {wrong}")
    assert (unknown.status, unknown.body["detail"]) == (401, "API key not found")
    apis.clock.now = NOW + timedelta(hours=1)
    expired = request(apis.tcp, "GET", "/api/v1/nodes", token=f"Bearer {key}")
    assert (expired.status, expired.body["detail"]) == (401, "API key expired")


def test_expiring_a_key_shuts_it_out_at_once(apis: Apis) -> None:
    key = create_key(apis)
    prefix = request(apis.socket, "GET", "/api/v1/apikeys").body[0]["prefix"]
    assert request(apis.tcp, "GET", "/api/v1/nodes", token=f"Bearer {key}").status == 200
    assert request(apis.socket, "POST", f"/api/v1/apikeys/{prefix}/expire").status == 200
    assert request(apis.tcp, "GET", "/api/v1/nodes", token=f"Bearer {key}").status == 401


def test_only_the_socket_creates_api_keys(apis: Apis) -> None:
    key = create_key(apis)
    anonymous = request(apis.tcp, "POST", "/api/v1/apikeys")
    assert anonymous.status == 401
    with_key = request(apis.tcp, "POST", "/api/v1/apikeys", token=f"Bearer {key}")
    assert with_key.status == 403
    assert "tailnetd apikeys create" in with_key.body["detail"]
    assert len(apis.store.list_api_keys()) == 1


def test_new_keys_expire_in_90_days_unless_told_otherwise(apis: Apis) -> None:
    create_key(apis)
    create_key(apis, "12h")
    expirations = [k.expiration for k in apis.store.list_api_keys()]
    assert expirations == [NOW + timedelta(days=90), NOW + timedelta(hours=12)]
    bad = request(apis.socket, "POST", "/api/v1/apikeys", body={"expiration": "soon"})
    assert bad.status == 400 and "90d" in bad.body["detail"]


def test_listing_shows_last_use_and_never_the_secret(apis: Apis) -> None:
    key = create_key(apis)
    apis.clock.now = NOW + timedelta(minutes=5)
    request(apis.tcp, "GET", "/api/v1/nodes", token=f"Bearer {key}")
    [listed] = request(apis.socket, "GET", "/api/v1/apikeys").body
    assert listed["last_used"] is not None and listed["last_used"].startswith("2025-03-01T12:05")
    assert key.rsplit("-", 1)[1] not in json.dumps(listed)
    assert set(listed) == {"id", "prefix", "scope", "created", "expiration", "last_used", "expired"}


# Every POST route checks its body before acting: a wrong shape is a 400
# naming the field, and nothing is written.

NOT_AN_OBJECT = [(b"[]", "a list"), (b'"x"', "the string"), (b"null", "null"), (b"{", "JSON")]
BODYLESS = [
    "/api/v1/repo/sync",
    "/api/v1/nodes/1/expire",
    "/api/v1/preauthkeys/1/expire",
    "/api/v1/apikeys/1/expire",
]
WRONG_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("/api/v1/preauthkeys", {"user": "alice", "tags": "tag:x"}, "'tags' must be a list of strings"),
    ("/api/v1/preauthkeys", {"user": "alice", "tags": [1]}, "'tags' must be a list of strings"),
    (
        "/api/v1/preauthkeys",
        {"user": "alice", "reusable": "no"},
        "'reusable' must be true or false",
    ),
    ("/api/v1/preauthkeys", {"user": "alice", "ephemeral": 1}, "'ephemeral' must be true or false"),
    ("/api/v1/preauthkeys", {"user": "alice", "expiration": 5}, "'expiration' must be a string"),
    ("/api/v1/preauthkeys", {"user": "alice", "color": "red"}, "unknown field 'color'"),
    ("/api/v1/preauthkeys", {"user": ["alice"]}, "'user' must be a string"),
    ("/api/v1/preauthkeys", {"reusable": True}, "'user' is required"),
    ("/api/v1/apikeys", {"expiration": 5}, "'expiration' must be a string"),
    ("/api/v1/apikeys", {"expiration": True}, "'expiration' must be a string"),
    ("/api/v1/apikeys", {"scope": "all"}, "'scope' must be one of 'read', 'admin'"),
    ("/api/v1/apikeys", {"color": "red"}, "unknown field 'color'"),
    ("/api/v1/nodes/1/rename", {}, "'name' is required"),
    ("/api/v1/nodes/1/rename", {"name": 5}, "'name' must be a string"),
    ("/api/v1/nodes/1/rename", {"name": None}, "'name' must be a string"),
    ("/api/v1/nodes/1/rename", {"name": "a", "x": 1}, "unknown field 'x'"),
    *((path, {"force": True}, "unknown field 'force'") for path in BODYLESS),
]
POST_ROUTES = sorted({path for path, _, _ in WRONG_FIELDS})


def written(apis: Apis) -> tuple[object, ...]:
    store = apis.store
    return store.list_nodes(), store.list_preauth_keys(), store.list_api_keys()


@pytest.fixture
def populated(apis: Apis) -> Apis:
    """A node, a pre-auth key and an API key, each with id 1, for the routes to act on."""
    add_node(apis.store, 1)
    apis.store.create_preauth_key(
        "alice", reusable=False, ephemeral=False, tags=(), expiration=None, now=NOW,
        rng=random.Random(1).randbytes,
    )  # fmt: skip
    create_key(apis)
    return apis


BAD_BODIES = [
    *((path, raw, named) for path in POST_ROUTES for raw, named in NOT_AN_OBJECT),
    *((path, json.dumps(body).encode(), message) for path, body, message in WRONG_FIELDS),
]


@pytest.mark.parametrize(("path", "raw", "message"), BAD_BODIES)
def test_a_bad_body_is_refused_naming_what_is_wrong(
    populated: Apis, path: str, raw: bytes, message: str
) -> None:
    before = written(populated)
    answer = request(populated.socket, "POST", path, raw=raw)
    assert answer.status == 400, answer.body
    assert message in answer.body["detail"]
    assert written(populated) == before


def test_the_delete_route_takes_no_body_either(populated: Apis) -> None:
    before = written(populated)
    answer = request(populated.socket, "DELETE", "/api/v1/nodes/1", body={"force": True})
    assert (answer.status, written(populated)) == (400, before)
    assert "unknown field 'force'" in answer.body["detail"]


def test_well_formed_bodies_still_work(populated: Apis) -> None:
    created = request(
        populated.socket, "POST", "/api/v1/preauthkeys",
        body={"user": "alice", "reusable": False, "ephemeral": True, "tags": ["tag:ci"],
              "expiration": "1h"},
    )  # fmt: skip
    assert created.status == 200, created.body
    assert (created.body["reusable"], created.body["ephemeral"]) == (False, True)
    assert created.body["tags"] == ["tag:ci"]
    renamed = request(populated.socket, "POST", "/api/v1/nodes/1/rename", body={"name": "box"})
    assert (renamed.status, renamed.body["name"]) == (200, "box")
    for path in ("/api/v1/nodes/1/expire", "/api/v1/apikeys/1/expire"):
        assert request(populated.socket, "POST", path, raw=b"{}").status == 200, path

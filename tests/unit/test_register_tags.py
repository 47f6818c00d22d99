"""`tailscale up --advertise-tags`: Hostinfo.RequestTags honoured where tagOwners
let the node's user (or its pre-auth key's tags) own the tags, refused with a
message the client shows otherwise; a tagged node belongs to its tags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gitctl import hujson
from gitctl.policy import Policy, parse_policy
from gitctl.policy.roles import with_roles
from gitctl.policy.tagowners import tag_refusal
from tests.unit.control_client import (
    USERS,
    ControlClient,
    Device,
    async_test,
    preauth_key,
    running_server,
)

POLICY = """\
{
  "groups": {"group:ops": ["bob@example.com"]},
  "tagOwners": {
    "tag:web": ["alice@example.com"],
    "tag:db": ["group:ops"],
    "tag:ci": [],
    "tag:runner": ["tag:ci"],
  },
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
}
"""


class _User:
    def __init__(self, email: str, role: str) -> None:
        self.email, self.role = email, role


def _policy(admin: str = "") -> Policy:
    policy = parse_policy(hujson.loads(POLICY))
    users = [_User("alice@example.com", "member"), _User("bob@example.com", "member")]
    if admin:
        users.append(_User(admin, "admin"))
    return with_roles(policy, users)


def test_tag_owners_decide_who_may_apply_a_tag() -> None:
    policy = _policy(admin="carol@example.com")
    assert tag_refusal(policy, ["tag:web"], email="alice@example.com") is None
    assert tag_refusal(policy, ["tag:db"], email="bob@example.com") is None
    refused = tag_refusal(policy, ["tag:db"], email="alice@example.com")
    assert refused is not None and "'tag:db'" in refused and "alice@example.com" in refused
    # An empty owner list is the admins'; admins may apply every declared tag.
    assert tag_refusal(policy, ["tag:ci"], email="alice@example.com") is not None
    assert tag_refusal(policy, ["tag:ci", "tag:db"], email="carol@example.com") is None
    # A tagged key may carry its tags, and the tags they own.
    assert tag_refusal(policy, ["tag:ci", "tag:runner"], email=None, key_tags=["tag:ci"]) is None
    assert tag_refusal(policy, ["tag:web"], email=None, key_tags=["tag:ci"]) is not None
    undeclared = tag_refusal(policy, ["tag:nope"], email="carol@example.com")
    assert undeclared is not None and "not declared" in undeclared


async def _register(srv: Any, dev: Device, key: str, tags: list[str]) -> dict[str, Any]:
    body = dev.register_body(key)
    body["Hostinfo"]["RequestTags"] = tags
    async with await ControlClient.connect(srv.port, dev.machine) as client:
        status, reply = await client.register(body)
    assert status == 200
    return dict(reply)


@async_test
async def test_owned_requested_tags_make_a_tagged_node(tmp_path: Path) -> None:
    files = {"users.yaml": USERS, "policy.hujson": POLICY}
    async with running_server(tmp_path, files=files) as srv:
        dev = Device("web1")
        reply = await _register(srv, dev, preauth_key(srv, "alice"), ["tag:web"])
        assert "Error" not in reply
        assert reply["User"]["LoginName"] == "tagged-devices"
        node = srv.store.node_by_machine_key(dev.machine.public())
        assert node is not None
        assert node.tags == ("tag:web",) and node.user is None and node.key_expiry is None


@async_test
async def test_unowned_requested_tags_are_refused_with_the_reason(tmp_path: Path) -> None:
    files = {"users.yaml": USERS, "policy.hujson": POLICY}
    async with running_server(tmp_path, files=files) as srv:
        dev = Device("db1")
        reply = await _register(srv, dev, preauth_key(srv, "alice"), ["tag:db"])
        assert reply["Error"] == (
            "requested tag 'tag:db' is not owned by alice@example.com (see the policy's tagOwners)"
        )
        assert srv.store.node_by_machine_key(dev.machine.public()) is None
        # The key was not spent by the refusal.
        reply = await _register(srv, Device("db2"), preauth_key(srv, "bob"), ["tag:db"])
        assert "Error" not in reply

"""Tags on pre-auth keys: only well-formed tags that the served policy declares
are given out, and tags a later commit stopped declaring are reported."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from gitctl.policy.model import Policy
from gitctl.snapshot import ALLOW_ALL
from server.api import WebDeps, build_app
from server.protocol.keys import MachinePrivate
from server.sources.repo import RepoStatus
from server.tagcheck import tag_problem
from server.tailnet import TailnetSource
from tests.e2e.harness import TailnetRepo
from tests.unit.control_client import USERS, Device, async_test, join, preauth_key, running_server
from tests.unit.test_admin_api import Apis, apis, exchange, request

__all__ = ["apis"]  # the fixture, shared with the admin API tests

POLICY_WITH_CI = '{"tagOwners": {"tag:ci": ["alice@example.com"], "tag:db": []}}\n'
POLICY_WITHOUT_CI = '{"tagOwners": {"tag:db": []}}\n'


@pytest.mark.parametrize("tag", ["tag:ci", "tag:a", "tag:web-1", "tag:Prod"])
def test_well_formed_tags(tag: str) -> None:
    assert tag_problem(tag) is None


@pytest.mark.parametrize(
    ("tag", "problem"),
    [
        ("ci", "tags start with 'tag:'"),
        ("tag:", "the name after 'tag:' is empty"),
        ("tag:1ci", "the name after 'tag:' starts with a letter"),
        ("tag:-ci", "the name after 'tag:' starts with a letter"),
        ("tag:ünï", "the name after 'tag:' starts with a letter"),
        ("tag:ci_x", "a tag name has only letters, digits and dashes"),
        ("tag:ci x", "a tag name has only letters, digits and dashes"),
        ("tag:ci:x", "a tag name has only letters, digits and dashes"),
    ],
)
def test_malformed_tags_say_why(tag: str, problem: str) -> None:
    assert tag_problem(tag) == problem


def serve_policy(apis: Apis, policy: Policy) -> None:
    apis.tailnet.swap_source(
        TailnetSource(
            id="test", domain="", dns_config={}, users={"alice": ("a@example.com", "A")},
            policy=policy,
        )
    )  # fmt: skip


def create(apis: Apis, *tags: str) -> tuple[int, str]:
    answer = request(
        apis.socket, "POST", "/api/v1/preauthkeys", body={"user": "alice", "tags": list(tags)}
    )
    return answer.status, answer.body.get("detail", "")


@pytest.fixture
def declared(apis: Apis) -> Apis:
    serve_policy(apis, Policy(tag_owners={"tag:ci": (), "tag:db": ()}))
    return apis


def test_a_declared_tag_is_given_out(declared: Apis) -> None:
    assert create(declared, "tag:ci", "tag:db") == (200, "")
    [key] = declared.store.list_preauth_keys()
    assert key.tags == ("tag:ci", "tag:db")


def test_an_undeclared_tag_is_refused_naming_the_declared_ones(declared: Apis) -> None:
    status, error = create(declared, "tag:ci", "tag:web")
    assert status == 400
    assert error == (
        "tag 'tag:web' is not declared in the policy's tagOwners (declared tags: tag:ci, tag:db)"
    )
    assert declared.store.list_preauth_keys() == []


@pytest.mark.parametrize("tag", ["ci", "tag:", "tag:ci_x", "tag:1"])
def test_a_malformed_tag_is_refused_with_or_without_a_policy(apis: Apis, tag: str) -> None:
    for policy in (ALLOW_ALL, Policy(tag_owners={"tag:ci": ()})):
        serve_policy(apis, policy)
        status, error = create(apis, tag)
        assert status == 400 and error.startswith(f"tag {tag!r} is not a valid tag: ")
    assert apis.store.list_preauth_keys() == []


def test_without_policy_keys_no_tag_is_declared(apis: Apis) -> None:
    # Allow-all is about traffic, not ownership: a tag exists only where git says so.
    serve_policy(apis, ALLOW_ALL)
    status, error = create(apis, "tag:anything")
    assert status == 400 and "not declared in the policy's tagOwners" in error


def test_the_cli_refuses_an_undeclared_tag(declared: Apis) -> None:
    # What `tailnetd keys create --tag tag:web` sends.
    body = {"user": "alice", "reusable": False, "ephemeral": False, "tags": ["tag:web"],
            "expiration": None}  # fmt: skip
    answer = request(declared.socket, "POST", "/api/v1/preauthkeys", body=body)
    assert answer.status == 400 and "'tag:web'" in answer.body["detail"]


@async_test
async def test_tags_a_commit_stops_declaring_are_logged_and_listed_in_status(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = {"users.yaml": USERS, "policy.hujson": POLICY_WITH_CI}
    async with running_server(tmp_path, files=files) as server:
        tagged = preauth_key(server, tags=("tag:ci",), reusable=True)
        client = await join(server, Device("runner"), auth_key=tagged)
        await client.close()
        preauth_key(server, tags=("tag:ci",))  # single-use, never used: still usable
        preauth_key(server, tags=("tag:ci",), expiration=server.clock())  # expired: not listed
        [node] = server.store.list_nodes()
        keys = {k.id: k.prefix for k in server.store.list_preauth_keys()}

        app = build_app(
            WebDeps(MachinePrivate.generate().public(), server.tailnet, server.registry,
                    server.store, server.clock, RepoStatus(), random.Random(1).randbytes,
                    local=True)
        )  # fmt: skip
        assert (await exchange(app, "GET", "/api/v1/status")).body["undeclared_tags"] == []

        # running_server's work tree; opening it again commits the new policy on top.
        revision = TailnetRepo(tmp_path / "repo", {"policy.hujson": POLICY_WITHOUT_CI}).head()
        with caplog.at_level(logging.WARNING, logger="tailnetd.test"):
            await server.on_revision(revision)
        assert server.status.serving == revision

        warnings = sorted(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        declared_not = "carries tag:ci, which the policy's tagOwners do not declare"
        assert warnings == sorted(
            [f"node {node.id} {node.given_name} {declared_not}"]
            + [f"pre-auth key {keys[i]} {declared_not}" for i in (1, 2)]
        )
        listed = (await exchange(app, "GET", "/api/v1/status")).body["undeclared_tags"]
        assert listed == [
            {"kind": "node", "id": node.id, "name": node.given_name, "tags": ["tag:ci"]},
            {"kind": "key", "id": 1, "name": keys[1], "tags": ["tag:ci"]},
            {"kind": "key", "id": 2, "name": keys[2], "tags": ["tag:ci"]},
        ]

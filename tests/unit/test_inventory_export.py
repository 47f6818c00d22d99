"""`tailnetd inventory export` (`GET /api/v1/inventory`): the running tailnet's users and
devices, in the inventory schema, round-tripped into `gitctl test|diff|lint|explain
--inventory FILE` as CI runs them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from gitctl.cli import main as gitctl
from gitctl.inventory import parse_inventory
from server.wire.hostinfo import Hostinfo
from tests.unit.test_admin_api import NOW, Apis, apis, request
from tests.unit.test_sources import commit_files
from tests.unit.test_store import add_node

__all__ = ["apis"]  # fixture

USERS = "users:\n  - {name: alice, email: a@example.com, role: admin}\n"
POLICY = """{
  "tagOwners": {"tag:ci": ["a@example.com"], "tag:router": ["a@example.com"]},
  "acls": [
    {"action": "accept", "src": ["a@example.com"], "dst": ["tag:ci:22"]},
    {"action": "accept", "src": ["autogroup:admin"], "dst": ["192.168.1.0/24:443"]},
  ],
  "tests": [{"src": "a@example.com", "accept": ["tag:ci:22", "192.168.1.5:443"]}],
}
"""


def exported(apis: Apis) -> dict[str, object]:
    add_node(apis.store, 1, "laptop")
    add_node(apis.store, 2, "ci-runner", user=None, tags=("tag:ci",))
    router = add_node(apis.store, 3, "router", user=None, tags=("tag:router",))
    apis.store.update_from_map(
        router.id, now=NOW, hostinfo=Hostinfo(os="linux", routable_ips=("192.168.1.0/24",))
    )
    add_node(apis.store, 4, "gone", user="mallory")  # a user no longer in git: not served
    source = replace(apis.tailnet.source, explicit_routes={"tag:router": ("192.168.1.0/24",)})
    apis.tailnet.swap_source(source)
    answer = request(apis.socket, "GET", "/api/v1/inventory")
    assert answer.status == 200, answer.body
    doc: dict[str, object] = answer.body
    return doc


def test_the_export_is_an_inventory_without_key_material(apis: Apis) -> None:
    doc = exported(apis)
    topology = parse_inventory(doc)  # the schema gitctl reads
    assert [n.name for n in topology.nodes] == ["laptop", "ci-runner", "router"]
    router = topology.nodes[2]
    assert (router.tags, router.routable_ips, router.approved_routes) == (
        ("tag:router",), ("192.168.1.0/24",), ("192.168.1.0/24",),
    )  # fmt: skip
    assert [(u.name, u.email, u.role) for u in topology.users] == [
        ("alice", "a@example.com", "member")
    ]
    text = json.dumps(doc)
    for secret in ("mkey:", "nodekey:", "discokey:", "privkey:", "tskey"):
        assert secret not in text


def test_an_export_round_trips_into_gitctl_test_diff_lint_and_explain(
    apis: Apis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    inv = tmp_path / "inventory.json"
    inv.write_text(json.dumps(exported(apis)))
    repo = tmp_path / "repo"
    repo.mkdir()
    base = commit_files(repo, {"tailnet.d/users.yaml": USERS}, "users")
    commit_files(repo, {"tailnet.d/policy.hujson": POLICY}, "policy")
    monkeypatch.chdir(repo)
    i = ["--inventory", str(inv)]
    assert gitctl(["test", "--rev", "HEAD", *i]) == 0
    assert gitctl(["lint", "--rev", "HEAD", "--warn-only", *i]) == 0
    capsys.readouterr()
    assert (
        gitctl(["explain", "alice", "ci-runner:22", "--rev", "HEAD", "--format", "json", *i]) == 0
    )
    (pair,) = json.loads(capsys.readouterr().out)["pairs"]
    assert (pair["src"]["name"], pair["dst"]["name"], pair["allowed"]) == (
        "laptop", "ci-runner", True,
    )  # fmt: skip
    assert gitctl(["diff", base, "HEAD", "--format", "json", *i]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert diff["topology"] == str(inv)
    gained = [
        (r["src"]["name"], r["dst"]["name"]) for r in diff["reach"] if r["change"] == "gained"
    ]
    # the subnet is reachable only through the exported router and its approved route
    assert ("a@example.com", "192.168.1.0/24") in gained

"""Policy groups with members from the identity provider (Topology.groups).

A rule naming `group:eng` applies to the users whose last login carried `eng`,
beside the members the policy file declares; `gitctl test` and `gitctl diff`
read the same memberships from `--groups FILE`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from gitctl.cli import main
from gitctl.policy import Topology, compile_tailnet, parse_policy
from gitctl.policy.topology import runtime_groups

from .test_policy_helpers import NODES, TAG_OWNERS, USERS, can_reach, sees

ENG_DB = {"action": "accept", "src": ["group:eng"], "dst": ["tag:db:5432"]}
BASE = Topology.from_json({"users": USERS, "nodes": NODES})


def compile_with(groups: dict[str, tuple[str, ...]], previous: Any = None, **doc: Any) -> Any:
    policy = parse_policy({"tagOwners": TAG_OWNERS, "groups": {"group:eng": []}, **doc})
    topo = dataclasses.replace(BASE, groups=groups)
    return compile_tailnet(policy, topo, previous=previous)


def test_a_runtime_member_of_a_group_gets_the_groups_access() -> None:
    tn = compile_with({"group:eng": ("bob@example.com",)}, acls=[ENG_DB])
    assert can_reach(tn, "bob-laptop", "db", 5432)
    assert sees(tn, "bob-laptop", "db")
    assert not can_reach(tn, "alice-laptop", "db", 5432)


def test_without_the_claim_the_group_grants_nothing() -> None:
    tn = compile_with({}, acls=[ENG_DB])
    assert not can_reach(tn, "bob-laptop", "db", 5432)
    assert not sees(tn, "bob-laptop", "db")


def test_runtime_members_add_to_declared_members() -> None:
    policy = parse_policy(
        {"tagOwners": TAG_OWNERS, "groups": {"group:eng": ["alice@example.com"]}, "acls": [ENG_DB]}
    )
    tn = compile_tailnet(
        policy, dataclasses.replace(BASE, groups={"group:eng": ("carol@other.org",)})
    )
    assert can_reach(tn, "alice-laptop", "db", 5432)
    assert can_reach(tn, "carol-laptop", "db", 5432)
    assert not can_reach(tn, "bob-laptop", "db", 5432)


def test_a_grant_and_an_ssh_rule_follow_runtime_groups() -> None:
    grant = {"src": ["group:eng"], "dst": ["tag:web"], "ip": ["443"]}
    ssh = {"action": "accept", "src": ["group:eng"], "dst": ["tag:web"], "users": ["root"]}
    tn = compile_with({"group:eng": ("bob@example.com",)}, grants=[grant], ssh=[ssh])
    assert can_reach(tn, "bob-laptop", "web", 443)
    rules = tn.nodes["web"].ssh_policy["rules"]
    principals = [p for r in rules for p in r["principals"]]
    assert any("100.64.0.3" in json.dumps(p) for p in principals)  # bob-laptop's address
    assert not any("100.64.0.1" in json.dumps(p) for p in principals)


def test_a_membership_change_changes_the_views_of_a_reused_compile() -> None:
    before = compile_with({}, acls=[ENG_DB])
    after = compile_with({"group:eng": ("bob@example.com",)}, previous=before, acls=[ENG_DB])
    assert can_reach(after, "bob-laptop", "db", 5432)
    assert after.changed is None or {"bob-laptop", "db"} <= set(after.changed)


def test_memberships_are_checked_and_normalised() -> None:
    assert runtime_groups({"group:eng": ["Bob@Example.com", "bob@example.com"]}) == {
        "group:eng": ("bob@example.com",)
    }
    with pytest.raises(ValueError, match='must start with "group:"'):
        runtime_groups({"eng": ["bob@example.com"]})
    with pytest.raises(ValueError, match="expected a list of emails"):
        runtime_groups({"group:eng": "bob@example.com"})


USERS_YAML = """users:
  - {name: alice, email: alice@example.com}
  - {name: bob, email: bob@example.com}
"""
POLICY = """{
  "tagOwners": {"tag:db": ["alice@example.com"]},
  "groups": {"group:eng": []},
  "acls": [{"action": "accept", "src": ["group:eng"], "dst": ["tag:db:5432"]}],
  "tests": [{"src": "alice@example.com", "deny": ["tag:db:5432"]}],
}
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "tailnet.d").mkdir()
    (tmp_path / "tailnet.d" / "users.yaml").write_text(USERS_YAML)
    (tmp_path / "tailnet.d" / "policy.hujson").write_text(POLICY)
    return tmp_path


def test_gitctl_test_runs_the_policy_tests_with_memberships_from_a_file(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    groups = tree / "groups.yaml"
    groups.write_text("group:eng: [bob@example.com]\n")
    assert main(["test", "--dir", str(tree / "tailnet.d"), "--groups", str(groups)]) == 0
    groups.write_text("group:eng: [alice@example.com]\n")
    assert main(["test", "--dir", str(tree / "tailnet.d"), "--groups", str(groups)]) == 1
    assert "policy.hujson" in capsys.readouterr().err


def test_gitctl_test_names_a_bad_groups_file(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    groups = tree / "groups.yaml"
    groups.write_text("eng: [bob@example.com]\n")
    assert main(["test", "--dir", str(tree / "tailnet.d"), "--groups", str(groups)]) == 2
    err = capsys.readouterr().err
    assert str(groups) in err and 'must start with "group:"' in err

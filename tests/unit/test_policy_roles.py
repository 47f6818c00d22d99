"""Role autogroups resolve from the roles users.yaml declares, alike in gitctl and the server."""

from __future__ import annotations

import dataclasses

import pytest

from gitctl.policy import Topology, TopologyUser, parse_policy
from gitctl.policy.aliases import Index
from gitctl.policy.model import Alias
from gitctl.policy.roles import ROLE_AUTOGROUPS
from gitctl.testing import synthetic_topology
from server.tailnet import TailnetSource
from server.tailnet.views import to_topology_node
from server.wire import stable_user_id

from .test_snapshot import load, messages
from .test_views_lazy import node as server_node

USERS_YAML = """users:
  - {name: olive, email: olive@example.com, role: owner}
  - {name: adam, email: adam@example.com, role: admin}
  - {name: ivy, email: ivy@example.com, role: it-admin}
  - {name: nina, email: nina@example.com, role: network-admin}
  - {name: bill, email: bill@example.com, role: billing-admin}
  - {name: audrey, email: audrey@example.com, role: auditor}
  - {name: mem, email: mem@example.com}
"""
POLICY_YAML = "acls:\n  - {action: accept, src: ['autogroup:admin'], dst: ['*:*']}\n"
AUTOGROUPS = sorted(f"autogroup:{r}" for r in (*ROLE_AUTOGROUPS, "member"))


def _resolve(policy: object, topology: Topology) -> dict[str, set[str]]:
    index = Index(policy, topology)  # type: ignore[arg-type]
    users = {n.name: n.user for n in topology.nodes}
    return {
        g: {
            str(users[topology.nodes[i].name]) for i in index.resolve(Alias("autogroup", g)).members
        }
        for g in AUTOGROUPS
    }


def test_gitctl_and_the_server_resolve_every_role_autogroup_to_the_same_users() -> None:
    result = load({"users.yaml": USERS_YAML, "policy.yaml": POLICY_YAML})
    snap = result.snapshot
    assert snap is not None, messages(result)

    # gitctl test / gitctl diff: one hypothetical device per user.
    gitctl_view = _resolve(snap.policy, synthetic_topology(snap))

    # The server: the users and nodes it builds from the same snapshot.
    source = TailnetSource.from_snapshot(snap)
    users = tuple(
        TopologyUser(id=stable_user_id(name), name=name, email=email)
        for name, (email, _) in source.users.items()
    )
    nodes = tuple(
        dataclasses.replace(to_topology_node(server_node(i + 1, name), ()), name=name)
        for i, name in enumerate(source.users)
    )
    server_view = _resolve(source.policy, Topology(users=users, nodes=nodes))

    assert gitctl_view == server_view
    assert gitctl_view["autogroup:owner"] == {"olive"}
    assert gitctl_view["autogroup:admin"] == {"olive", "adam"}  # the owner is an admin too
    assert gitctl_view["autogroup:it-admin"] == {"ivy"}
    assert gitctl_view["autogroup:network-admin"] == {"nina"}
    assert gitctl_view["autogroup:billing-admin"] == {"bill"}
    assert gitctl_view["autogroup:auditor"] == {"audrey"}
    assert len(gitctl_view["autogroup:member"]) == 7


def test_without_declared_roles_nobody_is_owner_or_admin() -> None:
    result = load(
        {"users.yaml": "users:\n  - {name: a, email: a@example.com}\n", "policy.yaml": POLICY_YAML}
    )
    snap = result.snapshot
    assert snap is not None
    view = _resolve(snap.policy, synthetic_topology(snap))
    assert view["autogroup:owner"] == view["autogroup:admin"] == set()
    assert view["autogroup:member"] == {"a"}


def test_a_topology_file_declares_roles_for_a_policy_parsed_on_its_own() -> None:
    topo = Topology.from_json(
        {
            "users": [
                {"id": 1, "name": "a", "email": "a@x.org", "role": "admin"},
                {"id": 2, "name": "b", "email": "b@x.org"},
            ],
            "nodes": {
                "a1": {"user": "a", "tags": [], "ipv4": "100.64.0.1"},
                "b1": {"user": "b", "tags": [], "ipv4": "100.64.0.2"},
            },
        }
    )
    view = _resolve(parse_policy({}), topo)
    assert view["autogroup:admin"] == {"a"}
    assert view["autogroup:owner"] == set()


@pytest.mark.parametrize("role", ["superuser", "Admin", ""])
def test_users_yaml_refuses_unknown_roles(role: str) -> None:
    result = load(
        {"users.yaml": f"users:\n  - {{name: a, email: a@example.com, role: '{role}'}}\n"}
    )
    assert result.snapshot is None
    assert any("users.yaml:2:" in m and "role" in m for m in messages(result))

"""An index over the same nodes as an earlier one (a commit compiles a new
policy over the serving index's nodes) copies what it knows per node from
that one rather than walking 50,000 nodes again: the same tables a fresh
index builds, its own containers."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gitctl.policy import parse_policy
from gitctl.policy.aliases import Index
from gitctl.policy.compile import compile_tailnet
from gitctl.policy.topology import Topology
from tests.unit.test_refilter import OWNERS, policy_doc, self_ports, topology

SPEC = [(OWNERS[i % 5], 1 + i % 3, False) for i in range(10)]
TABLES = ("all", "email", "ips", "host_prefix_table", "by_ip", "by_tag", "by_email")
TABLES += ("tagged", "members")


def tables(index: Index) -> tuple[object, ...]:
    return tuple(getattr(index, name) for name in TABLES)


def no_walk(self: Index) -> None:
    raise AssertionError("every node walked again")


def test_the_same_nodes_give_the_tables_of_a_fresh_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topo = topology(SPEC)
    policy = parse_policy(self_ports("*"))
    earlier, fresh = Index(policy, topo), Index(policy, topo)
    monkeypatch.setattr(Index, "_index_nodes", no_walk)
    copied = Index(parse_policy(self_ports("22")), Topology(topo.users, tuple(topo.nodes)), earlier)
    assert tables(copied) == tables(fresh)
    for name in ("email", "ips", "host_prefix_table", "by_ip", "by_tag", "by_email"):
        assert getattr(copied, name) is not getattr(earlier, name), name


@pytest.mark.parametrize("change", ["address", "owner", "users"])
def test_other_nodes_or_users_are_walked_again(change: str) -> None:
    topo = topology(SPEC)
    policy = parse_policy(self_ports("*"))
    earlier = Index(policy, topo)
    nodes = list(topo.nodes)
    if change == "address":
        nodes[3] = replace(nodes[3], ipv4="100.64.9.9")
    elif change == "owner":
        nodes[0] = replace(nodes[0], user="bob")
    users = (
        topo.users
        if change != "users"
        else (replace(topo.users[0], email="a@b.c"), *topo.users[1:])
    )
    other = Topology(users, tuple(nodes))
    assert tables(Index(policy, other, earlier)) == tables(Index(policy, other))


def test_an_earlier_index_grown_since_is_cut_to_its_nodes() -> None:
    topo = topology(SPEC)
    policy = parse_policy(self_ports("*"))
    earlier = Index(policy, topo)
    more = Index(policy, Topology(topo.users, topology([("bob", 3, False)] * 2).nodes))
    earlier.extended(more)  # (grows earlier's address lists in place)
    assert tables(Index(policy, topo, earlier)) == tables(Index(policy, topo))


def test_a_commit_over_the_same_nodes_walks_none(monkeypatch: pytest.MonkeyPatch) -> None:
    topo = topology([(OWNERS[i % 5], 1 + i % 3, i == 4) for i in range(10)])
    rules = [("autogroup:member", "autogroup:self"), ("tag:web", "tag:db")]
    kw = {"ssh": True, "app": False, "no_v4": True}
    keys = list(range(len(topo.nodes)))
    serving = compile_tailnet(parse_policy(policy_doc(rules, "*", **kw)), topo, keys=keys)
    doc = policy_doc(rules, "22", **kw)
    fresh = compile_tailnet(parse_policy(doc), topo, keys=keys)
    monkeypatch.setattr(Index, "_index_nodes", no_walk)
    compiled = compile_tailnet(parse_policy(doc), topo, keys=keys, base=serving)
    for key in keys:
        assert compiled.nodes[key] == fresh.nodes[key]

"""Lazy and reused views give exactly what a fresh, complete compile gives.

Views are built on first access and reused across node joins and leaves; a
node must never be shown a filter, peer or SSH rule that a fresh compile of
the same tailnet would not give it.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from gitctl.policy import CompiledTailnet, NodeView, Topology, compile_tailnet, parse_policy
from gitctl.policy.viewindex import ViewIndex
from tests.unit import test_policy_perf_gen as policy_random

SEEDS = range(60)


def _case(seed: int) -> tuple[random.Random, Any, dict[str, Any]]:
    rng = random.Random(seed)
    topo = policy_random.topology(rng, rng.randint(2, 20))
    return rng, parse_policy(policy_random.policy(rng, topo["users"])), topo


def _compile(
    policy: Any, topo: dict[str, Any], previous: CompiledTailnet | None = None
) -> CompiledTailnet:
    # Policy `tests` are checked when a commit is loaded; these compare views.
    return compile_tailnet(policy, Topology.from_json(topo), previous=previous, enforce_tests=False)


def _all(tn: CompiledTailnet) -> str:
    return json.dumps(tn.to_json())


@pytest.mark.parametrize("seed", SEEDS)
def test_one_view_built_alone_equals_the_complete_compile(seed: int) -> None:
    rng, policy, topo = _case(seed)
    complete = _compile(policy, topo).to_json()["nodes"]
    for name in rng.sample(sorted(topo["nodes"]), 3 if len(topo["nodes"]) > 3 else 1):
        alone = _compile(policy, topo)
        assert alone.nodes[name].to_json() == complete[name]
        assert sorted(alone.peer_keys(name)) == sorted(complete[name]["peers"])


def _check_reuse(
    policy: Any, before: dict[str, Any], after: dict[str, Any], touched: set[str]
) -> int:
    """Checks a reusing compile against a fresh one; returns how many views
    were patched (the earlier view with one peer more or less)."""
    old = _compile(policy, before)
    old_views = dict(old.nodes.items())  # every node connected: every view built
    new = _compile(policy, after, previous=old)
    # Same JSON, peers in the same order: patched views included.
    assert _all(new) == _all(_compile(policy, after))
    assert new.changed is not None
    assert touched <= new.changed
    for name, view in new.nodes.items():
        if name not in new.changed:
            assert view is old_views[name]  # reused, not rebuilt
    # Nodes that see a touched node are told about it.
    for name in touched:
        for tn in (old, new):
            if name in tn.nodes:
                assert set(tn.peer_keys(name)) <= new.changed
    return len(_patched(new, old_views))


def _patched(new: CompiledTailnet, old_views: dict[str, NodeView]) -> set[str]:
    """Changed views that kept their earlier SSH policy object (a build makes
    a new one): patched, not rebuilt."""
    assert isinstance(new.visibility, ViewIndex) and new.changed is not None
    change = new.visibility.peer_change
    out = {
        name
        for name in new.changed
        if name in old_views
        and name in new.nodes
        and new.nodes[name].ssh_policy is old_views[name].ssh_policy
    }
    # Exactly the nodes the compiler names as merely gaining or losing a peer.
    assert out == (change.viewers if change is not None else set())
    return out


def _plain_node(rng: random.Random, n: int, topo: dict[str, Any]) -> dict[str, Any]:
    node = policy_random.node(rng, n, [u["name"] for u in topo["users"]], routers=False)
    return node


def _pick_plain(rng: random.Random, topo: dict[str, Any]) -> str:
    """A node that advertises no routes (route changes recompute everything)."""
    plain = [n for n, rec in topo["nodes"].items() if not rec["routable_ips"]]
    if not plain:
        pytest.skip("every node of this tailnet routes")
    return rng.choice(plain)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_join_reuses_untouched_views_and_matches_a_fresh_compile(seed: int) -> None:
    rng, policy, topo = _case(seed)
    after = {**topo, "nodes": {**topo["nodes"], "joiner": _plain_node(rng, 200, topo)}}
    _check_reuse(policy, topo, after, {"joiner"})


@pytest.mark.parametrize("seed", SEEDS)
def test_a_leave_reuses_untouched_views_and_matches_a_fresh_compile(seed: int) -> None:
    rng, policy, topo = _case(seed)
    gone = _pick_plain(rng, topo)
    after = {**topo, "nodes": {n: rec for n, rec in topo["nodes"].items() if n != gone}}
    _check_reuse(policy, topo, after, {gone})


@pytest.mark.parametrize("seed", SEEDS)
def test_a_retag_reuses_untouched_views_and_matches_a_fresh_compile(seed: int) -> None:
    rng, policy, topo = _case(seed)
    name = _pick_plain(rng, topo)
    old_tags = topo["nodes"][name]["tags"]
    rec = {
        **topo["nodes"][name],
        "tags": ["tag:web" if old_tags == ["tag:ci"] else "tag:ci"],
        "user": None,
    }
    after = {**topo, "nodes": {**topo["nodes"], name: rec}}
    _check_reuse(policy, topo, after, {name})


def test_joins_and_leaves_patch_the_views_that_only_gain_or_lose_that_peer() -> None:
    # Over the random tailnets above: many dependents are patched (each one
    # checked equal to a fresh compile by _check_reuse), not rebuilt.
    joins = leaves = dependents = 0
    for seed in SEEDS:
        rng, policy, topo = _case(seed)
        after = {**topo, "nodes": {**topo["nodes"], "joiner": _plain_node(rng, 200, topo)}}
        joins += _check_reuse(policy, topo, after, {"joiner"})
        leaves += _check_reuse(policy, after, topo, {"joiner"})
        dependents += len(_compile(policy, after).peer_keys("joiner"))
    # A join also patches the views whose filter names the joiner (the
    # filter taken anew); a leave rebuilds those.
    assert joins > leaves > dependents // 5
    assert dependents >= joins


def _node(n: int, user: str | None = None, tags: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "hostname": f"h{n}",
        "user": user,
        "tags": list(tags),
        "ipv4": f"100.64.0.{n + 1}",
        "ipv6": f"fd7a:115c:a1e0::{n + 1:x}",
        "routable_ips": [],
        "approved_routes": [],
    }


def test_which_nodes_a_join_patches() -> None:
    users = [{"id": i, "name": f"u{i}", "email": f"u{i}@example.com"} for i in range(2)]
    owners = ["u0@example.com"]
    policy = parse_policy(
        {
            "groups": {"group:a": ["u1@example.com"]},
            "tagOwners": {"tag:web": owners, "tag:db": owners, "tag:cache": owners},
            "acls": [
                {"action": "accept", "src": ["u0@example.com"], "dst": ["tag:web:443"]},
                {"action": "accept", "src": ["*"], "dst": ["tag:db:5432"]},
                {"action": "accept", "src": ["tag:web"], "dst": ["tag:cache:6379"]},
            ],
            "ssh": [
                {
                    "action": "accept",
                    "src": ["group:a"],
                    "dst": ["tag:web"],
                    "users": ["localpart:*@example.com"],
                }
            ],
        }
    )
    nodes = {
        "laptop0": _node(0, "u0"),
        "laptop1": _node(1, "u1"),
        "db": _node(2, tags=("tag:db",)),
        "cache": _node(3, tags=("tag:cache",)),
    }
    before = {"users": users, "nodes": nodes}
    after = {"users": users, "nodes": {**nodes, "web": _node(4, tags=("tag:web",))}}
    old = _compile(policy, before)
    old_views = dict(old.nodes.items())
    new = _compile(policy, after, previous=old)
    assert _all(new) == _all(_compile(policy, after))
    assert new.changed == {"web", "laptop0", "laptop1", "db", "cache"}
    # laptop0 reaches web, and db accepts "*" (ranges, not web's addresses):
    # both only gain a peer. cache's filter names web's addresses: it gains a
    # peer and its filter is taken anew, the rest kept. laptop1 now has a
    # destination for its localpart: SSH rule, so receives its own user's
    # part: rebuilt.
    assert _patched(new, old_views) == {"laptop0", "db", "cache"}
    assert new.nodes["laptop0"].packet_filter_rules is old_views["laptop0"].packet_filter_rules
    assert new.nodes["cache"].packet_filter_rules != old_views["cache"].packet_filter_rules
    assert list(new.nodes["laptop0"].peers) == ["db", "web"]  # in node order
    assert new.nodes["laptop1"].ssh_policy["rules"]
    # And back: the leave patches the nodes whose filter does not name web.
    new_views = dict(new.nodes.items())
    back = _compile(policy, before, previous=new)
    assert _all(back) == _all(old)
    assert _patched(back, new_views) == {"laptop0", "db"}
    assert list(back.nodes["laptop0"].peers) == ["db"]


def test_a_route_change_recomputes_every_view() -> None:
    rng, policy, topo = _case(1)
    node = {
        **_plain_node(rng, 201, topo),
        "tags": ["tag:router"],
        "user": None,
        "routable_ips": ["10.1.0.0/16"],
        "approved_routes": ["10.1.0.0/16"],
    }
    old = _compile(policy, topo)
    after = {**topo, "nodes": {**topo["nodes"], "router2": node}}
    new = _compile(policy, after, previous=old)
    assert new.changed is None
    assert _all(new) == _all(_compile(policy, after))


def _mutate(rng: random.Random, doc: dict[str, Any], us: list[dict[str, Any]]) -> dict[str, Any]:
    """One edit a pull request might make to a policy."""
    doc = json.loads(json.dumps(doc))
    other = policy_random.policy(rng, us)
    emails = [u["email"] for u in us]
    kind = rng.choice(
        ["drop acl", "add acl", "reorder acls", "group", "ssh", "grant", "nodeAttrs", "tests"]
    )
    if kind == "drop acl" and len(doc["acls"]) > 1:
        doc["acls"].pop(rng.randrange(len(doc["acls"])))
    elif kind == "add acl":
        doc["acls"].insert(rng.randint(0, len(doc["acls"])), other["acls"][0])
    elif kind == "reorder acls":
        rng.shuffle(doc["acls"])
    elif kind == "group":
        doc["groups"]["group:a"] = rng.sample(emails, rng.randint(1, len(emails)))
    elif kind == "ssh":
        doc["ssh"] = other["ssh"] if rng.random() < 0.5 else doc["ssh"][1:] + other["ssh"][:1]
    elif kind == "grant":
        doc["grants"] = doc["grants"][:-1] + other["grants"][:1]
    elif kind == "nodeAttrs":
        doc["nodeAttrs"] = other["nodeAttrs"]
    else:
        doc["tests"] = [{"src": emails[0], "accept": [], "deny": []}]
    return doc


@pytest.mark.parametrize("seed", range(120))
def test_a_commit_reuses_the_views_it_cannot_touch_and_matches_a_fresh_compile(
    seed: int,
) -> None:
    rng = random.Random(seed)
    topo = policy_random.topology(rng, rng.randint(2, 20))
    before = policy_random.policy(rng, topo["users"])
    after = before
    for _ in range(rng.randint(1, 2)):
        after = _mutate(rng, after, topo["users"])
    old = _compile(parse_policy(before), topo)
    old_views = dict(old.nodes.items())
    new = _compile(parse_policy(after), topo, previous=old)
    fresh = _compile(parse_policy(after), topo)
    assert _all(new) == _all(fresh)
    for name in topo["nodes"]:
        assert sorted(new.peer_keys(name)) == sorted(fresh.peer_keys(name))
    if new.changed is None:
        return
    for name, view in new.nodes.items():
        if name not in new.changed:
            assert view is old_views[name]


def test_a_commit_wakes_only_the_nodes_its_rules_reach() -> None:
    users = [{"id": i, "name": f"u{i}", "email": f"u{i}@example.com"} for i in range(3)]

    def node(n: int, user: str | None, tags: list[str]) -> dict[str, Any]:
        return {
            "hostname": f"h{n}",
            "user": user,
            "tags": tags,
            "ipv4": f"100.64.0.{n + 1}",
            "ipv6": f"fd7a:115c:a1e0::{n + 1:x}",
            "routable_ips": [],
            "approved_routes": [],
        }

    topo = {
        "users": users,
        "nodes": {
            "laptop0": node(0, "u0", []),
            "laptop1": node(1, "u1", []),
            "laptop2": node(2, "u2", []),
            "web": node(3, None, ["tag:web"]),
            "db": node(4, None, ["tag:db"]),
        },
    }
    base = {
        "tagOwners": {"tag:web": ["u0@example.com"], "tag:db": ["u0@example.com"]},
        "acls": [{"action": "accept", "src": ["u1@example.com"], "dst": ["tag:db:5432"]}],
    }
    old = _compile(parse_policy(base), topo)
    old_views = dict(old.nodes.items())
    new_rule = {"action": "accept", "src": ["u0@example.com"], "dst": ["tag:web:80"]}
    new = _compile(parse_policy({**base, "acls": [*base["acls"], new_rule]}), topo, previous=old)
    assert new.changed == {"laptop0", "web"}
    assert new.nodes["laptop1"] is old_views["laptop1"]
    assert "web" in new.nodes["laptop0"].peers


def test_a_commit_that_changes_routes_recomputes_every_view() -> None:
    rng, _, topo = _case(2)
    router = {
        **_plain_node(rng, 201, topo),
        "tags": ["tag:router"],
        "user": None,
        "routable_ips": ["10.1.0.0/16"],
        "approved_routes": [],
    }
    topo = {**topo, "nodes": {**topo["nodes"], "router": router}}
    acls = [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]
    owners = {"tag:router": [topo["users"][0]["email"]]}
    approving = {
        "tagOwners": owners,
        "autoApprovers": {"routes": {"10.0.0.0/8": ["tag:router"]}},
        "acls": acls,
    }
    old = _compile(parse_policy({"tagOwners": owners, "acls": acls}), topo)
    new = _compile(parse_policy(approving), topo, previous=old)
    # Every peer of the router now carries its route: no view is kept.
    assert new.changed is None
    assert _all(new) == _all(_compile(parse_policy(approving), topo))
    assert "10.1.0.0/16" in new.nodes["router"].self_primary_routes


def test_two_joins_and_a_leave_at_once_are_no_peer_change() -> None:
    rng, policy, topo = _case(3)
    gone = _pick_plain(rng, topo)
    nodes = {n: rec for n, rec in topo["nodes"].items() if n != gone}
    nodes["joiner1"] = _plain_node(rng, 201, topo)
    nodes["joiner2"] = _plain_node(rng, 202, topo)
    after = {**topo, "nodes": nodes}
    old = _compile(policy, topo)
    dict(old.nodes.items())
    new = _compile(policy, after, previous=old)
    assert isinstance(new.visibility, ViewIndex) and new.visibility.peer_change is None
    assert _all(new) == _all(_compile(policy, after))

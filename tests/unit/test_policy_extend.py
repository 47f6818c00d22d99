"""A join grows the last index instead of rebuilding it, and every node's view
(packet filter, SSH policy, peers, capabilities) is what a fresh compile of the
same tailnet gives."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.bench_compile import synthetic
from gitctl.hujson import loads
from gitctl.policy import parse_policy
from gitctl.policy.compile import CompiledTailnet, compile_tailnet
from gitctl.policy.model import Policy
from gitctl.policy.topology import Topology, TopologyNode, TopologyUser
from gitctl.policy.viewindex import ViewIndex

EMAILS = ["alice@example.com", "bob@example.com", "carol@example.com", "dave@other.org"]
USERS = tuple(TopologyUser(i + 1, e.split("@")[0], e) for i, e in enumerate(EMAILS))
TAGS = ["tag:web", "tag:db", "tag:ops"]
EXAMPLE = Path(__file__).parents[2] / "tailnet.d" / "policy.hujson"


def _features() -> dict[str, Any]:
    return {
        "groups": {
            "group:eng": ["alice@example.com", "bob@example.com"],
            "group:ops": ["carol@example.com"],
        },
        "tagOwners": {t: ["alice@example.com"] for t in [*TAGS, "tag:ghost"]},
        "hosts": {"dbhost": "100.64.0.3", "lan": "100.64.0.0/28"},
        "ipsets": {"ipset:low": ["add 100.64.0.0/29", "remove 100.64.0.4/32"]},
        "acls": [
            {"action": "accept", "src": ["autogroup:member"], "dst": ["tag:web:443"]},
            {"action": "accept", "src": ["group:eng"], "dst": ["tag:db:5432", "dbhost:22"]},
            {"action": "accept", "src": ["tag:ops"], "dst": ["*:*"]},
            {"action": "accept", "src": ["lan"], "dst": ["ipset:low:80"]},
            {"action": "accept", "src": ["dave@other.org"], "dst": ["group:ops:*"]},
            {"action": "accept", "src": ["autogroup:tagged"], "dst": ["tag:ghost:1"]},
            {"action": "accept", "src": ["tag:db", "dbhost"], "dst": ["tag:web:9000"]},
        ],
        "grants": [
            {
                "src": ["group:ops"],
                "dst": ["tag:web"],
                "ip": ["tcp:8080"],
                "app": {"example.com/cap/admin": [{"level": 1}]},
            },
            {
                "src": ["tag:db"],
                "dst": ["autogroup:member"],
                "app": {"tailscale.com/cap/drive": [{"shares": ["*"]}]},
            },
        ],
        "autoApprovers": {"routes": {"10.9.0.0/16": ["tag:ops"]}},
        "ssh": [
            {
                "action": "accept",
                "src": ["group:eng"],
                "dst": ["tag:web"],
                "users": ["root", "autogroup:nonroot"],
            },
            {
                "action": "check",
                "src": ["autogroup:member"],
                "dst": ["autogroup:self"],
                "users": ["localpart:*@example.com"],
            },
        ],
        "nodeAttrs": [
            {"target": ["tag:db"], "attr": ["funnel"]},
            {"target": ["group:eng", "100.64.0.0/30"], "attr": ["drive:share"]},
        ],
    }


def _self() -> dict[str, Any]:
    return {
        "groups": {"group:eng": ["alice@example.com", "bob@example.com"]},
        "tagOwners": {t: ["alice@example.com"] for t in TAGS},
        "hosts": {"low": "100.64.0.0/29"},
        "acls": [
            {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
            {"action": "accept", "src": ["carol@example.com"], "dst": ["autogroup:self:22"]},
            {"action": "accept", "src": ["low"], "dst": ["tag:web:80"]},
            {"action": "accept", "src": ["tag:db"], "dst": ["autogroup:member:5432"]},
        ],
        "grants": [
            {
                "src": ["group:eng"],
                "dst": ["autogroup:self"],
                "ip": ["tcp:8080"],
                "app": {"example.com/cap/own": [{"all": True}]},
            }
        ],
        "ssh": [
            {
                "action": "accept",
                "src": ["autogroup:member"],
                "dst": ["autogroup:self"],
                "users": ["autogroup:nonroot"],
            }
        ],
    }


def _synthetic() -> Policy:
    doc, _, users = synthetic(40, 25, seed=3)
    # the synthetic users are u0..; the random nodes below use ours, so name theirs too
    doc["groups"] = {g: [*m, EMAILS[k % 4]] for k, (g, m) in enumerate(doc["groups"].items())}
    doc["tagOwners"] = {**doc["tagOwners"], **{t: [EMAILS[0]] for t in TAGS}}
    doc["acls"].append({"action": "accept", "src": ["tag:web"], "dst": ["tag:t1:*"]})
    return parse_policy(doc)


def _via() -> Policy:
    doc = _features()
    doc["grants"].append(
        {"src": ["group:eng"], "dst": ["10.9.0.0/16"], "via": ["tag:ops"], "ip": ["*"]}
    )
    return parse_policy(doc)


POLICIES = {
    "via": _via,
    "features": lambda: parse_policy(_features()),
    "example": lambda: parse_policy(loads(EXAMPLE.read_text())),
    "synthetic": _synthetic,
    "self": lambda: parse_policy(_self()),
    "allow-all": lambda: parse_policy({}),
}


def _node(k: int, rng: random.Random) -> TopologyNode:
    tagged = rng.random() < 0.35
    # a few routers (a subnet, sometimes an exit): their joins rebuild, and
    # the joins of others grow an index that has routes
    routes = rng.choice([(), (), (), (), (), ("10.9.0.0/16",), ("10.9.0.0/16", "0.0.0.0/0")])
    return TopologyNode(
        routable_ips=routes,
        approved_routes=routes,
        name=f"n{k}",
        hostname=f"n{k}",
        user=None if tagged else rng.choice(USERS).name,
        tags=tuple(sorted(rng.sample(TAGS, rng.randint(1, 2)))) if tagged else (),
        ipv4=f"100.64.0.{k}" if k < 250 else f"100.64.1.{k - 250}",
        ipv6=f"fd7a:115c:a1e0::{k:x}",
    )


def _views(compiled: CompiledTailnet[str]) -> dict[str, Any]:
    return {
        key: (
            v.packet_filter_rules,
            v.ssh_policy,
            v.peers,
            v.self_cap_map,
            v.self_allowed_ips,
            dict(v.whois_cap_map),
        )
        for key, v in compiled.nodes.items()
    }


def _origin(compiled: CompiledTailnet[str]) -> str:
    index = compiled.visibility
    assert isinstance(index, ViewIndex)
    return index.origin


def _run(policy: Policy, seed: int, steps: int) -> list[str]:
    rng = random.Random(seed)
    nodes = [_node(k, rng) for k in range(1, rng.randint(2, 12))]
    serial = len(nodes) + 1
    # identity-provider groups: a group gains members at run time
    groups = {"group:eng": ("dave@other.org",)} if seed % 2 else {}
    topo = Topology(USERS, tuple(nodes), groups=groups)
    compiled = compile_tailnet(policy, topo, enforce_tests=False)
    origins = []
    for _ in range(steps):
        if rng.random() < 0.1:
            nodes = [replace(n) for n in nodes]  # equal records: nothing the policy sees
        elif rng.random() < 0.75 or len(nodes) < 2:
            # joins close together are compiled at once (the server's `settle`)
            for _ in range(1 if rng.random() < 0.7 else rng.randint(2, 4)):
                nodes.append(_node(serial, rng))
                serial += 1
        else:
            nodes.pop(rng.randrange(len(nodes)))
        primaries = compiled.visibility.primaries()  # type: ignore[union-attr]
        topo = Topology(USERS, tuple(nodes), primaries=primaries, groups=groups)
        grown = compile_tailnet(policy, topo, enforce_tests=False, base=compiled)
        fresh = compile_tailnet(policy, topo, enforce_tests=False)
        assert _views(grown) == _views(fresh)
        origins.append(_origin(grown))
        # the server compiles against the index serving now; sometimes it was read first
        if rng.random() < 0.5:
            _views(grown)
        compiled = grown
    return origins


@pytest.mark.parametrize("name", sorted(POLICIES))
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_a_grown_index_shows_every_node_what_a_fresh_compile_does(name: str, seed: int) -> None:
    _run(POLICIES[name](), seed, steps=8)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_joins_without_routes_grow_the_index(name: str) -> None:
    origins = _run(POLICIES[name](), seed=7, steps=30)
    joins = [o for o in origins if o == "extended"]
    assert len(joins) >= 10, origins
    assert all(o in ("extended", "reused") or o.startswith("full: ") for o in origins)


def test_under_autogroup_self_a_users_first_device_rebuilds_and_the_next_grows() -> None:
    # the first device makes its user's own rule, which comes between the
    # others: the index is built; the user's next devices join that rule
    policy = parse_policy(_self())

    def device(k: int, user: str) -> TopologyNode:
        return TopologyNode(f"n{k}", f"n{k}", user, (), f"100.64.0.{k}", f"fd7a:115c:a1e0::{k}")

    nodes = [device(1, "alice"), device(2, "carol")]
    compiled = compile_tailnet(policy, Topology(USERS, tuple(nodes)), enforce_tests=False)
    origins = []
    for k, user in enumerate(["bob", "bob", "alice", "carol", "bob"], start=3):
        nodes.append(device(k, user))
        topo = Topology(USERS, tuple(nodes))
        compiled = compile_tailnet(policy, topo, enforce_tests=False, base=compiled)
        assert _views(compiled) == _views(compile_tailnet(policy, topo, enforce_tests=False))
        origins.append(_origin(compiled))
    first = "full: autogroup:self: a user's first device"
    assert origins == [first, "extended", "extended", "extended", "extended"]


def test_under_autogroup_self_joins_that_share_a_settle_grow_the_index() -> None:
    # several devices of users who have one already: grown one after the other
    # (a connect storm's settle), not rebuilt, and what a fresh compile shows
    policy = parse_policy(_self())

    def device(k: int, user: str) -> TopologyNode:
        return TopologyNode(f"n{k}", f"n{k}", user, (), f"100.64.0.{k}", f"fd7a:115c:a1e0::{k}")

    nodes = [device(1, "alice"), device(2, "carol"), device(3, "bob")]
    compiled = compile_tailnet(policy, Topology(USERS, tuple(nodes)), enforce_tests=False)
    _views(compiled)  # the serving views were read
    more = [device(4, "bob"), device(5, "alice"), device(6, "bob"), device(7, "carol")]
    topo = Topology(USERS, (*nodes, *more))
    grown = compile_tailnet(policy, topo, enforce_tests=False, base=compiled)
    assert _origin(grown) == "extended"
    assert _views(grown) == _views(compile_tailnet(policy, topo, enforce_tests=False))
    # a newcomer who is its user's first device among them: rebuilt, as alone
    topo = Topology(USERS, (*topo.nodes, device(8, "bob"), device(9, "dave")))
    again = compile_tailnet(policy, topo, enforce_tests=False, base=grown)
    assert _origin(again) == "full: autogroup:self: a user's first device"
    assert _views(again) == _views(compile_tailnet(policy, topo, enforce_tests=False))


def test_a_newcomer_named_twice_as_a_source_is_listed_once() -> None:
    # tag:db's nodes and the host 100.64.0.3 are both sources: when the node at
    # that address joins as tag:db, its address is one source, not two
    policy = parse_policy(
        {
            "tagOwners": {"tag:db": [EMAILS[0]], "tag:web": [EMAILS[0]]},
            "hosts": {"dbhost": "100.64.0.3"},
            "acls": [{"action": "accept", "src": ["tag:db", "dbhost"], "dst": ["tag:web:80"]}],
        }
    )

    def at(k: int, tag: str) -> TopologyNode:
        return TopologyNode(f"n{k}", f"n{k}", None, (tag,), f"100.64.0.{k}", f"fd7a:115c:a1e0::{k}")

    before = Topology(USERS, (at(1, "tag:web"), at(2, "tag:db")))
    after = Topology(USERS, (*before.nodes, at(3, "tag:db")))
    base = compile_tailnet(policy, before, enforce_tests=False)
    grown = compile_tailnet(policy, after, enforce_tests=False, base=base)
    assert _origin(grown) == "extended"
    (rule,) = grown.nodes["n1"].packet_filter_rules
    assert rule["SrcIPs"].count("100.64.0.3") == 1
    assert _views(grown) == _views(compile_tailnet(policy, after, enforce_tests=False))


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_the_serving_index_is_untouched_by_joins_grown_from_it(name: str) -> None:
    # Grown indexes share the address tables of the one serving (they append
    # to them): it must keep showing what it showed, and a second index grown
    # from it (the first was dropped: the server compiled again) must be right.
    policy = POLICIES[name]()
    rng = random.Random(5)
    nodes = [_node(k, rng) for k in range(1, 9)]
    topo = Topology(USERS, tuple(nodes))
    # (each read builds its view again)
    serving = compile_tailnet(policy, topo, enforce_tests=False, keep_views=False)
    before = _views(serving)
    for k in (20, 21, 22):
        topo = Topology(USERS, (*nodes, replace(_node(k, rng), routable_ips=())))
        grown = compile_tailnet(policy, topo, enforce_tests=False, base=serving)
        assert _views(grown) == _views(compile_tailnet(policy, topo, enforce_tests=False))
    again = compile_tailnet(policy, Topology(USERS, tuple(nodes)), enforce_tests=False)
    assert _views(serving) == before == _views(again)

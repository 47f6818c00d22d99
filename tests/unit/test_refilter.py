"""A commit that changes nodes' packet filters alone hands each of them its
earlier view with the new filter (gitctl/policy/refilter.py): views equal to
a fresh compile's, the other fields the very objects the session holds, and
refused wherever something else may differ."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitctl.policy import parse_policy
from gitctl.policy.topology import Topology, TopologyNode, TopologyUser
from gitctl.policy.viewindex import ViewIndex

USERS = ("alice", "bob", "carol")
OWNERS = (*USERS, "tag:web", "tag:db")
SUBNET = "10.1.0.0/24"


def topology(spec: list[tuple[str, int, bool]]) -> Topology:
    """Nodes as (owner, addresses: 1 IPv4, 2 IPv6, 3 both; routes a subnet)."""
    return Topology(
        users=tuple(TopologyUser(n + 1, u, f"{u}@example.com") for n, u in enumerate(USERS)),
        nodes=tuple(
            TopologyNode(
                name=f"n{i}",
                hostname=f"n{i}",
                user=None if owner.startswith("tag:") else owner,
                tags=(owner,) if owner.startswith("tag:") else (),
                ipv4=f"100.64.0.{i + 1}" if addrs & 1 else None,
                ipv6=f"fd7a:115c:a1e0::{i + 1:x}" if addrs & 2 else None,
                routable_ips=(SUBNET,) if router else (),
                approved_routes=(SUBNET,) if router else (),
            )
            for i, (owner, addrs, router) in enumerate(spec)
        ),
    )


def policy_doc(
    rules: list[tuple[str, str]],
    ports: str,
    *,
    ssh: bool,
    app: bool,
    no_v4: bool,
    funnel: bool = False,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "tagOwners": {"tag:web": ["alice@example.com"], "tag:db": ["alice@example.com"]},
        "acls": [{"action": "accept", "src": [s], "dst": [f"{d}:{ports}"]} for s, d in rules],
    }
    if ssh:
        doc["ssh"] = [
            {
                "action": "accept",
                "src": ["autogroup:member"],
                "dst": ["autogroup:self"],
                "users": ["root"],
            }
        ]
    if app:
        doc["grants"] = [
            {"src": ["autogroup:member"], "dst": ["autogroup:self"], "app": {"example.com/c": [{}]}}
        ]
    attrs = [{"target": ["tag:db"], "attr": ["disable-ipv4"]}] if no_v4 else []
    if funnel:  # a node's capabilities: its own view changes
        attrs.append({"target": ["bob@example.com"], "attr": ["funnel"]})
    if attrs:
        doc["nodeAttrs"] = attrs
    return doc


def index(doc: dict[str, Any], topo: Topology) -> ViewIndex[int]:
    return ViewIndex(parse_policy(doc), topo, list(range(len(topo.nodes))))


def committed(before: ViewIndex[int], doc: dict[str, Any]) -> ViewIndex[int]:
    """The index of ``doc`` over ``before``'s nodes, adopting its views (as a
    commit does once the fan-out built them all)."""
    for i in range(len(before.keys)):
        before.view(i)
    after = index(doc, before.topology)
    after.adopt(before)
    return after


SOURCES = ("autogroup:member", "alice@example.com", "tag:web", "*")
DESTS = ("autogroup:self", "tag:db", "bob@example.com", "tag:web", SUBNET)
# (autogroup:self takes users as sources, not tags or "*")
RULES = st.sampled_from(
    [(s, d) for s in SOURCES for d in DESTS if d != "autogroup:self" or "@" in s or "member" in s]
)
PORTS = ("*", "22", "443", "22,443", "80-90")


@settings(max_examples=150, deadline=None)
@given(
    spec=st.lists(
        st.tuples(st.sampled_from(OWNERS), st.sampled_from((1, 2, 3, 3)), st.booleans()),
        min_size=1,
        max_size=9,
    ),
    rules=st.lists(RULES, max_size=3),
    ports=st.tuples(st.sampled_from(PORTS), st.sampled_from(PORTS)),
    flags=st.lists(st.booleans(), min_size=4, max_size=4),
    change=st.sampled_from(("ports", "ssh", "app", "no_v4", "funnel", "rules")),
    other=st.lists(RULES, min_size=1, max_size=3),
)
def test_a_commit_gives_the_views_of_a_fresh_compile(
    spec: list[tuple[str, int, bool]],
    rules: list[tuple[str, str]],
    ports: tuple[str, str],
    flags: list[bool],
    change: str,
    other: list[tuple[str, str]],
) -> None:
    # Users under autogroup:self, tags, IPv4/IPv6/both, routers of a subnet;
    # the commit moves ports only (the filter alone changes), or also turns
    # SSH, capability grants, IPv4 or a node's capabilities on or off, or
    # changes who sees whom.
    rules = [("autogroup:member", "autogroup:self"), *rules]
    ssh, app, no_v4, funnel = flags
    topo = topology(spec)
    kw = {"ssh": ssh, "app": app, "no_v4": no_v4, "funnel": funnel}
    before = index(policy_doc(rules, ports[0], **kw), topo)
    if change in kw:
        kw[change] = not kw[change]
    new_rules = [*rules, *other] if change == "rules" else rules
    doc = policy_doc(new_rules, ports[1], **kw)
    after, fresh = committed(before, doc), index(doc, topo)
    for i in range(len(spec)):
        view, want = after.view(i), fresh.view(i)
        assert view == want
        assert list(view.peers) == list(want.peers)
        assert dict(view.whois_cap_map) == dict(want.whois_cap_map)


def self_ports(ports: str, **kw: bool) -> dict[str, Any]:
    return policy_doc(
        [("autogroup:member", "autogroup:self")],
        ports,
        **{"ssh": False, "app": False, "no_v4": False, **kw},
    )


SPEC = [(USERS[i % 3], 3, False) for i in range(9)]


def test_a_ports_only_commit_builds_no_view_but_the_filter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = index(self_ports("*", ssh=True), topology(SPEC))
    after = index(self_ports("22,443", ssh=True), before.topology)
    for i in range(len(SPEC)):
        before.view(i)
    after.adopt(before)

    def no_build(i: int) -> object:
        raise AssertionError("a view built whole")

    monkeypatch.setattr(after, "_build", no_build)
    fresh = index(self_ports("22,443", ssh=True), before.topology)
    for i in range(len(SPEC)):
        old, view = before.view(i), after.view(i)
        assert view == fresh.view(i)
        assert view.packet_filter_rules != old.packet_filter_rules
        # All but the filter: the objects the session holds, told by identity.
        for field in ("ssh_policy", "peers", "self_cap_map", "self_allowed_ips", "whois_cap_map"):
            assert getattr(view, field) is getattr(old, field)


@pytest.mark.parametrize(
    ("before_kw", "after_kw", "why"),
    [
        ({}, {"ssh": True}, "an SSH rule came"),
        ({}, {"no_v4": True}, "a node lost IPv4"),
    ],
)
def test_a_commit_that_changes_more_than_filters_builds_views_whole(
    before_kw: dict[str, bool], after_kw: dict[str, bool], why: str
) -> None:
    spec = [*SPEC, ("tag:db", 3, False)]
    before = index(self_ports("*", **before_kw), topology(spec))
    after = committed(before, self_ports("22", **after_kw))
    assert not after._refilter, why


def test_capability_grants_build_the_whois_map_again() -> None:
    before = index(self_ports("*", app=True), topology(SPEC))
    after = committed(before, self_ports("22", app=True))
    assert len(after._refilter) == len(SPEC) and not after._whois_kept
    fresh = index(self_ports("22", app=True), before.topology)
    for i in range(len(SPEC)):
        view = after.view(i)
        assert view.whois_cap_map is not before.view(i).whois_cap_map
        assert dict(view.whois_cap_map) == dict(fresh.view(i).whois_cap_map)


def test_a_viewer_of_a_router_works_its_peers_out_again() -> None:
    spec = [*SPEC, ("alice", 3, True)]
    rules = [("autogroup:member", "autogroup:self"), ("alice@example.com", SUBNET)]
    flags = {"ssh": False, "app": False, "no_v4": False}
    before = index(policy_doc(rules, "*", **flags), topology(spec))
    after = committed(before, policy_doc(rules, "22", **flags))
    router = len(spec) - 1
    viewers = {i for i, (owner, _, _) in enumerate(spec) if owner == "alice"} - {router}
    # Alice's other nodes see the router (and its subnet); bob's and carol's,
    # and the router itself, do not.
    assert set(after._refilter) == set(range(len(spec))) - viewers
    fresh = index(policy_doc(rules, "22", **flags), before.topology)
    for i in range(len(spec)):
        assert after.view(i) == fresh.view(i)


def test_a_rule_that_shows_a_subnet_to_whom_saw_its_router_changes_their_peers() -> None:
    # The new rule reaches the router from alice's nodes as an earlier one
    # did (who sees whom stays), but now shows them its subnet.
    spec = [*SPEC, ("tag:web", 3, True)]
    flags = {"ssh": False, "app": False, "no_v4": False}
    rules = [("autogroup:member", "autogroup:self"), ("alice@example.com", "tag:web")]
    before = index(policy_doc(rules, "*", **flags), topology(spec))
    doc = policy_doc([*rules, ("alice@example.com", SUBNET)], "*", **flags)
    after, fresh = committed(before, doc), index(doc, before.topology)
    alice = [i for i, (owner, _, _) in enumerate(spec) if owner == "alice"]
    assert any(SUBNET in v.allowed_ips for v in fresh.view(alice[0]).peers.values())
    for i in range(len(spec)):
        assert after.view(i) == fresh.view(i)

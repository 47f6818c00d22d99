"""What a commit builds per session, made once where sessions can share it:
the rendered filter's port values, a user's source set, the message's
ControlTime."""

from __future__ import annotations

import json
from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from gitctl.policy import parse_policy
from gitctl.policy.filter import DstPart, Rule
from gitctl.policy.model import PortRange
from gitctl.policy.viewindex import ViewIndex
from server.store.interface import Store
from server.tailnet import TailnetSource
from server.tailnet.mapencode import Deltas
from server.tailnet.mapper import build_map
from tests.unit.control_client import T0
from tests.unit.test_commit_fanout import USERS, self_policy, store, streaming

__all__ = ["store"]  # the fixture, shared with test_commit_fanout

ADDRS = [["100.64.0.1", "fd7a:115c:a1e0::1"], ["100.64.0.2"], ["100.64.0.3", "fd7a::3"]]

ports = st.lists(
    st.tuples(st.integers(0, 65535), st.integers(0, 65535)).map(lambda p: PortRange(*sorted(p))),
    min_size=1,
    max_size=3,
).map(tuple)
parts = st.lists(
    st.tuples(st.frozensets(st.integers(0, 2)), ports, st.sampled_from(["", "*", "10.0.0.0/8"])),
    min_size=1,
    max_size=4,
)


def rule_of(spec: list[tuple[frozenset[int], tuple[PortRange, ...], str]]) -> Rule:
    rule = Rule(src_ips=("100.64.0.9",), src_members=frozenset({9}), protos=(6,))
    for nodes, port_set, text in spec:
        # An empty text: the node's own addresses, as autogroup:self renders them.
        rule.add(DstPart(nodes, port_set, None if text else ADDRS, text))
    return rule


@given(parts, st.integers(0, 2))
def test_a_rendered_rule_lists_what_its_entries_say_in_their_order(
    spec: list[tuple[frozenset[int], tuple[PortRange, ...], str]], node: int
) -> None:
    rule = rule_of(spec)
    rendered = rule.render(node)
    want = [
        {"IP": text, "Ports": {"First": p.first, "Last": p.last}}
        for text, port_set in rule.entries(node)
        for p in port_set
    ]
    assert rendered["DstPorts"] == want
    assert rendered["SrcIPs"] == ["100.64.0.9"] and rendered["IPProto"] == [6]
    assert json.loads(json.dumps(rendered)) == rendered


def test_every_node_of_a_rule_holds_the_same_port_values() -> None:
    # A commit renders every node's filter: one Ports object per port set,
    # not one per node and entry.
    rule = rule_of([(frozenset({0, 1, 2}), (PortRange(22, 22), PortRange(443, 443)), "")])
    first, second = rule.render(0)["DstPorts"], rule.render(2)["DstPorts"]
    assert [e["IP"] for e in first] == ["100.64.0.1"] * 2 + ["fd7a:115c:a1e0::1"] * 2
    assert first[0]["Ports"] is second[0]["Ports"]
    assert first[1]["Ports"] is second[1]["Ports"] == {"First": 443, "Last": 443}


def control_time(message: bytes) -> str:
    return str(json.loads(message)["ControlTime"])


def test_bodies_of_their_own_carry_a_control_time_formatted_once_per_hold() -> None:
    # Under autogroup:self every session's commit message is its own body;
    # the time in it is formatted once per `HOLD`, as a shared message's is.
    deltas = Deltas()
    first = deltas.shared(b'{"PacketFilter":[1]}', T0)
    later = deltas.shared(b'{"PacketFilter":[2]}', T0 + timedelta(milliseconds=900))
    assert control_time(first) == control_time(later) == "2025-06-01T12:00:00Z"
    after = deltas.shared(b'{"PacketFilter":[3]}', T0 + Deltas.HOLD)
    assert control_time(after) == "2025-06-01T12:00:01Z"
    # A clock that stepped back gets its own time, not one from its future.
    back = deltas.shared(b'{"PacketFilter":[4]}', T0 - timedelta(seconds=5))
    assert control_time(back) == "2025-06-01T11:59:55Z"
    # A body too long to be held is stamped alike.
    long = deltas.shared(b'{"P":"%b"}' % (b"x" * Deltas.MAX_BYTES), T0 - timedelta(seconds=4.5))
    assert control_time(long) == "2025-06-01T11:59:55Z"


def test_a_users_autogroup_self_rules_share_one_source_set(store: Store) -> None:
    # Two autogroup:self ACLs reach every node of a user, and merge into one
    # rule by their sources: the same set object, found by identity.
    _, tailnet, streams = streaming(store)
    doc = self_policy("22")
    doc["acls"].append({**doc["acls"][0], "dst": ["autogroup:self:443"]})
    tailnet.swap_source(
        TailnetSource(
            id="two",
            domain="tailnet.example",
            dns_config={"Domains": ["tailnet.example"], "Proxied": True},
            users={f"u{u}": (f"u{u}@example.com", f"U{u}") for u in range(USERS)},
            policy=parse_policy(doc),
        )
    )
    index = tailnet.views.compiled.visibility
    assert isinstance(index, ViewIndex)
    for node_id in streams:
        i = index.position[node_id]
        first, second = (r for r in index.per_node[i] if not r.hidden)
        assert first.src_key is second.src_key and first.src_ips is second.src_ips
        view = tailnet.views.get(node_id)
        assert view is not None
        (rule,) = view.packet_filter_rules
        assert [(d["IP"], d["Ports"]["First"]) for d in rule["DstPorts"]] == [
            (ip, port) for port in (22, 443) for ip in index.index.ips[i]
        ]
        fresh = build_map(tailnet.context, node_id, T0)
        assert fresh is not None and fresh.top["PacketFilter"] == view.packet_filter_rules

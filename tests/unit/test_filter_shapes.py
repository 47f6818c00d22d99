"""A node's filter from its shape (`gitctl.policy.filtershape`) is the filter
its rules render, its JSON is byte for byte what encoding the rendered
rules gives, and two shaped filters compare as their rendered rules do:
over random policies (autogroup:self, tags, users, ``*``, ports, protocols,
app grants) and nodes with IPv4, IPv6 or both."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gitctl.policy import parse_policy
from gitctl.policy.filtershape import ShapedFilter
from gitctl.policy.topology import Topology, TopologyNode, TopologyUser
from gitctl.policy.viewfields import merge_rules
from gitctl.policy.viewindex import ViewIndex
from server.protocol.mapframe import SplicedMessage
from server.tailnet import mapencode as mapencode_module
from server.tailnet.filtermsg import own_filter_message, sends_own_filter_only
from server.tailnet.mapencode import (
    SPLICE_MIN,
    Deltas,
    Fragments,
    SharedPiece,
    encode_json,
    encode_message,
)
from tests.unit.control_client import T0

USERS = ("alice", "bob", "carol")
SOURCES = ["alice@example.com", "bob@example.com", "tag:web", "*", "autogroup:member"]
DESTINATIONS = ["autogroup:self", "tag:web", "tag:db", "bob@example.com", "*", "10.0.0.0/8"]
PORTS = ["*", "22", "443", "22,443", "80-90"]

acls = st.lists(
    st.fixed_dictionaries(
        {
            "src": st.lists(st.sampled_from(SOURCES), min_size=1, max_size=2, unique=True),
            "dst": st.lists(
                st.tuples(st.sampled_from(DESTINATIONS), st.sampled_from(PORTS)).map(":".join),
                min_size=1,
                max_size=3,
                unique=True,
            ),
            "proto": st.sampled_from([None, "tcp", "udp"]),
        }
    ),
    min_size=1,
    max_size=4,
)
# (owner or tag, has IPv4, has IPv6): at least one address each
nodes = st.lists(
    st.tuples(
        st.sampled_from([*USERS, "tag:web", "tag:db"]),
        st.sampled_from([(True, True), (True, False), (False, True)]),
    ),
    min_size=1,
    max_size=10,
)


def _sources(rule: dict[str, Any]) -> list[str]:
    """autogroup:self takes users' sources only."""
    if not any(d.startswith("autogroup:self") for d in rule["dst"]):
        return list(rule["src"])
    return [s for s in rule["src"] if "@" in s or s == "autogroup:member"] or ["autogroup:member"]


def policy_of(rules: list[dict[str, Any]], app: bool) -> Any:
    doc: dict[str, Any] = {
        "tagOwners": {"tag:web": ["alice@example.com"], "tag:db": ["alice@example.com"]},
        "acls": [
            {
                "action": "accept",
                "src": _sources(r),
                "dst": r["dst"],
                **({"proto": r["proto"]} if r["proto"] else {}),
            }
            for r in rules
        ],
    }
    if app:  # capability grants: rendered per node, never shaped
        doc["grants"] = [
            {
                "src": ["autogroup:member"],
                "dst": ["autogroup:self"],
                "app": {"example.com/cap": [{}]},
            }
        ]
    return parse_policy(doc)


def index_of(policy: Any, spec: list[tuple[str, tuple[bool, bool]]]) -> ViewIndex[int]:
    topology = Topology(
        users=tuple(TopologyUser(n + 1, u, f"{u}@example.com") for n, u in enumerate(USERS)),
        nodes=tuple(
            TopologyNode(
                name=f"n{i}",
                hostname=f"n{i}",
                user=None if owner.startswith("tag:") else owner,
                tags=(owner,) if owner.startswith("tag:") else (),
                ipv4=f"100.64.0.{i + 1}" if v4 else None,
                ipv6=f"fd7a:115c:a1e0::{i + 1:x}" if v6 else None,
            )
            for i, (owner, (v4, v6)) in enumerate(spec)
        ),
    )
    return ViewIndex(policy, topology, list(range(len(spec))))


def rendered(index: ViewIndex[int], i: int) -> tuple[dict[str, Any], ...]:
    return merge_rules((r, r.render(i)) for r in index.per_node[i] if not r.hidden)


def filter_json(rules: Any, fragments: Fragments) -> bytes:
    return encode_message({"PacketFilter": rules}, fragments=fragments)


@settings(max_examples=150, deadline=None)
@given(acls, nodes, st.booleans())
def test_a_shaped_filter_is_its_rules_rendered_and_encodes_to_the_same_bytes(
    rules: list[dict[str, Any]], spec: list[tuple[str, tuple[bool, bool]]], app: bool
) -> None:
    index = index_of(policy_of(rules, app), spec)
    shaped, plain = Fragments(), Fragments()  # each its own kept pieces, shared by every node
    deltas = Deltas()
    for i in range(len(spec)):
        got, want = index.view(i).packet_filter_rules, rendered(index, i)
        assert got == want and tuple(got) == want and list(got) == list(want)
        assert len(got) == len(want)
        if any(r.caps is not None for r in index.per_node[i]):
            assert type(got) is not ShapedFilter
        a, b = filter_json(got, shaped), filter_json(want, plain)
        assert bytes(a) == bytes(b)
        # The long sources are the same pieces, at the same offsets.
        assert type(a) is type(b)
        if type(a) is SplicedMessage and type(b) is SplicedMessage:
            assert [(at, bytes(p)) for at, p in a.pieces] == [(at, bytes(p)) for at, p in b.pieces]
        if type(got) is ShapedFilter:
            # Where its long kept pieces are, known per sources, not looked for.
            out: list[bytes] = []
            apart = shaped.add_shaped(out, got)
            assert apart == tuple(
                n for n, p in enumerate(out) if type(p) is SharedPiece and len(p) >= SPLICE_MIN
            )
        if sends_own_filter_only({"PacketFilter": got}):
            # The whole message made at once is what the general path makes.
            whole = own_filter_message(shaped, got, deltas.stamp(T0))
            general = deltas.shared(filter_json(got, plain), T0, own=True)
            assert bytes(whole) == bytes(general) and type(whole) is type(general)
            assert _pieces(whole) == _pieces(general)


def _pieces(msg: bytes) -> list[tuple[int, bytes]]:
    return [(at, bytes(p)) for at, p in msg.pieces] if type(msg) is SplicedMessage else []


ALICE_TO = [
    {"src": ["alice@example.com"], "dst": [f"{d}:22"], "proto": None}
    for d in ("*", "autogroup:self")
]


@settings(max_examples=100, deadline=None)
@given(acls, acls, nodes)
@example(
    ALICE_TO[:1], ALICE_TO[1:], [("alice", (True, False))]
)  # the same but for "*" vs its own IP
def test_shaped_filters_compare_as_their_rendered_rules(
    first: list[dict[str, Any]],
    second: list[dict[str, Any]],
    spec: list[tuple[str, tuple[bool, bool]]],
) -> None:
    # Two commits over the same nodes: a session resends a filter exactly
    # when its rendered rules changed.
    old, new = index_of(policy_of(first, False), spec), index_of(policy_of(second, False), spec)
    for i in range(len(spec)):
        a, b = old.view(i).packet_filter_rules, new.view(i).packet_filter_rules
        same = rendered(old, i) == rendered(new, i)
        assert (a == b) is same and (a != b) is not same
        assert (b == a) is same
    again = index_of(policy_of(first, False), spec)
    for i in range(len(spec)):
        assert again.view(i).packet_filter_rules == old.view(i).packet_filter_rules


def test_a_users_nodes_share_one_shape_and_a_recompile_finds_it_by_value() -> None:
    policy = policy_of(
        [{"src": ["autogroup:member"], "dst": ["autogroup:self:22"], "proto": None}], False
    )
    spec = [(u, (True, True)) for u in USERS for _ in range(3)]
    index = index_of(policy, spec)
    filters = [index.view(i).packet_filter_rules for i in range(len(spec))]
    assert all(type(f) is ShapedFilter for f in filters)
    shaped = [f for f in filters if isinstance(f, ShapedFilter)]
    assert len({id(f.shape) for f in shaped}) == 1  # every user's nodes: one shape
    assert len({id(f.srcs[0]) for f in shaped}) == len(USERS)  # each user's own sources
    # Encoded once per shape: the next node's filter costs no rule encoding.
    fragments = Fragments()
    filter_json(shaped[0], fragments)
    held = len(fragments._shapes)
    for f in shaped[1:]:
        filter_json(f, fragments)
    assert len(fragments._shapes) == held == 1


def test_nodes_whose_filter_holds_no_own_address_share_one_filter_object() -> None:
    # A rule to "*": every node's filter is the same, so sessions compare
    # it by identity and no node builds its own.
    policy = policy_of([{"src": ["autogroup:member"], "dst": ["*:22"], "proto": None}], False)
    spec = [(u, (True, True)) for u in USERS]
    index = index_of(policy, spec)
    filters = [index.view(i).packet_filter_rules for i in range(len(spec))]
    assert all(f is filters[0] for f in filters)
    assert filters[0] == rendered(index, 0)


def test_a_shaped_filter_encodes_whole_without_fragments_too() -> None:
    # Messages encoded in one call (no kept pieces) hand it to msgspec's hook.
    policy = policy_of(
        [{"src": ["autogroup:member"], "dst": ["autogroup:self:22"], "proto": "tcp"}], False
    )
    index = index_of(policy, [("alice", (True, True)), ("alice", (False, True))])
    for i in range(2):
        shaped = index.view(i).packet_filter_rules
        assert type(shaped) is ShapedFilter
        assert encode_json({"PacketFilter": shaped}) == encode_json(
            {"PacketFilter": rendered(index, i)}
        )


def test_a_users_sources_are_filled_in_once_for_all_of_its_nodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Per node only its own texts go into the template: a user's sources
    # (the bulk of the filter) are put in place once for all its nodes.
    fills: list[int] = []
    fill = mapencode_module.fill_sources

    def counting(*args: Any) -> Any:
        fills.append(1)
        return fill(*args)

    monkeypatch.setattr(mapencode_module, "fill_sources", counting)
    policy = policy_of(
        [{"src": ["autogroup:member"], "dst": ["autogroup:self:22"], "proto": None}], False
    )
    spec = [(u, (True, True)) for u in USERS for _ in range(3)]
    index = index_of(policy, spec)
    shaped, plain = Fragments(), Fragments()
    for i in range(len(spec)):
        got = index.view(i).packet_filter_rules
        assert bytes(filter_json(got, shaped)) == bytes(filter_json(rendered(index, i), plain))
    assert len(fills) == len(USERS)


def test_long_sources_are_spliced_where_the_general_path_splices_them() -> None:
    # 60 nodes of one user: each rule's sources are over SPLICE_MIN bytes,
    # pieces a message says the place of; two rules (by protocol), two pieces.
    policy = policy_of(
        [
            {"src": ["autogroup:member"], "dst": ["autogroup:self:22"], "proto": None},
            {"src": ["autogroup:member"], "dst": ["autogroup:self:53"], "proto": "udp"},
        ],
        False,
    )
    spec = [("alice", (True, True))] * 50 + [("alice", (False, True))] * 10
    index = index_of(policy, spec)
    shaped, plain, deltas = Fragments(), Fragments(), Deltas()
    for i in range(len(spec)):
        got = index.view(i).packet_filter_rules
        assert type(got) is ShapedFilter
        whole = own_filter_message(shaped, got, deltas.stamp(T0))
        general = deltas.shared(filter_json(got, plain), T0, own=True)
        assert bytes(whole) == bytes(general)
        assert len(_pieces(whole)) == 2 and _pieces(whole) == _pieces(general)

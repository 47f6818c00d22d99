"""The server's policy views: built per node on demand, reused across joins,
and naming exactly the sessions whose maps a topology change touches."""

from __future__ import annotations

import gc
import json
import weakref
from dataclasses import replace
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address

from gitctl.policy import parse_policy
from server.protocol.keys import DiscoPublic, MachinePublic, NodePublic
from server.store.model import Node
from server.views import NodeView, PolicyViews, compute_views

NOW = datetime(2026, 1, 1, tzinfo=UTC)
USERS = [(1, "alice", "alice@example.com"), (2, "bob", "bob@example.com")]
POLICY = parse_policy(
    {
        "tagOwners": {"tag:web": ["alice@example.com"], "tag:db": ["alice@example.com"]},
        "acls": [
            {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:web:443"]},
            {"action": "accept", "src": ["tag:web"], "dst": ["tag:db:5432"]},
            {"action": "accept", "src": ["bob@example.com"], "dst": ["bob@example.com:*"]},
        ],
    }
)


def node(i: int, user: str | None = None, tags: tuple[str, ...] = ()) -> Node:
    raw = i.to_bytes(4, "big") + bytes(28)
    return Node(
        id=i,
        machine_key=MachinePublic(raw),
        node_key=NodePublic(raw),
        disco_key=DiscoPublic(raw),
        ipv4=IPv4Address(0x64400000 + i),
        ipv6=IPv6Address((0xFD7A115CA1E0 << 80) + i),
        hostname=f"n{i}",
        given_name=f"n{i}",
        user=user,
        tags=tags,
        auth_key_id=None,
        ephemeral=False,
        created=NOW,
        last_seen=None,
        key_expiry=None,
        hostinfo=json.dumps({"Hostname": f"n{i}"}),
        endpoints=(),
        capver=133,
    )


NODES = [
    node(1, "alice"),
    node(2, "alice"),
    node(3, "bob"),
    node(4, "bob"),
    node(5, tags=("tag:web",)),
    node(6, tags=("tag:db",)),
]


def views_of(
    nodes: list[Node], previous: PolicyViews | None = None, previous_nodes: list[Node] | None = None
) -> PolicyViews:
    return compute_views(
        POLICY,
        USERS,
        nodes,
        {},
        previous=previous,
        previous_nodes={n.id: n for n in previous_nodes} if previous_nodes else None,
    )


def all_views(views: PolicyViews, nodes: list[Node]) -> dict[int, object]:
    return {n.id: views.get(n.id) for n in nodes}


def test_visibility_is_symmetric_and_matches_each_views_peers() -> None:
    views = views_of(NODES)
    for n in NODES:
        seen = set(views.visible_to(n.id))
        view = views.get(n.id)
        assert view is not None and seen == set(view.peers)
        for other in seen:
            assert n.id in views.visible_to(other)
    assert set(views.visible_to(5)) == {1, 2, 6}  # alice's devices and the database
    assert views.get(99) is None and views.visible_to(99) == []


def test_a_join_rebuilds_only_the_views_that_see_the_new_node() -> None:
    before = views_of(NODES)
    old = all_views(before, NODES)
    web2 = node(7, tags=("tag:web",))
    after_nodes = [*NODES, web2]
    after = views_of(after_nodes, before, NODES)
    assert after.changed == {7, 1, 2, 6}
    fresh = views_of(after_nodes)
    for n in after_nodes:
        assert after.get(n.id) == fresh.get(n.id)
        if n.id not in after.changed:
            assert after.get(n.id) is old[n.id]
    assert 7 in after.by_node[1].peers


def test_a_leave_wakes_the_nodes_that_saw_it() -> None:
    before = views_of(NODES)
    all_views(before, NODES)
    after_nodes = [n for n in NODES if n.id != 6]
    after = views_of(after_nodes, before, NODES)
    assert after.changed == {6, 5}
    assert 6 not in after.by_node[5].peers


def test_a_new_node_key_wakes_the_node_and_its_peers_only() -> None:
    # The policy does not see keys, but the peers' maps carry them.
    before = views_of(NODES)
    all_views(before, NODES)
    rekeyed = [
        replace(n, node_key=NodePublic(bytes(31) + b"\x09")) if n.id == 3 else n for n in NODES
    ]
    after = views_of(rekeyed, before, NODES)
    assert after.changed == {3, 4}


def test_allow_all_views_are_lazy_and_complete() -> None:
    views = compute_views(None, USERS, NODES, {})
    assert len(views.by_node) == len(NODES)
    view = views.get(1)
    assert view is not None and set(view.peers) == {2, 3, 4, 5, 6}
    assert set(views.visible_to(1)) == {2, 3, 4, 5, 6}
    assert views.changed is None


def test_a_recompile_shares_equal_peer_views_and_frees_the_old_views() -> None:
    # Map refreshes compare peers by identity, and a replaced PolicyViews must
    # go as soon as it is dropped, not when the cycle collector next runs.
    before = views_of(NODES)
    old = all_views(before, NODES)
    after = compute_views(POLICY, USERS, NODES, {}, reuse=before)
    view, old_view = after.get(1), old[1]
    assert view is not None and isinstance(old_view, NodeView) and view is not old_view
    assert all(view.peers[p] is old_view.peers[p] for p in view.peers)
    gone = weakref.ref(before)
    gc.disable()
    try:
        del before, old, old_view
        assert gone() is None
    finally:
        gc.enable()

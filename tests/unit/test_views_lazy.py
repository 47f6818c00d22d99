"""The server's policy views: built per node on demand, reused across joins,
and naming exactly the sessions whose maps a topology change touches."""

from __future__ import annotations

import gc
import random
import weakref
from dataclasses import replace
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from gitctl.policy import parse_policy
from gitctl.policy.viewindex import ViewIndex
from gitctl.snapshot import ALLOW_ALL
from server.protocol.keys import DiscoPublic, MachinePublic, NodePublic
from server.store.model import Node
from server.tailnet.views import NodeView, PolicyViews, compute_views
from server.wire import Hostinfo

NOW = datetime(2026, 1, 1, tzinfo=UTC)
USERS = [(1, "alice", "alice@example.com"), (2, "bob", "bob@example.com")]
POLICY_SOURCE: dict[str, Any] = {
    "tagOwners": {"tag:web": ["alice@example.com"], "tag:db": ["alice@example.com"]},
    "acls": [
        {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:web:443"]},
        {"action": "accept", "src": ["tag:web"], "dst": ["tag:db:5432"]},
        {"action": "accept", "src": ["bob@example.com"], "dst": ["bob@example.com:*"]},
    ],
}
POLICY = parse_policy(POLICY_SOURCE)


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
        hostinfo=Hostinfo(hostname=f"n{i}"),
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
    views = compute_views(ALLOW_ALL, USERS, NODES, {})
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


def test_a_join_patches_the_views_that_only_gain_the_new_peer() -> None:
    before = views_of(NODES)
    old = all_views(before, NODES)
    after_nodes = [*NODES, node(7, tags=("tag:web",))]
    after = views_of(after_nodes, before, NODES)
    fresh = views_of(after_nodes)
    # Alice's devices reach the new web server: only a peer more for them.
    # The database accepts it (its filter names the new addresses): a peer
    # more and its filter taken anew, the rest kept.
    for n in (1, 2):
        view, old_view, fresh_view = after.get(n), old[n], fresh.get(n)
        assert isinstance(view, NodeView) and isinstance(old_view, NodeView)
        assert view == fresh_view and fresh_view is not None
        assert list(view.peers) == list(fresh_view.peers) == [5, 7]
        assert view.ssh_policy is old_view.ssh_policy  # patched, not rebuilt
        assert all(view.peers[p] is old_view.peers[p] for p in old_view.peers)
    db, old_db = after.get(6), old[6]
    assert isinstance(db, NodeView) and isinstance(old_db, NodeView)
    assert db == fresh.get(6) and db.ssh_policy is old_db.ssh_policy
    assert db.packet_filter_rules != old_db.packet_filter_rules
    # A later recompile hands out the very PeerViews in use, kept or patched
    # views' included (map refreshes compare peers by identity).
    again = compute_views(POLICY, USERS, after_nodes, {}, reuse=after)
    for n in after_nodes:
        view, other = after.by_node[n.id], again.by_node[n.id]
        assert all(other.peers[p] is pv for p, pv in view.peers.items())


def test_a_leave_patches_the_views_that_only_lose_that_peer() -> None:
    after_nodes = [*NODES, node(7, tags=("tag:web",))]
    before = views_of(after_nodes)
    old = all_views(before, after_nodes)
    after = views_of(NODES, before, after_nodes)
    assert after.changed == {7, 1, 2, 6}
    for n in NODES:
        assert after.get(n.id) == views_of(NODES).get(n.id)
    view, old_view = after.by_node[1], old[1]
    assert isinstance(old_view, NodeView) and view.ssh_policy is old_view.ssh_policy
    assert list(view.peers) == [5] and view.peers[5] is old_view.peers[5]


def test_joins_and_leaves_in_any_order_give_the_views_of_a_fresh_compile() -> None:
    # IPv4 disabled on some nodes (viewers and peers), a "*" source (its
    # destinations only gain a peer), tagged and user nodes coming and going.
    policy = parse_policy(
        {
            "tagOwners": {"tag:web": ["alice@example.com"], "tag:db": ["alice@example.com"]},
            "acls": [
                {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:web:443"]},
                {"action": "accept", "src": ["*"], "dst": ["tag:db:5432"]},
                {"action": "accept", "src": ["bob@example.com"], "dst": ["bob@example.com:*"]},
            ],
            "nodeAttrs": [{"target": ["tag:db"], "attr": ["disable-ipv4"]}],
        }
    )
    kinds: list[tuple[str | None, tuple[str, ...]]] = [
        ("alice", ()),
        ("bob", ()),
        (None, ("tag:web",)),
        (None, ("tag:db",)),
    ]
    rng = random.Random(7)
    nodes = [node(i, *kinds[i % 4]) for i in range(1, 9)]
    views = compute_views(policy, USERS, nodes, {})
    patched = 0
    for step in range(40):
        if rng.random() < 0.5 and len(nodes) > 2:
            after = [n for n in nodes if n is not rng.choice(nodes)]
        else:
            after = [*nodes, node(100 + step, *rng.choice(kinds))]
        old = all_views(views, nodes)
        new = compute_views(
            policy, USERS, after, {}, previous=views, previous_nodes={n.id: n for n in nodes}
        )
        fresh = compute_views(policy, USERS, after, {})
        for n in after:
            view, fresh_view, old_view = new.get(n.id), fresh.get(n.id), old.get(n.id)
            assert isinstance(view, NodeView) and fresh_view is not None
            assert view == fresh_view and list(view.peers) == list(fresh_view.peers)
            assert sorted(new.visible_to(n.id)) == sorted(fresh.visible_to(n.id))
            # A build makes a new SSH policy dict: kept, the view was patched.
            if isinstance(old_view, NodeView) and view.ssh_policy is old_view.ssh_policy:
                patched += view is not old_view
                for p, pv in old_view.peers.items():
                    assert p not in view.peers or view.peers[p] is pv
        nodes, views = after, new
    assert patched > 50


def _random_policy(rng: random.Random) -> dict[str, object]:
    srcs = ["alice@example.com", "bob@example.com", "tag:web", "*", "autogroup:member"]
    dsts = ["tag:web", "tag:db", "bob@example.com", "alice@example.com", "autogroup:self"]
    ports = ["*", "22", "443", "22,443", "5432", "80-90"]
    acls = [
        {
            "action": "accept",
            "src": [rng.choice(srcs)],
            "dst": [f"{rng.choice(dsts)}:{rng.choice(ports)}"],
            **({"proto": "tcp"} if rng.random() < 0.2 else {}),
        }
        for _ in range(rng.randint(1, 4))
    ]
    doc: dict[str, object] = {
        "tagOwners": {"tag:web": ["alice@example.com"], "tag:db": ["alice@example.com"]},
        "acls": acls,
    }
    if rng.random() < 0.3:
        doc["ssh"] = [
            {
                "action": "accept",
                "src": [rng.choice(["alice@example.com", "autogroup:member"])],
                "dst": [rng.choice(["tag:db", "autogroup:self"])],
                "users": ["root"],
            }
        ]
    return doc


def test_commits_over_the_same_nodes_give_the_views_of_a_fresh_compile() -> None:
    # Policies that keep or change who sees whom, in any order: the views a
    # commit adopts (who-sees-whom carried over whole when no rule's reach
    # changed) are a fresh compile's, one by one.
    rng = random.Random(11)
    kinds: list[tuple[str | None, tuple[str, ...]]] = [
        ("alice", ()),
        ("bob", ()),
        (None, ("tag:web",)),
        (None, ("tag:db",)),
    ]
    nodes = [node(i, *kinds[i % 4]) for i in range(1, 13)]
    docs = []
    for _ in range(20):  # a policy, then the same with other ports only (the same reach)
        doc = _random_policy(rng)
        acls: list[dict[str, Any]] = doc["acls"]  # type: ignore[assignment]
        ported = [{**a, "dst": [a["dst"][0].rsplit(":", 1)[0] + ":8080"]} for a in acls]
        docs += [doc, {**doc, "acls": ported}]
    by_id = {n.id: n for n in nodes}
    views = compute_views(parse_policy(docs[0]), USERS, nodes, {})
    carried = 0
    for doc in docs:
        policy = parse_policy(doc)
        for n in nodes:  # every view built, as after a fan-out
            views.get(n.id)
        new = compute_views(policy, USERS, nodes, {}, previous=views, previous_nodes=by_id)
        index = new.compiled.visibility
        assert isinstance(index, ViewIndex)
        carried += len(index._visible) == len(nodes)  # known before any view is built
        fresh = compute_views(policy, USERS, nodes, {})
        for n in nodes:
            view, fresh_view = new.get(n.id), fresh.get(n.id)
            assert view is not None and view == fresh_view
            assert list(view.peers) == list(fresh_view.peers)
            assert sorted(new.visible_to(n.id)) == sorted(fresh.visible_to(n.id))
        views = new
    assert carried >= 10


def test_a_commit_that_changes_only_ports_keeps_who_sees_whom() -> None:
    def self_ports(ports: str) -> dict[str, object]:
        return {
            "acls": [
                {
                    "action": "accept",
                    "src": ["autogroup:member"],
                    "dst": [f"autogroup:self:{ports}"],
                }
            ]
        }

    nodes = [node(i, ("alice", "bob")[i % 2]) for i in range(1, 11)]
    before = compute_views(parse_policy(self_ports("*")), USERS, nodes, {})
    for n in nodes:
        before.get(n.id)
    after = compute_views(
        parse_policy(self_ports("22,443")),
        USERS,
        nodes,
        {},
        previous=before,
        previous_nodes={n.id: n for n in nodes},
    )
    old, index = before.compiled.visibility, after.compiled.visibility
    assert isinstance(old, ViewIndex) and isinstance(index, ViewIndex)
    # Every node's who-sees-whom is the earlier index's, before any view is built.
    assert index._visible == old._visible and len(index._visible) == len(nodes)

    def no_group_work(viewer: int, group: int) -> object:
        raise AssertionError("a group's peers worked out again")

    index._group_peers = no_group_work  # type: ignore[assignment,method-assign]
    for n in nodes:
        view = after.get(n.id)
        assert view is not None and view.peers is before.get(n.id).peers  # type: ignore[union-attr]


def test_a_join_keeps_who_sees_whom_of_the_nodes_it_cannot_touch() -> None:
    nodes = [node(i, ("alice", "bob")[i % 2]) for i in range(1, 11)]
    before = views_of(nodes)
    for n in nodes:
        before.get(n.id)
    after = views_of([*nodes, node(11, "bob")], before, nodes)
    old, index = before.compiled.visibility, after.compiled.visibility
    assert isinstance(old, ViewIndex) and isinstance(index, ViewIndex)
    # alice's nodes do not see the newcomer: known before any view is built.
    alice = [old.position[n.id] for n in nodes if n.user == "alice"]
    assert all(index._visible[i] is old._visible[i] for i in alice)
    # bob's see it too: what they saw and it, without working it out again.
    for n in nodes:
        if n.user == "bob":
            i = old.position[n.id]
            assert index._visible[i] == old._visible[i] | 1 << index.position[11]


def test_views_with_no_peers_share_one_empty_mapping_across_commits() -> None:
    # A node no rule reaches builds no peer entries (not even its own, as a
    # group of one did), and hands the same empty peers on to the next commit.
    from gitctl.policy.viewmaps import NO_PEERS

    lonely = [*NODES, node(8, tags=("tag:db",)), node(9, "carol")]
    before = views_of(lonely)
    view = before.get(9)
    assert view is not None and view.peers is NO_PEERS and not view.peers
    changed = parse_policy({**POLICY_SOURCE, "acls": [*POLICY_SOURCE["acls"][:2]]})
    after = compute_views(changed, USERS, lonely, {}, previous=before)
    for n in (3, 4, 9):  # bob's rule is gone: his devices see no one now
        got = after.get(n)
        assert got is not None and got.peers is NO_PEERS

"""A commit's fan-out: what many sessions receive alike is encoded once, and
the messages spliced from it say what a fresh map says."""

from __future__ import annotations

import json
import logging
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from gitctl.policy import parse_policy
from gitctl.policy.bitsets import bits
from gitctl.policy.filter import Rule
from gitctl.policy.viewindex import ViewIndex
from gitctl.policy.viewmaps import GroupPeers
from server.gcpolicy import GcPolicy
from server.protocol.keys import MachinePublic, NodePublic
from server.store import open_store
from server.store.interface import Store
from server.store.model import Registration
from server.tailnet import NodeRegistry, Tailnet, TailnetSource, running_tailnet
from server.tailnet.mapencode import Fragments, encode_message
from server.tailnet.mapper import build_map
from server.tailnet.session import MapSession
from server.wire import DerpRegion
from tests.unit.control_client import T0

USERS = 4
PER_USER = 6


def self_policy(ports: str) -> dict[str, Any]:
    return {
        "acls": [
            {"action": "accept", "src": ["autogroup:member"], "dst": [f"autogroup:self:{ports}"]}
        ]
    }


def source(sid: str, ports: str) -> TailnetSource:
    return TailnetSource(
        id=sid,
        domain="tailnet.example",
        dns_config={"Domains": ["tailnet.example"], "Proxied": True},
        # A new but equal user list each commit, as a commit from git makes it.
        users={f"u{u}": (f"u{u}@example.com", f"U{u}") for u in range(USERS)},
        policy=parse_policy(self_policy(ports)),
    )


@pytest.fixture
def store() -> Iterator[Store]:
    s = open_store(Path(":memory:"))
    yield s
    s.close()


def streaming(
    store: Store, gc_policy: GcPolicy | None = None, *, users: int = USERS, per_user: int = PER_USER
) -> tuple[NodeRegistry, Tailnet, dict[int, Any]]:
    """`users` users of `per_user` nodes each under autogroup:self, every node
    streaming and holding its first map."""
    registry, tailnet = running_tailnet(
        store,
        source("base", "*"),
        derp_regions=[DerpRegion(999, "test", "test", "127.0.0.1", 3340, 0)],
        log=logging.getLogger("test"),
        clock=lambda: T0,
        gc_policy=gc_policy,
    )
    for n in range(users * per_user):
        raw = (n + 1).to_bytes(32, "big")
        registry.register(
            Registration(
                machine_key=MachinePublic(raw),
                node_key=NodePublic(raw),
                hostname=f"n{n}",
                user=f"u{n % users}",
                now=T0,
            )
        )
    tailnet.settle()
    streams = {}
    for node in store.list_nodes():
        handle, session = tailnet.open_session(node.id), MapSession(node.id)
        assert session.step(tailnet.context, handle.take_wake(), T0) is not None
        streams[node.id] = (handle, session)
    return registry, tailnet, streams


def commit(tailnet: Tailnet, streams: dict[int, Any], sid: str, ports: str) -> dict[int, Any]:
    tailnet.swap_source(source(sid, ports))
    ctx = tailnet.context
    out = {}
    for node_id, (handle, session) in streams.items():
        msg = session.step(ctx, handle.take_wake(), T0)
        if msg is not None:
            out[node_id] = json.loads(msg)
    return out


def test_a_filter_only_commit_encodes_each_users_sources_once(store: Store) -> None:
    _, tailnet, streams = streaming(store)
    fragments = tailnet.context.entries.fragments
    # Every node's filter is its own (its addresses as destinations), but the
    # sources, every address of its user's nodes, are one list per user:
    # encoded once for all of that user's sessions.
    assert fragments.encoded == USERS
    views = {node_id: tailnet.views.get(node_id) for node_id in streams}
    peers = {node_id: view.peers for node_id, view in views.items() if view is not None}
    passes = {node_id: session.full_passes for node_id, (_, session) in streams.items()}

    sent = commit(tailnet, streams, "c1", "22,443")

    # No peer changed: each view hands on its peers whole, and no session
    # looked at its peers one by one.
    for node_id, (_, session) in streams.items():
        view = tailnet.views.get(node_id)
        assert view is not None and view.peers is peers[node_id]
        assert session.full_passes == passes[node_id]

    # Every session gets its new filter, and the sources are not encoded again.
    assert len(sent) == USERS * PER_USER
    assert fragments.encoded == USERS
    for node_id, msg in sent.items():
        # Only the filter: no peers, no profiles, no self node re-sent.
        assert set(msg) == {"PacketFilter", "ControlTime"}
        fresh = build_map(tailnet.context, node_id, T0)
        assert fresh is not None
        assert msg["PacketFilter"] == json.loads(json.dumps(fresh.top["PacketFilter"]))
        dsts = msg["PacketFilter"][0]["DstPorts"]
        assert {(d["Ports"]["First"], d["Ports"]["Last"]) for d in dsts} == {(22, 22), (443, 443)}
    assert commit(tailnet, streams, "c2", "22,443") == {}  # the same rules: no one woken


@pytest.mark.parametrize(
    "msg",
    [
        {},
        {"ControlTime": "t"},
        {"PacketFilter": [], "DERPMap": {"Regions": {"1": {"RegionID": 1}}}},
        {
            "Node": {"ID": 1},
            "PacketFilter": (
                {"SrcIPs": [f"100.64.0.{i}" for i in range(20)], "DstPorts": [{"IP": "*"}]},
                {"SrcIPs": ["*"], "IPProto": [6, 17], "DstPorts": [{"IP": "100.64.0.1"}] * 9},
            ),
            "SSHPolicy": {"rules": [{"principals": [{"nodeIP": "100.64.0.1"}] * 10}]},
            "DNSConfig": {"Domains": ["a"] * 8, "Routes": {"a.": None}},
        },
        {"DERPMap": {"Regions": {1: {"Nodes": ["x"] * 12}}}},  # keys JSON makes text
    ],
)
def test_spliced_messages_decode_as_plainly_encoded_ones(msg: dict[str, Any]) -> None:
    fragments, peers = Fragments(), [b'{"ID":7}', b'{"ID":8}']
    for key, entries in ((None, []), ("Peers", peers)):
        plain = json.loads(encode_message(msg, key, entries))
        for _ in range(2):  # encoded, then from what was kept
            assert json.loads(encode_message(msg, key, entries, fragments)) == plain


def test_after_a_join_a_filter_only_commit_still_leaves_peers_untouched(store: Store) -> None:
    registry, tailnet, streams = streaming(store)
    raw = (USERS * PER_USER + 1).to_bytes(32, "big")
    joined = registry.register(
        Registration(
            machine_key=MachinePublic(raw),
            node_key=NodePublic(raw),
            hostname="new",
            user="u0",
            now=T0,
        )
    ).id
    tailnet.settle()
    for handle, session in streams.values():
        session.step(tailnet.context, handle.take_wake(), T0)
    passes = {node_id: session.full_passes for node_id, (_, session) in streams.items()}

    sent = commit(tailnet, streams, "c1", "22,443")

    assert len(sent) == USERS * PER_USER
    assert {
        node_id for node_id, (_, s) in streams.items() if s.full_passes != passes[node_id]
    } == set()
    u0 = [node_id for node_id in streams if joined in tailnet.views.get(node_id).peers]  # type: ignore[union-attr]
    assert len(u0) == PER_USER


def test_a_commit_renders_each_rules_sources_once_and_shares_them(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, tailnet, streams = streaming(store)
    heads: list[Rule] = []
    render_head = Rule._render_head

    def spy(rule: Rule) -> dict[str, Any]:
        heads.append(rule)
        return render_head(rule)

    monkeypatch.setattr(Rule, "_render_head", spy)
    sent = commit(tailnet, streams, "c1", "22,443")

    # One autogroup:self rule per user: its sources rendered once, not once
    # per node it reaches, and every node of the user holds that same list.
    assert len(sent) == USERS * PER_USER
    assert len(heads) == len(set(map(id, heads))) == USERS
    index = tailnet.views.compiled.visibility
    assert isinstance(index, ViewIndex)
    by_sources: dict[tuple[str, ...], set[int]] = {}
    for node_id in streams:
        view = tailnet.views.get(node_id)
        assert view is not None
        (rule,) = view.packet_filter_rules
        by_sources.setdefault(tuple(rule["SrcIPs"]), set()).add(id(rule["SrcIPs"]))
        # The shared result says what a node's own rendering says.
        i = index.position[node_id]
        alone = []
        for r in index.per_node[i]:
            r._head = None  # rendered for this node alone
            alone.append(r.render(i))
        shared = json.dumps(list(view.packet_filter_rules))  # read lazily: a Sequence
        assert json.loads(shared) == json.loads(json.dumps(alone))
        # Its peers, taken from its group's entries, are its peers one by one.
        assert isinstance(view.peers, GroupPeers)
        assert list(view.peers.items()) == [
            (index.keys[j], index.peer_view(i, j)) for j in bits(index.visible(i))
        ]
    assert len(by_sources) == USERS
    assert all(len(ids) == 1 for ids in by_sources.values())
    # Memory: the views of a user's nodes hold one dict of the group's
    # entries between them (each less its own node), not one copy each.
    held = [tailnet.views.get(n) for n in streams]
    peers = [v.peers for v in held if v is not None]
    assert all(isinstance(p, GroupPeers) for p in peers) and len(peers) == len(streams)
    assert len({id(cast("GroupPeers", p).group) for p in peers}) == USERS
    assert all(sys.getsizeof(p) < 100 for p in peers)  # two references, no dict of its own


def test_a_groups_earlier_peers_are_checked_once_not_per_view(store: Store) -> None:
    _, tailnet, streams = streaming(store)
    commit(tailnet, streams, "c1", "22,443")
    index = tailnet.views.compiled.visibility
    assert isinstance(index, ViewIndex)
    # No rule's reach changed: each user's group entries are the earlier
    # index's own (carried over), so no group needs even its one check.
    assert not index._groups_seen and len(index._group_full) == USERS
    for node_id in streams:
        view = tailnet.views.get(node_id)
        assert view is not None and isinstance(view.peers, GroupPeers)
        assert (
            view.peers.group
            is index._group_full[
                index.visible(index.position[node_id]) | 1 << index.position[node_id]
            ]
        )


def test_sources_indexed_by_member_reach_what_a_scan_reaches(store: Store) -> None:
    _, tailnet, _ = streaming(store)
    index = tailnet.views.compiled.visibility
    assert isinstance(index, ViewIndex)
    scans = [[d for s, d in index._reach if i in s] for i in range(len(index.keys))]
    index._reach_asked = 1 << 30  # as after a fan-out's many views: indexed from here on
    for i, scan in enumerate(scans):
        assert sorted(index._reached_from(i)) == sorted(scan)
    assert index._reach_by_member is not None
    assert len(index._reach_by_member[0]) == USERS * PER_USER  # each user's set is small


def test_group_peers_read_as_the_groups_entries_less_the_viewer() -> None:
    group = {1: "a", 2: "b", 3: "c"}
    peers = GroupPeers(group, 2)  # type: ignore[arg-type]
    assert dict(peers) == {1: "a", 3: "c"} and len(peers) == 2
    assert 2 not in peers and 3 in peers and peers.get(2) is None and peers.get(3) == "c"
    with pytest.raises(KeyError):
        peers[2]
    assert peers == {1: "a", 3: "c"} and {1: "a", 3: "c"} == peers
    assert peers.keys() - {1} == {3}
    assert pickle.loads(pickle.dumps(peers)) == peers

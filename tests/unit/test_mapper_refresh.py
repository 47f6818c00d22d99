"""Map refreshes after a commit or a join: reusing the last map built for a
node must give exactly what a cold build gives, including when only time
moved (a peer's key expired) or when nothing changed at all."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from gitctl.policy import parse_policy
from server.protocol.keys import MachinePublic, NodePublic
from server.store import open_store
from server.store.interface import Store
from server.store.model import Registration
from server.tailnet import NodeRegistry, Tailnet, TailnetSource
from server.tailnet.mapper import MapContext, build_map
from server.tailnet.nodejson import PeerEntries
from server.tailnet.session import MapSession, Wake
from server.wire import DerpRegion
from tests.unit.control_client import T0

USERS = {"alice": ("alice@example.com", "Alice"), "bob": ("bob@example.com", "Bob")}
OPEN = parse_policy({"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]})
ALICE_ONLY = parse_policy(
    {"acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["alice@example.com:*"]}]}
)


def source(policy: Any, sid: str) -> TailnetSource:
    return TailnetSource(
        id=sid, domain="tailnet.example", dns_config={}, users=USERS, policy=policy
    )


def registry(store: Store) -> NodeRegistry:
    return NodeRegistry(store, log=logging.getLogger("test"))


def tailnet(reg: NodeRegistry, policy: Any) -> Tailnet:
    """The tailnet over what `reg` holds, following its changes from now on."""
    net = Tailnet(
        nodes=reg.nodes(),
        source=source(policy, "a"),
        derp_regions=[DerpRegion(999, "test", "test", "127.0.0.1", 3340, 0)],
        log=logging.getLogger("test"),
        clock=lambda: T0,
    )
    reg.subscribe(net.apply)
    return net


def add(reg: NodeRegistry, n: int, user: str, expiry: timedelta | None = None) -> int:
    raw = n.to_bytes(32, "big")
    return reg.register(
        Registration(
            machine_key=MachinePublic(raw),
            node_key=NodePublic(raw),
            hostname=f"n{n}",
            user=user,
            now=T0,
            key_expiry=T0 + expiry if expiry is not None else None,
        )
    ).id


def cold(ctx: MapContext, node_id: int, now: Any) -> dict[str, Any]:
    """What a build with no memo gives, as the client would decode it."""
    state = build_map(replace(ctx, entries=PeerEntries(ctx.domain)), node_id, now)
    assert state is not None
    return decoded(state)


def decoded(state: Any) -> dict[str, Any]:
    return {
        "peers": {pid: json.loads(data) for pid, data in state.peers.items()},
        "profiles": dict(state.profiles),
        "top": json.loads(json.dumps(state.top)),
    }


def test_refresh_after_commit_and_join_equals_a_cold_build(tmp_path: Path) -> None:
    reg = registry(open_store(tmp_path / "s.sqlite"))
    ids = [add(reg, i, "alice" if i % 2 else "bob") for i in range(1, 7)]
    net = tailnet(reg, OPEN)
    for node_id in ids:
        assert build_map(net.context, node_id, T0) is not None  # memos filled
    net.swap_source(source(ALICE_ONLY, "b"))
    ids.append(add(reg, 7, "alice"))
    for node_id in ids:
        state = build_map(net.context, node_id, T0)
        assert state is not None
        assert decoded(state) == cold(net.context, node_id, T0)


def test_a_peer_key_expiring_with_no_other_change_is_seen(tmp_path: Path) -> None:
    reg = registry(open_store(tmp_path / "s.sqlite"))
    viewer = add(reg, 1, "alice")
    peer = add(reg, 2, "alice", expiry=timedelta(seconds=30))
    net = tailnet(reg, OPEN)
    session = MapSession(viewer)
    assert session.step(net.context, Wake(full=True), T0) is not None
    later = T0 + timedelta(minutes=1)
    state = build_map(net.context, viewer, later)
    assert state is not None
    assert json.loads(state.peers[peer]).get("Expired") is True
    net.swap_source(source(OPEN, "b"))  # anything that wakes the session
    msg = session.step(net.context, Wake(full=True), later)
    assert msg is not None
    assert json.loads(msg)["PeersChanged"][0]["Expired"] is True


def test_nothing_changed_sends_nothing(tmp_path: Path) -> None:
    reg = registry(open_store(tmp_path / "s.sqlite"))
    ids = [add(reg, i, "alice") for i in range(1, 4)]
    net = tailnet(reg, OPEN)
    session = MapSession(ids[0])
    assert session.step(net.context, Wake(full=True), T0) is not None
    net.swap_source(source(OPEN, "b"))  # a commit that changes nothing for anyone
    assert session.step(net.context, Wake(full=True), T0) is None


def test_a_commit_with_the_same_users_resends_no_profiles(tmp_path: Path) -> None:
    # Each snapshot read from git carries its own (equal) users mapping: a
    # session woken after it must not resend every peer owner's profile.
    reg = registry(open_store(tmp_path / "s.sqlite"))
    ids = [add(reg, i, "alice" if i % 2 else "bob") for i in range(1, 5)]
    net = tailnet(reg, OPEN)
    session = MapSession(ids[0])
    assert session.step(net.context, Wake(full=True), T0) is not None
    net.swap_source(replace(source(OPEN, "b"), users=dict(USERS)))
    assert session.step(net.context, Wake(full=True), T0) is None
    renamed = {**USERS, "bob": ("bob@example.com", "Robert")}
    net.swap_source(replace(source(OPEN, "c"), users=renamed))
    msg = session.step(net.context, Wake(full=True), T0)
    assert msg is not None
    names = {p["DisplayName"] for p in json.loads(msg)["UserProfiles"]}
    assert "Robert" in names

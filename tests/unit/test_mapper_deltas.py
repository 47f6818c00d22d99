"""The delta equivalence property (style.md 8): whatever happens in a tailnet,
a client that applies the stream's messages the way tailscale's
controlclient/map.go does holds exactly what a fresh full map says.

Drives the real `Tailnet` (its routing of changes to sessions is half of what
is under test) over an in-memory store, and pumps each session the way
server/control.py's `_stream` does, without sockets.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from bench.loadgen.netmap import ClientNetmap
from gitctl.policy import parse_policy
from gitctl.snapshot import ALLOW_ALL
from server.protocol.keys import DiscoPublic, MachinePublic, NodePublic
from server.protocol.mapframe import MapFrameDecoder, MapFrameEncoder
from server.store import open_store
from server.store.model import Registration
from server.tailnet import NodeRegistry, SessionHandle, Tailnet, TailnetSource, running_tailnet
from server.tailnet.mapper import MapContext, build_map
from server.tailnet.session import MapSession
from server.tailnet.views import PolicyViews
from server.tailnet.wave import StreamOutlet, VolatileWave
from server.wire import DerpRegion, Hostinfo, NetInfo, decode
from tests.unit.control_client import T0
from tests.unit.test_mapper_refresh import add

USERS = {"alice": ("alice@example.com", "Alice"), "bob": ("bob@example.com", "Bob")}
DNS = {"Domains": ["tailnet.example"], "Proxied": True}
# Asymmetric on purpose: bob reaches the servers, the servers never reach bob,
# alice's devices reach each other and the servers.
POLICY = {
    "tagOwners": {"tag:server": ["alice@example.com"]},
    "acls": [
        {
            "action": "accept",
            "src": ["alice@example.com"],
            "dst": ["alice@example.com:*", "tag:server:*", "10.1.0.0/24:*"],
        },
        {"action": "accept", "src": ["bob@example.com"], "dst": ["tag:server:80"]},
    ],
    "ssh": [
        {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:server"], "users": ["root"]}
    ],
}
ROUTES = {"tag:server": ("10.1.0.0/24",)}  # approved in git for tagged servers
SOURCES = {
    name: TailnetSource(
        id=name,
        domain="tailnet.example",
        dns_config=DNS,
        users=USERS,
        policy=policy,
        explicit_routes=ROUTES,
    )
    for name, policy in (
        ("allow-all", ALLOW_ALL),
        ("policy", parse_policy(POLICY)),
        # Commits that change a few rules: only the nodes they reach are woken.
        (
            "policy+bob-to-alice",
            parse_policy(
                {
                    **POLICY,
                    "acls": [
                        *POLICY["acls"],
                        {
                            "action": "accept",
                            "src": ["bob@example.com"],
                            "dst": ["alice@example.com:22"],
                        },
                    ],
                }
            ),
        ),
        ("policy-bob", parse_policy({**POLICY, "acls": POLICY["acls"][:1], "ssh": []})),
    )
}
# A commit that removes bob from users.yaml: his nodes are cut off, and come back with him.
SOURCES["policy,no-bob"] = replace(
    SOURCES["policy"], id="policy,no-bob", users={"alice": USERS["alice"]}
)
SOURCE_NAMES = st.sampled_from(sorted(SOURCES))
OWNERS = st.sampled_from([("alice", ()), ("bob", ()), (None, ("tag:server",))])
ENDPOINTS = st.lists(
    st.sampled_from(["192.0.2.1:41641", "198.51.100.2:3478", "[2001:db8::1]:41641"]), max_size=2
)


@dataclass
class Stream:
    handle: SessionHandle
    session: MapSession
    netmap: ClientNetmap = field(default_factory=ClientNetmap)


class TailnetChanges(RuleBasedStateMachine):
    nodes = Bundle("nodes")

    def __init__(self) -> None:
        super().__init__()
        self.store = open_store(Path(":memory:"))
        self.now = T0
        # The event loop's timers: recompiles wait here until the sessions pump
        # (or something reads the maps first), so changes between pumps coalesce.
        self.timers: list[Callable[[], None]] = []
        self.registry, self.tailnet = self._tailnet(SOURCES["allow-all"])
        self.streams: dict[int, Stream] = {}
        self.serial = 0

    def _tailnet(self, source: TailnetSource | None = None) -> tuple[NodeRegistry, Tailnet]:
        # A fresh start knows the primary routers the running one chose (runtime
        # state, as who is online): the election keeps them while they are online.
        return running_tailnet(
            self.store,
            source or self.tailnet.source,
            primaries=self.tailnet.primaries if hasattr(self, "tailnet") else None,
            derp_regions=[DerpRegion(999, "test", "test", "127.0.0.1", 3340, 0)],
            log=logging.getLogger("test"),
            clock=lambda: self.now,
            defer=self._defer,
        )

    def _defer(self, fn: Callable[[], None]) -> bool:
        self.timers.append(fn)
        return True

    def teardown(self) -> None:
        self.store.close()

    # Changes

    @initialize(target=nodes, owners=st.lists(OWNERS, min_size=2, max_size=4), source=SOURCE_NAMES)
    def start(self, owners: list[tuple[str | None, tuple[str, ...]]], source: str) -> Any:
        # Short paths to interesting states: a few nodes, some of them polling.
        self.tailnet.swap_source(SOURCES[source])
        ids = [self.join(owner) for owner in owners]
        for node_id in ids[::2]:
            self.go_online(node_id)
        return multiple(*ids)

    @rule(target=nodes, owner=OWNERS)
    def join(self, owner: tuple[str | None, tuple[str, ...]]) -> int:
        self.serial += 1
        raw = self.serial.to_bytes(32, "big")
        node = self.registry.register(
            Registration(
                machine_key=MachinePublic(raw),
                node_key=NodePublic(raw),
                hostname=f"node{self.serial}",
                user=owner[0],
                tags=owner[1],
                now=self.now,
            )
        )
        return node.id

    @rule(
        target=nodes,
        owners=st.lists(OWNERS, min_size=1, max_size=3),
        data=st.data(),
    )
    def burst(self, owners: list[tuple[str | None, tuple[str, ...]]], data: st.DataObject) -> Any:
        """Several joins, a rename and a leave before any session pumps (a
        connect storm): one recompile serves them all."""
        ids = [self.join(owner) for owner in owners]
        for node_id in ids[::2]:
            self.registry.connected(node_id)
        self.rename(data.draw(st.sampled_from(ids)))
        if len(ids) > 1:
            self.registry.remove(ids.pop(data.draw(st.integers(0, len(ids) - 1))))
        return multiple(*ids)

    @rule(node_id=consumes(nodes))
    def leave(self, node_id: int) -> None:
        self.registry.remove(node_id)

    @rule(node_id=nodes, endpoints=ENDPOINTS, derp=st.sampled_from([0, 1, 999]))
    def lite_update(self, node_id: int, endpoints: list[str], derp: int) -> None:
        hostinfo = Hostinfo(hostname="x", net_info=NetInfo(preferred_derp=derp))
        self._update(node_id, endpoints=endpoints, hostinfo=hostinfo)

    @rule(node_id=nodes)
    def new_disco_key(self, node_id: int) -> None:
        self.serial += 1
        disco = DiscoPublic(self.serial.to_bytes(32, "big"))
        self._update(node_id, disco_key=disco)

    @rule(node_id=nodes)
    def rename(self, node_id: int) -> None:
        self.serial += 1
        self.registry.rename(node_id, f"renamed{self.serial}")

    @rule(node_id=nodes, routes=st.sampled_from(["[]", '["10.1.0.0/24"]']))
    def advertise_routes(self, node_id: int, routes: str) -> None:
        hostinfo = decode(Hostinfo, {"Hostname": "x", "RoutableIPs": json.loads(routes)})
        self._update(node_id, hostinfo=hostinfo)

    @rule(node_id=nodes)
    def logout(self, node_id: int) -> None:
        self.registry.set_key_expiry(node_id, self.now)

    @rule(node_id=nodes)
    def go_online(self, node_id: int) -> None:
        old = self.streams.pop(node_id, None)
        if old is not None:  # a new poll replaces the old one, as tailscaled does
            self._close(old)
        self.streams[node_id] = Stream(self.tailnet.open_session(node_id), MapSession(node_id))
        self.registry.connected(node_id)

    @precondition(lambda self: bool(self.streams))
    @rule(data=st.data())
    def go_offline(self, data: st.DataObject) -> None:
        node_id = data.draw(st.sampled_from(sorted(self.streams)))
        self._close(self.streams.pop(node_id))

    @rule(name=SOURCE_NAMES)
    def swap_policy(self, name: str) -> None:
        self.tailnet.swap_source(SOURCES[name])

    @rule()
    def time_passes(self) -> None:
        self.now += timedelta(minutes=1)

    def _update(self, node_id: int, **changes: Any) -> None:
        node = self.store.get_node(node_id)
        assert node is not None
        self.registry.update_from_map(node, now=self.now, **changes)

    def _close(self, stream: Stream) -> None:
        """server/control.py's `_stream` ending: the session, then the registry."""
        self.tailnet.close_session(stream.handle)
        self.registry.disconnected(stream.handle.node_id, self.now)

    # What every open stream holds

    @invariant()
    def every_client_holds_the_full_map(self) -> None:
        self._pump()
        # The reference compiles everything again from the store, so a change
        # path that forgets to recompile (or to refresh a node) shows up too.
        _, fresh = self._tailnet()
        ctx = replace(fresh.context, online=self.tailnet.online_ids())
        for node_id, stream in self.streams.items():
            want = build_map(ctx, node_id, self.now)
            assert want is not None
            got = stream.netmap
            assert set(got.peers) == set(want.peers), f"node {node_id}: peer set differs"
            for pid, entry in want.peers.items():
                assert got.peers[pid] == json.loads(entry), f"node {node_id}: peer {pid} differs"
            for key, value in want.top.items():
                assert got.top.get(key) == _plain(value), f"node {node_id}: {key} differs"
            for uid, profile in want.profiles.items():
                assert got.profiles.get(uid) == _plain(profile), (
                    f"node {node_id}: profile {uid} missing"
                )

    def _pump(self) -> None:
        """One round of server/control.py `_stream` for every open stream:
        first the bulk wave (wave.py) over every idle stream's marks, as
        `Deliveries` runs it, then a step for each stream it handed back."""
        timers, self.timers = self.timers, []
        for fire in timers:  # the loop runs due timers before the sessions wake
            fire()
        tailnet = self.tailnet
        wave = VolatileWave(
            lambda: None if tailnet.candidate is not None else tailnet.context,
            lambda: self.now,
            lambda handles, size: None,
        )
        due = []
        for stream in self.streams.values():
            if not stream.handle.closed:
                stream.handle.wake.clear()  # idle: the wave may deliver without its task
                stream.handle.outlet = StreamOutlet(
                    stream.session, MapFrameEncoder(), partial(_apply_frame, stream)
                )
                due.append(stream.handle)
        wave(due)
        for node_id, stream in list(self.streams.items()):
            if stream.handle.closed:
                del self.streams[node_id]
                continue
            wake = stream.handle.take_wake()
            ctx = self.tailnet.context
            if not stream.session.serves(ctx):
                self._close(stream)
                del self.streams[node_id]
                continue
            msg = stream.session.step(ctx, wake, self.now)
            if msg is not None:
                stream.netmap.apply(json.loads(msg))


def _apply_frame(stream: Stream, frame: bytes) -> bool:
    for msg in MapFrameDecoder().receive_data(frame):
        stream.netmap.apply(json.loads(msg))
    return True


def _plain(value: Any) -> Any:
    """What the client decodes: JSON types only (tuples become lists)."""
    return json.loads(json.dumps(value))


TailnetChanges.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_deltas_equal_a_fresh_full_map = TailnetChanges.TestCase


class Mesh:
    """An allow-all tailnet of `n` streaming nodes, pumped as `_stream` does."""

    def __init__(self, n: int) -> None:
        self.store = open_store(Path(":memory:"))
        self.timers: list[Callable[[], None]] = []
        self.registry, self.tailnet = running_tailnet(
            self.store,
            SOURCES["allow-all"],
            derp_regions=[DerpRegion(999, "test", "test", "127.0.0.1", 3340, 0)],
            log=logging.getLogger("test"),
            clock=lambda: T0,
            defer=lambda fn: self.timers.append(fn) is None,
        )
        self.serial = 0
        self.streams = {i: self.stream(i) for i in [self.join("alice") for _ in range(n)]}
        self.pump()

    def join(self, user: str) -> int:
        self.serial += 1
        return add(self.registry, self.serial, user)

    def stream(self, node_id: int) -> Stream:
        self.registry.connected(node_id)
        return Stream(self.tailnet.open_session(node_id), MapSession(node_id))

    def pump(self) -> dict[int, dict[str, Any]]:
        timers, self.timers = self.timers, []
        for fire in timers:
            fire()
        sent = {}
        for node_id, stream in self.streams.items():
            msg = stream.session.step(self.tailnet.context, stream.handle.take_wake(), T0)
            if msg is not None:
                sent[node_id] = json.loads(msg)
                stream.netmap.apply(sent[node_id])
        return sent

    def step_all(self) -> tuple[MapContext, list[bytes]]:
        """The settle due, then every session's message as `_stream` sends it
        (each one's very object), applied to its client."""
        self.timers.pop()()
        ctx, messages = self.tailnet.context, []
        for stream in self.streams.values():
            msg = stream.session.step(ctx, stream.handle.take_wake(), T0)
            assert msg is not None
            messages.append(msg)
            stream.netmap.apply(json.loads(msg))
        return ctx, messages

    def passes(self) -> int:
        return sum(s.session.full_passes for s in self.streams.values())


def test_a_join_reaches_every_session_as_a_delta_of_that_peer_alone() -> None:
    """In an N-node mesh a join costs each session its one new peer: no
    session looks at all its peers again (counted, not timed)."""
    mesh = Mesh(40)
    before = mesh.passes()
    joiner = mesh.join("bob")
    sent = mesh.pump()
    assert mesh.passes() == before
    assert set(sent) == set(mesh.streams)
    for msg in sent.values():
        assert "Peers" not in msg
        assert [p["ID"] for p in msg["PeersChanged"]] == [joiner]
        assert [p["LoginName"] for p in msg["UserProfiles"]] == ["bob@example.com"]
    # Its owner is known to every client now: a second join of bob's sends no profile.
    mesh.join("bob")
    assert all("UserProfiles" not in msg for msg in mesh.pump().values())


def test_coalesced_joins_and_a_leave_reach_sessions_as_one_delta() -> None:
    """A connect storm (joins and a leave sharing one recompile) is one
    PeersChanged/PeersRemoved per session, equal to a fresh start."""
    mesh = Mesh(12)
    leaver = next(iter(mesh.streams))
    mesh.tailnet.close_session(mesh.streams.pop(leaver).handle)
    before = mesh.passes()
    joined = [mesh.join("bob"), mesh.join("alice"), mesh.join("bob")]
    mesh.registry.remove(leaver)
    sent = mesh.pump()
    assert mesh.passes() == before
    for msg in sent.values():
        assert sorted(p["ID"] for p in msg["PeersChanged"]) == joined
        assert msg["PeersRemoved"] == [leaver]
    fresh = mesh.tailnet.context
    for node_id, stream in mesh.streams.items():
        want = build_map(fresh, node_id, T0)
        assert want is not None
        assert {p: json.loads(e) for p, e in want.peers.items()} == stream.netmap.peers


def test_an_endpoint_change_sends_that_peer_alone() -> None:
    mesh = Mesh(10)
    before = mesh.passes()
    node_id = next(iter(mesh.streams))
    node = mesh.store.get_node(node_id)
    assert node is not None
    mesh.registry.update_from_map(node, now=T0, endpoints=["192.0.2.1:41641"])
    sent = mesh.pump()
    assert mesh.passes() == before
    assert node_id not in sent or "PeersChanged" not in sent[node_id]
    for viewer, msg in sent.items():
        if viewer != node_id:
            assert [p["Endpoints"] for p in msg["PeersChanged"]] == [["192.0.2.1:41641"]]


def test_a_session_holds_references_not_a_copy_of_its_peers() -> None:
    """Memory per streaming node must not grow with the mesh (N sessions ×
    N peers): a session keeps the shared view and entries, no per-peer table."""
    mesh = Mesh(40)
    mesh.join("bob")
    mesh.pump()
    for stream in mesh.streams.values():
        tables = (dict, set, list)
        sizes = {k: len(v) for k, v in vars(stream.session).items() if isinstance(v, tables)}
        assert max(sizes.values()) < 10, sizes  # top-level fields, owners: not peers


def test_a_join_is_encoded_once_for_every_viewer() -> None:
    """A mesh join gives every viewer the same delta: one message encoded and
    one frame compressed for all of them, each viewer still ending with the
    netmap a fresh map gives (counted, not timed)."""
    mesh = Mesh(300)
    deltas = mesh.tailnet.context.entries.deltas
    before = deltas.encoded
    joiner = mesh.join("bob")
    ctx, messages = mesh.step_all()
    assert deltas.encoded == before + 1
    assert len({id(m) for m in messages}) == 1  # the very same bytes
    frames = {id(MapFrameEncoder().encode(m)) for m in messages}
    assert len(frames) == 1  # compressed once, each stream its own encoder
    for node_id, stream in mesh.streams.items():
        want = build_map(ctx, node_id, T0)
        assert want is not None and joiner in want.peers
        assert {p: json.loads(e) for p, e in want.peers.items()} == stream.netmap.peers


def test_viewers_with_different_deltas_get_their_own_messages() -> None:
    """Sharing is by what the delta is made of: a viewer whose own record
    changed too (a top-level field) still gets its own message."""
    mesh = Mesh(20)
    deltas = mesh.tailnet.context.entries.deltas
    mover = next(iter(mesh.streams))
    node = mesh.store.get_node(mover)
    assert node is not None
    mesh.registry.update_from_map(node, now=T0, endpoints=["192.0.2.1:41641"])
    before = deltas.encoded
    sent = mesh.pump()
    # Every other viewer: one shared message; the mover: its own.
    assert deltas.encoded == before + 2
    assert "Node" in sent[mover] and "PeersChanged" not in sent[mover]
    assert sent[mover]["Node"]["Endpoints"] == ["192.0.2.1:41641"]
    others = {json.dumps(msg, sort_keys=True) for v, msg in sent.items() if v != mover}
    assert len(others) == 1


def test_a_join_that_changes_every_filter_alike_is_compressed_once() -> None:
    """Under a rule whose sources are a user's devices, a join of that user
    changes every viewer's packet filter the same way: each session's message
    is spliced from shared parts, and all of them send one compressed frame."""
    rule = {"action": "accept", "src": ["alice@example.com"], "dst": ["*:47113"]}
    policy = {"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}, rule]}
    mesh = Mesh(30)
    mesh.tailnet.swap_source(replace(SOURCES["allow-all"], id="rule", policy=parse_policy(policy)))
    mesh.pump()
    joiner = mesh.join("alice")
    ctx, messages = mesh.step_all()
    assert len({id(m) for m in messages}) == 1
    assert len({id(MapFrameEncoder().encode(m)) for m in messages}) == 1
    sent = json.loads(messages[0])
    assert "PacketFilter" in sent and [p["ID"] for p in sent["PeersChanged"]] == [joiner]
    for node_id in mesh.streams:
        want = build_map(ctx, node_id, T0)
        assert want is not None
        assert sent["PacketFilter"] == json.loads(json.dumps(want.top["PacketFilter"]))


def test_volatile_changes_arriving_together_are_one_shared_message() -> None:
    """Endpoint changes of two nodes before the next wave: each other viewer
    is woken once, and all of them send one message naming both."""
    mesh = Mesh(12)
    movers = list(mesh.streams)[:2]
    for n, node_id in enumerate(movers):
        node = mesh.store.get_node(node_id)
        assert node is not None
        mesh.registry.update_from_map(node, now=T0, endpoints=[f"192.0.2.{n + 1}:41641"])
    assert len(mesh.timers) == 1  # one wave for both
    mesh.timers.pop()()
    ctx, messages = mesh.tailnet.context, {}
    for node_id, stream in mesh.streams.items():
        if node_id not in movers:
            messages[node_id] = stream.session.step(ctx, stream.handle.take_wake(), T0)
    assert len({id(m) for m in messages.values()}) == 1
    sent = json.loads(next(iter(messages.values())))
    assert sorted(p["ID"] for p in sent["PeersChanged"]) == sorted(movers)


def test_an_endpoint_wave_looks_up_no_view(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every viewer of a moved node steps with the view it holds (the views
    it was looked up in are the ones served): none is looked up again."""
    mesh = Mesh(10)
    looked_up: list[int] = []
    get = PolicyViews.get

    def counted(self: PolicyViews, node_id: int) -> Any:
        looked_up.append(node_id)
        return get(self, node_id)

    monkeypatch.setattr(PolicyViews, "get", counted)
    node_id = next(iter(mesh.streams))
    node = mesh.store.get_node(node_id)
    assert node is not None
    mesh.registry.update_from_map(node, now=T0, endpoints=["192.0.2.2:41641"])
    for stream in mesh.streams.values():
        assert stream.session.serves(mesh.tailnet.context)
    sent = mesh.pump()
    assert all("PeersChanged" in sent[v] for v in mesh.streams if v != node_id)
    assert looked_up == []

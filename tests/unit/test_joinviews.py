"""Nodes joining hand each node that only gains them as peers (and, under
autogroup:self, their addresses as sources) its earlier view with those
peers added and its filter taken anew (gitctl/policy/joinviews.py): the
views equal a fresh compile's, every session sends byte for byte what it
sends when every view is built whole, and the earlier nodes' views are not
built whole."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from gitctl.policy import compile_tailnet, parse_policy
from gitctl.policy import viewreuse as viewreuse_module
from gitctl.policy.joinviews import JoinChange
from gitctl.policy.viewindex import ViewIndex
from server.protocol.keys import MachinePublic, NodePublic
from server.store import open_store
from server.store.model import Registration
from server.tailnet import TailnetSource, running_tailnet
from server.tailnet.session import MapSession
from server.wire import DerpRegion
from tests.unit.control_client import T0
from tests.unit.test_refilter import OWNERS, PORTS, RULES, policy_doc, topology
from tests.unit.test_refilter_sessions import assert_same_messages
from tests.unit.test_tailnet_offloop import assert_maps_are_fresh

NEWCOMER = st.tuples(st.sampled_from(OWNERS), st.sampled_from((1, 2, 3, 3)), st.just(False))


def compiled(doc: dict[str, Any], spec: list[tuple[str, int, bool]], previous: Any = None) -> Any:
    """The server's way: grown from ``previous`` where it can, its views adopted."""
    policy = parse_policy(doc)
    topo = topology(spec)
    keys = list(range(len(spec)))
    return compile_tailnet(
        policy, topo, keys=keys, previous=previous, base=previous, enforce_tests=False
    )


@settings(max_examples=150, deadline=None)
@given(
    spec=st.lists(
        st.tuples(st.sampled_from(OWNERS), st.sampled_from((1, 2, 3, 3)), st.booleans()),
        min_size=1,
        max_size=8,
    ),
    batches=st.lists(st.lists(NEWCOMER, min_size=1, max_size=3), min_size=1, max_size=3),
    rules=st.lists(RULES, max_size=3),
    ports=st.sampled_from(PORTS),
    flags=st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_joins_give_the_views_of_a_fresh_compile(
    spec: list[tuple[str, int, bool]],
    batches: list[list[tuple[str, int, bool]]],
    rules: list[tuple[str, str]],
    ports: str,
    flags: list[bool],
) -> None:
    # Users under autogroup:self, tags, IPv4/IPv6/both, routers of a subnet
    # among the earlier nodes, SSH, capability grants, IPv4 disabled, a
    # user's capabilities; newcomers (no routes) join in batches.
    ssh, app, no_v4, funnel = flags
    doc = policy_doc(
        [("autogroup:member", "autogroup:self"), *rules],
        ports,
        ssh=ssh,
        app=app,
        no_v4=no_v4,
        funnel=funnel,
    )
    served = compiled(doc, spec)
    for batch in batches:
        before = dict(served.nodes.items())  # every node streaming: every view built
        spec = [*spec, *batch]
        served = compiled(doc, spec, served)
        fresh = compiled(doc, spec)
        for key in range(len(spec)):
            view, want = served.nodes[key], fresh.nodes[key]
            assert view == want
            assert list(view.peers) == list(want.peers)
            assert dict(view.whois_cap_map) == dict(want.whois_cap_map)
        change = served.visibility.peer_change
        if isinstance(change, JoinChange):
            for key in change.viewers:  # patched: the SSH policy is the one it held
                view, held = served.nodes[key], before[key]
                assert view.ssh_policy is held.ssh_policy
                # and its peers' entries (map refreshes compare them by identity)
                assert all(view.peers[p] is pv for p, pv in held.peers.items())


SELF = {"acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}]}


def test_a_join_into_users_builds_no_earlier_members_view_whole() -> None:
    spec = [(("alice", "bob", "carol")[i % 3], 3, False) for i in range(12)]
    served = compiled(SELF, spec)
    dict(served.nodes.items())
    built: list[int] = []
    build = ViewIndex._build

    def counting(self: ViewIndex[Any], i: int) -> Any:
        built.append(i)
        return build(self, i)

    with mock.patch.object(ViewIndex, "_build", counting):
        batch = [("alice", 3, False), ("bob", 3, False), ("alice", 1, False)]
        spec = [*spec, *batch]
        served = compiled(SELF, spec, served)
        views = dict(served.nodes.items())
    assert built == [12, 13, 14]  # the newcomers' own views alone
    fresh = compiled(SELF, spec)
    assert views == dict(fresh.nodes.items())
    # carol's nodes see no newcomer: their views are the very ones they held.
    assert served.changed == frozenset(i for i, (u, _, _) in enumerate(spec) if u != "carol")


USERS = ("u0", "u1", "u2")
SESSION_OWNERS = (*USERS, "tag:web")


def source(extra: list[tuple[str, str]], *, ssh: bool) -> TailnetSource:
    doc: dict[str, Any] = {
        "tagOwners": {"tag:web": ["u0@example.com"]},
        "acls": [
            {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
            *({"action": "accept", "src": [s], "dst": [f"{d}:443"]} for s, d in extra),
        ],
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
    return TailnetSource(
        id="base",
        domain="tailnet.example",
        dns_config={"Domains": ["tailnet.example"], "Proxied": True},
        users={u: (f"{u}@example.com", u.upper()) for u in USERS},
        policy=parse_policy(doc),
    )


def join_messages(
    owners: list[str],
    batches: list[list[str]],
    src: TailnetSource,
    *,
    check: bool = True,
    built: list[int] | None = None,
    passes: dict[int, int] | None = None,
) -> list[dict[int, bytes | None]]:
    """Every earlier session's message after each batch of joins (settled
    together, as concurrent registrations are on the loop), each map checked
    against a fresh compile (``check``). ``built`` is emptied once the
    earlier nodes hold their first maps; ``passes`` gets each session's
    passes over all its peers (`MapSession.full_passes`) at the end."""
    store = open_store(Path(":memory:"))
    due: list[Callable[[], object]] = []

    def later(fn: Callable[[], object]) -> bool:
        due.append(fn)
        return True

    def run() -> None:
        while due:
            due.pop(0)()

    def register(n: int, owner: str) -> int:
        raw = (n + 1).to_bytes(32, "big")
        tagged = owner.startswith("tag:")
        return registry.register(
            Registration(
                machine_key=MachinePublic(raw),
                node_key=NodePublic(raw),
                hostname=f"n{n}",
                user=None if tagged else owner,
                tags=(owner,) if tagged else (),
                now=T0,
            )
        ).id

    try:
        registry, tailnet = running_tailnet(
            store,
            src,
            derp_regions=[DerpRegion(999, "test", "test", "127.0.0.1", 3340, 0)],
            log=logging.getLogger("test"),
            clock=lambda: T0,
            defer=later,
        )
        streams = {}
        for n, owner in enumerate(owners):
            register(n, owner)
        run()
        for node in store.list_nodes():
            handle, session = tailnet.open_session(node.id), MapSession(node.id)
            session.step(tailnet.context, handle.take_wake(), T0)
            streams[node.id] = (handle, session)
        if built is not None:
            built.clear()
        out = []
        n = len(owners)
        for batch in batches:
            for owner in batch:
                register(n, owner)
                n += 1
            run()
            out.append(
                {
                    node_id: session.step(tailnet.context, handle.take_wake(), T0)
                    for node_id, (handle, session) in streams.items()
                }
            )
            if check:
                assert_maps_are_fresh(store, tailnet)
        if passes is not None:
            passes.update((node_id, s.full_passes) for node_id, (_, s) in streams.items())
        return out
    finally:
        store.close()


@settings(max_examples=40, deadline=None)
@given(
    owners=st.lists(st.sampled_from(SESSION_OWNERS), min_size=1, max_size=9),
    batches=st.lists(
        st.lists(st.sampled_from(SESSION_OWNERS), min_size=1, max_size=3), min_size=1, max_size=3
    ),
    extra=st.lists(st.sampled_from((("u0@example.com", "tag:web"), ("*", "tag:web"))), max_size=1),
    ssh=st.booleans(),
)
def test_each_session_sends_what_views_built_whole_give(
    owners: list[str], batches: list[list[str]], extra: list[tuple[str, str]], ssh: bool
) -> None:
    src = source(extra, ssh=ssh)
    taken = join_messages(owners, batches, src)
    with mock.patch.object(viewreuse_module, "join_change", lambda *_: None):
        whole = join_messages(owners, batches, src)
    assert len(taken) == len(whole)
    for got, want in zip(taken, whole, strict=True):
        assert_same_messages(got, want)


def test_a_settle_of_joins_into_users_builds_no_earlier_nodes_view_whole() -> None:
    built: list[int] = []
    build = ViewIndex._build

    def counting(self: ViewIndex[Any], i: int) -> Any:
        built.append(i)
        return build(self, i)

    owners = [USERS[n % 3] for n in range(12)]
    passes: dict[int, int] = {}
    with mock.patch.object(ViewIndex, "_build", counting):
        sent = join_messages(
            owners,
            [["u0", "u1"], ["u0"]],
            source([], ssh=False),
            check=False,
            built=built,
            passes=passes,
        )
    assert all(i >= len(owners) for i in built)  # none but newcomers' (none streams here)
    # Their sessions send the newcomer and the filter, read from the change
    # log: no pass over their peers but the first map's.
    assert set(passes.values()) == {1}
    # Each earlier node of a user that gained a node is sent its new peer and filter.
    assert [sum(msg is not None for msg in msgs.values()) for msgs in sent] == [8, 4]


def test_a_join_leaves_rules_without_destinations_as_they_were() -> None:
    # autogroup:self's rule over every member reaches no node itself (each
    # user's own rule does): growing its sources copied every member's
    # addresses at each join, for a rule that is never sent.
    spec = [(("alice", "bob", "carol")[i % 3], 3, False) for i in range(12)]
    served = compiled(SELF, spec)
    spec = [*spec, ("alice", 3, False), ("bob", 3, False)]
    grown = compiled(SELF, spec, served)
    assert grown.visibility.origin == "extended"
    before = served.visibility.slots
    idle = [k for k, rule in enumerate(before) if not rule.parts]
    assert idle and all(grown.visibility.slots[k] is before[k] for k in idle)
    assert dict(grown.nodes.items()) == dict(compiled(SELF, spec).nodes.items())

"""Sessions after a commit whose views are their earlier ones with new
filters (gitctl/policy/refilter.py) send byte for byte what they send when
every view is built whole, and hold what a fresh compile gives."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from gitctl.policy import parse_policy, viewadopt
from gitctl.policy import viewindex as viewindex_module
from server.protocol.keys import MachinePublic, NodePublic
from server.store import open_store
from server.store.model import Registration
from server.tailnet import TailnetSource, running_tailnet
from server.tailnet.session import MapSession
from server.wire import DerpRegion
from tests.unit.control_client import T0
from tests.unit.test_tailnet_offloop import assert_maps_are_fresh

USERS = ("u0", "u1", "u2")
OWNERS = (*USERS, "tag:web", "tag:db")
RULES = (
    ("u0@example.com", "tag:web"),
    ("tag:web", "tag:db"),
    ("autogroup:member", "u1@example.com"),
    ("*", "tag:db"),
)
DNS = {"Domains": ["tailnet.example"], "Proxied": True}


def source(sid: str, rules: list[tuple[str, str]], ports: str, **kw: Any) -> TailnetSource:
    doc: dict[str, Any] = {
        "tagOwners": {"tag:web": ["u0@example.com"], "tag:db": ["u0@example.com"]},
        "acls": [
            {"action": "accept", "src": ["autogroup:member"], "dst": [f"autogroup:self:{ports}"]},
            *({"action": "accept", "src": [s], "dst": [f"{d}:{ports}"]} for s, d in rules),
        ],
    }
    if kw.get("ssh"):
        doc["ssh"] = [
            {
                "action": "accept",
                "src": ["autogroup:member"],
                "dst": ["autogroup:self"],
                "users": ["root"],
            }
        ]
    attrs = [{"target": ["tag:db"], "attr": ["disable-ipv4"]}] if kw.get("no_v4") else []
    if kw.get("attrs"):  # a node's capabilities: its own view changes
        attrs.append({"target": ["u1@example.com"], "attr": ["funnel"]})
    if attrs:
        doc["nodeAttrs"] = attrs
    return TailnetSource(
        id=sid,
        domain="tailnet.example",
        dns_config={**DNS, "Domains": ["other.example"]} if kw.get("dns") else DNS,
        users={u: (f"{u}@example.com", u.upper()) for u in USERS},
        policy=parse_policy(doc),
    )


def commit_messages(
    owners: list[str], before: TailnetSource, after: TailnetSource
) -> dict[int, bytes | None]:
    """Every session's message after the commit from ``before`` to
    ``after``, each node streaming and holding its first map."""
    store = open_store(Path(":memory:"))
    try:
        registry, tailnet = running_tailnet(
            store,
            before,
            derp_regions=[DerpRegion(999, "test", "test", "127.0.0.1", 3340, 0)],
            log=logging.getLogger("test"),
            clock=lambda: T0,
        )
        for n, owner in enumerate(owners):
            raw = (n + 1).to_bytes(32, "big")
            tagged = owner.startswith("tag:")
            registry.register(
                Registration(
                    machine_key=MachinePublic(raw),
                    node_key=NodePublic(raw),
                    hostname=f"n{n}",
                    user=None if tagged else owner,
                    tags=(owner,) if tagged else (),
                    now=T0,
                )
            )
        tailnet.settle()
        streams = {}
        for node in store.list_nodes():
            handle, session = tailnet.open_session(node.id), MapSession(node.id)
            session.step(tailnet.context, handle.take_wake(), T0)
            streams[node.id] = (handle, session)
        tailnet.swap_source(after)
        out = {
            node_id: session.step(tailnet.context, handle.take_wake(), T0)
            for node_id, (handle, session) in streams.items()
            if session.serves(tailnet.context)
        }
        assert_maps_are_fresh(store, tailnet)
        return out
    finally:
        store.close()


@settings(max_examples=40, deadline=None)
@given(
    owners=st.lists(st.sampled_from(OWNERS), min_size=1, max_size=10),
    rules=st.lists(st.sampled_from(RULES), max_size=2, unique=True),
    ports=st.tuples(st.sampled_from(("*", "22", "22,443")), st.sampled_from(("443", "80-90"))),
    flags=st.fixed_dictionaries(
        {"ssh": st.booleans(), "no_v4": st.booleans(), "attrs": st.booleans()}
    ),
    change=st.sampled_from(("ports", "ports", "ssh", "dns", "no_v4", "attrs", "peers")),
)
def test_each_session_sends_what_views_built_whole_give(
    owners: list[str],
    rules: list[tuple[str, str]],
    ports: tuple[str, str],
    flags: dict[str, bool],
    change: str,
) -> None:
    # Users under autogroup:self, tagged nodes, IPv4 and IPv6 (IPv6 alone
    # where nodeAttrs disable IPv4); the commit moves ports, and may also
    # change SSH, DNS, which nodes lack IPv4, some nodes' capabilities, or
    # who sees whom.
    before = source("base", rules, ports[0], **flags)
    kw = dict(flags)
    if change in ("ssh", "no_v4", "attrs"):
        kw[change] = not kw[change]
    kw["dns"] = change == "dns"
    more = [r for r in RULES if r not in rules][:1] if change == "peers" else []
    after = source("c1", [*rules, *more], ports[1], **kw)
    taken = commit_messages(owners, before, after)
    with mock.patch.object(viewadopt, "refilter_from", lambda *_: None):
        whole = commit_messages(owners, before, after)
    assert_same_messages(taken, whole)


def assert_same_messages(taken: dict[int, bytes | None], whole: dict[int, bytes | None]) -> None:
    """Each session's message byte for byte (type and spliced pieces too)."""
    assert taken.keys() == whole.keys()
    for node_id, msg in taken.items():
        other = whole[node_id]
        assert (msg is None) == (other is None)
        if msg is not None and other is not None:
            assert bytes(msg) == bytes(other) and type(msg) is type(other)
            assert getattr(msg, "pieces", ()) == getattr(other, "pieces", ())


def test_a_ports_only_commit_takes_every_view_from_the_earlier_one() -> None:
    built: list[int] = []
    refiltered = viewindex_module.ViewIndex._refiltered

    def counting(self: Any, i: int, earlier: Any) -> Any:
        built.append(i)
        return refiltered(self, i, earlier)

    owners = [USERS[n % 3] for n in range(9)]
    with mock.patch.object(viewindex_module.ViewIndex, "_refiltered", counting):
        sent = commit_messages(owners, source("base", [], "*"), source("c1", [], "22"))
    assert len(built) == len(owners) == len(sent)
    assert all(msg is not None and b"PacketFilter" in msg for msg in sent.values())

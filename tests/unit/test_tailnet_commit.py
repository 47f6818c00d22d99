"""A commit wakes only the sessions whose maps it changes; what they then
send equals a fresh compile, and the other sessions hold maps that still do."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gitctl.policy import parse_policy
from gitctl.tailnet.model import DerpNodeSpec, DerpRegionSpec, EmbeddedDerp, TailnetSettings
from server.protocol.keys import MachinePublic, NodePublic
from server.store import open_store
from server.store.interface import Store
from server.store.model import Registration
from server.tailnet import NodeRegistry, Tailnet, TailnetSource, running_tailnet
from server.tailnet.mapper import build_map
from server.wire import DerpRegion
from tests.unit.control_client import T0

USERS = {"alice": ("alice@example.com", "Alice"), "bob": ("bob@example.com", "Bob")}
BASE: dict[str, Any] = {
    "tagOwners": {"tag:web": ["alice@example.com"], "tag:db": ["alice@example.com"]},
    "acls": [{"action": "accept", "src": ["tag:web"], "dst": ["tag:db:5432"]}],
}
ALICE_TO_WEB = {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:web:443"]}


def source(sid: str, policy: dict[str, Any], domain: str = "tailnet.example") -> TailnetSource:
    return TailnetSource(
        id=sid,
        domain=domain,
        dns_config={"Domains": [domain], "Proxied": True},
        users=USERS,
        policy=parse_policy(policy),
    )


@pytest.fixture
def store() -> Iterator[Store]:
    s = open_store(Path(":memory:"))
    yield s
    s.close()


def serving(
    store: Store, src: TailnetSource, primaries: Mapping[str, int] | None = None
) -> tuple[NodeRegistry, Tailnet]:
    return running_tailnet(
        store,
        src,
        primaries=primaries,
        derp_regions=[DerpRegion(999, "test", "test", "127.0.0.1", 3340, 0)],
        log=logging.getLogger("test"),
        clock=lambda: T0,
    )


def register(
    registry: NodeRegistry,
    n: int,
    name: str,
    user: str | None,
    tags: Any = (),
    *,
    approved: bool = True,
) -> int:
    raw = n.to_bytes(32, "big")
    return registry.register(
        Registration(
            machine_key=MachinePublic(raw),
            node_key=NodePublic(raw),
            hostname=name,
            user=user,
            tags=tags,
            now=T0,
            approved=approved,
        )
    ).id


def four_nodes(store: Store) -> tuple[NodeRegistry, Tailnet, dict[str, int]]:
    registry, tailnet = serving(store, source("base", BASE))
    nodes = [
        ("alice-laptop", "alice", ()),
        ("bob-laptop", "bob", ()),
        ("web", None, ("tag:web",)),
        ("db", None, ("tag:db",)),
    ]
    ids = {
        name: register(registry, n + 1, name, user, tags)
        for n, (name, user, tags) in enumerate(nodes)
    }
    return registry, tailnet, ids


def tailnet_with(store: Store) -> tuple[Tailnet, dict[str, int]]:
    _, tailnet, ids = four_nodes(store)
    return tailnet, ids


def woken(handles: dict[str, Any]) -> set[str]:
    return {name for name, h in handles.items() if h.take()[0]}


def test_a_commit_wakes_only_the_nodes_its_new_rule_reaches(store: Store) -> None:
    tailnet, ids = tailnet_with(store)
    handles = {name: tailnet.open_session(node_id) for name, node_id in ids.items()}
    woken(handles)  # the first full maps
    before = {name: tailnet.views.get(node_id) for name, node_id in ids.items()}

    tailnet.swap_source(source("c1", {**BASE, "acls": [*BASE["acls"], ALICE_TO_WEB]}))

    assert woken(handles) == {"alice-laptop", "web"}
    assert tailnet.views.get(ids["bob-laptop"]) is before["bob-laptop"]
    alice = tailnet.views.get(ids["alice-laptop"])
    assert alice is not None and ids["web"] in alice.peers
    # Every node's map (woken or not) is what a server started on this commit sends.
    _, fresh = serving(store, tailnet.source)
    ctx = replace(fresh.context, online=tailnet.online_ids())
    for node_id in ids.values():
        assert build_map(tailnet.context, node_id, T0) == build_map(ctx, node_id, T0)


def test_a_commit_that_changes_the_dns_domain_wakes_every_node(store: Store) -> None:
    tailnet, ids = tailnet_with(store)
    handles = {name: tailnet.open_session(node_id) for name, node_id in ids.items()}
    woken(handles)
    tailnet.swap_source(source("c1", BASE, domain="other.example"))
    assert woken(handles) == set(ids)


def test_a_commit_with_the_same_rules_wakes_no_one(store: Store) -> None:
    tailnet, ids = tailnet_with(store)
    handles = {name: tailnet.open_session(node_id) for name, node_id in ids.items()}
    woken(handles)
    # A new commit (a README edit, a policy test added) changes no node's view.
    tests = [{"src": "tag:web", "accept": ["tag:db:5432"]}]
    tailnet.swap_source(source("c1", {**BASE, "tests": tests}))
    assert woken(handles) == set()
    assert tailnet.source.id == "c1"


def test_a_commit_to_settings_derp_regions_sends_every_node_the_new_derp_map(
    store: Store,
) -> None:
    tailnet, ids = tailnet_with(store)
    handles = {name: tailnet.open_session(node_id) for name, node_id in ids.items()}
    woken(handles)
    relay = DerpRegionSpec(
        region_id=901,
        region_code="fra",
        region_name="Frankfurt",
        nodes=(DerpNodeSpec(name="901a", region_id=901, host_name="derp.example", stun_port=-1),),
    )
    settings = TailnetSettings(
        derp_regions=(relay,),
        embedded_derp=EmbeddedDerp(region_id=900, region_code="home", region_name="Home"),
    )
    tailnet.swap_source(replace(source("c1", BASE), settings=settings))

    assert woken(handles) == set(ids)
    regions = tailnet.context.derp_map["Regions"]
    assert regions["900"]["RegionCode"] == "home" and regions["900"]["RegionName"] == "Home"
    assert regions["900"]["Nodes"][0]["RegionID"] == 900
    # tailcfg's omitempty: unset fields are left out, -1 (no STUN) is kept.
    assert regions["901"] == {
        "RegionID": 901,
        "RegionCode": "fra",
        "RegionName": "Frankfurt",
        "Nodes": [{"Name": "901a", "RegionID": 901, "HostName": "derp.example", "STUNPort": -1}],
    }
    state = build_map(tailnet.context, ids["web"], T0)
    assert state is not None and state.top["DERPMap"] is tailnet.context.derp_map

    # Without the embedded region, only the listed relays are offered.
    off = TailnetSettings(derp_regions=(relay,), embedded_derp=EmbeddedDerp(enabled=False))
    tailnet.swap_source(replace(source("c2", BASE), settings=off))
    assert set(tailnet.context.derp_map["Regions"]) == {"901"}

"""During a canary hold each node is served from one snapshot: a canary node's
map equals a fresh compile of the candidate, every other node's a fresh
compile of the commit everyone has; a promotion or an abort moves the
canaries' sessions and no one else's."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from server.protocol.keys import MachinePublic, NodePublic
from server.store.interface import Store
from server.store.model import Registration
from server.tailnet import Tailnet, TailnetSource
from server.tailnet.mapper import build_map
from tests.unit.control_client import T0
from tests.unit.test_tailnet_commit import (
    ALICE_TO_WEB,
    BASE,
    USERS,
    four_nodes,
    register,
    serving,
    source,
    store,
    tailnet_with,
    woken,
)

__all__ = ["store"]  # the fixture, used by name

CANDIDATE = source("c1", {**BASE, "acls": [*BASE["acls"], ALICE_TO_WEB]})


def assert_each_node_on(store: Store, tailnet: Tailnet, on: dict[int, TailnetSource]) -> None:
    """Every node's map is what a server started on its snapshot sends."""
    for node_id, src in on.items():
        _, fresh = serving(store, src)
        ctx = replace(fresh.context, online=tailnet.online_ids())
        assert build_map(tailnet.context_for(node_id), node_id, T0) == build_map(ctx, node_id, T0)


def test_a_canary_node_sees_the_new_policys_peers_and_the_others_keep_the_old(
    store: Store,
) -> None:
    tailnet, ids = tailnet_with(store)
    handles = {name: tailnet.open_session(node_id) for name, node_id in ids.items()}
    woken(handles)
    old = tailnet.source

    tailnet.start_canary(CANDIDATE, "tag:web")

    assert woken(handles) == {"web"}  # only the canary changes snapshot
    web = tailnet.context_for(ids["web"]).views.get(ids["web"])
    alice = tailnet.context_for(ids["alice-laptop"]).views.get(ids["alice-laptop"])
    assert web is not None and ids["alice-laptop"] in web.peers
    assert alice is not None and ids["web"] not in alice.peers  # alice is not a canary
    assert tailnet.source is old and tailnet.candidate is CANDIDATE
    on = {i: (CANDIDATE if name == "web" else old) for name, i in ids.items()}
    assert_each_node_on(store, tailnet, on)


def test_an_abort_sends_the_canaries_back_to_the_commit_everyone_has(store: Store) -> None:
    tailnet, ids = tailnet_with(store)
    handles = {name: tailnet.open_session(node_id) for name, node_id in ids.items()}
    tailnet.start_canary(CANDIDATE, "tag:web")
    woken(handles)

    tailnet.end_canary()

    assert woken(handles) == {"web"}
    assert tailnet.candidate is None and not tailnet.is_canary(ids["web"])
    assert_each_node_on(store, tailnet, dict.fromkeys(ids.values(), tailnet.source))


def test_a_promotion_serves_the_candidate_to_every_node(store: Store) -> None:
    tailnet, ids = tailnet_with(store)
    handles = {name: tailnet.open_session(node_id) for name, node_id in ids.items()}
    tailnet.start_canary(CANDIDATE, "tag:web")
    woken(handles)

    tailnet.swap_source(CANDIDATE)

    assert "alice-laptop" in woken(handles)
    assert tailnet.candidate is None
    assert_each_node_on(store, tailnet, dict.fromkeys(ids.values(), CANDIDATE))


def test_a_node_tagged_during_the_hold_moves_to_the_candidate(store: Store) -> None:
    registry, tailnet = serving(store, source("base", BASE))
    raw = (1).to_bytes(32, "big")
    web = registry.register(Registration(
        machine_key=MachinePublic(raw), node_key=NodePublic(raw), hostname="web",
        user=None, tags=("tag:web",), now=T0,
    ))  # fmt: skip
    raw = (2).to_bytes(32, "big")
    alice = registry.register(Registration(
        machine_key=MachinePublic(raw), node_key=NodePublic(raw), hostname="alice-laptop",
        user="alice", tags=(), now=T0,
    ))  # fmt: skip
    handle = tailnet.open_session(web.id)
    tailnet.start_canary(CANDIDATE, "tag:canary")
    handle.take()
    assert not tailnet.is_canary(web.id)

    registry.set_tags(web.id, ("tag:canary", "tag:web"))

    assert tailnet.is_canary(web.id) and handle.take()[0]
    view = tailnet.context_for(web.id).views.get(web.id)
    assert view is not None and alice.id in view.peers  # the candidate's rule
    assert_each_node_on(store, tailnet, {web.id: CANDIDATE, alice.id: tailnet.source})


def test_the_serving_and_the_canary_maps_each_find_their_own_nodes_expiring(
    store: Store,
) -> None:
    """Sessions look for peers whose key expired since their last map. The
    serving map and the canary's may hold as many nodes and not the same ones
    (here: bob's laptop in one, carol's in the other); asking about one must
    not leave the answer about the other stale."""
    registry, tailnet, ids = four_nodes(store)
    carol = register(registry, 9, "carol-laptop", "carol")  # not a user of the serving commit
    registry.set_key_expiry(ids["bob-laptop"], T0 + timedelta(hours=1))
    registry.set_key_expiry(carol, T0 + timedelta(hours=2))
    users = {"alice": USERS["alice"], "carol": ("carol@example.com", "Carol")}
    candidate = replace(source("c1", BASE), users=users)  # bob left, carol joined
    later = T0 + timedelta(hours=3)

    def expiring(node_id: int) -> list[int]:
        ctx = tailnet.context_for(node_id)
        return ctx.expiries.between(ctx.nodes, T0, later)

    assert expiring(ids["db"]) == [ids["bob-laptop"]]
    tailnet.start_canary(candidate, "tag:web")
    assert len(tailnet.context_for(ids["web"]).nodes) == len(tailnet.context.nodes)
    for _ in range(2):  # the sessions of both snapshots ask in turn
        assert expiring(ids["web"]) == [carol]
        assert expiring(ids["db"]) == [ids["bob-laptop"]]

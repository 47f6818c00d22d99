"""The sweep's question "which registered nodes are cut off (their user is not
in git)?" is answered from what changed since it was last asked: an endpoint
change or a join does not cost a pass over every record, and the answer is
the full pass's whatever happened in between."""

from __future__ import annotations

from dataclasses import replace

from server.store.interface import Store
from server.store.model import Node
from server.tailnet import NodeRegistry, Tailnet
from tests.unit.control_client import T0
from tests.unit.test_tailnet_commit import BASE, USERS, four_nodes, register, source, store

__all__ = ["store"]  # the fixture


def brute(tailnet: Tailnet) -> list[Node]:
    served = tailnet.context.nodes
    records = [tailnet.record(i) for i in sorted(tailnet.record_ids())]
    return [n for n in records if n is not None and n.id not in served and n.approved]


def _move(registry: NodeRegistry, node_id: int, n: int) -> None:
    node = registry.get(node_id)
    assert node is not None
    registry.update_from_map(node, now=T0, endpoints=(f"192.0.2.{n}:41641",))


def test_the_cut_off_nodes_follow_changes_without_a_pass_over_every_record(store: Store) -> None:
    registry, tailnet, ids = four_nodes(store)
    outsider = register(registry, 20, "carol-laptop", "carol")  # carol is not in git
    assert [n.id for n in tailnet.cut_off()] == [outsider]
    passes = tailnet._cut_off.rebuilds
    for n in range(5):  # endpoint changes, of served nodes and of the outsider
        _move(registry, ids["web"], n + 1)
        _move(registry, outsider, n + 1)
        assert tailnet.cut_off() == brute(tailnet)
    joined = register(registry, 21, "alice-phone", "alice")
    waiting = register(registry, 22, "carol-phone", "carol", approved=False)
    assert tailnet.cut_off() == brute(tailnet)
    assert joined not in {n.id for n in tailnet.cut_off()}
    assert waiting not in {n.id for n in tailnet.cut_off()}  # not approved: waits, not cut
    registry.approve(waiting)
    assert [n.id for n in tailnet.cut_off()] == [outsider, waiting]
    registry.remove(outsider)
    assert [n.id for n in tailnet.cut_off()] == [waiting]
    assert tailnet._cut_off.rebuilds == passes  # (before: a pass per sweep after any change)
    # A commit that removes bob: his node leaves the maps and is cut off.
    tailnet.swap_source(replace(source("no-bob", BASE), users={"alice": USERS["alice"]}))
    assert tailnet.cut_off() == brute(tailnet)
    assert ids["bob-laptop"] in {n.id for n in tailnet.cut_off()}
    tailnet.swap_source(source("bob-back", BASE))
    assert tailnet.cut_off() == brute(tailnet) and ids["bob-laptop"] not in {
        n.id for n in tailnet.cut_off()
    }

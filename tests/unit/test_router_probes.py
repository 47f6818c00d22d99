"""Health probes of routers sharing a subnet: a router that stops answering
while its stream stays open loses its subnets; its answer makes it eligible
again, and the new primary keeps the subnet (no flap)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from itertools import count
from pathlib import Path

import pytest

from server.map_streams import ping_message
from server.store import open_store
from server.store.interface import Store
from server.store.model import Node
from server.tailnet import advertisers, running_tailnet
from server.tailnet.probes import Probe, RouterProbes
from tests.unit.control_client import T0
from tests.unit.test_node_registry import (
    REGIONS,
    ROUTER,
    ha_routers,
    register,
    router_source,
)

SECOND = timedelta(seconds=1)


def probes(misses: int = 2) -> RouterProbes:
    tokens = count()
    return RouterProbes(interval=10 * SECOND, misses=misses, token=lambda: f"t{next(tokens)}")


def test_a_tracked_router_is_probed_at_once_then_every_interval() -> None:
    p = probes()
    assert p.track({7}, T0) == []
    assert p.due(T0) == ([Probe(7, "t0")], [])
    assert p.due(T0 + 9 * SECOND) == ([], [])
    assert p.next_due() == T0 + 10 * SECOND
    sent, _ = p.due(T0 + 10 * SECOND)
    assert sent == [Probe(7, "t1")]


def test_two_missed_answers_make_a_router_unhealthy_and_an_answer_heals_it() -> None:
    p = probes(misses=2)
    p.track({7}, T0)
    p.due(T0)  # t0, never answered
    assert p.due(T0 + 10 * SECOND)[1] == []  # one miss: still healthy
    assert p.due(T0 + 20 * SECOND)[1] == [(7, False)]  # two in a row
    assert p.unhealthy() == {7}
    assert p.due(T0 + 30 * SECOND)[1] == []  # told once
    assert p.answered(7, "t3") == [(7, True)]
    assert p.unhealthy() == frozenset()
    assert p.answered(7, "t3") == []  # healthy already


def test_an_answer_in_time_resets_the_misses() -> None:
    p = probes(misses=2)
    p.track({7}, T0)
    for i in range(5):
        sent, transitions = p.due(T0 + i * 10 * SECOND)
        assert transitions == []
        if i % 2:
            assert p.answered(7, sent[0].token) == []


def test_an_unknown_token_or_node_is_not_an_answer() -> None:
    p = probes(misses=1)
    p.track({7}, T0)
    p.due(T0)
    assert p.due(T0 + 10 * SECOND)[1] == [(7, False)]
    assert p.answered(7, "forged") == []
    assert p.answered(8, "t1") == []
    assert p.unhealthy() == {7}


def test_a_router_no_longer_probed_is_no_longer_held_unhealthy() -> None:
    p = probes(misses=1)
    p.track({7, 8}, T0)
    p.due(T0)
    p.due(T0 + 10 * SECOND)
    assert p.unhealthy() == {7, 8}
    assert p.track({8}, T0 + 11 * SECOND) == [(7, True)]
    assert p.unhealthy() == {8}


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        RouterProbes(interval=timedelta(0), misses=2, token=str)
    with pytest.raises(ValueError):
        RouterProbes(interval=SECOND, misses=0, token=str)


def test_the_ping_request_is_answered_over_noise() -> None:
    msg = json.loads(ping_message("https://ctl.example/machine/probe/abc"))
    assert msg == {
        "PingRequest": {"URL": "https://ctl.example/machine/probe/abc", "URLIsNoise": True}
    }


@pytest.fixture
def store() -> Iterator[Store]:
    s = open_store(Path(":memory:"))
    yield s
    s.close()


def test_an_unhealthy_primary_fails_over_and_its_recovery_does_not_flap(store: Store) -> None:
    registry, primary, first, second = ha_routers(store)
    assert registry.is_online(first)
    assert primary() == first
    registry.set_healthy(first, False)  # its stream stays open
    assert registry.is_online(first)
    assert primary() == second
    registry.set_healthy(first, True)
    assert primary() == second  # the new primary keeps the subnet
    registry.set_healthy(second, False)
    assert primary() == first


def test_only_routers_sharing_a_subnet_are_probed(store: Store) -> None:
    registry, tailnet = running_tailnet(
        store, router_source(), derp_regions=REGIONS, log=logging.getLogger("t"), clock=lambda: T0
    )
    ids = [register(registry, n, None, tags=("tag:router",), hostinfo=ROUTER) for n in (1, 2)]
    ids.append(register(registry, 3, "alice"))
    registry.connected(ids[0])
    assert tailnet.shared_routers() == frozenset()  # alone online on its subnet
    for node_id in ids[1:]:
        registry.connected(node_id)
    assert tailnet.shared_routers() == set(ids[:2])


def test_the_probes_second_by_second_question_does_not_look_at_every_node(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe loop asks for the shared routers every second: with nothing
    changed, the answer does not go over every node again (counted)."""
    registry, tailnet = running_tailnet(
        store, router_source(), derp_regions=REGIONS, log=logging.getLogger("t"), clock=lambda: T0
    )
    ids = [register(registry, n, None, tags=("tag:router",), hostinfo=ROUTER) for n in (1, 2)]
    ids += [register(registry, n, "alice") for n in range(3, 20)]
    for node_id in ids:
        registry.connected(node_id)
    looked: list[int] = []
    advertised = advertisers.advertised_routes

    def counted(node: Node) -> tuple[str, ...]:
        looked.append(node.id)
        return advertised(node)

    monkeypatch.setattr(advertisers, "advertised_routes", counted)
    assert tailnet.shared_routers() == set(ids[:2])
    assert set(looked) == set(ids)  # the first question looks at every node
    looked.clear()
    for _ in range(3):
        assert tailnet.shared_routers() == set(ids[:2])
        assert registry.local_online_of(tailnet.shared_routers()) == set(ids[:2])
    assert looked == []
    registry.disconnected(ids[0], T0)  # online state: the same routers, fewer of them online
    assert tailnet.shared_routers() == frozenset()
    assert set(looked) == {ids[0]}  # the node that changed, not every node again

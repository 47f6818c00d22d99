"""A settle of k joins (registrations that share a recompile, as concurrent
ones do on the loop) costs what the k newcomers change, not what the tailnet
holds: the passes over every node that a settle makes are counted here, and
the maps it leaves still equal a fresh compile's."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from gitctl.policy import viewadopt
from gitctl.policy.viewindex import ViewIndex
from server.store.interface import Store
from server.tailnet import NodeRegistry, Tailnet, running_tailnet
from server.tailnet import views as views_module
from server.wire import DerpRegion
from tests.unit.control_client import T0
from tests.unit.test_tailnet_commit import register, source, store
from tests.unit.test_tailnet_offloop import assert_maps_are_fresh

__all__ = ["store"]  # the fixture

SPARSE: dict[str, Any] = {"acls": []}  # no node sees another: the socket bench's policy


def batching(
    store: Store, policy: dict[str, Any]
) -> tuple[NodeRegistry, Tailnet, Callable[[], None]]:
    """A tailnet whose recompiles wait, as on the loop, until `run` is called."""
    due: list[Callable[[], None]] = []

    def later(fn: Callable[[], None]) -> bool:
        due.append(fn)
        return True

    def run() -> None:
        while due:
            due.pop(0)()

    registry, tailnet = running_tailnet(
        store,
        source("base", policy),
        derp_regions=[DerpRegion(999, "test", "test", "127.0.0.1", 3340, 0)],
        log=logging.getLogger("test"),
        clock=lambda: T0,
        defer=later,
    )
    return registry, tailnet, run


def joined(registry: NodeRegistry, run: Callable[[], None], first: int, count: int) -> list[int]:
    ids = [register(registry, first + k, f"node-{first + k}", "alice") for k in range(count)]
    run()
    for node_id in ids:  # their first maps: online
        registry.connected(node_id)
    run()
    return ids


@pytest.mark.parametrize(
    "policy", [SPARSE, {"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}]
)
def test_a_batch_of_joins_lends_the_serving_views_once(
    store: Store, policy: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, tailnet, run = batching(store, policy)
    joined(registry, run, 1, 20)
    lent: list[int] = []
    lend = ViewIndex.lend

    def counting(self: ViewIndex[Any], other: ViewIndex[Any]) -> None:
        lent.append(len(other.keys))
        lend(self, other)

    monkeypatch.setattr(ViewIndex, "lend", counting)
    for batch in range(3):
        lent.clear()
        joined(registry, run, 100 + 10 * batch, 4)
        assert len(lent) == 1  # a pass over every node's peer view, once
    assert_maps_are_fresh(store, tailnet)


def test_a_batch_of_joins_names_the_nodes_by_the_rows_listing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, tailnet, run = batching(store, SPARSE)
    joined(registry, run, 1, 20)
    read: list[int] = []

    def node_id(node: Any) -> int:
        read.append(node.id)
        return int(node.id)

    monkeypatch.setattr(views_module, "_node_id", node_id)
    joined(registry, run, 100, 4)
    assert read == []  # (before: every live node's id, read again per settle)
    assert_maps_are_fresh(store, tailnet)


def test_a_batch_of_joins_where_no_node_has_peers_lends_no_peer_view(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, tailnet, run = batching(store, SPARSE)
    joined(registry, run, 1, 20)
    walked: list[int] = []
    real = viewadopt.compress

    def compress(data: Any, selectors: Any) -> Any:
        walked.append(1)
        return real(data, selectors)

    monkeypatch.setattr(viewadopt, "compress", compress)
    joined(registry, run, 100, 4)
    assert walked == []  # (before: a pass over every node's unbuilt peer view)
    assert_maps_are_fresh(store, tailnet)

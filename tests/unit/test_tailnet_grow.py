"""The server's joins grow the serving policy index (no full build), and the
maps it then serves equal a fresh compile's."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from gitctl.policy.viewindex import ViewIndex
from server.protocol.keys import NodePublic
from server.store.interface import Store
from server.tailnet import hub as hub_module
from tests.unit.control_client import T0
from tests.unit.test_tailnet_commit import four_nodes, register, store
from tests.unit.test_tailnet_offloop import assert_maps_are_fresh

__all__ = ["store"]  # the fixture


@pytest.fixture
def full_builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per index built from scratch."""
    built: list[int] = []
    init = ViewIndex.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        built.append(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(ViewIndex, "__init__", counting)
    return built


def test_a_join_grows_the_serving_index(
    store: Store, full_builds: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    registry, tailnet, _ = four_nodes(store)
    tailnet.settle()
    full_builds.clear()
    with caplog.at_level(logging.DEBUG):
        newcomer = register(registry, 9, "newcomer", "alice")
        tailnet.settle()
    assert full_builds == []
    assert "policy index: extended" in caplog.text
    assert newcomer in tailnet.context.nodes
    assert_maps_are_fresh(store, tailnet)


def test_joins_close_together_grow_it_once(store: Store, full_builds: list[int]) -> None:
    registry, tailnet, _ = four_nodes(store)
    tailnet.settle()
    full_builds.clear()

    async def storm() -> None:
        for n in range(5):
            register(registry, 20 + n, f"alice-{n}", "alice")
        await asyncio.sleep(hub_module.COALESCE_SECONDS * 4)

    asyncio.run(storm())
    assert full_builds == []
    assert len(tailnet.context.nodes) == 9
    assert_maps_are_fresh(store, tailnet)


def test_a_node_renewing_its_key_reuses_the_index(
    store: Store, full_builds: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    # a new node key changes nothing the policy sees: the index serves on
    registry, tailnet, ids = four_nodes(store)
    tailnet.settle()
    full_builds.clear()
    node = store.get_node(ids["alice-laptop"])
    assert node is not None
    with caplog.at_level(logging.DEBUG):
        registry.renew_key(node, NodePublic(bytes([7]) * 32), T0)
        tailnet.settle()
    assert full_builds == []
    assert "policy index: reused" in caplog.text
    assert_maps_are_fresh(store, tailnet)

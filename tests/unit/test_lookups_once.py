"""What a session asks of its view at every commit is looked up once: the
view by one lookup of its node, a group's peer count counted when made."""

from __future__ import annotations

from typing import Any

import pytest

from gitctl.policy import parse_policy
from gitctl.policy.compile import compile_tailnet
from gitctl.policy.viewmaps import GroupPeers, LazyNodes
from server.tailnet.views import PolicyViews
from tests.unit.test_refilter import USERS, self_ports, topology


class CountingDict(dict[Any, Any]):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.counted = 0

    def __len__(self) -> int:
        self.counted += 1
        return super().__len__()


def test_a_groups_peers_are_counted_once() -> None:
    group = CountingDict({1: "a", 2: "b", 3: "c"})
    peers = GroupPeers(group, 2)  # type: ignore[arg-type]
    assert [len(peers) for _ in range(3)] == [2, 2, 2] and group.counted == 1
    assert len(GroupPeers(group, 9)) == 3  # type: ignore[arg-type]
    assert list(peers) == [1, 3]


def test_a_view_is_found_by_one_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = [(USERS[i % 3], 3, False) for i in range(6)]
    topo = topology(spec)
    compiled = compile_tailnet(parse_policy(self_ports("22")), topo, keys=list(range(6)))
    views = PolicyViews(compiled)
    want = {i: compiled.nodes[i] for i in range(6)}

    def asked(self: LazyNodes[Any], key: object) -> bool:
        raise AssertionError("looked up twice")

    monkeypatch.setattr(LazyNodes, "__contains__", asked)
    assert all(views.get(i) is want[i] for i in range(6))
    assert views.get(99) is None and compiled.nodes.get(99, "none") == "none"

"""The rules a node is sent are one list for every node receiving the same
slots, and `FilterShapes.of` finds what it worked out for them by that
list's identity: per node, no list of rules and no tuple of their ids."""

from __future__ import annotations

from typing import Any

from gitctl.policy.filtershape import FilterShapes, ShapedFilter
from gitctl.policy.viewfields import merge_rules
from tests.unit.test_refilter import USERS, index, self_ports, topology

SPEC = [(USERS[i % 3], 3, False) for i in range(9)]


class CountingDict(dict[Any, Any]):
    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    def get(self, key: Any, default: Any = None) -> Any:
        self.lookups += 1
        return super().get(key, default)


def test_a_users_nodes_share_one_list_of_rules() -> None:
    idx = index(self_ports("22"), topology(SPEC))
    alice = [i for i, (owner, _, _) in enumerate(SPEC) if owner == "alice"]
    assert len({id(idx.per_node.shown(i)) for i in alice}) == 1
    assert idx.per_node.shown(0) is not idx.per_node.shown(1)  # alice's and bob's


def test_the_same_list_is_found_by_identity() -> None:
    idx = index(self_ports("22"), topology(SPEC))
    shapes = FilterShapes()
    by_ids = shapes._lists = CountingDict()
    rules = idx.per_node.shown(0)
    first, again = shapes.of(0, rules), shapes.of(3, rules)
    assert by_ids.lookups == 1
    for node, got in ((0, first), (3, again)):
        assert type(got) is ShapedFilter and type(got.texts) is tuple
        assert tuple(got) == merge_rules((r, r.render(node)) for r in rules)

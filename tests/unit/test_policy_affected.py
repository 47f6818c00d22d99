"""Which views a commit over the same nodes may touch (`_policy_affected`),
worked out per pair of slot lists rather than per node: the same nodes as
the node-by-node comparison it replaced, with no node's rules listed."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitctl.policy.noderules import NodeRules
from gitctl.policy.viewindex import ViewIndex
from gitctl.policy.viewreuse import _policy_affected, _rule_ids
from tests.unit.test_refilter import OWNERS, PORTS, RULES, index, policy_doc, topology


def node_by_node(previous: ViewIndex[int], current: ViewIndex[int]) -> int | None:
    """The comparison as it was: each node's rules listed and numbered."""
    if previous.table != current.table or previous.no_v4 != current.no_v4:
        return None
    ids: dict[tuple[Any, ...], int] = {}
    old_ids, new_ids = _rule_ids(previous, ids), _rule_ids(current, ids)
    old_count, new_count = Counter(old_ids.values()), Counter(new_ids.values())
    differing = (old_count - new_count).keys() | (new_count - old_count).keys()
    mask = current.ssh.changed_since(previous.ssh)
    for idx, rule_ids in ((previous, old_ids), (current, new_ids)):
        for rule in idx.rules:
            if rule_ids[id(rule)] in differing:
                mask |= rule.src_mask
    for i, (a, b) in enumerate(zip(previous.per_node, current.per_node, strict=True)):
        if [old_ids[id(r)] for r in a] != [new_ids[id(r)] for r in b]:
            mask |= 1 << i
        elif previous.caps[i] != current.caps[i]:
            mask |= 1 << i
    return mask


@settings(max_examples=150, deadline=None)
@given(
    spec=st.lists(
        st.tuples(st.sampled_from(OWNERS), st.sampled_from((1, 2, 3)), st.booleans()),
        min_size=1,
        max_size=9,
    ),
    rules=st.lists(RULES, max_size=3),
    other=st.lists(RULES, max_size=3),
    ports=st.tuples(st.sampled_from(PORTS), st.sampled_from(PORTS)),
    flags=st.lists(st.booleans(), min_size=8, max_size=8),
)
def test_the_nodes_a_commit_may_touch_are_those_node_by_node(
    spec: list[tuple[str, int, bool]],
    rules: list[tuple[str, str]],
    other: list[tuple[str, str]],
    ports: tuple[str, str],
    flags: list[bool],
) -> None:
    topo = topology(spec)
    names = ("ssh", "app", "no_v4", "funnel")
    before = index(policy_doc(rules, ports[0], **dict(zip(names, flags[:4], strict=True))), topo)
    after = index(policy_doc(other, ports[1], **dict(zip(names, flags[4:], strict=True))), topo)
    assert _policy_affected(before, after) == node_by_node(before, after)


def test_a_commit_lists_no_nodes_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    # 50,000 nodes listed twice cost a tenth of a moonshot commit's CPU.
    spec = [(OWNERS[i % 3], 3, False) for i in range(12)]
    kw = {"ssh": False, "app": False, "no_v4": False}
    before = index(policy_doc([("autogroup:member", "autogroup:self")], "*", **kw), topology(spec))
    after = index(policy_doc([("autogroup:member", "autogroup:self")], "22", **kw), before.topology)

    def listed(self: NodeRules, node: int) -> list[Any]:
        raise AssertionError("a node's rules listed")

    monkeypatch.setattr(NodeRules, "__getitem__", listed)
    assert _policy_affected(before, after) == (1 << len(spec)) - 1

"""Which rules each node receives, and where aliases and addresses feed the rules.

Both are built over `RuleBuilder.slots` (`rulebuilder`): every rule the
policy made, in policy order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

from .filter import Rule
from .model import Alias
from .rulebuilder import RuleBuilder


class NodeRules:
    """Per node, the rules it receives, in policy order.

    Each node holds slot numbers into one list of every rule the policy made
    (``slots``), so an index for one more node shares the other nodes' lists
    even where their rules gained the newcomer (see `gitctl.policy.extend`)."""

    def __init__(
        self,
        slots: Sequence[Rule],
        lists: list[list[int]],
        self_sources: Sequence[tuple[Alias, ...]] = (),
    ) -> None:
        self.slots = slots
        self.lists = lists
        self.self_sources = self_sources  # see `RuleBuilder.self_sources`
        self._shown: dict[tuple[int, ...], list[Rule]] = {}

    @classmethod
    def of(cls, builder: RuleBuilder, n: int) -> NodeRules:
        lists: list[list[int]] = [[] for _ in range(n)]
        for k, rule in enumerate(builder.slots):
            if rule.live:
                for i in rule.dst_nodes:
                    lists[i].append(k)
        return cls(builder.slots, lists, builder.self_sources)

    def __getitem__(self, node: int) -> list[Rule]:
        slots = self.slots
        return [slots[k] for k in self.lists[node]]

    def shown(self, node: int) -> list[Rule]:
        """The rules the node is sent (none hidden): one list for every node
        receiving the same slots (a user's nodes under autogroup:self), which
        `FilterShapes.of` then finds by identity. Not to be changed."""
        slots = tuple(self.lists[node])
        rules = self._shown.get(slots)
        if rules is None:
            rules = self._shown[slots] = [r for r in self[node] if not r.hidden]
        return rules

    def __len__(self) -> int:
        return len(self.lists)

    def __iter__(self) -> Iterator[list[Rule]]:
        return (self[i] for i in range(len(self.lists)))


class SlotUses:
    """Where each alias and address text picks the nodes of a rule slot:
    which slots' sources an alias feeds, and which parts (slot, part) each
    part source (`DstPart.source`) fills. Positions do not enter, so the
    indexes grown from one another under one policy share it."""

    def __init__(self, slots: Sequence[Rule]) -> None:
        self.src: dict[Alias, list[int]] = defaultdict(list)
        self.by_alias: dict[Alias, list[tuple[int, int]]] = defaultdict(list)
        self.other: dict[tuple[str, Any], list[tuple[int, int]]] = defaultdict(list)
        # (autogroup:self entry, user email) -> that user's rule of the entry
        self.self_slots: dict[tuple[int, str], int] = {}
        for k, rule in enumerate(slots):
            if rule.self_of is not None:
                self.self_slots[rule.self_of] = k
            for a in dict.fromkeys(rule.src_aliases):
                self.src[a].append(k)
            for p, part in enumerate(rule.parts):
                if part.source is None:
                    continue
                if part.source[0] == "alias":
                    self.by_alias[part.source[1]].append((k, p))
                else:
                    self.other[part.source].append((k, p))

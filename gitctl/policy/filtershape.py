"""A node's packet filter from a shape its fellow nodes share.

Under autogroup:self every node of a user receives the same rules with the
same sources and ports; only the destinations that are the node's own
addresses differ. What a node's filter is made of apart from those texts and
its rules' sources (how its rules merge, which parts reach it, its ports, how
many addresses it has) is its `FilterShape`, worked out once per list of
rules and shared by value across users. A node's filter is a `ShapedFilter`:
the shape, the node's texts and the sources, rendered only when read (what
`merge_rules` over `Rule.render` gives) and compared without rendering. An
encoder keeps one JSON per shape and splices the texts and sources in
(`server.tailnet.mapencode.Fragments`): a commit then renders and encodes no
rule per node."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from typing import Any, overload

from .filter import Rule, ports_json

__all__ = ["FilterShape", "FilterShapes", "ShapedFilter"]

# (DstPorts as (index into the filled values, Ports), IPProto or None)
_RuleRecipe = tuple[list[tuple[int, dict[str, int]]], list[int] | None]


class FilterShape:
    """Rules to fill with one node's own address texts (``size`` of them)
    and each rule's sources: every user's nodes under one autogroup:self
    policy share it, found by ``key`` (what it renders, by value)."""

    __slots__ = ("key", "outline", "recipe", "size", "statics")

    def __init__(
        self, key: tuple[Any, ...], recipe: tuple[_RuleRecipe, ...], statics: tuple[str, ...]
    ) -> None:
        self.key = key
        self.recipe = recipe
        self.statics = statics  # texts every node of the shape is sent alike ("*", prefixes)
        self.size = key[0]
        # What the rules are apart from their texts: shapes whose outlines
        # differ never render alike (a commit that moves a port).
        self.outline = tuple((tuple(p for _, p in dst), proto) for dst, proto in recipe)

    def fill(
        self, texts: tuple[str, ...], srcs: tuple[list[str], ...]
    ) -> tuple[dict[str, Any], ...]:
        values = (*texts, *self.statics)
        rules = []
        for (dst, proto), src in zip(self.recipe, srcs, strict=True):
            rule: dict[str, Any] = {
                "SrcIPs": src,
                "DstPorts": [{"IP": values[k], "Ports": p} for k, p in dst],
            }
            if proto is not None:
                rule["IPProto"] = proto
            rules.append(rule)
        return tuple(rules)

    def ips(self, texts: tuple[str, ...]) -> list[str]:
        """Every DstPorts entry's IP, in order, filled with ``texts``."""
        values = (*texts, *self.statics)
        return [values[k] for dst, _ in self.recipe for k, _ in dst]


class ShapedFilter(Sequence[dict[str, Any]]):
    """A node's packet filter rules (equal to what `merge_rules` makes of
    them), as its `FilterShape`, own address texts and sources: rendered
    only when read. Comparing two needs no rendering (a session compares
    its filter with the one its client holds at every commit)."""

    __slots__ = ("_rules", "shape", "srcs", "texts")
    __hash__ = None  # type: ignore[assignment]  # as a tuple of dicts

    def __init__(
        self, shape: FilterShape, texts: tuple[str, ...], srcs: tuple[list[str], ...]
    ) -> None:
        self.shape, self.texts, self.srcs = shape, texts, srcs
        self._rules: tuple[dict[str, Any], ...] | None = None

    @property
    def rules(self) -> tuple[dict[str, Any], ...]:
        rules = self._rules
        if rules is None:
            rules = self._rules = self.shape.fill(self.texts, self.srcs)
        return rules

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[dict[str, Any], ...]: ...
    def __getitem__(self, index: int | slice) -> Any:
        return self.rules[index]

    def __len__(self) -> int:
        return len(self.shape.recipe)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rules)

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        if type(other) is not ShapedFilter:
            return self.rules == other if isinstance(other, tuple) else NotImplemented
        # Cheapest first: a commit that moves a port differs in the outline
        # (its Ports values are the same objects from one commit to the next).
        a, b = self.shape, other.shape
        if a is not b and a.outline != b.outline:
            return False
        if len(self.srcs) != len(other.srcs) or not all(map(_same_list, self.srcs, other.srcs)):
            return False
        # Same rules, ports and sources: equal where every DstPorts IP is.
        if a is b and self.texts == other.texts:
            return True
        return a.ips(self.texts) == b.ips(other.texts)

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __repr__(self) -> str:
        return f"ShapedFilter({self.rules!r})"


def _same_list(a: list[str], b: list[str]) -> bool:
    return a is b or a == b


class FilterShapes:
    """One index's shapes. Rules are named by identity; what is held holds
    them, so an id is not reused meanwhile."""

    def __init__(self) -> None:
        self._lists: dict[tuple[int, ...], _RuleList] = {}
        self._shapes: dict[tuple[Any, ...], FilterShape] = {}
        # By the list object a caller hands every node of the same rules
        # (`NodeRules.shown`), held so its id is not reused: found without
        # a tuple of ids per node.
        self._by_list: dict[int, tuple[Sequence[Rule], _RuleList]] = {}

    def of(self, node: int, rules: Sequence[Rule]) -> ShapedFilter | None:
        """The node's filter from ``rules`` (none hidden), or None where they
        hold capability grants (their ``Dsts`` are deduplicated per node)."""
        by_list = self._by_list.get(id(rules))
        if by_list is not None and by_list[0] is rules:
            held = by_list[1]
        else:
            ids = tuple(map(id, rules))
            found_list = self._lists.get(ids)
            if found_list is None:
                found_list = self._lists[ids] = _RuleList(rules)
            held = found_list
            self._by_list[id(rules)] = (rules, held)
        if held.caps:
            return None
        if held.uniform:  # every part reaches every node the rules reach
            reach: tuple[bool, ...] = ()
            tables = held.tables
        else:
            reach = tuple(node in part.nodes for _, part in _parts(rules))
            tables = _tables(rules, node)
        if len(tables) == 1:  # (most: a user's own addresses alone)
            texts = tuple(tables[0][node])
            key: tuple[Any, ...] = (reach, len(texts))
        else:
            own = [table[node] for table in tables]
            texts = tuple(chain.from_iterable(own))
            key = (reach, *map(len, own))
        found = held.shapes.get(key)
        if found is None:
            shape, srcs = _shape(node, rules, tables)
            shape = self._shapes.setdefault(shape.key, shape)
            # Without own texts every node of these rules has this filter:
            # one object, which sessions then compare by identity.
            found = held.shapes[key] = ShapedFilter(shape, (), srcs)
        if not found.shape.size:
            return found
        return ShapedFilter(found.shape, texts, found.srcs)


class _RuleList:
    """What the nodes receiving the same rules share: their shapes and
    sources, by which parts reach the node and how many addresses it has."""

    __slots__ = ("caps", "rules", "shapes", "tables", "uniform")

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self.caps = any(rule.caps is not None for rule in rules)
        self.uniform = all(part.nodes == rule.dst_nodes for rule, part in _parts(rules))
        self.tables = _tables(rules, None) if self.uniform else []
        self.shapes: dict[tuple[Any, ...], ShapedFilter] = {}  # texts left empty


def _tables(rules: Sequence[Rule], node: int | None) -> list[Sequence[Sequence[str]]]:
    """The address tables of the parts reaching ``node`` (None: every part),
    in order of first use."""
    held = {
        id(part.addrs): part.addrs
        for _, part in _parts(rules)
        if part.addrs is not None and (node is None or node in part.nodes)
    }
    return list(held.values())


def _parts(rules: Sequence[Rule]) -> Iterable[tuple[Rule, Any]]:
    return ((rule, part) for rule in rules for part in rule.parts)


def _shape(
    node: int, rules: Sequence[Rule], tables: list[Sequence[Sequence[str]]]
) -> tuple[FilterShape, tuple[list[str], ...]]:
    """What `merge_rules` makes of the rules rendered for ``node``, with each
    own address text as its place among the node's texts, and the merged
    rules' sources."""
    base, size = {}, 0
    for table in tables:
        base[id(table)] = size
        size += len(table[node])
    statics: dict[str, int] = {}
    merged: dict[tuple[Any, ...], tuple[list[Any], list[int] | None, list[str]]] = {}
    for rule in rules:
        dst: list[Any] = []
        for part in rule.parts:
            if node not in part.nodes:
                continue
            if part.addrs is None:
                places: Iterable[int] = (-1 - statics.setdefault(part.text, len(statics)),)
            else:
                start = base[id(part.addrs)]
                places = range(start, start + len(part.addrs[node]))
            dst.extend((k, p) for k in places for p in part.ports)
        head = rule.head()
        key = (rule.src_key, rule.protos)
        if key in merged:  # `merge_rules`: the same sources and protocols, one rule
            merged[key][0].extend(dst)
        else:
            merged[key] = (dst, head.get("IPProto"), head["SrcIPs"])
    # Static texts come after the node's own: a place -1 - n is static n.
    texts = tuple(statics)
    shape_key = (
        size,
        tuple(
            (tuple((texts[-1 - k] if k < 0 else k, p) for k, p in dst), proto and tuple(proto))
            for dst, proto, _ in merged.values()
        ),
    )
    recipe = tuple(
        ([(k if k >= 0 else size - 1 - k, ports_json((p,))[0]) for k, p in dst], proto)
        for dst, proto, _ in merged.values()
    )
    srcs = tuple(src for _, _, src in merged.values())
    return FilterShape(shape_key, recipe, texts), srcs

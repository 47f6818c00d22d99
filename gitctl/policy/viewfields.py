"""A node view's fields computed from resolved values: its whois map, its
filter rules merged, and its addresses as prefixes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from typing import Any

from .aliases import Index
from .bitsets import bits
from .filter import Rule


def _merge_caps(into: dict[str, Any], caps: Mapping[str, Any]) -> None:
    for name, values in caps.items():
        if values is None:
            into.setdefault(name, None)
        elif into.get(name) is None:
            into[name] = list(values)
        else:
            into[name].extend(values)


def whois(
    ips: Sequence[tuple[str, ...]],
    cap_rules: list[tuple[Mapping[str, Any], int]],
    mask: int,
    peers: list[int] | None = None,
) -> dict[str, Any]:
    """Per peer address: the app capabilities that peer holds toward this node
    (``cap_rules``: the capabilities of each app rule it receives, and the
    sources holding them; ``peers``: the nodes of ``mask``, if at hand)."""
    if peers is None:
        peers = bits(mask)
    if not cap_rules:
        return dict.fromkeys(chain.from_iterable(map(ips.__getitem__, peers)))
    # Peers holding the same grants share one merged map.
    held: dict[int, tuple[int, ...]] = {}
    for n, (_, src_mask) in enumerate(cap_rules):
        for j in bits(mask & src_mask):
            held[j] = (*held.get(j, ()), n)
    merged: dict[tuple[int, ...], dict[str, Any]] = {}
    out: dict[str, Any] = {}
    for j in peers:
        key = held.get(j, ())
        if key not in merged:
            caps: dict[str, Any] = {}
            for n in key:
                _merge_caps(caps, cap_rules[n][0])
            merged[key] = caps
        for ip in ips[j]:
            out[ip] = merged[key] or None
    return out


def merge_rules(rendered: Iterable[tuple[Rule, dict[str, Any]]]) -> tuple[dict[str, Any], ...]:
    """Rules with the same sources and protocols reach a node as one rule."""
    rendered = list(rendered)
    if len(rendered) == 1:  # most nodes receive one rule (autogroup:self): nothing to merge
        return (rendered[0][1],)
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for n, (rule, r) in enumerate(rendered):
        if "CapGrant" in r:
            merged[(n,)] = r
            continue
        kind = "DstPorts"
        key = (kind, rule.src_key, tuple(r.get("IPProto") or ()))
        if key in merged:
            merged[key][kind] = merged[key][kind] + r[kind]
        else:
            merged[key] = r
    return tuple(merged.values())


def own_prefixes(
    index: Index, node: int, no_v4: frozenset[int], viewer: int | None = None
) -> list[str]:
    """A node's addresses as prefixes; IPv4 is left out when nodeAttrs disabled it
    on the node or on the viewer (which then speaks only IPv6 in the tailnet)."""
    prefixes = index.host_prefixes(node)
    if node in no_v4 or viewer in no_v4:
        return [p for p in prefixes if ":" in p]
    return prefixes

"""nodeAttrs: capabilities the policy grants to nodes themselves (self CapMap)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .aliases import Index
from .model import Alias, Policy

DISABLE_IPV4 = "disable-ipv4"


def targets(index: Index, aliases: tuple[Alias, ...]) -> frozenset[int]:
    """Nodes a nodeAttrs target list names (by identity or by address)."""
    out: set[int] = set()
    for a in aliases:
        if a.kind in ("host", "prefix"):
            prefix = index.policy.hosts[a.value] if a.kind == "host" else a.value
            out |= index.nodes_in(prefix)
        else:
            out |= index.resolve(a).members
    return frozenset(out)


def self_cap_maps(
    policy: Policy, index: Index, tailnet: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """Per node, the capabilities named by the nodeAttrs entries that target it.

    Attributes carry no values (``null``), as Tailscale sends them.
    """
    caps: list[dict[str, Any]] = [{} for _ in index.nodes]
    if policy.randomize_client_port:
        for c in caps:
            c["randomize-client-port"] = None
    for entry in policy.node_attrs:
        for i in targets(index, entry.target):
            for attr in entry.attrs:
                caps[i].setdefault(attr, None)
    return caps


def ipv4_disabled(caps: list[dict[str, Any]]) -> frozenset[int]:
    return frozenset(i for i, c in enumerate(caps) if DISABLE_IPV4 in c)

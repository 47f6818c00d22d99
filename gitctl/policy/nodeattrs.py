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

    Attributes carry no values (``null``), as Tailscale sends them; ``app``
    capabilities carry their JSON values, merged over every entry naming them.
    The top-level ``randomizeClientPort`` and ``disableIPv4`` apply to every node.
    """
    caps: list[dict[str, Any]] = [{} for _ in index.nodes]
    for on, attr in (
        (policy.randomize_client_port, "randomize-client-port"),
        (policy.disable_ipv4, DISABLE_IPV4),
    ):
        if on:
            for c in caps:
                c[attr] = None
    for entry in policy.node_attrs:
        for i in targets(index, entry.target):
            for attr in entry.attrs:
                caps[i].setdefault(attr, None)
            for name, values in entry.app.items():
                have = caps[i].get(name) or []
                caps[i][name] = [*have, *values]
    return caps


def ipv4_disabled(caps: list[dict[str, Any]]) -> frozenset[int]:
    return frozenset(i for i, c in enumerate(caps) if DISABLE_IPV4 in c)

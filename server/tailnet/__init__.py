"""The running tailnet: the node registry (the only writer of node state and
its event stream), the hub that serves the snapshot × nodes to map sessions,
the per-node views and the map builder."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

from server.gcpolicy import GcPolicy
from server.store.interface import Store
from server.tailnet.hub import Defer, SessionHandle, Tailnet
from server.tailnet.registry import NodeChange, NodeRegistry
from server.tailnet.source import TailnetSource
from server.tailnet.users import UserChange, UserRegistry
from server.wire import DerpRegion

__all__ = [
    "NodeChange",
    "NodeRegistry",
    "SessionHandle",
    "Tailnet",
    "TailnetSource",
    "UserChange",
    "UserRegistry",
    "running_tailnet",
]


def running_tailnet(
    store: Store,
    source: TailnetSource,
    *,
    derp_regions: Sequence[DerpRegion],
    log: logging.Logger,
    clock: Callable[[], datetime],
    primaries: Mapping[str, int] | None = None,
    defer: Defer | None = None,
    gc_policy: GcPolicy | None = None,
) -> tuple[NodeRegistry, Tailnet]:
    """A registry over `store` and the tailnet that follows its events."""
    registry = NodeRegistry(store, log=log)
    tailnet = Tailnet(
        nodes=registry.nodes(),
        source=source,
        derp_regions=derp_regions,
        log=log,
        clock=clock,
        primaries=primaries,
        login_groups=store.login_groups(),
        runtime_users=[u.email for u in store.runtime_users()],
        defer=defer,
        gc_policy=gc_policy,
    )
    registry.subscribe(tailnet.apply)
    return registry, tailnet

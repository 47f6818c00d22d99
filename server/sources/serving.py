"""A checked commit becomes what the tailnet serves, and what follows from it
in the store: settings.yaml's addressing, the keys keys.yaml declares, and a
warning for each node or key whose tags the new policy no longer declares."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime

from gitctl.policy import Policy
from gitctl.snapshot import Snapshot
from server.declared_keys import read_secret, sync_declared_keys
from server.logs import event
from server.metrics import Metrics
from server.store.interface import Store
from server.store.model import Node
from server.tagcheck import undeclared
from server.tailnet import NodeRegistry, Tailnet, TailnetSource

__all__ = ["CommitServing", "prepare_store", "warn_undeclared_tags"]


def prepare_store(store: Store, source: TailnetSource, now: datetime, log: logging.Logger) -> None:
    """What a commit asks of the store before nodes see it: settings.yaml's
    prefixes and allocation (for the nodes that join next), and the keys
    keys.yaml declares, created, rotated and expired (server/declared_keys.py)."""
    settings = source.settings
    if settings is not None:
        store.set_addressing(settings.ipv4_prefix, settings.ipv6_prefix, settings.ip_allocation)
    specs = source.snapshot.keys if source.snapshot is not None else ()
    for action in sync_declared_keys(store, specs, read_secret, now):
        fields = event("keys.declared", key=action.name, outcome=action.outcome)
        if action.outcome in ("unreadable", "refused"):
            log.error("%s", action.describe(), extra=fields)
        elif action.outcome != "unchanged":
            log.info("%s", action.describe(), extra=fields)


def warn_undeclared_tags(
    policy: Policy, store: Store, nodes: list[Node], now: datetime, log: logging.Logger
) -> None:
    """One warning per node or usable pre-auth key whose tags the served policy
    does not declare (a commit dropped them from tagOwners)."""
    for entry in undeclared(policy, nodes, store.list_preauth_keys(), now):
        log.warning("%s", entry.describe())


class CommitServing:
    """`serve` / `serve_off_loop` for the commit lifecycle: a snapshot swapped
    into the tailnet (raising when it cannot compile for the live nodes: the
    lifecycle then refuses the commit), then the store brought in line."""

    def __init__(
        self,
        tailnet: Tailnet,
        registry: NodeRegistry,
        store: Store,
        *,
        clock: Callable[[], datetime],
        log: logging.Logger,
        metrics: Metrics,
        forget_approvals: Callable[[], None],
        routes_rechecked: Callable[[Iterable[Node]], None],
    ) -> None:
        self._tailnet = tailnet
        self._registry = registry
        self._store = store
        self._clock = clock
        self._log = log
        self._metrics = metrics
        self._forget_approvals = forget_approvals
        self._routes_rechecked = routes_rechecked

    def serve(self, snap: Snapshot) -> None:
        source = TailnetSource.from_snapshot(snap)
        self._tailnet.swap_source(source)
        self._served(source)

    async def serve_off_loop(self, snap: Snapshot) -> None:
        """`serve`, compiled in a worker thread: DERP and maps keep flowing meanwhile."""
        source = TailnetSource.from_snapshot(snap)
        await self._tailnet.swap_source_off_loop(source)
        self._served(source)

    def _served(self, source: TailnetSource) -> None:
        self._forget_approvals()  # a new policy asks every SSH check again
        self._metrics.snapshot_swapped(self._tailnet.waiting())
        prepare_store(self._store, source, self._clock(), self._log)
        # From memory, once: both only read them. A read from the store was
        # most of a mesh commit's CPU beside the fan-out, and ran before it.
        nodes = self._registry.known()
        self.warn_undeclared_tags(nodes)
        self._routes_rechecked(nodes)

    def warn_undeclared_tags(self, nodes: list[Node]) -> None:
        policy = self._tailnet.source.policy
        warn_undeclared_tags(policy, self._store, nodes, self._clock(), self._log)

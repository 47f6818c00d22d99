"""What time does to the running tailnet: keys that expire and inactive
ephemeral nodes (the sweep), policy entries whose `expires` instant passes,
and the health probes of subnet routers that share a subnet.

Each is a small class whose step takes `now`; `run()` only sleeps and steps."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from gitctl.policy.expiry import next_expiry
from server.logs import event
from server.protocol.keys import NodePublic
from server.store.model import Node
from server.tailnet.expiries import Expiries
from server.tailnet.follow import MatchingIds
from server.tailnet.hub import Tailnet
from server.tailnet.mapper import MapContext
from server.tailnet.probes import RouterProbes
from server.tailnet.registry import NodeRegistry

__all__ = ["EXPIRY_RECHECK", "PROBE_RECHECK", "SWEEP_INTERVAL", "PolicyExpiry", "Probing", "Sweep"]

SWEEP_INTERVAL = 5.0
EXPIRY_RECHECK = 1.0  # seconds: a new commit's first expiry is noticed this late at most
PROBE_RECHECK = 1.0  # seconds: a router newly sharing a subnet is probed this late at most


class Sweep:
    """Every few seconds: remove inactive ephemeral nodes, and drop the DERP
    connections of nodes whose key expired since the last look."""

    def __init__(
        self,
        registry: NodeRegistry,
        tailnet: Tailnet,
        *,
        inactivity: Callable[[], timedelta],
        disconnect: Callable[[NodePublic], None],
        on_expired: Callable[[Node], None],
        clock: Callable[[], datetime],
        log: logging.Logger,
    ) -> None:
        self._registry = registry
        self._tailnet = tailnet
        self._inactivity = inactivity
        self._disconnect = disconnect
        self._on_expired = on_expired
        self._clock = clock
        self._log = log
        self._ephemerals: MatchingIds | None = None

    async def run(self) -> None:
        last = self._clock()
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = self._clock()
            self.handle_timer(last, now)
            last = now

    def handle_timer(self, last: datetime, now: datetime) -> None:
        """The sweep of the interval (last, now]."""
        ctx = self._tailnet.context
        expiries, ephemerals = self._index(ctx)
        ephemeral = ephemerals.among(ctx.nodes)
        for node_id in expiries.between(ctx.nodes, last, now):
            node = ctx.nodes[node_id]
            self._log.info(
                "node %d %s: key expired",
                node.id,
                node.given_name,
                extra=event(
                    "node.expired", node=node.id, node_name=node.given_name, user=node.user
                ),
            )
            self._disconnect(node.node_key)
            self._on_expired(node)
        cutoff = now - self._inactivity()
        for node_id in ephemeral:
            node = ctx.nodes[node_id]
            if self._registry.is_online(node.id) or (node.last_seen or node.created) >= cutoff:
                continue
            self._log.info(
                "removing ephemeral node %d %s: inactive",
                node.id,
                node.given_name,
                extra=event(
                    "node.deleted",
                    node=node.id,
                    node_name=node.given_name,
                    user=node.user,
                    reason="ephemeral node inactive",
                ),
            )
            self._registry.remove(node.id)
        for node in self._tailnet.cut_off():
            self._disconnect(node.node_key)
        ctx.entries.deltas.expire(now)

    def _index(self, ctx: MapContext) -> tuple[Expiries, MatchingIds]:
        """The serving nodes' key expiries (the context's own index, which the
        sessions ask too) and ephemeral nodes, following the context change by
        change (follow.py): a sweep after a runtime event costs what changed
        and what expires, not a look at every node."""
        log = ctx.entries.log
        if self._ephemerals is None or self._ephemerals.log is not log:
            self._ephemerals = MatchingIds(log, _ephemeral)
        return ctx.expiries, self._ephemerals


def _ephemeral(node: Node) -> bool:
    return node.ephemeral


class PolicyExpiry:
    """At each `expires` instant of the serving policy, compile it again: the
    entries that ended leave every map without a new commit."""

    def __init__(
        self,
        tailnet: Tailnet,
        *,
        serving: Callable[[], str | None],
        clock: Callable[[], datetime],
        log: logging.Logger,
    ) -> None:
        self._tailnet = tailnet
        self._serving = serving  # the serving commit, for the log line
        self._clock = clock
        self._log = log

    async def run(self) -> None:
        while True:
            now = self._clock()
            due = next_expiry(self._tailnet.source.policy, now)
            wait = EXPIRY_RECHECK
            if due is not None:
                wait = min(wait, (due - now).total_seconds())
            await asyncio.sleep(max(wait, 0.01))
            if due is not None and self._clock() >= due:
                commit = self._serving()
                self._log.info(
                    "access in %s expired at %s: compiling again",
                    (commit or "")[:12],
                    due.isoformat(),
                    extra=event("policy.expired", commit=commit),
                )
                self._tailnet.time_passed()


class Probing:
    """Probe the routers that share a subnet (HA): one that stops answering
    while its stream stays open loses its subnets to another (probes.py)."""

    def __init__(
        self,
        probes: RouterProbes,
        registry: NodeRegistry,
        tailnet: Tailnet,
        *,
        url: Callable[[str], str],
        clock: Callable[[], datetime],
        log: logging.Logger,
    ) -> None:
        self.probes = probes
        self._registry = registry
        self._tailnet = tailnet
        self._url = url  # a probe's token -> the URL its answer comes to
        self._clock = clock
        self._log = log

    async def run(self) -> None:
        while True:
            now = self._clock()
            # Only routers streaming here: a probe goes down this process's
            # stream; another replica probes its own and tells us (replicas.py).
            here = self._registry.local_online_of(self._tailnet.shared_routers())
            self._health(self.probes.track(here, now))
            probes, transitions = self.probes.due(now)
            self._health(transitions)
            for probe in probes:
                self._tailnet.ping(probe.node_id, self._url(probe.token))
            due = self.probes.next_due()
            wait = PROBE_RECHECK if due is None else (due - self._clock()).total_seconds()
            await asyncio.sleep(min(max(wait, 0.01), PROBE_RECHECK))

    def answered(self, node_id: int, token: str) -> None:
        self._health(self.probes.answered(node_id, token))

    def _health(self, transitions: list[tuple[int, bool]]) -> None:
        for node_id, healthy in transitions:
            self._log.info(
                "router %d %s health probes",
                node_id,
                "answers" if healthy else "stopped answering",
                extra=event("router.health", node=node_id, healthy=healthy),
            )
            self._registry.set_healthy(node_id, healthy)

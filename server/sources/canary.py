"""A canary rollout (rollout.py) in the running tailnet: the candidate served to
the canary nodes, their map streams watched during the hold, and the timer
that promotes the candidate when its hold ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime

from gitctl.snapshot import Snapshot
from server.sources.lifecycle import CommitLifecycle
from server.tailnet import NodeChange, NodeRegistry, Tailnet, TailnetSource

__all__ = ["ROLLOUT_RECHECK", "CanaryNodes"]

ROLLOUT_RECHECK = 1.0  # seconds: the longest the timer sleeps without a hold to end


class CanaryNodes:
    def __init__(
        self,
        commits: CommitLifecycle,
        registry: NodeRegistry,
        tailnet: Tailnet,
        *,
        clock: Callable[[], datetime],
    ) -> None:
        self._commits = commits
        self._registry = registry
        self._tailnet = tailnet
        self._clock = clock

    def connect(self) -> None:
        """Follow node changes, and let the lifecycle hold commits on the canaries."""
        self._registry.subscribe(self.node_changed)
        self._commits.canary_with(self.serve, self._tailnet.end_canary, online=self.is_online)

    def serve(self, snap: Snapshot, canary: str) -> None:
        """A checked commit is served to the canary nodes only (a rollout's hold)."""
        self._tailnet.start_canary(TailnetSource.from_snapshot(snap), canary)

    def node_changed(self, change: NodeChange) -> None:
        """A canary node whose map stream ends during a hold fails the rollout;
        one online starts a hold that waited for a canary."""
        node = change.node
        if node is None or not self._tailnet.is_canary(node.id):
            return
        if change.online is False:
            self._commits.canary_offline(node.given_name)
        elif self._registry.is_online(node.id):
            self._commits.canary_online()

    def is_online(self, tag: str) -> bool:
        nodes = map(self._registry.get, self._registry.online_ids())
        return any(node is not None and tag in node.tags for node in nodes)

    async def run(self) -> None:
        """At the end of a rollout's hold, promote its commit to every node."""
        commits = self._commits
        while True:
            due = commits.rollout_due()
            wait = ROLLOUT_RECHECK if due is None else (due - self._clock()).total_seconds()
            commits.rollout_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(commits.rollout_wake.wait(), max(wait, 0.01))
            commits.handle_timer(self._clock())

"""What a start leaves running: checked commits served as they come (to a
rollout's canaries first), and the timers (the sweep, DERP mesh peers, policy
`expires`, logins nobody approved, router probes)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from server.auth.timer import expire_logins
from server.metrics import Metrics
from server.protocol.keys import NodePrivate, NodePublic
from server.sources.canary import CanaryNodes
from server.sources.lifecycle import CommitLifecycle
from server.sources.repo import RepoStatus
from server.sources.serving import CommitServing
from server.startup import StartupError
from server.startup.logins import Logins
from server.startup.tailnet import RunningTailnet
from server.store import SqlStore
from server.tailnet.timers import PolicyExpiry, Sweep
from server.webhooks import EventSource

if TYPE_CHECKING:
    from server.edge.derp_server import DerpServer

__all__ = ["serve_commits", "start_timers"]


def serve_commits(
    commits: CommitLifecycle,
    running: RunningTailnet,
    store: SqlStore,
    logins: Logins,
    *,
    fetch_interval: float,
    events: EventSource,
    metrics: Metrics,
    clock: Callable[[], datetime],
    log: logging.Logger,
    tasks: list[asyncio.Task[None]],
) -> CommitServing:
    """From now on, checked commits are served; the canaries' hold timer and the
    repository's watcher (a remote) are appended to `tasks`."""
    registry, tailnet = running.registry, running.tailnet
    serving = CommitServing(
        tailnet,
        registry,
        store,
        clock=clock,
        log=log,
        metrics=metrics,
        forget_approvals=logins.ssh_checks.forget_approvals,
        routes_rechecked=events.routes_rechecked,
    )
    commits.serve_with(serving.serve, off_loop=serving.serve_off_loop)
    canaries = CanaryNodes(commits, registry, tailnet, clock=clock)
    canaries.connect()
    tasks.append(asyncio.create_task(canaries.run()))
    watcher = commits.watcher(fetch_interval)
    if watcher is not None:
        tasks.append(asyncio.create_task(watcher))
    return serving


def start_timers(
    running: RunningTailnet,
    logins: Logins,
    status: RepoStatus,
    *,
    inactivity: Callable[[], timedelta],
    disconnect: Callable[[NodePublic], None],
    mesh_with: Sequence[str],
    mesh_key: str | None,
    derp: Callable[[], DerpServer],
    derp_key: NodePrivate,
    events: EventSource,
    clock: Callable[[], datetime],
    log: logging.Logger,
    tasks: list[asyncio.Task[None]],
) -> None:
    """Each timer is appended to `tasks`. `inactivity`: how long an ephemeral
    node may stay away; `disconnect` closes a node's DERP connection; `derp` is
    asked only when there are mesh peers (DERP is made on first use)."""
    registry, tailnet = running.registry, running.tailnet
    sweep = Sweep(
        registry,
        tailnet,
        inactivity=inactivity,
        disconnect=disconnect,
        on_expired=events.node_expired,
        clock=clock,
        log=log,
    )
    tasks.append(asyncio.create_task(sweep.run()))
    for url in mesh_with:
        from server.edge.derp_mesh import mesh_with as mesh_peer

        if mesh_key is None:
            raise StartupError("--mesh-with needs --mesh-key-file")
        tasks.append(
            asyncio.create_task(mesh_peer(derp(), url, key=derp_key, mesh_key=mesh_key, log=log))
        )
    expiry = PolicyExpiry(tailnet, serving=lambda: status.serving, clock=clock, log=log)
    tasks.append(asyncio.create_task(expiry.run()))
    tasks.append(asyncio.create_task(expire_logins(logins.logins, logins.ssh_checks, clock)))
    tasks.append(asyncio.create_task(logins.probing.run()))

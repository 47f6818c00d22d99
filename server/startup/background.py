"""What a start leaves running: checked commits served as they come (to a
rollout's canaries first), and the timers (the sweep, DERP mesh peers, policy
`expires`, logins nobody approved, router probes)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from server.auth.timer import expire_logins
from server.protocol.keys import NodePrivate, NodePublic
from server.sources.canary import CanaryNodes
from server.sources.lifecycle import CommitLifecycle
from server.sources.repo import RepoStatus
from server.sources.serving import CommitServing
from server.startup import Shared, StartupError
from server.startup.logins import Logins
from server.startup.tailnet import RunningTailnet
from server.store import SqlStore
from server.tailnet.timers import PolicyExpiry, Sweep

if TYPE_CHECKING:
    from server.edge.derp_server import DerpServer

__all__ = ["serve_commits", "start_timers"]


def serve_commits(
    shared: Shared,
    commits: CommitLifecycle,
    running: RunningTailnet,
    store: SqlStore,
    logins: Logins,
    *,
    tasks: list[asyncio.Task[None]],
) -> CommitServing:
    """From now on, checked commits are served; the canaries' hold timer and the
    repository's watcher (a remote) are appended to `tasks`."""
    registry, tailnet, clock = running.registry, running.tailnet, shared.clock
    serving = CommitServing(
        tailnet,
        registry,
        store,
        clock=clock,
        log=shared.log,
        metrics=shared.metrics,
        forget_approvals=logins.ssh_checks.forget_approvals,
        routes_rechecked=shared.events.routes_rechecked,
    )
    commits.serve_with(serving.serve, off_loop=serving.serve_off_loop)
    canaries = CanaryNodes(commits, registry, tailnet, clock=clock)
    canaries.connect()
    tasks.append(asyncio.create_task(canaries.run()))
    watcher = commits.watcher(shared.config.fetch_interval)
    if watcher is not None:
        tasks.append(asyncio.create_task(watcher))
    return serving


def start_timers(
    shared: Shared,
    running: RunningTailnet,
    logins: Logins,
    status: RepoStatus,
    *,
    inactivity: Callable[[], timedelta],
    disconnect: Callable[[NodePublic], None],
    mesh_key: str | None,
    derp: Callable[[], DerpServer],
    derp_key: NodePrivate,
    tasks: list[asyncio.Task[None]],
) -> None:
    """Each timer is appended to `tasks`. `inactivity`: how long an ephemeral
    node may stay away; `disconnect` closes a node's DERP connection; `derp` is
    asked only when there are mesh peers (DERP is made on first use)."""
    registry, tailnet, clock, log = running.registry, running.tailnet, shared.clock, shared.log
    sweep = Sweep(
        registry,
        tailnet,
        inactivity=inactivity,
        disconnect=disconnect,
        on_expired=shared.events.node_expired,
        clock=clock,
        log=log,
    )
    tasks.append(asyncio.create_task(sweep.run()))
    for url in shared.config.mesh_with:
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

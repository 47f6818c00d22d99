"""A start's second phase: the registry and the tailnet that follows it, which
keys DERP relays for, runtime users, replication (PostgreSQL) and webhooks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from server.edge.public import derp_region
from server.gcpolicy import GcPolicy
from server.protocol.keys import NodePublic
from server.startup import Shared
from server.startup.settings import serving_settings
from server.store import SqlStore
from server.tailnet import NodeRegistry, Tailnet, TailnetSource, UserRegistry, running_tailnet
from server.tailnet.derp_access import DerpAccess
from server.webhooks import Delivery, WebhookSender
from server.webhooks.wiring import start_webhooks

__all__ = ["RunningTailnet", "start_tailnet"]


@dataclass(frozen=True, slots=True)
class RunningTailnet:
    registry: NodeRegistry
    tailnet: Tailnet
    derp_access: DerpAccess
    users: UserRegistry
    webhooks: WebhookSender | None  # None: no secret configured


def start_tailnet(
    shared: Shared,
    store: SqlStore,
    source: TailnetSource,
    *,
    port: int,
    stun_port: int,
    disconnect: Callable[[NodePublic], None],
    delivery: Delivery,
    gc_policy: GcPolicy | None,
    tasks: list[asyncio.Task[None]],
) -> RunningTailnet:
    """`port` and `stun_port` (0: no STUN) are the bound ones the DERP map
    advertises; `disconnect` closes a node's DERP connection when its access
    ends. Replication and webhook delivery are appended to `tasks`."""
    cfg, clock, log, metrics = shared.config, shared.clock, shared.log, shared.metrics
    derp = derp_region(cfg.server_url, cfg.listen_port, port, stun_port, cfg.mesh_with)
    registry, tailnet = running_tailnet(
        store,
        source,
        derp_regions=[derp],
        log=log,
        clock=clock,
        gc_policy=gc_policy,
    )
    derp_access = DerpAccess(registry, tailnet, clock=clock)
    derp_access.follow(disconnect)
    registry.subscribe(metrics.node_changed)
    users = UserRegistry(store, log=log)
    users.subscribe(tailnet.apply_user)
    if not isinstance(cfg.store_location, Path):  # PostgreSQL: psycopg loads only here
        from server.store.postgres import PostgresStore
        from server.tailnet.pg_listen import start_replication

        assert isinstance(store, PostgresStore)
        tasks.append(
            start_replication(
                store, registry, tailnet, replica=cfg.replica_id, log=log, users=users
            )
        )
    webhooks = start_webhooks(
        shared.events,
        registry,
        tailnet,
        store,
        secret=cfg.webhook_secret,
        targets=lambda: serving_settings(tailnet).webhooks,
        delivery=delivery,
        clock=clock,
        metrics=metrics,
        log=log,
    )
    if webhooks is not None:
        tasks.append(asyncio.create_task(webhooks.run()))
    return RunningTailnet(registry, tailnet, derp_access, users, webhooks)

"""LISTEN for other replicas' node changes on a dedicated connection.

Only pumps: notices in to `Replicas.receive`, the clock to its timer. When
the connection drops, it connects again and `resync`s (notices sent meanwhile
are lost; the store is not).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from functools import partial

import psycopg

from server.logs import event
from server.store._open import redact_url
from server.store.postgres import PostgresStore
from server.tailnet.hub import Tailnet
from server.tailnet.registry import NodeRegistry
from server.tailnet.replicas import CHANNEL, Replicas
from server.tailnet.users import UserRegistry

__all__ = ["listen_for_replicas", "replicas_of", "start_replication"]

RETRY = 1.0  # seconds between attempts to reach the database again


async def listen_for_replicas(
    url: str,
    replicas: Replicas,
    *,
    clock: Callable[[], float],
    log: logging.Logger,
) -> None:
    """Run until cancelled."""
    first = True
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                if not first:
                    log.info("listening to other replicas again", extra=event("replica.relisten"))
                first = False
                # What was committed before LISTEN took effect is in the store.
                replicas.resync()
                while True:
                    replicas.handle_timer(clock())
                    due = replicas.get_timer()
                    wait = 0.05 if due is None else max(0.05, due - clock())
                    async for notice in conn.notifies(timeout=wait):
                        replicas.receive(notice.payload, clock())
        except psycopg.Error as exc:
            log.warning(
                "lost the LISTEN connection to %s: %s",
                redact_url(url),
                exc,
                extra=event("replica.listen_lost"),
            )
            await asyncio.sleep(RETRY)


def replicas_of(
    name: str,
    registry: NodeRegistry,
    tailnet: Tailnet,
    send: Callable[[str], None],
    *,
    log: logging.Logger,
    users: UserRegistry | None = None,
) -> Replicas:
    """This process's side of the notices, wired to its registry and tailnet."""
    return Replicas(
        name,
        registry,
        send,
        known=tailnet.record,
        known_ids=tailnet.record_ids,
        log=log,
        users=users,
        primaries=lambda: tailnet.primaries,
        follow_primaries=tailnet.follow_primaries,
    )


def start_replication(
    store: PostgresStore,
    registry: NodeRegistry,
    tailnet: Tailnet,
    *,
    replica: str | None,
    log: logging.Logger,
    users: UserRegistry | None = None,
) -> asyncio.Task[None]:
    """Send this process's node changes to the other replicas and publish theirs."""
    name = replica or secrets.token_hex(6)
    send = partial(store.notify, CHANNEL)
    replicas = replicas_of(name, registry, tailnet, send, log=log, users=users)
    log.info("replica %s: sharing node changes through the database", name)
    return asyncio.create_task(
        listen_for_replicas(store.url, replicas, clock=time.monotonic, log=log)
    )

"""Webhooks wired to the running tailnet: node changes become events, and
events are sent once a secret is configured."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from datetime import datetime

from gitctl.tailnet.model import WebhookTarget
from server.metrics import Metrics
from server.store.interface import Store
from server.tailnet import NodeRegistry, Tailnet
from server.webhooks.sender import Delivery, WebhookSender
from server.webhooks.source import EventSource

__all__ = ["start_webhooks"]


def start_webhooks(
    events: EventSource,
    registry: NodeRegistry,
    tailnet: Tailnet,
    store: Store,
    *,
    secret: bytes | None,
    targets: Callable[[], Sequence[WebhookTarget]],
    delivery: Delivery,
    clock: Callable[[], datetime],
    metrics: Metrics,
    log: logging.Logger,
) -> WebhookSender | None:
    """`events` follow the registry; the sender whose `run()` delivers them, or
    None without a secret (then nothing is sent, and receivers named in
    settings.yaml get a warning)."""
    events.served_routes = tailnet.enabled_routes
    registry.subscribe(events.node_changed)
    if secret is None:
        if targets():
            log.warning(
                "settings.yaml names webhooks but no secret is configured "
                "(--webhook-secret-file or TAILNETD_WEBHOOK_SECRET): none are sent"
            )
        events.attach(lambda event: None, ())
        return None
    sender = WebhookSender(
        store,
        targets=targets,
        secret=secret,
        clock=clock,
        rng=os.urandom,
        metrics=metrics,
        log=log,
        delivery=delivery,
    )
    events.attach(sender.emit, registry.nodes())
    return sender

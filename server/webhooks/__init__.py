"""Webhooks: signed JSON events POSTed to the receivers settings.yaml names.

`events` (the stable body), `signing` (the `Tailnetd-Signature` header),
`source` (what happens, as events) and `sender` (the bounded queue, the
outbox in the store, ordered retried delivery). See docs/operations.md.
"""

from server.webhooks.events import EVENT_TYPES, EventType, WebhookEvent
from server.webhooks.sender import Delivery, WebhookSender
from server.webhooks.signing import HEADER, sign, verify
from server.webhooks.source import EventSource

__all__ = [
    "EVENT_TYPES",
    "HEADER",
    "Delivery",
    "EventSource",
    "EventType",
    "WebhookEvent",
    "WebhookSender",
    "sign",
    "verify",
]

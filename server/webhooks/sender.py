"""Delivering webhook events: never on the control path, in order per queue,
retried with backoff, kept across restarts.

`emit` is all the control path does: it appends to a bounded in-memory queue
(full: the oldest event is dropped, counted and logged) and wakes the
background task. That task writes the events to the store's outbox, one row
per (receiver URL, event), and runs one worker per (URL, queue): a worker sends
its queue's rows oldest first and does not send the next until the one before
is acknowledged (2xx) or given up after `max_attempts`, waiting
`backoff * 2**n` (at most `max_backoff`) seconds between tries. A row leaves
the outbox only when it is done, so a restart resumes where the last process
stopped; `close` writes what is still in memory to the outbox first.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from gitctl.tailnet.model import WebhookTarget
from server.logs import event as log_event
from server.metrics import Metrics
from server.store.interface import Store
from server.store.model import OutboxItem
from server.webhooks.events import WebhookEvent
from server.webhooks.signing import HEADER, sign

if TYPE_CHECKING:
    import httpx  # loaded when the sender runs: `tailnetd serve` without webhooks never needs it

__all__ = ["Delivery", "WebhookSender"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """How hard to try: bounds of the queue and the retry schedule."""

    max_queue: int = 10_000
    max_attempts: int = 12
    backoff: float = 1.0  # seconds before the first retry; doubled each time
    max_backoff: float = 300.0
    timeout: float = 10.0  # seconds for one POST


class WebhookSender:
    def __init__(
        self,
        store: Store,
        *,
        targets: Callable[[], Sequence[WebhookTarget]],
        secret: bytes,
        clock: Callable[[], datetime],
        rng: Callable[[int], bytes],
        metrics: Metrics,
        log: logging.Logger,
        delivery: Delivery = Delivery(),
    ) -> None:
        self._store = store
        self._targets = targets
        self._secret = secret
        self._clock = clock
        self._rng = rng
        self._metrics = metrics
        self._log = log
        self._delivery = delivery
        self._incoming: deque[WebhookEvent] = deque()
        self._wake = asyncio.Event()
        self._pending: dict[tuple[str, str], deque[OutboxItem]] = {}
        self._workers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._client: httpx.AsyncClient | None = None

    # The control path's side: never waits.

    def emit(self, event: WebhookEvent) -> None:
        if len(self._incoming) >= self._delivery.max_queue:
            dropped = self._incoming.popleft()
            self._metrics.webhook_dropped("overflow")
            self._log.warning(
                "webhooks: queue full (%d), dropped the oldest event %s",
                self._delivery.max_queue,
                dropped.type,
                extra=log_event("webhook.dropped", reason="overflow", type=dropped.type),
            )
        self._incoming.append(event)
        self._wake.set()
        self._gauge()

    # The background side.

    async def run(self) -> None:
        import httpx

        self._client = httpx.AsyncClient(timeout=self._delivery.timeout)
        self._queue(self._store.list_outbox())
        while True:
            self._persist()
            await self._wake.wait()
            self._wake.clear()

    async def aclose(self) -> None:
        """Stop sending; what was not yet written to the outbox is written now.
        A delivery cut off mid-request is sent again by the next process, so a
        receiver may see an event twice: it has the same `id`."""
        workers = list(self._workers.values())
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        self._persist(start=False)
        if self._client is not None:
            await self._client.aclose()

    def _persist(self, *, start: bool = True) -> None:
        rows: list[tuple[str, str, bytes]] = []
        targets = self._targets()
        while self._incoming:
            event = self._incoming.popleft()
            body = event.body(self._rng(16).hex())
            rows += [(t.url, event.queue, body) for t in targets if t.wants(event.type)]
        if rows:
            added = self._store.add_outbox(rows)
            if start:
                self._queue(added)
        self._gauge()

    def _queue(self, items: Sequence[OutboxItem]) -> None:
        for item in items:
            key = (item.url, item.queue)
            self._pending.setdefault(key, deque()).append(item)
            if key not in self._workers:
                self._workers[key] = asyncio.create_task(self._work(key))
        self._gauge()

    async def _work(self, key: tuple[str, str]) -> None:
        pending = self._pending[key]
        try:
            while pending:
                await self._deliver(pending[0])
                self._store.remove_outbox(pending.popleft().id)
                self._gauge()
        finally:
            if not pending:
                del self._pending[key]
            self._workers.pop(key, None)

    async def _deliver(self, item: OutboxItem) -> None:
        """Send `item` until a 2xx answer, or give up after max_attempts."""
        d = self._delivery
        for attempt in range(item.attempts, d.max_attempts):
            if attempt > 0:
                await asyncio.sleep(min(d.backoff * 2 ** (attempt - 1), d.max_backoff))
            problem = await self._post(item)
            if problem is None:
                self._metrics.webhook_delivered()
                return
            self._metrics.webhook_failed()
            self._store.outbox_attempted(item.id)
            self._log.info(
                "webhooks: POST %s failed (attempt %d of %d): %s",
                item.url, attempt + 1, d.max_attempts, problem,
                extra=log_event("webhook.failed", url=item.url, attempt=attempt + 1),
            )  # fmt: skip
        self._metrics.webhook_dropped("gave_up")
        self._log.warning(
            "webhooks: gave up on an event for %s after %d attempts",
            item.url, d.max_attempts,
            extra=log_event("webhook.dropped", reason="gave_up", url=item.url),
        )  # fmt: skip

    async def _post(self, item: OutboxItem) -> str | None:
        """None when the receiver took the event, else what went wrong."""
        import httpx

        assert self._client is not None
        t = int(self._clock().timestamp())
        headers = {"content-type": "application/json", HEADER: sign(self._secret, t, item.body)}
        try:
            answer = await self._client.post(item.url, content=item.body, headers=headers)
        except httpx.HTTPError as exc:
            return str(exc) or "no answer"
        return None if 200 <= answer.status_code < 300 else f"answered {answer.status_code}"

    def _gauge(self) -> None:
        waiting = sum(len(q) for q in self._pending.values())
        self._metrics.webhook_queue(len(self._incoming) + waiting)

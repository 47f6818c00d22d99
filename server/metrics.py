"""What the server counts, for Prometheus (`/metrics`, docs/operations.md).

One `Metrics` object per server. The hot paths make one call into it per event,
which adds to a plain number here; prometheus_client is loaded (and the
`CollectorRegistry` made, never its global one) when something first asks for
`Metrics.registry` — a scrape — unless the assembly passes a registry in. The
numbers, and what other parts already count (DERP's `stats()`, the live
sessions), become metric families at scrape time (`server/metrics_export.py`).
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from server.edge.derp_server import DerpStats
    from server.tailnet.registry import NodeChange

__all__ = [
    "MAP_KINDS",
    "OUTCOMES",
    "REJECTION_REASONS",
    "Counts",
    "Metrics",
    "Outcome",
    "RequestCounter",
    "WebhookDrop",
]

Outcome = Literal[
    "ok",  # joined or re-joined with a pre-auth key
    "renewed",  # seamless node-key renewal
    "resumed",  # a known node key registering again
    "logout",
    "bad_key",  # unknown, used or revoked pre-auth key
    "expired_key",  # an expired pre-auth key
    "tags_refused",  # the client asked for tags that tagOwners do not let it carry
    "node_expired",  # the node's own key has expired: it must log in again
    "needs_login",  # no pre-auth key and no node to resume: given a login URL
    "login_ok",  # an interactive login was approved
    "login_refused",  # an interactive login was refused
    "login_expired",  # an interactive login ran out of time (or was unknown)
    "rejected",  # the request itself was refused (bad body, old client, wrong machine)
]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
MapKind = Literal["full", "delta", "keepalive"]
MAP_KINDS: tuple[MapKind, ...] = get_args(MapKind)
# Why a commit was not served; the first stage that failed names it.
REJECTION_REASONS = (
    "source",
    "parse",
    "schema",
    "merge",
    "policy",
    "tests",
    "signature",
    "compile",
    "canary",  # a canary rollout aborted (settings.yaml rollout)
)
NODE_EVENT_KINDS = ("topology", "volatile", "removed")
WebhookDrop = Literal["overflow", "gave_up"]
WEBHOOK_DROPS: tuple[WebhookDrop, ...] = get_args(WebhookDrop)
# Seconds from a snapshot swap to the last woken session's message.
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MAX_TRACKED_COMMITS = 16  # commits still waiting for sessions; older ones are dropped


class Session(Protocol):
    """A map session as the latency tracker sees it: woken while it owes a message."""

    @property
    def wake(self) -> Any: ...


@dataclass(slots=True)
class _Propagation:
    started: float
    waiting: set[Session]


@dataclass(slots=True)
class Counts:
    """The numbers behind every tailnetd_* metric the server bumps itself; every
    label value known in advance is there from the start, at 0."""

    registrations: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    map_messages: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MAP_KINDS, 0))
    map_bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MAP_KINDS, 0))
    swaps: int = 0
    rejections: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECTION_REASONS, 0))
    node_events: dict[str, int] = field(default_factory=lambda: dict.fromkeys(NODE_EVENT_KINDS, 0))
    http_requests: dict[tuple[str, str, str], int] = field(default_factory=dict)
    hooks_delivered: int = 0
    hooks_failed: int = 0
    hooks_dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(WEBHOOK_DROPS, 0))
    hooks_queued: int = 0
    # tailnetd_commit_propagation_seconds: observations per bucket (the last is +Inf).
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0


class Metrics:
    """The counters the server bumps, one call per event."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, monotonic: Callable[[], float]
    ) -> None:
        self.counts = Counts()
        self._monotonic = monotonic
        self._propagating: deque[_Propagation] = deque()
        self._derp_stats: Callable[[], DerpStats | None] = lambda: None
        self._live: Callable[[], dict[str, int]] | None = None
        self._registry = registry
        if registry is not None:
            self._export(registry)

    # Export (prometheus_client loads here, at the first scrape)

    @property
    def registry(self) -> CollectorRegistry:
        if self._registry is None:
            from prometheus_client import CollectorRegistry

            self._registry = CollectorRegistry()
            self._export(self._registry)
        return self._registry

    def _export(self, registry: CollectorRegistry) -> None:
        from server.metrics_export import CountsCollector, DerpCollector, LiveCollector

        registry.register(CountsCollector(self.counts))
        registry.register(DerpCollector(lambda: self._derp_stats()))
        registry.register(LiveCollector(lambda: self._live() if self._live else None))

    def export_derp(self, stats: Callable[[], DerpStats | None]) -> None:
        """DERP's own counters, read at scrape time (relaying costs no metrics call)."""
        self._derp_stats = stats

    def export_live(self, read: Callable[[], dict[str, int]]) -> None:
        """Gauges read from the running server at scrape time."""
        self._live = read

    # Counting

    def registration(self, outcome: Outcome) -> None:
        self.counts.registrations[outcome] += 1

    def map_sent(self, kind: MapKind, size: int) -> None:
        counts = self.counts
        counts.map_messages[kind] += 1
        counts.map_bytes[kind] += size

    def maps_sent(self, kind: MapKind, count: int, size: int) -> None:
        """`count` messages of `size` bytes in all (a wave's, counted once)."""
        counts = self.counts
        counts.map_messages[kind] += count
        counts.map_bytes[kind] += size

    def rejected(self, reason: str) -> None:
        self.counts.rejections[reason if reason in REJECTION_REASONS else "compile"] += 1

    def node_changed(self, change: NodeChange) -> None:
        """A registry listener (`registry.subscribe(metrics.node_changed)`)."""
        events = self.counts.node_events
        events[change.kind] = events.get(change.kind, 0) + 1

    def http_request(self, route: str, method: str, status: int) -> None:
        key = (route, method, str(status))
        requests = self.counts.http_requests
        requests[key] = requests.get(key, 0) + 1

    # Webhooks

    def webhook_delivered(self) -> None:
        self.counts.hooks_delivered += 1

    def webhook_failed(self) -> None:
        self.counts.hooks_failed += 1

    def webhook_dropped(self, reason: WebhookDrop) -> None:
        self.counts.hooks_dropped[reason] += 1

    def webhook_queue(self, size: int) -> None:
        self.counts.hooks_queued = size

    # Commit -> client latency

    def snapshot_swapped(self, woken: Iterable[Session]) -> None:
        """A new snapshot is served; `woken` are the sessions that owe their
        clients an update. A commit that wakes no one is not timed."""
        self.counts.swaps += 1
        waiting = set(woken)
        if not waiting:
            return
        self._propagating.append(_Propagation(self._monotonic(), waiting))
        while len(self._propagating) > MAX_TRACKED_COMMITS:
            self._propagating.popleft()

    def caught_up(self, session: Session) -> None:
        """A session sent what it was woken for (or found nothing to send)."""
        if not session.wake.is_set():  # woken again meanwhile: it still owes a message
            self._done(session)

    def caught_up_all(self, sessions: Iterable[Session]) -> None:
        """`caught_up` for each of `sessions` (a wave's)."""
        if self._propagating:
            for session in sessions:
                self.caught_up(session)

    def session_closed(self, session: Session) -> None:
        self._done(session)

    def _done(self, session: Session) -> None:
        if not self._propagating:
            return
        now = self._monotonic()
        for entry in list(self._propagating):
            entry.waiting.discard(session)
            if not entry.waiting:
                self._observe(max(0.0, now - entry.started))
                self._propagating.remove(entry)

    def _observe(self, seconds: float) -> None:
        counts = self.counts
        counts.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        counts.latency_sum += seconds


ASGIApp = Callable[[Any, Any, Any], Any]


class RequestCounter:
    """ASGI middleware: each HTTP request counted by its route's path template
    (`/api/v1/nodes/{ref}`, never the raw path), method and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        status = 500

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self._metrics.http_request(route, scope["method"], status)

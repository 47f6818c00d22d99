"""What the server counts, for Prometheus (`/metrics`, docs/operations.md).

One `Metrics` object per server, over a `CollectorRegistry` the assembly
passes in (never prometheus_client's global one). The hot paths make one call
into it per event; what other parts already count (DERP's `stats()`, the live
sessions) is read at scrape time by custom collectors instead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from server.edge.derp_server import DerpStats, DropReason
from server.tailnet.registry import NodeChange

__all__ = [
    "MAP_KINDS",
    "OUTCOMES",
    "REJECTION_REASONS",
    "DerpCollector",
    "LiveCollector",
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


class Metrics:
    """The counters the server bumps, one call per event."""

    def __init__(self, registry: CollectorRegistry, *, monotonic: Callable[[], float]) -> None:
        self.registry = registry
        self._monotonic = monotonic
        self._registrations = Counter(
            "tailnetd_registrations",
            "Node registration requests (/machine/register) by outcome.",
            ["outcome"],
            registry=registry,
        )
        self._map_messages = Counter(
            "tailnetd_map_messages",
            "Map messages sent on streaming map polls: full maps, deltas and keep-alives.",
            ["kind"],
            registry=registry,
        )
        self._map_bytes = Counter(
            "tailnetd_map_bytes",
            "Bytes of map messages sent (framed and compressed), by kind.",
            ["kind"],
            registry=registry,
        )
        self._latency = Histogram(
            "tailnetd_commit_propagation_seconds",
            "Seconds from a new snapshot being swapped in to the last session it woke "
            "having sent its client the update.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._swaps = Counter(
            "tailnetd_snapshot_swaps",
            "New commits swapped in and served.",
            registry=registry,
        )
        self._rejections = Counter(
            "tailnetd_snapshot_rejections",
            "Commits not served, by the stage that failed.",
            ["reason"],
            registry=registry,
        )
        self._node_events = Counter(
            "tailnetd_node_events",
            "Node changes from the registry, by kind.",
            ["kind"],
            registry=registry,
        )
        self._api = Counter(
            "tailnetd_http_requests",
            "Plain-HTTP requests (admin API, probes, /key) by route, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self._hooks_delivered = Counter(
            "tailnetd_webhook_deliveries",
            "Webhook events delivered (a 2xx answer).",
            registry=registry,
        )
        self._hooks_failed = Counter(
            "tailnetd_webhook_failures",
            "Webhook delivery attempts that failed (no answer, or not 2xx); each is retried.",
            registry=registry,
        )
        self._hooks_dropped = Counter(
            "tailnetd_webhook_dropped",
            "Webhook events given up: `overflow` (queue full, oldest dropped), `gave_up`.",
            ["reason"],
            registry=registry,
        )
        self._hooks_queued = Gauge(
            "tailnetd_webhook_queue",
            "Webhook deliveries waiting to be sent or retried.",
            registry=registry,
        )
        for drop in WEBHOOK_DROPS:
            self._hooks_dropped.labels(drop)
        for outcome in OUTCOMES:
            self._registrations.labels(outcome)
        # The labelled children of the map counters, looked up once: every
        # session's every message counts (a mesh join is n of these).
        self._map_counters = {
            kind: (self._map_messages.labels(kind), self._map_bytes.labels(kind))
            for kind in MAP_KINDS
        }
        for reason in REJECTION_REASONS:
            self._rejections.labels(reason)
        for change_kind in NODE_EVENT_KINDS:
            self._node_events.labels(change_kind)
        self._propagating: deque[_Propagation] = deque()

    def registration(self, outcome: Outcome) -> None:
        self._registrations.labels(outcome).inc()

    def map_sent(self, kind: MapKind, size: int) -> None:
        messages, sent = self._map_counters[kind]
        messages.inc()
        sent.inc(size)

    def rejected(self, reason: str) -> None:
        self._rejections.labels(reason if reason in REJECTION_REASONS else "compile").inc()

    def node_changed(self, change: NodeChange) -> None:
        """A registry listener (`registry.subscribe(metrics.node_changed)`)."""
        self._node_events.labels(change.kind).inc()

    def http_request(self, route: str, method: str, status: int) -> None:
        self._api.labels(route, method, str(status)).inc()

    # Webhooks

    def webhook_delivered(self) -> None:
        self._hooks_delivered.inc()

    def webhook_failed(self) -> None:
        self._hooks_failed.inc()

    def webhook_dropped(self, reason: WebhookDrop) -> None:
        self._hooks_dropped.labels(reason).inc()

    def webhook_queue(self, size: int) -> None:
        self._hooks_queued.set(size)

    # Commit -> client latency

    def snapshot_swapped(self, woken: Iterable[Session]) -> None:
        """A new snapshot is served; `woken` are the sessions that owe their
        clients an update. A commit that wakes no one is not timed."""
        self._swaps.inc()
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

    def session_closed(self, session: Session) -> None:
        self._done(session)

    def _done(self, session: Session) -> None:
        if not self._propagating:
            return
        now = self._monotonic()
        for entry in list(self._propagating):
            entry.waiting.discard(session)
            if not entry.waiting:
                self._latency.observe(max(0.0, now - entry.started))
                self._propagating.remove(entry)


class LiveCollector(Collector):
    """Gauges read from the running server at scrape time."""

    def __init__(self, read: Callable[[], dict[str, int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        values = self._read()
        yield GaugeMetricFamily(
            "tailnetd_nodes_served", "Registered nodes the serving snapshot serves.",
            value=values["served"],
        )  # fmt: skip
        yield GaugeMetricFamily(
            "tailnetd_nodes_streaming", "Nodes with at least one open streaming map poll.",
            value=values["streaming"],
        )  # fmt: skip
        yield GaugeMetricFamily(
            "tailnetd_control_connections", "Open Noise (ts2021) control connections.",
            value=values["control_connections"],
        )  # fmt: skip


class DerpCollector(Collector):
    """The embedded DERP relay's own counters (`DerpServer.stats()`), read at
    scrape time so that relaying a packet costs no metrics call."""

    def __init__(self, stats: Callable[[], DerpStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        if s is None:
            return
        yield GaugeMetricFamily("tailnetd_derp_clients", "Open DERP connections.", value=s.clients)
        for name, help_text, value in (
            ("accepts", "DERP connections admitted.", s.accepts),
            ("refused", "DERP connections refused: not a node of this tailnet.", s.refused),
            ("packets_received", "Packets DERP clients sent to be relayed.", s.packets_received),
            ("bytes_received", "Bytes of packets DERP clients sent.", s.bytes_received),
            ("packets_relayed", "Packets DERP delivered to their receiver.", s.packets_sent),
            ("bytes_relayed", "Bytes of packets DERP delivered.", s.bytes_sent),
            ("packets_forwarded", "Packets DERP handed to a meshed replica.", s.forwarded),
            ("packets_forwarded_in", "Packets a meshed replica handed to DERP.", s.forwarded_in),
        ):
            yield CounterMetricFamily(f"tailnetd_derp_{name}", help_text, value=value)
        dropped = CounterMetricFamily(
            "tailnetd_derp_packets_dropped", "Packets DERP dropped, by reason.", labels=["reason"]
        )
        for reason in DropReason:
            dropped.add_metric([reason.value], s.drops.get(reason, 0))
        yield dropped


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

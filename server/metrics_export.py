"""The server's numbers as Prometheus metric families, built at scrape time.

Loaded with prometheus_client when `Metrics.registry` is first asked for (a scrape of
`/metrics`), never on the start path: `server/metrics.py` counts in plain numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from server.edge.derp_server import DerpStats, DropReason
from server.metrics import LATENCY_BUCKETS, Counts

__all__ = ["CountsCollector", "DerpCollector", "LiveCollector"]


def _counter(name: str, help_text: str, label: str, values: dict[str, int]) -> Metric:
    family = CounterMetricFamily(name, help_text, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


class CountsCollector(Collector):
    """Everything `Metrics` counts itself."""

    def __init__(self, counts: Counts) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        c = self._counts
        yield _counter(
            "tailnetd_registrations",
            "Node registration requests (/machine/register) by outcome.",
            "outcome", c.registrations,
        )  # fmt: skip
        yield _counter(
            "tailnetd_map_messages",
            "Map messages sent on streaming map polls: full maps, deltas and keep-alives.",
            "kind", c.map_messages,
        )  # fmt: skip
        yield _counter(
            "tailnetd_map_bytes",
            "Bytes of map messages sent (framed and compressed), by kind.",
            "kind", c.map_bytes,
        )  # fmt: skip
        cumulative, buckets = 0, []
        for le, n in zip((*LATENCY_BUCKETS, float("inf")), c.latency_buckets, strict=True):
            cumulative += n
            buckets.append((repr(le) if le != float("inf") else "+Inf", cumulative))
        yield HistogramMetricFamily(
            "tailnetd_commit_propagation_seconds",
            "Seconds from a new snapshot being swapped in to the last session it woke "
            "having sent its client the update.",
            buckets=buckets,
            sum_value=c.latency_sum,
        )
        yield CounterMetricFamily(
            "tailnetd_snapshot_swaps", "New commits swapped in and served.", value=c.swaps
        )
        yield _counter(
            "tailnetd_snapshot_rejections",
            "Commits not served, by the stage that failed.",
            "reason", c.rejections,
        )  # fmt: skip
        yield _counter(
            "tailnetd_node_events", "Node changes from the registry, by kind.",
            "kind", c.node_events,
        )  # fmt: skip
        requests = CounterMetricFamily(
            "tailnetd_http_requests",
            "Plain-HTTP requests (admin API, probes, /key) by route, method and status.",
            labels=["route", "method", "status"],
        )
        for labels, value in list(c.http_requests.items()):
            requests.add_metric(list(labels), value)
        yield requests
        yield CounterMetricFamily(
            "tailnetd_webhook_deliveries", "Webhook events delivered (a 2xx answer).",
            value=c.hooks_delivered,
        )  # fmt: skip
        yield CounterMetricFamily(
            "tailnetd_webhook_failures",
            "Webhook delivery attempts that failed (no answer, or not 2xx); each is retried.",
            value=c.hooks_failed,
        )
        yield _counter(
            "tailnetd_webhook_dropped",
            "Webhook events given up: `overflow` (queue full, oldest dropped), `gave_up`.",
            "reason", c.hooks_dropped,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "tailnetd_webhook_queue", "Webhook deliveries waiting to be sent or retried.",
            value=c.hooks_queued,
        )  # fmt: skip


class LiveCollector(Collector):
    """Gauges read from the running server at scrape time."""

    def __init__(self, read: Callable[[], dict[str, int] | None]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        values = self._read()
        if values is None:  # not running yet
            return
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

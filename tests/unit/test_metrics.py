"""/metrics: what an operator's dashboard reads. The collectors alone, then a
whole in-process server scraped over its admin socket after a run whose
numbers are known."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import git
import httpx
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from server.app import Server
from server.edge.derp_server import DerpStats, DropReason
from server.metrics import Metrics
from server.metrics_export import DerpCollector
from tests.unit.control_client import Device, async_test, poll, running_server

POLICY = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:%d"]}]}\n'


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeSession:
    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.wake.set()


def exposition(registry: CollectorRegistry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


def test_commit_latency_is_observed_when_the_last_woken_session_caught_up() -> None:
    clock, registry = FakeClock(), CollectorRegistry()
    metrics = Metrics(registry, monotonic=clock)
    first, second = FakeSession(), FakeSession()
    metrics.snapshot_swapped([first, second])
    clock.now += 0.2
    first.wake.clear()
    metrics.caught_up(first)
    assert value(exposition(registry), "tailnetd_commit_propagation_seconds_count") == 0
    clock.now += 0.3
    metrics.caught_up(second)  # woken again meanwhile: it still owes its client a message
    assert value(exposition(registry), "tailnetd_commit_propagation_seconds_count") == 0
    metrics.session_closed(second)  # gone: nobody is left waiting
    text = exposition(registry)
    assert value(text, "tailnetd_commit_propagation_seconds_count") == 1
    assert value(text, "tailnetd_commit_propagation_seconds_sum") == 0.5
    assert value(text, "tailnetd_snapshot_swaps_total") == 1


def test_a_commit_that_wakes_no_session_counts_as_a_swap_but_is_not_timed() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, monotonic=FakeClock())
    metrics.snapshot_swapped([])
    text = exposition(registry)
    assert value(text, "tailnetd_snapshot_swaps_total") == 1
    assert value(text, "tailnetd_commit_propagation_seconds_count") == 0


def test_every_outcome_and_reason_is_exported_from_the_start() -> None:
    registry = CollectorRegistry()
    Metrics(registry, monotonic=FakeClock()).rejected("something new")
    text = exposition(registry)
    assert value(text, "tailnetd_registrations_total", outcome="bad_key") == 0
    assert value(text, "tailnetd_snapshot_rejections_total", reason="tests") == 0
    assert value(text, "tailnetd_snapshot_rejections_total", reason="compile") == 1  # unknown
    assert value(text, "tailnetd_map_bytes_total", kind="keepalive") == 0


def test_derp_counters_are_read_at_scrape_time() -> None:
    stats: list[DerpStats] = []
    registry = CollectorRegistry()
    registry.register(DerpCollector(lambda: stats[-1] if stats else None))
    assert "tailnetd_derp" not in exposition(registry)  # DERP not started yet
    stats.append(
        DerpStats(
            clients=2, accepts=3, refused=1, packets_received=10, bytes_received=1000,
            packets_sent=8, bytes_sent=800, pongs_sent=0, peer_gone_sent=0,
            drops={DropReason.UNKNOWN_DEST: 2},
        )
    )  # fmt: skip
    text = exposition(registry)
    assert value(text, "tailnetd_derp_clients") == 2
    assert value(text, "tailnetd_derp_packets_relayed_total") == 8
    assert value(text, "tailnetd_derp_packets_dropped_total", reason="unknown_dest") == 2
    assert value(text, "tailnetd_derp_packets_dropped_total", reason="queue_head") == 0


async def scrape(srv: Server, path: str = "/metrics") -> httpx.Response:
    transport = httpx.AsyncHTTPTransport(uds=str(srv.config.socket_path))
    async with httpx.AsyncClient(transport=transport, base_url="http://tailnetd") as admin:
        return await admin.get(path)


def commit(srv: Server, name: str, text: str) -> None:
    path = Path(srv.config.repo)
    (path / "tailnet.d" / name).write_text(text)
    with git.Repo(path) as repo:
        repo.index.add([f"tailnet.d/{name}"])
        repo.index.commit(f"change {name}")


@async_test
async def test_a_run_is_counted_and_scraped_from_the_admin_socket(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        alice, bob = Device("alice-laptop"), Device("bob-laptop")
        _, alice_stream, _ = await poll(srv, alice)
        _, bob_stream, _ = await poll(srv, bob)
        await alice_stream.wait_for(lambda m: "PeersChanged" in m or "Peers" in m)

        commit(srv, "policy.hujson", POLICY % 443)
        await srv.sync_now()
        for stream in (alice_stream, bob_stream):
            await stream.wait_for(lambda m: "PacketFilter" in m or "PacketFilters" in m)
        commit(srv, "policy.hujson", '{"acls": [')  # does not parse: not served
        await srv.sync_now()

        answer = await scrape(srv)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain; version=")
        text = answer.text
        assert value(text, "tailnetd_registrations_total", outcome="ok") == 2
        assert value(text, "tailnetd_snapshot_swaps_total") == 1
        assert value(text, "tailnetd_snapshot_rejections_total", reason="parse") == 1
        assert (
            sum(
                value(text, "tailnetd_snapshot_rejections_total", reason=r)
                for r in ("source", "schema", "merge", "policy", "tests", "compile")
            )
            == 0
        )
        assert value(text, "tailnetd_commit_propagation_seconds_count") == 1
        assert value(text, "tailnetd_nodes_streaming") == 2
        assert value(text, "tailnetd_nodes_served") == 2
        assert value(text, "tailnetd_control_connections") == 2
        assert value(text, "tailnetd_map_messages_total", kind="full") >= 2
        assert value(text, "tailnetd_map_bytes_total", kind="full") > 0
        assert value(text, "tailnetd_node_events_total", kind="topology") == 2  # two joins
        assert value(text, "tailnetd_derp_clients") == 0

        again = await scrape(srv)  # the first scrape was counted, by its route
        route = {"route": "/metrics", "method": "GET", "status": "200"}
        assert value(again.text, "tailnetd_http_requests_total", **route) == 1


@async_test
async def test_health_is_live_and_ready_names_what_is_missing(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        health = await scrape(srv, "/health")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "serving": srv.status.serving}
        assert (await scrape(srv, "/ready")).status_code == 200

        def broken(node_id: int) -> Any:
            raise OSError("disk I/O error")

        srv.store.get_node = broken  # type: ignore[method-assign]
        answer = await scrape(srv, "/ready")
        assert answer.status_code == 503
        assert answer.json()["reason"] == "the store does not answer: disk I/O error"

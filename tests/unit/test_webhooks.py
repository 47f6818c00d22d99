"""Webhooks as a receiver sees them: signed events, in order per node, across
a server restart, retried after a 500, and never holding up a registration."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from gitctl.tailnet.model import WebhookTarget
from server.admin_client import SocketTarget, call
from server.app import Server
from server.metrics import Metrics
from server.store import open_store
from server.webhooks import HEADER, Delivery, WebhookEvent, WebhookSender, sign, verify
from tests.e2e.harness import TailnetRepo
from tests.unit.control_client import (
    T0,
    USERS,
    ControlClient,
    Device,
    FakeClock,
    async_test,
    join,
    loopback_config,
)

SECRET = b"webhook-test-secret"
FAST = Delivery(backoff=0.05, max_backoff=0.2, max_attempts=50, timeout=5.0)


class Receiver:
    """A webhook receiver on loopback: checks each signature, records the events,
    answers `fail` 500s first, and takes `delay` seconds per request."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.fail = 0
        self.delay = 0.0
        self.requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.requests += 1
                time.sleep(receiver.delay)
                if receiver.fail > 0:
                    receiver.fail -= 1
                    self.send_response(500)
                elif not verify(
                    SECRET, self.headers[HEADER], body, now=int(T0.timestamp()), tolerance=86400
                ):
                    receiver.bad_signatures += 1
                    self.send_response(401)
                else:
                    receiver.events.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}/hook"

    @contextmanager
    def running(self) -> Iterator[Receiver]:
        thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._http.shutdown()
            self._http.server_close()
            thread.join()

    def of(self, type_prefix: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"].startswith(type_prefix)]


async def until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting for webhook events"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def hooked_server(repo: Path, data: Path, clock: FakeClock) -> AsyncIterator[Server]:
    config = dataclasses.replace(loopback_config(repo, data), webhook_secret=SECRET)
    server = Server(config, log=logging.getLogger("tailnetd.test"), clock=clock)
    server.webhook_delivery = FAST
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def tailnet_repo(tmp: Path, url: str, events: str = "") -> Path:
    settings = f"webhooks:\n  - url: {url}\n{events}"
    return TailnetRepo(tmp / "repo", {"users.yaml": USERS, "settings.yaml": settings}).path


def admin(server: Server, method: str, path: str, body: Any = None) -> Any:
    return call(SocketTarget(server.config.socket_path), method, path, body)


@async_test
async def test_events_arrive_signed_and_in_order_per_node_across_a_restart(
    tmp_path: Path,
) -> None:
    receiver = Receiver()
    repo = tailnet_repo(tmp_path, receiver.url)
    clock = FakeClock()
    with receiver.running(), tempfile.TemporaryDirectory(prefix="tnd-") as data:
        receiver.fail = 10**6  # down: every event waits in the outbox
        async with hooked_server(repo, Path(data), clock) as server:
            await (await join(server, Device("laptop"))).close()
            node = server.registry.nodes()[0]
            await asyncio.to_thread(admin, server, "POST", f"/api/v1/nodes/{node.id}/expire")
            await asyncio.to_thread(admin, server, "DELETE", f"/api/v1/nodes/{node.id}")
            await until(lambda: receiver.requests >= 2)
            assert server.store.count_outbox() >= 4  # served, created, expired, deleted
        assert receiver.events == []
        receiver.fail = 1  # back up, after one more 500
        async with hooked_server(repo, Path(data), clock) as server:
            await until(lambda: len(receiver.of("node.")) == 3)
            await until(lambda: server.store.count_outbox() == 0)
    node_events = receiver.of("node.")
    assert [e["type"] for e in node_events] == ["node.created", "node.expired", "node.deleted"]
    assert {e["node"]["id"] for e in node_events} == {node.id}
    assert node_events[0]["node"]["name"] == "laptop" and node_events[0]["version"] == 1
    assert receiver.bad_signatures == 0
    served = receiver.of("snapshot.served")
    assert served and served[0]["data"]["commit"] and served[0]["node"] is None
    assert len({e["id"] for e in receiver.events}) == len(receiver.events)


@async_test
async def test_a_500_is_retried_and_failures_show_in_metrics(tmp_path: Path) -> None:
    receiver = Receiver()
    repo = tailnet_repo(tmp_path, receiver.url, "    events: [key.created, login.refused]\n")
    with receiver.running(), tempfile.TemporaryDirectory(prefix="tnd-") as data:
        async with hooked_server(repo, Path(data), FakeClock()) as server:
            receiver.fail = 2
            created = await asyncio.to_thread(
                admin, server, "POST", "/api/v1/preauthkeys", {"user": "alice"}
            )
            await until(lambda: len(receiver.events) == 1)
            client = await ControlClient.connect(server.port, Device("x").machine)
            try:
                _, reply = await client.register(Device("x").register_body("tskey-auth-nope"))
            finally:
                await client.close()
            assert reply.get("Error")
            await until(lambda: len(receiver.events) == 2)
            metrics = await asyncio.to_thread(admin_text, server)
    key, refused = receiver.events
    assert key["type"] == "key.created"
    assert key["data"] == {"kind": "preauth", "id": created["id"], "prefix": created["prefix"],
                           "user": "alice"}  # fmt: skip
    assert created["key"] not in json.dumps(receiver.events)  # the secret never leaves
    assert refused["type"] == "login.refused" and refused["data"]["reason"]
    assert receiver.requests == 4  # two 500s, then each event once; nothing else is sent
    assert "tailnetd_webhook_failures_total 2.0" in metrics
    assert "tailnetd_webhook_deliveries_total 2.0" in metrics
    assert "tailnetd_webhook_queue 0.0" in metrics


def admin_text(server: Server) -> str:
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(server.config.socket_path))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


@async_test
async def test_a_slow_receiver_does_not_delay_a_registration(tmp_path: Path) -> None:
    receiver = Receiver()
    receiver.delay = 2.0
    repo = tailnet_repo(tmp_path, receiver.url)
    with receiver.running(), tempfile.TemporaryDirectory(prefix="tnd-") as data:
        async with hooked_server(repo, Path(data), FakeClock()) as server:
            await until(lambda: receiver.requests >= 1)  # snapshot.served is being taken slowly
            started = time.monotonic()
            for name in ("one", "two", "three"):
                await (await join(server, Device(name))).close()
            elapsed = time.monotonic() - started
            assert elapsed < 1.5, f"three registrations took {elapsed:.2f}s"
            assert len(server.registry.nodes()) == 3


def test_signatures_cover_time_and_body() -> None:
    body = b'{"type":"node.created"}'
    header = sign(SECRET, 1_700_000_000, body)
    assert header.startswith("t=1700000000,v1=") and len(header.split("v1=")[1]) == 64
    assert verify(SECRET, header, body, now=1_700_000_100)
    assert not verify(SECRET, header, body + b" ", now=1_700_000_100)
    assert not verify(b"other", header, body, now=1_700_000_100)
    assert not verify(SECRET, header, body, now=1_700_001_000)  # too old: a replay
    assert not verify(SECRET, "v1=00", body, now=1_700_000_000)


@async_test
async def test_a_full_queue_drops_the_oldest_and_counts_it(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s.sqlite")
    registry = CollectorRegistry()
    sender = WebhookSender(
        store,
        targets=lambda: (WebhookTarget("http://127.0.0.1:9/"),),
        secret=SECRET, clock=FakeClock(), rng=lambda n: bytes(n),
        metrics=Metrics(registry, monotonic=time.monotonic),
        log=logging.getLogger("tailnetd.test"), delivery=Delivery(max_queue=2),
    )  # fmt: skip
    for n in range(3):
        sender.emit(WebhookEvent("snapshot.served", T0, "tailnet", None, {"n": n}))
    assert registry.get_sample_value("tailnetd_webhook_dropped_total", {"reason": "overflow"}) == 1
    await sender.aclose()  # what was queued is kept for the next process
    kept = [json.loads(item.body)["data"]["n"] for item in store.list_outbox()]
    assert kept == [1, 2]
    store.close()

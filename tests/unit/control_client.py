"""An in-process tailnetd and the control client that talks to it the way
tailscaled does (bench/loadgen/client.py: the load generator speaks through
the same client, so one implementation of the protocol serves both).

Only loopback, only asyncio streams; every test runs in well under a second.
Clients opened here are tracked, so a failed test's leftovers are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.loadgen import client as _client
from bench.loadgen.client import CAPVER, LOGOUT_EXPIRY, Device, MapStream
from bench.loadgen.client import read_all as _read_all
from server.app import Server
from server.config import ServerConfig
from server.control import ControlHandler, ControlSettings
from server.protocol.keys import MachinePrivate
from tests.e2e.harness import TailnetRepo

__all__ = [
    "CAPVER",
    "LOGOUT_EXPIRY",
    "T0",
    "async_test",
    "join",
    "poll",
    "preauth_key",
    "ControlClient",
    "Device",
    "FakeClock",
    "MapStream",
    "_read_all",
    "running_server",
]

USERS = """\
users:
  - {name: alice, email: alice@example.com, display_name: Alice}
  - {name: bob, email: bob@example.com, display_name: Bob}
"""
TEST_TIMEOUT = 20.0
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def async_test(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test function in a fresh event loop, with a time limit."""
    return async_test_within(TEST_TIMEOUT)(fn)


def async_test_within(
    seconds: float,
) -> Callable[[Callable[..., Awaitable[None]]], Callable[..., None]]:
    """`async_test` with a longer limit, for tests that drive many connections
    (and must not fail on a loaded CI machine only for being slow)."""

    def decorate(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> None:
            asyncio.run(asyncio.wait_for(fn(*args, **kwargs), seconds))

        return wrapper

    return decorate


class FakeClock:
    """Server time under the test's control."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def loopback_config(repo: Path, data: Path, database: str | None = None) -> ServerConfig:
    """A server on 127.0.0.1:<free port>, no STUN, state in `data` (or `database`)."""
    return ServerConfig(
        repo=repo,
        data_dir=data,
        listen_host="127.0.0.1",
        listen_port=0,
        server_url="http://127.0.0.1:0",
        stun_host=None,
        stun_port=0,
        database=database,
    )


@asynccontextmanager
async def running_server(
    tmp: Path,
    *,
    files: dict[str, str] | None = None,
    clock: Callable[[], datetime] | None = None,
    keepalive: float | None = None,
    database: str | None = None,
    data_dir: Path | None = None,
) -> AsyncIterator[Server]:
    """A Server on 127.0.0.1:<free port> serving a fresh git repo with `files`.

    `keepalive` (seconds) shortens the map keep-alive interval. With
    `data_dir` (short: it holds the admin socket) the server is started on
    that data dir and on the repo already in `tmp / "repo"`: a restart.
    """
    if data_dir is None or not (tmp / "repo").exists():
        repo_path = TailnetRepo(tmp / "repo", files or {"users.yaml": USERS}).path
    else:
        repo_path = tmp / "repo"
    # The admin unix socket lives in the data dir; AF_UNIX paths are short.
    with contextlib.ExitStack() as stack:
        data = data_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="tnd-"))
        config = loopback_config(repo_path, Path(data), database)
        log = logging.getLogger("tailnetd.test")
        server = Server(config, log=log, clock=clock or FakeClock())
        await server.start()
        if keepalive is not None:
            settings = ControlSettings(keepalive_min=keepalive, keepalive_max=keepalive)
            server.control = ControlHandler(
                server.tailnet,
                server.registry,
                server.store,
                clock=server.clock,
                settings=lambda: settings,
                log=log,
            )
        try:
            yield server
        finally:
            # A failed assertion leaves clients open: close them here, or their
            # sockets show up as a ResourceWarning in some later test.
            for client in list(_open_clients):
                await client.close()
            await server.stop()


def preauth_key(server: Server, user: str = "alice", **kw: Any) -> str:
    """A pre-auth key created through the running server's store."""
    args: dict[str, Any] = {"reusable": False, "ephemeral": False, "tags": (), "expiration": None}
    args.update(kw)
    text, _ = server.store.create_preauth_key(user, now=server.clock(), rng=os.urandom, **args)
    return text


_open_clients: set[ControlClient] = set()


class ControlClient(_client.ControlClient):
    """bench/loadgen's client on a loopback port, closed by `running_server` if a test fails."""

    @classmethod
    async def connect(  # type: ignore[override]
        cls, port: int, machine: MachinePrivate, **kw: Any
    ) -> ControlClient:
        client = await super().connect(port, machine, **kw)
        assert isinstance(client, ControlClient)
        _open_clients.add(client)
        return client

    async def close(self) -> None:
        _open_clients.discard(self)
        await super().close()


async def join(
    server: Server, device: Device, *, auth_key: str | None = None, window: int | None = None
) -> ControlClient:
    """Connect and register `device` with a fresh key (or `auth_key`)."""
    client = await ControlClient.connect(server.port, device.machine, window=window)
    status, reply = await client.register(device.register_body(auth_key or preauth_key(server)))
    if status != 200 or reply.get("Error"):
        await client.close()
        raise AssertionError(f"register failed: {status} {reply}")
    return client


async def poll(
    server: Server, device: Device, **kw: Any
) -> tuple[ControlClient, MapStream, dict[str, Any]]:
    """Join and open the streaming map poll: (client, stream, first message)."""
    client = await join(server, device, **kw)
    stream = await client.map_stream(device.map_body())
    return client, stream, await stream.next()

"""An in-process tailnetd and a small control client that talks to it the way
tailscaled does: `GET /key`, the `/ts2021` upgrade with a Noise IK handshake,
the early payload skipped, then HTTP/2 (h2, client mode) inside Noise.

Only loopback, only asyncio streams; every test runs in well under a second.
The client pumps bytes like the server does: one reader task feeds Noise,
Noise feeds h2, h2 events go to per-stream queues.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings

from server.app import Server
from server.config import ServerConfig
from server.control import ControlHandler, ControlSettings
from server.protocol.keys import DiscoPublic, MachinePrivate, MachinePublic, NodePrivate
from server.protocol.mapframe import MapFrameDecoder
from server.protocol.noise import EARLY_PAYLOAD_MAGIC, RESPONSE_LEN, ClientHandshake, NoiseTransport
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
    "running_server",
]

CAPVER = 133  # what tailscale 1.96 sends
LOGOUT_EXPIRY = "1970-01-01T00:02:03Z"
ZERO_TIME = "0001-01-01T00:00:00Z"
USERS = """\
users:
  - {name: alice, email: alice@example.com, display_name: Alice}
  - {name: bob, email: bob@example.com, display_name: Bob}
"""
TEST_TIMEOUT = 20.0
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def async_test(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test function in a fresh event loop, with a time limit."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), TEST_TIMEOUT))

    return wrapper


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


@dataclass
class Device:
    """One client machine's keys, and the request bodies tailscaled would send."""

    hostname: str
    machine: MachinePrivate = field(default_factory=MachinePrivate.generate)
    node: NodePrivate = field(default_factory=NodePrivate.generate)
    disco: DiscoPublic = field(default_factory=lambda: DiscoPublic(os.urandom(32)))

    def register_body(
        self,
        auth_key: str | None = None,
        *,
        old_node: NodePrivate | None = None,
        expiry: str = ZERO_TIME,
        version: int = CAPVER,
        ephemeral: bool = False,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "Version": version,
            "NodeKey": self.node.public().text,
            "OldNodeKey": (old_node.public() if old_node else type(self.node.public()).zero()).text,
            "Expiry": expiry,
            "Followup": "",
            "Hostinfo": {"Hostname": self.hostname, "OS": "linux"},
        }
        if auth_key is not None:
            body["Auth"] = {"AuthKey": auth_key}
        if ephemeral:
            body["Ephemeral"] = True
        return body

    def map_body(
        self,
        *,
        stream: bool = True,
        endpoints: list[str] | None = None,
        hostinfo: dict[str, Any] | None = None,
        version: int = CAPVER,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "Version": version,
            "Compress": "zstd",
            "KeepAlive": True,
            "NodeKey": self.node.public().text,
            "DiscoKey": self.disco.text,
            "Hostinfo": hostinfo or {"Hostname": self.hostname, "OS": "linux"},
        }
        if stream:
            body["Stream"] = True
        else:
            body["OmitPeers"] = True
        if endpoints is not None:
            body["Endpoints"] = endpoints
        return body


@dataclass
class _Stream:
    headers: asyncio.Future[dict[str, str]]
    chunks: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    reset_code: int | None = None


_open_clients: set[ControlClient] = set()


class ControlClient:
    """One Noise + HTTP/2 connection to the server's /ts2021 endpoint."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        noise: NoiseTransport,
        *,
        window: int | None,
    ) -> None:
        self._reader, self._writer, self._noise = reader, writer, noise
        settings: dict[h2.settings.SettingCodes | int, int] = {
            h2.settings.SettingCodes.ENABLE_PUSH: 0
        }
        if window is not None:
            settings[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] = window
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self._h2 = h2.connection.H2Connection(config=config)
        self._h2.local_settings = h2.settings.Settings(client=True, initial_values=settings)
        self._streams: dict[int, _Stream] = {}
        self._window = asyncio.Event()
        self._preamble = bytearray()  # plaintext before HTTP/2: the early payload
        self._in_h2 = False
        self.early_payload: dict[str, Any] | None = None
        self.closed = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._pong: asyncio.Future[None] | None = None

    @classmethod
    async def connect(
        cls,
        port: int,
        machine: MachinePrivate,
        *,
        version: int = CAPVER,
        window: int | None = None,
    ) -> ControlClient:
        server_key = await fetch_server_key(port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        handshake = ClientHandshake(machine, server_key, version)
        writer.write(
            b"POST /ts2021 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
            b"Connection: upgrade\r\nUpgrade: tailscale-control-protocol\r\n"
            b"X-Tailscale-Handshake: " + base64.b64encode(handshake.initiation()) + b"\r\n\r\n"
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101 "):
            writer.close()
            raise ConnectionError(f"upgrade refused: {head!r}")
        noise = handshake.finish(await reader.readexactly(RESPONSE_LEN))
        client = cls(reader, writer, noise, window=window)
        client._h2.initiate_connection()
        client._flush()
        client._pump = asyncio.get_running_loop().create_task(client._read_loop())
        _open_clients.add(client)
        return client

    async def close(self) -> None:
        _open_clients.discard(self)
        if self._pump is not None:
            self._pump.cancel()
            try:
                await self._pump
            except asyncio.CancelledError:
                pass
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except ConnectionError:
            pass

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # Requests

    async def request(
        self, path: str, body: bytes, method: str = "POST"
    ) -> tuple[int, int, _Stream]:
        """Send a whole request; returns (stream id, status, stream) once headers arrive."""
        stream_id = self._h2.get_next_available_stream_id()
        stream = _Stream(asyncio.get_running_loop().create_future())
        self._streams[stream_id] = stream
        headers = [
            (":method", method),
            (":scheme", "https"),
            (":authority", "127.0.0.1"),
            (":path", path),
            ("content-length", str(len(body))),
        ]
        self._h2.send_headers(stream_id, headers, end_stream=not body)
        self._flush()
        view = memoryview(body)
        while view:
            size = min(
                self._h2.local_flow_control_window(stream_id),
                self._h2.max_outbound_frame_size,
                len(view),
            )
            if size <= 0:
                self._window.clear()
                await self._window.wait()
                continue
            self._h2.send_data(stream_id, bytes(view[:size]), end_stream=size == len(view))
            view = view[size:]
            self._flush()
        got = await stream.headers
        return stream_id, int(got[":status"]), stream

    async def post_json(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        _, status, stream = await self.request(path, json.dumps(body).encode())
        return status, await _read_all(stream)

    async def register(self, body: dict[str, Any]) -> tuple[int, Any]:
        """(status, decoded JSON) — or the body text when it is not JSON."""
        status, data = await self.post_json("/machine/register", body)
        try:
            return status, json.loads(data)
        except ValueError:
            return status, data.decode()

    async def map_lite(self, body: dict[str, Any]) -> tuple[int, bytes]:
        return await self.post_json("/machine/map", body)

    async def map_stream(self, body: dict[str, Any]) -> MapStream:
        stream_id, status, stream = await self.request("/machine/map", json.dumps(body).encode())
        return MapStream(self, stream_id, status, stream)

    async def ping(self) -> None:
        """An HTTP/2 PING, answered by the server's h2 connection."""
        self._pong = asyncio.get_running_loop().create_future()
        self._h2.ping(b"tailnetd")
        self._flush()
        await asyncio.wait_for(self._pong, 5)

    def cancel(self, stream_id: int) -> None:
        """RST_STREAM(CANCEL), as tailscaled ends a long poll."""
        self._h2.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.CANCEL)
        self._flush()
        self._streams.pop(stream_id, None)

    # Byte pump

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data:
            self._noise.send(data)
        out = self._noise.data_to_send()
        if out and not self._writer.is_closing():
            self._writer.write(out)

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    break
                for plain in self._noise.receive_data(data):
                    plain = self._skip_early_payload(plain)
                    if plain:
                        for event in self._h2.receive_data(plain):
                            self._on_event(event)
                self._flush()
        finally:
            self.closed.set()
            for stream in self._streams.values():
                _fail(stream.headers, ConnectionError("connection closed"))
                stream.chunks.put_nowait(None)

    def _skip_early_payload(self, plain: bytes) -> bytes:
        """The client reads 9 bytes: the magic and a length, or an HTTP/2 frame header."""
        if self._in_h2:
            return plain
        self._preamble += plain
        if len(self._preamble) < 9:
            return b""
        if not self._preamble.startswith(EARLY_PAYLOAD_MAGIC):
            self._in_h2 = True
            return bytes(self._preamble)
        length = int.from_bytes(self._preamble[5:9], "big")
        if len(self._preamble) < 9 + length:
            return b""
        self.early_payload = json.loads(self._preamble[9 : 9 + length])
        rest = bytes(self._preamble[9 + length :])
        self._in_h2 = True
        self._preamble.clear()
        return rest

    def _on_event(self, event: h2.events.Event) -> None:
        stream = self._streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.ResponseReceived) and stream is not None:
            stream.headers.set_result(dict((str(k), str(v)) for k, v in event.headers or []))
        elif isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None
            self._h2.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
            if stream is not None:
                stream.chunks.put_nowait(event.data or b"")
        elif isinstance(event, h2.events.StreamEnded) and stream is not None:
            stream.chunks.put_nowait(None)
        elif isinstance(event, h2.events.StreamReset) and stream is not None:
            stream.reset_code = int(event.error_code or 0)
            _fail(stream.headers, ConnectionError(f"stream reset ({stream.reset_code})"))
            stream.chunks.put_nowait(None)
        elif isinstance(event, h2.events.PingAckReceived) and self._pong is not None:
            self._pong.set_result(None)
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self._window.set()


def _fail(future: asyncio.Future[Any], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
        future.exception()  # nobody may be waiting any more: don't log it as lost


async def _read_all(stream: _Stream) -> bytes:
    out = bytearray()
    while (chunk := await stream.chunks.get()) is not None:
        out += chunk
    return bytes(out)


class MapStream:
    """A streaming /machine/map response: decoded MapResponse dicts in order."""

    def __init__(self, client: ControlClient, stream_id: int, status: int, stream: _Stream) -> None:
        self.client = client
        self.stream_id = stream_id
        self.status = status
        self._stream = stream
        self._decoder = MapFrameDecoder()
        self._pending: list[dict[str, Any]] = []
        self.raw = bytearray()  # every body byte received, for framing checks
        self.ended = False

    async def next(self, timeout: float = 5.0, *, keepalives: bool = False) -> dict[str, Any]:
        """The next message (skipping keep-alives unless asked); raises at the end of the stream."""
        while True:
            while self._pending:
                msg = self._pending.pop(0)
                if keepalives or not msg.get("KeepAlive"):
                    return msg
            if self.ended:
                raise EOFError("map stream ended")
            chunk = await asyncio.wait_for(self._stream.chunks.get(), timeout)
            if chunk is None:
                self.ended = True
                continue
            self.raw += chunk
            self._pending += [json.loads(m) for m in self._decoder.receive_data(chunk)]

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        """The first message matching `predicate`; others are dropped."""

        async def find() -> dict[str, Any]:
            while not predicate(msg := await self.next(timeout)):
                pass
            return msg

        return await asyncio.wait_for(find(), timeout)

    async def body(self, timeout: float = 5.0) -> bytes:
        """The rest of the body (for responses that end)."""
        while not self.ended:
            chunk = await asyncio.wait_for(self._stream.chunks.get(), timeout)
            if chunk is None:
                self.ended = True
            else:
                self.raw += chunk
        return bytes(self.raw)

    def cancel(self) -> None:
        self.client.cancel(self.stream_id)

    def __aiter__(self) -> MapStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            return await self.next()
        except EOFError:
            raise StopAsyncIteration from None


async def fetch_server_key(port: int) -> MachinePublic:
    """GET /key?v=<capver> over plain HTTP/1.1, as the client's first request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"GET /key?v=%d HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" % CAPVER
        )
        data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"/key failed: {head!r}")
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return MachinePublic.parse(json.loads(body)["publicKey"])


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(out)
        out += rest[:size]
        data = rest[size + 2 :]


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

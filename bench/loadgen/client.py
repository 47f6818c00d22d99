"""A control client that talks to a Tailscale control server the way tailscaled
1.96 does: `GET /key`, the `/ts2021` upgrade with a Noise IK handshake, the
early payload skipped, then HTTP/2 (h2, client mode) inside Noise, with
zstd-framed map responses.

The async code only pumps bytes, as the server does: one reader task feeds
Noise (server/protocol/noise.py), Noise feeds h2, h2 events go to per-stream
queues; MapStream decodes frames with server/protocol/mapframe.py. The unit
tests (tests/unit/control_client.py) and the load generator share this one
client, so what the benchmarks measure is the protocol the tests prove.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import msgspec

from bench.loadgen.hpack_cache import CachingDecoder, CachingEncoder
from server.protocol.keys import (
    DiscoPublic,
    MachinePrivate,
    MachinePublic,
    NodePrivate,
    NodePublic,
)
from server.protocol.mapframe import MapFrameDecoder
from server.protocol.noise import EARLY_PAYLOAD_MAGIC, RESPONSE_LEN, ClientHandshake, NoiseTransport
from server.protocol.noise_handshake import public_of

__all__ = [
    "CAPVER",
    "LOGOUT_EXPIRY",
    "ZERO_TIME",
    "ControlClient",
    "Device",
    "MapStream",
    "ServerAddress",
    "cancel_and_wait",
    "fetch_server_key",
    "read_all",
]

CAPVER = 133  # what tailscale 1.96 sends
# One for every connection (h2 only reads it). The request headers are ours,
# fixed and lowercase: h2's outbound checks would only cost CPU on the cores
# the server shares. What the server sends is still checked.
_CONFIG = h2.config.H2Configuration(
    client_side=True,
    header_encoding="utf-8",
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)
# Map messages decoded as json.loads would (the same dicts), in a third less
# time: a simulated mesh decodes every join's delta a thousand times over, on
# the cores the server runs on.
_decode_json = msgspec.json.Decoder().decode
LOGOUT_EXPIRY = "1970-01-01T00:02:03Z"
ZERO_TIME = "0001-01-01T00:00:00Z"


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """Where the control server listens: from a `--login-server` style URL."""

    host: str
    port: int
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> ServerAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"server URL must be http:// or https://host[:port], not {url!r}")
        tls = parts.scheme == "https"
        return cls(parts.hostname, parts.port or (443 if tls else 80), tls)

    @classmethod
    def loopback(cls, port: int) -> ServerAddress:
        return cls("127.0.0.1", port)

    def ssl_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context() if self.tls else None

    @property
    def authority(self) -> str:
        return self.host if self.port in (80, 443) else f"{self.host}:{self.port}"


@dataclass
class Device:
    """One client machine's keys, and the request bodies tailscaled would send."""

    hostname: str
    machine: MachinePrivate = field(default_factory=MachinePrivate.generate)
    node: NodePrivate = field(default_factory=NodePrivate.generate)
    disco: DiscoPublic = field(default_factory=lambda: DiscoPublic(os.urandom(32)))
    # (node key, its public text): deriving it is a scalar multiplication, and
    # every request body names it. Checked against `node`, which tests rotate.
    _node_public: tuple[NodePrivate, str] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def node_key_text(self) -> str:
        """The node key's public text, as request bodies carry it."""
        cached = self._node_public
        if cached is None or cached[0] is not self.node:
            # libsodium's fixed-base multiplication (server/protocol/noise_handshake.py)
            cached = self._node_public = (self.node, NodePublic(public_of(self.node)).text)
        return cached[1]

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
            "NodeKey": self.node_key_text(),
            "OldNodeKey": (old_node.public() if old_node else NodePublic.zero()).text,
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
            "NodeKey": self.node_key_text(),
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


class ControlClient:
    """One Noise + HTTP/2 connection to the server's /ts2021 endpoint."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        noise: NoiseTransport,
        *,
        window: int | None,
        authority: str = "127.0.0.1",
    ) -> None:
        self._authority = authority
        self._reader, self._writer, self._noise = reader, writer, noise
        settings: dict[h2.settings.SettingCodes | int, int] = {
            h2.settings.SettingCodes.ENABLE_PUSH: 0
        }
        if window is not None:
            settings[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] = window
        self._h2 = h2.connection.H2Connection(config=_CONFIG)
        self._h2.encoder = CachingEncoder()  # the same bytes, encoded once per fleet
        decoder = CachingDecoder()  # and the server's few response heads decoded once
        decoder.max_header_list_size = self._h2.decoder.max_header_list_size
        self._h2.decoder = decoder
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
        server: ServerAddress | int,
        machine: MachinePrivate,
        *,
        version: int = CAPVER,
        window: int | None = None,
        server_key: MachinePublic | None = None,
    ) -> ControlClient:
        """Upgrade to /ts2021; `server` is an address or a loopback port.

        `server_key` skips `GET /key` (a fleet fetches it once, not per node).
        """
        addr = server if isinstance(server, ServerAddress) else ServerAddress.loopback(server)
        if server_key is None:
            server_key = await fetch_server_key(addr)
        reader, writer = await asyncio.open_connection(
            addr.host, addr.port, ssl=addr.ssl_context(), limit=1 << 20
        )
        handshake = ClientHandshake(machine, server_key, version)
        try:
            writer.write(
                b"POST /ts2021 HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\n"
                b"Connection: upgrade\r\nUpgrade: tailscale-control-protocol\r\n"
                b"X-Tailscale-Handshake: %s\r\n\r\n"
                % (addr.authority.encode(), base64.b64encode(handshake.initiation()))
            )
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101 "):
                raise ConnectionError(f"upgrade refused: {head!r}")
            noise = handshake.finish(await reader.readexactly(RESPONSE_LEN))
        except BaseException:
            # A server killed mid-handshake, or a caller's timeout: the socket
            # is closed here, not left to the garbage collector's warning.
            writer.close()
            raise
        client = cls(reader, writer, noise, window=window, authority=addr.authority)
        client._h2.initiate_connection()
        client._flush()
        client._pump = asyncio.get_running_loop().create_task(client._read_loop())
        return client

    async def close(self) -> None:
        if self._pump is not None:
            await cancel_and_wait(self._pump)
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
            (":authority", self._authority),
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
        return status, await read_all(stream)

    async def register(self, body: dict[str, Any]) -> tuple[int, Any]:
        """(status, decoded JSON) — or the body text when it is not JSON."""
        status, data = await self.post_json("/machine/register", body)
        try:
            return status, json.loads(data)
        except ValueError:
            return status, data.decode()

    async def map_lite(self, body: dict[str, Any]) -> tuple[int, bytes]:
        return await self.post_json("/machine/map", body)

    async def map_stream(self, body: dict[str, Any], *, keep_raw: bool = True) -> MapStream:
        """Open a map poll; `keep_raw=False` drops the body bytes once decoded."""
        stream_id, status, stream = await self.request("/machine/map", json.dumps(body).encode())
        return MapStream(self, stream_id, status, stream, keep_raw=keep_raw)

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


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait until it has ended."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


def _fail(future: asyncio.Future[Any], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
        future.exception()  # nobody may be waiting any more: don't log it as lost


async def read_all(stream: _Stream) -> bytes:
    out = bytearray()
    while (chunk := await stream.chunks.get()) is not None:
        out += chunk
    return bytes(out)


class MapStream:
    """A streaming /machine/map response: decoded MapResponse dicts in order."""

    def __init__(
        self,
        client: ControlClient,
        stream_id: int,
        status: int,
        stream: _Stream,
        *,
        keep_raw: bool = True,
    ) -> None:
        self.client = client
        self.stream_id = stream_id
        self.status = status
        self._stream = stream
        self._decoder = MapFrameDecoder()
        self._pending: list[dict[str, Any]] = []
        self.raw = bytearray()  # every body byte received, for framing checks
        self._keep_raw = keep_raw
        self.ended = False

    async def next(
        self, timeout: float | None = 5.0, *, keepalives: bool = False
    ) -> dict[str, Any]:
        """The next message (skipping keep-alives unless asked); raises at the end of the stream.

        `timeout` None waits as long as the stream lives (a load generator's follower).
        """
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
            if self._keep_raw:
                self.raw += chunk
            self._pending += [_decode_json(m) for m in self._decoder.receive_data(chunk)]

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


async def fetch_server_key(server: ServerAddress | int) -> MachinePublic:
    """GET /key?v=<capver> over HTTP/1.1, as the client's first request."""
    addr = server if isinstance(server, ServerAddress) else ServerAddress.loopback(server)
    reader, writer = await asyncio.open_connection(addr.host, addr.port, ssl=addr.ssl_context())
    try:
        writer.write(
            b"GET /key?v=%d HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
            % (CAPVER, addr.authority.encode())
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

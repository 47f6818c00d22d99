"""A control client that talks to a Tailscale control server the way tailscaled
1.96 does: `GET /key`, the `/ts2021` upgrade with a Noise IK handshake, the
early payload skipped, then HTTP/2 (h2, client mode) inside Noise, with
zstd-framed map responses.

The async code only pumps bytes, as the server does: each read (bench/loadgen/
pump.py) feeds Noise (server/protocol/noise.py), Noise feeds the tap (bench/loadgen/h2tap.py),
which keeps the DATA frames of established map streams and gives the other
frames to h2; bodies go to per-stream `ResponseStream`s and map streams decode
them (bench/loadgen/mapstream.py). The unit tests (tests/unit/control_client.py)
and the load generator share this one client, so what the benchmarks measure
is the protocol the tests prove.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bench.loadgen.device import CAPVER, LOGOUT_EXPIRY, ZERO_TIME, Device
from bench.loadgen.h2client import (
    ClientCodec,
    DataReceived,
    Event,
    PingAcked,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowOpened,
)
from bench.loadgen.h2tap import DEFAULT_WINDOW, DataTap, StreamData
from bench.loadgen.mapstream import MapStream, ResponseStream, read_all
from bench.loadgen.pump import UpgradePump
from server.protocol.keys import MachinePrivate, MachinePublic
from server.protocol.noise import EARLY_PAYLOAD_MAGIC, RESPONSE_LEN, ClientHandshake, NoiseTransport

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

_CANCEL = 0x8  # RST_STREAM(CANCEL)


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


class ControlClient:
    """One Noise + HTTP/2 connection to the server's /ts2021 endpoint."""

    def __init__(
        self,
        transport: asyncio.Transport,
        noise: NoiseTransport,
        *,
        window: int | None,
        authority: str = "127.0.0.1",
    ) -> None:
        self._authority = authority
        self._transport, self._noise = transport, noise
        self._h2 = ClientCodec(window=window)
        self._streams: dict[int, ResponseStream] = {}
        self._tap = DataTap(stream_window=window or DEFAULT_WINDOW)
        self._window = asyncio.Event()
        self._preamble = bytearray()  # plaintext before HTTP/2: the early payload
        self._in_h2 = False
        self.early_payload: dict[str, Any] | None = None
        self.closed = asyncio.Event()
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
        transport, pump = await asyncio.get_running_loop().create_connection(
            lambda: UpgradePump(RESPONSE_LEN), addr.host, addr.port, ssl=addr.ssl_context()
        )
        handshake = ClientHandshake(machine, server_key, version)
        try:
            transport.write(
                b"POST /ts2021 HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\n"
                b"Connection: upgrade\r\nUpgrade: tailscale-control-protocol\r\n"
                b"X-Tailscale-Handshake: %s\r\n\r\n"
                % (addr.authority.encode(), base64.b64encode(handshake.initiation()))
            )
            head, response = await pump.upgraded
            if not head.startswith(b"HTTP/1.1 101 "):
                raise ConnectionError(f"upgrade refused: {head!r}")
            noise = handshake.finish(response)
        except BaseException:
            # A server killed mid-handshake, or a caller's timeout: the socket
            # is closed here, not left to the garbage collector's warning.
            transport.close()
            raise
        client = cls(transport, noise, window=window, authority=addr.authority)
        client._h2.initiate()
        client._flush()
        pump.start(client._received, client._lost)
        return client

    async def close(self) -> None:
        self._transport.close()
        await self.closed.wait()

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # Requests

    async def request(
        self, path: str, body: bytes, method: str = "POST", *, tapped: bool = False
    ) -> tuple[int, int, ResponseStream]:
        """Send a whole request; returns (stream id, status, stream) once headers arrive.

        `tapped`: a long-lived response, whose body the client reads without h2
        once its headers say 200 without a length (bench/loadgen/h2tap.py).
        """
        stream_id = self._h2.next_stream_id()
        stream = ResponseStream(asyncio.get_running_loop().create_future(), tapped=tapped)
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
                self._h2.flow_control_window(stream_id), self._h2.max_outbound_frame_size, len(view)
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
        request = json.dumps(body).encode()
        stream_id, status, stream = await self.request("/machine/map", request, tapped=True)
        return MapStream(self, stream_id, status, stream, keep_raw=keep_raw)

    async def ping(self) -> None:
        """An HTTP/2 PING, answered by the server's h2 connection."""
        self._pong = asyncio.get_running_loop().create_future()
        self._h2.ping(b"tailnetd")
        self._flush()
        await asyncio.wait_for(self._pong, 5)

    def cancel(self, stream_id: int) -> None:
        """RST_STREAM(CANCEL), as tailscaled ends a long poll."""
        self._h2.reset(stream_id, _CANCEL)
        self._flush()
        self._streams.pop(stream_id, None)
        self._tap.unfollow(stream_id)

    # Byte pump

    def _flush(self) -> None:
        data = self._h2.data_to_send() + self._tap.data_to_send()
        if data:
            self._noise.send(data)
        out = self._noise.data_to_send()
        if out and not self._transport.is_closing():
            self._transport.write(out)

    def _received(self, data: bytes) -> None:
        """One read from the socket, handled where the event loop read it."""
        plain = b"".join(self._noise.receive_data(data))
        if not self._in_h2:
            plain = self._skip_early_payload(plain)
        for item in self._tap.items(plain):
            if type(item) is StreamData:
                self._on_tapped(item)
            else:
                for event in self._h2.receive_data(item.data):
                    self._on_event(event)
        self._flush()

    def _lost(self) -> None:
        self.closed.set()
        for stream in self._streams.values():
            _fail(stream.headers, ConnectionError("connection closed"))
            stream.put(None)

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

    def _on_tapped(self, item: StreamData) -> None:
        self._tap.acknowledge(item.stream_id, item.flow_controlled)
        stream = self._streams.get(item.stream_id)
        if stream is not None:
            stream.put(item.data)

    def _on_event(self, event: Event) -> None:
        kind = type(event)
        if kind is DataReceived:
            assert isinstance(event, DataReceived)
            self._h2.acknowledge(event.stream_id, event.flow_controlled)
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.put(event.data)
        elif kind is ResponseReceived:
            assert isinstance(event, ResponseReceived)
            stream = self._streams.get(event.stream_id)
            if stream is None:
                return
            headers = event.headers
            if stream.tapped and headers[":status"] == "200" and "content-length" not in headers:
                self._tap.follow(event.stream_id)
            stream.headers.set_result(headers)
        elif kind is StreamEnded or kind is StreamReset:
            assert isinstance(event, StreamEnded | StreamReset)
            stream = self._streams.get(event.stream_id)
            if stream is None:
                return
            self._tap.unfollow(event.stream_id)
            if isinstance(event, StreamReset):
                stream.reset_code = event.code
                _fail(stream.headers, ConnectionError(f"stream reset ({stream.reset_code})"))
            stream.put(None)
        elif kind is PingAcked and self._pong is not None:
            self._pong.set_result(None)
        elif kind is WindowOpened:
            self._window.set()
        # ConnectionEnded (GOAWAY): the server finishes its streams, then closes.


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

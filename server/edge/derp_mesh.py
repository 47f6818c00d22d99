"""This DERP server's mesh connection to another server of the region.

Pumps bytes between a socket and a `MeshClient`: upgrades `GET /derp` with
the mesh key, watches who is connected there and registers each as a
forwarder on our `DerpServer`, so packets from our clients to them go over
this connection as ForwardPacket frames. Reconnects until cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Callable
from urllib.parse import urlsplit

from server.edge.derp_server import DerpServer
from server.edge.mesh_config import MeshKeyError, read_mesh_key, url_host_port
from server.logs import event
from server.protocol.derp import DerpError
from server.protocol.derp_mesh import MeshClient, PeerGone, PeerPresent, Watching
from server.protocol.keys import NodePrivate, NodePublic

__all__ = ["MAX_BACKLOG", "MeshKeyError", "mesh_with", "read_mesh_key", "url_host_port"]

RETRY = 1.0  # seconds between attempts to reach the other server
MAX_BACKLOG = 4 << 20  # bytes queued on the socket before forwarded packets drop
_MAX_RESPONSE_HEAD = 16 << 10


async def mesh_with(
    server: DerpServer,
    url: str,
    *,
    key: NodePrivate,
    mesh_key: str,
    log: logging.Logger,
    rng: Callable[[int], bytes] = os.urandom,
) -> None:
    """Keep a mesh connection to the server at `url` (its server URL) until cancelled."""
    while True:
        try:
            await _connect_once(server, url, key, mesh_key, log, rng)
        except (
            OSError,
            DerpError,
            ValueError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ) as exc:
            log.info(
                "derp mesh: %s: %s", url, exc or type(exc).__name__, extra=event("derp.mesh_lost")
            )
        await asyncio.sleep(RETRY)


async def _connect_once(
    server: DerpServer,
    url: str,
    key: NodePrivate,
    mesh_key: str,
    log: logging.Logger,
    rng: Callable[[int], bytes],
) -> None:
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    host, port = url_host_port(url)
    reader, writer = await asyncio.open_connection(
        host, port, ssl=ssl.create_default_context() if secure else None
    )
    owner = object()  # this connection, as the forwarders' owner
    try:
        writer.write(
            f"GET /derp HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: DERP\r\n"
            "Connection: Upgrade\r\nDerp-Version: 2\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > _MAX_RESPONSE_HEAD or not head.startswith(b"HTTP/1.1 101"):
            status = head.split(b"\r\n", 1)[0]
            raise ValueError(f"no DERP upgrade: {status!r}")
        client = MeshClient(key, mesh_key, rng=rng)

        def forward(src: NodePublic, dst: NodePublic, packet: bytes) -> bool:
            if writer.transport.get_write_buffer_size() > MAX_BACKLOG or writer.is_closing():
                return False
            client.forward(src, dst, packet)
            writer.write(client.data_to_send())
            return True

        while data := await reader.read(64 << 10):
            for ev in client.receive_data(data):
                match ev:
                    case Watching(server=peer_server):
                        log.info("derp mesh: watching %s (%s)", url, peer_server.short())
                    case PeerPresent(peer=peer):
                        server.add_forwarder(peer, owner, forward)
                    case PeerGone(peer=peer):
                        server.remove_forwarder(peer, owner)
            out = client.data_to_send()
            if out:
                writer.write(out)
                await writer.drain()
        raise ValueError("the other server closed the mesh connection")
    finally:
        server.remove_forwarders(owner)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

"""The connections the front door hands over after their HTTP/1.1 head:
`POST /ts2021` (the Noise IK handshake, then HTTP/2 control) and `GET /derp`."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from server.edge.control_conn import ControlConnection, Handler
from server.edge.control_types import AnswerNow
from server.edge.http1 import RequestHead, UpgradeHandler
from server.protocol.keys import ChallengePublic, MachinePrivate, NodePrivate
from server.protocol.noise import HandshakeError, accept_initiation, early_payload
from server.protocol.noise_handshake import public_of

if TYPE_CHECKING:
    from server.edge.derp_server import DerpServer

__all__ = ["Ts2021Upgrade", "derp_upgrade"]


class Ts2021Upgrade:
    """`/ts2021`: answers the handshake with the server's machine key and runs
    the control connection; `connections` counts those open."""

    def __init__(
        self,
        server_key: MachinePrivate,
        handler: Handler,
        *,
        log: logging.Logger,
        answer_now: AnswerNow | None = None,
    ) -> None:
        self._key = server_key
        self._handler = handler
        self._answer_now = answer_now
        self._log = log
        self.connections = 0

    async def __call__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: RequestHead
    ) -> None:
        if head.upgrade != "tailscale-control-protocol":
            writer.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            return
        try:
            initiation = base64.b64decode(head.header("x-tailscale-handshake"), validate=True)
            accepted = accept_initiation(self._key, initiation)
            del head, initiation  # the connection runs for days: hold none of the request
        except (ValueError, HandshakeError) as exc:
            peer = writer.get_extra_info("peername")
            self._log.info("ts2021: handshake from %s refused: %s", peer, exc)
            body = b"invalid noise handshake\n"
            writer.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            return
        challenge = ChallengePublic(public_of(NodePrivate.generate()))
        conn = ControlConnection(
            reader,
            writer,
            accepted,
            self._handler,
            log=self._log,
            early_payload=early_payload(challenge),
            answer_now=self._answer_now,
        )
        self.connections += 1
        try:
            await conn.run()
        finally:
            self.connections -= 1


def derp_upgrade(derp: Callable[[], DerpServer]) -> UpgradeHandler:
    """`/derp`: the connection handed to the DERP server (made by `derp()` when
    the first one comes)."""

    async def upgrade(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: RequestHead
    ) -> None:
        if head.upgrade != "derp":
            body = b"DERP requires connection upgrade\n"
            writer.write(
                b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            return
        await derp().handle(reader, writer, fast_start=head.header("derp-fast-start") == "1")

    return upgrade

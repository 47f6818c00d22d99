"""The STUN listener: answers binding requests with the sender's address."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from server.protocol.stun import binding_response, parse_binding_request

__all__ = ["StunServer", "start_stun_server"]


class StunServer(asyncio.DatagramProtocol):
    """Replies from the same socket to each valid binding request; drops everything else."""

    def __init__(self, log: logging.Logger | None = None) -> None:
        self._log = log or logging.getLogger("tailnetd.stun")
        self._transport: asyncio.DatagramTransport | None = None
        self.requests = 0
        self.ignored = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        txid = parse_binding_request(data)
        if txid is None or self._transport is None:
            self.ignored += 1
            return
        self.requests += 1
        # IPv6 senders come as (host, port, flowinfo, scope_id); host may carry %scope.
        host = str(addr[0]).split("%", 1)[0]
        self._transport.sendto(binding_response(txid, host, int(addr[1])), addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors from earlier replies (port unreachable) are routine for UDP.
        self._log.debug("stun: socket error: %s", exc)

    @property
    def port(self) -> int:
        """The bound port, useful when port 0 was requested."""
        if self._transport is None:
            raise RuntimeError("the STUN server is not listening")
        return int(self._transport.get_extra_info("sockname")[1])

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def start_stun_server(host: str, port: int, log: logging.Logger | None = None) -> StunServer:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: StunServer(log), local_addr=(host, port)
    )
    return protocol

import asyncio
import socket

from server.edge.stun_server import start_stun_server
from server.protocol.stun import binding_request, parse_binding_response

TXID = bytes(range(12))


def _exchange(host: str, family: socket.AddressFamily, payloads: list[bytes]) -> list[bytes]:
    async def run() -> list[bytes]:
        server = await start_stun_server(host, 0)
        try:
            loop = asyncio.get_running_loop()
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.connect((host, server.port))
                for payload in payloads:
                    await loop.sock_sendall(sock, payload)
                replies = []
                while True:
                    try:
                        replies.append(await asyncio.wait_for(loop.sock_recv(sock, 2048), 0.3))
                    except TimeoutError:
                        return replies
        finally:
            server.close()

    return asyncio.run(run())


def test_netcheck_learns_its_own_address_and_port() -> None:
    async def run() -> None:
        server = await start_stun_server("127.0.0.1", 0)
        try:
            assert server.port != 0
            loop = asyncio.get_running_loop()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind(("127.0.0.1", 0))
                sock.setblocking(False)
                sock.connect(("127.0.0.1", server.port))
                await loop.sock_sendall(sock, binding_request(TXID))
                reply = await asyncio.wait_for(loop.sock_recv(sock, 2048), 5)
                response = parse_binding_response(reply)
                assert response is not None
                assert (response.txid, response.addr, response.port) == (
                    TXID,
                    "127.0.0.1",
                    sock.getsockname()[1],
                )
        finally:
            server.close()

    asyncio.run(run())


def test_garbage_is_ignored_and_the_server_keeps_answering() -> None:
    replies = _exchange("127.0.0.1", socket.AF_INET, [b"hello", bytes(20), binding_request(TXID)])
    assert len(replies) == 1
    response = parse_binding_response(replies[0])
    assert response is not None and response.txid == TXID


def test_ipv6_senders_get_an_ipv6_mapped_address() -> None:
    if not socket.has_ipv6:
        return
    try:
        replies = _exchange("::1", socket.AF_INET6, [binding_request(TXID)])
    except OSError:
        return  # no IPv6 loopback in this sandbox
    response = parse_binding_response(replies[0])
    assert response is not None and response.addr == "::1"

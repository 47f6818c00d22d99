"""The server's listening sockets and the connections they serve, so that a
stop ends every connection (their sessions write last-seen times) before the
store closes."""

from __future__ import annotations

import asyncio
import errno
import os
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

__all__ = ["ConnectionHandler", "ListenError", "Listeners"]

ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ListenError(Exception):
    """A listener could not start; str() is one line naming the address."""

    def __init__(self, what: str, host: str, port: int, exc: OSError) -> None:
        self.host, self.port, self.strerror = host, port, exc.strerror
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason = "address already in use (is another server running?)"
        super().__init__(f"cannot listen for {what} on {host}:{port}: {reason}")


class Listeners:
    def __init__(self) -> None:
        self._servers: list[asyncio.AbstractServer] = []
        self._connections: set[asyncio.Task[Any]] = set()

    async def tcp(
        self,
        what: str,
        host: str,
        port: int,
        handle: ConnectionHandler,
        *,
        ssl: ssl.SSLContext | None = None,
        limit: int | None = None,
    ) -> int:
        """Listen on host:port (ListenError if it cannot); the port bound."""
        kwargs: dict[str, Any] = {"ssl": ssl} if ssl is not None else {}
        if limit is not None:
            kwargs["limit"] = limit
        try:
            server = await asyncio.start_server(self._tracked(handle), host, port, **kwargs)
        except OSError as exc:
            raise ListenError(what, host, port, exc) from None
        self._servers.append(server)
        bound: int = server.sockets[0].getsockname()[1]
        return bound

    async def unix(self, path: Path, handle: ConnectionHandler) -> None:
        """Listen on a unix socket only the owner may use (a stale one is replaced)."""
        if path.exists():
            path.unlink()
        server = await asyncio.start_unix_server(self._tracked(handle), path=str(path))
        os.chmod(path, 0o600)
        self._servers.append(server)

    def close(self) -> None:
        """Stop accepting; the connections already served carry on."""
        for server in self._servers:
            server.close()

    async def end_connections(self, timeout: float = 5.0) -> None:
        """End every live connection (the client reconnects to the next process)."""
        connections = list(self._connections)
        for task in connections:
            task.cancel()
        if connections:
            await asyncio.wait(connections, timeout=timeout)

    def _tracked(self, handle: ConnectionHandler) -> ConnectionHandler:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._connections.add(task)
            try:
                await handle(reader, writer)
            except asyncio.CancelledError:
                writer.close()  # shutting down: the client reconnects to the next process
            finally:
                self._connections.discard(task)

        return tracked

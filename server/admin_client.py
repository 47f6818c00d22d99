"""A small client for the running server's admin API: on its unix socket in
the data dir (no credentials: file permissions guard it), or over HTTP(S)
with an API key for remote use. http.client loads with the first call:
`tailnetd serve` imports this module's names but never calls it.
"""

from __future__ import annotations

import json
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import http.client

__all__ = ["AdminError", "HttpTarget", "SocketTarget", "Target", "call"]

TIMEOUT = 10.0


class AdminError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class SocketTarget:
    path: Path

    def describe(self) -> str:
        return str(self.path)


@dataclass(frozen=True, slots=True)
class HttpTarget:
    url: str  # http(s)://host[:port][/base path]
    api_key: str | None

    def describe(self) -> str:
        return self.url

    def connection(self) -> tuple[http.client.HTTPConnection, str]:
        """A connection to the server, and the path prefix to put before API paths."""
        import http.client

        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AdminError(f"--server must be an http:// or https:// URL, got {self.url!r}")
        try:
            port = parts.port
        except ValueError:
            raise AdminError(f"bad port in --server URL {self.url!r}") from None
        if parts.scheme == "https":
            ctx = ssl.create_default_context()
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname, port, timeout=TIMEOUT, context=ctx
            )
        else:
            conn = http.client.HTTPConnection(parts.hostname, port, timeout=TIMEOUT)
        return conn, parts.path.rstrip("/")


Target = SocketTarget | HttpTarget


def _unix_connection(path: Path) -> http.client.HTTPConnection:
    import http.client

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            sock.connect(str(path))
            self.sock = sock

    return UnixConnection("localhost", timeout=TIMEOUT)


def _open(target: Target) -> tuple[http.client.HTTPConnection, str, dict[str, str]]:
    if isinstance(target, HttpTarget):
        conn, base = target.connection()
        auth = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
        return conn, base, auth
    if not target.path.exists():
        raise AdminError(
            f"no running tailnetd found: {target.path} does not exist (start `tailnetd serve"
            f" --data {target.path.parent}` first, or use --server URL --api-key KEY)"
        )
    return _unix_connection(target.path), "", {}


def call(target: Target, method: str, path: str, body: Any = None) -> Any:
    """Send one admin request; the decoded JSON answer, or AdminError for people."""
    import http.client

    conn, base, headers = _open(target)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        if payload is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, base + path, body=payload, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    except ssl.SSLError as exc:
        raise AdminError(f"TLS with {target.describe()} failed: {exc.reason or exc}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise AdminError(f"cannot reach tailnetd at {target.describe()}: {exc}") from None
    finally:
        conn.close()
    try:
        value = json.loads(data or b"null")
    except ValueError:
        raise AdminError(f"unexpected answer from {target.describe()} ({resp.status})") from None
    if resp.status >= 400:
        # Problem documents (RFC 7807) say what went wrong in `detail`.
        message = value.get("detail") if isinstance(value, dict) else None
        message = message or f"tailnetd answered {resp.status}"
        if resp.status == 401 and isinstance(target, HttpTarget):
            message = _unauthorized(target, message)
        raise AdminError(message)
    return value


def _unauthorized(target: HttpTarget, server_message: str) -> str:
    if not target.api_key:
        return (
            f"tailnetd at {target.url} needs an API key: pass --api-key KEY or set"
            " TAILNETD_API_KEY (create one with `tailnetd apikeys create` on the server)"
        )
    return f"tailnetd at {target.url} refused the API key: {server_message}"

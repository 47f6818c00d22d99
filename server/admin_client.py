"""A small client for the running server's admin API on its unix socket."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any

__all__ = ["AdminError", "call"]


class AdminError(Exception):
    pass


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self._path))
        self.sock = sock


def call(socket_path: Path, method: str, path: str, body: Any = None) -> Any:
    if not socket_path.exists():
        raise AdminError(
            f"no running tailnetd found: {socket_path} does not exist (start `tailnetd serve --data "
            f"{socket_path.parent}` first)"
        )
    conn = _UnixConnection(socket_path)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    except (ConnectionRefusedError, FileNotFoundError) as exc:
        raise AdminError(f"cannot reach tailnetd at {socket_path}: {exc}") from None
    finally:
        conn.close()
    try:
        value = json.loads(data or b"null")
    except ValueError:
        raise AdminError(f"unexpected answer from tailnetd ({resp.status})") from None
    if resp.status >= 400:
        message = value.get("error") if isinstance(value, dict) else None
        raise AdminError(message or f"tailnetd answered {resp.status}")
    return value

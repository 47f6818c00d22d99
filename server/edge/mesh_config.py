"""DERP mesh settings read at start-up, before DERP itself is loaded (on first
use): the mesh key file and the other servers' URLs."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["MeshKeyError", "read_mesh_key", "url_host_port"]


class MeshKeyError(ValueError):
    """The mesh key file is missing or not a key."""


def read_mesh_key(path: Path | None) -> str | None:
    """The mesh key in `path`: 64 hex digits (as `derper --mesh-psk-file`)."""
    if path is None:
        return None
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise MeshKeyError(f"cannot read the mesh key file {path}: {exc.strerror}") from None
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise MeshKeyError(f"{path}: the mesh key must be 64 lowercase hex digits")
    return text


def url_host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)

"""Where clients and people reach this server: the --server-url, which behind
a proxy is the proxy's address, not our listener's; with --listen on port 0
(tests), the port actually bound."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from server.edge.mesh_config import url_host_port
from server.wire import DerpRegion

__all__ = ["derp_region", "public_url"]


def public_url(server_url: str, listen_port: int, bound_port: int) -> str:
    """The base of the links people follow (logins, SSH checks, probes)."""
    if listen_port == 0:
        parts = urlsplit(server_url)
        return f"{parts.scheme}://{parts.hostname}:{bound_port}"
    return server_url


def derp_region(
    server_url: str, listen_port: int, bound_port: int, stun_port: int, mesh_with: Sequence[str]
) -> DerpRegion:
    """The embedded DERP: clients reach it where they reach control.
    `stun_port` 0: no STUN."""
    url = urlsplit(server_url)
    host = url.hostname or "127.0.0.1"
    port = url.port or (443 if url.scheme == "https" else 80)
    if listen_port == 0:
        port = bound_port
    return DerpRegion(
        region_id=999,
        region_code="tailnetd",
        region_name="tailnetd embedded DERP",
        host_name=host,
        derp_port=port,
        stun_port=stun_port,
        replicas=tuple(url_host_port(u) for u in mesh_with),
    )

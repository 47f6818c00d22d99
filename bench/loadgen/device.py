"""A simulated client machine's keys, and the request bodies tailscaled 1.96
sends (tests/e2e/test_loadgen_wire.py checks them against a real tailscaled's).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from server.protocol.keys import DiscoPublic, MachinePrivate, NodePrivate, NodePublic
from server.protocol.noise_handshake import public_of

__all__ = ["CAPVER", "LOGOUT_EXPIRY", "ZERO_TIME", "Device"]

CAPVER = 133  # what tailscale 1.96 sends
LOGOUT_EXPIRY = "1970-01-01T00:02:03Z"
ZERO_TIME = "0001-01-01T00:00:00Z"


@dataclass
class Device:
    """One client machine's keys, and the request bodies tailscaled would send."""

    hostname: str
    machine: MachinePrivate = field(default_factory=MachinePrivate.generate)
    node: NodePrivate = field(default_factory=NodePrivate.generate)
    disco: DiscoPublic = field(default_factory=lambda: DiscoPublic(os.urandom(32)))
    # (node key, its public text): deriving it is a scalar multiplication, and
    # every request body names it. Checked against `node`, which tests rotate.
    _node_public: tuple[NodePrivate, str] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def node_key_text(self) -> str:
        """The node key's public text, as request bodies carry it."""
        cached = self._node_public
        if cached is None or cached[0] is not self.node:
            # libsodium's fixed-base multiplication (server/protocol/noise_handshake.py)
            cached = self._node_public = (self.node, NodePublic(public_of(self.node)).text)
        return cached[1]

    def register_body(
        self,
        auth_key: str | None = None,
        *,
        old_node: NodePrivate | None = None,
        expiry: str = ZERO_TIME,
        version: int = CAPVER,
        ephemeral: bool = False,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "Version": version,
            "NodeKey": self.node_key_text(),
            "OldNodeKey": (old_node.public() if old_node else NodePublic.zero()).text,
            "Expiry": expiry,
            "Followup": "",
            "Hostinfo": {"Hostname": self.hostname, "OS": "linux"},
        }
        if auth_key is not None:
            body["Auth"] = {"AuthKey": auth_key}
        if ephemeral:
            body["Ephemeral"] = True
        return body

    def map_body(
        self,
        *,
        stream: bool = True,
        endpoints: list[str] | None = None,
        hostinfo: dict[str, Any] | None = None,
        version: int = CAPVER,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "Version": version,
            "Compress": "zstd",
            "KeepAlive": True,
            "NodeKey": self.node_key_text(),
            "DiscoKey": self.disco.text,
            "Hostinfo": hostinfo or {"Hostname": self.hostname, "OS": "linux"},
        }
        if stream:
            body["Stream"] = True
        else:
            body["OmitPeers"] = True
        if endpoints is not None:
            body["Endpoints"] = endpoints
        return body

"""How much a client may send, derived from a few named constants (style.md §12).

Every count and length here is checked while a request is decoded, before any
of it reaches the store; a request over a limit is refused whole with a
`WireError` naming the field. The numbers are generous to real clients:
tailscaled 1.96.4 sends a Hostinfo of about 1 KiB (20-odd short strings,
three peerapi Services, one or two RoutableIPs, a NetInfo with one latency per
DERP region and address family) and a handful of Endpoints. The limits only
stop what no client would send: a megabyte of hostname, a million routes.
"""

from __future__ import annotations

__all__ = [
    "MAX_ADDR_TEXT",
    "MAX_DERP_LATENCIES",
    "MAX_ENDPOINTS",
    "MAX_HOSTINFO_BYTES",
    "MAX_HOSTNAME",
    "MAX_REQUEST_BODY",
    "MAX_REQUEST_TAGS",
    "MAX_ROUTABLE_IPS",
    "MAX_SERVICES",
    "MAX_SHORT_LIST",
    "MAX_SSH_HOST_KEY",
    "MAX_SSH_HOST_KEYS",
    "MAX_TEXT",
]

# A DNS name (RFC 1035): tailcfg's Hostname is what `hostname` prints, and the
# kernel's own limit (HOST_NAME_MAX) is 64.
MAX_HOSTNAME = 255
# Any other free-text field (OSVersion, DeviceModel, Distro, a Service
# Description, a tag, a debug flag). Real values are under 100 characters.
MAX_TEXT = 1024
# An IP prefix or "ip:port" in text: the longest is a bracketed IPv6 address
# with a zone and a port, well under 64.
MAX_ADDR_TEXT = 64
# One OpenSSH public key line; an RSA-16384 key is about 2.8 KiB.
MAX_SSH_HOST_KEY = 4096
# tailscaled reports at most one key per type (rsa, ecdsa, ed25519, dsa).
MAX_SSH_HOST_KEYS = 16
# magicsock reports every local interface address plus STUN and port-mapped
# ones; a host with dozens of interfaces still stays far below this.
MAX_ENDPOINTS = 1024
# Subnet routers advertising whole routing tables send thousands of routes.
MAX_ROUTABLE_IPS = 10_000
# With CollectServices a busy host lists each listening TCP/UDP port.
MAX_SERVICES = 4096
# RequestTags: a node asking for more than this many tags is not a real client.
MAX_REQUEST_TAGS = 256
# DebugFlags, WoLMACs and other lists of a few entries.
MAX_SHORT_LIST = 256
# NetInfo.DERPLatency: two entries (-v4, -v6) per DERP region.
MAX_DERP_LATENCIES = 1024

# The encoded Hostinfo as the store keeps it. Every list above at its limit
# would exceed this; a real client's is three orders of magnitude smaller.
MAX_HOSTINFO_BYTES = 1 << 20
# A whole register or map request: one Hostinfo plus the envelope (keys,
# Endpoints at their limit, small fields).
MAX_REQUEST_BODY = MAX_HOSTINFO_BYTES + MAX_ENDPOINTS * (MAX_ADDR_TEXT + 8) + (64 << 10)

"""Node JSON: a MapResponse's node entries, and peer entries encoded once.

`node_json` is one node as a map holds it (self or peer); `PeerEntries`
keeps each peer's encoded entry, shared by every session of the tailnet,
with the `ChangeLog` of which nodes changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from server.store.model import Node
from server.tailnet.changelog import ChangeLog
from server.tailnet.mapencode import Deltas, Fragments, encode_json
from server.tailnet.views import PeerView
from server.wire import TAGGED_USER_ID, encode, format_time, stable_user_id, user_profile_json

__all__ = [
    "PeerEntries",
    "addresses",
    "home_derp",
    "node_json",
    "owner_of",
    "user_id",
]


def home_derp(node: Node) -> int:
    netinfo = node.hostinfo.net_info
    return 0 if netinfo is None else netinfo.preferred_derp


def user_id(node: Node) -> int:
    return TAGGED_USER_ID if node.tags or node.user is None else _user_id(node.user)


def owner_of(node: Node) -> tuple[int, str | None]:
    """(user ID, user name or None for tagged devices): what a profile is built from."""
    if node.tags or node.user is None:
        return TAGGED_USER_ID, None
    return _user_id(node.user), node.user


@lru_cache(maxsize=16384)
def _user_id(name: str) -> int:
    return stable_user_id(name)  # a SHA-256 per call, and every map asks for every peer's


def fqdn(node: Node, domain: str) -> str:
    return f"{node.given_name}.{domain}." if domain else f"{node.given_name}."


@lru_cache(maxsize=65536)
def addresses(ipv4: IPv4Address | None, ipv6: IPv6Address | None) -> tuple[str, ...]:
    # Formatting an IPv6 address is slow, and every map has a self entry.
    out = []
    if ipv4 is not None:
        out.append(f"{ipv4}/32")
    if ipv6 is not None:
        out.append(f"{ipv6}/128")
    return tuple(out)


def node_json(
    node: Node,
    *,
    domain: str,
    allowed_ips: Iterable[str],
    primary_routes: Iterable[str],
    cap_map: Mapping[str, Any],
    online: bool | None,
    now: datetime,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ID": node.id,
        "StableID": f"n{node.id:05d}",
        "Name": fqdn(node, domain),
        "User": user_id(node),
        "Key": node.node_key.text,
        "KeyExpiry": format_time(node.key_expiry),
        "Machine": node.machine_key.text,
        "DiscoKey": node.disco_key.text,
        "Addresses": list(addresses(node.ipv4, node.ipv6)),
        "AllowedIPs": list(allowed_ips),
        "Endpoints": list(node.endpoints),
        "HomeDERP": home_derp(node),
        "Hostinfo": encode(node.hostinfo),
        "Created": format_time(node.created),
        "Cap": node.capver,
        "MachineAuthorized": True,
        "CapMap": dict(cap_map),
    }
    routes = list(primary_routes)
    if routes:
        out["PrimaryRoutes"] = routes
    if node.tags:
        out["Tags"] = sorted(node.tags)
    if online is not None:
        out["Online"] = online
        if not online and node.last_seen is not None:
            out["LastSeen"] = format_time(node.last_seen)
    if node.key_expiry is not None and node.key_expiry <= now:
        out["Expired"] = True
    return out


class PeerEntries:
    """Encoded peer entries shared by every session of one tailnet.

    A peer's entry is the same bytes for every viewer that has the same
    PeerView of it (most viewers: routes and caps rarely differ), so it is
    encoded once per change of that peer, not once per viewer. Entries are
    keyed by what they are built from and checked by identity first, then by
    equality, so a reloaded but unchanged Node still hits.
    """

    MAX_VARIANTS = 8

    def __init__(self, domain: str) -> None:
        self.domain = domain
        self._entries: dict[int, list[tuple[Node, PeerView, bool, bool, bytes]]] = {}
        self.log = ChangeLog()  # nodes whose entries may have changed, in order
        self.fragments = Fragments()  # what sessions' messages share besides peers
        self.deltas = Deltas()  # whole delta messages that sessions send alike
        self._users: Mapping[str, tuple[str, str]] | None = None
        self._profiles: dict[str | None, Mapping[str, Any]] = {}

    def get(self, node: Node, pv: PeerView, online: bool, now: datetime) -> bytes:
        expired = node.key_expiry is not None and node.key_expiry <= now
        variants = self._entries.get(node.id)
        if variants:
            for i, (n, p, o, e, data) in enumerate(variants):
                if (
                    o is online
                    and e is expired
                    and (p is pv or p == pv)
                    and (n is node or n == node)
                ):
                    if n is not node or p is not pv:
                        variants[i] = (node, pv, o, e, data)  # next time, identity hits
                    return data
            if variants[0][0] != node:
                variants.clear()  # the node changed: its old entries are dead
        else:
            variants = self._entries[node.id] = []
        data = encode_json(
            node_json(
                node,
                domain=self.domain,
                allowed_ips=pv.allowed_ips,
                primary_routes=pv.primary_routes,
                cap_map=pv.cap_map,
                online=online,
                now=now,
            )
        )
        variants.append((node, pv, online, expired, data))
        del variants[: -self.MAX_VARIANTS]
        return data

    def forget(self, node_id: int) -> None:
        self._entries.pop(node_id, None)

    def profile(self, node: Node, users: Mapping[str, tuple[str, str]]) -> Mapping[str, Any]:
        """The UserProfile of `node`'s owner (made once per user list)."""
        if users is not self._users:
            self._users, self._profiles = users, {}
        name = owner_of(node)[1]
        out = self._profiles.get(name)
        if out is None:
            if name is None:
                out = user_profile_json(None, None, None)
            else:
                email, display = users.get(name, (name, name))
                out = user_profile_json(name, email, display)
            self._profiles[name] = out
        return out

"""MapResponses as a function of (snapshot, node registry, online set).

`build_map` computes what one node should hold, whole; `session.MapSession`
moves a streaming client there by deltas built from what changed. Peer
entries are encoded once per change of that peer in `PeerEntries`, shared by
every session of the tailnet, with the `ChangeLog` of which nodes changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import msgspec

from server.protocol.keys import NodePublic
from server.protocol.mapframe import SharedMessage, SplicedMessage
from server.store.model import Node
from server.tailnet.changelog import ChangeLog
from server.tailnet.expiries import Expiries
from server.tailnet.views import NodeView, PeerView, PolicyViews
from server.wire import TAGGED_USER_ID, encode, format_time, stable_user_id, user_profile_json

__all__ = [
    "Deltas",
    "Fragments",
    "MapContext",
    "MapState",
    "PeerEntries",
    "build_map",
    "encode_message",
    "node_json",
    "owner_of",
    "top_fields",
    "unapproved_map",
]

BASE_SELF_CAPS: dict[str, Any] = {
    "https://tailscale.com/cap/file-sharing": [],
    "https://tailscale.com/cap/ssh": [],
}


@dataclass(frozen=True, slots=True)
class MapContext:
    """Everything maps depend on; replaced whole when any of it changes."""

    domain: str
    nodes: Mapping[int, Node]
    views: PolicyViews
    derp_map: Mapping[str, Any]
    dns_config: Mapping[str, Any]
    users: Mapping[str, tuple[str, str]]  # name -> (email, display name)
    online: AbstractSet[int]
    entries: PeerEntries
    # The key-expiry index of this context's lineage of node maps: the serving
    # snapshot's and a canary's differ in who is in them, and one index asked
    # about both in turn could not tell the switch from the change log.
    expiries: Expiries
    taildrop: bool = True


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
def _addresses(ipv4: IPv4Address | None, ipv6: IPv6Address | None) -> tuple[str, ...]:
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
        "Addresses": list(_addresses(node.ipv4, node.ipv6)),
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
        data = _encode(
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


def self_entry(ctx: MapContext, node: Node, view: NodeView[int], now: datetime) -> dict[str, Any]:
    caps = dict(BASE_SELF_CAPS) if ctx.taildrop else {"https://tailscale.com/cap/ssh": []}
    caps.update(view.self_cap_map)
    return node_json(
        node,
        domain=ctx.domain,
        allowed_ips=view.self_allowed_ips,
        primary_routes=view.self_primary_routes,
        cap_map=caps,
        online=None,
        now=now,
    )


EXPIRED_LONG_AGO = datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)


def not_served_map(node_key: NodePublic, now: datetime) -> bytes:
    """The whole map of a node the tailnet no longer serves (deleted, its user
    gone from git): itself, expired, and no peers. A self node whose key
    expired puts the client in NeedsLogin (protocol.md §5.2)."""
    msg = {
        "Node": {
            "ID": 0,
            "Key": node_key.text,
            "KeyExpiry": format_time(EXPIRED_LONG_AGO),
            "Expired": True,
            "MachineAuthorized": True,
            "Addresses": [],
            "AllowedIPs": [],
        },
        "Peers": [],
        "PacketFilter": [],
        "ControlTime": format_time(now),
    }
    return json.dumps(msg).encode()


def unapproved_map(node: Node, derp_map: Mapping[str, Any], now: datetime) -> bytes:
    """The map of a node waiting for device approval: itself, not authorized,
    and no peers or rules. The client shows that it needs machine
    authorization and keeps polling; the first map after approval is whole."""
    msg = {
        "Node": {
            "ID": node.id,
            "StableID": f"n{node.id:05d}",
            "Name": f"{node.given_name}.",
            "User": user_id(node),
            "Key": node.node_key.text,
            "KeyExpiry": format_time(node.key_expiry),
            "Machine": node.machine_key.text,
            "Addresses": list(_addresses(node.ipv4, node.ipv6)),
            "AllowedIPs": list(_addresses(node.ipv4, node.ipv6)),
            "MachineAuthorized": False,
            "Hostinfo": encode(node.hostinfo),
        },
        "DERPMap": derp_map,
        "Peers": [],
        "PacketFilter": [],
        "ControlTime": format_time(now),
    }
    return json.dumps(msg).encode()


@dataclass(frozen=True, slots=True)
class MapState:
    top: Mapping[str, Any]  # top-level MapResponse fields, Peers excluded
    peers: Mapping[int, bytes]  # encoded peer entries (shared between sessions)
    profiles: Mapping[int, Mapping[str, Any]]


def build_map(ctx: MapContext, node_id: int, now: datetime) -> MapState | None:
    """What `node_id` should hold now, whole (the first map of a unary
    request, and the reference every session's deltas must add up to)."""
    node = ctx.nodes.get(node_id)
    view = ctx.views.get(node_id)
    if node is None or view is None:
        return None
    peers: dict[int, bytes] = {}
    nodes, online, entries = ctx.nodes, ctx.online, ctx.entries
    for peer_id, pv in view.peers.items():
        peer = nodes.get(peer_id)
        if peer is not None:
            peers[peer_id] = entries.get(peer, pv, peer_id in online, now)
    owners = [node, *filter(None, map(nodes.get, peers))]
    return MapState(
        top=top_fields(ctx, node, view, now),
        peers=peers,
        profiles={user_id(n): entries.profile(n, ctx.users) for n in owners},
    )


def top_fields(
    ctx: MapContext, node: Node, view: NodeView[int], now: datetime, *, self_node: bool = True
) -> dict[str, Any]:
    """The top-level MapResponse fields of `node`'s map (peers apart; its
    own entry too unless `self_node`)."""
    out = {"Node": self_entry(ctx, node, view, now)} if self_node else {}
    return out | {
        "DERPMap": ctx.derp_map,
        "Domain": ctx.domain,
        "CollectServices": False,
        "DNSConfig": ctx.dns_config,
        "PacketFilter": view.packet_filter_rules,
        "SSHPolicy": view.ssh_policy,
        "Debug": _DEBUG,
    }


_DEBUG = {"DisableLogTail": True}


# Top-level fields that many sessions receive alike, or mostly alike: their
# big parts (a rule's SrcIPs, the DERP map) are encoded once, not per session.
SHARED_FIELDS = ("PacketFilter", "SSHPolicy", "DERPMap", "DNSConfig")
ONE_OBJECT = frozenset({"DERPMap", "DNSConfig"})


class Fragments:
    """JSON of values that many sessions send alike, encoded once and spliced
    into each session's message, as peer entries are.

    After a commit under ``autogroup:self`` each of 50,000 nodes gets its own
    packet filter, but the bulk of it, the sources (every address of the
    user's nodes), is one list per user: lists of at least `MIN_LEN` texts
    are encoded once per content; the DERP map and DNS config, the same
    object for every session, once per object. `encoded` counts the values
    encoded (what tests count instead of timing)."""

    MIN_LEN = 8
    MAX_HELD = 1 << 14

    def __init__(self) -> None:
        self._texts: dict[tuple[Any, ...], bytes] = {}
        self._objects: dict[int, tuple[object, bytes]] = {}
        self._lists: dict[int, tuple[object, bytes]] = {}
        self.encoded = 0

    def add(self, out: list[bytes], value: Any, *, one_object: bool = False) -> None:
        """Append the JSON of a top-level field's value to ``out`` as pieces
        (joined once, with the whole message: a rule's sources are the bulk
        of a message, and each copy of them costs); `one_object`: the value
        is one object that every session sends (DERP map, DNS config)."""
        held = self._objects.get(id(value))
        if held is not None and held[0] is value:
            out.append(held[1])
        elif one_object:
            data = SharedPiece(self._object(value))
            if len(self._objects) >= self.MAX_HELD:
                self._objects.clear()
            self._objects[id(value)] = (value, data)
            out.append(data)
        elif type(value) in _SEQUENCES:  # packet filter rules
            out.append(b"[")
            for n, item in enumerate(value):
                if n:
                    out.append(b",")
                self._add_object(out, item)
            out.append(b"]")
        else:
            self._add_object(out, value)

    def _object(self, value: Any) -> bytes:
        out: list[bytes] = []
        self._add_object(out, value)
        return b"".join(out)

    def _add_object(self, out: list[bytes], value: Any) -> None:
        """An object with its long lists of texts spliced from what was kept,
        the rest in one call to the encoder."""
        if type(value) is not dict:
            out.append(_encode(value))
            return
        texts = [k for k, v in value.items() if type(v) in _SEQUENCES and self._texts_worth(v)]
        if not texts:
            out.append(_encode(value))
            return
        if len(texts) < len(value):
            rest = _encode({k: v for k, v in value.items() if k not in texts})
            out.append(rest[:-1])  # "{...", its members
            out.append(b",")
        else:
            out.append(b"{")
        for n, k in enumerate(texts):
            if n:
                out.append(b",")
            out.append(_key(k))
            out.append(self._text_list(value[k]))
        out.append(b"}")

    def _texts_worth(self, value: list[Any] | tuple[Any, ...]) -> bool:
        return len(value) >= self.MIN_LEN and type(value[0]) is str

    def _text_list(self, value: list[str] | tuple[str, ...]) -> bytes:
        # The compiler hands every node of a rule the same SrcIPs list
        # (`gitctl.policy.filter.Rule.head`): found by identity, in O(1).
        held = self._lists.get(id(value))
        if held is not None and held[0] is value:
            return held[1]
        data = self._text_content(value)
        if len(self._lists) >= self.MAX_HELD:
            self._lists.clear()
        self._lists[id(value)] = (value, data)
        return data

    def _text_content(self, value: list[str] | tuple[str, ...]) -> bytes:
        """By content: a recompile renders equal lists anew."""
        try:
            data = self._texts.get(key := tuple(value))
        except TypeError:  # not texts after all
            return _encode(value)
        if data is None:
            if len(self._texts) >= self.MAX_HELD:
                self._texts.clear()
            data = self._texts[key] = SharedPiece(_encode(value))
            self.encoded += 1
        return data


_SEQUENCES = (list, tuple)


class SharedPiece(bytes):
    """JSON that `Fragments` keeps and hands to many messages: the very
    object, so a message that holds it can say where (`SplicedMessage`)."""

    __slots__ = ()


# Shared pieces at least this long get a zstd frame of their own, compressed
# once for every message holding them (`SplicedMessage`); shorter ones cost
# more in frame overhead than they save.
SPLICE_MIN = 1024


# msgspec's encoder (the wire types' codec, server/wire/): compact JSON of
# plain dicts, lists and scalars, UTF-8 as is; several times faster than
# json's on the small per-session parts of a message (a node's DstPorts,
# ControlTime), which a commit's fan-out encodes 50,000 times.
def _plain(value: Any) -> Any:
    """What json would make of a value msgspec leaves to a hook: subclasses
    of str and the numbers (wire prefixes, addresses) as their plain selves."""
    for kind in (str, int, float):
        if isinstance(value, kind):
            return kind(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_encode: Callable[[Any], bytes] = msgspec.json.Encoder(enc_hook=_plain).encode


def encode_message(
    msg: dict[str, Any],
    peers_key: str | None = None,
    peers: Iterable[bytes] = (),
    fragments: Fragments | None = None,
) -> bytes:
    """JSON of `msg`, with already-encoded peer entries spliced in as
    `peers_key` and, given `fragments`, its `SHARED_FIELDS` spliced from there
    (the message is joined once from its pieces)."""
    shared: list[tuple[str, Any]] = []
    if fragments is not None and any(k in msg for k in SHARED_FIELDS):
        msg = dict(msg)
        shared = [(key, msg.pop(key)) for key in SHARED_FIELDS if key in msg]
    if not shared and peers_key is None:
        return _encode(msg)
    head = _encode(msg)
    out = [head[:-1]] if len(head) > 2 else [b"{"]
    for key, value in shared:
        if len(out) > 1 or len(head) > 2:
            out.append(b",")
        out.append(_key(key))
        assert fragments is not None
        fragments.add(out, value, one_object=key in ONE_OBJECT)
    if peers_key is not None:
        if len(out) > 1 or len(head) > 2:
            out.append(b",")
        out.append(_key(peers_key))
        out.append(b"[%b]" % b",".join(peers))
    out.append(b"}")
    return _spliced(out) if fragments is not None else b"".join(out)


def _spliced(out: list[bytes]) -> bytes:
    """``out`` joined, saying where the long pieces `Fragments` holds are."""
    pieces = [
        (sum(map(len, out[:n])), piece)  # its offset, summed in C
        for n, piece in enumerate(out)
        if type(piece) is SharedPiece and len(piece) >= SPLICE_MIN
    ]
    data = b"".join(out)
    return SplicedMessage(data, tuple(pieces)) if pieces else data


class Deltas:
    """Delta messages that many sessions send alike, encoded once.

    A join or an endpoint change in a mesh gives every viewer the same delta:
    the same peer entries (the shared bytes of `PeerEntries`), the same
    removals and profiles, and nothing of its own. The message is encoded
    once and every session sends the very same `SharedMessage`, so its
    framing (zstd, `server/protocol/mapframe.py`) is shared too; per session
    only HTTP/2 and Noise remain. A delta with top-level fields (a join that
    changes every viewer's filter alike) is encoded per session from shared
    parts, then found by its bytes (`shared`): compressing it is what costs.
    Its ControlTime is the first sender's, reused for at most `HOLD` (the
    client only compares it with its own clock). `encoded` counts the
    messages made (what tests count)."""

    HOLD = timedelta(seconds=1)
    MAX_HELD = 64
    MAX_BYTES = 128 << 10  # bodies held (twice: key and message) at most this long

    def __init__(self) -> None:
        # (peers key, entries, removed, profile ids) -> (profiles, made at, message)
        self._held: dict[tuple[Any, ...], tuple[list[Any], datetime, bytes]] = {}
        self._stamp: tuple[datetime, bytes] | None = None  # (made at, `_control_time`)
        self.encoded = 0

    def message(
        self,
        peers_key: str | None,
        entries: list[bytes],
        removed: list[int],
        profiles: list[Any],
        now: datetime,
    ) -> bytes:
        # Entries are compared by value (bytes hash once, and equal entries
        # are mostly the same object); profiles, dicts, by identity (kept in
        # the value, so an id is not reused while held).
        key = (peers_key, tuple(entries), tuple(removed), tuple(map(id, profiles)))
        held = self._held.get(key)
        if held is not None and timedelta(0) <= now - held[1] < self.HOLD:
            return held[2]
        msg: dict[str, Any] = {}
        if profiles:
            msg["UserProfiles"] = profiles
        if removed:
            msg["PeersRemoved"] = removed
        msg["ControlTime"] = format_time(now)
        data = SharedMessage(encode_message(msg, peers_key, entries))
        self._hold(key, (profiles, now, data))
        return data

    def shared(self, body: bytes, now: datetime) -> bytes:
        """The message `body` (a JSON object without ControlTime) with its
        ControlTime, the very object other sessions that built the same
        body were given."""
        if len(body) > self.MAX_BYTES:  # a full pass over many peers: its own
            return _timed(body, self._control_time(now), shared=False)
        key = (body,)
        held = self._held.get(key)
        if held is not None and timedelta(0) <= now - held[1] < self.HOLD:
            return held[2]
        data = _timed(body, self._control_time(now), shared=True)
        self._hold(key, ([], now, data))
        return data

    def _control_time(self, now: datetime) -> bytes:
        """`_control_time`, formatted once per `HOLD` as a shared message's
        is: a commit under autogroup:self gives every session a body of its
        own, and formatting the time was a tenth of building one."""
        stamp = self._stamp
        if stamp is None or not timedelta(0) <= now - stamp[0] < self.HOLD:
            stamp = self._stamp = (now, _control_time(now))
        return stamp[1]

    def _hold(self, key: tuple[Any, ...], value: tuple[list[Any], datetime, bytes]) -> None:
        if len(self._held) >= self.MAX_HELD:
            self._held.clear()
        self._held[key] = value
        self.encoded += 1


def _timed(body: bytes, stamp: bytes, *, shared: bool) -> bytes:
    """``body`` (a JSON object) with its ControlTime last (``stamp``, a
    `_control_time`), a `SharedMessage` if ``shared``; the pieces a
    `SplicedMessage` body holds stay where they are."""
    data = body[:-1] + (b"," if len(body) > 2 else b"") + stamp
    if type(body) is SplicedMessage:
        return SplicedMessage(data, body.pieces, shared=shared)
    return SharedMessage(data) if shared else data


def _control_time(now: datetime) -> bytes:
    """The last member of a message: its ControlTime, and the closing brace."""
    return b'"ControlTime":"%b"}' % format_time(now).encode()


@lru_cache(maxsize=256)
def _key(name: str) -> bytes:
    """``"name":`` (an object key, made once)."""
    return b"%b:" % _encode(name)

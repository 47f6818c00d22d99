"""One streaming client's map session: what its client holds, and the message
that moves it forward.

A session keeps no copy of its peers. What the client holds is named by
references to shared values: the `NodeView` its peers were built from, the
position in the tailnet's `ChangeLog` (node records and online states changed
since) and the instant expiries were last looked at. So a session costs a
few references however many peers it has, and each wake-up costs what it
changes:

* a volatile change of a few peers (endpoints, online): those peers' entries;
* a join, leave or rename that only gives or takes peers (the tailnet says so
  by waking with ``full=False``): the nodes that changed since the session's
  last message, read from the change log, and its own fields;
* anything else (a commit, its own record): one pass over its peers, in C,
  comparing PeerViews by identity (they are interned), plus the changed nodes.

Encoded peer entries come from the shared `PeerEntries`; user profiles are
sent once per owner, when the first peer of that owner is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime
from itertools import compress
from operator import is_not
from typing import Any
from weakref import ReferenceType, ref

from server.store.model import Node
from server.tailnet.filterjson import holds_own_texts
from server.tailnet.filtermsg import own_filter_message, sends_own_filter_only
from server.tailnet.mapencode import encode_message
from server.tailnet.mapper import MapContext, top_fields
from server.tailnet.nodejson import PeerEntries, owner_of
from server.tailnet.views import NodeView, PeerView, PolicyViews
from server.wire import format_time

__all__ = ["MapSession", "Wake"]


@dataclass(frozen=True, slots=True)
class Wake:
    """What may have changed for one session since it last caught up.

    ``full``: anything (its view, any peer); ``top``: its own fields (self
    node, filter, SSH policy, DNS) and its peers only where nodes changed;
    ``peers``: nodes whose entry may have changed (volatile changes)."""

    full: bool = False
    top: bool = False
    peers: frozenset[int] = frozenset()


_UNSENT = object()


class MapSession:
    """What one streaming client holds, and the deltas that move it forward.

    `step` returns the next message (encoded JSON) or None when the client
    is up to date. `full_passes` counts the steps that looked at every peer
    (the first map, commits): joins and endpoint changes must not add to it.
    """

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self._top_src: dict[str, Any] = {}
        self._top_from: tuple[Any, ...] = ()  # what `_top_src` was made of
        self._self_from: tuple[Any, ...] = ()  # what its own entry was made of
        self._view: NodeView[int] | None = None  # the view the client's peers come from
        # The views `_view` was looked up in, weakly (an idle session must not
        # keep a replaced index alive): the same object gives the same view,
        # and a wave's sessions skip the lookup (two per message).
        self._looked_up: ReferenceType[PolicyViews] | None = None
        self._entries: PeerEntries | None = None
        self._gen = 0
        self._expiry_seen: datetime | None = None
        self._users: Mapping[str, tuple[str, str]] | None = None
        self._profiles: set[int] = set()
        self.full_passes = 0

    def serves(self, ctx: MapContext) -> bool:
        return self.node_id in ctx.nodes and self._view_in(ctx.views) is not None

    def _view_in(self, views: PolicyViews) -> NodeView[int] | None:
        looked_up = self._looked_up
        if looked_up is not None and looked_up() is views:
            return self._view
        return views.get(self.node_id)

    def step(self, ctx: MapContext, wake: Wake, now: datetime) -> bytes | None:
        """The message that brings the client to what `ctx` says, or None.
        The caller checks `serves(ctx)` first."""
        node = ctx.nodes[self.node_id]
        view = self._view_in(ctx.views)
        assert view is not None
        old = self._view
        if view is old and not (wake.full or wake.top) and ctx.users is self._users:
            if ctx.entries is self._entries:
                return self._moved(ctx, view, wake.peers, now)
        msg: dict[str, Any] = {}
        if old is None or wake.full or wake.top:
            # What the top-level fields are made of, compared by identity: a
            # join hands viewers a new view holding the same filter objects.
            # Its own entry is rebuilt only when what it is made of changed
            # (a commit that changes filters does not touch it).
            expired = node.key_expiry is not None and node.key_expiry <= now
            self_src: tuple[Any, ...] = (
                *(node, view.self_cap_map, view.self_allowed_ips, view.self_primary_routes),
                *(ctx.domain, ctx.taildrop, expired),
            )
            src = (view.packet_filter_rules, view.ssh_policy, ctx.derp_map, ctx.dns_config)
            new_self = _differs(self_src, self._self_from)
            if not new_self and _same_but_filter(src, self._top_from):
                # A commit that changed rules only: the other fields are
                # the objects `_top` was last given, so only the filter
                # can differ from what was sent (compared once, not twice).
                self._top_filter(msg, src[0])
            elif new_self or _differs(src, self._top_from):
                self._top(msg, top_fields(ctx, node, view, now, self_node=new_self))
            self._self_from, self._top_from = self_src, src
        if ctx.users is not self._users:
            # Each snapshot brings its own users mapping: only a different
            # one (a name or email changed) resends profiles.
            if self._users is not None and old is not None and ctx.users != self._users:
                # Names may have changed: every owner's profile again.
                self._profiles.clear()
                held = [node, *filter(None, map(ctx.nodes.get, old.peers))]
                if profiles := self._new_profiles(ctx, held):
                    msg["UserProfiles"] = profiles
            self._users = ctx.users
        removed: list[int] = []
        if old is None:
            self.full_passes += 1
            send = sorted(view.peers)
            msg["UserProfiles"] = self._new_profiles(ctx, [node])
            self._expiry_seen = now
        else:
            send, removed = self._peer_changes(ctx, old, view, wake, now)
        # Node changes not named in a volatile wake-up are of nodes it does
        # not see: a view that shows one later names it (a new peer, or a
        # topology change read from the log).
        self._entries, self._gen, self._view = ctx.entries, ctx.entries.log.gen, view
        self._looked_up = ref(ctx.views)
        peers = list(filter(None, map(ctx.nodes.get, send)))
        profiles = self._new_profiles(ctx, [node, *peers] if wake.full or wake.top else peers)
        if profiles:
            msg["UserProfiles"] = [*msg.get("UserProfiles", ()), *profiles]
        online, get = ctx.online, ctx.entries.get
        entries = [get(p, view.peers[p.id], p.id in online, now) for p in peers]
        if not msg and not entries and not removed:
            return None
        key = None if not entries else "Peers" if old is None else "PeersChanged"
        if msg.keys() <= {"UserProfiles"}:
            # Nothing of its own: the message its fellow viewers send too.
            profiles = msg.get("UserProfiles", [])
            return ctx.entries.deltas.message(key, entries, removed, profiles, now)
        if removed:
            msg["PeersRemoved"] = removed
        if old is None:  # a whole map: this client's alone
            msg["ControlTime"] = format_time(now)
            return encode_message(msg, key, entries, ctx.entries.fragments)
        if key is None and sends_own_filter_only(msg):
            # The commit's usual message under autogroup:self, whole from
            # its filter's kept pieces (filtermsg.py): what the lines
            # below make of it, in one join.
            deltas = ctx.entries.deltas
            return own_filter_message(ctx.entries.fragments, msg["PacketFilter"], deltas.stamp(now))
        body = encode_message(msg, key, entries, ctx.entries.fragments)
        return ctx.entries.deltas.shared(body, now, own=holds_own_texts(msg))

    def _moved(
        self, ctx: MapContext, view: NodeView[int], moved: frozenset[int], now: datetime
    ) -> bytes | None:
        """Only volatile fields of `moved` changed (endpoints, online) and the
        client holds this view: what the general path sends then (the
        delta of the moved peers it sees, which its fellow viewers send
        alike), without its passes (an endpoint wave is this, per viewer)."""
        self._gen = ctx.entries.log.gen
        seen, nodes = view.peers, ctx.nodes
        peers = [nodes[p] for p in sorted(moved) if p in seen and p in nodes]
        if not peers:
            return None
        online, get = ctx.online, ctx.entries.get
        entries = [get(p, seen[p.id], p.id in online, now) for p in peers]
        profiles = self._new_profiles(ctx, peers)
        return ctx.entries.deltas.message("PeersChanged", entries, [], profiles, now)

    def shared_peer(self, ctx: MapContext, mover: int, owner: int, gen: int) -> PeerView | None:
        """For a wave (wave.py): how this client sees `mover`, when its next
        message is the delta that every viewer seeing it so sends alike
        (what `step` sends through `_moved`: it holds the view, entries and
        users of `ctx`, and was sent the profile of `owner`, the mover's).
        `gen` is `ctx`'s change log position, which the delta moves it to.
        None: it must `step`."""
        view = self._held_view(ctx) if owner in self._profiles else None
        if view is None or mover not in view.peers:
            return None
        self._gen = gen
        return view.peers[mover]

    def shared_peers(
        self, ctx: MapContext, movers: Sequence[int], owners: AbstractSet[int], gen: int
    ) -> list[PeerView] | None:
        """`shared_peer` for several movers (a coalesced wave), in order;
        None unless it sees them all."""
        view = self._held_view(ctx) if self._profiles.issuperset(owners) else None
        if view is None:
            return None
        seen = view.peers
        for mover in movers:
            if mover not in seen:
                return None
        self._gen = gen
        return [seen[mover] for mover in movers]

    def _held_view(self, ctx: MapContext) -> NodeView[int] | None:
        """The view it holds when `ctx` serves it from that very view, with
        the entries and users it was sent from (so `step` goes to `_moved`)."""
        looked_up, view = self._looked_up, self._view
        if (
            view is None
            or ctx.entries is not self._entries
            or ctx.users is not self._users
            or self.node_id not in ctx.nodes
        ):
            return None
        if looked_up is None or looked_up() is not ctx.views:
            # Views rebuilt since, by a change that left its view as it was
            # (`step` then sends the same delta): known for the next wave.
            if ctx.views.get(self.node_id) is not view:
                return None
            self._looked_up = ref(ctx.views)
        return view

    def _top(self, msg: dict[str, Any], top: dict[str, Any]) -> None:
        for key, value in top.items():
            src = self._top_src.get(key, _UNSENT)
            # The very object sent last time (DNS, DERP map, adopted views),
            # or a rebuilt but equal one (each recompile renders filters
            # anew), told apart in C without encoding it.
            if src is value or src == value:
                continue
            self._top_src[key] = value
            msg[key] = value

    def _top_filter(self, msg: dict[str, Any], rules: Any) -> None:
        """`_top` for the packet filter alone."""
        sent = self._top_src.get("PacketFilter", _UNSENT)
        if sent is rules or sent == rules:
            return
        self._top_src["PacketFilter"] = rules
        msg["PacketFilter"] = rules

    def _peer_changes(
        self, ctx: MapContext, old: NodeView[int], view: NodeView[int], wake: Wake, now: datetime
    ) -> tuple[list[int], list[int]]:
        """(peers to send, peers to remove) against what the client holds."""
        new, held = view.peers, old.peers
        ids: set[int] | None = None  # None: what the client holds is unknown
        if ctx.entries is not self._entries:
            pass  # another domain: every entry is new
        elif view is old:
            # Nothing but volatile changes since: the wake names every changed peer.
            ids = set(wake.peers)
        elif (since := ctx.entries.log.since_among(self._gen, new, held)) is not None:
            ids = set(since).union(wake.peers)
        if wake.full or wake.top or view is not old:
            # Peers whose key expired since entries were last looked at over.
            if ids is not None and self._expiry_seen is not None and now > self._expiry_seen:
                ids.update(ctx.expiries.between(ctx.nodes, self._expiry_seen, now))
            self._expiry_seen = max(now, self._expiry_seen or now)
        if ids is None:  # what the client holds is unknown: everything again
            self.full_passes += 1
            return sorted(new), sorted(held.keys() - new.keys())
        if view is not old and wake.full and new is not held:
            # The view may differ anywhere: compare PeerViews (interned, so
            # mostly by identity, in C) and membership. (The same peers
            # object, which a commit that changes no peer hands on, says
            # at once that none did.)
            self.full_passes += 1
            moved = compress(new, map(is_not, new.values(), map(held.get, new)))
            ids.update(p for p in moved if held.get(p) != new[p])
            return sorted(p for p in ids if p in new), sorted(held.keys() - new.keys())
        if not ids:  # a commit that changed no peer, read from a caught-up log
            return [], []
        send = sorted(p for p in ids if p in new)
        removed = sorted(p for p in ids if p in held and p not in new)
        return send, removed

    def _new_profiles(self, ctx: MapContext, nodes: list[Node]) -> list[Any]:
        """Profiles of the owners of `nodes` that the client was not sent yet."""
        out = []
        for node in nodes:
            uid = owner_of(node)[0]
            if uid not in self._profiles:
                self._profiles.add(uid)
                out.append(ctx.entries.profile(node, ctx.users))
        return out


def _same_but_filter(src: tuple[Any, ...], held: tuple[Any, ...]) -> bool:
    """Whether `src` (filter, SSH policy, DERP map, DNS) is what `held` was
    made of but for its filter, which is another object: the rest the very
    objects or equal ones (a recompile renders SSH policies anew), which
    `_top` would find unchanged."""
    return len(held) == len(src) and src[0] is not held[0] and src[1:] == held[1:]


def _differs(src: tuple[Any, ...], held: tuple[Any, ...]) -> bool:
    """Whether what a field is made of changed: by identity first, then by
    value (a recompile rebuilds equal tuples and cap maps), item by item in
    C (tuple comparison does both; a generator here was a tenth of a
    commit's step per session)."""
    return src != held

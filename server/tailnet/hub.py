"""The running tailnet: the serving snapshot × the node registry, and the
map sessions that follow them.

Three kinds of change, three costs:
* a new snapshot (a commit) recompiles the policy index once, keeps the
  views its changed rules cannot reach, and asks only the sessions whose view
  may differ for a fresh delta against what they hold;
* a topology change (node joins, leaves, is renamed or re-keyed) rebuilds the
  index reusing every view it cannot affect, and wakes only the sessions
  whose view may have changed;
* a volatile change of one node (endpoints, disco key, home DERP, online)
  recompiles nothing: only the sessions of nodes that can see it get that
  one peer entry again;
* keep-alives cost nothing here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gitctl.policy import Policy
from gitctl.snapshot import Snapshot
from gitctl.tailnet import TailnetSettings
from server.logs import event
from server.store.model import Node
from server.tailnet.mapper import MapContext, PeerEntries
from server.tailnet.registry import NodeChange
from server.tailnet.views import PolicyViews, advertised_routes, compute_views
from server.wire import DerpRegion, derp_map_json, dns_config_json, stable_user_id

__all__ = ["SessionHandle", "Tailnet", "TailnetSource"]


@dataclass(frozen=True, slots=True)
class TailnetSource:
    """What the server takes from a snapshot; built once per swap."""

    id: str
    domain: str
    dns_config: Mapping[str, Any]
    users: Mapping[str, tuple[str, str]]  # name -> (email, display name)
    policy: Policy
    # Routes approved in git: by machine key text ("mkey:…") or by tag. autoApprovers
    # are the compiler's: it approves with the users resolved to emails.
    explicit_routes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    settings: TailnetSettings | None = None  # prefixes, key expiry, ephemeral timeout, DERP

    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> TailnetSource:
        dns = snap.dns
        base = dns.base_domain or ""
        cfg = dns_config_json(
            magic_dns=bool(dns.magic_dns),
            base_domain=base,
            override_local_dns=bool(dns.override_local_dns),
            global_nameservers=tuple(dns.nameservers),
            split={k: tuple(v) for k, v in dict(dns.split).items()},
            search_domains=tuple(dns.search_domains),
            extra_records=tuple((r.name, r.type, r.value) for r in dns.extra_records),
        )
        users = {u.name: (u.email, u.display_name or u.name) for u in snap.users}
        explicit: dict[str, tuple[str, ...]] = {}
        for approval in snap.routes:
            target = approval.machine or approval.tag
            if target:
                explicit[target] = explicit.get(target, ()) + tuple(str(r) for r in approval.routes)
        return cls(
            id=snap.id,
            domain=base,
            dns_config=cfg,
            users=users,
            policy=snap.policy,
            explicit_routes=explicit,
            settings=snap.settings,
        )


class SessionHandle:
    """One open streaming map request; the tailnet marks what it must resend."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.wake = asyncio.Event()
        self.full = True
        self.peers: set[int] = set()
        self.closed = False

    def mark_full(self) -> None:
        self.full = True
        self.peers.clear()
        self.wake.set()

    def mark_peer(self, peer_id: int) -> None:
        # A pending full refresh re-reads every peer anyway (a connect storm
        # marks each new session's viewers: most of them are still pending).
        if not self.full:
            self.peers.add(peer_id)
        self.wake.set()

    def take(self) -> tuple[bool, set[int]]:
        full, peers = self.full, self.peers
        self.full, self.peers = False, set()
        self.wake.clear()
        return full, peers


class Tailnet:
    """The serving snapshot × the registered nodes, and the sessions that
    follow them. It writes nothing: node changes arrive as `NodeChange`
    events from the registry (`apply`), snapshots through `swap_source`.

    Nodes whose owner the serving snapshot does not declare are not served:
    git is the truth about people, so a commit that removes a user cuts that
    user's nodes off (they leave every map); `cut_off` names them.
    """

    def __init__(
        self,
        *,
        nodes: Sequence[Node],
        source: TailnetSource,
        derp_regions: Sequence[DerpRegion],
        log: logging.Logger,
        online: Iterable[int] = (),
    ) -> None:
        self._log = log
        self._source = source
        self._derp_regions = tuple(derp_regions)
        self._derp_map = self._derp_map_of(source)
        self._sessions: dict[int, set[SessionHandle]] = {}
        self._online = set(online)
        self._records: dict[int, Node] = {n.id: n for n in sorted(nodes, key=lambda n: n.id)}
        self._ctx = self._build_context()

    # What the maps are built from

    @property
    def source(self) -> TailnetSource:
        return self._source

    @property
    def context(self) -> MapContext:
        return self._ctx

    def cut_off(self) -> list[Node]:
        """Registered nodes that are not served: their user is not in git."""
        served = self._ctx.nodes
        return [n for n in self._records.values() if n.id not in served]

    def _served(self, node: Node) -> bool:
        return bool(node.tags) or node.user is None or node.user in self._source.users

    def _build_context(self, previous: MapContext | None = None) -> MapContext:
        nodes = [n for n in self._records.values() if self._served(n)]
        if hasattr(self, "_ctx"):
            # Unchanged records stay the very objects the last context had, so
            # map refreshes find the changed ones by identity.
            held = self._ctx.nodes
            nodes = [
                old if (old := held.get(n.id)) is not None and (old is n or old == n) else n
                for n in nodes
            ]
        src = self._source
        users = [(stable_user_id(name), name, email) for name, (email, _) in src.users.items()]
        views = compute_views(
            src.policy,
            users,
            nodes,
            self._approved_routes(nodes),
            previous=previous.views if previous else None,
            previous_nodes=previous.nodes if previous else None,
            reuse=self._ctx.views if hasattr(self, "_ctx") else None,
        )
        return MapContext(
            domain=src.domain,
            nodes={n.id: n for n in nodes},
            views=views,
            derp_map=self._derp_map,
            dns_config=src.dns_config,
            users=src.users,
            online=frozenset(self._online),
            # Encoded peer entries outlive contexts; they depend on the domain only.
            entries=self._ctx.entries
            if hasattr(self, "_ctx") and self._ctx.domain == src.domain
            else PeerEntries(src.domain),
        )

    def _derp_map_of(self, source: TailnetSource) -> dict[str, Any]:
        """The server's own DERP region, as settings.yaml names it (or left
        out there), and the extra regions settings.yaml lists."""
        settings = source.settings
        if settings is None:
            return derp_map_json(self._derp_regions)
        emb = settings.embedded_derp
        own = [
            replace(
                r,
                region_id=emb.region_id,
                region_code=emb.region_code,
                region_name=emb.region_name,
            )
            for r in self._derp_regions
            if emb.enabled
        ]
        return derp_map_json(own, settings.derp_regions)

    def enabled_routes(self, node: Node) -> tuple[str, ...]:
        """The routes `node` advertises that the serving commit approves."""
        return self._approved_routes([node]).get(node.id, ())

    def _approved_routes(self, nodes: Sequence[Node]) -> dict[int, tuple[str, ...]]:
        """The advertised routes git approves by hand: for the machine (its key
        stays with it through renames and re-registrations) or for a tag."""
        explicit = self._source.explicit_routes
        out: dict[int, tuple[str, ...]] = {}
        for node in nodes:
            advertised = advertised_routes(node)
            if not advertised:
                continue
            allowed: set[str] = set(explicit.get(node.machine_key.text, ()))
            for tag in node.tags:
                allowed.update(explicit.get(tag, ()))
            approved = tuple(r for r in advertised if r in allowed)
            if approved:
                out[node.id] = approved
        return out

    # Changes

    def swap_source(self, source: TailnetSource) -> None:
        """Serve a new snapshot: one reference swap, then the sessions whose
        maps may differ catch up.

        When only the policy changed, the compiler names the nodes its new
        rules can reach and every other view is kept (as is its session,
        asleep); a new domain, DNS config, user list or DERP map reaches every map.
        """
        old, old_derp, old_ctx = self._source, self._derp_map, self._ctx
        self._source = source
        derp_map = self._derp_map_of(source)
        if derp_map != old_derp:
            self._derp_map = derp_map
        try:
            self._ctx = self._build_context(previous=self._ctx)
        except Exception:
            self._source, self._derp_map = old, old_derp
            raise
        self._log.info(
            "serving snapshot %s", source.id[:12], extra=event("snapshot.served", commit=source.id)
        )
        self._close_unserved(old_ctx)
        changed = self._ctx.views.changed
        if changed is None or (old.domain, old.dns_config, old.users, old_derp) != (
            source.domain,
            source.dns_config,
            source.users,
            self._derp_map,
        ):
            self._wake_all()
            return
        self._wake(changed)

    def apply(self, change: NodeChange) -> None:
        """A node changed (the registry's event stream)."""
        if change.kind == "removed":
            self._records.pop(change.node_id, None)
            self._online.discard(change.node_id)
            self._ctx.entries.forget(change.node_id)  # its entry and its map memo
            self._end_sessions(change.node_id)
            self._recompile()
            return
        node = change.node
        if node is None:
            return
        self._records[node.id] = node
        if change.online is not None:
            (self._online.add if change.online else self._online.discard)(node.id)
        if change.kind == "topology" or (node.id in self._ctx.nodes) != self._served(node):
            self._recompile()
            return
        if node.id not in self._ctx.nodes:
            return  # not served: nobody sees it
        nodes = dict(self._ctx.nodes)
        nodes[node.id] = node
        self._ctx = replace(self._ctx, nodes=nodes, online=frozenset(self._online))
        self._notify_viewers(node.id)
        if change.online is None:
            for handle in self._sessions.get(node.id, ()):
                handle.mark_full()  # its own self entry changed

    def _recompile(self) -> None:
        """Nodes joined, left or changed what the policy sees. Views the
        change cannot touch are reused; only their sessions sleep on."""
        old_ctx = self._ctx
        self._ctx = self._build_context(previous=old_ctx)
        self._close_unserved(old_ctx)
        changed = self._ctx.views.changed
        if changed is None:
            self._wake_all()
        else:
            self._wake(changed)

    def _close_unserved(self, old: MapContext) -> None:
        for node_id in old.nodes.keys() - self._ctx.nodes.keys():
            if node_id in self._records:
                node = self._records[node_id]
                self._log.warning(
                    "node %d %s is cut off: user %r is not in tailnet.d",
                    node_id,
                    node.given_name,
                    node.user,
                    extra=event(
                        "node.cut_off",
                        node=node_id,
                        node_name=node.given_name,
                        user=node.user,
                        commit=self._source.id,
                    ),
                )
            self._end_sessions(node_id)

    def _end_sessions(self, node_id: int) -> None:
        for handle in self._sessions.pop(node_id, set()):
            handle.closed = True
            handle.wake.set()

    # Sessions

    def open_session(self, node_id: int) -> SessionHandle:
        handle = SessionHandle(node_id)
        self._sessions.setdefault(node_id, set()).add(handle)
        self._ctx.views.get(node_id)  # its first map needs it; its viewers are its peers
        return handle

    def close_session(self, handle: SessionHandle) -> None:
        handles = self._sessions.get(handle.node_id)
        if handles is None:
            return
        handles.discard(handle)
        if not handles:
            del self._sessions[handle.node_id]

    def waiting(self) -> list[SessionHandle]:
        """Open sessions woken and not yet caught up (they owe their client a message)."""
        return [h for handles in self._sessions.values() for h in handles if h.wake.is_set()]

    def serves(self, node_id: int) -> bool:
        return node_id in self._ctx.nodes

    def is_online(self, node_id: int) -> bool:
        return node_id in self._online

    def online_ids(self) -> frozenset[int]:
        return frozenset(self._online)

    def _notify_viewers(self, node_id: int) -> None:
        for viewer in self._ctx.views.visible_to(node_id):
            for handle in self._sessions.get(viewer, ()):
                handle.mark_peer(node_id)

    def _wake(self, node_ids: Iterable[int]) -> None:
        for node_id in node_ids:
            for handle in self._sessions.get(node_id, ()):
                handle.mark_full()

    def _wake_all(self) -> None:
        for handles in self._sessions.values():
            for handle in handles:
                handle.mark_full()

    @property
    def views(self) -> PolicyViews:
        return self._ctx.views

"""How the hub's maps are built: the live nodes the serving snapshot (or a
canary's candidate) serves, the policy index over them and the `MapContext`
made from it, reusing what the last build left wherever the changes since
cannot reach (the base of `Tailnet`, server/tailnet/hub.py, which owns the
state declared here and decides when a build is due).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from functools import partial
from typing import Any

from gitctl.policy import CompiledTailnet
from gitctl.policy.topology import TopologyUser
from server.store.model import Node
from server.tailnet.advertisers import Advertisers
from server.tailnet.expiries import Expiries
from server.tailnet.mapper import MapContext
from server.tailnet.nodejson import PeerEntries
from server.tailnet.nodemaps import node_map, online_set, same
from server.tailnet.owners import same_owners
from server.tailnet.persistent import PersistentIds, PersistentMap
from server.tailnet.source import TailnetSource
from server.tailnet.views import (
    TopologyNodes,
    advertised_routes,
    compile_views,
    compute_views,
    topology_users,
)
from server.wire import DerpRegion, derp_map_json, stable_user_id

__all__ = ["TailnetContexts"]


class TailnetContexts:
    """The records, runtime state and memos a build reads (set by
    `Tailnet.__init__`), and the build itself."""

    _log: logging.Logger
    _login_groups: dict[str, tuple[str, ...]]
    _clock: Callable[[], datetime]
    _source: TailnetSource
    _derp_regions: tuple[DerpRegion, ...]
    _derp_map: dict[str, Any]
    _online: set[int]
    _unhealthy: set[int]
    _records: dict[int, Node]
    _live_memo: tuple[TailnetSource, dict[int, Node]] | None
    _topology_nodes: TopologyNodes
    _router_ids: set[int]
    _dirty: set[int]
    _built_memo: tuple[TailnetSource, dict[int, Node]] | None
    _users: tuple[TailnetSource, list[tuple[int, str, str]], tuple[TopologyUser, ...]] | None
    _primaries: Mapping[str, int]
    _routers_memo: tuple[MapContext, TailnetSource, dict[int, tuple[str, ...]], Advertisers] | None
    _ctx: MapContext

    def _served(self, node: Node, source: TailnetSource | None = None) -> bool:
        """In the maps: its owner is in git (or it is tagged), and it is not
        waiting for device approval."""
        src = source or self._source
        owned = bool(node.tags) or node.user is None or src.owner(node).user in src.users
        return owned and node.approved

    def _live(self, source: TailnetSource) -> list[Node]:
        """The nodes `source` serves, each with its owner as `source` names it."""
        memo = self._live_memo
        if memo is not None and memo[0] is not source and same_owners(memo[0], source):
            # The same nodes, owned alike (server/tailnet/owners.py): the memo is
            # `source`'s too, and still the one the serving context was built from.
            carried = (source, memo[1])
            self._built_memo = carried if memo is self._built_memo else self._built_memo
            self._live_memo = memo = carried
        if memo is not None and memo[0] is source:
            return list(memo[1].values())
        live = {n.id: source.owner(n) for n in self._records.values() if self._served(n, source)}
        if source is self._source:
            self._live_memo = (source, live)
        return list(live.values())

    def _relive(self, node_id: int) -> None:
        """The memo of `_live` after the record of `node_id` changed (or went);
        forgotten when keeping it would change the order of the nodes."""
        node = self._records.get(node_id)
        if node is not None and advertised_routes(node):
            self._router_ids.add(node_id)
        else:
            self._router_ids.discard(node_id)
        if self._live_memo is None:
            return
        source, live = self._live_memo
        if node is None or not self._served(node, source):
            live.pop(node_id, None)
        elif node_id in live or not live or node_id > next(reversed(live)):
            live[node_id] = source.owner(node)
        else:
            self._live_memo = None

    def _users_of(
        self, source: TailnetSource
    ) -> tuple[list[tuple[int, str, str]], tuple[TopologyUser, ...]]:
        """`source`'s users as (id, name, email) and as the compiler sees them,
        made once per source (not per join: a join compares them by identity)."""
        held = self._users
        if held is None or held[0] is not source:
            users = [
                (stable_user_id(name), name, email) for name, (email, _) in source.users.items()
            ]
            held = self._users = (source, users, topology_users(users))
        return held[1], held[2]

    def _dirty_since_built(self, source: TailnetSource) -> set[int] | None:
        """The ids the live nodes of `source` may differ in from the serving
        context's, when known (None: compare every node): `source` is the
        serving one, or serves the same nodes (`_live` carried its memo over),
        and that memo is the one that context was built from."""
        memo = self._live_memo
        if memo is not None and memo[0] is source and memo is self._built_memo:
            return self._dirty
        return None

    def _live_routers(self, source: TailnetSource, nodes: Sequence[Node]) -> Sequence[Node]:
        """The nodes of `nodes` (`source`'s live ones) advertising routes: from
        `_router_ids` when the memo of `_live` holds them, else a pass."""
        memo = self._live_memo
        if memo is None or memo[0] is not source or len(memo[1]) != len(nodes):
            return [n for n in nodes if advertised_routes(n)]
        live = memo[1]
        return [live[i] for i in sorted(self._router_ids) if i in live]

    def _compile_job(
        self, source: TailnetSource, previous: MapContext | None
    ) -> Callable[[], CompiledTailnet[int]]:
        """The policy index of `source` over the nodes as they are now (compared
        with `previous`'s), as a call that reads only what it holds (frozen
        records, copies of the runtime state): a worker thread may run it."""
        nodes = self._live(source)
        users, topology_users = self._users_of(source)
        routers = self._live_routers(source, nodes)
        approved = self._approved_routes(routers, source)
        online, unhealthy, topology_node = self._online, self._unhealthy, self._topology_nodes
        offline = frozenset(n.id for n in routers if n.id not in online or n.id in unhealthy)
        topology_node.keep(self._records)  # converted once per change, here: not per compile
        no_routes: tuple[str, ...] = ()
        dirty = self._dirty_since_built(source)
        if dirty is None:
            converted = [
                topology_node(n, approved.get(n.id, no_routes), n.id not in offline) for n in nodes
            ]
        else:  # only the changed records and the routers (online, approvals) convert again
            live = self._live_memo[1] if self._live_memo is not None else {}
            for n in [live[i] for i in dirty if i in live] + list(routers):
                topology_node(n, approved.get(n.id, no_routes), n.id not in offline)
            converted = topology_node.of(live)
        return partial(
            compile_views,
            source.policy,
            users,
            nodes,
            approved,
            now=self._clock(),
            offline_routers=offline,
            primaries=dict(self._primaries),
            groups=self._group_members(),
            against=previous.views.compiled if previous is not None else None,
            topology_nodes=converted,
            users_held=topology_users,
            keys=None if dirty is None else topology_node.listed,  # (`of` listed `live`)
        )

    def _build_context(
        self,
        previous: MapContext | None = None,
        source: TailnetSource | None = None,
        compiled: CompiledTailnet[int] | None = None,
    ) -> MapContext:
        """The maps of `source` (the serving snapshot's by default) over the
        live nodes; a candidate's leaves the primaries election alone.
        `compiled`: the index `_compile_job` made for these very records,
        else it is built here."""
        src = source or self._source
        if compiled is None:
            compiled = self._compile_job(src, previous)()
        # "extended" (a join grew the last index), "reused" or "full: <why not>"
        self._log.debug("policy index: %s", getattr(compiled.visibility, "origin", "full"))
        nodes = self._live(src)
        held: Mapping[int, Node] = self._ctx.nodes if hasattr(self, "_ctx") else {}
        # Only these ids may differ from `held` (None: any), when `previous` is `held`'s.
        serving = previous is not None and previous is getattr(self, "_ctx", None)
        dirty = self._dirty_since_built(src) if serving else None
        memo = self._live_memo[1] if self._live_memo is not None and source is None else None
        if held:
            # Unchanged records stay the very objects the last context had, so
            # map refreshes find the changed ones by identity (the memo of
            # `_live` keeps them too, so the next build looks at changes only).
            lookup = held.lookup if isinstance(held, PersistentMap) else held.get
            if dirty is not None and memo is not None:
                for i in dirty:
                    n, old = memo.get(i), lookup(i)
                    if n is not None and old is not None and n is not old and old == n:
                        memo[i] = old
                nodes = list(memo.values())
            else:
                nodes = [
                    old if (old := lookup(n.id)) is not None and (old is n or old == n) else n
                    for n in nodes
                ]
                if memo is not None and len(memo) == len(nodes):
                    memo.update((n.id, n) for n in nodes)
        users, _ = self._users_of(src)
        views = compute_views(
            src.policy,
            users,
            nodes,
            self._approved_routes(self._live_routers(src, nodes), src),
            previous=previous.views if previous else None,
            previous_nodes=previous.nodes if previous else None,
            reuse=self._ctx.views if hasattr(self, "_ctx") else None,
            compiled=compiled,
            records=None if dirty is None or memo is None else (memo, dirty),
        )
        if source is None:
            self._primaries = views.primaries
        held_ctx: MapContext | None = getattr(self, "_ctx", None)
        # Encoded peer entries outlive contexts; they depend on the domain only.
        entries = (
            held_ctx.entries
            if held_ctx is not None and held_ctx.domain == src.domain
            else PeerEntries(src.domain)
        )
        # A serving build continues the serving lineage, a canary build the canary's.
        lineage = held_ctx if source is None else previous
        if source is not None and previous is held_ctx:
            lineage = None  # the first canary map: a lineage of its own
        ctx = MapContext(
            domain=src.domain,
            nodes=node_map(held, nodes, None if dirty is None or memo is None else (memo, dirty)),
            views=views,
            derp_map=self._derp_map if source is None else self._derp_map_of(src),
            # Equal values stay the very objects the last context had: sessions
            # then skip them by identity (a commit rebuilds both).
            dns_config=same(
                src.dns_config, self._ctx.dns_config if hasattr(self, "_ctx") else None
            ),
            users=same(src.users, self._ctx.users if hasattr(self, "_ctx") else None),
            online=online_set(previous.online if previous else None, self._online, dirty),
            entries=entries,
            expiries=lineage.expiries
            if lineage is not None and lineage.entries is entries
            else Expiries(entries.log),
        )
        # What the log says changed is counted from the map this one replaces
        # (a rebuild without `previous` replaces the serving one too).
        base = previous or held_ctx
        if base is not None and base.entries is ctx.entries:
            before, after = base.nodes, ctx.nodes
            was, now = base.online, ctx.online
            if dirty is not None and memo is not None:
                ids = sorted(dirty)
                nodes_changed = [i for i in ids if before.get(i) is not after.get(i)]
                # (`online_set` moved only these: no pass over the online set)
                online_changed = (
                    [i for i in ids if (i in was) != (i in now)]
                    if isinstance(was, PersistentIds)
                    else sorted(was ^ now)
                )
            else:
                nodes_changed = [i for i, n in after.items() if before.get(i) is not n] + [
                    i for i in before if i not in after
                ]
                online_changed = sorted(was ^ now)
            ctx.entries.log.record(nodes_changed + ([] if was is now else online_changed))
        if source is None:  # the serving context: what changes from here on is counted
            self._dirty = set()
            self._built_memo = self._live_memo
        return ctx

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

    def _approved_routes(
        self, nodes: Sequence[Node], source: TailnetSource | None = None
    ) -> dict[int, tuple[str, ...]]:
        """The advertised routes approved by hand: in git, for the machine (its key
        stays with it through renames and re-registrations) or for a tag; and, where
        settings.yaml allows runtime_route_approval, by an operator at runtime."""
        src = source or self._source
        explicit = src.explicit_routes
        runtime = src.settings is not None and src.settings.runtime_route_approval
        out: dict[int, tuple[str, ...]] = {}
        for node in nodes:
            advertised = advertised_routes(node)
            if not advertised:
                continue
            allowed: set[str] = set(explicit.get(node.machine_key.text, ()))
            for tag in node.tags:
                allowed.update(explicit.get(tag, ()))
            if runtime:
                allowed.update(node.runtime_routes)
            approved = tuple(r for r in advertised if r in allowed)
            if approved:
                out[node.id] = approved
        return out

    def _group_members(self) -> dict[str, tuple[str, ...]]:
        members: dict[str, list[str]] = {}
        for email, groups in sorted(self._login_groups.items()):
            for group in groups:
                members.setdefault(group, []).append(email)
        return {group: tuple(emails) for group, emails in sorted(members.items())}

"""The running tailnet: the serving snapshot × the node registry, and the
map sessions that follow them.

Three kinds of change, three costs:
* a new snapshot (a commit) recompiles the policy index once, keeps the
  views its changed rules cannot reach, and asks only the sessions whose view
  may differ for a fresh delta against what they hold;
* a topology change (node joins, leaves, is renamed or re-keyed) rebuilds the
  index reusing every view it cannot affect, and wakes only the sessions
  whose view may have changed; changes arriving close together (a connect
  storm, a burst of registrations) share one rebuild: the first marks the
  tailnet unsettled and schedules `settle` a few milliseconds later, and
  anything that reads the maps before then settles first;
* a volatile change of one node (endpoints, disco key, home DERP, online)
  recompiles nothing: only the sessions of nodes that can see it get that
  one peer entry again;
* keep-alives cost nothing here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime

from gitctl.policy import CompiledTailnet
from gitctl.policy.addrs import EXIT_ROUTES
from gitctl.policy.topology import TopologyUser
from server.gcpolicy import GcPolicy
from server.logs import event
from server.store.model import Node
from server.tailnet.advertisers import Advertisers, advertisers_of
from server.tailnet.coalesce import COALESCE_SECONDS, Defer, LoopDefer, defer_on_loop
from server.tailnet.cutoff import CutOff
from server.tailnet.handle import Deliveries, SessionHandle
from server.tailnet.hubsettle import TailnetSettle
from server.tailnet.mapper import MapContext
from server.tailnet.persistent import PersistentIds, PersistentMap
from server.tailnet.registry import NodeChange
from server.tailnet.source import TailnetSource, with_runtime_users
from server.tailnet.users import UserChange
from server.tailnet.views import (
    PolicyViews,
    TopologyNodes,
    advertised_routes,
)
from server.tailnet.waking import PacedWakes
from server.wire import DerpRegion

__all__ = [
    "COALESCE_SECONDS",
    "Defer",
    "SessionHandle",
    "Tailnet",
    "defer_on_loop",
]


class Tailnet(TailnetSettle):
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
        clock: Callable[[], datetime],
        online: Iterable[int] = (),
        primaries: Mapping[str, int] | None = None,
        login_groups: Mapping[str, tuple[str, ...]] | None = None,
        runtime_users: Iterable[str] = (),
        defer: Defer | None = None,
        gc_policy: GcPolicy | None = None,
    ) -> None:
        self._log = log
        # Old-generation collections held while a commit fans out, its result frozen after.
        self._gc = gc_policy
        self._defer = LoopDefer() if defer is None else defer
        self._unsettled = False  # a recompile is due (scheduled with `defer`)
        self._after_settle: list[Callable[[], None]] = []  # called once it is applied
        # Nodes whose volatile change (endpoints, online) their viewers are told
        # of at the next wave (`defer`): changes arriving together, one message.
        self._volatile: set[int] = set()
        self._volatile_due = False
        self._beyond_nodes = False  # and not only for node records changing
        self._generation = 0  # counts what makes an index built before it stale
        # email -> policy groups of that user's last identity-provider login
        self._login_groups: dict[str, tuple[str, ...]] = dict(login_groups or {})
        self._clock = clock  # when `expires` entries count; read at each compile
        self._runtime_users = set(runtime_users)  # emails admitted at runtime
        self._source = source = with_runtime_users(source, self._runtime_users)
        self._derp_regions = tuple(derp_regions)
        self._derp_map = self._derp_map_of(source)
        self._sessions: dict[int, set[SessionHandle]] = {}
        self.wakes = PacedWakes()  # many sessions woken at once: a batch per loop iteration
        self.deliveries = Deliveries()  # woken sessions whose streams idle (handle.py)
        self._online = set(online)
        self._unhealthy: set[int] = set()  # routers not answering probes (for the election)
        self._records: dict[int, Node] = {n.id: n for n in sorted(nodes, key=lambda n: n.id)}
        # The serving source's live nodes (`_live`), kept up to date node by node:
        # a recompile for a join then does not test every record again.
        self._live_memo: tuple[TailnetSource, dict[int, Node]] | None = None
        self._topology_nodes = TopologyNodes()  # each record as the compiler sees it
        # Records advertising routes (approved routes, offline routers and
        # primaries concern only these): found without a pass over every node.
        self._router_ids = {i for i, n in self._records.items() if advertised_routes(n)}
        # What changed since the serving context was built: the ids whose
        # records changed, and the `_live_memo` that build read (the ids are
        # all it may differ in while that memo is still the one kept up to
        # date). A settle for a join then costs what changed, not the tailnet.
        self._dirty: set[int] = set()
        self._built_memo: tuple[TailnetSource, dict[int, Node]] | None = None
        self._users: (
            tuple[TailnetSource, list[tuple[int, str, str]], tuple[TopologyUser, ...]] | None
        ) = None
        # subnet -> primary router, last served: runtime state, like who is online
        self._primaries: Mapping[str, int] = dict(primaries or {})
        # `_routers()` per context and source: the router probes ask every second.
        self._routers_memo: (
            tuple[MapContext, TailnetSource, dict[int, tuple[str, ...]], Advertisers] | None
        ) = None
        self._cut_off = CutOff(self._records)  # what `cut_off` answers, change by change
        self._ctx = self._build_context()
        # Canary rollout: the candidate snapshot, the tag that picks its nodes,
        # and its maps over the same nodes (None: every node is on `_source`).
        self._canary: tuple[TailnetSource, str, MapContext] | None = None

    # What the maps are built from

    @property
    def source(self) -> TailnetSource:
        return self._source

    @property
    def context(self) -> MapContext:
        self.settle()
        return self._ctx

    def context_for(self, node_id: int, *, settle: bool = True) -> MapContext:
        """The maps `node_id` is served from: the candidate's while it is a
        canary node during a rollout's hold, the serving snapshot's otherwise.
        `settle` False: as served now, a recompile that is due not forced (its
        sessions are woken when it is applied)."""
        if settle:
            self.settle()
        if self._canary is not None and self.is_canary(node_id):
            return self._canary[2]
        return self._ctx

    @property
    def candidate(self) -> TailnetSource | None:
        return self._canary[0] if self._canary is not None else None

    @property
    def primaries(self) -> Mapping[str, int]:
        """Subnet -> the router serving it now (HA: the election's memory)."""
        self.settle()
        return self._primaries

    def follow_primaries(self, primaries: Mapping[str, int]) -> None:
        """The primaries another replica serves (the replicas' leader,
        server/tailnet/replicas.py). The election keeps a primary while it is
        eligible, so replicas that saw routers come online in a different
        order would keep different ones: where the leader's choice differs from
        ours and is eligible here (online, answering probes), take it."""
        self.settle()
        adopt = {
            prefix: node_id
            for prefix, node_id in primaries.items()
            if prefix in self._primaries
            and self._primaries[prefix] != node_id
            and node_id in self._online
            and node_id not in self._unhealthy
        }
        if adopt:
            self._primaries = {**self._primaries, **adopt}
            # Only the election's memory changed: comparing indexes cannot tell
            # whose views that touches, so every view is built again (rare: only
            # after replicas saw routers in a different order).
            self._ctx = self._build_context()
            self._wake_all()

    def cut_off(self) -> list[Node]:
        """Registered nodes that are not served: their user is not in git.
        Asked at every sweep; looks at what changed since (cutoff.py)."""
        ctx = self.context
        return self._cut_off.of(ctx.nodes, ctx.entries.log)

    # Changes

    async def swap_source_off_loop(self, source: TailnetSource) -> None:
        """`swap_source`, with the policy index built in a worker thread so
        that DERP and map traffic keep flowing while a large commit compiles.

        The thread reads only frozen inputs taken here; the views of the
        serving index (which sessions keep filling) are adopted on the loop,
        in `swap_source`. A node change that needs a recompile while the
        thread runs makes its index stale: it is built again (at last on the loop).
        """
        source = with_runtime_users(source, self._runtime_users)
        if self._gc is not None:
            self._gc.hold()  # the compile too makes what the commit leaves
        try:
            for _ in range(3):
                self.settle()
                generation = self._generation
                compiled = await asyncio.to_thread(self._compile_job(source, self._ctx))
                if generation == self._generation and not self._unsettled:
                    self.swap_source(source, compiled=compiled)
                    return
            self.swap_source(source)
        finally:
            if self._gc is not None:
                self._gc.release()  # swap_source holds on until its fan-out drained

    def swap_source(
        self, source: TailnetSource, *, compiled: CompiledTailnet[int] | None = None
    ) -> None:
        """Serve a new snapshot: one reference swap, then the sessions whose
        maps may differ catch up. `compiled`: its index over the current
        nodes, made by `_compile_job` (else it is built here).

        When only the policy changed, the compiler names the nodes its new
        rules can reach and every other view is kept (as is its session,
        asleep); a new domain, DNS config, user list or DERP map reaches every map.
        """
        policy = self._gc
        if policy is None:
            self._swap_source(source, compiled)
            return
        policy.hold()  # till the fan-out drained (server/gcpolicy.py)
        try:
            self._swap_source(source, compiled)
        finally:
            self.wakes.when_drained(policy.release)

    def _swap_source(self, source: TailnetSource, compiled: CompiledTailnet[int] | None) -> None:
        source = with_runtime_users(source, self._runtime_users)
        self.settle()  # pending node changes first: the commit is then the only difference
        self._generation += 1
        old, old_derp, old_ctx = self._source, self._derp_map, self._ctx
        self._source = source
        derp_map = self._derp_map_of(source)
        if derp_map != old_derp:
            self._derp_map = derp_map
        try:
            self._ctx = self._build_context(previous=self._ctx, compiled=compiled)
        except Exception:
            self._source, self._derp_map = old, old_derp
            raise
        self._log.info(
            "serving snapshot %s", source.id[:12], extra=event("snapshot.served", commit=source.id)
        )
        self.end_canary()  # promoted, or replaced by a commit served to everyone
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

    def start_canary(self, source: TailnetSource, tag: str) -> None:
        """Serve `source` to the nodes tagged `tag` only (a rollout's hold; a
        newer candidate replaces the one held). Its maps are compiled over
        every live node, so a canary's peers are what `source` lets it see;
        every other node stays on the serving snapshot. Raises, changing
        nothing, when `source` does not compile for the live nodes."""
        source = with_runtime_users(source, self._runtime_users)
        self.settle()
        old = self._canary
        ctx = self._build_context(previous=old[2] if old else self._ctx, source=source)
        self._canary = (source, tag, ctx)
        self._log.info(
            "canary nodes (%s) hold snapshot %s",
            tag,
            source.id[:12],
            extra=event("snapshot.canary", commit=source.id, canary=tag),
        )
        self._wake(self._canary_ids(tag) | (self._canary_ids(old[1]) if old else set()))

    def end_canary(self) -> None:
        """The canary nodes go back to the serving snapshot (an abort), or are
        on it already (a promotion): their sessions catch up either way."""
        if self._canary is None:
            return
        tag = self._canary[1]
        self._canary = None
        self._wake(self._canary_ids(tag))

    def apply(self, change: NodeChange) -> None:
        """A node changed (the registry's event stream)."""
        self._cut_off.wrote(change.node_id)
        if change.kind == "removed":
            self._records.pop(change.node_id, None)
            self._relive(change.node_id)
            self._dirty.add(change.node_id)
            self._online.discard(change.node_id)
            self._unhealthy.discard(change.node_id)
            self._ctx.entries.forget(change.node_id)  # its encoded entries
            if self._canary is not None:
                self._canary[2].entries.forget(change.node_id)
            self._end_sessions(change.node_id)
            self._recompile(nodes_only=True)
            return
        node = change.node
        if node is None:
            return
        self._records[node.id] = node
        self._relive(node.id)
        if change.online is not None:
            (self._online.add if change.online else self._online.discard)(node.id)
        if node.id not in self._ctx.nodes or change.healthy is not None:
            # The context will not follow this record (nor its online state)
            # before the next build: that build must look at it.
            self._dirty.add(node.id)
        if change.kind == "topology" or (node.id in self._ctx.nodes) != self._served(node):
            self._dirty.add(node.id)
            self._recompile(nodes_only=True)
            return
        if change.healthy is not None:
            (self._unhealthy.discard if change.healthy else self._unhealthy.add)(node.id)
        if (change.online is not None or change.healthy is not None) and advertised_routes(node):
            # A router came or went (or stopped answering): the primary for its
            # subnets may move (HA failover).
            self._dirty.add(node.id)
            self._recompile()
            return
        if change.healthy is not None:
            return  # peers see nothing of a probe
        if node.id not in self._ctx.nodes:
            return  # not served: nobody sees it
        self._ctx = self._with_node(self._ctx, node)
        if self._canary is not None:
            source, tag, ctx = self._canary
            self._canary = (source, tag, self._with_node(ctx, node))
        self._notify_soon(node.id)
        if change.online is None:
            for handle in self._sessions.get(node.id, ()):
                handle.mark_top()  # its own self entry changed

    def _with_node(self, ctx: MapContext, node: Node) -> MapContext:
        """`ctx` with `node`'s record and online state replaced: O(log n), not
        a copy of the tailnet (a reconnect storm is n of these)."""
        ctx.entries.log.record((node.id,))
        online = PersistentIds.of(ctx.online).with_id(node.id, node.id in self._online)
        if node.id not in ctx.nodes:
            return replace(ctx, online=online)
        nodes = PersistentMap.of(ctx.nodes).set(node.id, self._source.owner(node))
        return replace(ctx, nodes=nodes, online=online)

    def apply_user(self, change: UserChange) -> None:
        """A runtime user was admitted or deleted (the user registry's event stream):
        its nodes join or leave the maps, without a commit."""
        if change.kind == "removed":
            self._runtime_users.discard(change.email)
        else:
            self._runtime_users.add(change.email)
        source = with_runtime_users(self._source, self._runtime_users)
        if source.users == self._source.users:
            return
        self._generation += 1
        self._source = source
        if self._canary is not None:
            cand, tag, ctx = self._canary
            self._canary = (with_runtime_users(cand, self._runtime_users), tag, ctx)
        self._wake_all()  # user profiles in every map
        self._recompile()

    def set_login_groups(self, email: str, groups: tuple[str, ...]) -> None:
        """A user logged in through the identity provider with these policy groups:
        rules naming them now apply to the user's nodes, without a commit."""
        email = email.lower()
        if self._login_groups.get(email, ()) == tuple(sorted(groups)):
            return
        self._login_groups[email] = tuple(sorted(groups))
        self._recompile()

    def time_passed(self) -> None:
        """An `expires` instant of the serving policy passed: compile again, so
        the entries that ended leave the maps without a commit."""
        self._recompile()

    # Sessions

    def open_session(self, node_id: int) -> SessionHandle:
        if node_id not in self.context_for(node_id, settle=False).nodes:
            self.settle()  # its own join, still pending
        handle = SessionHandle(node_id, self.deliveries)
        if self._gc is not None:
            self._gc.grew()  # a connect storm's sessions are frozen, a batch at a time
        self._sessions.setdefault(node_id, set()).add(handle)
        # Its first map needs it; its viewers are its peers.
        self.context_for(node_id, settle=False).views.get(node_id)
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
        self.settle()
        return [
            h for handles in self._sessions.values() for h in handles if h.wake.is_set() or h.due
        ]

    def record(self, node_id: int) -> Node | None:
        """The node as this process last learned of it."""
        return self._records.get(node_id)

    def record_ids(self) -> frozenset[int]:
        return frozenset(self._records)

    def serves(self, node_id: int) -> bool:
        """In the maps as the nodes are now (as the next settle builds them),
        answered without settling: a join's own checks must not cost the
        recompile that other joins could share."""
        node = self._records.get(node_id)
        if node is None:
            return False
        if self._canary is not None and self.is_canary(node_id):
            return self._served(node, self._canary[0])
        return self._served(node)

    def is_online(self, node_id: int) -> bool:
        return node_id in self._online

    def online_ids(self) -> frozenset[int]:
        return frozenset(self._online)

    def ping(self, node_id: int, url: str) -> None:
        """Send a PingRequest for `url` down `node_id`'s open map streams."""
        for handle in self._sessions.get(node_id, ()):
            handle.send_ping(url)

    def shared_routers(self) -> frozenset[int]:
        """Online routers serving a subnet that another router serves too:
        the ones whose health decides a primary (HA routes)."""
        served: dict[str, list[int]] = {}
        for node_id, routes in self._routers().items():
            if node_id not in self._online:
                continue
            for route in routes:
                served.setdefault(route, []).append(node_id)
        return frozenset(
            node_id
            for route, ids in served.items()
            if len(ids) > 1 and route not in EXIT_ROUTES
            for node_id in ids
        )

    def _routers(self) -> dict[int, tuple[str, ...]]:
        """The serving context's nodes with approved routes (advertisers.py)."""
        ctx, source, memo = self._ctx, self._source, self._routers_memo
        if memo is not None and memo[0] is ctx and memo[1] is source:
            return memo[2]
        advertisers = advertisers_of(memo[3] if memo else None, ctx.entries.log)
        routers = self._approved_routes([ctx.nodes[i] for i in advertisers.among(ctx.nodes)])
        self._routers_memo = (ctx, source, routers, advertisers)
        return routers

    @property
    def views(self) -> PolicyViews:
        return self.context.views

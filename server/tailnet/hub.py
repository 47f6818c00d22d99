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

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime

from gitctl.policy.addrs import EXIT_ROUTES
from gitctl.policy.topology import TopologyUser
from server.gcpolicy import GcPolicy
from server.store.model import Node
from server.tailnet.advertisers import Advertisers, advertisers_of
from server.tailnet.coalesce import COALESCE_SECONDS, Defer, LoopDefer, defer_on_loop
from server.tailnet.cutoff import CutOff
from server.tailnet.handle import Deliveries, SessionHandle
from server.tailnet.hubchanges import TailnetChanges
from server.tailnet.mapper import MapContext
from server.tailnet.source import TailnetSource, with_runtime_users
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


class Tailnet(TailnetChanges):
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

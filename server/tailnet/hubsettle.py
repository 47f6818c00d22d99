"""When the hub's maps are rebuilt, and who hears of it: node changes make a
recompile due (`_recompile`), applied once for every change until the
deferred `settle`; volatile changes wait for the next wave; the sessions
whose maps may differ are marked and woken a batch at a time. The base of
`Tailnet` (server/tailnet/hub.py), which owns the state declared here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from server.gcpolicy import GcPolicy
from server.logs import event
from server.tailnet.coalesce import Defer
from server.tailnet.handle import Deliveries, SessionHandle
from server.tailnet.hubcontext import TailnetContexts
from server.tailnet.mapper import MapContext
from server.tailnet.source import TailnetSource
from server.tailnet.views import advertised_routes
from server.tailnet.waking import PacedWakes

__all__ = ["GC_HOLD_WAKES", "TailnetSettle"]

# Sessions woken at once from which a wake holds the older collections as a
# commit does (server/gcpolicy.py): a settle that changes many maps.
GC_HOLD_WAKES = 1024


class TailnetSettle(TailnetContexts):
    """The recompile that is due, the volatile wave, and the sessions they wake."""

    _gc: GcPolicy | None
    _defer: Defer
    _unsettled: bool
    _after_settle: list[Callable[[], None]]
    _volatile: set[int]
    _volatile_due: bool
    _beyond_nodes: bool
    _generation: int
    _sessions: dict[int, set[SessionHandle]]
    wakes: PacedWakes
    deliveries: Deliveries
    _canary: tuple[TailnetSource, str, MapContext] | None

    def is_canary(self, node_id: int) -> bool:
        """During a hold: the node carries the canary tag."""
        node = self._records.get(node_id)
        return self._canary is not None and node is not None and self._canary[1] in node.tags

    def _canary_ids(self, tag: str) -> set[int]:
        return {i for i, n in self._records.items() if tag in n.tags}

    def _notify_soon(self, node_id: int) -> None:
        """Tell `node_id`'s viewers at the next wave: in a mesh a burst of
        endpoint and online changes then costs each session one message,
        the same for all (`mapencode.Deltas`), not one per change."""
        self._volatile.add(node_id)
        if self._volatile_due or self._unsettled:
            return  # the wave due takes it (a settle notifies too)
        self._volatile_due = True
        if not self._defer(self._notify_volatile):
            self._notify_volatile()

    def _notify_volatile(self) -> None:
        self._volatile_due = False
        volatile, self._volatile = self._volatile, set()
        for node_id in sorted(volatile):
            self._notify_viewers(node_id)

    def _recompile(self, *, nodes_only: bool = False) -> None:
        """Nodes joined, left or changed what the policy sees: recompile soon,
        once for every change that arrives until then. `nodes_only`: nothing
        but node records changed (see `settle`)."""
        self._generation += 1  # an index being built elsewhere is stale now
        self._beyond_nodes |= not nodes_only
        if self._unsettled:
            return
        self._unsettled = True
        if not self._defer(self.settle):
            self.settle()

    def settle(self) -> None:
        """Apply the recompile that node changes made due, if any. Views the
        changes cannot touch are reused; only their sessions sleep on.

        Until then, volatile changes are routed through the views last built
        (the recompile wakes whoever a topology change gave new viewers)."""
        if not self._unsettled:
            return
        try:
            self._settle()
        finally:
            waiting, self._after_settle = self._after_settle, []
            for fn in waiting:
                fn()

    def _settle(self) -> None:
        self._unsettled = False
        self._notify_volatile()  # the volatile changes waiting: this wave
        beyond_nodes, self._beyond_nodes = self._beyond_nodes, False
        old_ctx = self._ctx
        gen = old_ctx.entries.log.gen
        self._ctx = self._build_context(previous=old_ctx)
        touched = None if beyond_nodes else self._peers_only(old_ctx, gen)
        if self._canary is not None:
            # The candidate follows the same nodes; the canary set may move
            # (a tag given or taken): those sessions change snapshot.
            source, tag, ctx = self._canary
            canaries = self._canary_ids(tag)
            self._canary = (source, tag, self._build_context(previous=ctx, source=source))
            moved = canaries ^ self._canary_ids(tag)
            changed = self._canary[2].views.changed
            self._wake(moved | (canaries if changed is None else changed & canaries))
        self._close_unserved(old_ctx, gen)
        # A record can change with no view changing (a re-keyed node: same
        # addresses, same rules): its viewers still owe their clients its entry.
        for node_id in self._ctx.entries.log.since(gen) or ():
            record = self._ctx.nodes.get(node_id)
            if record is not None and record is not old_ctx.nodes.get(node_id):
                self._notify_viewers(node_id)
        changed = self._ctx.views.changed
        if changed is None:
            self._wake_all()
        elif touched is None:
            self._wake(changed)
        else:
            # The nodes that changed are all their maps may differ in but
            # for their own fields: their sessions catch up from the change log.
            for node_id in changed:
                for handle in self._sessions.get(node_id, ()):
                    (handle.mark_full if node_id in touched else handle.mark_top)()

    def _peers_only(self, old: MapContext, gen: int) -> frozenset[int] | None:
        """The nodes whose records the settle that made `self._ctx` from `old`
        (the log at `gen`) found changed, when that is all a viewer of them
        may see differently: the policy, users and groups are the same, and
        no route, so no primary router, moved (a PeerView depends on the
        policy, the viewer, the peer and the primaries only). None otherwise."""
        new = self._ctx
        if self._canary is not None or new.entries is not old.entries:
            return None
        since = new.entries.log.since(gen)
        if since is None or new.views.primaries != old.views.primaries:
            return None
        touched = frozenset(since)
        for node_id in touched:
            for node in (old.nodes.get(node_id), new.nodes.get(node_id)):
                if node is not None and advertised_routes(node):
                    return None
        return touched

    def _close_unserved(self, old: MapContext, gen: int | None = None) -> None:
        """End the sessions of the nodes `old` served and the context does not;
        `gen`: the change log's when `old` served (only the ids logged since are looked at)."""
        new = self._ctx
        since = (
            new.entries.log.since(gen) if gen is not None and new.entries is old.entries else None
        )
        if since is None:
            gone: Iterable[int] = old.nodes.keys() - new.nodes.keys()
        else:
            gone = sorted({i for i in since if i in old.nodes and i not in new.nodes})
        for node_id in gone:
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

    def after_settle(self, fn: Callable[[], None]) -> bool:
        """Call `fn` once the recompile that is due has been applied; False
        (and `fn` is not kept) when none is due."""
        if not self._unsettled:
            return False
        self._after_settle.append(fn)
        return True

    def _notify_viewers(self, node_id: int) -> None:
        viewers, canary = self._ctx.views.visible_to(node_id), self._canary
        if canary is not None:  # each viewer sees the node as the snapshot it is on shows it
            held = filter(self.is_canary, canary[2].views.visible_to(node_id))
            viewers = [*(v for v in viewers if not self.is_canary(v)), *held]
        sessions = self._sessions
        self.deliveries.mark_peer([h for v in viewers for h in sessions.get(v, ())], node_id)

    def _wake(self, node_ids: Iterable[int]) -> None:
        sessions = self._sessions
        self._mark_full([h for node_id in node_ids for h in sessions.get(node_id, ())])

    def _wake_all(self) -> None:
        self._mark_full([h for handles in self._sessions.values() for h in handles])

    def _mark_full(self, handles: list[SessionHandle]) -> None:
        """Every session's map may have changed: marked now, woken a batch
        per loop iteration (a commit's fan-out must not hold the loop)."""
        for handle in handles:
            handle.mark_full(wake=False)
        policy = self._gc
        if policy is not None and len(handles) >= GC_HOLD_WAKES:
            policy.hold()  # a settle that changes many maps: held as a commit is
            self.wakes.set(handles)
            self.wakes.when_drained(policy.release)
            return
        self.wakes.set(handles)

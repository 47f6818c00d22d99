"""What changes the hub's maps: a new snapshot (a commit, a canary's hold),
a node's record or state (the registry's `NodeChange`s), a runtime user or a
login's groups, an `expires` instant passing. Each decides what it costs:
a swap now, a recompile due (hubsettle.py), or one peer entry again. The
base of `Tailnet` (server/tailnet/hub.py), which owns the state declared here.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from gitctl.policy import CompiledTailnet
from server.logs import event
from server.store.model import Node
from server.tailnet.cutoff import CutOff
from server.tailnet.hubsettle import TailnetSettle
from server.tailnet.mapper import MapContext
from server.tailnet.persistent import PersistentIds, PersistentMap
from server.tailnet.registry import NodeChange
from server.tailnet.source import TailnetSource, with_runtime_users
from server.tailnet.users import UserChange
from server.tailnet.views import advertised_routes

__all__ = ["TailnetChanges"]


class TailnetChanges(TailnetSettle):
    """Snapshot swaps, canary holds, node, user and login-group changes."""

    _runtime_users: set[str]
    _cut_off: CutOff

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

"""The per-(policy, topology) index and the per-node views built from it.

Building the index resolves every rule once: its sources to a node set and
bitset, its destinations to the entries each destination node receives. That
is linear in rules × matching nodes and never visits node pairs. A node's
view (filter, SSH policy, peers, capabilities) is then computed on first use
from its own rules and the rule bitsets, and kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

from . import viewadopt
from .addrs import is_exit_route
from .aliases import Index
from .bitsets import bits, bitset
from .filter import Rule
from .filtershape import FilterShapes
from .joinviews import JoinChange
from .model import Policy
from .nodeattrs import DISABLE_IPV4, ipv4_disabled, self_cap_maps
from .noderules import NodeRules, SlotUses
from .output import NodeKey, NodeView, PeerView
from .refilter import refiltered
from .routes import RouteTable, route_table
from .routevis import RouteVisibility
from .rulebuilder import RuleBuilder
from .ssh import SshIndex, check_ssh_domains
from .topology import Topology
from .viewfields import merge_rules, own_prefixes, whois
from .viewmaps import GroupPeers, LazyMap
from .viewpeers import PeerViews
from .viewreuse import PeerChange


class ViewIndex(PeerViews[NodeKey]):
    """``keys``: each node's key, in ``topology.nodes`` order (what views,
    peers and primaries name nodes by)."""

    def __init__(
        self,
        policy: Policy,
        topology: Topology,
        keys: Sequence[NodeKey],
        tailnet: Mapping[str, Any] | None = None,
        *,
        keep_views: bool = True,
        like: ViewIndex[Any] | None = None,
    ) -> None:
        """``like``: an earlier index, whose nodes this one may share (`Index`)."""
        self.policy = policy
        self.keep_views = keep_views
        self.topology = topology
        self.tailnet = tailnet
        nodes = topology.nodes
        self.keys: tuple[NodeKey, ...] = tuple(keys)
        self.position: dict[NodeKey, int] = {k: i for i, k in enumerate(self.keys)}
        if len(self.keys) != len(nodes):
            raise ValueError("compile: one key per node is needed")
        index = Index(policy, topology, like.index if like is not None else None)
        at = self.position
        last = {p: at[k] for p, k in topology.primaries.items() if k in at}
        table = route_table(policy, nodes, topology.users, last)
        index.set_routes(list(table.enabled))
        check_ssh_domains(policy, index)
        builder = RuleBuilder(index)
        builder.add_policy(policy)
        n = len(nodes)
        for rule in builder.slots:
            rule.src_mask = bitset(rule.src_members, n)
            rule.dst_mask = bitset(rule.dst_nodes, n)
        self._setup(index, table, NodeRules.of(builder, n), self_cap_maps(policy, index, tailnet))
        self.origin = "full"

    @classmethod
    def assemble(
        cls,
        policy: Policy,
        topology: Topology,
        keys: Sequence[NodeKey],
        tailnet: Mapping[str, Any] | None,
        parts: tuple[Index, RouteTable, NodeRules, list[dict[str, Any]]],
        *,
        keep_views: bool = True,
        grown_from: ViewIndex[NodeKey] | None = None,
    ) -> ViewIndex[NodeKey]:
        """An index from parts already resolved (`gitctl.policy.extend` grows
        them from an earlier index, ``grown_from``, whose nodes come first):
        the same index ``ViewIndex(...)`` builds."""
        self = cls.__new__(cls)
        self.policy, self.keep_views, self.topology, self.tailnet = (
            policy,
            keep_views,
            topology,
            tailnet,
        )
        self.keys = tuple(keys)
        if grown_from is None:
            self.position = {k: i for i, k in enumerate(self.keys)}
            self._setup(*parts)
        else:
            n = len(grown_from.keys)
            self.position = {**grown_from.position, **{k: n + j for j, k in enumerate(keys[n:])}}
            caps = parts[3]
            more = frozenset(i for i in range(n, len(caps)) if DISABLE_IPV4 in caps[i])
            self._setup(*parts, no_v4=grown_from.no_v4 | more)
        self.origin = "extended"
        return self

    def _setup(
        self,
        index: Index,
        table: RouteTable,
        per_node: NodeRules,
        caps: list[dict[str, Any]],
        no_v4: frozenset[int] | None = None,
    ) -> None:
        """What follows from the resolved rules: who reaches whom, SSH, routes
        (``no_v4``: the nodes `ipv4_disabled` names, when known)."""
        policy, n = self.policy, len(self.keys)
        self.index, self.table, self.per_node = index, table, per_node
        self.filters = FilterShapes()
        self.slots = per_node.slots
        self.rules = [r for r in self.slots if r.live]
        # Rules sharing a source set share one entry: sources -> the nodes
        # their rules reach (which those sources therefore see).
        reach: dict[frozenset[int], int] = {}
        for rule in self.rules:
            if rule.src_members:
                reach[rule.src_members] = reach.get(rule.src_members, 0) | rule.dst_mask
        self._reach = list(reach.items())
        self._reach_asked = 0
        self._reach_by_member: (
            tuple[dict[int, list[int]], list[tuple[frozenset[int], int]]] | None
        ) = None
        # Where aliases feed the slots, once a join needed it (`gitctl.policy.extend`).
        self.slot_uses: SlotUses | None = None

        self.ssh = SshIndex(policy, index)
        self.caps = caps
        self.no_v4 = ipv4_disabled(self.caps) if no_v4 is None else no_v4
        self.routes = RouteVisibility(index, self.table, self.per_node)
        self._plain: list[PeerView | None] = [None] * n
        self._routers = bitset(index.routers, n)
        self._visible: dict[int, int] = {}
        # Sets of nodes that see each other whole (a user's nodes under
        # autogroup:self, a mesh): their members, decoded once, not per view.
        self._groups: dict[int, list[int]] = {}
        # Such a group's peer entries, when it holds no router (`_group_peers`),
        # and which earlier groups' entries came out the same.
        self._group_full: dict[int, dict[NodeKey, PeerView]] = {}
        self._groups_seen: dict[int, tuple[object, object, bool]] = {}
        # Whether an earlier index's group entries and who-sees-whom were
        # kept whole (`_take_over`): its views' group peers then stand as they are.
        self._same_groups = False
        self.views: dict[int, NodeView[NodeKey]] = {}
        # After a join or leave (`adopt`): who merely gained or lost a peer,
        # and the earlier views of those nodes, to patch rather than rebuild.
        self.peer_change: PeerChange[NodeKey] | JoinChange[NodeKey] | None = None
        self._bases: dict[int, NodeView[NodeKey]] = {}
        # After a commit that leaves them all but their filters (refilter.py):
        # the earlier views of those nodes, to take all but the filter from.
        self._refilter: dict[int, NodeView[NodeKey]] = {}
        self._whois_kept = False
        # After a new policy over the same nodes: the earlier views' peers
        # (and who they saw), handed on whole when they come out the same, so
        # a session tells "no peer changed" by identity.
        self._earlier: dict[int, Mapping[NodeKey, PeerView]] = {}
        # The earlier index's peer views by key, lent to equal new ones so an
        # unchanged peer stays the same object across recompiles.
        self._lend: dict[NodeKey, PeerView] = {}
        # What `compare` found against an earlier index, until `adopt` uses it.
        self._compared: (
            tuple[
                ViewIndex[NodeKey],
                frozenset[NodeKey] | None,
                PeerChange[NodeKey] | JoinChange[NodeKey] | None,
                bool,
            ]
            | None
        ) = None

    # -- visibility --------------------------------------------------------

    def visible(self, i: int) -> int:
        """Bitset of the nodes ``i`` sees (and that see it: the relation is symmetric)."""
        mask = self._visible.get(i)
        if mask is None:
            mask = self.ssh.visible(i)
            for rule in self.per_node[i]:
                mask |= rule.src_mask
            for dsts in self._reached_from(i):
                mask |= dsts
            mask &= ~(1 << i)
            self._visible[i] = mask
        return mask

    # Source sets up to this size are indexed by member (`_reached_from`).
    SMALL_SOURCES = 4096

    def _reached_from(self, i: int) -> list[int]:
        """The destinations of the rules whose sources include node ``i``.
        A pass over every source set (250 per-user sets at 50,000 nodes under
        autogroup:self) costs every view that much, so once a fan-out builds
        many views (a sixteenth of the nodes: the index pays for itself) the
        small sets are indexed by member and only the large ones scanned."""
        by_member = self._reach_by_member
        if by_member is None:
            self._reach_asked += 1
            if self._reach_asked < max(64, len(self.keys) // 16):
                return [dsts for srcs, dsts in self._reach if i in srcs]
            by_member = self._reach_by_member = ({}, [])
            for srcs, dsts in self._reach:
                if len(srcs) > self.SMALL_SOURCES:
                    by_member[1].append((srcs, dsts))
                    continue
                for m in srcs:
                    by_member[0].setdefault(m, []).append(dsts)
        own, large = by_member
        return [*own.get(i, ()), *(dsts for srcs, dsts in large if i in srcs)]

    def primaries(self) -> dict[str, NodeKey]:
        """Prefix -> the node primary for it now (to pass back as the next
        compile's `Topology.primaries`, so the election does not flap)."""
        primary, keys = self.table.primary, self.keys
        # only routers are primary for anything: not a pass over every node
        return {r: keys[i] for i in self.index.routers for r in primary[i]}

    def peer_keys(self, key: NodeKey) -> list[NodeKey]:
        i = self.position.get(key)
        if i is None:
            return []
        keys = self.keys
        return [keys[j] for j in bits(self.visible(i))]

    def dependents(self, key: NodeKey) -> list[NodeKey]:
        """Nodes whose views mention ``key``: its peers, and the sources
        that share an SSH rule's per-user principals with it."""
        i = self.position[key]
        keys = self.keys
        return [keys[j] for j in bits(self.visible(i) | self.ssh.co_sources(i))]

    # -- views -------------------------------------------------------------

    def view(self, i: int) -> NodeView[NodeKey]:
        v = self.views.get(i)
        if v is None:
            base = self._bases.pop(i, None)
            if base is not None:
                v = self._patched(i, base)
            elif (earlier := self._refilter.pop(i, None)) is not None:
                v = self._refiltered(i, earlier)
            else:
                v = self._build(i)
            if self.keep_views:
                self.views[i] = v
        return v

    def _build(self, i: int) -> NodeView[NodeKey]:
        index, table = self.index, self.table
        mask = self.visible(i)
        rules = self.per_node.shown(i)
        earlier = self._earlier.get(i) if self._same_groups else None
        return NodeView(
            packet_filter_rules=self._filter(i, rules),
            ssh_policy=self.ssh.policy(i),
            # Peers from a group's entries that this index kept (`_take_over`)
            # are what `_group_peers` would find: handed on, no mask work.
            peers=(
                self._earlier.pop(i)
                if type(earlier) is GroupPeers and i not in self.no_v4
                else self._peers(i, mask)
            ),
            self_cap_map=self.caps[i],
            self_allowed_ips=(
                *own_prefixes(index, i, self.no_v4),
                *table.primary[i],
                *(r for r in table.enabled[i] if is_exit_route(r)),
            ),
            self_primary_routes=table.primary[i],
            # Without a list of its peers: one per view would be kept (and
            # scanned by every collection) for what the server never reads.
            whois_cap_map=self._whois(i, mask),
        )

    def _filter(self, i: int, rules: list[Rule]) -> Sequence[Mapping[str, Any]]:
        return self.filters.of(i, rules) or merge_rules((r, r.render(i)) for r in rules)

    def _refiltered(self, i: int, earlier: NodeView[NodeKey]) -> NodeView[NodeKey]:
        """``earlier`` (the earlier index's view of node ``i``) with this
        index's filter: all `refilter.Refilter` lets differ."""
        whois = None if self._whois_kept else self._whois(i, self.visible(i))
        return refiltered(earlier, self._filter(i, self.per_node.shown(i)), whois)

    def _whois(self, i: int, mask: int) -> LazyMap:
        # Only some consumers read it (the server does not): build it on
        # demand, from values that do not hold on to this index.
        cap_rules = [(r.caps, r.src_mask) for r in self.per_node[i] if r.caps is not None]
        return LazyMap(partial(whois, self.index.ips, cap_rules, mask))

    def _patched(self, i: int, base: NodeView[NodeKey]) -> NodeView[NodeKey]:
        """``base`` (the earlier index's view of node ``i``) with the peers
        that joined added or the one that left removed: all `peer_change`
        lets differ."""
        change = self.peer_change
        if isinstance(change, JoinChange):
            # Who it sees is what it saw and the newcomers (`_take_over`):
            # its peers are gathered as a build would, its other fields kept.
            mask, peers = self.visible(i), base.peers
            if type(peers) is dict:
                # (a viewer without IPv4, or of a router: its entries are its
                # own, kept by identity, and the newcomers come last)
                keys = self.keys
                peers = {**peers, **{keys[j]: self.peer_view(i, j) for j in bits(change.seen[i])}}
            else:
                peers = self._peers(i, mask)
            return NodeView(
                self._filter(i, self.per_node.shown(i))
                if i in change.refilter
                else base.packet_filter_rules,
                base.ssh_policy,
                peers,
                base.self_cap_map,
                base.self_allowed_ips,
                base.self_primary_routes,
                self._whois(i, mask),
            )
        assert change is not None
        peers = dict(base.peers)
        del peers[change.key]
        return replace(base, peers=peers, whois_cap_map=self._whois(i, self.visible(i)))

    # -- reuse across changes (viewadopt.py) ---------------------------------

    def lend(self, other: ViewIndex[NodeKey]) -> None:
        """Let ``other``'s equal peer views stand in for this index's (`viewadopt.lend`)."""
        viewadopt.lend(self, other)

    def compare(self, previous: ViewIndex[NodeKey]) -> None:
        """Work out which views the change from ``previous`` may touch (`viewadopt.compare`)."""
        viewadopt.compare(self, previous)

    def adopt(self, previous: ViewIndex[NodeKey]) -> frozenset[NodeKey] | None:
        """Take over ``previous``'s untouched views (`viewadopt.adopt`); the
        keys whose views may differ (None: possibly all)."""
        return viewadopt.adopt(self, previous)

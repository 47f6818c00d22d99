"""The node registry: the only writer of runtime node state.

Every change to a node — registration, re-registration, key renewal, logout,
expiry, deletion, rename, Hostinfo and endpoints from a map request, online and
offline, last seen — is one method here. Each writes the store once and emits
one `NodeChange`, classified once:

* ``topology``: what the policy compiler sees changed (a new node, its owner,
  tags, name, addresses, keys or advertised routes): views are recompiled;
* ``volatile``: only what peers are shown of it changed (endpoints, disco key,
  home DERP, Hostinfo without routes, online, last seen, key expiry): one peer
  entry is resent, nothing recompiles;
* ``removed``: the node is gone.

The running tailnet, DERP and anything else that reacts to nodes subscribe to
the stream; nobody calls them by hand after a write. A second process (a
PostgreSQL replica's LISTEN/NOTIFY) is just another source of the same events:
`publish` takes them.

Reads (by id, node key, machine key) are answered from memory: every node,
read from the store once (the truth at start-up) and kept current by the
stream itself, since every change, local or from a replica, goes through
`publish`. A map request or a reconnect reads nothing from the store. A
lookup that misses asks the store (a node another process wrote, whose event
has not come yet); `load` reads what another replica wrote, `nodes` lists
the store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal

from server.protocol.keys import DiscoPublic, MachinePublic, NodePublic
from server.store.interface import Store
from server.store.model import Node, Registration
from server.tailnet.views import to_topology_node
from server.wire import Hostinfo

__all__ = ["ChangeKind", "NodeChange", "NodeRegistry", "classify"]

ChangeKind = Literal["volatile", "topology", "removed"]


@dataclass(frozen=True, slots=True)
class NodeChange:
    """One change to one node. `node` is the record after it (None when
    removed), `previous` before it (None when the node is new)."""

    kind: ChangeKind
    node_id: int
    node: Node | None
    previous: Node | None
    online: bool | None = None  # set when the change is the node going online or offline
    # set when a router stopped or started answering health probes (server/tailnet/probes.py)
    healthy: bool | None = None


Listener = Callable[[NodeChange], None]


def _compiled_facts(node: Node) -> tuple[object, ...]:
    """What the policy compiler reads of a node (owner, tags, name, addresses,
    advertised routes, posture facts from Hostinfo), and its keys."""
    return (
        to_topology_node(node, ()),
        node.node_key,
        node.machine_key,
        node.approved,
        node.runtime_routes,
    )


def classify(previous: Node | None, node: Node | None) -> ChangeKind:
    """What a change from `previous` to `node` means to the maps."""
    if node is None:
        return "removed"
    if previous is None or _compiled_facts(previous) != _compiled_facts(node):
        return "topology"
    return "volatile"


class NodeIndex:
    """Every node by id, node key and machine key (each unique in the store)."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.by_id: dict[int, Node] = {}
        self.by_node_key: dict[NodePublic, int] = {}
        self.by_machine_key: dict[MachinePublic, int] = {}
        for node in nodes:
            self.remember(node)

    def get(self, node_id: int | None) -> Node | None:
        return None if node_id is None else self.by_id.get(node_id)

    def remember(self, node: Node) -> None:
        self.forget(node.id)
        self.by_id[node.id] = node
        self.by_node_key[node.node_key] = node.id
        self.by_machine_key[node.machine_key] = node.id

    def forget(self, node_id: int) -> None:
        old = self.by_id.pop(node_id, None)
        if old is None:
            return
        if self.by_node_key.get(old.node_key) == node_id:
            del self.by_node_key[old.node_key]
        if self.by_machine_key.get(old.machine_key) == node_id:
            del self.by_machine_key[old.machine_key]


class NodeRegistry:
    def __init__(self, store: Store, *, log: logging.Logger) -> None:
        self._store = store
        self._log = log
        self._listeners: list[Listener] = []
        self._connections: dict[int, int] = {}  # node id -> open map streams here
        self._elsewhere: dict[str, set[int]] = {}  # replica id -> nodes streaming there
        self._known: NodeIndex | None = None  # read from the store at the first read
        # replica id -> routers whose health probes it reports unanswered
        self._unhealthy_elsewhere: dict[str, set[int]] = {}

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def publish(self, change: NodeChange) -> None:
        """Tell every subscriber; also how another replica's changes come in."""
        if self._known is not None:
            if change.node is None:
                self._known.forget(change.node_id)
            else:
                self._known.remember(change.node)
        for listener in self._listeners:
            listener(change)

    # Reads (from memory)

    @property
    def _index(self) -> NodeIndex:
        if self._known is None:
            self._known = NodeIndex(self._store.list_nodes())
        return self._known

    def get(self, node_id: int) -> Node | None:
        node = self._index.by_id.get(node_id)
        return node if node is not None else self._missed(self._store.get_node(node_id))

    def by_node_key(self, node_key: NodePublic) -> Node | None:
        node = self._index.get(self._index.by_node_key.get(node_key))
        return node if node is not None else self._missed(self._store.node_by_node_key(node_key))

    def by_machine_key(self, machine_key: MachinePublic) -> Node | None:
        node = self._index.get(self._index.by_machine_key.get(machine_key))
        if node is not None:
            return node
        return self._missed(self._store.node_by_machine_key(machine_key))

    def by_keys(
        self, node_keys: Sequence[NodePublic], machine_key: MachinePublic
    ) -> tuple[Node | None, Node | None]:
        """(the node holding the first of `node_keys` that one holds, else None;
        when there is none, the machine's node): a login's lookups, from memory,
        and when no node key is there from one read of the store, not one per key."""
        index = self._index
        for key in node_keys:
            node = index.get(index.by_node_key.get(key))
            if node is not None:
                return node, None
        found = self._store.nodes_by_keys(node_keys, machine_key)
        for stored in found:
            self._missed(stored)
        held = {stored.node_key: stored for stored in found}
        for key in node_keys:
            if key in held:
                return held[key], None
        machine = index.get(index.by_machine_key.get(machine_key))
        if machine is None:
            machine = next((n for n in found if n.machine_key == machine_key), None)
        return None, machine

    def _missed(self, stored: Node | None) -> Node | None:
        """Not in memory: what the store says (a node another process wrote
        whose change has not come yet), remembered from now on."""
        if stored is not None:
            self._index.remember(stored)
        return stored

    # Reads (from the store)

    def nodes(self) -> list[Node]:
        """Every node as the store holds it, by id (start-up, listings, a
        replica's resync). The first read is also what lookups start from."""
        found = self._store.list_nodes()
        if self._known is None:
            self._known = NodeIndex(found)
        return found

    def known(self) -> list[Node]:
        """Every node as `nodes` gives it, by id, from memory (every write
        and every other replica's change updates it): a commit's warnings and
        route announcements, which a read of 5,000 rows (~90 ms) would hold
        the commit's fan-out behind."""
        by_id = self._index.by_id
        return [by_id[i] for i in sorted(by_id)]

    def load(self, node_id: int) -> Node | None:
        """The node as the store holds it now (another replica wrote it). The
        caller publishes the change: that brings the memory up to date."""
        return self._store.get_node(node_id)

    def is_online(self, node_id: int) -> bool:
        return node_id in self._connections or any(
            node_id in ids for ids in self._elsewhere.values()
        )

    def online_ids(self) -> frozenset[int]:
        return frozenset(self._connections).union(*self._elsewhere.values())

    def local_online_ids(self) -> frozenset[int]:
        """Nodes with a map stream open in this process."""
        return frozenset(self._connections)

    def local_online_of(self, ids: Iterable[int]) -> frozenset[int]:
        """Those of `ids` with a map stream open in this process (asked every
        second: costs what `ids` holds, not every stream)."""
        return frozenset(i for i in ids if i in self._connections)

    # Other replicas (PostgreSQL LISTEN/NOTIFY): a node is online while any
    # replica has a stream for it.

    def remote_online(
        self, replica: str, node_id: int, online: bool, *, publish: bool = True
    ) -> bool | None:
        """Replica `replica` opened its first or closed its last stream of
        `node_id`; whether the node went online or offline (None: neither).
        Published as a change unless the caller publishes it."""
        was = self.is_online(node_id)
        ids = self._elsewhere.setdefault(replica, set())
        (ids.add if online else ids.discard)(node_id)
        if not ids:
            del self._elsewhere[replica]
        if self.is_online(node_id) == was:
            return None
        if publish:
            node = self.get(node_id)
            if node is not None:
                self.publish(NodeChange("volatile", node_id, node, node, online=not was))
        return not was

    def remote_health(self, replica: str, node_id: int, healthy: bool) -> None:
        """Replica `replica` probes router `node_id` (it streams there) and
        found it stopped answering (False) or answering again (True). Published
        as a health change: every replica elects primaries from the same
        health."""
        ids = self._unhealthy_elsewhere.setdefault(replica, set())
        (ids.discard if healthy else ids.add)(node_id)
        if not ids:
            del self._unhealthy_elsewhere[replica]
        if healthy and any(node_id in held for held in self._unhealthy_elsewhere.values()):
            return  # a second stream elsewhere still fails its probes
        self.set_healthy(node_id, healthy)

    def remote_unhealthy(self, replica: str, node_ids: frozenset[int]) -> None:
        """All the routers replica `replica` holds unhealthy (its answer to a
        replica that starts or listens again): only the differences publish."""
        held = self._unhealthy_elsewhere.get(replica, set())
        for node_id in sorted(held - node_ids):
            self.remote_health(replica, node_id, True)
        for node_id in sorted(node_ids - held):
            self.remote_health(replica, node_id, False)

    def removed_elsewhere(self, node_id: int, previous: Node | None) -> None:
        """Another replica deleted the node: it streams nowhere any more."""
        for held in (self._elsewhere, self._unhealthy_elsewhere):
            for replica in list(held):
                held[replica].discard(node_id)
                if not held[replica]:
                    del held[replica]
        self._connections.pop(node_id, None)
        self.publish(NodeChange("removed", node_id, None, previous))

    def replica_gone(self, replica: str, *, health: bool = True) -> None:
        """Replica `replica` stopped (or died): its nodes are offline unless
        streaming somewhere else, and the routers it held unhealthy are not
        (its probes end with it; `health` False: its health verdicts stay,
        they are about to be replaced)."""
        if health:
            self.remote_unhealthy(replica, frozenset())
        for node_id in sorted(self._elsewhere.get(replica, ())):
            self.remote_online(replica, node_id, False)
        self._elsewhere.pop(replica, None)

    def replicas_seen(self) -> frozenset[str]:
        return frozenset(self._elsewhere) | frozenset(self._unhealthy_elsewhere)

    # Writes

    def _changed(self, previous: Node | None, node: Node | None, node_id: int) -> None:
        self.publish(NodeChange(classify(previous, node), node_id, node, previous))

    def register(self, registration: Registration, *, existing: Node | None = None) -> Node:
        """A node logs in (a pre-auth key, an interactive login): a new node, or
        `existing` (the same machine) taking the new key, owner and tags. The
        store uses the pre-auth key in the same transaction as the node write.
        `registration.approved` False: a new node waits for `approve` (device
        approval); an existing node keeps what it had."""
        if existing is not None:
            node = self._store.reregister_node(existing.id, registration)
        else:
            node = self._store.create_node(registration)
        self._changed(existing, node, node.id)
        return node

    def approve(self, node_id: int) -> Node:
        """An operator approves a node waiting for device approval: it joins the
        maps (a topology change)."""
        previous = self.get(node_id)
        node = self._store.set_node_approved(node_id, True)
        self._changed(previous, node, node_id)
        return node

    def set_runtime_routes(self, node_id: int, routes: Sequence[str]) -> Node:
        """An operator approves (or, with fewer, unapproves) advertised routes of a
        node at runtime: what it serves may change (a topology change)."""
        previous = self.get(node_id)
        node = self._store.set_runtime_routes(node_id, tuple(sorted(set(routes))))
        self._changed(previous, node, node_id)
        return node

    def renew_key(self, node: Node, node_key: NodePublic, now: datetime) -> Node:
        """Seamless node-key renewal: peers learn the new key."""
        updated = self._store.update_node_key(node.id, node_key, now)
        self._changed(node, updated, node.id)
        return updated

    def set_key_expiry(self, node_id: int, when: datetime | None) -> Node:
        """Expire a node now (logout, the API) or change when it expires."""
        previous = self.get(node_id)
        node = self._store.set_key_expiry(node_id, when)
        self._changed(previous, node, node_id)
        return node

    def set_key_expiry_disabled(
        self, node_id: int, disabled: bool, *, expires: datetime | None
    ) -> Node:
        """Disable a node's key expiry (a server that must not drop off the
        tailnet), or enable it again, expiring at `expires`. A disabled expiry is
        no expiry: the client's self node stops showing one."""
        return self.set_key_expiry(node_id, None if disabled else expires)

    def rename(self, node_id: int, new_name: str) -> Node:
        previous = self.get(node_id)
        node = self._store.rename_node(node_id, new_name)
        self._changed(previous, node, node_id)
        return node

    def set_tags(self, node_id: int, tags: Sequence[str]) -> Node:
        """Replace a node's tags (the API): a tagged node has no owner."""
        previous = self.get(node_id)
        node = self._store.set_node_tags(node_id, tags)
        self._changed(previous, node, node_id)
        return node

    def remove(self, node_id: int) -> Node | None:
        previous = self.get(node_id)
        if previous is None:
            return None
        self._store.delete_node(node_id)
        self._connections.pop(node_id, None)
        self._changed(previous, None, node_id)
        return previous

    def update_from_map(
        self,
        node: Node,
        *,
        now: datetime,
        disco_key: DiscoPublic | None = None,
        hostinfo: Hostinfo | None = None,
        endpoints: Sequence[str] | None = None,
        capver: int | None = None,
    ) -> Node:
        """What a map request reports: disco key, Hostinfo, endpoints, version."""
        updated = self._store.update_from_map(
            node.id,
            now=now,
            disco_key=disco_key,
            hostinfo=hostinfo,
            endpoints=endpoints,
            capver=capver,
        )
        self._changed(node, updated, node.id)
        return updated

    def set_healthy(self, node_id: int, healthy: bool) -> None:
        """A router stopped answering health probes while its stream stays open
        (False), or answers again (True): for the primary election an unhealthy
        router is offline. Nothing is written (a router's health lives as long as
        the stream the probing replica holds); peers see no change; the other
        replicas learn it from the event (server/tailnet/replicas.py)."""
        node = self.get(node_id)
        if node is not None:
            self.publish(NodeChange("volatile", node_id, node, node, healthy=healthy))

    def connected(self, node_id: int) -> None:
        """A map stream of `node_id` opened here; the first one makes it online."""
        count = self._connections.get(node_id, 0)
        was = self.is_online(node_id)
        self._connections[node_id] = count + 1
        if count == 0:
            node = self.get(node_id)
            # Online elsewhere already: peers see no change, replicas still learn of it.
            self.publish(NodeChange("volatile", node_id, node, node, online=None if was else True))

    def disconnected(self, node_id: int, now: datetime) -> None:
        """A map stream closed; when it was the last one the node is offline,
        last seen now (peers learn both from one delta)."""
        count = self._connections.get(node_id, 0)
        if count > 1:
            self._connections[node_id] = count - 1
            return
        if self._connections.pop(node_id, None) is None:
            return  # removed while streaming: nothing left to record
        previous = self.get(node_id)
        if previous is None:
            return
        self._store.touch_last_seen(node_id, now)
        # As the store keeps it (UTC, microseconds), without reading it back:
        # a server stopping with 5,000 streams writes 5,000 of these.
        node = replace(previous, last_seen=now.astimezone(UTC))
        online = None if self.is_online(node_id) else False  # still streaming elsewhere
        self.publish(NodeChange("volatile", node_id, node, previous, online=online))

"""Replicas sharing one PostgreSQL: node changes made by one reach the others.

Sans-IO: `Replicas` turns this process's `NodeChange`s into notices (short
JSON texts for `NOTIFY tailnetd_nodes`) and notices from other replicas into
`NodeChange`s published on this process's `NodeRegistry`. The asyncio side
(`server.tailnet.pg_listen`) only carries the texts and the clock.

A notice names the replica that sent it, so each replica ignores its own:

* ``{"replica", "node", "kind", "online"}``: node `node` changed there
  (`kind` as `NodeChange.kind`; `online` when a stream of it opened or closed
  there). The receiver re-reads the node by id (the database holds the truth
  once the writer committed) and publishes; a node gone is `removed`.
* ``{"replica", "node", "kind": "volatile", "healthy"}``: router `node`, which
  streams there, stopped answering that replica's health probes (false) or
  answers again (true) (server/tailnet/probes.py). The receiver holds it
  unhealthy for the election as the prober does, so every replica elects the
  same primary; a replica that dies takes its verdicts with it (its routers
  are offline then anyway).
* ``{"replica", "beat": true}``: a heartbeat every `BEAT` seconds. A replica
  not heard from for `DEAD_AFTER` has died: its nodes go offline here unless
  streaming somewhere else. The leader (the alive replica of the least name)
  adds ``"primaries": {prefix: node}``, the HA primaries it serves: the
  election keeps a primary while it is eligible, so replicas that saw routers
  come online in a different order would keep different ones; the others take
  the leader's choice where it is eligible for them (`Tailnet.follow_primaries`).
* ``{"replica", "users": true}``: the runtime users changed there (one was
  admitted or deleted); the receiver reads them back from the store.
* ``{"replica", "hello": true}``: a replica started, or lost its LISTEN
  connection and may have missed notices. Every other replica answers with
  its streaming nodes: ``{"replica", "streaming": [ids], "first": bool}``,
  chunked under PostgreSQL's 8000-byte payload limit, then the routers it
  holds unhealthy: ``{"replica", "unhealthy": [ids]}`` (all of them; they
  replace what the receiver held of that replica). A replica starting later
  learns them so: nothing of health is stored, it lives as long as the probed
  stream does.

What a replica may have missed while not listening (or before it first
listened) it reads back from the store (`resync`): nodes that differ from
what it serves are republished, nodes gone are removed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from server.logs import event
from server.store.model import Node
from server.tailnet.registry import ChangeKind, NodeChange, NodeRegistry, classify
from server.tailnet.users import UserChange, UserRegistry

__all__ = [
    "BEAT",
    "CHANNEL",
    "DEAD_AFTER",
    "MAX_NOTICE",
    "Notice",
    "Replicas",
    "decode_notice",
    "encode_notice",
]

CHANNEL = "tailnetd_nodes"
BEAT = 1.0  # seconds between heartbeats
DEAD_AFTER = 5.0  # seconds of silence after which a replica counts as dead
MAX_NOTICE = 7900  # bytes; PostgreSQL refuses NOTIFY payloads of 8000 and more
_IDS_PER_NOTICE = 600  # node ids of at most 11 digits: well under MAX_NOTICE
_KINDS = frozenset({"volatile", "topology", "removed"})


@dataclass(frozen=True, slots=True)
class Notice:
    replica: str
    node: int | None = None
    kind: str | None = None
    online: bool | None = None
    healthy: bool | None = None
    beat: bool = False
    hello: bool = False
    streaming: tuple[int, ...] | None = None
    first: bool = False
    users: bool = False
    unhealthy: tuple[int, ...] | None = None
    primaries: Mapping[str, int] | None = None


class NoticeError(ValueError):
    """A notice that is not one of ours (logged and skipped)."""


def encode_notice(notice: Notice) -> str:
    doc: dict[str, Any] = {"replica": notice.replica}
    if notice.node is not None:
        doc.update(node=notice.node, kind=notice.kind, online=notice.online)
        if notice.healthy is not None:
            doc["healthy"] = notice.healthy
    if notice.beat:
        doc["beat"] = True
    if notice.hello:
        doc["hello"] = True
    if notice.users:
        doc["users"] = True
    if notice.streaming is not None:
        doc.update(streaming=list(notice.streaming), first=notice.first)
    if notice.unhealthy is not None:
        doc["unhealthy"] = list(notice.unhealthy)
    if notice.primaries is not None:
        doc["primaries"] = dict(notice.primaries)
    text = json.dumps(doc, separators=(",", ":"))
    if len(text.encode()) > MAX_NOTICE:
        raise ValueError(f"notice of {len(text)} bytes is over {MAX_NOTICE}")
    return text


def decode_notice(text: str) -> Notice:
    if len(text) > MAX_NOTICE:
        raise NoticeError(f"notice of {len(text)} bytes is over {MAX_NOTICE}")
    try:
        doc = json.loads(text)
    except ValueError:
        raise NoticeError("notice is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("replica"), str):
        raise NoticeError("notice names no replica")
    node, kind, online = doc.get("node"), doc.get("kind"), doc.get("online")
    if node is not None and (type(node) is not int or kind not in _KINDS):
        raise NoticeError("notice has a bad node id or kind")
    if online is not None and not isinstance(online, bool):
        raise NoticeError("notice has a bad online flag")
    healthy = doc.get("healthy")
    if healthy is not None and (not isinstance(healthy, bool) or node is None):
        raise NoticeError("notice has a bad health flag")
    streaming, unhealthy = doc.get("streaming"), doc.get("unhealthy")
    for ids in (streaming, unhealthy):
        if ids is not None and (not isinstance(ids, list) or any(type(i) is not int for i in ids)):
            raise NoticeError("notice has bad node ids")
    primaries = doc.get("primaries")
    if primaries is not None and (
        not isinstance(primaries, dict) or any(type(i) is not int for i in primaries.values())
    ):
        raise NoticeError("notice has bad primaries")
    return Notice(
        doc["replica"],
        node,
        kind,
        online,
        healthy,
        beat=doc.get("beat") is True,
        hello=doc.get("hello") is True,
        streaming=None if streaming is None else tuple(streaming),
        first=doc.get("first") is True,
        users=doc.get("users") is True,
        unhealthy=None if unhealthy is None else tuple(unhealthy),
        primaries=primaries,
    )


def _chunks(ids: list[int]) -> Iterator[list[int]]:
    for start in range(0, max(len(ids), 1), _IDS_PER_NOTICE):
        yield ids[start : start + _IDS_PER_NOTICE]


class Replicas:
    """This replica's side of the notices. `send` takes a notice text to
    NOTIFY; `known` is the node as this process last served it (the previous
    record of a change that came from elsewhere)."""

    def __init__(
        self,
        replica: str,
        registry: NodeRegistry,
        send: Callable[[str], None],
        *,
        known: Callable[[int], Node | None],
        known_ids: Callable[[], frozenset[int]],
        log: logging.Logger,
        users: UserRegistry | None = None,
        primaries: Callable[[], Mapping[str, int]] | None = None,
        follow_primaries: Callable[[Mapping[str, int]], None] | None = None,
    ) -> None:
        self.replica = replica
        self._primaries = primaries
        self._follow_primaries = follow_primaries
        self._users = users
        self._registry = registry
        self._send = send
        self._known = known
        self._known_ids = known_ids
        self._log = log
        self._applying = False  # publishing another replica's change: do not echo it
        self._streaming: set[int] = set()  # what the others were told streams here
        self._unhealthy: set[int] = set()  # what the others were told fails probes here
        self._heard: dict[str, float] = {}  # replica -> when last heard from
        self._next_beat: float | None = None
        registry.subscribe(self._local_change)
        if users is not None:
            users.subscribe(self._local_user_change)

    # Out

    def _local_change(self, change: NodeChange) -> None:
        if change.kind == "removed":  # here or elsewhere: no verdict of it to restate
            self._unhealthy.discard(change.node_id)
        if self._applying:
            return
        if change.healthy is not None:
            self._local_health(change.node_id, change.healthy)
            return
        node_id = change.node_id
        here = bool(self._registry.local_online_of((node_id,)))
        online: bool | None = None
        if here != (node_id in self._streaming):
            (self._streaming.add if here else self._streaming.discard)(node_id)
            online = here
        self._send_notice(Notice(self.replica, node_id, change.kind, online))

    def _local_health(self, node_id: int, healthy: bool) -> None:
        """This replica's probes (server/tailnet/probes.py) judged a router.
        Only its own verdicts go out: a router held unhealthy by a replica
        that died is healed here by the registry, and nobody else must hear
        that as this replica's verdict."""
        if healthy == (node_id not in self._unhealthy):
            return
        (self._unhealthy.discard if healthy else self._unhealthy.add)(node_id)
        self._send_notice(Notice(self.replica, node_id, "volatile", healthy=healthy))

    def _local_user_change(self, change: UserChange) -> None:
        if not self._applying and change.kind != "login":
            self._send_notice(Notice(self.replica, users=True))

    def _send_notice(self, notice: Notice) -> None:
        try:
            self._send(encode_notice(notice))
        except Exception as exc:  # the database is away: the others resync when it returns
            self._log.warning(
                "cannot tell the other replicas: %s", exc, extra=event("replica.send_failed")
            )

    def hello(self) -> None:
        """Listening (again): ask the others what streams where."""
        self._send_notice(Notice(self.replica, hello=True))

    def _announce_streaming(self) -> None:
        ids = sorted(self._streaming)
        for i, chunk in enumerate(_chunks(ids)):
            self._send_notice(Notice(self.replica, streaming=tuple(chunk), first=i == 0))
        self._send_notice(Notice(self.replica, unhealthy=tuple(sorted(self._unhealthy))))

    # In

    def receive(self, text: str, now: float) -> None:
        try:
            notice = decode_notice(text)
        except NoticeError as exc:
            self._log.warning("ignoring a notice: %s", exc, extra=event("replica.bad_notice"))
            return
        if notice.replica == self.replica:
            return
        self._heard[notice.replica] = now
        self._applying = True
        try:
            self._apply(notice)
        finally:
            self._applying = False

    def _apply(self, notice: Notice) -> None:
        if notice.users and self._users is not None:
            self._users.reload()
        if notice.primaries is not None and self._follow_primaries is not None:
            if notice.replica == min([self.replica, *self._heard]):
                self._follow_primaries(notice.primaries)
        if notice.hello:
            self._announce_streaming()
        if notice.streaming is not None:
            if notice.first:  # its health verdicts follow in an `unhealthy` notice
                self._registry.replica_gone(notice.replica, health=False)
            for node_id in notice.streaming:
                self._registry.remote_online(notice.replica, node_id, True)
        if notice.unhealthy is not None:
            self._registry.remote_unhealthy(notice.replica, frozenset(notice.unhealthy))
        if notice.node is None:
            return
        node_id = notice.node
        if notice.healthy is not None:
            self._registry.remote_health(notice.replica, node_id, notice.healthy)
            return
        node = self._registry.load(node_id)  # as the other replica wrote it
        previous = self._known(node_id)
        if node is None:
            if previous is not None or notice.kind == "removed":
                self._registry.removed_elsewhere(node_id, previous)
            return
        if notice.kind == "removed":
            return  # removed there, yet in the database: a stale notice
        kind: ChangeKind = "topology" if notice.kind == "topology" else "volatile"
        online = None
        if notice.online is not None:
            online = self._registry.remote_online(
                notice.replica, node_id, notice.online, publish=False
            )
        self._registry.publish(NodeChange(kind, node_id, node, previous, online=online))

    def resync(self) -> None:
        """Notices may have been missed (or were sent before we listened):
        publish every node the store holds differently from what this process
        serves, remove those gone, forget what other replicas stream and ask
        again."""
        self._applying = True
        try:
            if self._users is not None:
                self._users.reload()  # before the nodes: their owners must be known
            for replica in self._registry.replicas_seen():
                self._registry.replica_gone(replica)
            nodes = {n.id: n for n in self._registry.nodes()}
            for node_id in sorted(self._known_ids() - nodes.keys()):
                self._registry.removed_elsewhere(node_id, self._known(node_id))
            for node_id, node in nodes.items():
                previous = self._known(node_id)
                if previous != node:
                    self._registry.publish(
                        NodeChange(classify(previous, node), node_id, node, previous)
                    )
        finally:
            self._applying = False
        self.hello()

    # Time

    def get_timer(self) -> float | None:
        return self._next_beat

    def handle_timer(self, now: float) -> None:
        """Send the heartbeat when due; count silent replicas as dead."""
        if self._next_beat is None or now >= self._next_beat:
            primaries = None
            if self._primaries is not None and self.replica == min([self.replica, *self._heard]):
                primaries = self._primaries() or None  # the leader's, for the others
            self._send_notice(Notice(self.replica, beat=True, primaries=primaries))
            self._next_beat = now + BEAT
        dead = [r for r, heard in self._heard.items() if now - heard > DEAD_AFTER]
        for replica in dead:
            del self._heard[replica]
            self._log.warning(
                "replica %s went silent: its nodes are offline here",
                replica,
                extra=event("replica.dead", replica=replica),
            )
            self._registry.replica_gone(replica)
        if dead:
            # It may have died between a commit and its notice: read the store.
            self.resync()

    def alive(self) -> frozenset[str]:
        return frozenset(self._heard)

"""What the requests inside the Noise channel mean: /machine/register and
/machine/map (protocol.md §4). Transport-free: takes a ControlRequest, returns
a ControlResponse, with the registry and the running tailnet behind it.

Every request is bound to the machine key learned in the Noise handshake; a
node key in a body is honoured only when it belongs to that machine
(headscale's rule: otherwise knowing a node key would let anyone act as it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry

from server.edge.control_conn import ControlRequest, ControlResponse
from server.logs import event
from server.metrics import Metrics
from server.protocol.keys import DiscoPublic, KeyFormatError, NodePublic
from server.protocol.mapframe import MapFrameEncoder
from server.store.interface import Store
from server.store.model import KeyRejected, Node
from server.tailnet import NodeRegistry, Tailnet
from server.tailnet.mapper import MapSession, build_map, not_served_map, user_id
from server.wire import TAGGED_USER_ID

__all__ = ["MIN_CAPABILITY_VERSION", "ControlHandler", "ControlSettings"]

# Tailscale 1.80: the oldest of the last ten minor releases (protocol.md §2.4).
MIN_CAPABILITY_VERSION = 113
TOLD_MAX = 4096


class RequestRejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class ControlSettings:
    node_key_expiry: timedelta | None = timedelta(days=180)
    keepalive_min: float = 50.0
    keepalive_max: float = 58.0


class ControlHandler:
    def __init__(
        self,
        tailnet: Tailnet,
        registry: NodeRegistry,
        store: Store,
        *,
        clock: Callable[[], datetime],
        settings: Callable[[], ControlSettings],
        log: logging.Logger,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._tailnet = tailnet
        self._registry = registry
        self._store = store  # pre-auth keys; nodes are written through the registry
        self._clock = clock
        self._settings = settings
        self._log = log
        self._rng = rng or random.Random()
        self._metrics = metrics or Metrics(CollectorRegistry(), monotonic=time.monotonic)
        self._told: dict[NodePublic, None] = {}  # node keys told they are not served

    async def __call__(self, req: ControlRequest) -> ControlResponse:
        try:
            if req.path == "/machine/register" and req.method == "POST":
                return self._register(req)
            if req.path == "/machine/map" and req.method == "POST":
                return self._map(req)
            return ControlResponse(404, b"not implemented\n", content_type="text/plain")
        except RequestRejected as exc:
            if req.path == "/machine/register":
                self._metrics.registration("rejected")
            self._log.info(
                "control: %s %s from %s rejected: %s",
                req.method,
                req.path,
                req.machine_key.short(),
                exc.message,
            )
            return ControlResponse(
                exc.status, exc.message.encode() + b"\n", content_type="text/plain"
            )

    # /machine/register

    def _register(self, req: ControlRequest) -> ControlResponse:
        body = _json_body(req)
        _check_version(body, req)
        now = self._clock()
        node_key = _key(NodePublic, body.get("NodeKey"), "NodeKey")
        old_key = _key(NodePublic, body.get("OldNodeKey") or NodePublic.zero().text, "OldNodeKey")
        expiry = _time(body.get("Expiry"))
        auth = body.get("Auth") or {}
        auth_key = auth.get("AuthKey") if isinstance(auth, dict) else None
        sent_hostinfo = body.get("Hostinfo")
        hostinfo: dict[str, Any] = sent_hostinfo if isinstance(sent_hostinfo, dict) else {}

        registry = self._registry
        node = registry.by_node_key(node_key)
        if node is None and not old_key.is_zero:
            node = registry.by_node_key(old_key)
        if node is not None and node.machine_key != req.machine_key:
            raise RequestRejected(403, "node key belongs to another machine")
        if node is None:
            node = registry.by_machine_key(req.machine_key)

        # `tailscale logout` sends Unix 123; any past Expiry asks the same (protocol.md §4.1.3).
        if expiry is not None and expiry <= now:
            return self._logout(node, now)
        if auth_key:
            return self._register_with_key(req, node, node_key, str(auth_key), hostinfo, body, now)
        if node is not None and node.node_key in (node_key, old_key):
            if node.key_expiry is not None and node.key_expiry <= now:
                self._metrics.registration("node_expired")
                return _json(self._register_response(node, expired=True))
            renewal = node.node_key != node_key
            if renewal:  # seamless key renewal
                node = registry.renew_key(node, node_key, now)
            self._metrics.registration("renewed" if renewal else "resumed")
            return _json(self._register_response(node))
        self._metrics.registration("needs_login")
        return _json(
            {
                "Error": "this tailnetd server has no interactive login yet: "
                "log in with a pre-auth key (tailscale up --auth-key=…)",
            }
        )

    def _register_with_key(
        self,
        req: ControlRequest,
        node: Node | None,
        node_key: NodePublic,
        auth_key: str,
        hostinfo: dict[str, Any],
        body: dict[str, Any],
        now: datetime,
    ) -> ControlResponse:
        try:
            key = self._store.check_preauth_key(auth_key, now)
        except KeyRejected as exc:
            self._metrics.registration("expired_key" if "expired" in exc.reason else "bad_key")
            self._log.info(
                "register: %s: %s",
                req.machine_key.short(),
                exc,
                extra=event("register.refused", machine=req.machine_key.short(), reason=exc.reason),
            )
            return _json({"Error": f"invalid auth key: {exc}"})
        owner = None if key.tags else key.user
        expiry_span = self._settings().node_key_expiry
        key_expiry = None if key.tags or expiry_span is None else now + expiry_span
        ephemeral = key.ephemeral or bool(body.get("Ephemeral"))
        # The store consumes a single-use key in the same transaction as the node write.
        node = self._registry.register(
            machine_key=req.machine_key,
            node_key=node_key,
            hostname=str(hostinfo.get("Hostname") or "node"),
            user=owner,
            tags=key.tags,
            now=now,
            auth_key_id=key.id,
            ephemeral=ephemeral,
            key_expiry=key_expiry,
            hostinfo=json.dumps(hostinfo, sort_keys=True),
            capver=int(body.get("Version") or 0),
            existing=node,
        )
        self._metrics.registration("ok")
        self._log.info(
            "register: node %d %s (%s) joined",
            node.id,
            node.given_name,
            owner or ",".join(key.tags),
            extra=event(
                "node.registered",
                node=node.id,
                node_name=node.given_name,
                user=owner,
                tags=list(key.tags),
                commit=self._tailnet.source.id,
            ),
        )
        return _json(self._register_response(node))

    def _logout(self, node: Node | None, now: datetime) -> ControlResponse:
        self._metrics.registration("logout")
        if node is None:
            return _json({"NodeKeyExpired": True, "MachineAuthorized": False})
        if node.ephemeral:
            self._registry.remove(node.id)
        else:
            node = self._registry.set_key_expiry(node.id, now)
        self._log.info(
            "register: node %d %s logged out",
            node.id,
            node.given_name,
            extra=event("node.logged_out", node=node.id, node_name=node.given_name, user=node.user),
        )
        return _json(self._register_response(node, expired=True))

    def _register_response(self, node: Node, *, expired: bool = False) -> dict[str, Any]:
        users = self._tailnet.source.users
        if node.user is None or node.tags:
            uid, login, display = TAGGED_USER_ID, "tagged-devices", "Tagged Devices"
        else:
            email, display = users.get(node.user, (node.user, node.user))
            uid, login = user_id(node), email
        return {
            "User": {"ID": uid, "DisplayName": display, "LoginName": login},
            "Login": {
                "ID": uid,
                "Provider": "tailnetd",
                "LoginName": login,
                "DisplayName": display,
            },
            "NodeKeyExpired": expired,
            "MachineAuthorized": True,
        }

    # /machine/map

    def _map(self, req: ControlRequest) -> ControlResponse:
        body = _json_body(req)
        _check_version(body, req)
        node_key = _key(NodePublic, body.get("NodeKey"), "NodeKey")
        node = self._registry.by_node_key(node_key)
        if node is not None and node.machine_key != req.machine_key:
            raise RequestRejected(404, "node not found")
        now = self._clock()
        if node is None or not self._tailnet.serves(node.id):
            return self._not_served(req, node_key, node, now)
        stream = bool(body.get("Stream"))
        node = self._apply_map_request(node, body, stream, now)
        if not stream:
            if body.get("OmitPeers"):
                return ControlResponse(200)
            return ControlResponse(200, self._one_map(node.id, now))
        return ControlResponse(200, stream=self._stream(node.id))

    def _apply_map_request(
        self, node: Node, body: dict[str, Any], stream: bool, now: datetime
    ) -> Node:
        changes: dict[str, Any] = {}
        disco = body.get("DiscoKey")
        if disco:
            disco_key = _key(DiscoPublic, disco, "DiscoKey")
            if disco_key != node.disco_key:
                changes["disco_key"] = disco_key
        hostinfo = body.get("Hostinfo")
        if isinstance(hostinfo, dict):
            merged = dict(hostinfo)
            if "NetInfo" not in merged:  # NetInfo is sent only when it changed
                prev = json.loads(node.hostinfo or "{}")
                if isinstance(prev, dict) and "NetInfo" in prev:
                    merged["NetInfo"] = prev["NetInfo"]
            text = json.dumps(merged, sort_keys=True)
            if text != node.hostinfo:
                changes["hostinfo"] = text
        if not stream:  # since capver 68 only lite requests carry authoritative endpoints
            endpoints = tuple(e for e in body.get("Endpoints") or [] if isinstance(e, str))
            if endpoints != node.endpoints:
                changes["endpoints"] = endpoints
        version = body.get("Version")
        if isinstance(version, int) and version != node.capver:
            changes["capver"] = version
        if not changes:
            return node
        return self._registry.update_from_map(node, now=now, **changes)

    def _not_served(
        self, req: ControlRequest, node_key: NodePublic, node: Node | None, now: datetime
    ) -> ControlResponse:
        """A deleted node, or one whose user left git, still polling: one map
        whose self node has expired, so the client stops and shows that it
        needs to log in, instead of "Running" with an address that the server
        may hand to the next node. Logged once per node key."""
        if node_key not in self._told:
            self._told[node_key] = None
            while len(self._told) > TOLD_MAX:
                del self._told[next(iter(self._told))]
            why = "was deleted" if node is None else f"belongs to user {node.user!r}, not in git"
            self._log.info(
                "map: node key %s from %s %s: told to log in again",
                node_key.short(),
                req.machine_key.short(),
                why,
            )
        return ControlResponse(200, MapFrameEncoder().encode(not_served_map(node_key, now)))

    def _one_map(self, node_id: int, now: datetime) -> bytes:
        state = build_map(self._tailnet.context, node_id, now)
        msg = MapSession(node_id).next_message(state, now) if state else None
        return MapFrameEncoder().encode(msg or b"{}")

    async def _stream(self, node_id: int) -> AsyncIterator[bytes]:
        encoder = MapFrameEncoder()
        session = MapSession(node_id)
        handle = self._tailnet.open_session(node_id)
        self._registry.connected(node_id)
        try:
            while not handle.closed:
                full, peers = handle.take()
                now = self._clock()
                ctx = self._tailnet.context
                msg = None
                if full:
                    state = build_map(ctx, node_id, now)
                    if state is None:
                        return
                    msg = session.next_message(state, now)
                elif peers:
                    msg = session.peer_changes(ctx, peers, now)
                if msg is not None:
                    frame = encoder.encode(msg)
                    yield frame
                    self._metrics.map_sent("full" if full else "delta", len(frame))
                self._metrics.caught_up(handle)
                settings = self._settings()
                timeout = self._rng.uniform(settings.keepalive_min, settings.keepalive_max)
                try:
                    await asyncio.wait_for(handle.wake.wait(), timeout)
                except TimeoutError:
                    keepalive = encoder.keepalive()
                    yield keepalive
                    self._metrics.map_sent("keepalive", len(keepalive))
        finally:
            self._metrics.session_closed(handle)
            self._tailnet.close_session(handle)
            self._registry.disconnected(node_id, self._clock())  # records last seen


def _json(value: dict[str, Any]) -> ControlResponse:
    return ControlResponse(200, json.dumps(value).encode())


def _json_body(req: ControlRequest) -> dict[str, Any]:
    try:
        body = json.loads(req.body or b"{}")
    except ValueError as exc:
        raise RequestRejected(400, f"request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestRejected(400, "request body must be a JSON object")
    return body


def _check_version(body: dict[str, Any], req: ControlRequest) -> None:
    version = body.get("Version")
    version = version if isinstance(version, int) else req.noise_version
    if version < MIN_CAPABILITY_VERSION:
        raise RequestRejected(
            400,
            f"client capability version {version} is too old: tailnetd supports "
            f"{MIN_CAPABILITY_VERSION} (Tailscale 1.80) and newer; please upgrade tailscale",
        )


def _key(kind: Any, text: Any, field: str) -> Any:
    try:
        return kind.parse(text)
    except (KeyFormatError, TypeError):
        raise RequestRejected(400, f"{field} is not a valid {kind.PREFIX} key") from None


def _time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text or text.startswith("0001-01-01"):
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise RequestRejected(400, f"bad time {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)

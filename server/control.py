"""What the requests inside the Noise channel mean: /machine/register and
/machine/map (protocol.md §4), SSH check actions and health probes.
Transport-free: takes a ControlRequest, returns a ControlResponse, with the
registry and the running tailnet behind it. Each body is decoded here once;
what a registration means and does is `server/auth/register.py`; this module
routes, and a map poll's stream is `server/map_streams.py`.

Every request is bound to the machine key learned in the Noise handshake; a
node key in a body is honoured only when it belongs to that machine
(headscale's rule: otherwise knowing a node key would let anyone act as it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from gitctl.policy.viewindex import ViewIndex
from gitctl.tailnet import TailnetSettings
from server.auth.pending import PendingLogins
from server.auth.register import Registrar, RequestRejected
from server.auth.sshcheck import SshChecks
from server.edge.control_types import ControlRequest, ControlResponse
from server.map_streams import MapStreams
from server.metrics import Metrics
from server.protocol.keys import NodePublic
from server.protocol.mapframe import MapFrameEncoder
from server.store.interface import Store
from server.store.model import Node
from server.tailnet import NodeRegistry, Tailnet
from server.tailnet.keepalives import KeepAlives
from server.tailnet.mapper import not_served_map, unapproved_map
from server.tailnet.registry import NodeChange
from server.tailnet.session import MapSession, Wake
from server.tailnet.staged import StagedSends
from server.tailnet.wave import VolatileWave
from server.wire import (
    MapRequest,
    RegisterRequest,
    WireError,
    decode_json,
    limits,
)

_Request = TypeVar("_Request", RegisterRequest, MapRequest)

__all__ = ["MIN_CAPABILITY_VERSION", "ControlHandler", "ControlSettings"]

# Tailscale 1.80: the oldest of the last ten minor releases (protocol.md §2.4).
MIN_CAPABILITY_VERSION = 113
TOLD_MAX = 4096
_SSH_ACTION = re.compile(r"/machine/ssh/action/(\d{1,18})/to/(\d{1,18})")
PROBE_PATH = "/machine/probe/"  # + token: a router answering a health probe (HEAD over Noise)
_PROBE = re.compile(re.escape(PROBE_PATH) + r"([A-Za-z0-9_-]{1,64})")


@dataclass(frozen=True, slots=True)
class ControlSettings:
    node_key_expiry: timedelta | None = timedelta(days=180)
    keepalive_min: float = 50.0
    keepalive_max: float = 58.0
    device_approval: bool = False  # new nodes wait for an operator (settings.yaml)
    key_expiry_from_token: bool = False  # OIDC logins: the key expires with the ID token

    @classmethod
    def from_tailnet(cls, settings: TailnetSettings) -> ControlSettings:
        """What settings.yaml of the serving commit asks of registrations."""
        return cls(
            node_key_expiry=settings.node_key_expiry,
            device_approval=settings.device_approval == "required",
            key_expiry_from_token=settings.oidc_key_expiry == "token",
        )


class ControlHandler(MapStreams):
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
        logins: PendingLogins | None = None,
        ssh_checks: SshChecks | None = None,
        on_refused: Callable[[str, str], None] | None = None,
        on_probe: Callable[[int, str], None] | None = None,
    ) -> None:
        self._on_probe = on_probe  # (node id, token): a router answered a health probe
        self._tailnet = tailnet
        self._registry = registry
        self._clock = clock
        self._settings = settings
        self._log = log
        self._rng = rng or random.Random()
        self._metrics = metrics or Metrics(monotonic=time.monotonic)
        self._told: dict[NodePublic, None] = {}  # node keys told they are not served
        self._keepalives = KeepAlives()
        self._ssh_checks = ssh_checks
        self._registrar = Registrar(
            registry,
            store,
            source=lambda: tailnet.source,
            clock=clock,
            terms=settings,
            log=log,
            metrics=self._metrics,
            logins=logins,
            on_refused=on_refused,
        )
        # node id -> set when it is approved (map polls of unapproved nodes wait on it)
        self._approvals: dict[int, asyncio.Event] = {}
        registry.subscribe(self._node_changed)
        # An idle stream's share of a volatile wave is sent in bulk (wave.py).
        tailnet.deliveries.bulk = VolatileWave(self._wave_context, clock, self._wave_sent)
        # The other deliveries' frames leave after the turn's steps (staged.py).
        self._staged = StagedSends(self._metrics.caught_up)
        tailnet.deliveries.flush = self._staged.flush

    async def __call__(self, req: ControlRequest) -> ControlResponse:
        try:
            if req.path == "/machine/register" and req.method == "POST":
                return await self._register(req)
            if req.path == "/machine/map" and req.method == "POST":
                return self._map(req, _decode(MapRequest, req))
            split = urlsplit(req.path)
            probe = _PROBE.fullmatch(split.path)
            if probe is not None and req.method in ("HEAD", "GET"):
                return self._probe_answer(req, probe[1])
            ssh = _SSH_ACTION.fullmatch(split.path)
            if ssh is not None and req.method == "GET" and self._ssh_checks is not None:
                query = {k: v[0] for k, v in parse_qs(split.query).items()}
                return await self._ssh_action(req, int(ssh[1]), int(ssh[2]), query)
            return ControlResponse(404, b"not implemented\n", content_type="text/plain")
        except RequestRejected as exc:
            return self._rejected(req, exc)

    def answer_now(self, req: ControlRequest) -> ControlResponse | None:
        """The answer to a map request that does not stream, made at once: the
        connection sends it without a task (an endpoint change's lite
        request, where that task was a part of each change's cost). None:
        `__call__` answers it in the request's task (a streaming poll waits
        its turn, so that a poll the client cancelled before it ends first)."""
        if req.path != "/machine/map" or req.method != "POST":
            return None
        try:
            body = _decode(MapRequest, req)
            return None if body.stream else self._map(req, body)
        except RequestRejected as exc:
            return self._rejected(req, exc)

    def _rejected(self, req: ControlRequest, exc: RequestRejected) -> ControlResponse:
        if req.path == "/machine/register":
            self._metrics.registration("rejected")
        self._log.info(
            "control: %s %s from %s rejected: %s",
            req.method,
            req.path,
            req.machine_key.short(),
            exc.message,
        )
        return ControlResponse(exc.status, exc.message.encode() + b"\n", content_type="text/plain")

    def _probe_answer(self, req: ControlRequest, token: str) -> ControlResponse:
        """The client's answer to a PingRequest: it comes over Noise, so the
        machine key of the connection says which node answered."""
        node = self._registry.by_machine_key(req.machine_key)
        if node is not None and self._on_probe is not None:
            self._on_probe(node.id, token)
        return ControlResponse(200, b"", content_type="text/plain")

    # /machine/register (server/auth/register.py)

    async def _register(self, req: ControlRequest) -> ControlResponse:
        body = _decode(RegisterRequest, req)
        _check_version(body.version, req)
        return _json(await self._registrar.register(req.machine_key, body))

    # /machine/ssh/action (SSH check mode)

    async def _ssh_action(
        self, req: ControlRequest, src: int, dst: int, query: dict[str, str]
    ) -> ControlResponse:
        """The destination node `dst` asks what to do with a connection from
        node `src` that a `check` rule holds (ssh/tailssh: HoldAndDelegate)."""
        assert self._ssh_checks is not None
        dst_node = self._registry.get(dst)
        if dst_node is None or dst_node.machine_key != req.machine_key:
            raise RequestRejected(403, "only the destination node may ask about its SSH checks")
        local_user = query.get("local_user", "")[:256]
        auth_id = query.get("auth_id", "")[:64]
        if auth_id:
            return _json(await self._ssh_checks.wait(auth_id, dst))
        src_node = self._registry.get(src)
        period = self._check_period(src, dst)
        if src_node is None or period is None or not local_user:
            why = "no check rule of the tailnet policy covers this connection now"
            return _json({"reject": True, "message": f"# tailnetd: {why}\r\n"})
        owner = None if src_node.tags else src_node.user
        action = self._ssh_checks.action(src, dst, local_user, owner, period, self._clock())
        return _json(action)

    def _check_period(self, src: int, dst: int) -> timedelta | None:
        """The checkPeriod of the serving policy's check rule from `src` to `dst`."""
        index = self._tailnet.context.views.compiled
        visibility = getattr(index, "visibility", None)
        if not isinstance(visibility, ViewIndex):
            return None
        at = visibility.position
        if src not in at or dst not in at:
            return None
        seconds = visibility.ssh.check_period(at[src], at[dst])
        return None if seconds is None else timedelta(seconds=seconds)

    # /machine/map

    def _map(self, req: ControlRequest, body: MapRequest) -> ControlResponse:
        _check_version(body.version, req)
        node_key = body.node_key
        if node_key.is_zero:
            raise RequestRejected(400, "MapRequest.NodeKey: missing")
        node = self._registry.by_node_key(node_key)
        if node is not None and node.machine_key != req.machine_key:
            raise RequestRejected(404, "node not found")
        now = self._clock()
        if node is not None and not node.approved:
            return self._unapproved(node, body, now, req.send_now)
        if node is None or not self._tailnet.serves(node.id):
            return self._not_served(req, node_key, node, now)
        stream = body.stream
        node = self._apply_map_request(node, body, now)
        if not stream:
            if body.omit_peers:
                return ControlResponse(200)
            return ControlResponse(200, self._one_map(node.id, now))
        return ControlResponse(200, stream=self._stream(node.id, req.send_now))

    def _apply_map_request(self, node: Node, body: MapRequest, now: datetime) -> Node:
        changes: dict[str, Any] = {}
        if body.disco_key is not None and body.disco_key != node.disco_key:
            changes["disco_key"] = body.disco_key
        if body.hostinfo is not None:
            hostinfo = body.hostinfo.keeping_net_info(node.hostinfo)
            if hostinfo != node.hostinfo:
                changes["hostinfo"] = hostinfo
        if not body.stream:  # since capver 68 only lite requests carry authoritative endpoints
            endpoints = tuple(str(e) for e in body.endpoints or ())
            if endpoints != node.endpoints:
                changes["endpoints"] = endpoints
        if body.version and body.version != node.capver:
            changes["capver"] = body.version
        if not changes:
            return node
        return self._registry.update_from_map(node, now=now, **changes)

    def _node_changed(self, change: NodeChange) -> None:
        node = change.node
        if node is not None and node.approved and node.id in self._approvals:
            self._approvals.pop(node.id).set()

    def _unapproved(
        self,
        node: Node,
        body: MapRequest,
        now: datetime,
        send_now: Callable[[bytes], bool] | None = None,
    ) -> ControlResponse:
        """A node waiting for device approval: a map of itself, not authorized;
        a streaming poll then waits and turns into the real stream once approved."""
        node = self._apply_map_request(node, body, now)
        frame = MapFrameEncoder().encode(unapproved_map(node, self._tailnet.context.derp_map, now))
        if not body.stream:
            return ControlResponse(200, b"" if body.omit_peers else frame)
        return ControlResponse(200, stream=self._await_approval(node.id, frame, send_now))

    async def _await_approval(
        self, node_id: int, first: bytes, send_now: Callable[[bytes], bool] | None = None
    ) -> AsyncIterator[bytes]:
        encoder = MapFrameEncoder()
        yield first
        approved = self._approvals.setdefault(node_id, asyncio.Event())
        while True:
            node = self._registry.get(node_id)
            if node is None:
                return  # deleted while it waited
            if node.approved:
                break
            settings = self._settings()
            timeout = self._rng.uniform(settings.keepalive_min, settings.keepalive_max)
            try:
                await asyncio.wait_for(approved.wait(), timeout)
                break
            except TimeoutError:
                yield encoder.keepalive()
        node = self._registry.get(node_id)
        if node is None or not self._tailnet.serves(node_id):
            return
        async for frame in self._stream(node_id, send_now):
            yield frame

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
        session, ctx = MapSession(node_id), self._tailnet.context
        msg = session.step(ctx, Wake(full=True), now) if session.serves(ctx) else None
        return MapFrameEncoder().encode(msg or b"{}")


def _json(value: dict[str, Any]) -> ControlResponse:
    return ControlResponse(200, json.dumps(value).encode())


def _decode(kind: type[_Request], req: ControlRequest) -> _Request:
    """The request body, decoded and bounded before anything is looked up or written."""
    try:
        return decode_json(kind, req.body or b"{}", limit=limits.MAX_REQUEST_BODY)
    except WireError as exc:
        raise RequestRejected(400, str(exc)) from None


def _check_version(sent: int, req: ControlRequest) -> None:
    version = sent or req.noise_version
    if version < MIN_CAPABILITY_VERSION:
        raise RequestRejected(
            400,
            f"client capability version {version} is too old: tailnetd supports "
            f"{MIN_CAPABILITY_VERSION} (Tailscale 1.80) and newer; please upgrade tailscale",
        )

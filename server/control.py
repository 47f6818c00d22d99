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
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry

from gitctl.policy.tagowners import tag_refusal
from gitctl.policy.viewindex import ViewIndex
from server.auth.pending import (
    LoginRefused,
    PendingLogin,
    PendingLogins,
    ProviderLogin,
    existing_node,
    register_node,
)
from server.auth.sshcheck import SshChecks
from server.edge.control_conn import ControlRequest, ControlResponse
from server.logs import event
from server.metrics import Metrics
from server.protocol.keys import NodePublic
from server.protocol.mapframe import MapFrameEncoder
from server.store.interface import Store
from server.store.model import KeyRejected, Node
from server.tailnet import NodeRegistry, Tailnet
from server.tailnet.mapper import (
    MapSession,
    build_map,
    not_served_map,
    unapproved_map,
    user_id,
)
from server.tailnet.registry import NodeChange
from server.wire import (
    TAGGED_USER_ID,
    Hostinfo,
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
    device_approval: bool = False  # new nodes wait for an operator (settings.yaml)
    key_expiry_from_token: bool = False  # OIDC logins: the key expires with the ID token


def _expired(node: Node, now: datetime) -> bool:
    return node.key_expiry is not None and node.key_expiry <= now


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
        logins: PendingLogins | None = None,
        ssh_checks: SshChecks | None = None,
        on_refused: Callable[[str, str], None] | None = None,
        on_probe: Callable[[int, str], None] | None = None,
    ) -> None:
        self._on_probe = on_probe  # (node id, token): a router answered a health probe
        self._tailnet = tailnet
        self._on_refused = on_refused  # (machine, reason): a login refused its key
        self._registry = registry
        self._store = store  # pre-auth keys; nodes are written through the registry
        self._clock = clock
        self._settings = settings
        self._log = log
        self._rng = rng or random.Random()
        self._metrics = metrics or Metrics(CollectorRegistry(), monotonic=time.monotonic)
        self._told: dict[NodePublic, None] = {}  # node keys told they are not served
        self._logins = logins
        self._ssh_checks = ssh_checks
        if logins is not None:
            logins.set_registrar(self._register_login)
        # node id -> set when it is approved (map polls of unapproved nodes wait on it)
        self._approvals: dict[int, asyncio.Event] = {}
        registry.subscribe(self._node_changed)

    async def __call__(self, req: ControlRequest) -> ControlResponse:
        try:
            if req.path == "/machine/register" and req.method == "POST":
                return await self._register(req)
            if req.path == "/machine/map" and req.method == "POST":
                return self._map(req)
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

    def _probe_answer(self, req: ControlRequest, token: str) -> ControlResponse:
        """The client's answer to a PingRequest: it comes over Noise, so the
        machine key of the connection says which node answered."""
        node = self._registry.by_machine_key(req.machine_key)
        if node is not None and self._on_probe is not None:
            self._on_probe(node.id, token)
        return ControlResponse(200, b"", content_type="text/plain")

    # /machine/register

    async def _register(self, req: ControlRequest) -> ControlResponse:
        body = _decode(RegisterRequest, req)
        _check_version(body.version, req)
        if body.followup and self._logins is not None:
            return await self._followup(req, body.followup)
        now = self._clock()
        node_key, old_key = body.node_key, body.old_node_key
        if node_key.is_zero:
            raise RequestRejected(400, "RegisterRequest.NodeKey: missing")
        expiry = body.requested_expiry
        auth_key = body.auth.auth_key if body.auth is not None else ""

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
            return self._register_with_key(req, node, auth_key, body, now)
        if node is not None and node.node_key in (node_key, old_key):
            expired = node.key_expiry is not None and node.key_expiry <= now
            if expired and (node.node_key == node_key or self._logins is None):
                # The daemon restarting with its expired key: it shows "logged out".
                self._metrics.registration("node_expired")
                return _json(self._register_response(node, expired=True))
            if expired:  # a fresh key for an expired node: log in again, same node
                return self._begin_login(req, body, now)
            renewal = node.node_key != node_key
            if renewal:  # seamless key renewal
                node = registry.renew_key(node, node_key, now)
            self._metrics.registration("renewed" if renewal else "resumed")
            return _json(self._register_response(node))
        if self._logins is not None:
            return self._begin_login(req, body, now)
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
        auth_key: str,
        body: RegisterRequest,
        now: datetime,
    ) -> ControlResponse:
        node_key = body.node_key
        hostinfo = body.hostinfo or Hostinfo()
        try:
            key = self._store.check_preauth_key(auth_key, now)
        except KeyRejected as exc:
            if node is not None and node.node_key == node_key and not _expired(node, now):
                # A retry whose first answer was lost (the server died after the
                # commit): the node holds this key already, its auth key is spent.
                self._metrics.registration("resumed")
                return _json(self._register_response(node))
            self._metrics.registration("expired_key" if "expired" in exc.reason else "bad_key")
            self._log.info(
                "register: %s: %s",
                req.machine_key.short(),
                exc,
                extra=event("register.refused", machine=req.machine_key.short(), reason=exc.reason),
            )
            if self._on_refused is not None:
                self._on_refused(req.machine_key.short(), exc.reason)
            return _json({"Error": f"invalid auth key: {exc}"})
        tags, refusal = self._tags_for(key.user, key.tags, hostinfo.request_tags)
        if refusal is not None:
            self._metrics.registration("tags_refused")
            self._log.info(
                "register: %s: %s",
                req.machine_key.short(),
                refusal,
                extra=event("register.refused", machine=req.machine_key.short(), reason=refusal),
            )
            if self._on_refused is not None:
                self._on_refused(req.machine_key.short(), refusal)
            return _json({"Error": refusal})
        owner = None if tags else key.user
        expiry_span = self._settings().node_key_expiry
        key_expiry = None if tags or expiry_span is None else now + expiry_span
        ephemeral = key.ephemeral or body.ephemeral
        # The store consumes a single-use key in the same transaction as the node write.
        node = self._registry.register(
            machine_key=req.machine_key,
            node_key=node_key,
            hostname=hostinfo.hostname or "node",
            user=owner,
            tags=tags,
            now=now,
            auth_key_id=key.id,
            ephemeral=ephemeral,
            key_expiry=key_expiry,
            hostinfo=hostinfo,
            capver=body.version,
            existing=node,
            approved=not self._settings().device_approval,
        )
        self._metrics.registration("ok")
        self._log.info(
            "register: node %d %s (%s) joined",
            node.id,
            node.given_name,
            owner or ",".join(tags),
            extra=event(
                "node.registered",
                node=node.id,
                node_name=node.given_name,
                user=owner,
                tags=list(tags),
                commit=self._tailnet.source.id,
            ),
        )
        return _json(self._register_response(node))

    def _tags_for(
        self, user: str, key_tags: Sequence[str], requested: Sequence[str] | None
    ) -> tuple[tuple[str, ...], str | None]:
        """The tags a node logging in with a key of `user` and `key_tags` carries,
        and why not when `requested` (Hostinfo.RequestTags) asks for tags that
        tagOwners do not let it own. Requested tags replace the key's own."""
        if not requested:
            return tuple(key_tags), None
        wanted = tuple(sorted(set(requested)))
        source = self._tailnet.source
        email = None if key_tags else source.users.get(user, (user, user))[0]
        refusal = tag_refusal(source.policy, wanted, email=email, key_tags=key_tags)
        return wanted, refusal

    def _begin_login(
        self, req: ControlRequest, body: RegisterRequest, now: datetime
    ) -> ControlResponse:
        """No key and no current node: a person must log in at the URL (protocol.md §4.1.3)."""
        assert self._logins is not None
        self._metrics.registration("needs_login")
        login = self._logins.begin(
            req.machine_key,
            body.node_key,
            body.ephemeral,
            body.old_node_key,
            now,
            hostinfo=body.hostinfo,
            capver=body.version,
        )
        return _json({"AuthURL": login.url})

    async def _followup(self, req: ControlRequest, url: str) -> ControlResponse:
        """The client waits for the person at the URL: hold this stream until the
        login is approved, refused or expires. If the client goes away the login
        stays pending (its next request finds the node once approved)."""
        assert self._logins is not None
        outcome = await self._logins.wait(self._logins.auth_id_of(url), req.machine_key)
        if outcome.node is None:
            refused = outcome.state == "refused"
            self._metrics.registration("login_refused" if refused else "login_expired")
            return _json({"Error": outcome.reason or f"login {outcome.state}"})
        self._metrics.registration("login_ok")
        return _json(self._register_response(outcome.node))

    def _register_login(
        self, login: PendingLogin, hostinfo: Hostinfo, capver: int, user: str, now: datetime
    ) -> Node:
        """A person approved at the login URL owns the node from now on — or,
        when the machine asked for tags (`--advertise-tags`) that tagOwners let
        that person own, its tags do. LoginRefused otherwise."""
        tags, refusal = self._tags_for(user, (), hostinfo.request_tags)
        if refusal is not None:
            self._metrics.registration("tags_refused")
            raise LoginRefused(refusal)
        settings = self._settings()
        span = settings.node_key_expiry
        key_expiry = None if span is None else now + span
        if login.provider is not None:
            self._same_owner(login, login.provider, user)
            if settings.key_expiry_from_token:
                key_expiry = login.provider.token_expires
        node = register_node(
            self._registry,
            login,
            hostinfo,
            capver,
            user,
            now,
            key_expiry=key_expiry,
            approved=not self._settings().device_approval,
            tags=tags,
        )
        self._log.info(
            "register: node %d %s (%s) joined",
            node.id,
            node.given_name,
            ",".join(tags) or user,
            extra=event(
                "node.registered",
                node=node.id,
                node_name=node.given_name,
                user=None if tags else user,
                tags=list(tags),
                commit=self._tailnet.source.id,
            ),
        )
        return node

    def _same_owner(self, login: PendingLogin, provider: ProviderLogin, user: str) -> None:
        """A node that logs in again through the identity provider stays its owner's:
        another identity may not take it over (an operator may reassign it). LoginRefused."""
        node = existing_node(self._registry, login)
        if node is None or node.tags or node.user is None or node.user == user:
            return
        owner = self._tailnet.source.users.get(node.user, (node.user, node.user))[0]
        raise LoginRefused(
            f"the device {node.given_name} belongs to {owner}: {provider.email} may not take "
            f"it over; sign in as {owner}"
        )

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
            "MachineAuthorized": node.approved,
        }

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
        if str(src) not in at or str(dst) not in at:
            return None
        seconds = visibility.ssh.check_period(at[str(src)], at[str(dst)])
        return None if seconds is None else timedelta(seconds=seconds)

    # /machine/map

    def _map(self, req: ControlRequest) -> ControlResponse:
        body = _decode(MapRequest, req)
        _check_version(body.version, req)
        node_key = body.node_key
        if node_key.is_zero:
            raise RequestRejected(400, "MapRequest.NodeKey: missing")
        node = self._registry.by_node_key(node_key)
        if node is not None and node.machine_key != req.machine_key:
            raise RequestRejected(404, "node not found")
        now = self._clock()
        if node is not None and not node.approved:
            return self._unapproved(node, body, now)
        if node is None or not self._tailnet.serves(node.id):
            return self._not_served(req, node_key, node, now)
        stream = body.stream
        node = self._apply_map_request(node, body, now)
        if not stream:
            if body.omit_peers:
                return ControlResponse(200)
            return ControlResponse(200, self._one_map(node.id, now))
        return ControlResponse(200, stream=self._stream(node.id))

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

    def _unapproved(self, node: Node, body: MapRequest, now: datetime) -> ControlResponse:
        """A node waiting for device approval: a map of itself, not authorized;
        a streaming poll then waits and turns into the real stream once approved."""
        node = self._apply_map_request(node, body, now)
        frame = MapFrameEncoder().encode(unapproved_map(node, self._tailnet.context.derp_map, now))
        if not body.stream:
            return ControlResponse(200, b"" if body.omit_peers else frame)
        return ControlResponse(200, stream=self._await_approval(node.id, frame))

    async def _await_approval(self, node_id: int, first: bytes) -> AsyncIterator[bytes]:
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
        async for frame in self._stream(node_id):
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
                ping = handle.take_ping()
                if ping is not None:
                    yield encoder.encode(ping_message(ping))
                full, peers = handle.take()
                now = self._clock()
                ctx = self._tailnet.context_for(node_id)
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


def ping_message(url: str) -> bytes:
    """A MapResponse carrying only a PingRequest: the client sends ``HEAD url``
    over its Noise connection (tailscale control/controlclient/direct.go
    `answerPing`; a URL equal to the last one it answered is ignored)."""
    return json.dumps({"PingRequest": {"URL": url, "URLIsNoise": True}}).encode()


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

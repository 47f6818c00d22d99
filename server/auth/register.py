"""/machine/register (protocol.md §4.1): what a register request asks for, and
what the server does about it.

The decision is pure. `decide` takes the request, the node the machine has (or
None) and `now`, and names one `Step`; when the request carries a pre-auth key
it answers `UseKey`, and `decide_with_key` takes the key as the store found it
(or why the store refused it), the serving policy and the terms of the day.
`Registrar` is the I/O edge around them: it looks the node and key up, carries
the step out through the `NodeRegistry` (the only node writer) and the pending
logins, counts it and logs it. It also writes the node of a completed
interactive or OIDC login (`register_login`, the registrar of `PendingLogins`).

Every request is bound to the machine key learned in the Noise handshake: a
node key in a body is honoured only when it belongs to that machine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from gitctl.policy.tagowners import tag_refusal
from server.auth.pending import (
    LoginRefused,
    PendingLogin,
    PendingLogins,
    ProviderLogin,
    existing_node,
    register_node,
)
from server.logs import event
from server.metrics import Metrics, Outcome
from server.protocol.keys import MachinePublic, NodePublic
from server.store.interface import Store
from server.store.model import KeyRejected, Node, PreAuthKey, Registration
from server.tailnet import NodeRegistry, TailnetSource
from server.tailnet.nodejson import user_id
from server.wire import TAGGED_USER_ID, Hostinfo, RegisterRequest

__all__ = [
    "NO_LOGIN",
    "BeginLogin",
    "Join",
    "Logout",
    "NoLogin",
    "Refuse",
    "Registrar",
    "Renew",
    "Reply",
    "RequestRejected",
    "Step",
    "Terms",
    "UseKey",
    "decide",
    "decide_with_key",
    "register_response",
    "tags_for",
]

NO_LOGIN = (
    "this tailnetd server has no interactive login yet: "
    "log in with a pre-auth key (tailscale up --auth-key=…)"
)


class RequestRejected(Exception):
    """A control request refused with an HTTP status; `message` is for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Terms(Protocol):
    """What the server's settings say about new registrations."""

    @property
    def node_key_expiry(self) -> timedelta | None: ...
    @property
    def device_approval(self) -> bool: ...
    @property
    def key_expiry_from_token(self) -> bool: ...


# The steps


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer with the node as it is (a restart, a lost answer's retry)."""

    node: Node
    outcome: Outcome
    expired: bool = False


@dataclass(frozen=True, slots=True)
class Renew:
    """Seamless node-key renewal: the node takes `node_key`."""

    node: Node
    node_key: NodePublic


@dataclass(frozen=True, slots=True)
class Logout:
    """`tailscale logout` (a past Expiry): the node's key expires now, or an
    ephemeral node goes."""

    node: Node | None


@dataclass(frozen=True, slots=True)
class BeginLogin:
    """No key and no current node: a person must log in at a URL."""


@dataclass(frozen=True, slots=True)
class NoLogin:
    """No key, no current node and no interactive login on this server."""


@dataclass(frozen=True, slots=True)
class UseKey:
    """The request carries a pre-auth key: look it up, then `decide_with_key`."""

    auth_key: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """The login is refused; `reason` is shown to the client and the operator."""

    error: str  # the RegisterResponse.Error text
    reason: str
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class Join:
    """Write the node: a new one, or `existing` (the same machine) again."""

    registration: Registration
    existing: Node | None


Step = Reply | Renew | Logout | BeginLogin | NoLogin | UseKey | Refuse | Join


def _expired(node: Node, now: datetime) -> bool:
    return node.key_expiry is not None and node.key_expiry <= now


def decide(body: RegisterRequest, node: Node | None, now: datetime, *, interactive: bool) -> Step:
    """What a register request of the machine whose node is `node` asks for.
    `interactive`: this server has interactive logins."""
    node_key, old_key = body.node_key, body.old_node_key
    # `tailscale logout` sends Unix 123; any past Expiry asks the same (protocol.md §4.1.3).
    expiry = body.requested_expiry
    if expiry is not None and expiry <= now:
        return Logout(node)
    auth_key = body.auth.auth_key if body.auth is not None else ""
    if auth_key:
        return UseKey(auth_key)
    if node is not None and node.node_key in (node_key, old_key):
        expired = _expired(node, now)
        if expired and (node.node_key == node_key or not interactive):
            # The daemon restarting with its expired key: it shows "logged out".
            return Reply(node, "node_expired", expired=True)
        if expired:  # a fresh key for an expired node: log in again, same node
            return BeginLogin()
        if node.node_key != node_key:
            return Renew(node, node_key)
        return Reply(node, "resumed")
    return BeginLogin() if interactive else NoLogin()


def decide_with_key(
    body: RegisterRequest,
    machine_key: MachinePublic,
    node: Node | None,
    key: PreAuthKey | KeyRejected,
    now: datetime,
    *,
    source: TailnetSource,
    terms: Terms,
) -> Reply | Refuse | Join:
    """A login with a pre-auth key: `key` as the store found it, or why the
    store refused it."""
    node_key = body.node_key
    if isinstance(key, KeyRejected):
        if node is not None and node.node_key == node_key and not _expired(node, now):
            # A retry whose first answer was lost (the server died after the
            # commit): the node holds this key already, its auth key is spent.
            return Reply(node, "resumed")
        outcome: Outcome = "expired_key" if "expired" in key.reason else "bad_key"
        return Refuse(f"invalid auth key: {key}", key.reason, outcome)
    hostinfo = body.hostinfo or Hostinfo()
    tags, refusal = tags_for(source, key.user, key.tags, hostinfo.request_tags)
    if refusal is not None:
        return Refuse(refusal, refusal, "tags_refused")
    owner = None if tags else key.user
    span = terms.node_key_expiry
    registration = Registration(
        machine_key=machine_key,
        node_key=node_key,
        hostname=hostinfo.hostname or "node",
        user=owner,
        tags=tags,
        now=now,
        auth_key_id=key.id,
        ephemeral=key.ephemeral or body.ephemeral,
        key_expiry=None if tags or span is None else now + span,
        hostinfo=hostinfo,
        capver=body.version,
        approved=not terms.device_approval,
    )
    return Join(registration, existing=node)


def tags_for(
    source: TailnetSource, user: str, key_tags: Sequence[str], requested: Sequence[str] | None
) -> tuple[tuple[str, ...], str | None]:
    """The tags a node logging in with a key of `user` and `key_tags` carries,
    and why not when `requested` (Hostinfo.RequestTags) asks for tags that
    tagOwners do not let it own. Requested tags replace the key's own."""
    if not requested:
        return tuple(key_tags), None
    wanted = tuple(sorted(set(requested)))
    email = None if key_tags else source.users.get(user, (user, user))[0]
    refusal = tag_refusal(source.policy, wanted, email=email, key_tags=key_tags)
    return wanted, refusal


def register_response(
    node: Node, users: Mapping[str, tuple[str, str]], *, expired: bool = False
) -> dict[str, Any]:
    """The RegisterResponse for `node`; `users` (name -> email, display name)
    are the serving commit's."""
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


# The I/O edge


class Registrar:
    """Carries out register requests and completed logins."""

    def __init__(
        self,
        registry: NodeRegistry,
        store: Store,
        *,
        source: Callable[[], TailnetSource],
        clock: Callable[[], datetime],
        terms: Callable[[], Terms],
        log: logging.Logger,
        metrics: Metrics,
        logins: PendingLogins | None = None,
        on_refused: Callable[[str, str], None] | None = None,
    ) -> None:
        self._registry = registry
        self._store = store  # pre-auth keys; nodes are written through the registry
        self._source = source
        self._clock = clock
        self._terms = terms
        self._log = log
        self._metrics = metrics
        self._logins = logins
        self._on_refused = on_refused  # (machine, reason): a login refused its key
        if logins is not None:
            logins.set_registrar(self.register_login)

    async def register(self, machine_key: MachinePublic, body: RegisterRequest) -> dict[str, Any]:
        """The RegisterResponse to `body` from `machine_key`; RequestRejected
        when the request may not be answered at all."""
        if body.followup and self._logins is not None:
            return await self._followup(machine_key, body.followup)
        now = self._clock()
        if body.node_key.is_zero:
            raise RequestRejected(400, "RegisterRequest.NodeKey: missing")
        node = self._node_of(machine_key, body.node_key, body.old_node_key)
        step = decide(body, node, now, interactive=self._logins is not None)
        if isinstance(step, UseKey):
            key: PreAuthKey | KeyRejected
            try:
                key = self._store.check_preauth_key(step.auth_key, now)
            except KeyRejected as exc:
                key = exc
            return self._carry_out(
                decide_with_key(
                    body,
                    machine_key,
                    node,
                    key,
                    now,
                    source=self._source(),
                    terms=self._terms(),
                ),
                machine_key,
                body,
                now,
            )
        return self._carry_out(step, machine_key, body, now)

    def _node_of(
        self, machine_key: MachinePublic, node_key: NodePublic, old_key: NodePublic
    ) -> Node | None:
        """The machine's node: by its node key (or the old one it renews), else
        by the machine key. A node key of another machine is refused."""
        keys = (node_key,) if old_key.is_zero else (node_key, old_key)
        node, machine_node = self._registry.by_keys(keys, machine_key)
        if node is not None and node.machine_key != machine_key:
            raise RequestRejected(403, "node key belongs to another machine")
        return node if node is not None else machine_node

    def _carry_out(
        self, step: Step, machine_key: MachinePublic, body: RegisterRequest, now: datetime
    ) -> dict[str, Any]:
        match step:
            case Reply(node, outcome, expired):
                self._metrics.registration(outcome)
                return self._response(node, expired=expired)
            case Renew(node, node_key):
                node = self._registry.renew_key(node, node_key, now)
                self._metrics.registration("renewed")
                return self._response(node)
            case Logout(node):
                return self._logout(node, now)
            case BeginLogin():
                assert self._logins is not None
                self._metrics.registration("needs_login")
                login = self._logins.begin(
                    machine_key,
                    body.node_key,
                    body.ephemeral,
                    body.old_node_key,
                    now,
                    hostinfo=body.hostinfo,
                    capver=body.version,
                )
                return {"AuthURL": login.url}
            case NoLogin():
                self._metrics.registration("needs_login")
                return {"Error": NO_LOGIN}
            case Refuse(error, reason, outcome):
                self._metrics.registration(outcome)
                self._refused(machine_key, reason)
                return {"Error": error}
            case Join(registration, existing):
                # The store consumes a single-use key in the same transaction as the node write.
                node = self._registry.register(registration, existing=existing)
                self._metrics.registration("ok")
                self._joined(node)
                return self._response(node)
            case UseKey():
                raise AssertionError("a key is looked up before the step is carried out")

    def _refused(self, machine_key: MachinePublic, reason: str) -> None:
        machine = machine_key.short()
        self._log.info(
            "register: %s: %s",
            machine,
            reason,
            extra=event("register.refused", machine=machine, reason=reason),
        )
        if self._on_refused is not None:
            self._on_refused(machine, reason)

    def _joined(self, node: Node) -> None:
        self._log.info(
            "register: node %d %s (%s) joined",
            node.id,
            node.given_name,
            ",".join(node.tags) or node.user,
            extra=event(
                "node.registered",
                node=node.id,
                node_name=node.given_name,
                user=None if node.tags else node.user,
                tags=list(node.tags),
                commit=self._source().id,
            ),
        )

    async def _followup(self, machine_key: MachinePublic, url: str) -> dict[str, Any]:
        """The client waits for the person at the URL: hold this stream until the
        login is approved, refused or expires. If the client goes away the login
        stays pending (its next request finds the node once approved)."""
        assert self._logins is not None
        outcome = await self._logins.wait(self._logins.auth_id_of(url), machine_key)
        if outcome.node is None:
            refused = outcome.state == "refused"
            self._metrics.registration("login_refused" if refused else "login_expired")
            return {"Error": outcome.reason or f"login {outcome.state}"}
        self._metrics.registration("login_ok")
        return self._response(outcome.node)

    def register_login(
        self, login: PendingLogin, hostinfo: Hostinfo, capver: int, user: str, now: datetime
    ) -> Node:
        """A person approved at the login URL owns the node from now on — or,
        when the machine asked for tags (`--advertise-tags`) that tagOwners let
        that person own, its tags do. LoginRefused otherwise."""
        tags, refusal = tags_for(self._source(), user, (), hostinfo.request_tags)
        if refusal is not None:
            self._metrics.registration("tags_refused")
            raise LoginRefused(refusal)
        terms = self._terms()
        span = terms.node_key_expiry
        key_expiry = None if span is None else now + span
        if login.provider is not None:
            self._same_owner(login, login.provider, user)
            if terms.key_expiry_from_token:
                key_expiry = login.provider.token_expires
        node = register_node(
            self._registry,
            login,
            hostinfo,
            capver,
            user,
            now,
            key_expiry=key_expiry,
            approved=not terms.device_approval,
            tags=tags,
        )
        self._joined(node)
        return node

    def _same_owner(self, login: PendingLogin, provider: ProviderLogin, user: str) -> None:
        """A node that logs in again through the identity provider stays its owner's:
        another identity may not take it over (an operator may reassign it). LoginRefused."""
        node = existing_node(self._registry, login)
        if node is None or node.tags or node.user is None or node.user == user:
            return
        owner = self._source().users.get(node.user, (node.user, node.user))[0]
        raise LoginRefused(
            f"the device {node.given_name} belongs to {owner}: {provider.email} may not take "
            f"it over; sign in as {owner}"
        )

    def _logout(self, node: Node | None, now: datetime) -> dict[str, Any]:
        self._metrics.registration("logout")
        if node is None:
            return {"NodeKeyExpired": True, "MachineAuthorized": False}
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
        return self._response(node, expired=True)

    def _response(self, node: Node, *, expired: bool = False) -> dict[str, Any]:
        return register_response(node, self._source().users, expired=expired)

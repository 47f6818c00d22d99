"""Pending interactive logins: the seam every way of logging in goes through.

A register request without a key `begin`s a login and answers with its URL;
the client's `Followup` request `wait`s on it. Whoever learns who the person
is — an operator (`tailnetd nodes register`), an OIDC callback — calls
`complete(auth_id, user, groups)`: the node is written through the
`NodeRegistry` (the only node writer) and the waiting request wakes up with
the node. `refuse` and expiry wake it with a reason the client shows.

Each login is a small state machine (`TRANSITIONS`): waiting, then exactly
one of approved, refused or expired. A client that goes away while waiting
changes nothing: the login stays pending, and when it completes the node is
registered all the same (the client's next request finds it).

Time is passed in: `begin` and `handle_timer` take `now`; `complete` reads the
injected clock for the node's creation time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal, Protocol, TypeVar

from server.logs import event
from server.protocol.keys import MachinePublic, NodePublic
from server.store.interface import Store
from server.store.model import Node, Registration, Rng
from server.tailnet import NodeRegistry
from server.wire import Hostinfo

__all__ = [
    "MAX_PENDING",
    "TRANSITIONS",
    "CompletedLogin",
    "Input",
    "LoginGone",
    "LoginState",
    "Outcome",
    "PendingLogin",
    "PendingLogins",
    "ProviderLogin",
    "existing_node",
    "find_waiting",
    "next_state",
    "register_node",
    "remember",
]

# Anyone who can reach the server can start a login: bound how many wait.
MAX_PENDING = 4096
# Finished logins are remembered this long, so the page and a late Followup
# can say what happened instead of "unknown".
_REMEMBER_FINISHED = 1024

LoginState = Literal["waiting", "approved", "refused", "expired"]
Input = Literal["complete", "refuse", "expire"]

# (state, input) -> next state; a pair absent from the table is refused with LoginGone.
TRANSITIONS: dict[tuple[LoginState, Input], LoginState] = {
    ("waiting", "complete"): "approved",
    ("waiting", "refuse"): "refused",
    ("waiting", "expire"): "expired",
}


class LoginGone(Exception):
    """The login cannot take this step: unknown, or already finished.
    The message is written for the operator or the person logging in."""


class LoginRefused(LoginGone):
    """Completing the login as that person is not allowed (e.g. the machine asks
    for tags the person may not own): the login ends refused, with the reason."""


class _Decided(Protocol):
    @property
    def state(self) -> LoginState: ...


E = TypeVar("E")
D = TypeVar("D", bound=_Decided)


def next_state(state: LoginState, step: Input, what: str) -> LoginState:
    """The state after `step` (TRANSITIONS), or LoginGone naming `what`."""
    after = TRANSITIONS.get((state, step))
    if after is None:
        raise LoginGone(f"{what} was already {state}")
    return after


def find_waiting(
    waiting: Mapping[str, E], finished: Mapping[str, _Decided], auth_id: str, what: str
) -> E:
    """The waiting entry `auth_id`, or LoginGone saying why there is none."""
    entry = waiting.get(auth_id)
    if entry is not None:
        return entry
    done = finished.get(auth_id)
    if done is None:
        raise LoginGone(f"no {what} {auth_id!r} is waiting (unknown, or it expired)")
    raise LoginGone(f"{what} {auth_id} was already {done.state}")


def remember(finished: dict[str, D], auth_id: str, done: D) -> None:
    """Keep a finished one for late questions; the oldest are forgotten."""
    finished[auth_id] = done
    while len(finished) > _REMEMBER_FINISHED:
        del finished[next(iter(finished))]


@dataclass(frozen=True, slots=True)
class ProviderLogin:
    """What an identity provider vouched for when it completed a login."""

    email: str  # verified (or allowed unverified by the operator), lower case
    token_expires: datetime  # the ID token's exp


@dataclass(frozen=True, slots=True)
class PendingLogin:
    """One login as the outside sees it."""

    auth_id: str
    url: str  # where the person goes: SERVER/register/<auth_id>
    machine_key: MachinePublic
    node_key: NodePublic
    old_node_key: NodePublic
    ephemeral: bool
    hostname: str
    created: datetime
    expires: datetime
    state: LoginState = "waiting"
    reason: str = ""  # why it was refused or expired
    node_id: int | None = None  # the node, once approved
    provider: ProviderLogin | None = None  # set when an identity provider completed it


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a waiting register request learns: the node, or why not."""

    state: LoginState
    node: Node | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class CompletedLogin:
    """Told to listeners after a login completes: who logged in, with which
    groups from their identity provider (empty for operator approval)."""

    login: PendingLogin
    node: Node
    user: str
    groups: tuple[str, ...]


@dataclass(slots=True)
class _Entry:
    login: PendingLogin
    hostinfo: Hostinfo
    capver: int
    done: asyncio.Event = field(default_factory=asyncio.Event)
    outcome: Outcome | None = None


Registrar = Callable[[PendingLogin, Hostinfo, int, str, datetime], Node]


class PendingLogins:
    """Every login in progress on this server.

    `register(login, hostinfo, capver, user, now)` writes the node through the
    NodeRegistry; the control handler supplies it (it knows key expiry and
    device approval). By default the node is registered with no key expiry."""

    def __init__(
        self,
        store: Store,
        registry: NodeRegistry,
        *,
        base_url: Callable[[], str],
        timeout: Callable[[], timedelta],
        clock: Callable[[], datetime],
        rng: Rng,
        log: logging.Logger,
        register: Registrar | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._base_url = base_url
        self._timeout = timeout
        self._clock = clock
        self._rng = rng
        self._log = log
        self._register = register or self._default_register
        self._entries: dict[str, _Entry] = {}  # insertion order = creation order
        self._finished: dict[str, PendingLogin] = {}
        self._listeners: list[Callable[[CompletedLogin], None]] = []

    def set_registrar(self, register: Registrar) -> None:
        self._register = register

    def subscribe(self, listener: Callable[[CompletedLogin], None]) -> None:
        """Hear every completed login (e.g. to record identity-provider groups)."""
        self._listeners.append(listener)

    # Starting and finding

    def begin(
        self,
        machine_key: MachinePublic,
        node_key: NodePublic,
        ephemeral: bool,
        old_node_key: NodePublic,
        now: datetime,
        *,
        hostinfo: Hostinfo | None = None,
        capver: int = 0,
    ) -> PendingLogin:
        """A new login for this machine; an earlier one of the same machine that
        still waits is replaced (its waiter is told so)."""
        for entry in list(self._entries.values()):
            if entry.login.machine_key == machine_key:
                self._finish(entry, "expire", "a newer login of this machine replaced it")
        while len(self._entries) >= MAX_PENDING:
            oldest = next(iter(self._entries.values()))
            self._finish(oldest, "expire", "too many logins were waiting")
        auth_id = self._store.create_pending_login(machine_key, node_key, ephemeral, now, self._rng)
        hostinfo = hostinfo or Hostinfo()
        login = PendingLogin(
            auth_id=auth_id,
            url=f"{self._base_url()}/register/{auth_id}",
            machine_key=machine_key,
            node_key=node_key,
            old_node_key=old_node_key,
            ephemeral=ephemeral,
            hostname=hostinfo.hostname or "node",
            created=now,
            expires=now + self._timeout(),
        )
        self._entries[auth_id] = _Entry(login, hostinfo, capver)
        self._log.info(
            "login: %s (%s) is waiting for approval: tailnetd nodes register --user NAME %s",
            login.hostname,
            machine_key.short(),
            auth_id,
            extra=event("login.pending", auth_id=auth_id, machine=machine_key.short()),
        )
        return login

    def get(self, auth_id: str) -> PendingLogin | None:
        """A login waiting or recently finished, or None."""
        entry = self._entries.get(auth_id)
        return entry.login if entry is not None else self._finished.get(auth_id)

    def waiting(self) -> list[PendingLogin]:
        return [entry.login for entry in self._entries.values()]

    def auth_id_of(self, url: str) -> str:
        """The login id in a Followup URL (anything after the last slash)."""
        return url.rstrip("/").rsplit("/", 1)[-1]

    # The waiting side

    async def wait(self, auth_id: str, machine_key: MachinePublic) -> Outcome:
        """Block until the login finishes. A login of another machine is not
        this caller's to wait on: it reads as unknown."""
        entry = self._entries.get(auth_id)
        if entry is None or entry.login.machine_key != machine_key:
            finished = self._finished.get(auth_id)
            if finished is not None and finished.machine_key == machine_key:
                node = self._registry.get(finished.node_id) if finished.node_id else None
                return Outcome(finished.state, node, finished.reason)
            return Outcome("expired", None, "this login is unknown or has expired")
        await entry.done.wait()
        assert entry.outcome is not None
        return entry.outcome

    # Finishing

    def complete(
        self,
        auth_id: str,
        user: str,
        groups: tuple[str, ...] = (),
        provider: ProviderLogin | None = None,
    ) -> Node:
        """The person is `user` (`provider`: as an identity provider says): register
        the node and wake the waiting request."""
        entry = self._entry(auth_id)
        if provider is not None:
            entry.login = replace(entry.login, provider=provider)
        now = self._clock()
        if now >= entry.login.expires:
            self._finish(entry, "expire", _expired_reason(entry.login))
            raise LoginGone(f"login {auth_id} expired at {entry.login.expires.isoformat()}")
        try:
            node = self._register(entry.login, entry.hostinfo, entry.capver, user, now)
        except LoginRefused as exc:
            self._finish(entry, "refuse", str(exc))
            self._log.info(
                "login: %s refused: %s",
                auth_id,
                exc,
                extra=event("login.refused", auth_id=auth_id, reason=str(exc)),
            )
            raise
        self._finish(entry, "complete", "", node)
        self._log.info(
            "login: node %d %s approved for %s",
            node.id,
            node.given_name,
            user,
            extra=event("login.approved", auth_id=auth_id, node=node.id, user=user),
        )
        completed = CompletedLogin(self._finished[auth_id], node, user, tuple(groups))
        for listener in self._listeners:
            listener(completed)
        return node

    def refuse(self, auth_id: str, reason: str) -> PendingLogin:
        entry = self._entry(auth_id)
        self._finish(entry, "refuse", reason)
        self._log.info(
            "login: %s refused: %s",
            auth_id,
            reason,
            extra=event("login.refused", auth_id=auth_id, reason=reason),
        )
        return self._finished[auth_id]

    def get_timer(self) -> datetime | None:
        """When the next waiting login expires."""
        return min((e.login.expires for e in self._entries.values()), default=None)

    def handle_timer(self, now: datetime) -> list[PendingLogin]:
        """Expire every login whose time is up; returns them."""
        expired = []
        for entry in list(self._entries.values()):
            if now >= entry.login.expires:
                self._finish(entry, "expire", _expired_reason(entry.login))
                expired.append(self._finished[entry.login.auth_id])
        if expired:
            self._store.delete_pending_logins_before(now - self._timeout())
        return expired

    def _entry(self, auth_id: str) -> _Entry:
        return find_waiting(self._entries, self._finished, auth_id, "login")

    def _finish(self, entry: _Entry, step: Input, reason: str, node: Node | None = None) -> None:
        state = next_state(entry.login.state, step, f"login {entry.login.auth_id}")
        login = replace(entry.login, state=state, reason=reason, node_id=node.id if node else None)
        del self._entries[login.auth_id]
        self._store.delete_pending_login(login.auth_id)
        remember(self._finished, login.auth_id, login)
        entry.login = login
        entry.outcome = Outcome(state, node, reason)
        entry.done.set()

    def _default_register(
        self, login: PendingLogin, hostinfo: Hostinfo, capver: int, user: str, now: datetime
    ) -> Node:
        return register_node(self._registry, login, hostinfo, capver, user, now, key_expiry=None)


def register_node(
    registry: NodeRegistry,
    login: PendingLogin,
    hostinfo: Hostinfo,
    capver: int,
    user: str,
    now: datetime,
    *,
    key_expiry: datetime | None,
    approved: bool = True,
    tags: tuple[str, ...] = (),
) -> Node:
    """Write the node of a completed login: the machine's node, if it has one,
    keeps its id and addresses and takes the new key and owner (or, with
    `tags`, is owned by its tags and does not expire)."""
    existing = existing_node(registry, login)
    registration = Registration(
        machine_key=login.machine_key,
        node_key=login.node_key,
        hostname=login.hostname,
        user=None if tags else user,
        tags=tags,
        now=now,
        ephemeral=login.ephemeral,
        key_expiry=None if tags else key_expiry,
        hostinfo=hostinfo,
        capver=capver,
        approved=approved,
    )
    return registry.register(registration, existing=existing)


def existing_node(registry: NodeRegistry, login: PendingLogin) -> Node | None:
    """The node this login logs in again, if the machine has one."""
    existing = None
    if not login.old_node_key.is_zero:
        existing = registry.by_node_key(login.old_node_key)
    if existing is None:
        existing = registry.by_node_key(login.node_key)
    if existing is None or existing.machine_key != login.machine_key:
        existing = registry.by_machine_key(login.machine_key)
    return existing


def _expired_reason(login: PendingLogin) -> str:
    minutes = max(1, round((login.expires - login.created).total_seconds() / 60))
    return (
        f"the login was not approved within {minutes} minute{'s' if minutes != 1 else ''}: "
        "run tailscale up again for a new login link"
    )

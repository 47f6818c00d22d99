"""SSH `check` mode: the destination node asks the control server what to
do with a connection a `check` rule holds (tailcfg.SSHAction.HoldAndDelegate).

The first request (`/machine/ssh/action/<src>/to/<dst>?local_user=U`) is
answered at once: `accept` when the same source node was approved for the
same destination and local user within the rule's `checkPeriod`, else a new
check and an action holding the session (`holdAndDelegate` back here with the
check's id) whose `message` the person sees in their ssh session: where to
go, and the command an operator runs. The second request waits until the
check is approved (`approve`, by an operator; `complete`, by the connecting
user re-authenticating, e.g. through OIDC), refused, or expires.

With an identity provider (`via_provider`), the message is Tailscale's own
("# Tailscale SSH requires an additional check. # To authenticate, visit: URL")
and the URL sends the person through the provider (`server/oidc/login.py`);
an operator may still approve.

Each check is the same small state machine as a pending login
(`server.auth.pending.TRANSITIONS`). Time is passed in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from gitctl.policy.ssh import ACCEPT_ACTION
from server.auth.pending import (
    Input,
    LoginGone,
    LoginState,
    find_waiting,
    next_state,
    remember,
)
from server.logs import event
from server.store._rand import LOWER_ALNUM, random_text
from server.store.model import Rng

__all__ = ["MAX_CHECKS", "SshCheck", "SshChecks"]

MAX_CHECKS = 4096  # checks waiting at once; the oldest gives way
_REMEMBER = 16384  # approvals remembered for their checkPeriod
_ID_LEN = 32
# The URL the client fetches goes through the Noise channel: its host is unused.
_ACTION_URL = "https://unused/machine/ssh/action/{src}/to/{dst}?local_user={user}&auth_id={id}"


@dataclass(frozen=True, slots=True)
class SshCheck:
    auth_id: str
    url: str  # the page the person is sent to
    src_node: int
    dst_node: int
    src_user: str | None  # the connecting node's owner (None: tagged)
    local_user: str
    period: timedelta  # how long an approval is remembered (the rule's checkPeriod)
    created: datetime
    expires: datetime
    state: LoginState = "waiting"
    reason: str = ""
    approved_by: str = ""


@dataclass(slots=True)
class _Entry:
    check: SshCheck
    done: asyncio.Event = field(default_factory=asyncio.Event)


class SshChecks:
    def __init__(
        self,
        *,
        base_url: Callable[[], str],
        timeout: Callable[[], timedelta],
        rng: Rng,
        log: logging.Logger,
        via_provider: bool = False,
    ) -> None:
        self._via_provider = via_provider
        self._base_url = base_url
        self._timeout = timeout
        self._rng = rng
        self._log = log
        self._entries: dict[str, _Entry] = {}
        self._finished: dict[str, SshCheck] = {}
        # (src node, dst node, local user) -> approved until
        self._approved: dict[tuple[int, int, str], datetime] = {}

    # The destination node's requests

    def action(
        self,
        src: int,
        dst: int,
        local_user: str,
        src_user: str | None,
        period: timedelta,
        now: datetime,
    ) -> dict[str, Any]:
        """The answer to the first request: accept within the period, else hold."""
        until = self._approved.get((src, dst, local_user))
        if until is not None and now < until:
            return dict(ACCEPT_ACTION)
        while len(self._entries) >= MAX_CHECKS:
            self._finish(next(iter(self._entries.values())), "expire", "too many checks waiting")
        auth_id = random_text(self._rng, LOWER_ALNUM, _ID_LEN)
        check = SshCheck(
            auth_id=auth_id,
            url=f"{self._base_url()}/ssh/check/{auth_id}",
            src_node=src,
            dst_node=dst,
            src_user=src_user,
            local_user=local_user,
            period=period,
            created=now,
            expires=now + self._timeout(),
        )
        self._entries[auth_id] = _Entry(check)
        self._log.info(
            "ssh: check %s: node %d as %s to node %d, waiting: tailnetd ssh approve %s",
            auth_id,
            src,
            local_user,
            dst,
            auth_id,
            extra=event("ssh.check_pending", auth_id=auth_id, src=src, dst=dst, user=local_user),
        )
        hold = _ACTION_URL.format(src=src, dst=dst, user=quote(local_user, safe=""), id=auth_id)
        if self._via_provider:
            message = (
                "# Tailscale SSH requires an additional check.\r\n"
                f"# To authenticate, visit: {check.url}\r\n"
            )
        else:
            message = (
                "# This SSH login needs a check (tailnet policy: check).\r\n"
                f"# Approve it at {check.url}\r\n"
                f"# or ask an administrator to run: tailnetd ssh approve {auth_id}\r\n"
            )
        return {"holdAndDelegate": hold, "message": message}

    async def wait(self, auth_id: str, dst: int) -> dict[str, Any]:
        """The answer to the held request: accept once approved, else reject."""
        entry = self._entries.get(auth_id)
        if entry is None or entry.check.dst_node != dst:
            done = self._finished.get(auth_id)
            if done is None or done.dst_node != dst:
                return _reject("this SSH check is unknown or has expired; connect again")
            return _answer(done)
        await entry.done.wait()
        return _answer(entry.check)

    # Deciding

    def approve(self, auth_id: str, by: str, now: datetime) -> SshCheck:
        """An operator (or a re-authentication, `complete`) lets the session in;
        the approval is remembered for the rule's checkPeriod."""
        entry = self._entry(auth_id)
        if now >= entry.check.expires:
            self._finish(entry, "expire", "the check was not approved in time")
            raise LoginGone(f"SSH check {auth_id} expired")
        c = entry.check
        self._approved[(c.src_node, c.dst_node, c.local_user)] = now + c.period
        while len(self._approved) > _REMEMBER:
            del self._approved[next(iter(self._approved))]
        self._finish(entry, "complete", "", approved_by=by)
        self._log.info(
            "ssh: check %s approved by %s",
            auth_id,
            by,
            extra=event("ssh.check_approved", auth_id=auth_id, by=by),
        )
        return entry.check

    def complete(self, auth_id: str, user: str, now: datetime) -> SshCheck:
        """The connecting person re-authenticated as `user` (the OIDC hook): it
        must be the owner of the node the connection comes from."""
        entry = self._entry(auth_id)
        if entry.check.src_user != user:
            reason = f"signed in as {user}, but the connection comes from a node of another user"
            self.refuse(auth_id, reason)
            raise LoginGone(reason)
        return self.approve(auth_id, user, now)

    def refuse(self, auth_id: str, reason: str, *, logged: bool = False) -> SshCheck:
        """`logged`: the caller has written the operator's log line already."""
        entry = self._entry(auth_id)
        self._finish(entry, "refuse", reason)
        if not logged:
            self._log.info(
                "ssh: check %s refused: %s",
                auth_id,
                reason,
                extra=event("ssh.check_refused", auth_id=auth_id, reason=reason),
            )
        return entry.check

    def forget_approvals(self) -> None:
        """A new policy: every remembered approval is asked again."""
        self._approved.clear()

    # Reads and time

    def get(self, auth_id: str) -> SshCheck | None:
        entry = self._entries.get(auth_id)
        return entry.check if entry is not None else self._finished.get(auth_id)

    def waiting(self) -> list[SshCheck]:
        return [entry.check for entry in self._entries.values()]

    def get_timer(self) -> datetime | None:
        return min((e.check.expires for e in self._entries.values()), default=None)

    def handle_timer(self, now: datetime) -> None:
        for entry in list(self._entries.values()):
            if now >= entry.check.expires:
                self._finish(entry, "expire", "the check was not approved in time")

    def _entry(self, auth_id: str) -> _Entry:
        return find_waiting(self._entries, self._finished, auth_id, "SSH check")

    def _finish(self, entry: _Entry, step: Input, reason: str, approved_by: str = "") -> None:
        state = next_state(entry.check.state, step, f"SSH check {entry.check.auth_id}")
        entry.check = replace(entry.check, state=state, reason=reason, approved_by=approved_by)
        del self._entries[entry.check.auth_id]
        remember(self._finished, entry.check.auth_id, entry.check)
        entry.done.set()


def _answer(check: SshCheck) -> dict[str, Any]:
    if check.state == "approved":
        return dict(ACCEPT_ACTION)
    return _reject(f"the SSH check was {check.state}: {check.reason or 'no reason given'}")


def _reject(message: str) -> dict[str, Any]:
    return {"reject": True, "message": f"# tailnetd: {message}\r\n"}

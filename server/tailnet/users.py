"""Runtime users: the only writer of the people admitted at runtime.

With ``--oidc-admit-unknown true``, a verified identity that passes the
allow-lists but is not declared in tailnet.d/users.yaml is admitted as a
runtime user (its email is also its name). As the node registry does for
nodes, every write here goes to the store once and emits one `UserChange`;
the running tailnet subscribes and serves the user's nodes (or cuts them off)
without a commit.

Git still wins: a commit that declares the same email makes the person a git
user (the hub then serves the git user and ignores the runtime row).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from server.logs import event
from server.store.interface import Store
from server.store.model import RuntimeUser

__all__ = ["UserChange", "UserChangeKind", "UserRegistry"]

UserChangeKind = Literal["admitted", "login", "removed"]


@dataclass(frozen=True, slots=True)
class UserChange:
    """One change to one runtime user: new (``admitted``), logged in again
    (``login``) or deleted by an operator (``removed``: `user` is None)."""

    kind: UserChangeKind
    email: str
    user: RuntimeUser | None


UserListener = Callable[[UserChange], None]


class UserRegistry:
    def __init__(self, store: Store, *, log: logging.Logger) -> None:
        self._store = store
        self._log = log
        self._listeners: list[UserListener] = []
        self._known = {u.email for u in store.runtime_users()}  # as last published

    def subscribe(self, listener: UserListener) -> None:
        self._listeners.append(listener)

    def _publish(self, change: UserChange) -> None:
        (self._known.discard if change.kind == "removed" else self._known.add)(change.email)
        for listener in self._listeners:
            listener(change)

    def users(self) -> list[RuntimeUser]:
        return self._store.runtime_users()

    def admit(self, email: str, now: datetime) -> RuntimeUser:
        """`email` logged in and is admitted (or was already): recorded with its login time."""
        email = email.strip().lower()
        user, new = self._store.admit_runtime_user(email, now)
        if new:
            self._log.info(
                "user %s admitted at runtime (not in tailnet.d)",
                email,
                extra=event("user.runtime_admitted", email=email),
            )
        self._publish(UserChange("admitted" if new else "login", email, user))
        return user

    def reload(self) -> None:
        """Another process (a replica) changed the runtime users: read them back and
        publish what differs from what this process last published."""
        stored = {u.email: u for u in self._store.runtime_users()}
        for email in sorted(self._known - stored.keys()):
            self._publish(UserChange("removed", email, None))
        for email in sorted(stored.keys() - self._known):
            self._publish(UserChange("admitted", email, stored[email]))

    def delete(self, email: str) -> bool:
        """Forget a runtime user: its nodes are cut off as a user removed from git.
        False when there is no such runtime user."""
        email = email.strip().lower()
        if not self._store.delete_runtime_user(email):
            return False
        self._log.info(
            "runtime user %s deleted: its nodes are cut off",
            email,
            extra=event("user.runtime_deleted", email=email),
        )
        self._publish(UserChange("removed", email, None))
        return True

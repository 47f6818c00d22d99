"""Pre-auth keys declared in git (keys.yaml), brought to match on every served commit.

Each declared key's text comes from outside git: an environment variable or a file on the
server (`SecretRef`), read here at the edge by `read_secret`. `sync_declared_keys` creates a
key that is new, rotates one whose secret changed (the old text stops working at once),
updates one whose properties changed, and expires those no longer declared. A key whose
secret cannot be read is left as it is and reported: a missing variable at a restart must
not lock out every node that registers with it, nor silently keep an old secret working
without a word.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from gitctl.tailnet import KeySpec, SecretRef
from server.store.interface import Store
from server.store.model import StoreError

__all__ = ["KeyAction", "MAX_SECRET_BYTES", "read_secret", "sync_declared_keys"]

MAX_SECRET_BYTES = 4096  # a key text is 71 characters; a secret file is never large

Outcome = Literal["created", "rotated", "updated", "unchanged", "expired", "unreadable", "refused"]


@dataclass(frozen=True, slots=True)
class KeyAction:
    name: str
    outcome: Outcome
    key_id: int | None = None
    detail: str = ""

    def describe(self) -> str:
        text = f"declared key {self.name}: {self.outcome}"
        return f"{text} ({self.detail})" if self.detail else text


def read_secret(ref: SecretRef, environ: Mapping[str, str] = os.environ) -> str | None:
    """The key text `ref` names, stripped; None when it is not set or cannot be read."""
    if ref.kind == "env":
        value = environ.get(ref.name)
        return value.strip() or None if value is not None else None
    try:
        with open(ref.name, "rb") as f:
            data = f.read(MAX_SECRET_BYTES + 1)
    except OSError:
        return None
    if len(data) > MAX_SECRET_BYTES:
        return None
    return data.decode("utf-8", "replace").strip() or None


def sync_declared_keys(
    store: Store,
    specs: Sequence[KeySpec],
    secret_of: Callable[[SecretRef], str | None],
    now: datetime,
) -> list[KeyAction]:
    """Bring the store's declared keys to `specs`; what was done, one action per key."""
    actions = []
    for spec in specs:
        text = secret_of(spec.secret)
        if text is None:
            detail = f"{spec.secret.describe()} is not set or cannot be read; key left as it was"
            actions.append(KeyAction(spec.name, "unreadable", detail=detail))
            continue
        try:
            key, outcome = store.put_declared_key(
                spec.name,
                text,
                user=spec.user or "",  # a tagged key's nodes belong to their tags
                reusable=spec.reusable,
                ephemeral=spec.ephemeral,
                tags=spec.tags,
                expiration=spec.expires,
                now=now,
            )
        except (ValueError, StoreError) as exc:
            detail = f"{spec.secret.describe()}: {exc}"
            actions.append(KeyAction(spec.name, "refused", detail=detail))
            continue
        actions.append(KeyAction(spec.name, outcome, key.id))
    for key in store.expire_undeclared_keys({s.name for s in specs}, now):
        assert key.declared_name is not None
        actions.append(KeyAction(key.declared_name, "expired", key.id, "no longer in keys.yaml"))
    return actions

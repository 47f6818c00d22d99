"""The audit trail: every admin action through the API, recorded in the store.

A request is recorded when it would change something (any method but GET)
or when it was refused for its credentials (401, 403), whatever its method.
The CLI and the page are clients of this API, so they are recorded here too.
Each entry says who (`socket`, `apikey:<id>:<prefix>` or `anonymous`), what
(the endpoint's action, the path's target, the parsed body's fields: request
bodies carry no secrets — keys are only ever in answers), when and the result
(`ok`, or the problem's kind with its status and detail).
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from server.api.auth import Caller
from server.api.deps import parse_duration
from server.store.interface import Store
from server.store.model import AuditEntry

if TYPE_CHECKING:
    from server.api.endpoints import Endpoint

__all__ = ["MAX_LIMIT", "audit_json", "parse_since", "record"]

MAX_LIMIT = 1000
MAX_PARAMS_BYTES = 4096  # a body's fields as recorded; larger is summarised by its size
_REFUSED = (401, 403)


def actor_of(caller: Caller | None) -> str:
    if caller is None:
        return "anonymous"
    if caller.local:
        return "socket"
    return f"apikey:{caller.key_id}:{caller.key_prefix}"


def params_of(body: Any) -> dict[str, Any]:
    """A parsed body as recorded: its declared fields, or the size of raw bytes."""
    if body is None:
        return {}
    if isinstance(body, bytes):
        return {"bytes": len(body)}
    if dataclasses.is_dataclass(body) and not isinstance(body, type):
        fields = dataclasses.asdict(body)
        if len(json.dumps(fields, default=str)) > MAX_PARAMS_BYTES:
            return {"truncated": True}
        return json.loads(json.dumps(fields, default=str))  # type: ignore[no-any-return]
    return {}


def record(
    store: Store,
    ep: Endpoint,
    *,
    now: datetime,
    caller: Caller | None,
    path_params: dict[str, Any],
    body: Any,
    status: int,
    result: str,
    detail: str | None,
) -> None:
    """Record one answered request if it is an admin action or a refusal."""
    if not should_record(ep, status):
        return
    store.record_audit(
        at=now,
        actor=actor_of(caller),
        action=action_of(ep),
        target=target_of(path_params),
        params=params_of(body),
        status=status,
        result=result,
        detail=detail,
    )


def should_record(ep: Endpoint, status: int) -> bool:
    # A public endpoint's refusals are kept too: a wrong OAuth client secret
    # is a credential failure an operator wants to see.
    if ep.required == "public":
        return status in _REFUSED
    return ep.method != "GET" or status in _REFUSED


def action_of(ep: Endpoint) -> str:
    name = ep.handler.__name__
    return f"v2.{name}" if ep.path.startswith("/api/v2/") else name


def target_of(path_params: dict[str, Any]) -> str | None:
    named = [f"{k}={v}" for k, v in path_params.items() if k != "tailnet"]
    return " ".join(named) or None


def audit_json(e: AuditEntry) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": e.at.isoformat(),
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "params": e.params,
        "status": e.status,
        "result": e.result,
        "detail": e.detail,
    }


def parse_since(text: str | None, now: datetime) -> datetime | None:
    """`since` as a duration back from now (`1h`, `7d`) or an ISO 8601 time."""
    if text is None:
        return None
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"since {text!r}: give a duration back from now (30m, 12h, 7d)"
            " or an ISO 8601 time with its offset (2026-01-31T12:00:00+00:00)"
        ) from None
    if when.tzinfo is None:
        raise ValueError(f"since {text!r}: give the time's offset, e.g. +00:00")
    return when
